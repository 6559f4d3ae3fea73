//! Budget caps per tenant: daily and monthly USD caps, each with an action when a call would cross
//! it. This module is the pure decision; `store::budget` reads the spend and applies the answer in
//! the transaction that sends the item, so two admissions can never both take the last dollar.
//!
//! A call is admitted only when what the tenant has spent in the period, plus the worst-case cost
//! of every call already admitted and not yet settled (the reservations), plus this call's own
//! worst case (its input and all of its `max_tokens`), stays within the cap. Reservations are
//! settled with the real usage when the call's outcome is recorded. So concurrent admissions
//! cannot overshoot a cap; only an input-token estimate below the real count could, by at most
//! that one request's error.
//!
//! Periods are UTC days and UTC calendar months, like the ledger's `--by day`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::model::state::Lane;

/// What happens to a call that would cross a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapAction {
    /// The item ends `errored` with a message naming the cap.
    Reject,
    /// The item goes on with the tenant's `downgrade_to` model (recorded on the item). The cap is
    /// then a soft one: downgraded calls pass it, other caps still apply.
    Downgrade,
    /// A real-time item goes to the batch lane (half the price) if that fits; otherwise the item
    /// waits for the next period.
    Defer,
}

impl CapAction {
    pub fn parse(s: &str) -> Option<CapAction> {
        match s {
            "reject" => Some(CapAction::Reject),
            "downgrade" => Some(CapAction::Downgrade),
            "defer" => Some(CapAction::Defer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }
}

/// One cap: millionths of a dollar per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub micro_usd: i64,
    pub action: CapAction,
}

/// A tenant's caps (`[budgets."tenant"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCaps {
    pub daily: Option<Cap>,
    pub monthly: Option<Cap>,
    /// The cheaper model a `downgrade` action moves calls to.
    pub downgrade_to: Option<String>,
}

impl TenantCaps {
    fn caps(&self) -> impl Iterator<Item = (Period, Cap)> {
        [(Period::Day, self.daily), (Period::Month, self.monthly)]
            .into_iter()
            .filter_map(|(period, cap)| cap.map(|c| (period, c)))
    }
}

/// Every tenant's caps; `*` applies to tenants without their own entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budgets {
    pub tenants: BTreeMap<String, TenantCaps>,
}

