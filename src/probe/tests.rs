//! The engine's schedule, with a fake clock: nothing here sleeps.

use futures::executor::block_on;

use super::*;
use crate::testing::{respond, respond_with, FakeClock, FakeHttp, FixedJitter, Scripted};

const START: u64 = 1_800_000_000_000;

fn classify(r: &HttpResponse) -> Verdict {
    classify_status(r.status, "Test", "said no")
}

fn run(script: Vec<Scripted>, deadline_ms: u64) -> (Result<u16, Failure>, Vec<u64>, usize, u64) {
    let clock = FakeClock::at(START);
    let http = FakeHttp::new(&clock, script);
    let prober = Prober::new(&http, &clock, &FixedJitter(0.5), deadline_ms, 4_000);
    let out = block_on(prober.call("Test", || HttpRequest::get("http://p/x".into()), classify));
    let sleeps = clock.sleeps.borrow().clone();
    (
        out.map(|r| r.status),
        sleeps,
        http.calls(),
        clock.elapsed_since(START),
    )
}

#[test]
fn a_hinted_429_that_fits_is_waited_out_and_retried() {
    let (out, sleeps, calls, _) = run(
        vec![
            respond_with(429, &[("Retry-After", "1")], ""),
            respond(200, "{}"),
        ],
        10_000,
    );
    assert_eq!(out, Ok(200));
    assert_eq!(sleeps, vec![1000]);
    assert_eq!(calls, 2);
}

#[test]
fn a_hint_longer_than_the_time_left_is_reported_not_slept() {
    let (out, sleeps, calls, _) = run(
        vec![respond_with(429, &[("Retry-After", "30")], "")],
        10_000,
    );
    assert_eq!(
        out,
        Err(Failure::RateLimited {
            retry_after_ms: 30_000,
            message: "Test says: said no".into()
        })
    );
    assert!(sleeps.is_empty());
    assert_eq!(calls, 1);
}

#[test]
fn a_body_hint_is_used_when_headers_have_none() {
    let clock = FakeClock::at(START);
    let http = FakeHttp::new(&clock, vec![respond(429, ""), respond(200, "")]);
    let prober = Prober::new(&http, &clock, &FixedJitter(0.5), 10_000, 4_000);
    let body_hint = |r: &HttpResponse| match r.status {
        429 => Verdict::Retry {
            hint_ms: Some(2_000),
            failure: Failure::RateLimited {
                retry_after_ms: 0,
                message: "slow down".into(),
            },
        },
        _ => Verdict::Accept,
    };
    let out = block_on(prober.call("Test", || HttpRequest::get("http://p".into()), body_hint));
    assert!(out.is_ok());
    assert_eq!(*clock.sleeps.borrow(), vec![2000]);
}

#[test]
fn server_errors_back_off_with_jitter_then_succeed() {
    let (out, sleeps, calls, _) = run(
        vec![
            respond(503, ""),
            respond(529, ""),
            respond(502, ""),
            respond(200, ""),
        ],
        10_000,
    );
    assert_eq!(out, Ok(200));
    // Jitter fixed at the middle of [0, 250·2^n).
    assert_eq!(sleeps, vec![125, 250, 500]);
    assert_eq!(calls, 4);
}

#[test]
fn final_refusals_are_never_retried() {
    for status in [400, 401, 403, 404] {
        let (out, sleeps, calls, _) = run(vec![respond(status, "")], 10_000);
        assert!(out.is_err(), "{status}");
        assert!(sleeps.is_empty());
        assert_eq!(calls, 1);
    }
}

#[test]
fn a_hanging_provider_is_unreachable_within_the_deadline() {
    let (out, _, calls, elapsed) = run(
        vec![
            Scripted::Hang,
            Scripted::Hang,
            Scripted::Hang,
            Scripted::Hang,
        ],
        10_000,
    );
    assert!(matches!(out, Err(Failure::Unreachable(_))), "{out:?}");
    assert!(elapsed <= 10_000, "took {elapsed} ms");
    assert!(calls >= 2);
}

#[test]
fn network_errors_are_retried() {
    let (out, _, calls, _) = run(vec![Scripted::Refuse, respond(200, "")], 10_000);
    assert_eq!(out, Ok(200));
    assert_eq!(calls, 2);
}

#[test]
fn attempts_are_bounded_even_with_time_left() {
    let script = (0..10).map(|_| respond(500, "")).collect();
    let (out, _, calls, _) = run(script, 60_000);
    assert!(matches!(out, Err(Failure::ProviderError(_))));
    assert_eq!(calls, MAX_ATTEMPTS as usize);
}

#[test]
fn each_attempt_gets_at_most_the_time_left() {
    let clock = FakeClock::at(START);
    let http = FakeHttp::new(&clock, vec![Scripted::Hang, Scripted::Hang, Scripted::Hang]);
    let prober = Prober::new(&http, &clock, &FixedJitter(0.0), 6_000, 4_000);
    let _ = block_on(prober.call("Test", || HttpRequest::get("http://p".into()), classify));
    let timeouts: Vec<u64> = http.sent.borrow().iter().map(|s| s.2).collect();
    assert_eq!(timeouts, vec![4_000, 2_000]);
}

#[test]
fn unhinted_rate_limits_that_run_out_of_time_say_when_to_retry() {
    let (out, _, _, _) = run((0..5).map(|_| respond(429, "")).collect(), 1_000);
    match out {
        Err(Failure::RateLimited { retry_after_ms, .. }) => assert!(retry_after_ms >= 1000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_redirect_is_a_failure_and_is_never_followed() {
    for status in [301, 302, 303, 307, 308] {
        let (out, sleeps, calls, _) = run(
            vec![respond_with(
                status,
                &[("Location", "http://169.254.169.254/latest/meta-data")],
                "",
            )],
            10_000,
        );
        assert!(
            matches!(&out, Err(Failure::ProviderError(m)) if m.contains("redirect")),
            "{status}: {out:?}"
        );
        assert_eq!((sleeps.len(), calls), (0, 1));
    }
}

#[test]
fn an_answer_over_the_size_cap_is_a_failure_and_not_retried() {
    let huge = "x".repeat(crate::http::MAX_RESPONSE_BYTES + 1);
    let (out, _, calls, _) = run(vec![respond(200, &huge)], 10_000);
    assert!(matches!(&out, Err(Failure::ProviderError(m)) if m.contains("larger than")));
    assert_eq!(calls, 1);
}
