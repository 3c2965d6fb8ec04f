//! What the operator really exports on /metrics, for the tests that check that the dashboard
//! (tests/dashboard.rs) and the alert rules (tests/alerts.rs) only use existing series: the
//! names come from rendering the registry of src/metrics.rs, so renaming a metric there
//! fails those tests.

// Each test crate that includes this module uses only a part of it.
#![allow(dead_code)]

use exact_operator::metrics::{ConnectionTimes, Metrics};
use jiff::Timestamp;
use std::collections::BTreeSet;

/// The /metrics text with every family present: per-connection families only appear once a
/// connection has been recorded.
pub fn operator_metrics_text() -> String {
    let m = Metrics::default();
    let t = Timestamp::from_second(1_800_000_000).expect("valid timestamp");
    m.connection(
        "ns",
        "c",
        "TokenPublished",
        &ConnectionTimes {
            access_token_expires_at: Some(t),
            refresh_token_expires_at: Some(t),
            next_refresh_at: Some(t),
        },
    );
    m.token_call("granted", 0.05);
    m.is_leader.set(1);
    m.render()
}

/// The series names of the exposition text (sample lines, not comments).
pub fn exported_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// The label names of each exported series name, from the sample lines.
pub fn exported_labels(text: &str) -> Vec<(String, BTreeSet<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default().to_string();
            let labels = l
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(inner, _)| {
                    inner
                        .split(',')
                        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (name, labels)
        })
        .collect()
}

/// The `exact_operator_[a-z_]+` names in a query.
pub fn metric_names(query: &str) -> Vec<String> {
    const PREFIX: &str = "exact_operator_";
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find(PREFIX) {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..len].to_string());
        rest = &tail[len..];
    }
    names
}
