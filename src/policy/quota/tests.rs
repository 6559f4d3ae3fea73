//! The controller's behaviour, one scenario per test.

use super::*;
use crate::model::answer::DimHeaders;

fn limits(rpm: u64, itpm: u64, otpm: u64) -> ModelLimits {
    ModelLimits {
        rpm: Some(rpm),
        itpm: Some(itpm),
        otpm: Some(otpm),
    }
}

fn settings(reserve: f64) -> QuotaSettings {
    QuotaSettings {
        reserve,
        output_reservation: OutputReservation::MaxTokens,
        max_concurrency: 64,
        initial_concurrency: 64,
    }
}

fn req(priority: Priority, input: u64, max_tokens: u64) -> Request<'static> {
    Request {
        model: "m",
        priority,
        input_estimate: input,
        max_tokens,
        cache: None,
    }
}

fn headers(dims: [(u64, u64, f64); 3]) -> RateLimitHeaders {
    RateLimitHeaders {
        dims: dims.map(|(limit, remaining, reset_in)| DimHeaders {
            limit: Some(limit),
            remaining: Some(remaining),
            reset_in: Some(reset_in),
        }),
    }
}

fn ran(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Default::default()
    }
}

#[test]
fn before_any_answer_one_probe_then_an_answer_opens_the_burst() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(60, 60_000, 60_000)),
        settings(0.0),
    );
    let probe = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("the probe");
    assert!(
        q.try_admit(&req(Priority::Nightly, 10, 10), t0).is_err(),
        "one second of 60 RPM is one request"
    );
    // The answer: 59 requests remain, the bucket is full again in 1 s (so it holds 60).
    q.settle(
        &probe,
        Answer::Ran,
        Some(&ran(10, 10)),
        &headers([(60, 59, 1.0), (60_000, 59_000, 1.0), (60_000, 59_000, 1.0)]),
        t0,
    );
    for _ in 0..4 {
        q.try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("the burst follows the answer");
    }
}

#[test]
fn a_reload_puts_new_limits_and_reserve_in_force() {
    let t0 = Instant::now();
    let configured = std::sync::Arc::new(std::sync::Mutex::new(limits(600, 600_000, 600_000)));
    let live = configured.clone();
    let mut q = Quota::new(
        move |_| ClassLimits::ceiling(*crate::lock(&live)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("admitted");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(10, 10)),
        &RateLimitHeaders::default(),
        t0,
    );
    *crate::lock(&configured) = limits(6, 600_000, 600_000);
    q.reconfigure(settings(0.5), t0);
    let snapshot = q.snapshot(t0);
    assert_eq!(snapshot[0].dims[0].limit_per_minute, Some(6.0));
    assert_eq!(q.settings.reserve, 0.5);
    // At 6 a minute the bucket starts with one request and refills one per 10 s.
    q.try_admit(&req(Priority::Interactive, 10, 10), t0)
        .expect("the one request in the bucket");
    let again = q
        .try_admit(&req(Priority::Interactive, 10, 10), t0)
        .expect_err("the new limit paces");
    assert!(again >= t0 + Duration::from_secs(9), "{:?}", again - t0);
}

#[test]
fn a_reload_keeps_the_lower_limit_the_api_reported() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 600_000, 600_000)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("admitted");
    // The org's real limit is lower than the config says.
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(10, 10)),
        &headers([
            (50, 49, 1.0),
            (600_000, 599_000, 1.0),
            (600_000, 599_000, 1.0),
        ]),
        t0,
    );
    assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(50.0));
    q.reconfigure(settings(0.3), t0);
    assert_eq!(
        q.snapshot(t0)[0].dims[0].limit_per_minute,
        Some(50.0),
        "an unchanged config does not undo what the headers said"
    );
}

