//! `nightshift bench store [--items N] [--postgres URL]`: the store alone under the load of a
//! daemon's lanes, on SQLite in a temp dir and, given the URL of an empty PostgreSQL database,
//! there too, side by side:
//! - claims/s: an item claimed for the real-time lane (locked, leased, marked in flight with its
//!   attempt row), one claim per store call, 64 calls outstanding (a lane's permits);
//! - results/s: its outcome recorded (the attempt closed, the ledger row, the item final with its
//!   result line, the lease checked), one per store call, 64 outstanding.
//!
//! The job is taken in by intake from a generated file first (not timed).

use std::time::Instant;

use crate::cli::commands::bench::{bench_intake, write_job_file};
use crate::lanes::intake::IntakeOutcome;
use crate::model::state::{AttemptOutcome, ItemState, Lane};
use crate::policy::outcome::{AttemptRecord, ItemUpdate};
use crate::store::leases::Holder;
use crate::store::{Location, Store, items};

/// Store calls outstanding at once.
const OUTSTANDING: usize = 64;

pub async fn run(items: u64, postgres: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut stores = vec![("SQLite", Location::Sqlite(dir.path().join("nightshift.db")))];
    if let Some(url) = postgres {
        let password = crate::cli::env().pgpassword.map(|s| s.0);
        stores.push((
            "PostgreSQL",
            Location::new(
                dir.path().join("unused.db"),
                Some(url),
                None,
                password.as_deref(),
            ),
        ));
    }
    outln!("{items} real-time items; {OUTSTANDING} store calls outstanding, one item each");
    for (name, at) in stores {
        let (claims, results) = measure(name, &at, items, dir.path()).await?;
        outln!("{name:>10}: {claims:>7.0} claims/s, {results:>7.0} results/s ({at})");
    }
    Ok(())
}

/// Takes a generated job in, then claims every item and records every outcome: (claims/s,
/// results/s).
async fn measure(
    name: &str,
    at: &Location,
    items: u64,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let opening = at.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(opening)).await??;
    let fresh = store
        .call(|c| crate::store::jobs::find_by_name(c, "bench"))
        .await?
        .is_none();
    anyhow::ensure!(
        fresh,
        "{at} holds a job named bench already: give the bench an empty database"
    );
    let jobs_dir = dir.join(format!("jobs-{name}"));
    std::fs::create_dir_all(&jobs_dir)?;
    write_job_file(&jobs_dir.join("bench.jsonl"), items, "realtime")?;
    let intake = bench_intake(&store, jobs_dir, dir, crate::model::job::CacheMode::Off);
    let holder = intake.holder.clone();
    let outcomes = tokio::task::spawn_blocking(move || intake.scan()).await??;
    anyhow::ensure!(
        matches!(outcomes.as_slice(), [IntakeOutcome::Ingested { .. }]),
        "intake: {outcomes:?}"
    );
    let ids: Vec<i64> = store
        .call(move |c| {
            Ok(
                items::ready_realtime(c, i64::MAX, items as i64, &[], &[], &[])?
                    .into_iter()
                    .map(|i| i.id)
                    .collect(),
            )
        })
        .await?;
    anyhow::ensure!(ids.len() as u64 == items, "{} items ready", ids.len());

    let started = Instant::now();
    let claims = each(&ids, |id| {
        let (store, holder) = (store.clone(), holder.clone());
        async move { store.call(move |c| claim(c, id, &holder)).await }
    })
    .await?;
    let claim_rate = ids.len() as f64 / started.elapsed().as_secs_f64();

    let prices = crate::policy::prices::PriceTable::default();
    let started = Instant::now();
    each(&claims, |claim| {
        let (store, prices) = (store.clone(), prices.clone());
        async move {
            store
                .call(move |c| {
                    let now = crate::store::now_ms();
                    let record = AttemptRecord {
                        outcome: AttemptOutcome::Succeeded,
                        http_status: Some(200),
                        request_id: Some(format!("req_bench_{}", claim.item_id)),
                        input_tokens: Some(40),
                        output_tokens: Some(12),
                        usage: Some(crate::model::answer::Usage {
                            input_tokens: 40,
                            output_tokens: 12,
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let update = ItemUpdate::Final {
                        state: ItemState::Succeeded,
                        result_line: format!(
                            r#"{{"custom_id":"req-{}","result":{{"type":"succeeded"}}}}"#,
                            claim.item_id
                        ),
                        error: None,
                    };
                    items::record_outcome(c, &prices, &claim, &record, &update, now)
                })
                .await
        }
    })
    .await?;
    let result_rate = claims.len() as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok((claim_rate, result_rate))
}

/// Claims one pending item for the real-time lane, as the lane does (less the budget).
fn claim(c: &crate::store::Conn, id: i64, holder: &Holder) -> crate::store::Result<items::Claim> {
    if !items::claimable(c, id)? {
        return Err(crate::store::StoreError::NotPending(id));
    }
    let now = crate::store::now_ms();
    items::mark_in_flight(
        c,
        id,
        Lane::Realtime,
        (1, 100),
        Some("default"),
        holder,
        now,
    )
    .map(|d| d.claim())
}

/// Runs `f` over `inputs` with [`OUTSTANDING`] at once; their outputs in any order.
async fn each<I, T, F, Fut>(inputs: &[I], f: F) -> anyhow::Result<Vec<T>>
where
    I: Clone,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<T>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        if running.len() >= OUTSTANDING
            && let Some(done) = running.join_next().await
        {
            out.push(done??);
        }
        running.spawn(f(input.clone()));
    }
    while let Some(done) = running.join_next().await {
        out.push(done??);
    }
    Ok(out)
}
