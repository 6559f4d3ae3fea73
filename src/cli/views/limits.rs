//! `nightshift limits`: per model class, the known limits, what remains, utilisation and the last
//! throttling event.

use std::fmt::Write as _;

use rusqlite::Connection;
use serde::Serialize;

use super::{format_time, table};

/// `nightshift limits --json`.
#[derive(Debug, Serialize)]
pub struct LimitsReport {
    pub classes: Vec<ClassLimits>,
    /// Lanes paused because the API refuses the account: (lane, reason, until).
    pub pauses: Vec<Pause>,
}

#[derive(Debug, Serialize)]
pub struct Pause {
    pub lane: String,
    pub reason: String,
    pub until: String,
}

#[derive(Debug, Serialize)]
pub struct ClassLimits {
    pub class: String,
    /// What the daemon last published (every 2 s while it runs).
    pub updated_at: String,
    pub concurrency: u64,
    pub in_flight: u64,
    /// The input estimate's calibration (actual / estimated) and its recent mean error.
    pub input_ratio: f64,
    pub input_error: Option<f64>,
    pub dims: Vec<DimLimits>,
    pub last_throttle: Option<crate::store::quota::ThrottleEvent>,
}

#[derive(Debug, Serialize)]
pub struct DimLimits {
    pub dim: String,
    pub limit_per_minute: Option<f64>,
    pub capacity: f64,
    pub level: f64,
    pub last_remaining: Option<u64>,
    pub used_last_minute: i64,
    /// `used_last_minute` as a fraction of the limit.
    pub utilisation: Option<f64>,
}

/// Lanes paused now because the API refuses the account.
pub(super) fn pauses(conn: &Connection) -> anyhow::Result<Vec<Pause>> {
    Ok(crate::store::quota::pauses(conn, crate::store::now_ms())?
        .into_iter()
        .map(|(lane, reason, until)| Pause {
            lane,
            reason,
            until: format_time(until),
        })
        .collect())
}

/// The lines saying which lanes are paused and why.
pub(super) fn pauses_text(pauses: &[Pause]) -> String {
    pauses
        .iter()
        .map(|p| {
            format!(
                "PAUSED: the {} lane until {}: {}\n",
                p.lane, p.until, p.reason
            )
        })
        .collect()
}

pub fn limits(conn: &Connection, now: i64) -> anyhow::Result<LimitsReport> {
    use crate::store::quota;
    let mut classes = Vec::new();
    for (class, snapshot, _key_id, updated_at) in quota::states(conn)? {
        let snap: serde_json::Value = serde_json::from_str(&snapshot).unwrap_or_default();
        let models = quota::models_of_class(conn, &class)?;
        let used = quota::last_minute_usage(conn, &models, now)?;
        let dims = snap["dims"]
            .as_array()
            .map(|dims| {
                dims.iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let limit = d["limit_per_minute"].as_f64();
                        let used = used.get(i).copied().unwrap_or(0);
                        DimLimits {
                            dim: d["dim"].as_str().unwrap_or_default().to_owned(),
                            limit_per_minute: limit,
                            capacity: d["capacity"].as_f64().unwrap_or(0.0),
                            level: d["level"].as_f64().unwrap_or(0.0),
                            last_remaining: d["last_remaining"].as_u64(),
                            used_last_minute: used,
                            utilisation: limit.filter(|l| *l > 0.0).map(|l| used as f64 / l),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        classes.push(ClassLimits {
            last_throttle: quota::last_throttle_of_class(conn, &class)?,
            class,
            updated_at: format_time(updated_at),
            concurrency: snap["concurrency"].as_u64().unwrap_or(0),
            in_flight: snap["in_flight"].as_u64().unwrap_or(0),
            input_ratio: snap["input_ratio"].as_f64().unwrap_or(1.0),
            input_error: snap["input_error"].as_f64(),
            dims,
        });
    }
    Ok(LimitsReport {
        classes,
        pauses: pauses(conn)?,
    })
}

impl LimitsReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&pauses_text(&self.pauses));
        if self.classes.is_empty() {
            out.push_str("no limits known yet: the daemon publishes them once it has sent calls\n");
            return out;
        }
        let mut rows = vec![
            [
                "CLASS",
                "DIMENSION",
                "LIMIT/MIN",
                "CAPACITY",
                "LEVEL",
                "REMAINING",
                "USED LAST MIN",
                "UTILISATION",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for c in &self.classes {
            for (i, d) in c.dims.iter().enumerate() {
                rows.push(vec![
                    if i == 0 {
                        c.class.clone()
                    } else {
                        String::new()
                    },
                    d.dim.clone(),
                    d.limit_per_minute.map_or("-".into(), |l| format!("{l:.0}")),
                    format!("{:.0}", d.capacity),
                    format!("{:.0}", d.level),
                    d.last_remaining.map_or("-".into(), |r| r.to_string()),
                    d.used_last_minute.to_string(),
                    d.utilisation
                        .map_or("-".into(), |u| format!("{:.0}%", u * 100.0)),
                ]);
            }
        }
        out.push_str(&table(&rows));
        for c in &self.classes {
            let _ = write!(
                out,
                "\n{}: concurrency {} ({} in flight); input estimate x{:.2}",
                c.class, c.concurrency, c.in_flight, c.input_ratio
            );
            if let Some(e) = c.input_error {
                let _ = write!(out, " (mean error {:.0}%)", e * 100.0);
            }
            let _ = writeln!(out, "; published {}", c.updated_at);
            match &c.last_throttle {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "  last throttled {}: HTTP {} {} (request-id {}, retry-after {})",
                        format_time(t.at),
                        t.http_status,
                        t.message.as_deref().unwrap_or(""),
                        t.request_id.as_deref().unwrap_or("-"),
                        t.retry_after_ms
                            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
                    );
                }
                None => out.push_str("  never throttled\n"),
            }
        }
        out
    }
}
