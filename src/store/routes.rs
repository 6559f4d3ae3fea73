//! SQL for the routes as the daemon last saw them: the organization each named, and whether it
//! is paused, why and until when (`status`, `limits` and `diagnose` read them).

use crate::store::sql::{Conn, params};

use super::Result;

/// One route's row.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RouteRow {
    pub name: String,
    /// The key's fingerprint (`…WXYZ`), never the key.
    pub key_id: String,
    pub host: String,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    /// The key its organization's quota is kept under (`policy::routing`).
    pub grp: String,
    /// `active`, `learning`, `paused`, `unreachable` or `deprioritised`.
    pub state: String,
    pub reason: Option<String>,
    pub owner: Option<String>,
    pub until: Option<i64>,
    pub updated_at: i64,
}

/// Writes a route's row (every few seconds, and at each change).
pub fn save(conn: &Conn, r: &RouteRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO routes (name, key_id, host, organization_id, workspace_id, grp, state, reason, owner, until, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(name) DO UPDATE SET key_id = ?2, host = ?3, organization_id = ?4, workspace_id = ?5,
             grp = ?6, state = ?7, reason = ?8, owner = ?9, until = ?10, updated_at = ?11",
    )?
    .execute(params![
        r.name,
        r.key_id,
        r.host,
        r.organization_id,
        r.workspace_id,
        r.grp,
        r.state,
        r.reason,
        r.owner,
        r.until,
        r.updated_at
    ])?;
    Ok(())
}

/// Every route on record, by name.
pub fn all(conn: &Conn) -> Result<Vec<RouteRow>> {
    let mut stmt = conn.prepare(
        "SELECT name, key_id, host, organization_id, workspace_id, grp, state, reason, owner, until, updated_at
         FROM routes ORDER BY name",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok(RouteRow {
            name: r.get(0)?,
            key_id: r.get(1)?,
            host: r.get(2)?,
            organization_id: r.get(3)?,
            workspace_id: r.get(4)?,
            grp: r.get(5)?,
            state: r.get(6)?,
            reason: r.get(7)?,
            owner: r.get(8)?,
            until: r.get(9)?,
            updated_at: r.get(10)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Routes no longer in the config are forgotten.
pub fn keep_only(conn: &Conn, names: &[String]) -> Result<()> {
    let names = serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
    conn.execute(
        &format!(
            "DELETE FROM routes WHERE name NOT IN (SELECT value FROM {})",
            conn.json_each(1)
        ),
        [names],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_row_round_trips_and_old_routes_go() {
        let conn = crate::store::test_connection();
        let row = RouteRow {
            name: "main".into(),
            key_id: "…WXYZ".into(),
            host: "api.anthropic.com".into(),
            organization_id: Some("org-1".into()),
            workspace_id: None,
            grp: "org-1".into(),
            state: "paused".into(),
            reason: Some("HTTP 401".into()),
            owner: Some("key".into()),
            until: Some(5),
            updated_at: 1,
        };
        save(&conn, &row).expect("save");
        save(
            &conn,
            &RouteRow {
                name: "old".into(),
                ..row.clone()
            },
        )
        .expect("save");
        save(
            &conn,
            &RouteRow {
                state: "active".into(),
                ..row.clone()
            },
        )
        .expect("update");
        keep_only(&conn, &["main".into()]).expect("keep");
        let rows = all(&conn).expect("all");
        assert_eq!(
            rows,
            vec![RouteRow {
                state: "active".into(),
                ..row
            }]
        );
    }
}
