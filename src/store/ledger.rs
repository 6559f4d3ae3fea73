//! SQL for the ledger: one row per billed call, written in the transaction that makes the item
//! final, and the grouped sums `nightshift ledger` reports.

use crate::store::sql::{Conn, params};

use super::Result;
use crate::model::answer::Usage;
use crate::model::state::Lane;
use crate::policy::prices::PriceTable;

/// Records a billed call of `item_id` (its tenant, job and model come from the item). Cost is in
/// millionths of a dollar, NULL when the model has no price.
pub fn record(
    conn: &Conn,
    prices: &PriceTable,
    item_id: i64,
    lane: Lane,
    usage: &Usage,
    request_id: Option<&str>,
    now: i64,
) -> Result<()> {
    let whose = conn
        .prepare_cached(&format!("SELECT {WHOSE} FROM items WHERE id = ?1"))?
        .query_row([item_id], Whose::from_row)?;
    record_for(conn, prices, &whose, item_id, lane, usage, request_id, now)
}

/// Whose a billed call is: what a ledger row names besides the item.
#[derive(Debug, Clone)]
pub struct Whose {
    pub tenant: String,
    pub job_id: i64,
    pub model: String,
    /// Whether an earlier call of the item had an unknown outcome (this one may repeat it).
    pub retry_of_unknown: bool,
}

/// The columns [`Whose::from_row`] reads, of a row of `items` (not aliased: a RETURNING clause
/// cannot name an alias).
pub const WHOSE: &str = "items.tenant, items.job_id, items.model,
     EXISTS(SELECT 1 FROM attempts a WHERE a.item_id = items.id AND a.outcome = 'unknown')";

impl Whose {
    pub fn from_row(r: &crate::store::sql::Row<'_>) -> crate::store::Result<Whose> {
        Ok(Whose {
            tenant: r.get(0)?,
            job_id: r.get(1)?,
            model: r.get(2)?,
            retry_of_unknown: r.get(3)?,
        })
    }
}

/// As [`record`], for a caller that read the item already.
#[allow(clippy::too_many_arguments)]
pub fn record_for(
    conn: &Conn,
    prices: &PriceTable,
    whose: &Whose,
    item_id: i64,
    lane: Lane,
    usage: &Usage,
    request_id: Option<&str>,
    now: i64,
) -> Result<()> {
    let charge = Charge {
        item_id,
        whose,
        usage,
    };
    record_all(conn, prices, lane, request_id, &[charge], now)
}

/// A billed call of an item, for [`record_all`].
pub struct Charge<'a> {
    pub item_id: i64,
    pub whose: &'a Whose,
    pub usage: &'a Usage,
}

/// As [`record_for`], for many calls of one lane with one request id (a chunk of a batch's
/// results: the batch's id) at once.
pub fn record_all(
    conn: &Conn,
    prices: &PriceTable,
    lane: Lane,
    request_id: Option<&str>,
    charges: &[Charge<'_>],
    now: i64,
) -> Result<()> {
    let mut unpriced = std::collections::BTreeSet::new();
    let sql = |rows| {
        format!(
            "INSERT INTO ledger (at, lane, request_id, tenant, job_id, item_id, model, input_tokens,
                    output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
                    cache_write_1h_tokens, cost_micro_usd, retry_of_unknown, cache_saved_micro_usd)
             VALUES {}",
            super::value_rows(rows, 15, 0)
        )
    };
    let lane_name = lane.as_str();
    super::in_groups(charges, sql, |sql, group| {
        let rows: Vec<_> = group
            .iter()
            .map(|c| {
                let (w, u) = (c.whose, c.usage);
                let batch = lane == Lane::Batch;
                let cost = prices.cost_micro_usd(&w.model, u, batch);
                if cost.is_none() {
                    unpriced.insert(w.model.as_str());
                }
                (
                    u.input_tokens as i64,
                    u.output_tokens as i64,
                    u.cache_creation_input_tokens.unwrap_or(0) as i64,
                    u.cache_read_input_tokens.unwrap_or(0) as i64,
                    u.cache_writes().1 as i64,
                    cost,
                    prices
                        .cache_saved_micro_usd(&w.model, u, batch)
                        .unwrap_or(0),
                )
            })
            .collect();
        let mut values: Vec<&dyn crate::store::sql::ToValue> = Vec::with_capacity(group.len() * 15);
        for (c, (input, output, written, read, written_1h, cost, saved)) in group.iter().zip(&rows)
        {
            let w = c.whose;
            values.extend([
                &now as &dyn crate::store::sql::ToValue,
                &lane_name,
                &request_id,
                &w.tenant,
                &w.job_id,
                &c.item_id,
                &w.model,
                input,
                output,
                written,
                read,
                written_1h,
                cost,
                &w.retry_of_unknown,
                saved,
            ]);
        }
        conn.prepare_cached(sql)?
            .execute(crate::store::sql::params_from_iter(values))?;
        Ok(())
    })?;
    for model in unpriced {
        tracing::warn!(%model, "this model has no price: its cost is left out of the ledger's sums and flagged; add [prices.\"{model}\"] to the config");
    }
    Ok(())
}

