//! `nightshift item JOB CUSTOM_ID`: everything known about one item: its state and lane, each
//! call with its outcome, request-id and retry-after, its batch, what it cost, its result line,
//! and the lines it had before a retry.

use std::fmt::Write as _;

use crate::store::sql::Conn;
use serde::Serialize;

use super::{format_time, format_usd};
use crate::store::attempts::{self, Call};
use crate::store::items::{self, ItemDetail};
use crate::store::{batches, jobs, ledger, results};

/// `nightshift item JOB CUSTOM_ID --json`.
#[derive(Debug, Serialize)]
pub struct ItemReport {
    pub job: String,
    #[serde(flatten)]
    pub item: ItemDetail,
    /// Every call sent for it, first first.
    pub calls: Vec<Call>,
    /// The batch it is (or was last) in.
    pub batch: Option<ItemBatch>,
    /// Its billed calls from the ledger, and their cost in USD.
    pub billed_calls: i64,
    pub cost_usd: f64,
    /// Billed calls whose model has no price (not in `cost_usd`).
    pub unpriced_calls: i64,
    /// Its line in the results file (as JSON), once it is final.
    pub result: Option<serde_json::Value>,
    /// The lines it had before `nightshift retry` sent it again, oldest first.
    pub earlier_results: Vec<EarlierResult>,
}

#[derive(Debug, Serialize)]
pub struct ItemBatch {
    /// The API's id (`msgbatch_…`), null until the create call answered.
    pub id: Option<String>,
    pub state: String,
    /// The route it belongs to.
    pub route: String,
}

#[derive(Debug, Serialize)]
pub struct EarlierResult {
    pub result: serde_json::Value,
    /// RFC 3339.
    pub retired_at: String,
}

/// The item `custom_id` of job `job` (`nightshift:line:N` names a line without a usable
/// custom_id); None when either is unknown (the error names which).
pub fn item(conn: &Conn, job: &str, custom_id: &str) -> anyhow::Result<ItemLookup> {
    let Some(job_row) = jobs::find_by_name(conn, job)? else {
        return Ok(ItemLookup::NoJob);
    };
    let Some(item_id) = items::find(conn, job_row.id, custom_id)? else {
        return Ok(ItemLookup::NoItem);
    };
    let item = items::detail(conn, item_id)?;
    let batch = match item.batch_id {
        Some(batch_id) => batches::by_job(conn, job_row.id)?
            .into_iter()
            .find(|b| b.id == batch_id)
            .map(|b| ItemBatch {
                id: b.api_id,
                state: b.state.as_str().to_owned(),
                route: b.route,
            }),
        None => None,
    };
    let (billed_calls, micro, unpriced_calls) = ledger::item_billed(conn, item_id)?;
    let parse = |line: &str| {
        serde_json::from_str(line).unwrap_or_else(|_| serde_json::Value::String(line.to_owned()))
    };
    Ok(ItemLookup::Found(Box::new(ItemReport {
        job: job_row.name,
        calls: attempts::of_item(conn, item_id)?,
        batch,
        billed_calls,
        cost_usd: micro as f64 / 1e6,
        unpriced_calls,
        result: results::line_of(conn, item_id)?.as_deref().map(parse),
        earlier_results: results::retired_of(conn, item_id)?
            .into_iter()
            .map(|(line, at)| EarlierResult {
                result: parse(&line),
                retired_at: format_time(at),
            })
            .collect(),
        item,
    })))
}

pub enum ItemLookup {
    Found(Box<ItemReport>),
    NoJob,
    NoItem,
}

impl ItemReport {
    pub fn to_text(&self) -> String {
        let i = &self.item;
        let mut out = String::new();
        let name = i.custom_id.as_deref().unwrap_or("(no usable custom_id)");
        let _ = writeln!(out, "item       {name} (job {}, line {})", self.job, i.line);
        let held = match i.held {
            Some("paused") => " (paused: nightshift resume lets it go)".to_owned(),
            Some(why) => format!(" (held by a {why} until {})", format_time(i.not_before)),
            None => String::new(),
        };
        let _ = writeln!(out, "state      {}{held}", i.state);
        if let Some(error) = &i.error {
            let _ = writeln!(out, "error      {error}");
        }
        let _ = writeln!(
            out,
            "lane       {} ({})",
            i.lane.as_deref().unwrap_or("-"),
            i.lane_reason
                .as_deref()
                .unwrap_or("no lane: errored at intake")
        );
        let model = match (&i.model, &i.downgraded_from) {
            (Some(m), Some(from)) => format!("{m} (downgraded from {from} by a budget)"),
            (Some(m), None) => m.clone(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "request    {model}, tenant {}, priority {}, mode {}",
            i.tenant, i.priority, i.mode
        );
        if let Some(tokens) = i.cache_prefix_tokens {
            let by = if i.cache_added {
                "a breakpoint nightshift added"
            } else {
                "its own breakpoint"
            };
            let _ = writeln!(out, "cache      marks a ~{tokens}-token prefix ({by})");
        }
        if let Some(b) = &self.batch {
            let _ = writeln!(
                out,
                "batch      {} ({}{})",
                b.id.as_deref().unwrap_or("(being created)"),
                b.state,
                if b.route == crate::config::DEFAULT_ROUTE {
                    String::new()
                } else {
                    format!(", route {}", b.route)
                }
            );
        }
        let _ = writeln!(
            out,
            "billed     {} calls, {}{}",
            self.billed_calls,
            format_usd(self.cost_usd),
            if self.unpriced_calls > 0 {
                format!(" ({} without a price, not counted)", self.unpriced_calls)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "calls      {} sent, {} counted as failures",
            i.attempts, i.failures
        );
        if !self.calls.is_empty() {
            let mut rows = vec![
                [
                    "#",
                    "LANE",
                    "ROUTE",
                    "STARTED",
                    "OUTCOME",
                    "HTTP",
                    "REQUEST ID",
                    "RETRY-AFTER",
                    "ERROR",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for c in &self.calls {
                rows.push(vec![
                    c.attempt.to_string(),
                    c.lane.clone(),
                    c.route.clone().unwrap_or_else(|| "-".into()),
                    format_time(c.started_at),
                    c.outcome.clone().unwrap_or_else(|| "in flight".into()),
                    c.http_status.map_or("-".into(), |s| s.to_string()),
                    c.request_id.clone().unwrap_or_else(|| "-".into()),
                    c.retry_after_ms
                        .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                    c.error.clone().unwrap_or_default(),
                ]);
            }
            for line in super::table(&rows).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        match &self.result {
            Some(result) => {
                let _ = writeln!(out, "result     {result}");
            }
            None => {
                let _ = writeln!(out, "result     none yet");
            }
        }
        for earlier in &self.earlier_results {
            let _ = writeln!(
                out,
                "before     {} (retired {})",
                earlier.result, earlier.retired_at
            );
        }
        out
    }
}
