//! Prometheus metrics of the operator (served on /metrics in the text exposition format).

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Label of token-call outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// granted, too_early, old_refresh_token_used, transient, ...
    pub outcome: String,
}

/// Every outcome label of `exact_operator_webhook_messages_total`.
pub const WEBHOOK_OUTCOMES: [&str; 8] = [
    "forwarded",
    "bad_signature",
    "malformed",
    "too_large",
    "target_failed",
    "unknown_subscription",
    "validation",
    "unavailable",
];

/// Creates each outcome's series at 0, so the first occurrence shows up in `rate()`.
fn outcomes_at_zero(family: &Family<OutcomeLabel, Counter>, outcomes: &[&str]) {
    for outcome in outcomes {
        drop(family.get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        }));
    }
}

/// Label of OAuth-route series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// start or callback.
    pub route: String,
}

/// The per-connection series (expiries, next refresh, Ready reason), kept as one entry per
/// connection and encoded on each scrape. (As four label families they cost ~1 KB per
/// connection: each family keeps its own copy of the labels and a gauge allocation per
/// series; this map keeps the names once and the values inline.)
type ConnectionSeries = Mutex<HashMap<ConnectionKey, ConnectionFacts>>;

/// A connection's namespace and name.
type ConnectionKey = (Box<str>, Box<str>);

/// One connection's series values.
#[derive(Debug)]
struct ConnectionFacts {
    access_expiry: Option<i64>,
    refresh_expiry: Option<i64>,
    next_refresh: Option<i64>,
    reason: Box<str>,
}

/// One of a connection's series values.
type FactOf = fn(&ConnectionFacts) -> Option<i64>;

/// The per-connection families: name, help, and the value of a connection's series.
const CONNECTION_GAUGES: [(&str, &str, FactOf); 3] = [
    (
        "access_token_expiry_timestamp_seconds",
        "When each connection's published access token expires",
        |f| f.access_expiry,
    ),
    (
        "refresh_token_expiry_timestamp_seconds",
        "When each connection's refresh token expires if unused",
        |f| f.refresh_expiry,
    ),
    (
        "next_refresh_timestamp_seconds",
        "When each connection's next token call is planned",
        |f| f.next_refresh,
    ),
];

/// Registered with the registry: encodes `ConnectionSeries` at each scrape.
#[derive(Debug)]
struct ConnectionCollector(Arc<ConnectionSeries>);

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(series) = self.0.lock() else {
            return Ok(());
        };
        for (name, help, value) in CONNECTION_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((ns, conn), facts) in series.iter() {
                if let Some(v) = value(facts) {
                    let labels = [("namespace", &**ns), ("name", &**conn)];
                    family.encode_family(&labels)?.encode_gauge(&v)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "connection_ready_reason",
            "1 for the current Ready reason of each connection",
            None,
            MetricType::Gauge,
        )?;
        for ((ns, conn), facts) in series.iter() {
            let labels = [
                ("namespace", &**ns),
                ("name", &**conn),
                ("reason", &*facts.reason),
            ];
            family.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

/// Per-connection timing facts, as unix timestamps.
pub struct ConnectionTimes {
    /// Access-token expiry.
    pub access_token_expires_at: Option<Timestamp>,
    /// Refresh-token expiry.
    pub refresh_token_expires_at: Option<Timestamp>,
    /// Next planned token call.
    pub next_refresh_at: Option<Timestamp>,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry, for /metrics.
    pub registry: Arc<Registry>,
    /// Token calls by outcome.
    pub token_calls: Family<OutcomeLabel, Counter>,
    /// Duration of token calls in seconds.
    pub token_call_duration: Histogram,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that ended in an error.
    pub reconcile_errors: Counter,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// From a token answer in hand to its journal entry fsync'd, in seconds.
    pub journal_write: Histogram,
    /// 1 while this process runs the controllers (leader, or leader election off).
    pub is_leader: Gauge,
    /// Shard Leases this replica holds (`--shards`; `crate::shard`).
    pub shards_held: Gauge,
    /// OAuth requests refused by the per-client-IP rate limit, by route.
    pub oauth_rate_limited: Family<RouteLabel, Counter>,
    /// Pod nudges after a token publish (`crate::nudge`), by outcome: patched, failed.
    pub pod_nudges: Family<OutcomeLabel, Counter>,
    /// Webhook messages by outcome (forwarded, bad_signature, too_large, ...).
    pub webhook_messages: Family<OutcomeLabel, Counter>,
    /// Duration of webhook deliveries to targets in seconds.
    pub webhook_forward_duration: Histogram,
    connections: Arc<ConnectionSeries>,
    /// Token calls per Exact user and client in the rolling 24 h (Exact's daily cap).
    pub user_token_calls: Family<UserLabel, Gauge>,
}

/// Label of per-Exact-user series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabel {
    /// The ExactOAuthClient, `namespace/name`.
    pub client: String,
    /// The Exact `UserID` (a GUID; not a secret).
    pub exact_user: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("exact_operator");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            token_calls: Family::default(),
            token_call_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            journal_write: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            is_leader: Gauge::default(),
            shards_held: Gauge::default(),
            oauth_rate_limited: Family::default(),
            pod_nudges: Family::default(),
            webhook_messages: Family::default(),
            webhook_forward_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            connections: Arc::default(),
            user_token_calls: Family::default(),
        };
        r.register(
            "token_calls",
            "Token endpoint calls by outcome",
            m.token_calls.clone(),
        );
        r.register(
            "token_call_duration_seconds",
            "Token endpoint call duration",
            m.token_call_duration.clone(),
        );
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.reconcile_duration.clone(),
        );
        r.register(
            "journal_write_seconds",
            "From a token answer in hand to its journal entry fsync'd",
            m.journal_write.clone(),
        );
        r.register(
            "is_leader",
            "1 while this process runs the controllers",
            m.is_leader.clone(),
        );
        r.register(
            "shards_held",
            "Shard Leases this replica holds (--shards)",
            m.shards_held.clone(),
        );
        r.register(
            "oauth_rate_limited",
            "OAuth start/callback requests refused by the per-client-IP rate limit",
            m.oauth_rate_limited.clone(),
        );
        for route in ["start", "callback"] {
            drop(m.oauth_rate_limited.get_or_create(&RouteLabel {
                route: route.to_string(),
            }));
        }
        r.register(
            "pod_nudges",
            "Annotation patches on pods mounting a just-written workload Secret, by outcome",
            m.pod_nudges.clone(),
        );
        outcomes_at_zero(&m.pod_nudges, &["patched", "failed"]);
        r.register(
            "webhook_messages",
            "Webhook messages received, by outcome",
            m.webhook_messages.clone(),
        );
        outcomes_at_zero(&m.webhook_messages, &WEBHOOK_OUTCOMES);
        r.register(
            "webhook_forward_duration_seconds",
            "Duration of webhook deliveries to their targets",
            m.webhook_forward_duration.clone(),
        );
        r.register_collector(Box::new(ConnectionCollector(m.connections.clone())));
        r.register(
            "token_calls_24h",
            "Token calls of each Exact user on each client in the rolling 24 h (Exact caps them at about 200)",
            m.user_token_calls.clone(),
        );
        outcomes_at_zero(&m.token_calls, &OUTCOMES);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }
}

