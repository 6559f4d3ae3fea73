//! Budget admission in the database: reads a tenant's spend (the `tenant_days` rollup and the
//! `tenant_reserved` sum the triggers of migration 0005 keep) and applies [`budget::decide`]'s
//! answer to the item, inside the transaction that sends it. The store's single writer makes
//! admissions one at a time, so two calls can never both take the last dollar of a cap.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::Result;
use crate::model::results;
use crate::model::state::Lane;
use crate::policy::budget::{self, Call, Decision, Spend};
use crate::policy::prices::PriceTable;

/// What admission needs from the config (all of it reloadable).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub budgets: budget::Budgets,
    pub prices: PriceTable,
    /// Time windows per priority class.
    pub windows: crate::policy::window::Windows,
}

impl Rules {
    pub fn from_config(config: &crate::config::Config) -> Rules {
        Rules {
            budgets: config.budgets.clone(),
            prices: config.prices.clone(),
            windows: config.windows.clone(),
        }
    }
}

/// What became of an item checked against its tenant's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within every cap (or no caps): send it. Its worst case is reserved.
    Admitted,
    /// Its model was changed to the cheaper one; check it again before sending.
    Downgraded,
    /// Moved to the batch lane, or held until the next period.
    Deferred,
    /// Ended `errored` with a budget message; its result line is waiting to be written.
    Rejected,
}

