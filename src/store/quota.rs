//! SQL for the quota controller's evidence (429/529 events) and its state as the CLI sees it.
//! (Pauses are the routes': `store::routes`. The `lane_pauses` table of migration 0003 is no
//! longer written.)

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;

/// One 429 or 529, with what a support ticket needs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThrottleEvent {
    pub at: i64,
    pub endpoint: String,
    pub key_id: String,
    pub model: String,
    pub class: String,
    pub http_status: u16,
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub retry_after_ms: Option<i64>,
    /// The `anthropic-ratelimit-*` headers as JSON.
    pub headers: String,
    pub input_estimate: Option<i64>,
    pub max_tokens: Option<i64>,
    pub concurrency: Option<i64>,
    /// The route it came on, its host and the organization and workspace it named.
    pub route: String,
    pub host: Option<String>,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    /// Whose limit it was (`policy::owner`), what that rests on, and when it lifts.
    pub owner: Option<String>,
    pub evidence: Option<String>,
    pub reset_at: Option<i64>,
}

pub fn record_throttle(conn: &Conn, e: &ThrottleEvent) -> Result<()> {
    conn.execute(
        "INSERT INTO throttle_events (at, endpoint, key_id, model, class, http_status, error_type, message,
                request_id, retry_after_ms, headers, input_estimate, max_tokens, concurrency,
                route, host, organization_id, workspace_id, owner, evidence, reset_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        params![
            e.at,
            e.endpoint,
            e.key_id,
            e.model,
            e.class,
            e.http_status,
            e.error_type,
            e.message,
            e.request_id,
            e.retry_after_ms,
            e.headers,
            e.input_estimate,
            e.max_tokens,
            e.concurrency,
            e.route,
            e.host,
            e.organization_id,
            e.workspace_id,
            e.owner,
            e.evidence,
            e.reset_at
        ],
    )?;
    Ok(())
}

const EVENT_COLUMNS: &str = "at, endpoint, key_id, model, class, http_status, error_type, message, request_id, \
     retry_after_ms, headers, input_estimate, max_tokens, concurrency, route, host, organization_id, \
     workspace_id, owner, evidence, reset_at";

fn event(r: &crate::store::sql::Row<'_>) -> crate::store::Result<ThrottleEvent> {
    Ok(ThrottleEvent {
        at: r.get(0)?,
        endpoint: r.get(1)?,
        key_id: r.get(2)?,
        model: r.get(3)?,
        class: r.get(4)?,
        http_status: r.get(5)?,
        error_type: r.get(6)?,
        message: r.get(7)?,
        request_id: r.get(8)?,
        retry_after_ms: r.get(9)?,
        headers: r.get(10)?,
        input_estimate: r.get(11)?,
        max_tokens: r.get(12)?,
        concurrency: r.get(13)?,
        route: r.get(14)?,
        host: r.get(15)?,
        organization_id: r.get(16)?,
        workspace_id: r.get(17)?,
        owner: r.get(18)?,
        evidence: r.get(19)?,
        reset_at: r.get(20)?,
    })
}

/// The first (`first`) or latest throttle event of a model on a route.
pub fn throttle_event(
    conn: &Conn,
    route: &str,
    model: &str,
    first: bool,
) -> Result<Option<ThrottleEvent>> {
    let order = if first { "ASC" } else { "DESC" };
    conn
        .query_row(
            &format!("SELECT {EVENT_COLUMNS} FROM throttle_events WHERE route = ?1 AND model = ?2 ORDER BY id {order} LIMIT 1"),
            [route, model],
            event,
        )
        .optional()
}

/// The first throttle event of a model on a route after `after` (ms): the first failure since a
/// success.
pub fn first_throttle_after(
    conn: &Conn,
    route: &str,
    model: &str,
    after: i64,
) -> Result<Option<ThrottleEvent>> {
    conn
        .query_row(
            &format!("SELECT {EVENT_COLUMNS} FROM throttle_events WHERE route = ?1 AND model = ?2 AND at > ?3 ORDER BY id ASC LIMIT 1"),
            params![route, model, after],
            event,
        )
        .optional()
}

/// The throttle events of a route and model, latest first, at most `limit`.
pub fn throttle_events(
    conn: &Conn,
    route: &str,
    model: &str,
    limit: i64,
) -> Result<Vec<ThrottleEvent>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM throttle_events WHERE route = ?1 AND model = ?2 ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![route, model, limit], event)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The latest throttle event of a class on any of `routes`.
pub fn last_throttle_of_class(
    conn: &Conn,
    routes: &[String],
    class: &str,
) -> Result<Option<ThrottleEvent>> {
    let routes = serde_json::to_string(routes).unwrap_or_else(|_| "[]".into());
    conn.query_row(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM throttle_events
                 WHERE class = ?1 AND route IN (SELECT value FROM {}) ORDER BY id DESC LIMIT 1",
            conn.json_each(2)
        ),
        params![class, routes],
        event,
    )
    .optional()
}

