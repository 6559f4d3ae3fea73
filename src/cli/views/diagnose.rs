//! `nightshift diagnose`: per endpoint and model, the last success, the first failure and the
//! latest failure side by side.

use std::fmt::Write as _;

use rusqlite::Connection;
use serde::Serialize;

use super::{format_time, table};

/// `nightshift diagnose --json`: per endpoint and model, the last success, the first failure and
/// the latest failure side by side.
#[derive(Debug, Serialize)]
pub struct DiagnoseReport {
    pub rows: Vec<Diagnosis>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub endpoint: String,
    pub model: String,
    pub last_success: Option<CallFacts>,
    pub first_failure: Option<CallFacts>,
    pub latest_failure: Option<CallFacts>,
}

/// What a support ticket needs about one call.
#[derive(Debug, Serialize)]
pub struct CallFacts {
    pub at: String,
    pub route: String,
    pub key_id: String,
    pub model: String,
    pub status: Option<u16>,
    pub input_size: Option<i64>,
    pub output_limit: Option<i64>,
    pub concurrency: Option<i64>,
    pub retry_after_ms: Option<i64>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    /// The `anthropic-ratelimit-*` headers of a failure.
    pub headers: Option<serde_json::Value>,
}

pub fn diagnose(conn: &Connection) -> anyhow::Result<DiagnoseReport> {
    use crate::store::quota;
    let key_id = quota::states(conn)?
        .first()
        .map(|s| s.2.clone())
        .unwrap_or_else(|| "-".into());
    let endpoint = "POST /v1/messages".to_owned();
    let failure = |e: quota::ThrottleEvent| CallFacts {
        at: format_time(e.at),
        route: e.endpoint,
        key_id: e.key_id,
        model: e.model,
        status: Some(e.http_status),
        input_size: e.input_estimate,
        output_limit: e.max_tokens,
        concurrency: e.concurrency,
        retry_after_ms: e.retry_after_ms,
        request_id: e.request_id,
        error: e.message,
        headers: serde_json::from_str(&e.headers).ok(),
    };
    let mut rows = Vec::new();
    for model in quota::models_seen(conn)? {
        let success = quota::last_success(conn, &model)?;
        // The first failure since the last success, or the first ever if none came after it.
        let first = match &success {
            Some(s) => quota::first_throttle_after(conn, &model, s.at)?,
            None => None,
        };
        let first = match first {
            Some(event) => Some(event),
            None => quota::throttle_event(conn, &model, true)?,
        };
        let last_success = success.map(|s| CallFacts {
            at: format_time(s.at),
            route: endpoint.clone(),
            key_id: key_id.clone(),
            model: model.clone(),
            status: Some(200),
            input_size: s.input_tokens.or(s.input_estimate),
            output_limit: s.max_tokens,
            concurrency: s.concurrency,
            retry_after_ms: None,
            request_id: s.request_id,
            error: None,
            headers: None,
        });
        rows.push(Diagnosis {
            endpoint: endpoint.clone(),
            model: model.clone(),
            last_success,
            first_failure: first.map(failure),
            latest_failure: quota::throttle_event(conn, &model, false)?.map(failure),
        });
    }
    Ok(DiagnoseReport { rows })
}

/// The cells of one call's column in `diagnose`, in the order of its rows.
fn facts_cells(c: Option<&CallFacts>) -> [String; 10] {
    let Some(c) = c else {
        return std::array::from_fn(|_| "-".to_owned());
    };
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    [
        c.at.clone(),
        c.route.clone(),
        c.key_id.clone(),
        c.status.map_or("-".into(), |s| s.to_string()),
        opt(c.input_size),
        opt(c.output_limit),
        opt(c.concurrency),
        c.retry_after_ms
            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        c.request_id.clone().unwrap_or_else(|| "-".into()),
        c.error.clone().unwrap_or_else(|| "-".into()),
    ]
}

impl DiagnoseReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.rows.is_empty() {
            out.push_str("no real-time calls on record yet\n");
        }
        for d in &self.rows {
            let _ = writeln!(out, "{} — {}", d.endpoint, d.model);
            const NAMES: [&str; 10] = [
                "time",
                "route",
                "key id",
                "status",
                "input size",
                "output limit",
                "concurrency",
                "retry-after",
                "request-id",
                "error",
            ];
            let columns = [&d.last_success, &d.first_failure, &d.latest_failure]
                .map(|c| facts_cells(c.as_ref()));
            let mut rows = vec![vec![
                "".to_owned(),
                "LAST SUCCESS".into(),
                "FIRST FAILURE".into(),
                "LATEST FAILURE".into(),
            ]];
            for (i, name) in NAMES.iter().enumerate() {
                rows.push(vec![
                    (*name).to_owned(),
                    columns[0][i].clone(),
                    columns[1][i].clone(),
                    columns[2][i].clone(),
                ]);
            }
            for line in table(&rows).lines() {
                let _ = writeln!(out, "  {line}");
            }
            out.push('\n');
        }
        out
    }
}
