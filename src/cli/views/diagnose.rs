//! `nightshift diagnose`: per route, endpoint and model, the last success, the first failure and
//! the latest failure side by side, and who owned each recent 429 and 529 (the verdicts of
//! `policy::owner`, with the evidence each rests on).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::store::sql::Conn;
use serde::Serialize;

use super::{format_time, table};
use crate::store::quota::{self, ThrottleEvent};
use crate::store::routes::RouteRow;

/// Throttle events shown per route and model, latest first.
const EVENTS_SHOWN: i64 = 20;

/// `nightshift diagnose --json` (and the body of `--evidence FILE`).
#[derive(Debug, Serialize)]
pub struct DiagnoseReport {
    /// Each route: where it goes, the organization its answers named, its state, and how many
    /// throttling answers each owner had.
    pub routes: Vec<RouteDiagnosis>,
    /// Per route and model: last success, first failure since it, latest failure.
    pub rows: Vec<Diagnosis>,
    /// The latest throttling answers per route and model, each with its owner.
    pub events: Vec<CallFacts>,
}

#[derive(Debug, Serialize)]
pub struct RouteDiagnosis {
    pub route: String,
    pub host: Option<String>,
    pub key_id: Option<String>,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    pub state: Option<String>,
    pub reason: Option<String>,
    /// Throttling answers on record by owner (`self`, `foreign`, …).
    pub owners: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub endpoint: String,
    pub route: String,
    pub model: String,
    pub last_success: Option<CallFacts>,
    pub first_failure: Option<CallFacts>,
    pub latest_failure: Option<CallFacts>,
}

/// What a support ticket needs about one call (never a key, a prompt or an answer).
#[derive(Debug, Serialize)]
pub struct CallFacts {
    pub at: String,
    pub endpoint: String,
    pub route: String,
    pub host: Option<String>,
    pub key_id: String,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
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
    /// Whose limit it was, and what that rests on (failures only).
    pub owner: Option<String>,
    pub evidence: Option<String>,
    pub resets_at: Option<String>,
}

impl CallFacts {
    fn of_event(e: ThrottleEvent) -> CallFacts {
        CallFacts {
            at: format_time(e.at),
            endpoint: e.endpoint,
            route: e.route,
            host: e.host,
            key_id: e.key_id,
            organization_id: e.organization_id,
            workspace_id: e.workspace_id,
            model: e.model,
            status: Some(e.http_status),
            input_size: e.input_estimate,
            output_limit: e.max_tokens,
            concurrency: e.concurrency,
            retry_after_ms: e.retry_after_ms,
            request_id: e.request_id,
            error: e.message,
            headers: serde_json::from_str(&e.headers).ok(),
            owner: e.owner,
            evidence: e.evidence,
            resets_at: e.reset_at.map(format_time),
        }
    }
}

pub fn diagnose(conn: &Conn) -> anyhow::Result<DiagnoseReport> {
    let known: Vec<RouteRow> = crate::store::routes::all(conn)?;
    let endpoint = "POST /v1/messages".to_owned();
    let mut rows = Vec::new();
    let mut events = Vec::new();
    let mut owners: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (route, owner, count) in owner_counts(conn)? {
        owners.entry(route).or_default().insert(owner, count);
    }
    for (route, model) in quota::routes_and_models_seen(conn)? {
        let row = known.iter().find(|r| r.name == route);
        // Batch creates are recorded under the model `(batches)`.
        let endpoint = if model == "(batches)" {
            "POST /v1/messages/batches".to_owned()
        } else {
            endpoint.clone()
        };
        let success = quota::last_success(conn, &route, &model)?;
        // The first failure since the last success, or the first ever if none came after it.
        let first = match &success {
            Some(s) => quota::first_throttle_after(conn, &route, &model, s.at)?,
            None => None,
        };
        let first = match first {
            Some(event) => Some(event),
            None => quota::throttle_event(conn, &route, &model, true)?,
        };
        let last_success = success.map(|s| CallFacts {
            at: format_time(s.at),
            endpoint: endpoint.clone(),
            route: route.clone(),
            host: row.map(|r| r.host.clone()),
            key_id: row.map_or_else(|| "-".into(), |r| r.key_id.clone()),
            organization_id: row.and_then(|r| r.organization_id.clone()),
            workspace_id: row.and_then(|r| r.workspace_id.clone()),
            model: model.clone(),
            status: Some(200),
            input_size: s.input_tokens.or(s.input_estimate),
            output_limit: s.max_tokens,
            concurrency: s.concurrency,
            retry_after_ms: None,
            request_id: s.request_id,
            error: None,
            headers: None,
            owner: None,
            evidence: None,
            resets_at: None,
        });
        rows.push(Diagnosis {
            endpoint: endpoint.clone(),
            route: route.clone(),
            model: model.clone(),
            last_success,
            first_failure: first.map(CallFacts::of_event),
            latest_failure: quota::throttle_event(conn, &route, &model, false)?
                .map(CallFacts::of_event),
        });
        events.extend(
            quota::throttle_events(conn, &route, &model, EVENTS_SHOWN)?
                .into_iter()
                .map(CallFacts::of_event),
        );
    }
    let mut names: Vec<String> = known.iter().map(|r| r.name.clone()).collect();
    for name in rows.iter().map(|r| &r.route).chain(owners.keys()) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let routes = names
        .into_iter()
        .map(|name| {
            let row = known.iter().find(|r| r.name == name);
            RouteDiagnosis {
                host: row.map(|r| r.host.clone()),
                key_id: row.map(|r| r.key_id.clone()),
                organization_id: row.and_then(|r| r.organization_id.clone()),
                workspace_id: row.and_then(|r| r.workspace_id.clone()),
                state: row.map(|r| r.state.clone()),
                reason: row.and_then(|r| r.reason.clone()),
                owners: owners.remove(&name).unwrap_or_default(),
                route: name,
            }
        })
        .collect();
    Ok(DiagnoseReport {
        routes,
        rows,
        events,
    })
}

