//! The operator and exact-sim read lifetimes with separate parsers (exact-sim is a library of
//! its own and must not depend on the operator). A lifetime copied from one side to the other
//! must mean the same, so this compares both on the same inputs, above all a bare number:
//! integer milliseconds, the way Exact writes lifetimes (`3599999`).

use std::time::Duration;

#[test]
fn both_parsers_read_a_bare_number_as_milliseconds() {
    for (input, want) in [
        ("3599999", Duration::from_millis(3_599_999)),
        ("600000", Duration::from_secs(600)),
        ("42", Duration::from_millis(42)),
        (" 1000 ", Duration::from_secs(1)),
    ] {
        assert_eq!(
            exact_operator::duration::parse_duration(input).ok(),
            Some(want),
            "operator: {input:?}"
        );
        assert_eq!(
            exact_sim::parse_duration(input).ok(),
            Some(want),
            "exact-sim: {input:?}"
        );
    }
}

#[test]
fn both_parsers_agree_on_the_units_they_share() {
    for input in ["500ms", "6s", "600s", "5m", "2h", "30d", "0ms"] {
        let operator = exact_operator::duration::parse_duration(input).ok();
        let sim = exact_sim::parse_duration(input).ok();
        assert!(operator.is_some(), "operator parses {input:?}");
        assert_eq!(operator, sim, "{input:?}");
    }
}
