//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Label of token-call outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// granted, too_early, old_refresh_token_used, transient, ...
    pub outcome: String,
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
    /// Connections by Ready reason.
    pub connection_reasons: ReasonGauge,
    /// 1 while this process runs the controllers (leader, or leader election off).
    pub is_leader: prometheus_client::metrics::gauge::Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("exact_operator");
        let token_calls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "token_calls",
            "Token endpoint calls by outcome",
            token_calls.clone(),
        );
        let token_call_duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "token_call_duration_seconds",
            "Token endpoint call duration",
            token_call_duration.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            reconcile_errors.clone(),
        );
        let connection_reasons = ReasonGauge::default();
        registry.register(
            "connection_ready_reason",
            "1 for the current Ready reason of each connection",
            connection_reasons.family.clone(),
        );
        let is_leader = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "is_leader",
            "1 while this process runs the controllers",
            is_leader.clone(),
        );
        Metrics {
            is_leader,
            registry: Arc::new(registry),
            token_calls,
            token_call_duration,
            reconciles,
            reconcile_errors,
            connection_reasons,
        }
    }
}

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

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Label of the connection-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    /// Namespace of the connection.
    pub namespace: String,
    /// Name of the connection.
    pub name: String,
    /// Ready reason.
    pub reason: String,
}

impl Metrics {
    /// Records the Ready reason of a connection (1 for the current reason).
    pub fn ready_reason(&self, namespace: &str, name: &str, reason: &str) {
        self.connection_reasons.clear_for(namespace, name);
        if let Ok(mut cur) = self.connection_reasons.current.lock() {
            cur.insert(
                (namespace.to_string(), name.to_string()),
                reason.to_string(),
            );
        }
        self.connection_reasons
            .family
            .get_or_create(&ConnectionLabel {
                namespace: namespace.into(),
                name: name.into(),
                reason: reason.into(),
            })
            .set(1);
    }
}

/// Connections by Ready reason: one series per connection, for the current reason.
#[derive(Clone, Default)]
pub struct ReasonGauge {
    /// The gauge family.
    pub family: Family<ConnectionLabel, prometheus_client::metrics::gauge::Gauge>,
    current: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), String>>>,
}

impl ReasonGauge {
    fn clear_for(&self, namespace: &str, name: &str) {
        if let Ok(mut cur) = self.current.lock() {
            if let Some(old) = cur.remove(&(namespace.to_string(), name.to_string())) {
                self.family.remove(&ConnectionLabel {
                    namespace: namespace.into(),
                    name: name.into(),
                    reason: old,
                });
            }
        }
    }
}
