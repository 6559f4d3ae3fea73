//! Budget admission: before an item goes in flight, its worst case is checked against its
//! tenant's caps and the answer applied — reserve it, downgrade its model, move it to batches or
//! hold it until the next period, or end it errored. Read, decide (`policy::budget::decide`) and
//! write in the transaction that sends it: the store's single writer makes admissions one at a
//! time (and, with several daemons on one PostgreSQL store, a lock on the tenant's reservations),
//! so two calls can never both take the last dollar of a cap.

use crate::store::sql::Conn;
use serde_json::json;

use crate::model::job::Mode;
use crate::model::results;
use crate::model::state::Lane;
use crate::policy::budget::{self, Call, Decision};
use crate::policy::planner;
use crate::policy::prices::PriceTable;
use crate::store::{self, batches, items};

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

/// Checks a pending item against its tenant's caps before it goes in flight in `lane`, and applies
/// the answer.
pub fn admit(
    conn: &Conn,
    item_id: i64,
    lane: Lane,
    rules: &Rules,
    now: i64,
) -> store::Result<Admission> {
    if rules.budgets.is_empty() {
        return Ok(Admission::Admitted);
    }
    let item = items::item(conn, item_id)?;
    let Some(caps) = rules.budgets.for_tenant(&item.tenant) else {
        return Ok(Admission::Admitted);
    };
    let caches = item.params.contains("\"cache_control\"");
    let worst = |batch: bool| {
        rules.prices.worst_case_micro_usd(
            &item.model,
            item.input_estimate as u64,
            item.max_tokens as u64,
            caches,
            batch,
        )
    };
    // Deferring to batches is offered only to an item batches can serve (not pinned to real time,
    // no field the batch endpoint refuses) in time for its deadline, as the planner would judge.
    let batch_in_time = || -> store::Result<bool> {
        Ok(match item.deadline_at {
            None => true,
            Some(deadline) => planner::batch_meets(deadline, now, batches::turnaround_ms(conn)?),
        })
    };
    let may_batch =
        lane == Lane::Realtime && item.mode != Mode::Realtime && item.batch_ok && batch_in_time()?;
    let call = Call {
        model: &item.model,
        lane,
        worst: worst(lane == Lane::Batch),
        worst_in_batch: may_batch.then(|| worst(true)).flatten(),
    };
    let tenant = item.tenant.as_str();
    store::budget::lock_tenant(conn, tenant)?;
    let spend = store::budget::spend(conn, tenant, now)?;
    match budget::decide(tenant, caps, spend, &call, now) {
        Decision::Admit { reserve } => {
            store::budget::reserve(conn, item_id, reserve)?;
            Ok(Admission::Admitted)
        }
        Decision::Reject { message } => {
            tracing::warn!(tenant, item = item_id, "{message}");
            let line = results::errored_line(
                item.custom_id.as_deref(),
                // One of the API's own error types, so the SDKs read the line; `details` says
                // it was nightshift's budget, not the API.
                "billing_error",
                &message,
                Some(json!({"tenant": tenant, "reason": "budget_exceeded"})),
            );
            store::budget::reject(conn, item_id, &line, &message, now)?;
            Ok(Admission::Rejected)
        }
        Decision::Downgrade { to, reason } => {
            tracing::info!(tenant, item = item_id, "{reason}");
            store::budget::downgrade(conn, item_id, &to, &reason, now)?;
            Ok(Admission::Downgraded)
        }
        Decision::DeferToBatch { reason } => {
            store::budget::defer_to_batch(conn, item_id, &reason, now)?;
            Ok(Admission::Deferred)
        }
        Decision::DeferUntil { at, reason } => {
            store::budget::park_until(conn, item_id, at, &reason, now)?;
            Ok(Admission::Deferred)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::batch::apply;
    use crate::lanes::realtime::{Marked, mark as mark_realtime};
    use crate::model::state::AttemptOutcome;
    use crate::policy::budget::{Budgets, Cap, CapAction, TenantCaps};
    use crate::policy::outcome::{AttemptRecord, ItemUpdate};
    use crate::store::budget::{spend, unpark_due};
    use crate::store::{batches, test_connection, test_job};

    const NOW: i64 = 1_795_000_000_000;

    fn line(id: &str, mode: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","tenant":"acme","mode":"{mode}","params":{{"model":"claude-sonnet-4-6","max_tokens":1000,"messages":[{{"role":"user","content":"q"}}]}}}}"#
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

    fn ids(conn: &Conn) -> Vec<i64> {
        let mut stmt = conn
            .prepare("SELECT id FROM items ORDER BY id")
            .expect("prepare");
        stmt.query_map((), |r| r.get(0))
            .expect("query")
            .collect::<crate::store::Result<_>>()
            .expect("ids")
    }

    fn mark(conn: &Conn, id: i64, rules: &Rules) -> Marked {
        mark_realtime(
            conn,
            id,
            (1, 1),
            "default",
            rules,
            &crate::store::leases::test_holder(),
            NOW,
        )
        .expect("mark")
    }

    fn column<T: crate::store::sql::FromValue>(conn: &Conn, id: i64, col: &str) -> T {
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
            outcome: AttemptOutcome::Succeeded,
            usage: Some(usage),
            ..Default::default()
        };
        let done = ItemUpdate::Final {
            state: crate::model::state::ItemState::Succeeded,
            result_line: "{}".into(),
            error: None,
        };
        items::record_outcome(&conn, &rules.prices, &d.claim(), &record, &done, NOW)
            .expect("record");
        let s = spend(&conn, "acme", NOW).expect("spend");
        assert_eq!(
            s.reserved, worst,
            "the answered call's reservation is settled"
        );
        assert_eq!((s.day, s.month), (10 * 3 + 20 * 15, 10 * 3 + 20 * 15));

        // A crash leaves the other call in flight: recovery settles its reservation too.
        items::requeue_in_flight(&conn, items::Requeue::StartOf("test"), NOW).expect("requeue");
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
        let result = crate::store::results::line_of(&conn, id)
            .expect("line")
            .expect("a line");
        assert!(result.contains("\"billing_error\""), "{result}");
        assert!(
            result.contains("\"reason\":\"budget_exceeded\""),
            "{result}"
        );
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
            ("claude-haiku-4-5", "claude-sonnet-4-6")
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
        conn.execute("UPDATE items SET lane = 'realtime'", ())
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
        let batch = apply::pack(
            &conn,
            job_id,
            &crate::store::batches::PackRoute {
                name: "default",
                tenants: None,
            },
            (100, 1 << 20),
            &rules,
            &crate::store::leases::test_holder(),
            NOW,
        )
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