#[test]
fn the_org_quota_is_idle_when_recent_answers_left_nearly_all_of_it() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(100, 100_000, 100_000)),
        settings(0.0),
    );
    let fresh = Duration::from_secs(30);
    assert_eq!(q.org_idle("m", t0, fresh, 0.9), None, "no answer yet");
    let t = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("admitted");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(10, 10)),
        &headers([
            (100, 95, 1.0),
            (100_000, 99_000, 1.0),
            (100_000, 99_000, 1.0),
        ]),
        t0,
    );
    assert_eq!(q.org_idle("m", t0, fresh, 0.9), Some(true));
    assert_eq!(
        q.org_idle("m", t0 + Duration::from_secs(31), fresh, 0.9),
        None,
        "stale"
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("admitted");
    // Someone else is using the requests bucket.
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(10, 10)),
        &headers([
            (100, 40, 1.0),
            (100_000, 99_000, 1.0),
            (100_000, 99_000, 1.0),
        ]),
        t0,
    );
    assert_eq!(q.org_idle("m", t0, fresh, 0.9), Some(false));
}

#[test]
fn pacing_follows_the_refill_rate_of_the_binding_dimension() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(6000, 6_000, 1_000_000)),
        settings(0.0),
    );
    // ITPM 6000 = 100 tokens/s; the probe bucket holds one second: 100 tokens.
    q.try_admit(&req(Priority::Nightly, 100, 1), t0)
        .expect("first");
    let next = q
        .try_admit(&req(Priority::Nightly, 50, 1), t0)
        .expect_err("input bucket empty");
    assert_eq!(next.duration_since(t0).as_millis(), 500);
    q.try_admit(&req(Priority::Nightly, 50, 1), next)
        .expect("refilled");
}

#[test]
fn lower_classes_leave_the_reserve_and_interactive_may_use_it() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
        settings(0.2),
    );
    let probe = q
        .try_admit(&req(Priority::Interactive, 1, 1), t0)
        .expect("probe");
    // The API: bucket of 10 requests (full in 1 s at 10/s), 9 left.
    q.settle(
        &probe,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (600, 9, 0.1),
            (1_000_000, 999_000, 0.1),
            (1_000_000, 999_000, 0.1),
        ]),
        t0,
    );
    let mut nightly = 0;
    while q.try_admit(&req(Priority::Nightly, 1, 1), t0).is_ok() {
        nightly += 1;
    }
    assert_eq!(nightly, 7, "9 left, 2 (20% of 10) kept back");
    q.try_admit(&req(Priority::Interactive, 1, 1), t0)
        .expect("interactive uses the reserve");
    q.try_admit(&req(Priority::Interactive, 1, 1), t0)
        .expect("all of it");
    assert!(q.try_admit(&req(Priority::Interactive, 1, 1), t0).is_err());
}

#[test]
fn foreign_consumption_seen_in_remaining_makes_nightly_yield() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
        settings(0.2),
    );
    let a = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    q.settle(
        &a,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (600, 9, 0.1),
            (1_000_000, 999_000, 0.1),
            (1_000_000, 999_000, 0.1),
        ]),
        t0,
    );
    let b = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("room");
    // Someone else took 6 requests meanwhile: the answer says 2 remain (= the reserve).
    q.settle(
        &b,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (600, 2, 0.8),
            (1_000_000, 999_000, 0.1),
            (1_000_000, 999_000, 0.1),
        ]),
        t0,
    );
    let wait = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect_err("nightly yields");
    assert_eq!(
        wait.duration_since(t0).as_millis(),
        100,
        "until one request refills above the reserve"
    );
    q.try_admit(&req(Priority::Interactive, 1, 1), t0)
        .expect("interactive still finds room");
}

#[test]
fn calls_in_flight_are_taken_off_an_answer() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 1_000_000, 6_000)),
        settings(0.0),
    );
    let first = q
        .try_admit(&req(Priority::Nightly, 1, 10), t0)
        .expect("probe");
    q.settle(
        &first,
        Answer::Ran,
        Some(&ran(1, 10)),
        &headers([(600, 9, 0.1), (1_000_000, 999_000, 0.1), (6_000, 990, 0.1)]),
        t0,
    );
    let a = q.try_admit(&req(Priority::Nightly, 1, 400), t0).expect("a");
    let _b = q.try_admit(&req(Priority::Nightly, 1, 400), t0).expect("b");
    // a's answer does not count b's output (still generating): 990 - 400 remain for us.
    q.settle(
        &a,
        Answer::Ran,
        Some(&ran(1, 0)),
        &headers([(600, 8, 0.2), (1_000_000, 999_000, 0.1), (6_000, 990, 0.0)]),
        t0,
    );
    let snap = q.snapshot(t0);
    assert_eq!(snap[0].dims[2].level, 590.0);
}