/// (route, model) of every real-time call or throttle on record, for `diagnose`.
pub fn routes_and_models_seen(conn: &Conn) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(route, 'default'), model FROM attempts WHERE model IS NOT NULL AND lane = 'realtime'
         UNION SELECT route, model FROM throttle_events ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The last successful real-time call of a model on a route: (at, request_id, input tokens,
/// max_tokens, concurrency, input estimate).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Success {
    pub at: i64,
    pub request_id: Option<String>,
    pub input_tokens: Option<i64>,
    pub input_estimate: Option<i64>,
    pub max_tokens: Option<i64>,
    pub concurrency: Option<i64>,
}

pub fn last_success(conn: &Conn, route: &str, model: &str) -> Result<Option<Success>> {
    conn
        .query_row(
            "SELECT a.finished_at, a.request_id, a.input_tokens, a.input_estimate, i.max_tokens, a.concurrency
             FROM attempts a JOIN items i ON i.id = a.item_id
             WHERE a.model = ?2 AND COALESCE(a.route, 'default') = ?1 AND a.lane = 'realtime' AND a.outcome = 'succeeded'
             ORDER BY a.id DESC LIMIT 1",
            [route, model],
            |r| {
                Ok(Success {
                    at: r.get(0)?,
                    request_id: r.get(1)?,
                    input_tokens: r.get(2)?,
                    input_estimate: r.get(3)?,
                    max_tokens: r.get(4)?,
                    concurrency: r.get(5)?,
                })
            },
        )
        .optional()
}

/// Usage of a class on `routes` over the minute before `now`: (requests, input tokens, output
/// tokens) of the real-time calls that finished in it.
pub fn last_minute_usage(
    conn: &Conn,
    routes: &[String],
    models: &[String],
    now: i64,
) -> Result<[i64; 3]> {
    let mut total = [0i64; 3];
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM attempts
         WHERE model = ?1 AND lane = 'realtime' AND outcome = 'succeeded' AND finished_at > ?2
           AND COALESCE(route, 'default') IN (SELECT value FROM {})",
        conn.json_each(3)
    ))?;
    let routes = serde_json::to_string(routes).unwrap_or_else(|_| "[]".into());
    for model in models {
        let row: (i64, i64, i64) = stmt.query_row(params![model, now - 60_000, routes], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        total[0] += row.0;
        total[1] += row.1;
        total[2] += row.2;
    }
    Ok(total)
}

/// Models seen per class (from attempts).
pub fn models_of_class(conn: &Conn, class: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT model FROM attempts WHERE model IS NOT NULL AND lane = 'realtime'",
    )?;
    let rows = stmt.query_map((), |r| r.get::<_, String>(0))?;
    let all = rows.collect::<crate::store::Result<Vec<String>>>()?;
    Ok(all
        .into_iter()
        .filter(|m| crate::policy::quota::limit_class(m) == class)
        .collect())
}

/// A class's state in one organization (`grp`, see `policy::routing`) as the CLI shows it
/// (`snapshot_json`) and what it learned (`learned_json`).
pub fn save_state(
    conn: &Conn,
    grp: &str,
    class: &str,
    snapshot_json: &str,
    learned_json: &str,
    key_id: &str,
    now: i64,
) -> Result<()> {
    // Every class, every few seconds: a cached statement.
    conn.prepare_cached(
        "INSERT INTO quota_state (grp, class, snapshot, learned, key_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(grp, class) DO UPDATE SET snapshot = ?3, learned = ?4, key_id = ?5, updated_at = ?6",
    )?
    .execute(params![grp, class, snapshot_json, learned_json, key_id, now])?;
    Ok(())
}

/// Forgets the state of groups no longer running: a route's own (`route:<name>`) once its
/// answers named its organization, an organization no route names any more.
pub fn keep_groups(conn: &Conn, groups: &[String]) -> Result<()> {
    let groups = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(&format!(
        "DELETE FROM quota_state WHERE grp NOT IN (SELECT value FROM {})",
        conn.json_each(1)
    ))?
    .execute([groups])?;
    Ok(())
}

/// What each class of each organization learned: (grp, learned JSON, key id it was published
/// with, updated at).
pub fn learned(conn: &Conn) -> Result<Vec<(String, String, String, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT grp, learned, key_id, updated_at FROM quota_state WHERE learned IS NOT NULL ORDER BY grp, class",
    )?;
    let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// One organization's class as last published.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub grp: String,
    pub class: String,
    pub snapshot: String,
    pub key_id: String,
    pub updated_at: i64,
}

pub fn states(conn: &Conn) -> Result<Vec<StateRow>> {
    let mut stmt = conn.prepare(
        "SELECT grp, class, snapshot, key_id, updated_at FROM quota_state ORDER BY grp, class",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok(StateRow {
            grp: r.get(0)?,
            class: r.get(1)?,
            snapshot: r.get(2)?,
            key_id: r.get(3)?,
            updated_at: r.get(4)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_running_groups_state_is_kept() {
        let conn = crate::store::test_connection();
        for grp in ["route:a", "org-1", "org-1/ws"] {
            save_state(&conn, grp, "claude-haiku-5-5", "{}", "{}", "…AAAA", 1).expect("save");
        }
        keep_groups(&conn, &["org-1".into(), "org-1/ws".into()]).expect("keep");
        let kept: Vec<String> = states(&conn)
            .expect("states")
            .into_iter()
            .map(|s| s.grp)
            .collect();
        assert_eq!(kept, ["org-1", "org-1/ws"]);
        assert_eq!(learned(&conn).expect("learned").len(), 2);
    }
}
