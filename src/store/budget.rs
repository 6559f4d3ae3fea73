//! Budgets in the database: a tenant's spend (the `tenant_days` rollup and the `tenant_reserved`
//! sum the triggers of migration 0005 keep), and what an admission decided, written to the item
//! (the decision itself is the lanes', through `policy::budget`).

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;
use crate::policy::budget::{self, Spend};

/// A tenant's settled spend today and this month (UTC) and its reservations.
pub fn spend(conn: &Conn, tenant: &str, now: i64) -> Result<Spend> {
    let (day_start, month_start) = budget::period_days(now);
    let (today, this_month): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(spent_micro_usd) FILTER (WHERE day >= ?2), 0),
                    COALESCE(SUM(spent_micro_usd), 0)
             FROM tenant_days WHERE tenant = ?1 AND day >= ?3",
        )?
        .query_row(params![tenant, day_start, month_start], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let reserved: i64 = conn
        .prepare_cached("SELECT reserved_micro_usd FROM tenant_reserved WHERE tenant = ?1")?
        .query_row([tenant], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(Spend {
        day: today,
        month: this_month,
        reserved,
    })
}

/// Makes the tenant's admissions one at a time across daemons sharing the store: its
/// reservations row is locked until the admitting transaction ends (PostgreSQL), so the spend
/// read next includes every reservation another daemon committed before. (SQLite's single writer
/// does this by itself.) Call before [`spend`] when admitting.
pub fn lock_tenant(conn: &Conn, tenant: &str) -> Result<()> {
    if conn.dialect() == crate::store::sql::Dialect::Sqlite {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO tenant_reserved (tenant, reserved_micro_usd) VALUES (?1, 0)
         ON CONFLICT (tenant) DO NOTHING",
    )?
    .execute([tenant])?;
    conn.prepare_cached("SELECT 1 FROM tenant_reserved WHERE tenant = ?1 FOR UPDATE")?
        .query_row([tenant], |r| r.get::<_, i64>(0))?;
    Ok(())
}

/// Admitted: the item's worst case is reserved against its tenant's caps.
pub fn reserve(conn: &Conn, item_id: i64, micro_usd: i64) -> Result<()> {
    conn.prepare_cached("UPDATE items SET reserved_micro_usd = ?2 WHERE id = ?1")?
        .execute(params![item_id, micro_usd])?;
    Ok(())
}

/// Rejected by a cap: the pending item ends errored with its result line.
pub fn reject(conn: &Conn, item_id: i64, line: &str, message: &str, now: i64) -> Result<()> {
    let ended = conn.execute(
        "UPDATE items SET state = 'errored', error = ?2, updated_at = ?3
         WHERE id = ?1 AND state = 'pending'",
        params![item_id, message, now],
    )?;
    if ended == 1 {
        super::results::append(conn, item_id, line)?;
    }
    Ok(())
}

/// Downgraded by a cap: the item's model (in its request too) becomes `to`; the first model is kept.
pub fn downgrade(conn: &Conn, item_id: i64, to: &str, reason: &str, now: i64) -> Result<()> {
    let set_model = match conn.dialect() {
        crate::store::sql::Dialect::Sqlite => "json_set(params, '$.model', ?2)",
        crate::store::sql::Dialect::Postgres => {
            "jsonb_set(params::jsonb, '{model}', to_jsonb(CAST(?2 AS TEXT)))::text"
        }
    };
    conn.execute(
        &format!(
            "UPDATE items SET model = ?2, params = {set_model},
                downgraded_from = COALESCE(downgraded_from, model), lane_reason = ?3, updated_at = ?4
             WHERE id = ?1"
        ),
        params![item_id, to, reason, now],
    )?;
    Ok(())
}

/// Deferred by a cap to the batch lane (half the price).
pub fn defer_to_batch(conn: &Conn, item_id: i64, reason: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE items SET lane = 'batch', lane_reason = ?2, updated_at = ?3 WHERE id = ?1",
        params![item_id, reason, now],
    )?;
    Ok(())
}

/// Deferred by a cap until `at` (the next period): parked out of the ready indexes until then.
pub fn park_until(conn: &Conn, item_id: i64, at: i64, reason: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE items SET not_before = ?2, parked = 1, lane_reason = ?3, updated_at = ?4
         WHERE id = ?1",
        params![item_id, at, reason, now],
    )?;
    Ok(())
}

/// Unparks items held until a time that has come (see migration 0006). Returns how many.
pub fn unpark_due(conn: &Conn, now: i64) -> Result<usize> {
    conn.prepare_cached(&format!(
        "UPDATE items SET {} WHERE parked = 1 AND not_before <= ?1",
        super::holds::PARK_IF_HELD
    ))?
    .execute([now])
}

/// What budgets did to a job's items: (downgraded, held until a period rolls over, the latest
/// such time, the latest budget reason).
pub fn job_effects(
    conn: &Conn,
    job_id: i64,
    now: i64,
) -> Result<(i64, i64, Option<i64>, Option<String>)> {
    conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN downgraded_from IS NOT NULL THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'pending' AND parked = 1 AND not_before > ?2 THEN 1 ELSE 0 END), 0),
                MAX(not_before) FILTER (WHERE state = 'pending' AND parked = 1 AND not_before > ?2),
                (SELECT lane_reason FROM items WHERE job_id = ?1 AND lane_reason LIKE '%budget%'
                 ORDER BY updated_at DESC LIMIT 1)
         FROM items WHERE job_id = ?1",
        params![job_id, now],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
}

/// Budgets in force and where each tenant stands, for `nightshift status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantBudget {
    pub tenant: String,
    pub daily_cap_usd: Option<f64>,
    pub daily_spent_usd: f64,
    pub monthly_cap_usd: Option<f64>,
    pub monthly_spent_usd: f64,
    pub reserved_usd: f64,
}

/// Where every tenant named in `budgets` (and every tenant with spend under the `*` entry) stands.
pub fn standing(conn: &Conn, budgets: &budget::Budgets, now: i64) -> Result<Vec<TenantBudget>> {
    let mut tenants: Vec<String> = budgets
        .tenants
        .keys()
        .filter(|t| t.as_str() != "*")
        .cloned()
        .collect();
    if budgets.tenants.contains_key("*") {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT tenant FROM tenant_days UNION SELECT tenant FROM tenant_reserved",
        )?;
        for t in stmt.query_map((), |r| r.get::<_, String>(0))? {
            let t = t?;
            if !tenants.contains(&t) {
                tenants.push(t);
            }
        }
    }
    tenants.sort();
    let usd = |micro: i64| micro as f64 / 1e6;
    let mut out = Vec::new();
    for tenant in tenants {
        let Some(caps) = budgets.for_tenant(&tenant) else {
            continue;
        };
        let s = spend(conn, &tenant, now)?;
        out.push(TenantBudget {
            daily_cap_usd: caps.daily.map(|c| usd(c.micro_usd)),
            daily_spent_usd: usd(s.day),
            monthly_cap_usd: caps.monthly.map(|c| usd(c.micro_usd)),
            monthly_spent_usd: usd(s.month),
            reserved_usd: usd(s.reserved),
            tenant,
        });
    }
    Ok(out)
}
