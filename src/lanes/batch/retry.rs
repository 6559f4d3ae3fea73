//! `nightshift retry`, carried out: in one transaction per request, the chosen final items go
//! back to the planner (which decides their lane afresh), their earlier result lines are retired
//! and the job's results file is written anew, so it ends with each custom_id once, with the
//! latest outcome. Done in the batch lane's round, beside cancel requests: it has what the
//! planner needs.

use crate::store::sql::Conn;

use super::apply::Replan;
use crate::store::{self, batches, items, jobs, retry};

/// Carries out every pending retry request. Returns (job, items sent back) per request done.
pub fn take_requests(conn: &Conn, replan: &Replan<'_>) -> store::Result<Vec<(String, usize)>> {
    let mut done = Vec::new();
    for request in retry::pending(conn)? {
        // Each request in a savepoint of its own: one that fails is undone and answered with
        // its error, and neither holds the others nor the batch lane's round up.
        conn.execute_batch("SAVEPOINT retry_request")?;
        let (outcome, count) = match carry_out(conn, &request, replan) {
            Ok(done) => {
                conn.execute_batch("RELEASE retry_request")?;
                done
            }
            Err(e) => {
                conn.execute_batch("ROLLBACK TO retry_request; RELEASE retry_request")?;
                tracing::error!(job = %request.job_name, error = %e, "a retry request failed");
                (format!("the retry failed, nothing was changed: {e}"), 0)
            }
        };
        retry::done(conn, request.id, &outcome, replan.now)?;
        tracing::info!(job = %request.job_name, items = count, "{outcome}");
        done.push((request.job_name, count));
    }
    Ok(done)
}

fn carry_out(
    conn: &Conn,
    request: &retry::Request,
    replan: &Replan<'_>,
) -> store::Result<(String, usize)> {
    let Some(job) = jobs::find_by_name(conn, &request.job_name)? else {
        return Ok((
            format!("no job named {:?}: nothing retried", request.job_name),
            0,
        ));
    };
    if job.canceled_at.is_some() {
        return Ok((
            format!(
                "job {} was canceled: nothing retried (submit it again under another name)",
                job.name
            ),
            0,
        ));
    }
    let (chosen, unknown) = retry::candidates(conn, job.id, &request.choice)?;
    let turnaround = batches::turnaround_ms(conn)?;
    for &item_id in &chosen {
        let item = items::item(conn, item_id)?;
        let plan = super::apply::decide_again(&item, replan, turnaround);
        retry::reopen_item(
            conn,
            item_id,
            plan.lane.as_str(),
            &format!("retried (nightshift retry); {}", plan.reason),
            replan.now,
        )?;
    }
    if !chosen.is_empty() {
        retry::reopen_job(conn, job.id)?;
    }
    let mut outcome = format!(
        "{} items of job {} went back to the planner; its results file is written again and ends with each custom_id once",
        chosen.len(),
        job.name
    );
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(5).map(String::as_str).collect();
        outcome.push_str(&format!(
            "; {} ids are not final items of the job with a request: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > 5 { ", …" } else { "" }
        ));
    }
    Ok((outcome, chosen.len()))
}
