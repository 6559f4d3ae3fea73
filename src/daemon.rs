//! The daemon: opens the store, recovers from whatever the last run left, and runs intake, the
//! real-time lane and the results writer until `shutdown` resolves. Then it stops in order: intake,
//! admission (calls in flight get a grace period), the last results, the store.

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, ApiKey};
use crate::batch::BatchLane;
use crate::config::Config;
use crate::intake::Intake;
use crate::quota::{Quota, QuotaSettings};
use crate::realtime::RealtimeLane;
use crate::results::ResultsWriter;
use crate::store::budget::Rules;
use crate::store::{Store, items, now_ms};

/// A daemon running inside this process (the demo, the benchmarks, the tests).
pub struct Handle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the daemon as a task of this process; [`Handle::stop`] shuts it down in order.
pub fn spawn(config: Config, key: ApiKey) -> Handle {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(run(config, key, async move { token.cancelled().await }));
    Handle { stop, task }
}

impl Handle {
    /// Stops the daemon as SIGTERM would, and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("the daemon task")?
    }
}

/// Runs the daemon until `shutdown` resolves; returns once everything has stopped.
pub async fn run(
    config: Config,
    key: ApiKey,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    for dir in [&config.jobs_dir, &config.data_dir, &config.results_dir()] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // One daemon per data directory: a second one would send the first one's calls again.
    let lock_path = config.data_dir.join("nightshift.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another nightshift daemon is running on {} (it holds {}); stop it first",
            config.data_dir.display(),
            lock_path.display()
        );
    }
    let db_path = config.db_path();
    let store = Store::open(&db_path)
        .with_context(|| format!("opening the database {}", db_path.display()))?;

    let requeued = store
        .call(|c| items::requeue_in_flight(c, now_ms()))
        .await?;
    if requeued > 0 {
        tracing::warn!(
            items = requeued,
            "items were in flight when nightshift last stopped; their outcome is unknown, they will be sent again"
        );
    }
    let work_wake = Arc::new(Notify::new());
    let results_wake = Arc::new(Notify::new());
    let writer = ResultsWriter {
        store: store.clone(),
        results_dir: config.results_dir(),
        wake: results_wake.clone(),
    };
    writer.recover().await?;

    let client = ApiClient::new(&config.api, &key)?;
    let limits_for_rpm = config.clone();
    let rpm_for: crate::planner::RpmFor =
        Arc::new(move |model: &str| limits_for_rpm.limits_for(model).rpm);
    let batch_wake = Arc::new(Notify::new());
    let rules = Arc::new(Rules {
        budgets: config.budgets.clone(),
        prices: config.prices.clone(),
    });
    let batch_lane = BatchLane {
        store: store.clone(),
        client: client.clone(),
        settings: config.batch.clone(),
        max_attempts: config.realtime.max_attempts,
        rpm_for: rpm_for.clone(),
        rules: rules.clone(),
        wake: batch_wake.clone(),
        realtime_wake: work_wake.clone(),
        results_wake: results_wake.clone(),
    };
    let limits_config = config.clone();
    let quota_settings = QuotaSettings {
        reserve: config.quota.reserve,
        output_reservation: config.quota.output_reservation,
        max_concurrency: config.realtime.concurrency,
        initial_concurrency: config.realtime.concurrency.min(4),
    };
    let lane = RealtimeLane {
        store: store.clone(),
        client,
        quota: Arc::new(Mutex::new(Quota::new(
            move |model| limits_config.class_limits(model),
            quota_settings,
        ))),
        settings: config.realtime.clone(),
        wake: work_wake.clone(),
        results_wake: results_wake.clone(),
        paused: Default::default(),
        key_id: key.fingerprint(),
        rules,
        batch_wake: batch_wake.clone(),
    };

    let stop_intake = CancellationToken::new();
    let stop_lane = CancellationToken::new();
    let stop_results = CancellationToken::new();
    let intake = Intake {
        store: store.clone(),
        jobs_dir: config.jobs_dir.clone(),
        wakes: vec![work_wake.clone(), batch_wake.clone()],
        cancel: stop_intake.clone(),
        rpm_for,
        failures: Default::default(),
    };
    let scan_interval = config.daemon.scan_interval;
    let intake_task = tokio::spawn(intake_loop(intake, scan_interval, stop_intake.clone()));
    let publish_task = tokio::spawn(lane.clone().publish_quota(stop_lane.clone()));
    let lane_task = tokio::spawn(lane.run(stop_lane.clone(), config.daemon.shutdown_grace));
    let results_task = tokio::spawn(writer.run(stop_results.clone()));
    let batch_task = tokio::spawn(batch_lane.run(stop_lane.clone()));
    let progress_task = tokio::spawn(progress_loop(store.clone(), stop_intake.clone()));

    tracing::info!(
        jobs_dir = %config.jobs_dir.display(),
        data_dir = %config.data_dir.display(),
        api = %config.api.base_url,
        key = %key.fingerprint(),
        "nightshift is running"
    );

    // Any task ending early is a failure: stop the rest and report it.
    let mut failure: Option<anyhow::Error> = None;
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => tracing::info!("stopping: no new work is admitted"),
        r = wait_failed(&intake_task) => failure = Some(r),
        r = wait_failed(&lane_task) => failure = Some(r),
        r = wait_failed(&batch_task) => failure = Some(r),
        r = wait_failed(&results_task) => failure = Some(r),
    }
    stop_intake.cancel();
    stop_lane.cancel();
    let _ = progress_task.await;
    let _ = publish_task.await;
    let intake_result = intake_task.await;
    let lane_result = lane_task.await;
    let batch_result = batch_task.await;
    stop_results.cancel();
    let results_result = results_task.await;
    store.close().await;
    for (what, result) in [
        ("intake", intake_result),
        ("real-time lane", lane_result),
        ("batch lane", batch_result),
        ("results writer", results_result),
    ] {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e.context(format!("the {what} failed")))),
            Err(e) => failure = failure.or(Some(anyhow::anyhow!("the {what} panicked: {e}"))),
        }
    }
    drop(lock);
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Resolves only if the task has finished (which, before shutdown, means it failed).
async fn wait_failed(task: &tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Error {
    loop {
        if task.is_finished() {
            return anyhow::anyhow!("a daemon task stopped unexpectedly");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How often running jobs' progress goes to the log.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Logs each unfinished job's progress now and then, so the journal shows long work moving.
async fn progress_loop(store: Store, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let jobs = store
            .call(|c| {
                let mut out = Vec::new();
                for job in crate::store::jobs::unfinished(c)? {
                    out.push((job.name, items::counts(c, job.id)?));
                }
                Ok(out)
            })
            .await;
        for (job, c) in jobs.unwrap_or_default() {
            let done = c.succeeded + c.errored + c.expired + c.canceled;
            tracing::info!(job = %job, done, total = c.total, in_flight = c.in_flight, succeeded = c.succeeded, errored = c.errored, "progress");
        }
    }
}

async fn intake_loop(
    intake: Intake,
    interval: std::time::Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        let scanner = intake.clone();
        match tokio::task::spawn_blocking(move || scanner.scan()).await {
            Ok(Ok(_)) => {}
            // A problem with one scan (a vanished file, a full disk) is logged and retried.
            Ok(Err(e)) => tracing::error!(
                error = format!("{e:#}"),
                "intake failed; retrying at the next scan"
            ),
            Err(e) => anyhow::bail!("intake panicked: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => {}
        }
    }
    Ok(())
}