#[test]
fn settle_gives_back_what_was_not_used_without_headers() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(60, 600, 600)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("admit");
    let before = q.snapshot(t0)[0].dims[2].level;
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(10, 4)),
        &RateLimitHeaders::default(),
        t0,
    );
    assert_eq!(q.snapshot(t0)[0].dims[2].level, before + 6.0);
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0 + Duration::from_secs(1))
        .expect("admit");
    let before = q.snapshot(t0 + Duration::from_secs(1))[0].dims[0].level;
    q.settle(
        &t,
        Answer::Refused,
        None,
        &RateLimitHeaders::default(),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        q.snapshot(t0 + Duration::from_secs(1))[0].dims[0].level,
        before + 1.0,
        "a refused call took nothing"
    );
}

#[test]
fn lowered_limits_are_followed_and_configured_ones_never_exceeded() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 100_000, 100_000)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (60, 50, 1.0),
            (200_000, 190_000, 1.0),
            (100_000, 99_000, 1.0),
        ]),
        t0,
    );
    let snap = q.snapshot(t0);
    assert_eq!(
        snap[0].dims[0].limit_per_minute,
        Some(60.0),
        "lowered to what the API says"
    );
    assert_eq!(
        snap[0].dims[1].limit_per_minute,
        Some(100_000.0),
        "never above the config"
    );
}

#[test]
fn overloaded_halves_concurrency_but_keeps_the_limits() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(6000, 1_000_000, 1_000_000)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (6000, 99, 1.0),
            (1_000_000, 999_000, 1.0),
            (1_000_000, 999_000, 1.0),
        ]),
        t0,
    );
    let c = q.concurrency("m", t0);
    assert!(c > 1);
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("admit");
    q.settle(
        &t,
        Answer::Overloaded,
        None,
        &RateLimitHeaders::default(),
        t0,
    );
    assert_eq!(q.concurrency("m", t0), (c / 2).max(1));
    assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(6000.0));
}

#[test]
fn the_input_estimator_calibrates() {
    let t0 = Instant::now();
    let mut q = Quota::new(|_| ClassLimits::default(), settings(0.0));
    for _ in 0..100 {
        let t = q
            .try_admit(&req(Priority::Nightly, 100, 1), t0)
            .expect("unpaced");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(50, 1)),
            &RateLimitHeaders::default(),
            t0,
        );
    }
    let snap = q.snapshot(t0);
    assert!(
        (snap[0].input_ratio - 0.5).abs() < 0.01,
        "{}",
        snap[0].input_ratio
    );
    assert!(snap[0].input_error.expect("errors") < 0.2);
}

#[test]
fn models_sharing_a_limit_share_a_controller() {
    assert_eq!(limit_class("claude-sonnet-4-5"), "claude-sonnet-4.x");
    assert_eq!(
        limit_class("claude-sonnet-4-6-20260101"),
        "claude-sonnet-4.x"
    );
    assert_eq!(limit_class("claude-opus-4-8"), "claude-opus-4.x");
    assert_eq!(limit_class("claude-sonnet-5-5"), "claude-sonnet-5-5");
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
        settings(0.0),
    );
    q.try_admit(
        &Request {
            model: "claude-sonnet-4-5",
            ..req(Priority::Nightly, 1, 1)
        },
        t0,
    )
    .expect("probe");
    assert!(
        q.try_admit(
            &Request {
                model: "claude-sonnet-4-6",
                ..req(Priority::Nightly, 1, 1)
            },
            t0
        )
        .is_err(),
        "one bucket"
    );
    q.try_admit(
        &Request {
            model: "claude-haiku-4-5",
            ..req(Priority::Nightly, 1, 1)
        },
        t0,
    )
    .expect("own class");
}

