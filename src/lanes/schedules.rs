//! The scheduler of recurring jobs: at each fire time a run of a template is dropped into the jobs
//! folder (`<name>-<time>.jsonl` with its sidecar), where intake takes it in as any other job.
//! Fire times come from the pure `policy::cron`; the clock is passed in, so tests can move time.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::model::time::format_time;
use crate::policy::cron::{next_run, run_name};
use crate::store::schedules::{self, ScheduleRow};
use crate::store::{Store, now_ms};

/// Fires recurring jobs when due (checked every second): each run lands in the jobs folder, where
/// intake takes it in.
pub async fn run(store: Store, jobs_dir: std::path::PathBuf, stop: CancellationToken) {
    loop {
        if let Err(e) = fire_due(&store, &jobs_dir).await {
            tracing::error!(
                error = format!("{e:#}"),
                "a schedule could not fire; trying again in a second"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Fires every schedule due at the time: the run's files off the store's thread, then its record.
pub async fn fire_due(store: &Store, jobs_dir: &Path) -> anyhow::Result<()> {
    let now = now_ms();
    let due = store.call(move |c| schedules::due(c, now)).await?;
    for row in due {
        let dir = jobs_dir.to_owned();
        let name = row.name.clone();
        let (job, next) = tokio::task::spawn_blocking(move || fire(&row, &dir, now)).await??;
        store
            .call(move |c| schedules::record_run(c, &name, &job, now, next))
            .await?;
    }
    Ok(())
}

/// Writes the run of a due schedule (see [`crate::store::schedules::due`]) into `jobs_dir`: sidecar first, then
/// the job file, each by rename. Returns the run's job name and the next fire time after `now`,
/// for [`crate::store::schedules::record_run`]: a run missed while the daemon was down fires once, late, and the
/// ones before it are skipped. File I/O only (the daemon runs it off the store's thread).
#[tracing::instrument(skip_all, fields(schedule = %row.name))]
pub fn fire(row: &ScheduleRow, jobs_dir: &Path, now: i64) -> anyhow::Result<(String, Option<i64>)> {
    let name = run_name(&row.name, row.next_run_at.unwrap_or(now));
    write_run(row, jobs_dir, &name).with_context(|| format!("running schedule {:?}", row.name))?;
    let next = next_run(&row.expr, row.timezone.as_deref(), now);
    tracing::info!(schedule = %row.name, job = %name, next = %next.map(format_time).unwrap_or_default(), "schedule fired");
    Ok((name, next))
}

fn write_run(row: &ScheduleRow, jobs_dir: &Path, name: &str) -> anyhow::Result<()> {
    let template = Path::new(&row.template_path);
    // The sidecar goes first, so the job file never arrives without it.
    let sidecar = jobs_dir.join(format!(".{name}.toml.part"));
    std::fs::write(&sidecar, &row.defaults_toml)?;
    std::fs::rename(&sidecar, jobs_dir.join(format!("{name}.toml")))?;
    let part = jobs_dir.join(format!(".{name}.jsonl.part"));
    std::fs::copy(template, &part)
        .with_context(|| format!("copying the template {}", template.display()))?;
    crate::files::make_private(&part, false)?; // fs::copy keeps the template's mode
    std::fs::File::open(&part)?.sync_all()?;
    std::fs::rename(&part, jobs_dir.join(format!("{name}.jsonl")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_connection;

    /// What the daemon's scheduler does each second, on one connection: fire what is due, record it.
    fn tick(
        conn: &crate::store::sql::Conn,
        jobs_dir: &Path,
        now: i64,
    ) -> anyhow::Result<Vec<String>> {
        let mut fired = Vec::new();
        for row in schedules::due(conn, now)? {
            let (job, next) = fire(&row, jobs_dir, now)?;
            schedules::record_run(conn, &row.name, &job, now, next)?;
            fired.push(job);
        }
        Ok(fired)
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn a_schedule_fires_at_its_time_and_not_before() {
        let conn = test_connection();
        let dir = tempfile::tempdir().expect("tempdir");
        let (jobs, templates) = (dir.path().join("jobs"), dir.path().join("templates"));
        std::fs::create_dir_all(&jobs).expect("jobs");
        std::fs::create_dir_all(&templates).expect("templates");
        let template = templates.join("summary.jsonl");
        std::fs::write(&template, "{\"custom_id\":\"a\"}\n").expect("template");
        let registered = at("2026-11-23T12:00:00Z").as_millisecond();
        let mut row = ScheduleRow {
            name: "summary".into(),
            expr: "0 2 * * *".into(),
            timezone: Some("Europe/Paris".into()),
            template_path: template.display().to_string(),
            defaults_toml: crate::config::sidecar::to_toml(
                &crate::model::job::JobDefaults::default(),
            ),
            next_run_at: None,
            last_run_at: None,
            last_job: None,
            runs: 0,
        };
        row.next_run_at = next_run(&row.expr, row.timezone.as_deref(), registered);
        // 02:00 in Paris in November is 01:00 UTC.
        let due = at("2026-11-24T01:00:00Z").as_millisecond();
        assert_eq!(row.next_run_at, Some(due));
        schedules::upsert(&conn, &row, registered).expect("upsert");

        let just_before = due - 1_000;
        assert!(tick(&conn, &jobs, just_before).expect("tick").is_empty());
        let fired = tick(&conn, &jobs, due).expect("tick");
        assert_eq!(fired, vec!["summary-20261124T010000Z".to_owned()]);
        let run = jobs.join("summary-20261124T010000Z.jsonl");
        assert_eq!(
            std::fs::read_to_string(&run).expect("the run's job file"),
            "{\"custom_id\":\"a\"}\n"
        );
        let sidecar = std::fs::read_to_string(jobs.join("summary-20261124T010000Z.toml"))
            .expect("the run's sidecar");
        assert!(
            crate::config::sidecar::job_defaults(&sidecar).is_ok(),
            "{sidecar}"
        );
        assert!(
            tick(&conn, &jobs, due + 1_000).expect("tick").is_empty(),
            "once"
        );
        let stored = &schedules::list(&conn).expect("list")[0];
        assert_eq!(stored.runs, 1);
        assert_eq!(
            stored.next_run_at,
            Some(at("2026-11-25T01:00:00Z").as_millisecond())
        );
    }

    #[test]
    fn runs_missed_while_down_fire_once_late() {
        let conn = test_connection();
        let dir = tempfile::tempdir().expect("tempdir");
        let template = dir.path().join("t.jsonl");
        std::fs::write(&template, "").expect("template");
        let row = ScheduleRow {
            name: "hourly".into(),
            expr: "0 * * * *".into(),
            timezone: Some("UTC".into()),
            template_path: template.display().to_string(),
            defaults_toml: String::new(),
            next_run_at: Some(at("2026-11-23T01:00:00Z").as_millisecond()),
            last_run_at: None,
            last_job: None,
            runs: 0,
        };
        schedules::upsert(&conn, &row, 0).expect("upsert");
        // Down from 00:30 to 05:10: one late run, then the next hour.
        let back = at("2026-11-23T05:10:00Z").as_millisecond();
        let fired = tick(&conn, dir.path(), back).expect("tick");
        assert_eq!(fired, vec!["hourly-20261123T010000Z".to_owned()]);
        assert_eq!(
            schedules::list(&conn).expect("list")[0].next_run_at,
            Some(at("2026-11-23T06:00:00Z").as_millisecond())
        );
    }
}