impl Budgets {
    pub fn for_tenant(&self, tenant: &str) -> Option<&TenantCaps> {
        self.tenants
            .get(tenant)
            .or_else(|| self.tenants.get("*"))
            .filter(|caps| caps.daily.is_some() || caps.monthly.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// What a tenant has used, in millionths of a dollar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Settled (in the ledger) today, UTC.
    pub day: i64,
    /// Settled this calendar month, UTC.
    pub month: i64,
    /// Worst cases of admitted calls not yet settled.
    pub reserved: i64,
}

impl Spend {
    fn used(&self, period: Period) -> i64 {
        self.reserved
            + match period {
                Period::Day => self.day,
                Period::Month => self.month,
            }
    }
}

/// The call being admitted.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub model: &'a str,
    pub lane: Lane,
    /// Its worst-case cost in its lane; None when the model has no price.
    pub worst: Option<i64>,
    /// Its worst-case cost through a batch (for `defer` from the real-time lane); None when it
    /// may not go to batches (explicit `mode = "realtime"`) or has no price.
    pub worst_in_batch: Option<i64>,
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send it, reserving this much.
    Admit { reserve: i64 },
    /// End the item `errored` with this message.
    Reject { message: String },
    /// Change the item's model to this one, then decide again.
    Downgrade { to: String, reason: String },
    /// Move the item to the batch lane.
    DeferToBatch { reason: String },
    /// Hold the item until this time (Unix ms: the start of the next period).
    DeferUntil { at: i64, reason: String },
}

/// Decides one call of a tenant with `caps`. Pure: the spend and the time are passed in.
pub fn decide(
    tenant: &str,
    caps: &TenantCaps,
    spend: Spend,
    call: &Call<'_>,
    now: i64,
) -> Decision {
    let Some(worst) = call.worst else {
        return Decision::Reject {
            message: format!(
                "tenant '{tenant}' has a budget cap, and model '{}' has no price, so the cap cannot be kept; \
                 add [prices.\"{}\"] to the config (USD per million tokens)",
                call.model, call.model
            ),
        };
    };
    let crossed: Vec<(Period, Cap)> = caps
        .caps()
        .filter(|(period, cap)| spend.used(*period) + worst > cap.micro_usd)
        .collect();
    let describe = |period: Period, cap: Cap| {
        format!(
            "tenant '{tenant}' would cross its {} budget of {} (spent {}, {} reserved by calls in flight, \
             this call may cost up to {})",
            period.as_str(),
            usd(cap.micro_usd),
            usd(match period {
                Period::Day => spend.day,
                Period::Month => spend.month,
            }),
            usd(spend.reserved),
            usd(worst),
        )
    };
    // The hardest action wins: a rejecting cap ends the item whatever the others say.
    if let Some(&(period, cap)) = crossed.iter().find(|(_, c)| c.action == CapAction::Reject) {
        return Decision::Reject {
            message: format!(
                "{}; the item was not sent. Raise budgets.\"{tenant}\".{}_usd or wait for the next period",
                describe(period, cap),
                period.as_str()
            ),
        };
    }
    let downgrade = crossed
        .iter()
        .find(|(_, c)| c.action == CapAction::Downgrade);
    if let Some(&(period, cap)) = downgrade
        && let Some(to) = caps.downgrade_to.as_deref()
        && to != call.model
    {
        return Decision::Downgrade {
            to: to.to_owned(),
            reason: format!(
                "{}; downgraded from {} to {to}",
                describe(period, cap),
                call.model
            ),
        };
    }
    let deferring: Vec<(Period, Cap)> = crossed
        .iter()
        .copied()
        .filter(|(_, c)| c.action == CapAction::Defer)
        .collect();
    let Some(&(period, cap)) = deferring.last() else {
        return Decision::Admit { reserve: worst };
    };
    if call.lane == Lane::Realtime
        && let Some(in_batch) = call.worst_in_batch
        && caps.caps().all(|(p, c)| {
            spend.used(p) + in_batch <= c.micro_usd || c.action == CapAction::Downgrade
        })
    {
        return Decision::DeferToBatch {
            reason: format!(
                "{}; deferred to the batch lane (half the price)",
                describe(period, cap)
            ),
        };
    }
    // Wait for the latest period any deferring cap needs to roll over.
    let at = deferring
        .iter()
        .map(|(p, _)| next_period_start(*p, now))
        .max()
        .unwrap_or(now);
    Decision::DeferUntil {
        at,
        reason: format!(
            "{}; deferred until {}",
            describe(period, cap),
            Timestamp::from_millisecond(at).map_or_else(|_| at.to_string(), |t| t.to_string())
        ),
    }
}

/// The first days (`YYYY-MM-DD`, UTC, as `tenant_days.day` has them) of the day and the month
/// containing `now`.
pub fn period_days(now: i64) -> (String, String) {
    let date = utc_date(now);
    (date.to_string(), date.first_of_month().to_string())
}

/// Unix ms at which the period after the one containing `now` begins.
pub fn next_period_start(period: Period, now: i64) -> i64 {
    let date = utc_date(now);
    let next = match period {
        Period::Day => date.tomorrow(),
        Period::Month => date.last_of_month().tomorrow(),
    };
    next.map_or(i64::MAX, start_ms)
}

fn utc_date(now: i64) -> Date {
    Timestamp::from_millisecond(now)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(TimeZone::UTC)
        .date()
}

fn start_ms(date: Date) -> i64 {
    date.to_zoned(TimeZone::UTC)
        .map_or(i64::MAX, |z| z.timestamp().as_millisecond())
}

/// Millionths of a dollar as `$1.234567`, trimmed to cents when exact.
pub fn usd(micro: i64) -> String {
    if micro % 10_000 == 0 {
        format!("${:.2}", micro as f64 / 1e6)
    } else {
        format!("${:.6}", micro as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000; // 2026-11-18T...Z

    fn caps(daily: Option<(i64, CapAction)>, monthly: Option<(i64, CapAction)>) -> TenantCaps {
        let cap = |(micro_usd, action)| Cap { micro_usd, action };
        TenantCaps {
            daily: daily.map(cap),
            monthly: monthly.map(cap),
            downgrade_to: Some("claude-haiku-4-5".into()),
        }
    }

    fn call(lane: Lane, worst: i64) -> Call<'static> {
        Call {
            model: "claude-sonnet-4-5",
            lane,
            worst: Some(worst),
            worst_in_batch: Some(worst / 2),
        }
    }

    fn spend(day: i64, month: i64, reserved: i64) -> Spend {
        Spend {
            day,
            month,
            reserved,
        }
    }

    #[test]
    fn admits_what_fits_and_reserves_the_worst_case() {
        let c = caps(Some((1_000, CapAction::Reject)), None);
        assert_eq!(
            decide(
                "t",
                &c,
                spend(500, 500, 300),
                &call(Lane::Realtime, 200),
                NOW
            ),
            Decision::Admit { reserve: 200 }
        );
    }

    #[test]
    fn reservations_count_so_the_last_dollar_is_taken_once() {
        let c = caps(Some((1_000, CapAction::Reject)), None);
        // 500 spent + 300 reserved + 201 would be 1,001: over.
        let d = decide(
            "acme",
            &c,
            spend(500, 500, 300),
            &call(Lane::Realtime, 201),
            NOW,
        );
        let Decision::Reject { message } = d else {
            panic!("{d:?}")
        };
        assert!(message.contains("tenant 'acme'"), "{message}");
        assert!(message.contains("daily budget of $0.001000"), "{message}");
        assert!(message.contains("budgets.\"acme\".daily_usd"), "{message}");
    }

    #[test]
    fn a_rejecting_cap_wins_over_deferring_and_downgrading_ones() {
        let c = caps(
            Some((1_000, CapAction::Defer)),
            Some((1_000, CapAction::Reject)),
        );
        let d = decide("t", &c, spend(900, 900, 0), &call(Lane::Realtime, 200), NOW);
        assert!(matches!(d, Decision::Reject { .. }), "{d:?}");
    }

    #[test]
    fn downgrade_switches_the_model_once_then_the_cap_is_soft() {
        let c = caps(Some((1_000, CapAction::Downgrade)), None);
        let d = decide("t", &c, spend(990, 990, 0), &call(Lane::Realtime, 200), NOW);
        assert!(
            matches!(&d, Decision::Downgrade { to, .. } if to == "claude-haiku-4-5"),
            "{d:?}"
        );
        let downgraded = Call {
            model: "claude-haiku-4-5",
            ..call(Lane::Realtime, 50)
        };
        assert_eq!(
            decide("t", &c, spend(990, 990, 0), &downgraded, NOW),
            Decision::Admit { reserve: 50 }
        );
    }

    #[test]
    fn a_downgraded_call_still_meets_the_other_caps() {
        let c = caps(
            Some((1_000, CapAction::Downgrade)),
            Some((1_000, CapAction::Reject)),
        );
        let downgraded = Call {
            model: "claude-haiku-4-5",
            ..call(Lane::Realtime, 50)
        };
        let d = decide("t", &c, spend(990, 990, 0), &downgraded, NOW);
        assert!(matches!(d, Decision::Reject { .. }), "{d:?}");
    }

    #[test]
    fn defer_moves_real_time_to_batches_when_half_the_price_fits() {
        let c = caps(Some((1_000, CapAction::Defer)), None);
        let d = decide("t", &c, spend(850, 850, 0), &call(Lane::Realtime, 200), NOW);
        assert!(matches!(d, Decision::DeferToBatch { .. }), "{d:?}");
    }

    #[test]
    fn defer_waits_for_the_next_period_when_batches_do_not_fit_either() {
        let c = caps(Some((1_000, CapAction::Defer)), None);
        let d = decide("t", &c, spend(950, 950, 0), &call(Lane::Realtime, 200), NOW);
        let Decision::DeferUntil { at, reason } = d else {
            panic!("{d:?}")
        };
        assert_eq!(at, next_period_start(Period::Day, NOW));
        assert!(reason.contains("deferred until"), "{reason}");
        // A batch item waits as well.
        let d = decide("t", &c, spend(950, 950, 0), &call(Lane::Batch, 100), NOW);
        assert!(matches!(d, Decision::DeferUntil { .. }), "{d:?}");
        // So does a real-time item that may not go to batches.
        let pinned = Call {
            worst_in_batch: None,
            ..call(Lane::Realtime, 200)
        };
        let d = decide("t", &c, spend(850, 850, 0), &pinned, NOW);
        assert!(matches!(d, Decision::DeferUntil { .. }), "{d:?}");
    }

    #[test]
    fn a_monthly_deferral_waits_for_the_month() {
        let c = caps(
            Some((10_000, CapAction::Defer)),
            Some((1_000, CapAction::Defer)),
        );
        let d = decide("t", &c, spend(0, 950, 0), &call(Lane::Batch, 100), NOW);
        assert!(
            matches!(d, Decision::DeferUntil { at, .. } if at == next_period_start(Period::Month, NOW)),
            "{d:?}"
        );
    }

    #[test]
    fn an_unpriced_model_cannot_pass_a_cap() {
        let c = caps(Some((1_000_000, CapAction::Reject)), None);
        let unpriced = Call {
            model: "claude-house-1",
            lane: Lane::Realtime,
            worst: None,
            worst_in_batch: None,
        };
        let d = decide("t", &c, Spend::default(), &unpriced, NOW);
        assert!(
            matches!(&d, Decision::Reject { message } if message.contains("[prices.\"claude-house-1\"]")),
            "{d:?}"
        );
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-30T23:30:00Z
        let now = 1_796_081_400_000;
        let (day, month) = period_days(now);
        assert_eq!(day, "2026-11-30");
        assert_eq!(month, "2026-11-01");
        // The next day is also the next month.
        assert_eq!(next_period_start(Period::Day, now), 1_796_083_200_000);
        assert_eq!(next_period_start(Period::Month, now), 1_796_083_200_000);
    }

    #[test]
    fn the_wildcard_covers_tenants_without_their_own_caps() {
        let mut budgets = Budgets::default();
        budgets
            .tenants
            .insert("*".into(), caps(Some((5, CapAction::Reject)), None));
        budgets.tenants.insert("vip".into(), TenantCaps::default());
        assert!(budgets.for_tenant("anyone").is_some());
        assert!(
            budgets.for_tenant("vip").is_none(),
            "an empty entry means no caps"
        );
    }
}