/// Every token-call outcome label.
pub const OUTCOMES: [&str; 8] = [
    "granted",
    "too_early",
    "old_refresh_token_used",
    "refresh_token_expired",
    "invalid_grant",
    "invalid_client",
    "blocked",
    "transient",
];

impl Metrics {
    /// Counts one token call.
    pub fn token_call(&self, outcome: &str, seconds: f64) {
        self.token_calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        self.token_call_duration.observe(seconds);
    }

    /// Records a connection's Ready reason and timing facts.
    pub fn connection(&self, namespace: &str, name: &str, reason: &str, times: &ConnectionTimes) {
        let facts = ConnectionFacts {
            access_expiry: times.access_token_expires_at.map(|t| t.as_second()),
            refresh_expiry: times.refresh_token_expires_at.map(|t| t.as_second()),
            next_refresh: times.next_refresh_at.map(|t| t.as_second()),
            reason: reason.into(),
        };
        if let Ok(mut series) = self.connections.lock() {
            series.insert((namespace.into(), name.into()), facts);
        }
    }

    /// Drops a connection's series: another replica works on it now (its shard moved).
    pub fn forget_connection(&self, namespace: &str, name: &str) {
        if let Ok(mut series) = self.connections.lock() {
            series.remove(&(Box::from(namespace), Box::from(name)));
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_series_follow_the_current_reason() {
        let m = Metrics::default();
        let t = Timestamp::from_second(1_800_000_000).expect("valid");
        let times = ConnectionTimes {
            access_token_expires_at: Some(t),
            refresh_token_expires_at: None,
            next_refresh_at: Some(t),
        };
        m.connection("ns", "c", "Pending", &times);
        m.connection("ns", "c", "TokenPublished", &times);
        m.token_call("granted", 0.05);
        let text = m.render();
        assert!(text.contains(r#"exact_operator_connection_ready_reason{namespace="ns",name="c",reason="TokenPublished"} 1"#), "{text}");
        assert!(
            !text.contains(r#"reason="Pending""#),
            "old reason dropped: {text}"
        );
        assert!(text.contains(r#"exact_operator_access_token_expiry_timestamp_seconds{namespace="ns",name="c"} 1800000000"#));
        assert!(!text.contains("exact_operator_refresh_token_expiry_timestamp_seconds{"));
        assert!(text.contains(r#"exact_operator_token_calls_total{outcome="granted"} 1"#));
        assert!(text.contains("# TYPE exact_operator_next_refresh_timestamp_seconds gauge"));
        m.forget_connection("ns", "c");
        let text = m.render();
        assert!(!text.contains(r#"name="c""#), "forgotten: {text}");
        assert!(
            text.contains("# TYPE exact_operator_connection_ready_reason gauge"),
            "the family stays, empty: {text}"
        );
    }
}