/// A tenant's settled spend today and this month (UTC) and its reservations.
pub fn spend(conn: &Connection, tenant: &str, now: i64) -> Result<Spend> {
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

/// Checks a pending item against its tenant's caps before it goes in flight in `lane`, and applies
/// the answer: reserve its worst case, downgrade its model, move it to batches or hold it until the
/// next period, or end it errored.
pub fn admit(
    conn: &Connection,
    item_id: i64,
    lane: Lane,
    rules: &Rules,
    now: i64,
) -> Result<Admission> {
    if rules.budgets.is_empty() {
        return Ok(Admission::Admitted);
    }
    type Row = (
        String,
        String,
        i64,
        i64,
        bool,
        bool,
        Option<String>,
        Option<i64>,
    );
    let (tenant, model, max_tokens, input_estimate, batch_ok, caches, custom_id, deadline_at): Row =
        conn.prepare_cached(
            "SELECT tenant, model, max_tokens, input_estimate, mode != 'realtime' AND batch_ok = 1,
                    instr(params, '\"cache_control\"') > 0, custom_id, deadline_at
             FROM items WHERE id = ?1",
        )?
        .query_row([item_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?;
    let Some(caps) = rules.budgets.for_tenant(&tenant) else {
        return Ok(Admission::Admitted);
    };
    let worst = |batch: bool| {
        rules.prices.worst_case_micro_usd(
            &model,
            input_estimate as u64,
            max_tokens as u64,
            caches,
            batch,
        )
    };
    // Deferring to batches is offered only to an item batches can serve (not pinned to real time,
    // no field the batch endpoint refuses) in time for its deadline, as the planner would judge.
    let batch_in_time = || -> Result<bool> {
        let Some(deadline) = deadline_at else {
            return Ok(true);
        };
        let turnaround = super::batches::turnaround_ms(conn)?.max(1);
        Ok(deadline - now >= turnaround + turnaround / 4)
    };
    let may_batch = lane == Lane::Realtime && batch_ok && batch_in_time()?;
    let call = Call {
        model: &model,
        lane,
        worst: worst(lane == Lane::Batch),
        worst_in_batch: may_batch.then(|| worst(true)).flatten(),
    };
    let spend = spend(conn, &tenant, now)?;
    let decision = budget::decide(&tenant, caps, spend, &call, now);
    match decision {
        Decision::Admit { reserve } => {
            conn.prepare_cached("UPDATE items SET reserved_micro_usd = ?2 WHERE id = ?1")?
                .execute(params![item_id, reserve])?;
            Ok(Admission::Admitted)
        }
        Decision::Reject { message } => {
            tracing::warn!(%tenant, item = item_id, "{message}");
            let line = results::errored_line(
                custom_id.as_deref(),
                "budget_exceeded_error",
                &message,
                Some(json!({"tenant": tenant})),
            );
            conn.execute(
                "UPDATE items SET state = 'errored', result = ?2, error = ?3, updated_at = ?4
                 WHERE id = ?1 AND state = 'pending'",
                params![item_id, line, message, now],
            )?;
            Ok(Admission::Rejected)
        }
        Decision::Downgrade { to, reason } => {
            tracing::info!(%tenant, item = item_id, "{reason}");
            conn.execute(
                "UPDATE items SET model = ?2, params = json_set(params, '$.model', ?2),
                        downgraded_from = COALESCE(downgraded_from, model), lane_reason = ?3, updated_at = ?4
                 WHERE id = ?1",
                params![item_id, to, reason, now],
            )?;
            Ok(Admission::Downgraded)
        }
        Decision::DeferToBatch { reason } => {
            conn.execute(
                "UPDATE items SET lane = 'batch', lane_reason = ?2, updated_at = ?3 WHERE id = ?1",
                params![item_id, reason, now],
            )?;
            Ok(Admission::Deferred)
        }
        Decision::DeferUntil { at, reason } => {
            conn.execute(
                "UPDATE items SET not_before = ?2, parked = 1, lane_reason = ?3, updated_at = ?4
                 WHERE id = ?1",
                params![item_id, at, reason, now],
            )?;
            Ok(Admission::Deferred)
        }
    }
}

/// Unparks items held until a time that has come (see migration 0006). Returns how many.
pub fn unpark_due(conn: &Connection, now: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("UPDATE items SET parked = 0 WHERE parked = 1 AND not_before <= ?1")?
        .execute([now])?)
}

/// What budgets did to a job's items: (downgraded, held until a period rolls over, the latest
/// such time, the latest budget reason).
pub fn job_effects(
    conn: &Connection,
    job_id: i64,
    now: i64,
) -> Result<(i64, i64, Option<i64>, Option<String>)> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(downgraded_from IS NOT NULL), 0),
                COALESCE(SUM(state = 'pending' AND parked = 1 AND not_before > ?2), 0),
                MAX(not_before) FILTER (WHERE state = 'pending' AND parked = 1 AND not_before > ?2),
                (SELECT lane_reason FROM items WHERE job_id = ?1 AND lane_reason LIKE '%budget%'
                 ORDER BY updated_at DESC LIMIT 1)
         FROM items WHERE job_id = ?1",
        params![job_id, now],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?)
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
pub fn standing(
    conn: &Connection,
    budgets: &budget::Budgets,
    now: i64,
) -> Result<Vec<TenantBudget>> {
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
        for t in stmt.query_map([], |r| r.get::<_, String>(0))? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::budget::{Budgets, Cap, CapAction, TenantCaps};
    use crate::store::items::{self, AttemptRecord, ItemUpdate, Marked};
    use crate::store::{batches, test_connection, test_job};

    const NOW: i64 = 1_795_000_000_000;

    fn line(id: &str, mode: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","tenant":"acme","mode":"{mode}","params":{{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[{{"role":"user","content":"q"}}]}}}}"#
        )
    }

    fn rules(cap_usd: f64, action: CapAction) -> Rules {
        let caps = TenantCaps {
            daily: Some(Cap {
                micro_usd: (cap_usd * 1e6) as i64,
                action,
            }),
            monthly: None,
            downgrade_to: Some("claude-haiku-4-5".into()),
        };
        Rules {
            budgets: Budgets {
                tenants: [("acme".to_owned(), caps)].into(),
            },
            prices: PriceTable::default(),
            windows: Default::default(),
        }
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn
            .prepare("SELECT id FROM items ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("ids")
    }

    fn mark(conn: &Connection, id: i64, rules: &Rules) -> Marked {
        items::mark_in_flight(conn, id, Lane::Realtime, (1, 1), rules, NOW).expect("mark")
    }

    fn column<T: rusqlite::types::FromSql>(conn: &Connection, id: i64, col: &str) -> T {
        conn.query_row(
            &format!("SELECT {col} FROM items WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .expect("column")
    }

    #[test]
    fn admission_reserves_and_the_answer_settles_with_the_real_cost() {
        let conn = test_connection();
        let lines: Vec<String> = (0..2).map(|i| line(&i.to_string(), "realtime")).collect();
        test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let rules = rules(10.0, CapAction::Reject);
        let ids = ids(&conn);
        let Marked::InFlight(d) = mark(&conn, ids[0], &rules) else {
            panic!("admitted")
        };
        let Marked::InFlight(_) = mark(&conn, ids[1], &rules) else {
            panic!("admitted")
        };
        // Worst case: the input estimate at $3/MTok and 1,000 output tokens at $15/MTok.
        let worst: i64 = column(&conn, ids[0], "reserved_micro_usd");
        assert!(worst > 15_000, "{worst}");
        let s = spend(&conn, "acme", NOW).expect("spend");
        assert_eq!(s.reserved, 2 * worst);

        let usage = crate::model::answer::Usage {
            input_tokens: 10,
            output_tokens: 20,
            ..Default::default()
        };
        let record = AttemptRecord {
            outcome: "succeeded",
            usage: Some(usage),
            ..Default::default()
        };
        let done = ItemUpdate::Final {
            state: crate::model::state::ItemState::Succeeded,
            result_line: "{}".into(),
            error: None,
        };
        items::record_outcome(
            &conn,
            &rules.prices,
            d.item_id,
            d.attempt_id,
            &record,
            &done,
            NOW,
        )
        .expect("record");
        let s = spend(&conn, "acme", NOW).expect("spend");
        assert_eq!(
            s.reserved, worst,
            "the answered call's reservation is settled"
        );
        assert_eq!((s.day, s.month), (10 * 3 + 20 * 15, 10 * 3 + 20 * 15));

        // A crash leaves the other call in flight: recovery settles its reservation too.
        items::requeue_in_flight(&conn, NOW).expect("requeue");
        assert_eq!(spend(&conn, "acme", NOW).expect("spend").reserved, 0);
        let tomorrow =
            crate::policy::budget::next_period_start(crate::policy::budget::Period::Day, NOW);
        assert_eq!(spend(&conn, "acme", tomorrow).expect("spend").day, 0);
    }

    #[test]
    fn admissions_one_after_another_never_cross_a_nearly_spent_cap() {
        let conn = test_connection();
        let lines: Vec<String> = (0..50).map(|i| line(&i.to_string(), "realtime")).collect();
        test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        // Room for 3 worst cases of about $0.0151 each.
        let rules = rules(0.05, CapAction::Reject);
        let outcomes: Vec<Marked> = ids(&conn)
            .into_iter()
            .map(|id| mark(&conn, id, &rules))
            .collect();
        let sent = outcomes
            .iter()
            .filter(|m| matches!(m, Marked::InFlight(_)))
            .count();
        let rejected = outcomes
            .iter()
            .filter(|m| matches!(m, Marked::Budget(Admission::Rejected)))
            .count();
        assert_eq!((sent, rejected), (3, 47));
        let s = spend(&conn, "acme", NOW).expect("spend");
        assert!(s.reserved <= 50_000, "{s:?}");
        let id = ids(&conn)[49];
        let error: String = column(&conn, id, "error");
        assert!(error.contains("daily budget of $0.05"), "{error}");
        let result: String = column(&conn, id, "result");
        assert!(result.contains("budget_exceeded_error"), "{result}");
    }

    #[test]
    fn downgrade_rewrites_the_model_of_the_request_and_records_the_old_one() {
        let conn = test_connection();
        test_job(&conn, &[&line("a", "realtime")]);
        let rules = rules(0.001, CapAction::Downgrade);
        let id = ids(&conn)[0];
        assert!(matches!(
            mark(&conn, id, &rules),
            Marked::Budget(Admission::Downgraded)
        ));
        let params: String = column(&conn, id, "params");
        let model: String = column(&conn, id, "model");
        let from: String = column(&conn, id, "downgraded_from");
        assert!(
            params.contains("\"model\":\"claude-haiku-4-5\""),
            "{params}"
        );
        assert_eq!(
            (model.as_str(), from.as_str()),
            ("claude-haiku-4-5", "claude-sonnet-4-5")
        );
        // The cap is soft for the downgraded call: it goes.
        assert!(matches!(mark(&conn, id, &rules), Marked::InFlight(_)));
    }

    #[test]
    fn defer_sends_real_time_work_to_batches_or_to_the_next_day() {
        let conn = test_connection();
        test_job(&conn, &[&line("auto", "auto"), &line("pinned", "realtime")]);
        // A worst case is about $0.0151 in real time and $0.0076 through a batch.
        let rules = rules(0.01, CapAction::Defer);
        let ids = ids(&conn);
        conn.execute("UPDATE items SET lane = 'realtime'", [])
            .expect("lane");
        assert!(matches!(
            mark(&conn, ids[0], &rules),
            Marked::Budget(Admission::Deferred)
        ));
        let lane: String = column(&conn, ids[0], "lane");
        assert_eq!(lane, "batch");
        // Explicitly real-time: it waits for tomorrow instead.
        assert!(matches!(
            mark(&conn, ids[1], &rules),
            Marked::Budget(Admission::Deferred)
        ));
        let not_before: i64 = column(&conn, ids[1], "not_before");
        assert_eq!(
            not_before,
            crate::policy::budget::next_period_start(crate::policy::budget::Period::Day, NOW)
        );
        let reason: String = column(&conn, ids[1], "lane_reason");
        assert!(reason.contains("deferred until"), "{reason}");
    }

    #[test]
    fn packing_admits_what_fits_and_holds_the_rest() {
        let conn = test_connection();
        let lines: Vec<String> = (0..10).map(|i| line(&i.to_string(), "batch")).collect();
        let job_id = test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        // Room for 3 batch worst cases of about $0.0076.
        let rules = rules(0.025, CapAction::Defer);
        let batch = batches::pack(&conn, job_id, 100, 1 << 20, &rules, NOW)
            .expect("pack")
            .expect("a batch");
        assert_eq!(batches::requests(&conn, batch).expect("requests").len(), 3);
        assert!(
            batches::waiting_jobs(&conn, NOW, &[], 100_000)
                .expect("waiting")
                .is_empty(),
            "the other 7 wait for the next day"
        );
        // Parked until tomorrow: out of the ready indexes until then.
        let tomorrow =
            crate::policy::budget::next_period_start(crate::policy::budget::Period::Day, NOW);
        assert_eq!(
            crate::store::items::next_ready_at(&conn, NOW).expect("next"),
            Some(tomorrow),
            "the lanes wake when parked items are due"
        );
        assert_eq!(unpark_due(&conn, tomorrow - 1).expect("unpark"), 0);
        assert!(
            batches::waiting_jobs(&conn, tomorrow, &[], 100_000)
                .expect("waiting")
                .is_empty(),
            "parked"
        );
        assert_eq!(unpark_due(&conn, tomorrow).expect("unpark"), 7);
        assert_eq!(
            batches::waiting_jobs(&conn, tomorrow, &[], 100_000).expect("waiting")[0].waiting,
            7
        );
        assert_eq!(
            crate::store::items::next_ready_at(&conn, NOW).expect("next"),
            None,
            "nothing parked or backing off now"
        );
    }
}