#[test]
fn a_spoilt_capacity_estimate_neither_shrinks_the_bucket_nor_stalls_a_class() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
        settings(0.2),
    );
    let answer = |q: &mut Quota, remaining: u64, reset_in: f64| {
        let t = q
            .try_admit(&req(Priority::Interactive, 1, 1), t0)
            .expect("admit");
        let mut h = headers([
            (600, remaining, reset_in),
            (1_000_000, 999_000, 0.1),
            (1_000_000, 999_000, 0.1),
        ]);
        h.dims[0].reset_in = Some(reset_in);
        q.settle(&t, Answer::Ran, Some(&ran(1, 1)), &h, t0);
    };
    for _ in 0..7 {
        answer(&mut q, 9, 0.1); // a bucket of 10 requests
    }
    answer(&mut q, 1, 0.0); // a clock a second off: "full" with 1 left
    let snap = q.snapshot(t0 + Duration::from_secs(60));
    assert!(
        snap[0].dims[0].level >= 9.0,
        "one odd answer does not shrink the bucket: {:?}",
        snap[0].dims[0]
    );
    // A bucket smaller than its reserve still lets nightly work through when it is full.
    let mut tiny = Quota::new(
        |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
        settings(0.5),
    );
    let t = tiny
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("the probe goes");
    tiny.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &RateLimitHeaders::default(),
        t0,
    );
    assert!(
        tiny.try_admit(&req(Priority::Nightly, 1, 1), t0 + Duration::from_secs(2))
            .is_ok()
    );
}

#[test]
fn token_remaining_rounded_to_thousands_is_taken_at_its_low_end() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(6000, 60_000, 60_000)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([(6000, 99, 1.0), (60_000, 5_000, 1.0), (60_000, 999, 1.0)]),
        t0,
    );
    let snap = q.snapshot(t0);
    assert_eq!(
        snap[0].dims[1].level, 4_500.0,
        "5,000 may be 4,500 rounded up"
    );
    assert_eq!(snap[0].dims[2].level, 999.0, "under a thousand is exact");
}

#[test]
fn a_configured_limit_below_the_apis_is_kept() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
        settings(0.0),
    );
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    // The API allows 4,000 RPM and has 3,990 left; we were told 60.
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (4000, 3990, 0.15),
            (1_000_000, 999_000, 0.1),
            (1_000_000, 999_000, 0.1),
        ]),
        t0,
    );
    let mut sent = 0;
    while q.try_admit(&req(Priority::Nightly, 1, 1), t0).is_ok() {
        sent += 1;
    }
    assert!(sent <= 1, "our books, not the API's bucket: {sent}");
    assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(60.0));
}

#[test]
fn a_tier_preset_is_a_first_guess_the_headers_replace() {
    let t0 = Instant::now();
    let preset = ClassLimits {
        limits: limits(50, 30_000, 8_000),
        is_ceiling: false,
    };
    let mut q = Quota::new(move |_| preset, settings(0.0));
    let t = q
        .try_admit(&req(Priority::Nightly, 1, 1), t0)
        .expect("probe");
    q.settle(
        &t,
        Answer::Ran,
        Some(&ran(1, 1)),
        &headers([
            (1000, 999, 0.1),
            (2_000_000, 1_999_000, 0.1),
            (400_000, 399_000, 0.1),
        ]),
        t0,
    );
    assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(1000.0));
}

#[test]
fn tiers_come_from_the_public_tables() {
    assert_eq!(
        tier_limits("tier1", "claude-sonnet-4-5"),
        Some(limits(50, 30_000, 8_000))
    );
    assert_eq!(
        tier_limits("build", "claude-opus-5"),
        Some(limits(5_000, 5_000_000, 1_000_000))
    );
    assert_eq!(
        tier_limits("start", "claude-fable-5-1"),
        Some(limits(1_000, 500_000, 100_000))
    );
    assert_eq!(tier_limits("gold", "claude-opus-5"), None);
}

