//! Shared state of the controllers: API client, event recorder, HTTP clients, identity.

use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Tunables of the operator process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a refresh claim is valid: longer than one token call (15 s timeout) plus the
    /// write of its result, yet short enough that a crashed holder's connection is refreshed
    /// again before its token expires (Exact: 25 s before). A holder that overruns it is still
    /// safe: its persist re-reads and only replaces the chain it consumed, and a second caller
    /// with the old token finds the newer one in state.
    pub claim_ttl: Duration,
    /// Errors per connection per rolling hour before token calls pause.
    pub max_errors_per_hour: u32,
    /// How often a connection that waits on something outside its watch (a client in
    /// another namespace while watching one namespace, a consent) is looked at again.
    pub recheck_interval: Duration,
    /// Reconciles running at once (bounds sockets, memory and API load at scale).
    pub concurrency: u16,
    /// Watch only this namespace (None: all namespaces).
    pub watch_namespace: Option<String>,
    /// Public base URL of the OAuth routes (e.g. https://exact-operator.example.com); when
    /// set, connections waiting for consent show their start URL in status.
    pub public_url: Option<String>,
    /// Lifetime of an OAuth `state` (10 minutes).
    pub oauth_state_ttl: Duration,
    /// Lifetime of a start ticket in `status.authorizationUrl` (renewed in status when half
    /// of it is left, so a link read from status is good for at least half of it).
    pub consent_ticket_ttl: Duration,
    /// After writing a workload Secret, patch an annotation on the pods that opted in with
    /// the label `exact-operator.io/refresh-mounts` so the kubelet refreshes their Secret
    /// volume at once (see `crate::nudge`).
    pub nudge_mounting_pods: bool,
    /// How long a bootstrap refresh token read from its Secret is reused before the Secret
    /// is read again (a new value is imported then; a spec change reads it at once).
    /// Bootstrap Secrets are the user's and unlabelled, so no watch sees them.
    pub bootstrap_recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            claim_ttl: Duration::from_secs(20),
            max_errors_per_hour: 8,
            recheck_interval: Duration::from_secs(60),
            concurrency: 32,
            watch_namespace: None,
            public_url: None,
            oauth_state_ttl: Duration::from_secs(600),
            consent_ticket_ttl: Duration::from_secs(1800),
            nudge_mounting_pods: false,
            bootstrap_recheck: Duration::from_secs(3600),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes API client.
    pub client: kube::Client,
    /// Publishes Events.
    pub events: crate::event_recorder::Events,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Unique name of this process; recorded as the holder of refresh claims.
    pub identity: String,
    /// Tunables.
    pub settings: Settings,
    /// Watch-backed caches.
    pub caches: crate::cache::Caches,
    /// The token journal (None: answers go straight to the state Secret).
    pub journal: Option<std::sync::Arc<crate::journal::Journal>>,
    /// Signs start tickets and OAuth states (None: no consent links are issued).
    pub consent_key: Option<crate::consent::SigningKey>,
    /// The shards this replica holds (None: no sharding, this process owns everything).
    pub shards: Option<std::sync::Arc<crate::shard::ownership::Ownership>>,
    http: Mutex<HashMap<String, reqwest::Client>>,
}

impl Context {
    /// Builds a context; `identity` must be unique per process (pod name + random suffix).
    pub fn new(
        client: kube::Client,
        identity: String,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let reporter = Reporter {
            controller: "exact-operator".into(),
            instance: Some(identity.clone()),
        };
        Context {
            events: crate::event_recorder::Events::new(client.clone(), reporter),
            client,
            metrics,
            identity,
            settings,
            caches: Default::default(),
            consent_key: None,
            journal: None,
            shards: None,
            http: Mutex::new(HashMap::new()),
        }
    }

    /// An HTTP client trusting the system roots plus an optional PEM bundle; cached per bundle.
    pub fn http_client(&self, ca_bundle: Option<&str>) -> Result<reqwest::Client, String> {
        let key = ca_bundle.map(crate::state::digest).unwrap_or_default();
        let mut cache = self
            .http
            .lock()
            .map_err(|_| "HTTP client cache poisoned".to_string())?;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("exact-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_bundle {
            for c in parse_ca_bundle(pem)? {
                let cert = reqwest::Certificate::from_der(&c)
                    .map_err(|_| "caBundle holds a certificate that cannot be used".to_string())?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("building HTTP client: {e}"))?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

/// Parses and checks a PEM bundle: every certificate must be a valid trust anchor, and there
/// must be at least one, so a garbled bundle is reported instead of failing every TLS call.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert =
            cert.map_err(|_| "caBundle is not a valid PEM certificate bundle".to_string())?;
        roots.add(cert.clone()).map_err(|_| {
            "caBundle holds a certificate that is not a valid X.509 CA certificate".to_string()
        })?;
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err("caBundle holds no PEM certificate".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_ca_bundle;

    #[test]
    fn ca_bundle_garbage_is_refused() {
        assert!(parse_ca_bundle("").is_err());
        assert!(parse_ca_bundle("hello").is_err());
        let garbage = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
        let err = parse_ca_bundle(garbage).expect_err("garbage");
        assert!(err.contains("caBundle"), "{err}");
    }
}