/// (route, owner, events) over every throttle event on record.
fn owner_counts(conn: &Conn) -> anyhow::Result<Vec<(String, String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT route, COALESCE(owner, 'unjudged'), COUNT(*) FROM throttle_events GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
    })?;
    Ok(rows.collect::<crate::store::Result<Vec<_>>>()?)
}

/// The cells of one call's column in `diagnose`, in the order of its rows.
fn facts_cells(c: Option<&CallFacts>) -> [String; 13] {
    let Some(c) = c else {
        return std::array::from_fn(|_| "-".to_owned());
    };
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    [
        c.at.clone(),
        c.host.clone().unwrap_or_else(|| "-".into()),
        c.key_id.clone(),
        text(&c.organization_id),
        c.status.map_or("-".into(), |s| s.to_string()),
        text(&c.owner),
        opt(c.input_size),
        opt(c.output_limit),
        opt(c.concurrency),
        c.retry_after_ms
            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        text(&c.request_id),
        text(&c.error),
        text(&c.evidence),
    ]
}

impl DiagnoseReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.rows.is_empty() && self.routes.is_empty() {
            out.push_str("no real-time calls on record yet\n");
        }
        for r in &self.routes {
            let _ = write!(
                out,
                "route {}: {} key {} organization {}",
                r.route,
                r.host.as_deref().unwrap_or("-"),
                r.key_id.as_deref().unwrap_or("-"),
                r.organization_id.as_deref().unwrap_or("(not known yet)")
            );
            if let Some(w) = &r.workspace_id {
                let _ = write!(out, " workspace {w}");
            }
            let _ = write!(out, "; {}", r.state.as_deref().unwrap_or("not running"));
            if let Some(reason) = &r.reason {
                let _ = write!(out, " ({reason})");
            }
            out.push('\n');
            if r.owners.is_empty() {
                out.push_str("  never throttled\n");
            } else {
                let owners: Vec<String> =
                    r.owners.iter().map(|(o, n)| format!("{o} {n}")).collect();
                let _ = writeln!(out, "  429/529 by owner: {}", owners.join(", "));
            }
        }
        if !self.routes.is_empty() {
            out.push('\n');
        }
        for d in &self.rows {
            let _ = writeln!(out, "{} — {} via route {}", d.endpoint, d.model, d.route);
            const NAMES: [&str; 13] = [
                "time",
                "host",
                "key id",
                "organization",
                "status",
                "owner",
                "input size",
                "output limit",
                "concurrency",
                "retry-after",
                "request-id",
                "error",
                "evidence",
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
        if !self.events.is_empty() {
            let mut rows = vec![
                [
                    "TIME",
                    "ROUTE",
                    "MODEL",
                    "STATUS",
                    "OWNER",
                    "REQUEST-ID",
                    "EVIDENCE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for e in &self.events {
                rows.push(vec![
                    e.at.clone(),
                    e.route.clone(),
                    e.model.clone(),
                    e.status.map_or("-".into(), |s| s.to_string()),
                    e.owner.clone().unwrap_or_else(|| "-".into()),
                    e.request_id.clone().unwrap_or_else(|| "-".into()),
                    e.evidence.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            out.push_str("latest throttling answers, with their owners:\n");
            out.push_str(&table(&rows));
        }
        out
    }
}

/// `nightshift diagnose --evidence FILE`: what a support ticket needs, per route and model, with
/// no key, no prompt and no answer in it.
#[derive(Debug, Serialize)]
pub struct EvidenceBundle {
    pub generated_at: String,
    pub nightshift_version: &'static str,
    /// The quota's view of each organization's classes as last published.
    pub limits: Vec<serde_json::Value>,
    #[serde(flatten)]
    pub diagnosis: DiagnoseReport,
}

pub fn evidence(conn: &Conn, now: i64) -> anyhow::Result<EvidenceBundle> {
    let limits = quota::states(conn)?
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "organization": s.grp,
                "key_id": s.key_id,
                "published_at": format_time(s.updated_at),
                "state": serde_json::from_str::<serde_json::Value>(&s.snapshot).unwrap_or_default(),
            })
        })
        .collect();
    Ok(EvidenceBundle {
        generated_at: format_time(now),
        nightshift_version: env!("CARGO_PKG_VERSION"),
        limits,
        diagnosis: diagnose(conn)?,
    })
}