/// A job's use of the prompt cache, from its ledger rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheUse {
    pub read_tokens: i64,
    pub written_tokens: i64,
    pub saved_micro_usd: i64,
}

/// A job's [`CacheUse`], from the per-job rollup the ledger's trigger keeps (one row read,
/// however long the ledger).
pub fn job_cache_use(conn: &Conn, job_id: i64) -> Result<CacheUse> {
    use crate::store::sql::OptionalExtension;
    Ok(conn
        .prepare_cached(
            "SELECT read_tokens, written_tokens, saved_micro_usd FROM job_cache_use
             WHERE job_id = ?1",
        )?
        .query_row([job_id], |r| {
            Ok(CacheUse {
                read_tokens: r.get(0)?,
                written_tokens: r.get(1)?,
                saved_micro_usd: r.get(2)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// An item's billed calls: (calls, cost in millionths of a dollar, calls without a price).
pub fn item_billed(conn: &Conn, item_id: i64) -> Result<(i64, i64, i64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(cost_micro_usd), 0), COALESCE(SUM(CASE WHEN cost_micro_usd IS NULL THEN 1 ELSE 0 END), 0)
         FROM ledger WHERE item_id = ?1",
        [item_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// A job's billed cost so far, in millionths of a dollar (unpriced calls not in it).
pub fn job_cost_micro(conn: &Conn, job_id: i64) -> Result<i64> {
    conn.query_row(
        "SELECT COALESCE(SUM(cost_micro_usd), 0) FROM ledger WHERE job_id = ?1",
        [job_id],
        |r| r.get(0),
    )
}

/// How `nightshift ledger` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Tenant,
    Model,
    Job,
}

/// Which rows `nightshift ledger` sums.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub job: Option<String>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
}

/// The sums of one group.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Sums {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cost_micro_usd: i64,
    /// What the prompt cache saved: these calls' cost had their cache tokens been plain input,
    /// less their cost (negative when writes cost more than reads saved).
    pub cache_saved_micro_usd: i64,
    /// Rows whose model has no price: their cost is not in `cost_micro_usd`.
    pub unpriced_requests: i64,
    /// Billed calls that retried an unknown outcome (the API may have run the request twice).
    pub retries_of_unknown: i64,
}

impl Sums {
    /// The seven billed columns from column `first` on: requests, input, output, cache writes,
    /// cache reads, cost, cache savings (the other two sums 0).
    pub fn billed_columns(
        r: &crate::store::sql::Row<'_>,
        first: usize,
    ) -> crate::store::Result<Sums> {
        Ok(Sums {
            requests: r.get(first)?,
            input_tokens: r.get(first + 1)?,
            output_tokens: r.get(first + 2)?,
            cache_creation_input_tokens: r.get(first + 3)?,
            cache_read_input_tokens: r.get(first + 4)?,
            cost_micro_usd: r.get(first + 5)?,
            cache_saved_micro_usd: r.get(first + 6)?,
            unpriced_requests: 0,
            retries_of_unknown: 0,
        })
    }

    pub fn add(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
        self.cost_micro_usd += other.cost_micro_usd;
        self.cache_saved_micro_usd += other.cache_saved_micro_usd;
        self.unpriced_requests += other.unpriced_requests;
        self.retries_of_unknown += other.retries_of_unknown;
    }
}

/// Grouped sums, in key order.
pub fn grouped(conn: &Conn, by: GroupBy, filter: &Filter) -> Result<Vec<(String, Sums)>> {
    let key = match by {
        GroupBy::Day => "strftime('%Y-%m-%d', l.at / 1000, 'unixepoch')",
        GroupBy::Tenant => "l.tenant",
        GroupBy::Model => "l.model",
        GroupBy::Job => "j.name",
    };
    let sql = format!(
        "SELECT {key}, COUNT(*), SUM(l.input_tokens), SUM(l.output_tokens), SUM(l.cache_creation_input_tokens),
                SUM(l.cache_read_input_tokens), COALESCE(SUM(l.cost_micro_usd), 0),
                SUM(l.cache_saved_micro_usd), SUM(CASE WHEN l.cost_micro_usd IS NULL THEN 1 ELSE 0 END), SUM(l.retry_of_unknown)
         FROM ledger l JOIN jobs j ON j.id = l.job_id
         WHERE (CAST(?1 AS TEXT) IS NULL OR l.tenant = ?1) AND (CAST(?2 AS TEXT) IS NULL OR j.name = ?2)
           AND (CAST(?3 AS BIGINT) IS NULL OR l.at >= ?3) AND (CAST(?4 AS BIGINT) IS NULL OR l.at < ?4)
         GROUP BY 1 ORDER BY 1"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![filter.tenant, filter.job, filter.since, filter.until],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                Sums {
                    unpriced_requests: r.get(8)?,
                    retries_of_unknown: r.get(9)?,
                    ..Sums::billed_columns(r, 1)?
                },
            ))
        },
    )?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// One model's billed real-time calls in one minute of a window (the status page's quota charts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMinute {
    /// Minutes since the window's start.
    pub minute: i64,
    pub model: String,
    pub requests: i64,
    /// Input tokens and cache writes: what counts toward the input-tokens-per-minute limit
    /// (cache reads do not).
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Per minute from `from` (Unix ms) for `minutes` minutes, per model, the billed real-time calls.
/// Batch rows are left out: they do not count toward the Messages API's per-minute limits, and a
/// batch's results all land in the minute it ended. Grouped in SQL over the `at` index, so an
/// hour with many rows returns at most `minutes` rows per model.
pub fn realtime_per_minute(conn: &Conn, from: i64, minutes: i64) -> Result<Vec<ModelMinute>> {
    let mut stmt = conn.prepare_cached(
        "SELECT (at - ?1) / 60000, model, COUNT(*),
                SUM(input_tokens + cache_creation_input_tokens), SUM(output_tokens)
         FROM ledger WHERE at >= ?1 AND at < ?2 AND lane = 'realtime'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map(params![from, from + minutes * 60_000], |r| {
        Ok(ModelMinute {
            minute: r.get(0)?,
            model: r.get(1)?,
            requests: r.get(2)?,
            input_tokens: r.get(3)?,
            output_tokens: r.get(4)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Per minute from `from` (Unix ms) for `minutes` minutes, per tenant, what both lanes' billed
/// calls cost, in millionths of a dollar: (minute since `from`, tenant, cost). Unpriced calls
/// count 0, as in every sum of the ledger.
pub fn spend_per_minute(conn: &Conn, from: i64, minutes: i64) -> Result<Vec<(i64, String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT (at - ?1) / 60000, tenant, COALESCE(SUM(cost_micro_usd), 0)
         FROM ledger WHERE at >= ?1 AND at < ?2
         GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map(params![from, from + minutes * 60_000], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger row of job `job`, written directly (its item need not exist).
    fn row(conn: &Conn, job: i64, at: i64, lane: &str, model: &str, tenant: &str) {
        conn.execute(
            "INSERT INTO ledger (at, tenant, job_id, item_id, model, lane, input_tokens,
                    output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
                    cost_micro_usd, retry_of_unknown)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, 100, 20, 30, 500, 7, 0)",
            params![at, tenant, job, model, lane],
        )
        .expect("ledger row");
    }

    #[test]
    fn minutes_count_real_time_use_with_cache_writes_and_spend_of_both_lanes() {
        let conn = crate::store::test_connection();
        let job = crate::store::test_empty_job(&conn);
        let from = 600_000;
        row(&conn, job, from - 1, "realtime", "m", "a"); // before the window
        row(&conn, job, from, "realtime", "m", "a");
        row(&conn, job, from + 59_999, "realtime", "m", "b");
        row(&conn, job, from + 60_000, "batch", "m", "a");
        row(&conn, job, from + 2 * 60_000, "realtime", "m", "a"); // after a 2-minute window
        assert_eq!(
            realtime_per_minute(&conn, from, 2).expect("minutes"),
            vec![ModelMinute {
                minute: 0,
                model: "m".into(),
                requests: 2,
                input_tokens: 260,
                output_tokens: 40,
            }]
        );
        assert_eq!(
            spend_per_minute(&conn, from, 2).expect("spend"),
            vec![(0, "a".into(), 7), (0, "b".into(), 7), (1, "a".into(), 7)]
        );
        let plan = crate::store::test_plan(
            &conn,
            "SELECT (at - ?1) / 60000, tenant, COALESCE(SUM(cost_micro_usd), 0)
             FROM ledger WHERE at >= ?1 AND at < ?2 GROUP BY 1, 2 ORDER BY 1, 2",
        );
        assert!(
            plan.iter().any(|s| s.contains("ledger_at")),
            "an hour is found by the index: {plan:?}"
        );
    }
}
