//! Who owns a 429 or 529: the first question before changing anything. Each throttling answer
//! gets a verdict and the evidence it rests on:
//!
//! - `gateway`: no `request-id` and no `anthropic-*` header, so something between nightshift and
//!   the API answered (a gateway's own tenant policy, a proxy);
//! - `overloaded`: a 529, the provider's capacity across all users, not a quota;
//! - `spend_cap`: the tier's monthly spend cap (429 `enforced_spend_limit_reached`), until
//!   00:00 UTC on the 1st of next month;
//! - `usage_limit`: the organization's or workspace's self-set spend limit (a 400), until the
//!   day its message names;
//! - `key`: the key was refused (401, 403);
//! - `foreign`: the answer's `remaining` is lower than our books and our calls in flight
//!   explain, by more than our estimates can be off: someone else's traffic on that
//!   organization or workspace took it;
//! - `acceleration`: refused while the answer showed room for the call in every limit: the ramp
//!   was too steep for the API's acceleration limit;
//! - `self`: the bucket was as short as our books say: our own admissions overshot (the input
//!   estimate was low, a burst too large for what the bucket held).
//!
//! Pure: the answer's facts and the quota's books are passed in.

use std::time::Duration;

/// Whose limit it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    #[serde(rename = "self")]
    Ours,
    Foreign,
    Acceleration,
    SpendCap,
    UsageLimit,
    Overloaded,
    Gateway,
    Key,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Ours => "self",
            Owner::Foreign => "foreign",
            Owner::Acceleration => "acceleration",
            Owner::SpendCap => "spend_cap",
            Owner::UsageLimit => "usage_limit",
            Owner::Overloaded => "overloaded",
            Owner::Gateway => "gateway",
            Owner::Key => "key",
        }
    }
}

/// A verdict and what it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub owner: Owner,
    /// The facts it rests on, in a sentence.
    pub evidence: String,
    /// When the limit lifts (UTC, ms), when that is known (spend cap, usage limit).
    pub reset_at_ms: Option<i64>,
}

/// What the answer said.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    pub status: u16,
    pub message: &'a str,
    /// `error.details.error_code` was `enforced_spend_limit_reached`.
    pub spend_cap: bool,
    /// It bore the API's marks (`request-id` or an `anthropic-*` header).
    pub anthropic: bool,
    pub retry_after: Option<Duration>,
}

/// Our books of one limit at the moment the answer came, beside what the answer said.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DimBooks {
    /// `requests`, `input_tokens`, `output_tokens`.
    pub name: &'static str,
    /// What this call took from our books at admission.
    pub cost: f64,
    /// Our books' level now, with this call's cost still taken.
    pub level: f64,
    /// How far our own figures may be off: the API's rounding, and the error of the estimates
    /// of our calls in flight.
    pub tolerance: f64,
    /// What the answer said remains.
    pub remaining: Option<u64>,
}

