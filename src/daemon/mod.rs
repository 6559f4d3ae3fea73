//! The daemon: opens the store, recovers from whatever the last run left, and runs intake, the
//! real-time lane and the results writer until `shutdown` resolves. Then it stops in order: intake,
//! admission (calls in flight get a grace period), the last results, the store.

pub mod health;
pub mod journal;
pub mod metrics;
pub mod page;
pub mod reload;
pub mod systemd;

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, RouteKeys};
use crate::config::{Config, Live};
use crate::daemon::systemd::Notifier;
use crate::lanes::admission::Rules;
use crate::lanes::batch::BatchLane;
use crate::lanes::intake::Intake;
use crate::lanes::realtime::RealtimeLane;
use crate::lanes::results::ResultsWriter;
use crate::policy::quota::QuotaSettings;
use crate::policy::routing::{RouteSpec, Routing};
use crate::store::{Store, items, now_ms};

/// A daemon running inside this process (the demo, the benchmarks, the tests).
pub struct Handle {
    stop: CancellationToken,
    reload: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the daemon as a task of this process; [`Handle::stop`] shuts it down in order.
/// The daemon's fact naming the config it runs with.
pub const CONFIG_FACT: &str = "config";
/// The `daemon_facts` key of the URL the daemon serves its metrics and page at.
pub const METRICS_FACT: &str = "metrics_url";

pub fn spawn(config: Config, keys: RouteKeys) -> Handle {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let (reload, reloads) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(
        config,
        keys,
        async move { token.cancelled().await },
        reloads,
    ));
    Handle { stop, reload, task }
}

impl Handle {
    /// Reloads the config file as SIGHUP would.
    pub fn reload(&self) {
        let _ = self.reload.send(());
    }

    /// Stops the daemon as SIGTERM would, and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("the daemon task")?
    }
}

/// The file in the data dir that names the daemon's pid (the lock is on the folder itself).
pub const PID_FILE: &str = "nightshift.lock";

/// One daemon per data directory: a second one would send the first one's calls again. The lock
/// (`flock`) is held on the directory itself, which cannot be deleted from under a running daemon
/// the way a lock file can; `nightshift.lock` in it names the holder's pid, for people. Held until
/// the returned handle is dropped (or the process ends, however it ends).
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let dir = std::fs::File::open(data_dir)
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
    // A `status` checking for a daemon holds a shared lock for an instant: try for a moment.
    let mut tries = 0;
    let held = loop {
        match dir.try_lock() {
            Ok(()) => break false,
            Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => break true,
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!(
                "cannot lock the data directory {} ({e}); it must be on a file system with locks (not NFS without them)",
                data_dir.display()
            ),
        }
    };
    if held {
        let holder = std::fs::read_to_string(data_dir.join(PID_FILE)).unwrap_or_default();
        let holder = holder.trim();
        anyhow::bail!(
            "another nightshift daemon is running on {}{}; stop it first",
            data_dir.display(),
            if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            }
        );
    }
    let note = data_dir.join(PID_FILE);
    if let Err(e) = std::fs::write(&note, format!("{}\n", std::process::id())) {
        tracing::warn!(error = %e, path = %note.display(), "cannot write the pid file; the lock holds anyway");
    }
    Ok(dir)
}

/// Refuses folders other users could change: `jobs_dir` and `data_dir` and their parents
/// ([`crate::files::check_folder`]), and symlinks where nightshift keeps results, templates and
/// staged batches. Checked at start and at each reload.
pub fn check_folders(config: &Config) -> Result<(), crate::files::Untrusted> {
    crate::files::check_folder(&config.jobs_dir, "jobs_dir")?;
    crate::files::check_folder(&config.data_dir, "data_dir")?;
    for dir in [
        config.results_dir(),
        config.data_dir.join("templates"),
        config.staging_dir(),
    ] {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            return Err(crate::files::Untrusted::NotAFolder { path: dir });
        }
    }
    Ok(())
}

