//! The Grafana dashboard (charts/exact-operator/dashboards/exact-operator.json) only queries
//! metrics the operator really exports: every `exact_operator_*` name in a panel or variable
//! query must appear in the operator's rendered /metrics text. No Grafana or Prometheus needed.

mod exported;

use exported::{exported_series, metric_names, operator_metrics_text};
use serde_json::Value;
use std::collections::BTreeSet;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/exact-operator/dashboards/exact-operator.json"
);

/// Every query string of the dashboard: panel target `expr`s and variable queries.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_string());
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if var["type"] == "query" {
            if let Some(q) = var["definition"].as_str() {
                out.push(q.to_string());
            }
            if let Some(q) = var["query"]["query"].as_str() {
                out.push(q.to_string());
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard"))
            .expect("dashboard is JSON");
    let series = exported_series(&operator_metrics_text());
    let used: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    assert!(
        used.len() >= 8,
        "too few metrics found in the dashboard: {used:?}"
    );
    // A name in a query is a series name as exported: counters end in _total, histograms
    // are queried as _bucket (or _count/_sum), gauges as they are.
    let missing: Vec<&String> = used.iter().filter(|n| !series.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the operator does not export: {missing:?}\nexported: {series:?}"
    );
    // And every family the operator exports has a panel.
    let families: BTreeSet<String> = series
        .iter()
        .map(|s| {
            ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|suffix| s.strip_suffix(suffix))
                .unwrap_or(s)
                .to_string()
        })
        .collect();
    let unused: Vec<&String> = families
        .iter()
        .filter(|f| !used.iter().any(|u| u.starts_with(f.as_str())))
        .collect();
    assert!(
        unused.is_empty(),
        "metrics without a dashboard panel: {unused:?}"
    );
}

#[test]
fn dashboard_is_a_grafana_dashboard_with_the_expected_variables() {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard"))
            .expect("dashboard is JSON");
    assert_eq!(d["uid"], "exact-operator");
    assert!(d["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    let vars = d["templating"]["list"].as_array().expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name} missing"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("namespace")["type"], "query");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24, "{title} is wider than the grid");
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn metric_names_are_extracted() {
    assert_eq!(
        metric_names(
            r#"sum(rate(exact_operator_token_calls_total{job=~"$job"}[5m])) / exact_operator_is_leader"#
        ),
        [
            "exact_operator_token_calls_total",
            "exact_operator_is_leader"
        ]
    );
}
