use super::*;
use crate::domain::Timestamp;
use serde_json::json;

fn budget(v: Value) -> Budget {
    Budget::parse(&v, "budget").unwrap()
}

fn amounts(pairs: &[(Unit, f64)]) -> Amounts {
    let mut a = Amounts::default();
    for (u, v) in pairs {
        a.set(*u, *v);
    }
    a
}

#[test]
fn a_budget_reads_its_period_and_limits_and_names_every_problem() {
    let b = budget(json!({"period":"month","requests":10,"output_tokens":5000}));
    assert_eq!(b.period, Period::Month);
    assert_eq!(
        (b.limit(Unit::Requests), b.limit(Unit::OutputTokens)),
        (Some(10.0), Some(5000.0))
    );
    assert_eq!(b.limit(Unit::Characters), None);
    assert_eq!(
        b.to_json(),
        json!({"period":"month","requests":10,"output_tokens":5000})
    );
    for (bad, fields) in [
        (json!({"requests": 1}), vec!["budget.period"]),
        (json!({"period":"week","requests":1}), vec!["budget.period"]),
        (json!({"period":"day"}), vec!["budget"]),
        (
            json!({"period":"day","requests":-1,"dollars":5}),
            vec!["budget.dollars", "budget.requests"],
        ),
        (json!([1]), vec!["budget"]),
    ] {
        let errors = parse_budget(&bad, "budget").unwrap_err();
        let mut got: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        got.sort();
        assert_eq!(got, fields, "{bad}");
    }
    let system = parse_system_budgets(
        &json!({"*":{"period":"day","requests":5},"openai":{"period":"month","input_tokens":1e6}}),
        "",
    )
    .unwrap();
    let openai = crate::providers::find("openai").unwrap().info().id;
    let gemini = crate::providers::find("gemini").unwrap().info().id;
    assert_eq!(system_budget_for(&system, openai).unwrap().0, "openai");
    assert_eq!(system_budget_for(&system, gemini).unwrap().0, "*");
    assert!(parse_system_budgets(&json!({"nope":{"period":"day","requests":1}}), "").is_err());
}

#[test]
fn a_claim_passes_only_while_it_fits() {
    let b = budget(json!({"period":"day","requests":2,"output_tokens":100}));
    let none = Amounts::default();
    let one = amounts(&[(Unit::Requests, 1.0)]);
    assert_eq!(first_exceeded(&b, &none, &one), None);
    assert_eq!(
        first_exceeded(&b, &amounts(&[(Unit::Requests, 1.0)]), &one),
        None
    );
    assert_eq!(
        first_exceeded(&b, &amounts(&[(Unit::Requests, 2.0)]), &one),
        Some(Unit::Requests)
    );
    // Tokens: refused once spent, and when the reservation would not fit.
    let used = amounts(&[(Unit::OutputTokens, 100.0)]);
    assert_eq!(first_exceeded(&b, &used, &one), Some(Unit::OutputTokens));
    let want = amounts(&[(Unit::Requests, 1.0), (Unit::OutputTokens, 60.0)]);
    assert_eq!(
        first_exceeded(&b, &amounts(&[(Unit::OutputTokens, 50.0)]), &want),
        Some(Unit::OutputTokens)
    );
    assert_eq!(
        first_exceeded(&b, &amounts(&[(Unit::OutputTokens, 40.0)]), &want),
        None
    );
}

#[test]
fn thresholds_and_periods() {
    let b = budget(json!({"period":"day","requests":10}));
    assert_eq!(
        thresholds_reached(&b, &amounts(&[(Unit::Requests, 7.0)])),
        Vec::<u8>::new()
    );
    assert_eq!(
        thresholds_reached(&b, &amounts(&[(Unit::Requests, 8.0)])),
        vec![80]
    );
    assert_eq!(
        thresholds_reached(&b, &amounts(&[(Unit::Requests, 10.0)])),
        vec![80, 100]
    );
    // 2026-12-06T10:00:00Z
    let now = Timestamp::from_millis(1_796_551_200_000);
    assert_eq!(Period::Day.key(now), "2026-12-06");
    assert_eq!(Period::Month.key(now), "2026-12");
    assert_eq!(
        Period::Day.resets_at(now).to_rfc3339(),
        "2026-12-07T00:00:00Z"
    );
    assert_eq!(
        Period::Month.resets_at(now).to_rfc3339(),
        "2027-01-01T00:00:00Z"
    );
}
