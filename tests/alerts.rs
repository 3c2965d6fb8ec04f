//! The alert rules (charts/exact-operator/alerts/exact-operator.rules.yaml) against what
//! they describe, without Prometheus (scripts/alerts-test runs promtool on them):
//!
//! - every `exact_operator_*` metric a rule queries is one the operator's registry
//!   (src/metrics.rs) really exports, so renaming a metric fails CI;
//! - the promtool test series use those names with exactly the operator's labels;
//! - every alert has a severity, a summary, a description and a runbook section in
//!   docs/alerts.md; per-connection alerts name the connection;
//! - every alert has a promtool case where it fires and one where it must not;
//! - every alert's expression is drawn by a dashboard panel.

mod exported;

use exported::{exported_labels, exported_series, metric_names, operator_metrics_text};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/exact-operator/alerts/exact-operator.rules.yaml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/alerts/exact-operator.rules.test.yaml"
);
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.md");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/exact-operator/dashboards/exact-operator.json"
);

/// Labels a scrape adds to every series; the rest come from the operator.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

struct Alert {
    name: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

fn alerts() -> Vec<Alert> {
    let rules = yaml(RULES);
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules of a group") {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string();
            out.push(Alert {
                expr: rule["expr"].as_str().expect("expr").to_string(),
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
                name,
            });
        }
    }
    assert!(out.len() >= 9, "too few alerts: {}", out.len());
    out
}

/// `a{b="c", d="e"}` -> name and label names.
fn parse_series(series: &str) -> (String, BTreeSet<String>) {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let inner = rest.trim_end().trim_end_matches('}');
    let labels = inner
        .split(',')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    (name.trim().to_string(), labels)
}

#[test]
fn rules_query_only_exported_metrics() {
    let series = exported_series(&operator_metrics_text());
    let mut used = BTreeSet::new();
    for alert in alerts() {
        let names = metric_names(&alert.expr);
        let missing: Vec<&String> = names.iter().filter(|n| !series.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{} queries metrics the operator does not export: {missing:?}\nexported: {series:?}",
            alert.name
        );
        used.extend(names);
    }
    // The rules cover the connection states, both expiries, token calls and leadership.
    for needed in [
        "exact_operator_connection_ready_reason",
        "exact_operator_access_token_expiry_timestamp_seconds",
        "exact_operator_refresh_token_expiry_timestamp_seconds",
        "exact_operator_token_calls_total",
        "exact_operator_is_leader",
    ] {
        assert!(used.contains(needed), "no rule uses {needed}: {used:?}");
    }
}

#[test]
fn rule_tests_feed_series_as_the_operator_exports_them() {
    let exported: BTreeMap<String, BTreeSet<String>> = exported_labels(&operator_metrics_text())
        .into_iter()
        .collect();
    let tests = yaml(RULE_TESTS);
    let mut checked = 0;
    for test in tests["tests"].as_sequence().expect("tests") {
        for input in test["input_series"].as_sequence().expect("input_series") {
            let (name, labels) = parse_series(input["series"].as_str().expect("series"));
            if name == "up" {
                continue; // Prometheus' own, not the operator's
            }
            let ours = exported
                .get(&name)
                .unwrap_or_else(|| panic!("test series {name} is not exported by the operator"));
            let without_target: BTreeSet<String> = labels
                .into_iter()
                .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
                .collect();
            assert_eq!(
                &without_target, ours,
                "test series {name} has other labels than the operator exports"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "too few input series checked: {checked}");
}

#[test]
fn every_alert_is_documented_and_names_its_connection() {
    let runbook = std::fs::read_to_string(RUNBOOK).expect("docs/alerts.md exists");
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .collect();
    for alert in alerts() {
        let name = &alert.name;
        let severity = alert.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert.annotations.get(key).is_some_and(|v| v.len() > 10),
                "{name} lacks a {key}"
            );
        }
        let anchor = format!("docs/alerts.md#{}", name.to_lowercase());
        assert!(
            alert.annotations["runbook_url"].ends_with(&anchor),
            "{name}: runbook_url should end in {anchor}"
        );
        assert!(
            headings.contains(name.as_str()),
            "docs/alerts.md has no `## {name}` section"
        );
        // Alerts about one connection carry its namespace and name (from `by (namespace,
        // name)`) and say which connection in the label and the summary.
        if alert.expr.contains("by (namespace, name)") {
            assert_eq!(
                alert.labels.get("connection").map(String::as_str),
                Some("{{ $labels.namespace }}/{{ $labels.name }}"),
                "{name}: connection label"
            );
            assert!(
                alert.annotations["summary"].contains("{{ $labels.namespace }}/{{ $labels.name }}"),
                "{name}: the summary names the connection"
            );
        }
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case() {
    let tests = yaml(RULE_TESTS);
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            if fires {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for alert in alerts() {
        assert!(
            firing.contains(&alert.name),
            "no promtool case where {} fires",
            alert.name
        );
        assert!(
            quiet.contains(&alert.name),
            "no promtool case where {} stays quiet",
            alert.name
        );
    }
}

/// Whitespace-insensitive form of a PromQL expression.
fn squeeze(expr: &str) -> String {
    expr.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_alert_expression_has_a_dashboard_panel() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard"))
            .expect("dashboard is JSON");
    let drawn: BTreeSet<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .map(squeeze)
        .collect();
    for alert in alerts() {
        assert!(
            drawn.contains(&squeeze(&alert.expr)),
            "no dashboard panel draws the expression of {}:\n{}",
            alert.name,
            alert.expr
        );
    }
}

#[test]
fn series_are_parsed() {
    let (name, labels) = parse_series(r#"exact_operator_is_leader{job="j", instance="i:1"}"#);
    assert_eq!(name, "exact_operator_is_leader");
    assert_eq!(labels, BTreeSet::from(["job".into(), "instance".into()]));
}