#[test]
fn a_restart_resumes_at_what_was_learned_not_from_a_probe() {
    let t0 = Instant::now();
    // A tier guess of 50 RPM; the API says 600, with a bucket of 60 requests.
    let start = QuotaSettings {
        initial_concurrency: 4,
        ..settings(0.0)
    };
    let guess = |_: &str| ClassLimits {
        limits: limits(50, 600_000, 600_000),
        is_ceiling: false,
    };
    let mut q = Quota::new(guess, start);
    // Calls at full concurrency go through: it grows.
    for _ in 0..3 {
        let tickets: Vec<Ticket> =
            std::iter::from_fn(|| q.try_admit(&req(Priority::Nightly, 10, 10), t0).ok())
                .take(64)
                .collect();
        for t in &tickets {
            q.settle(
                t,
                Answer::Ran,
                Some(&ran(10, 10)),
                &headers([
                    (600, 50, 1.0),
                    (600_000, 599_000, 1.0),
                    (600_000, 599_000, 1.0),
                ]),
                t0,
            );
        }
    }
    let learned = q.learned(t0);
    assert_eq!(learned.len(), 1);
    let (class, learned) = &learned[0];
    assert_eq!(class, "m");
    assert!(learned.concurrency > 4, "{}", learned.concurrency);
    let json = serde_json::to_string(learned).expect("to json");
    let learned: Learned = serde_json::from_str(&json).expect("from json");

    // A fresh controller, as at the next start: the probe lets a few calls through, then waits.
    let mut fresh = Quota::new(guess, start);
    let probe_burst = (0..100)
        .take_while(|_| fresh.try_admit(&req(Priority::Nightly, 10, 10), t0).is_ok())
        .count();
    assert!(probe_burst <= 4, "{probe_burst}");

    // Restored 30 s later: the API's limit, the learned concurrency, the bucket refilled.
    let t1 = t0 + Duration::from_secs(30);
    let mut restored = Quota::new(guess, start);
    restored.restore(&learned, Duration::from_secs(30), t1);
    let snap = restored.snapshot(t1);
    assert_eq!(snap[0].dims[0].limit_per_minute, Some(600.0));
    assert_eq!(snap[0].concurrency, learned.concurrency);
    let burst = (0..100)
        .take_while(|_| {
            restored
                .try_admit(&req(Priority::Nightly, 10, 10), t1)
                .is_ok()
        })
        .count();
    assert_eq!(
        burst, learned.concurrency,
        "as many as the learned concurrency at once"
    );

    // Under a configured ceiling below the learned limit, the ceiling holds.
    let mut capped = Quota::new(
        |_| ClassLimits::ceiling(limits(100, 600_000, 600_000)),
        start,
    );
    capped.restore(&learned, Duration::from_secs(30), t1);
    assert_eq!(capped.snapshot(t1)[0].dims[0].limit_per_minute, Some(100.0));
}

#[test]
fn a_prefix_read_from_the_cache_is_not_charged_and_its_first_call_is_waited_for() {
    let t0 = Instant::now();
    let prefix = crate::model::prompt_cache::CachePrefix {
        key: 9,
        tokens: 2_000,
        ttl_ms: 300_000,
    };
    let cached = |input| Request {
        cache: Some(prefix),
        ..req(Priority::Nightly, input, 10)
    };
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(6_000, 60_000, 600_000)),
        settings(0.0),
    );
    // The first call writes: it is charged all of its 2,050 estimated tokens.
    let first = q.try_admit(&cached(2_050), t0).expect("the writer");
    assert_eq!(first.reserved[1], 2_050.0);
    // The next calls sharing the prefix wait for its answer.
    assert!(q.cache_waits("m", &prefix, t0));
    assert!(q.try_admit(&cached(2_050), t0).is_err());
    let written = Usage {
        input_tokens: 50,
        output_tokens: 10,
        cache_creation_input_tokens: Some(2_000),
        ..Default::default()
    };
    // Answered at once; two seconds later the bucket has refilled what the write took.
    q.settle(&first, Answer::Ran, Some(&written), &Default::default(), t0);
    let t1 = t0 + Duration::from_secs(2);
    assert!(!q.cache_waits("m", &prefix, t1));
    // Then each is charged only what follows the prefix: a second of 60,000 ITPM (1,000 tokens)
    // holds many calls, where one uncached call would take 2,050.
    let mut reads = Vec::new();
    for _ in 0..15 {
        let t = q.try_admit(&cached(2_050), t1).expect("a read");
        assert!(t.reserved[1] < 100.0, "{:?}", t.reserved);
        reads.push(t);
    }
    // An answer that neither read nor wrote (the API did not cache it): the next call marking
    // the prefix is charged in full, and is not made to wait.
    let not_cached = Usage {
        input_tokens: 2_050,
        output_tokens: 10,
        cache_creation_input_tokens: Some(0),
        cache_read_input_tokens: Some(0),
        ..Default::default()
    };
    q.settle(
        &reads[0],
        Answer::Ran,
        Some(&not_cached),
        &Default::default(),
        t1,
    );
    assert!(!q.cache_waits("m", &prefix, t1));
    let full = q
        .try_admit(&cached(2_050), t1 + Duration::from_secs(60))
        .expect("admitted");
    assert_eq!(full.raw_input_estimate, 2_050, "{full:?}");
    assert!(full.reserved[1] > 1_000.0, "{:?}", full.reserved);
}