/// Judges one throttling (or refusing) answer. `books`: the quota's view of the call's class,
/// for a rate-limit 429 from the API; `now_ms`: wall-clock UTC, for reset times.
pub fn judge(answer: &Answered<'_>, books: Option<&[DimBooks; 3]>, now_ms: i64) -> Verdict {
    let verdict = |owner, evidence: String, reset_at_ms| Verdict {
        owner,
        evidence,
        reset_at_ms,
    };
    if !answer.anthropic {
        return verdict(
            Owner::Gateway,
            format!(
                "HTTP {} without a request-id or any anthropic-* header: something between nightshift and the API answered ({})",
                answer.status,
                short(answer.message)
            ),
            None,
        );
    }
    match answer.status {
        529 => {
            return verdict(
                Owner::Overloaded,
                "529 overloaded_error: the API's capacity across all its users, not a quota of this organization".into(),
                None,
            );
        }
        429 if answer.spend_cap => {
            let reset = next_month_utc_ms(now_ms);
            return verdict(
                Owner::SpendCap,
                format!(
                    "429 enforced_spend_limit_reached without retry-after: the tier's monthly spend cap; access resumes at {}",
                    format_utc(reset)
                ),
                Some(reset),
            );
        }
        400 => {
            let reset = regain_date_ms(answer.message);
            return verdict(
                Owner::UsageLimit,
                format!(
                    "400 \"{}\": the organization's or workspace's own spend limit{}",
                    short(answer.message),
                    reset.map_or(String::new(), |r| format!(
                        "; access resumes at {}",
                        format_utc(r)
                    ))
                ),
                reset,
            );
        }
        401 | 403 => {
            return verdict(
                Owner::Key,
                format!(
                    "HTTP {}: the key was refused ({})",
                    answer.status,
                    short(answer.message)
                ),
                None,
            );
        }
        _ => {}
    }
    let Some(books) = books.filter(|b| b.iter().any(|d| d.remaining.is_some())) else {
        return verdict(
            Owner::Ours,
            format!(
                "HTTP {} with no rate-limit headers to compare with; nothing shows other traffic, so the pace was ours ({})",
                answer.status,
                short(answer.message)
            ),
            None,
        );
    };
    // Someone else took: the answer says less remains than our books allow, by more than our own
    // figures can be off. (The call was refused, so it took nothing: our books, with its cost
    // given back, are the least that should remain; our later calls may be counted already.)
    let mut foreign: Option<(f64, &DimBooks)> = None;
    for d in books {
        let Some(remaining) = d.remaining else {
            continue;
        };
        let expected = (d.level + d.cost).max(0.0);
        let unexplained = expected - remaining as f64 - d.tolerance;
        if unexplained > 0.0
            && foreign.is_none_or(|(u, f)| unexplained / f.cost.max(1.0) > u / f.cost.max(1.0))
        {
            foreign = Some((unexplained, d));
        }
    }
    if let Some((_, d)) = foreign {
        let remaining = d.remaining.unwrap_or(0);
        let expected = (d.level + d.cost).max(0.0);
        return verdict(
            Owner::Foreign,
            format!(
                "{}: the answer left {remaining} where our books held at least {:.0} (our calls in flight counted, {:.0} allowed for rounding and estimates): about {:.0} were taken by other traffic on this organization or workspace",
                d.name,
                expected,
                d.tolerance,
                expected - remaining as f64
            ),
            None,
        );
    }
    // Refused with room: every limit the answer reports had this call's cost left, beyond what
    // our figures may be off. Output tokens are left out: they are charged as generated, so a
    // call needs no `max_tokens` of room to be admitted (the 2026 rule).
    let judged: Vec<&DimBooks> = books
        .iter()
        .filter(|d| d.remaining.is_some() && d.name != "output_tokens")
        .collect();
    let with_room = !judged.is_empty()
        && judged
            .iter()
            .all(|d| d.remaining.unwrap_or(0) as f64 >= d.cost.max(1.0) + d.tolerance);
    if with_room {
        let room: Vec<String> = judged
            .iter()
            .map(|d| format!("{} {} ≥ {:.0}", d.name, d.remaining.unwrap_or(0), d.cost))
            .collect();
        return verdict(
            Owner::Acceleration,
            format!(
                "refused while the answer showed room for the call ({}, beyond our estimates' error): the ramp was too steep for the API's acceleration limit",
                room.join(", ")
            ),
            None,
        );
    }
    let short_dim = judged
        .iter()
        .filter(|d| (d.remaining.unwrap_or(0) as f64) < d.cost.max(1.0) + d.tolerance)
        .map(|d| {
            format!(
                "{}: {} left, the call needed about {:.0}, our books held {:.0}",
                d.name,
                d.remaining.unwrap_or(0),
                d.cost,
                d.level + d.cost
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    verdict(
        Owner::Ours,
        format!(
            "the bucket was as short as our own calls explain ({short_dim}): our admissions overshot (an input estimate low, or a burst larger than the bucket held)"
        ),
        None,
    )
}

/// 00:00 UTC on the 1st of the month after `now_ms`.
pub fn next_month_utc_ms(now_ms: i64) -> i64 {
    let Ok(now) = jiff::Timestamp::from_millisecond(now_ms) else {
        return now_ms;
    };
    let date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let first = date.first_of_month();
    let next = first
        .checked_add(jiff::Span::new().months(1))
        .unwrap_or(first);
    next.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(now_ms)
}

/// The date a usage-limit message says access comes back ("You will regain access on
/// 2026-12-01"), as 00:00 UTC that day.
pub fn regain_date_ms(message: &str) -> Option<i64> {
    let at = message.find("regain access on ")? + "regain access on ".len();
    let text: String = message[at..].chars().take(10).collect();
    let date: jiff::civil::Date = text.parse().ok()?;
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

fn format_utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// The first 160 characters of a message.
fn short(message: &str) -> String {
    let mut text: String = message.chars().take(160).collect();
    if text.len() < message.len() {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000; // 2026-11-30T00:53:20Z

    fn answer(status: u16) -> Answered<'static> {
        Answered {
            status,
            message: "This request would exceed your organization's rate limit",
            spend_cap: false,
            anthropic: true,
            retry_after: Some(Duration::from_secs(2)),
        }
    }

    fn dims(remaining: [Option<u64>; 3], level: [f64; 3], cost: [f64; 3]) -> [DimBooks; 3] {
        let names = ["requests", "input_tokens", "output_tokens"];
        let tolerance = [1.0, 1500.0, 1500.0];
        std::array::from_fn(|i| DimBooks {
            name: names[i],
            cost: cost[i],
            level: level[i],
            tolerance: tolerance[i],
            remaining: remaining[i],
        })
    }

    #[test]
    fn an_answer_without_the_apis_marks_is_the_gateways() {
        let mut a = answer(429);
        a.anthropic = false;
        let v = judge(&a, None, NOW);
        assert_eq!(v.owner, Owner::Gateway);
        assert!(v.evidence.contains("request-id"), "{}", v.evidence);
        let mut a = answer(529);
        a.anthropic = false;
        assert_eq!(judge(&a, None, NOW).owner, Owner::Gateway);
    }

    #[test]
    fn overloaded_spend_cap_usage_limit_and_key() {
        assert_eq!(judge(&answer(529), None, NOW).owner, Owner::Overloaded);
        let mut cap = answer(429);
        cap.spend_cap = true;
        let v = judge(&cap, None, NOW);
        assert_eq!(v.owner, Owner::SpendCap);
        // → 2026-12-01T00:00:00Z.
        assert_eq!(v.reset_at_ms, Some(1_796_083_200_000));
        assert!(
            v.evidence.contains("2026-12-01T00:00:00Z"),
            "{}",
            v.evidence
        );

        let mut own = answer(400);
        own.message = "You have reached your specified API usage limits. You will regain access on 2027-01-01 at 00:00 UTC.";
        let v = judge(&own, None, NOW);
        assert_eq!(v.owner, Owner::UsageLimit);
        assert_eq!(v.reset_at_ms, Some(1_798_761_600_000));
        assert_eq!(judge(&answer(401), None, NOW).owner, Owner::Key);
    }

    #[test]
    fn remaining_below_what_our_books_explain_is_foreign() {
        // Our books: 40 requests left after this call's 1; the answer says 0.
        let books = dims(
            [Some(0), Some(20_000), Some(8_000)],
            [40.0, 20_000.0, 7_000.0],
            [1.0, 500.0, 100.0],
        );
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Foreign, "{}", v.evidence);
        assert!(v.evidence.starts_with("requests"), "{}", v.evidence);
    }

    #[test]
    fn within_our_estimates_error_it_is_ours() {
        // Books say 300 input tokens left after the call's 2,000; the answer says 1,000 remain:
        // short of the 2,000 needed, within the tolerance of our figures.
        let books = dims(
            [Some(5), Some(1_000), Some(8_000)],
            [4.0, 300.0, 7_000.0],
            [1.0, 2_000.0, 100.0],
        );
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Ours, "{}", v.evidence);
        assert!(v.evidence.contains("input_tokens"), "{}", v.evidence);
    }

    #[test]
    fn refused_with_room_everywhere_is_acceleration() {
        let books = dims(
            [Some(30), Some(20_000), Some(8_000)],
            [29.0, 19_500.0, 7_900.0],
            [1.0, 500.0, 100.0],
        );
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Acceleration, "{}", v.evidence);
    }

    #[test]
    fn a_low_input_estimate_is_ours_and_output_room_is_not_needed() {
        // Estimated 2,000 input tokens; the API says 3,000 remain but charged 5,000: within
        // our estimates' error of the cost, so not a sign of room.
        let mut books = dims(
            [Some(30), Some(3_000), Some(8_000)],
            [29.0, 1_000.0, 0.0],
            [1.0, 2_000.0, 8_192.0],
        );
        books[1].tolerance = 1_000.0 + 0.5 * 2_000.0;
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Ours, "{}", v.evidence);
        // Plenty of requests and input left, less output than max_tokens (as our books say
        // too): refused with room.
        let books = dims(
            [Some(30), Some(20_000), Some(100)],
            [29.0, 19_500.0, -8_092.0],
            [1.0, 500.0, 8_192.0],
        );
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Acceleration, "{}", v.evidence);
    }

    #[test]
    fn no_headers_to_compare_with_is_ours_and_says_so() {
        let books = dims([None; 3], [1.0; 3], [1.0; 3]);
        let v = judge(&answer(429), Some(&books), NOW);
        assert_eq!(v.owner, Owner::Ours);
        assert!(
            v.evidence.contains("no rate-limit headers"),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn month_rollover() {
        // 2026-12-31T23:00Z → 2027-01-01.
        let dec31 = 1_798_758_000_000;
        assert_eq!(next_month_utc_ms(dec31), 1_798_761_600_000);
        assert_eq!(regain_date_ms("no date here"), None);
    }
}
