//! `nightshift limits`: per organization, the routes that share its limits; per model class,
//! the known limits, what remains, utilisation and the last throttling event; and each route's
//! state (paused, deprioritised, with why).

use std::fmt::Write as _;

use crate::store::sql::Conn;
use serde::Serialize;

use super::{format_time, table};

/// `nightshift limits --json`.
#[derive(Debug, Serialize)]
pub struct LimitsReport {
    /// Each organization (and workspace) and the routes that share its limits.
    pub organizations: Vec<Organization>,
    /// Every route: host, key id, organization, state and why.
    pub routes: Vec<crate::store::routes::RouteRow>,
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
pub struct Organization {
    /// The key its quota is kept under: `org` or `org/workspace`, or `route:<name>` for a route
    /// whose answers have not named one yet.
    pub group: String,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    pub routes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ClassLimits {
    /// The organization (`Organization::group`) whose bucket this is.
    pub organization: String,
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

/// Routes paused now (the API refuses the account or key, or the route cannot be reached), or
/// deprioritised.
pub(super) fn pauses(conn: &Conn) -> anyhow::Result<Vec<Pause>> {
    let now = crate::store::now_ms();
    let mut pauses: Vec<Pause> = Vec::new();
    // A route's pause holds both lanes back from it; a deprioritised one takes calls only when
    // no other route can. (A row the daemon wrote before it stopped says no more past `until`.)
    for r in crate::store::routes::all(conn)? {
        let held = matches!(r.state.as_str(), "paused" | "unreachable" | "deprioritised");
        if !held || r.until.is_some_and(|until| until <= now) {
            continue;
        }
        let until = match (r.state.as_str(), r.until) {
            (_, Some(until)) => format_time(until),
            ("deprioritised", None) => "the storm passes".into(),
            _ => "its next answer".into(),
        };
        pauses.push(Pause {
            lane: if r.state == "deprioritised" {
                format!("route {} (deprioritised)", r.name)
            } else {
                format!("route {}", r.name)
            },
            reason: r.reason.unwrap_or_default(),
            until,
        });
    }
    Ok(pauses)
}

/// The lines saying which lanes are paused and why.
pub(super) fn pauses_text(pauses: &[Pause]) -> String {
    pauses
        .iter()
        .map(|p| format!("PAUSED: {} until {}: {}\n", p.lane, p.until, p.reason))
        .collect()
}

pub fn limits(conn: &Conn, now: i64) -> anyhow::Result<LimitsReport> {
    use crate::store::quota;
    let routes = crate::store::routes::all(conn)?;
    let mut organizations: Vec<Organization> = Vec::new();
    for r in &routes {
        match organizations.iter_mut().find(|o| o.group == r.grp) {
            Some(o) => {
                o.routes.push(r.name.clone());
                // Routes in several workspaces: the organization's line names none.
                if o.workspace_id != r.workspace_id {
                    o.workspace_id = None;
                }
            }
            None => organizations.push(Organization {
                group: r.grp.clone(),
                organization_id: r.organization_id.clone(),
                workspace_id: r.workspace_id.clone(),
                routes: vec![r.name.clone()],
            }),
        }
    }
    let mut classes = Vec::new();
    for state in quota::states(conn)? {
        let (class, updated_at) = (state.class, state.updated_at);
        // A workspace with limits of its own is published as `org/workspace`, inside its
        // organization; what an earlier run published for an organization no route names now is
        // left out.
        let Some(org) = organizations
            .iter()
            .find(|o| state.grp == o.group || state.grp.starts_with(&format!("{}/", o.group)))
        else {
            continue;
        };
        let workspace = state.grp.strip_prefix(&format!("{}/", org.group));
        let routes_used: Vec<String> = routes
            .iter()
            .filter(|r| {
                r.grp == org.group && workspace.is_none_or(|w| r.workspace_id.as_deref() == Some(w))
            })
            .map(|r| r.name.clone())
            .collect();
        let snap: serde_json::Value = serde_json::from_str(&state.snapshot).unwrap_or_default();
        let models = quota::models_of_class(conn, &class)?;
        let used = quota::last_minute_usage(conn, &routes_used, &models, now)?;
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
            last_throttle: quota::last_throttle_of_class(conn, &routes_used, &class)?,
            organization: state.grp,
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
        organizations,
        routes,
        classes,
        pauses: pauses(conn)?,
    })
}

impl LimitsReport {
    /// A class's name, with its organization when there are several.
    pub fn class_label(&self, c: &ClassLimits) -> String {
        if self.organizations.len() > 1 {
            format!("{} @{}", c.class, c.organization)
        } else {
            c.class.clone()
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&pauses_text(&self.pauses));
        for o in &self.organizations {
            let who = match (&o.organization_id, &o.workspace_id) {
                (Some(org), Some(ws)) => format!("organization {org} workspace {ws}"),
                (Some(org), None) => format!("organization {org}"),
                _ => format!("{} (organization not known yet)", o.group),
            };
            let shared = if o.routes.len() > 1 {
                " share one set of limits (a second key of one organization adds no capacity)"
            } else {
                ""
            };
            let _ = writeln!(out, "{who}: routes {}{shared}", o.routes.join(", "));
        }
        if !self.routes.is_empty() {
            let mut rows = vec![
                ["ROUTE", "HOST", "KEY", "ORGANIZATION", "STATE", "WHY"]
                    .map(String::from)
                    .to_vec(),
            ];
            for r in &self.routes {
                rows.push(vec![
                    r.name.clone(),
                    r.host.clone(),
                    r.key_id.clone(),
                    r.organization_id.clone().unwrap_or_else(|| "-".into()),
                    r.state.clone(),
                    r.reason.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            out.push_str(&table(&rows));
            out.push('\n');
        }
        if self.classes.is_empty() {
            out.push_str("no limits known yet: the daemon publishes them once it has sent calls\n");
            return out;
        }
        let mut rows = vec![
            [
                "ORGANIZATION",
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
                let first = |text: &str| {
                    if i == 0 {
                        text.to_owned()
                    } else {
                        String::new()
                    }
                };
                rows.push(vec![
                    first(&c.organization),
                    first(&c.class),
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
                "\n{} {}: concurrency {} ({} in flight); input estimate x{:.2}",
                c.organization, c.class, c.concurrency, c.in_flight, c.input_ratio
            );
            if let Some(e) = c.input_error {
                let _ = write!(out, " (mean error {:.0}%)", e * 100.0);
            }
            let _ = writeln!(out, "; published {}", c.updated_at);
            match &c.last_throttle {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "  last throttled {} on route {} ({}): HTTP {} {} (request-id {}, retry-after {})",
                        format_time(t.at),
                        t.route,
                        t.owner.as_deref().unwrap_or("owner not judged"),
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