#[test]
fn a_share_paces_to_its_part_of_the_limits_and_of_each_answer() {
    let t0 = Instant::now();
    let mut q = Quota::new(
        |_| ClassLimits::ceiling(limits(600, 600_000, 600_000)),
        settings(0.0),
    );
    // One of three daemons on the organization: a third of 600 rpm, before any answer too.
    q.set_share(1.0 / 3.0, t0);
    let first = q
        .try_admit(&req(Priority::Nightly, 10, 10), t0)
        .expect("a probe");
    let rpm = |q: &mut Quota| q.snapshot(t0)[0].dims[0].limit_per_minute;
    assert_eq!(rpm(&mut q), Some(200.0));
    // The answer counts for a third: 300 requests remain of the organization's, so 100 of ours.
    q.settle(
        &first,
        Answer::Ran,
        Some(&ran(10, 10)),
        &headers([
            (600, 300, 30.0),
            (600_000, 300_000, 30.0),
            (600_000, 300_000, 30.0),
        ]),
        t0,
    );
    let snapshot = &q.snapshot(t0)[0].dims[0];
    assert_eq!(snapshot.last_remaining, Some(100));
    assert!(
        (snapshot.level - 100.0).abs() < 1e-6,
        "a third of what remains: {}",
        snapshot.level
    );
    // Alone again: every figure back to the whole.
    q.set_share(1.0, t0);
    let snapshot = &q.snapshot(t0)[0].dims[0];
    assert_eq!(snapshot.limit_per_minute, Some(600.0));
    assert!((snapshot.level - 300.0).abs() < 1e-6, "{}", snapshot.level);
    // Another daemon comes: the smaller share starts empty and refills at its rate (300 rpm).
    q.set_share(0.5, t0);
    assert_eq!(q.snapshot(t0)[0].dims[0].level, 0.0);
    let later = t0 + Duration::from_secs(2);
    assert!((q.snapshot(later)[0].dims[0].level - 10.0).abs() < 1e-6);
}

#[test]
fn a_shared_bucket_holds_back_part_of_its_burst() {
    let t0 = Instant::now();
    let full = |share: f64| {
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 600_000, 600_000)),
            settings(0.0),
        );
        q.set_share(share, t0);
        let probe = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("a probe");
        // A full bucket of 20 requests (2 s of 600 rpm): nothing to refill.
        q.settle(
            &probe,
            Answer::Ran,
            Some(&ran(10, 10)),
            &headers([
                (600, 20, 0.0),
                (600_000, 20_000, 0.0),
                (600_000, 20_000, 0.0),
            ]),
            t0,
        );
        q.snapshot(t0)[0].dims[0].level
    };
    assert!((full(1.0) - 20.0).abs() < 1e-6);
    // Half the bucket, less a fifth of it.
    assert!((full(0.5) - 8.0).abs() < 1e-6, "{}", full(0.5));
}