/// Runs the daemon until `shutdown` resolves; each message on `reloads` (SIGHUP) reloads the config
/// file. `keys` holds the key of each route (a route without a key stops the start). Returns once
/// everything has stopped. Under systemd (`Type=notify`) it says when it is
/// ready (the database migrated and recovered, the jobs folder scanned once), reloading and
/// stopping, and pings the watchdog while the store answers.
pub async fn run(
    config: Config,
    keys: RouteKeys,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    anyhow::ensure!(!config.routes.is_empty(), "the configuration has no route");
    // One client per route, in name order (the config sorts them; the routing's order too).
    let clients = config
        .routes
        .iter()
        .map(|route| {
            let key = keys.get(&route.name).with_context(|| {
                format!(
                    "no API key was given for route `{}`; the daemon needs the key of each route",
                    route.name
                )
            })?;
            ApiClient::new(&config.api, route, key)
        })
        .collect::<anyhow::Result<Vec<ApiClient>>>()?;
    match &config.source {
        Some(path) => tracing::info!(config = %path.display(), "configuration read"),
        // Say which defaults were taken, where the operator looks: with no file, a daemon set up
        // in the default folders against the real API without a word would surprise.
        None => tracing::warn!(
            jobs_dir = %config.jobs_dir.display(),
            data_dir = %config.data_dir.display(),
            api = %config.api.base_url,
            looked_at = crate::config::DEFAULT_CONFIG_PATHS.join(", "),
            "no config file found: running on the built-in defaults (pass --config, or write one of the files looked at)"
        ),
    }
    for dir in [&config.jobs_dir, &config.data_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    check_folders(&config)?;
    let results_dir = config.results_dir();
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    // (After the lock: a second daemon must not touch the first one's files.)
    // Files of an earlier version, or made under a wider umask, become private too.
    for (dir, recurse) in [
        (config.data_dir.clone(), true),
        (
            config.jobs_dir.join(crate::lanes::intake::INGESTED_DIR),
            true,
        ),
    ] {
        // The configured path may be a link (the operator's choice): what it leads to is swept.
        if let Ok(dir) = std::fs::canonicalize(&dir) {
            crate::files::make_private(&dir, recurse)
                .with_context(|| format!("making {} private (chmod -R go-rwx)", dir.display()))?;
        }
    }
    let location = crate::lanes::store_location(&config);
    // Migrating a large database (and copying it first) may outlast systemd's start timeout.
    let opening = location.clone();
    let store = while_starting(&notifier, "opening and migrating the database", move || {
        Store::open(opening)
    })
    .await?
    .with_context(|| format!("opening the database {location}"))?;
    let metrics_token = match &config.metrics_token_file {
        None => None,
        Some(path) => Some(crate::daemon::metrics::Token::read(path).map_err(|e| {
            config.invalid(
                "metrics.token_file",
                format!(
                    "names {}, which cannot be read ({e}); nightshift's user must be able to read it",
                    path.display()
                ),
            )
        })?),
    };
    let metrics_listener = match config.metrics_port {
        None => None,
        Some(port) => Some(
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| {
                    format!("[metrics] port = {port}: cannot listen on 127.0.0.1:{port}")
                })?,
        ),
    };

    let holder = crate::store::leases::Holder::new(
        &crate::store::leases::this_host(),
        &config.data_dir,
        config.store.lease,
    );
    let own = holder.id.clone();
    let requeued = store
        .call(move |c| {
            // What an earlier daemon found in the jobs folder is told afresh by the first scan.
            crate::store::facts::clear(c, &own, crate::lanes::intake::NOT_TAKEN_FACT)?;
            items::requeue_in_flight(c, items::Requeue::StartOf(&own), now_ms())
        })
        .await?;
    if requeued > 0 {
        tracing::warn!(
            items = requeued,
            "items were in flight when nightshift last stopped; their outcome is unknown, they will be sent again"
        );
    }
    let work_wake = Arc::new(Notify::new());
    let results_wake = Arc::new(Notify::new());
    let board = crate::lanes::health::Board::default();
    let writer = ResultsWriter::new(
        store.clone(),
        config.results_dir(),
        results_wake.clone(),
        board.clone(),
        holder.id.clone(),
    )
    .with_hook(config.on_job_done.clone());
    writer.recover().await?;

    // What a reload (SIGHUP) may change: limits, reserve, budgets, prices.
    let live_config = Live::new(config.clone());
    let limits_for_rpm = live_config.clone();
    let rpm_for: crate::policy::planner::RpmFor =
        Arc::new(move |model: &str| limits_for_rpm.get().limits_for(model).rpm);
    let batch_wake = Arc::new(Notify::new());
    let rules = Live::new(Rules::from_config(&config));
    let limits_config = live_config.clone();
    let quota_settings = QuotaSettings {
        reserve: config.quota.reserve,
        output_reservation: config.quota.output_reservation,
        max_concurrency: config.realtime.concurrency,
        initial_concurrency: config.realtime.concurrency.min(4),
    };
    let calls = Arc::new(crate::lanes::calls::CallCounters::default());
    let specs = config
        .routes
        .iter()
        .map(|r| RouteSpec {
            name: r.name.clone(),
            tenants: match &r.tenants {
                crate::config::Tenants::All => None,
                crate::config::Tenants::Only(names) => Some(names.clone()),
            },
        })
        .collect();
    let mut routing = Routing::new(
        specs,
        Arc::new(move |model: &str| limits_config.get().class_limits(model)),
        quota_settings,
    );
    restore_routing(&store, &mut routing, &clients).await;
    // Daemons sharing the store: this one's part of each organization, before its first call
    // (the heartbeat keeps it up to date as daemons come and go).
    let (asking, started) = (holder.clone(), now_ms());
    let others = store
        .call(move |c| crate::store::leases::others_reach(c, &asking, started))
        .await?;
    tell_shares(&routing.set_shares(&others, std::time::Instant::now()));
    let routing = Arc::new(Mutex::new(routing));
    let clients = Arc::new(clients);
    // Both lanes share the routes: a batch is created on a route its items may use and followed
    // with that route's key; a pause either lane makes holds both back.
    let unserved = crate::lanes::routes::Unserved::new(board.clone());
    let batch_lane = BatchLane {
        store: store.clone(),
        clients: clients.clone(),
        routing: routing.clone(),
        settings: config.batch.clone(),
        max_attempts: config.realtime.max_attempts,
        rpm_for: rpm_for.clone(),
        rules: rules.clone(),
        wake: batch_wake.clone(),
        realtime_wake: work_wake.clone(),
        results_wake: results_wake.clone(),
        staging_dir: config.staging_dir(),
        shapes: Default::default(),
        preflight_on: Arc::new(std::sync::atomic::AtomicBool::new(config.batch.preflight)),
        unserved: unserved.clone(),
        tenants_checked: Default::default(),
        holder: holder.clone(),
    };
    let lane = RealtimeLane {
        store: store.clone(),
        clients: clients.clone(),
        routing: routing.clone(),
        settings: config.realtime.clone(),
        wake: work_wake.clone(),
        results_wake: results_wake.clone(),
        rules: rules.clone(),
        batch_wake: batch_wake.clone(),
        calls: calls.clone(),
        idle_probes: Default::default(),
        unserved,
        health: board.clone(),
        holder: holder.clone(),
    };
    let verdict_path = config.data_dir.join(reload::VERDICT_FILE);
    let mut reloader = reload::Reloader {
        seq: reload::read_verdict(&verdict_path).map_or(0, |v| v.seq),
        verdict_path,
        board: board.clone(),
        source: config.source.clone(),
        config: live_config,
        rules,
        routing,
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
        not_taken: Default::default(),
        templates_dir: config.data_dir.join("templates"),
        api_version: config.api.anthropic_version.clone(),
        cache_default: config.cache,
        holder: holder.clone(),
    };
    let scan_interval = config.daemon.scan_interval;
    let (scanned, first_scan) = tokio::sync::oneshot::channel();
    let intake_task = tokio::spawn(intake_loop(
        intake,
        scan_interval,
        stop_intake.clone(),
        scanned,
    ));
    let publish_task = tokio::spawn(lane.clone().publish_quota(stop_lane.clone()));
    let lane_task = tokio::spawn(lane.run(stop_lane.clone(), config.daemon.shutdown_grace));
    let results_task = tokio::spawn(writer.run(stop_results.clone()));
    let batch_task = tokio::spawn(batch_lane.run(stop_lane.clone()));
    let progress_task = tokio::spawn(progress_loop(store.clone(), stop_intake.clone()));

    let watchdog_task = tokio::spawn(watchdog_loop(store.clone(), stop_lane.clone()));
    // Beats until the very end of shutdown, so `status` does not call a long, orderly stop stuck.
    let stop_heartbeat = CancellationToken::new();
    let heartbeat_task = tokio::spawn(heartbeat_loop(
        store.clone(),
        Beating {
            holder: holder.clone(),
            routing: reloader.routing.clone(),
            board: board.clone(),
            work_wake: work_wake.clone(),
            results_wake: results_wake.clone(),
        },
        stop_heartbeat.clone(),
    ));
    let health_task = tokio::spawn(health::run(
        config.data_dir.clone(),
        board.clone(),
        config.daemon.disk_low_bytes,
        stop_heartbeat.clone(),
    ));
    let schedule_task = tokio::spawn(crate::lanes::schedules::run(
        store.clone(),
        config.jobs_dir.clone(),
        stop_intake.clone(),
    ));
    // Which config the daemon runs with, for `status` (a CLI run with another shows both).
    let config_fact = config.source_name();
    let daemon = holder.id.clone();
    store
        .call(move |c| crate::store::facts::set(c, &daemon, CONFIG_FACT, &config_fact, now_ms()))
        .await?;
    let metrics_task = match metrics_listener {
        None => None,
        Some(listener) => {
            let url = format!("http://{}/metrics", listener.local_addr()?);
            tracing::info!(%url, "serving metrics");
            let (fact, daemon) = (url.clone(), holder.id.clone());
            store
                .call(move |c| crate::store::facts::set(c, &daemon, METRICS_FACT, &fact, now_ms()))
                .await?;
            let sources = crate::daemon::metrics::Sources {
                store: location.clone(),
                calls: calls.clone(),
                routing: reloader.routing.clone(),
                health: board.clone(),
                data_dir: config.data_dir.clone(),
                disk_low_bytes: config.daemon.disk_low_bytes,
                results_dir: config.results_dir(),
                rules: reloader.rules.clone(),
            };
            Some(tokio::spawn(crate::daemon::metrics::serve(
                listener,
                sources,
                metrics_token.clone(),
                stop_lane.clone(),
            )))
        }
    };

    // Any task ending early is a failure: stop the rest and report it.
    let mut failure: Option<anyhow::Error> = None;
    tokio::pin!(shutdown);
    let mut first_scan = Some(first_scan);
    let mut starting = tokio::time::interval(START_EXTENSION_EVERY);
    loop {
        tokio::select! {
            // A large job file waiting at start may take longer than systemd's start timeout.
            _ = starting.tick(), if first_scan.is_some() => {
                notifier.extend_timeout(START_EXTENSION_EVERY * 3, "taking in the waiting job files");
            }
            _ = &mut shutdown => {
                tracing::info!("stopping: no new work is admitted");
                break;
            }
            // Ready once the jobs folder has been scanned (migrations and recovery came before).
            Ok(()) = async { first_scan.as_mut().expect("guarded").await }, if first_scan.is_some() => {
                first_scan = None;
                tracing::info!(
                    jobs_dir = %config.jobs_dir.display(),
                    data_dir = %config.data_dir.display(),
                    routes = %clients
                        .iter()
                        .map(|c| format!("{} ({} key {})", c.route_name(), c.host(), c.key_id()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    "nightshift is running"
                );
                notifier.ready("running");
            }
            Some(()) = reloads.recv() => {
                notifier.reloading();
                let verdict = reloader.reload();
                if first_scan.is_none() {
                    notifier.ready(&format!("running; {}", verdict.message));
                }
            }
            r = wait_failed(&intake_task) => { failure = Some(r); break; }
            r = wait_failed(&lane_task) => { failure = Some(r); break; }
            r = wait_failed(&batch_task) => { failure = Some(r); break; }
            r = wait_failed(&results_task) => { failure = Some(r); break; }
        }
    }
    notifier.stopping();
    // Shutdown is bounded whatever the store is doing (a held lock, a full disk): what has not
    // stopped by the deadline is left exactly as a kill -9 would leave it, for the next start.
    let deadline = tokio::time::Instant::now() + config.daemon.shutdown_grace + SHUTDOWN_MARGIN;
    stop_intake.cancel();
    stop_lane.cancel();
    let _ = by_deadline(deadline, "progress reports", progress_task).await;
    let _ = by_deadline(deadline, "quota publishing", publish_task).await;
    let _ = by_deadline(deadline, "the watchdog", watchdog_task).await;
    let _ = by_deadline(deadline, "the scheduler", schedule_task).await;
    if let Some(task) = metrics_task {
        let _ = by_deadline(deadline, "the metrics endpoint", task).await;
        let daemon = holder.id.clone();
        let cleared = store.call(move |c| crate::store::facts::clear(c, &daemon, METRICS_FACT));
        let _ = by_deadline(deadline, "clearing the metrics address", cleared).await;
    }
    let intake_result = by_deadline(deadline, "intake", intake_task).await;
    let lane_result = by_deadline(deadline, "the real-time lane", lane_task).await;
    let batch_result = by_deadline(deadline, "the batch lane", batch_task).await;
    stop_results.cancel();
    let results_result = by_deadline(deadline, "the results writer", results_task).await;
    stop_heartbeat.cancel();
    let _ = by_deadline(deadline, "the heartbeat", heartbeat_task).await;
    let _ = by_deadline(deadline, "the health file", health_task).await;
    // Stopped in order: `status` says no daemon runs (a crash leaves the heartbeat to go stale).
    let leaving = holder.clone();
    let gone = store.call(move |c| {
        crate::store::leases::leave(c, &leaving)?;
        crate::store::facts::clear(c, &leaving.id, DAEMON_FACT)?;
        crate::store::facts::clear(c, &leaving.id, HEARTBEAT_FACT)
    });
    let _ = by_deadline(deadline, "saying the daemon stops", gone).await;
    let closed = by_deadline(deadline, "the store", store.close()).await;
    for (what, result) in [
        ("intake", intake_result),
        ("real-time lane", lane_result),
        ("batch lane", batch_result),
        ("results writer", results_result),
    ] {
        match result {
            // Not stopped by the deadline: said so already; the next start reconciles.
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => failure = failure.or(Some(e.context(format!("the {what} failed")))),
            Some(Err(e)) => failure = failure.or(Some(anyhow::anyhow!("the {what} panicked: {e}"))),
        }
    }
    if closed.is_some() {
        drop(data_dir_lock);
    } else {
        // The store's writer may still commit: no second daemon may start on this data dir until
        // this process has ended.
        std::mem::forget(data_dir_lock);
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Shutdown ends by `shutdown_grace` (calls in flight finish within it) plus this.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(4);

/// Awaits `work` until the shutdown deadline; None (and a warning) if it is not done by then.
async fn by_deadline<T>(
    deadline: tokio::time::Instant,
    what: &str,
    work: impl Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(done) => Some(done),
        Err(_) => {
            tracing::warn!(
                what,
                "not stopped by the shutdown deadline; left as a kill -9 would leave it, for the next start"
            );
            None
        }
    }
}

/// How often to ask systemd for more start-up time while starting takes long.
const START_EXTENSION_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs blocking start-up `work`, asking systemd for more start-up time while it lasts.
async fn while_starting<T: Send + 'static>(
    notifier: &Notifier,
    status: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let mut task = tokio::task::spawn_blocking(work);
    loop {
        tokio::select! {
            done = &mut task => return done.context("a start-up task panicked"),
            _ = tokio::time::sleep(START_EXTENSION_EVERY) => {
                notifier.extend_timeout(START_EXTENSION_EVERY * 3, status);
            }
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

/// The `daemon_facts` key of the running daemon's pid, start time and version.
pub const DAEMON_FACT: &str = "daemon";
/// The `daemon_facts` key of its heartbeat: the time, written every [`HEARTBEAT_EVERY`] while the
/// store takes writes (a stale one says the database is locked, the disk full, or the daemon
/// gone).
pub const HEARTBEAT_FACT: &str = "heartbeat";
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the heartbeat needs besides the store.
struct Beating {
    holder: crate::store::leases::Holder,
    /// Whose organizations it publishes, and whose shares of them it sets.
    routing: Arc<Mutex<Routing>>,
    board: crate::lanes::health::Board,
    /// Woken when work was taken back from a daemon that stopped.
    work_wake: Arc<Notify>,
    /// Woken when a results file was adopted from a daemon that stopped.
    results_wake: Arc<Notify>,
}

/// Says who runs on this data dir and beats until `stop`: renews this daemon's leases, takes
/// back the work of daemons whose leases expired (woken lanes send it again) and the results
/// files of those that stopped beating, and paces each
/// organization to this daemon's part of it among the live daemons reaching it.
async fn heartbeat_loop(store: Store, beating: Beating, stop: CancellationToken) {
    let Beating {
        holder,
        routing,
        board,
        work_wake,
        results_wake,
    } = beating;
    let since = now_ms();
    let who = serde_json::json!({
        "pid": std::process::id(),
        "since": since,
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    let daemon = crate::store::leases::Daemon {
        host: crate::store::leases::this_host(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: since,
    };
    let lease = std::time::Duration::from_millis(holder.ttl_ms.max(0) as u64);
    // Three beats per lease: one late beat never loses one.
    let every = HEARTBEAT_EVERY.min((lease / 3).max(std::time::Duration::from_millis(100)));
    loop {
        let now = now_ms();
        let (who, holder, daemon) = (who.clone(), holder.clone(), daemon.clone());
        let reach = crate::lock(&routing).reach();
        // Who it is, every beat too: a first write that failed (a full disk) is made good.
        let beat = store
            .call(move |c| {
                crate::store::facts::set(c, &holder.id, DAEMON_FACT, &who, since)?;
                crate::store::facts::set(c, &holder.id, HEARTBEAT_FACT, &now.to_string(), now)?;
                crate::store::leases::beat(c, &holder, &daemon, &reach, now)?;
                let swept = crate::store::leases::sweep(c, now)?;
                let adopted = crate::store::results::adopt_orphans(c, &holder, now)?;
                let others = crate::store::leases::others_reach(c, &holder, now)?;
                Ok((swept, adopted, others))
            })
            .await;
        match beat {
            Ok((swept, adopted, others)) => {
                board.clear(crate::lanes::health::STORE);
                for job in &adopted {
                    tracing::warn!(%job, "the daemon that kept this job's results file stopped; this one writes it now, in full");
                }
                if !adopted.is_empty() {
                    results_wake.notify_one();
                }
                let changed = crate::lock(&routing).set_shares(&others, std::time::Instant::now());
                tell_shares(&changed);
                if swept != Default::default() {
                    tracing::warn!(
                        items = swept.items,
                        batches = swept.batches,
                        "took over work whose daemon stopped renewing its leases; items in flight are sent again (their outcome is unknown)"
                    );
                    work_wake.notify_one();
                }
            }
            Err(e) => {
                let error = e.to_string();
                let what = crate::lanes::health::store_trouble(&error);
                board.set(crate::lanes::health::STORE, what, &error, now, None);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Says which organizations this daemon now paces to a new part of (daemons came or went).
fn tell_shares(changed: &[(String, f64)]) {
    for (organization, share) in changed {
        let daemons = (1.0 / share).round();
        tracing::info!(
            %organization,
            share,
            "{daemons} daemons sharing the store reach this organization: this one paces itself to 1/{daemons} of its limits"
        );
    }
}

/// Pings the systemd watchdog (when the unit sets `WatchdogSec=`) as long as the store's writer
/// answers: a wedged database thread stops the pings, and systemd restarts the service.
async fn watchdog_loop(store: Store, stop: CancellationToken) {
    let Some(every) = crate::daemon::systemd::watchdog_interval() else {
        return;
    };
    let notifier = Notifier::from_env();
    loop {
        let alive = tokio::time::timeout(
            every,
            store.call(|c| c.query_row("SELECT 1", (), |r| r.get::<_, i64>(0))),
        )
        .await;
        match alive {
            Ok(Ok(_)) => notifier.watchdog(),
            _ => tracing::warn!("the database did not answer in time; the watchdog is not pinged"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn intake_loop(
    intake: Intake,
    interval: std::time::Duration,
    stop: CancellationToken,
    scanned: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut scanned = Some(scanned);
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
        // Intake is up once it has been through the folder, whatever it found there: a folder it
        // cannot read is logged and retried, and must not hold the service in "activating".
        if let Some(tx) = scanned.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => {}
        }
    }
    Ok(())
}

/// Gives the routing back what it knew before the last stop: the organization each route's
/// answers named (for the same key), so routes of one organization share its buckets from the
/// first call, and what each organization's quota learned, so a backlog resumes at the learned
/// rate. What cannot be read is left out: that part starts from a probe, as on a first start.
async fn restore_routing(store: &Store, routing: &mut Routing, clients: &[ApiClient]) {
    let read = store
        .call(|c| {
            Ok((
                crate::store::routes::all(c)?,
                crate::store::quota::learned(c)?,
            ))
        })
        .await;
    let (routes, rows) = match read {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read what the quota controller learned; starting from a probe");
            return;
        }
    };
    for row in routes {
        let Some(i) = routing.route_index(&row.name) else {
            continue;
        };
        // Another key may be another organization: learned again from its first answer.
        if clients[i].key_id() == row.key_id && row.organization_id.is_some() {
            routing.learn(
                i,
                row.organization_id.as_deref(),
                row.workspace_id.as_deref(),
                true,
            );
        }
    }
    let (now_ms, now) = (now_ms(), std::time::Instant::now());
    for (group, json, key_id, updated_at) in rows {
        // What a route learned before its answers named its organization was its key's: another
        // key may be another organization.
        if let Some(name) = group.strip_prefix("route:")
            && routing
                .route_index(name)
                .is_none_or(|i| clients[i].key_id() != key_id)
        {
            continue;
        }
        let Ok(learned) = serde_json::from_str::<crate::policy::quota::Learned>(&json) else {
            tracing::warn!("a quota state that cannot be read; that class starts from a probe");
            continue;
        };
        let age = std::time::Duration::from_millis((now_ms - updated_at).max(0) as u64);
        tracing::info!(
            organization = %group,
            model = %learned.model,
            concurrency = learned.concurrency,
            age_secs = age.as_secs(),
            "resuming at the limits learned before the restart"
        );
        routing.restore(&group, &learned, age, now);
    }
}
