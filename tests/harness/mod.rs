//! Harness for end-to-end tests: exact-sim in-process, the operator in-process (running
//! with the operator's own RBAC identity), and helpers to create clients and connections.
//! The operator as a separate process (and the percentile helper) is [`process`], shared
//! with the exact-bench binary.
#![allow(dead_code)]

pub mod process;

use crate::support;
use exact_operator::context::{Context, Settings};
use exact_operator::crd::{ExactConnection, ExactOAuthClient};
use exact_operator::metrics::Metrics;
use exact_sim::{Sim, SimConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Compressed Exact timing used by most tests: 6 s tokens, refresh in the last 2 s.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        access_token_lifetime: Duration::from_secs(6),
        refresh_window: Duration::from_secs(2),
        ..SimConfig::default()
    }
    .with_client("app-1", "secret-1")
}

/// A running operator; stops (gracefully) when dropped or on `stop`.
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub identity: String,
    /// Base URL of the OAuth routes, when started with them.
    pub oauth_url: Option<String>,
    /// The operator's metrics.
    pub metrics: Metrics,
}

impl Operator {
    /// Starts the operator for `namespace` with the operator's RBAC identity.
    pub async fn start(namespace: &str, name: &str) -> Operator {
        let client = support::operator_client(namespace).await;
        Self::start_with(client, namespace, name)
    }

    /// Starts the operator with a given client.
    pub fn start_with(client: Client, namespace: &str, name: &str) -> Operator {
        let (ctx, identity) = context(client, namespace, name, None, Duration::from_secs(600));
        let ctx_metrics = ctx.metrics.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(exact_operator::controller::run(ctx, async move {
            let _ = rx.await;
        }));
        Operator {
            stop: Some(tx),
            task: Some(task),
            metrics: ctx_metrics,
            identity,
            oauth_url: None,
        }
    }

    /// Starts the operator (RBAC identity) plus its OAuth routes on a loopback port.
    pub async fn start_with_oauth(namespace: &str, name: &str, state_ttl: Duration) -> Operator {
        // All test traffic comes from 127.0.0.1: a limit no test reaches unless it means to.
        let generous = exact_operator::oauth::guard::RateLimit {
            per_minute: std::num::NonZeroU32::new(100_000).expect("non-zero"),
            burst: std::num::NonZeroU32::new(10_000).expect("non-zero"),
            client_ip_header: None,
        };
        Self::start_with_oauth_limit(namespace, name, state_ttl, &generous).await
    }

    /// Like `start_with_oauth`, with a given per-client-IP rate limit.
    pub async fn start_with_oauth_limit(
        namespace: &str,
        name: &str,
        state_ttl: Duration,
        limit: &exact_operator::oauth::guard::RateLimit,
    ) -> Operator {
        let client = support::operator_client(namespace).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind oauth");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let key = exact_operator::oauth::key::load_or_create(&client, support::OPERATOR_NAMESPACE)
            .await
            .expect("state key");
        let (ctx, identity) = context(
            client.clone(),
            namespace,
            name,
            Some((url.clone(), key)),
            state_ttl,
        );
        let ctx_metrics = ctx.metrics.clone();
        let state = exact_operator::oauth::OAuthState::new(ctx.clone(), limit);
        let server = tokio::spawn(async move {
            let _ = exact_operator::oauth::serve(listener, state).await;
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            exact_operator::controller::run(ctx, async move {
                let _ = rx.await;
            })
            .await;
            server.abort();
        });
        Operator {
            stop: Some(tx),
            task: Some(task),
            metrics: ctx_metrics,
            identity,
            oauth_url: Some(url),
        }
    }

    /// Stops gracefully and waits.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn context(
    client: Client,
    namespace: &str,
    name: &str,
    oauth: Option<(String, Vec<u8>)>,
    state_ttl: Duration,
) -> (Arc<Context>, String) {
    let (public_url, key) = oauth.unzip();
    let settings = Settings {
        watch_namespace: Some(namespace.to_string()),
        max_errors_per_hour: 50,
        recheck_interval: Duration::from_secs(2),
        bootstrap_recheck: Duration::from_secs(2),
        public_url,
        oauth_state_ttl: state_ttl,
        ..Settings::default()
    };
    let identity = format!("{name}-{namespace}");
    let mut ctx = Context::new(client, identity.clone(), settings, Metrics::default());
    ctx.consent_key = key.map(exact_operator::consent::SigningKey::new);
    (Arc::new(ctx), identity)
}

/// Applies a Secret with string data.
pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let string_data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": string_data,
    });
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply secret");
}

/// Applies an ExactOAuthClient named `name` pointing at `sim`, with extra spec fields.
pub async fn put_client(
    client: &Client,
    ns: &str,
    name: &str,
    sim: &Sim,
    extra: serde_json::Value,
) {
    let mut spec = serde_json::json!({
        "clientId": "app-1",
        "clientSecretRef": {"name": format!("{name}-credentials"), "key": "client-secret"},
        "authorizationUrl": format!("{}/api/oauth2/auth", sim.base_url()),
        "tokenUrl": format!("{}/api/oauth2/token", sim.base_url()),
        "apiBaseUrl": format!("{}/api", sim.base_url()),
        "allowInsecureHttp": true,
        "accessTokenExpiresIn": "6s",
        "refreshWindow": "2s",
    });
    merge(&mut spec, extra);
    let body = serde_json::json!({
        "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactOAuthClient",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    let api: Api<ExactOAuthClient> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply client");
}

/// Applies an ExactConnection with the given spec.
pub async fn put_connection(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let body = serde_json::json!({
        "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    let api: Api<ExactConnection> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply connection");
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// Bootstraps a connection `name` from a freshly seeded sim chain of the same name.
pub async fn bootstrap_connection(
    client: &Client,
    ns: &str,
    sim: &Sim,
    name: &str,
    extra: serde_json::Value,
) -> String {
    let token = sim.seed_connection("app-1", name, None);
    put_secret(
        client,
        ns,
        &format!("{name}-bootstrap"),
        &[("refresh-token", &token)],
    )
    .await;
    let mut spec = serde_json::json!({
        "clientRef": {"name": "app"},
        "refreshTokenSecretRef": {"name": format!("{name}-bootstrap"), "key": "refresh-token"},
        "refreshBefore": "1s",
    });
    merge(&mut spec, extra);
    put_connection(client, ns, name, spec).await;
    token
}

/// The Ready condition's (status, reason) of a connection.
pub async fn ready_of(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let api: Api<ExactConnection> = Api::namespaced(client.clone(), ns);
    let c = api.get_opt(name).await.ok()??;
    let cond = c
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((cond.status, cond.reason, cond.message))
}

/// Waits until the connection's Ready reason is `reason`; panics with the last seen state.
pub async fn wait_reason(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> (String, String, String) {
    let got = support::wait_for(timeout, || async {
        ready_of(client, ns, name)
            .await
            .filter(|(_, r, _)| r == reason)
    })
    .await;
    match got {
        Some(v) => v,
        None => panic!(
            "{ns}/{name} never reached {reason}; last: {:?}",
            ready_of(client, ns, name).await
        ),
    }
}

/// Reads a Secret's data as strings.
pub async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    secret_version(client, ns, name).await.map(|(_, data)| data)
}

/// Reads a Secret's resourceVersion and its data as strings.
pub async fn secret_version(
    client: &Client,
    ns: &str,
    name: &str,
) -> Option<(String, BTreeMap<String, String>)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(name).await.ok()??;
    let data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    Some((s.metadata.resource_version?, data))
}

/// A fresh namespace with exact-sim running and a client `app` (Secret `app-credentials`)
/// pointing at it: the common start of every end-to-end test.
pub struct TestEnv {
    /// Admin client.
    pub admin: Client,
    /// The test's namespace.
    pub ns: String,
    /// The simulator.
    pub sim: Sim,
}

/// Starts exact-sim on a loopback port.
pub async fn start_sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, "127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("exact-sim starts")
}

/// Sets up a [`TestEnv`]; `client_extra` is merged into the client's spec.
pub async fn test_env(cfg: SimConfig, client_extra: serde_json::Value) -> TestEnv {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let sim = start_sim(cfg).await;
    put_app_client(&admin, &ns, &sim, client_extra).await;
    TestEnv { admin, ns, sim }
}

/// The client every scenario uses: `app` pointing at `sim`, its secret `secret-1` in
/// Secret `app-credentials`; `client_extra` is merged into the client's spec.
pub async fn put_app_client(client: &Client, ns: &str, sim: &Sim, client_extra: serde_json::Value) {
    put_secret(
        client,
        ns,
        "app-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    put_client(client, ns, "app", sim, client_extra).await;
}

/// A connection of client `app` without a refresh token: it waits for consent.
pub async fn put_unauthorized_connection(client: &Client, ns: &str, name: &str) {
    put_connection(
        client,
        ns,
        name,
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"}),
    )
    .await;
}

/// The most common start: a [`TestEnv`] on [`fast_sim`] timing with connections `names`
/// bootstrapped from fresh sim chains of the same names (no operator runs yet).
pub async fn env_with_connections(names: &[&str]) -> TestEnv {
    let env = test_env(fast_sim(), serde_json::json!({})).await;
    for name in names {
        bootstrap_connection(&env.admin, &env.ns, &env.sim, name, serde_json::json!({})).await;
    }
    env
}

/// How long [`wait_published`] waits: several 6 s token lifetimes of [`fast_sim`].
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits (up to [`PUBLISH_TIMEOUT`]) until the connection is Ready with `TokenPublished`:
/// the shape most scenarios wait for.
pub async fn wait_published(client: &Client, ns: &str, name: &str) -> (String, String, String) {
    wait_reason(client, ns, name, "TokenPublished", PUBLISH_TIMEOUT).await
}

/// Refreshes a simulator chain behind the operator's back, so `token` becomes an old one.
pub async fn rotate_out_of_band(sim: &Sim, token: &str) {
    let resp = reqwest::Client::new()
        .post(sim.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "app-1"),
            ("client_secret", "secret-1"),
        ])
        .send()
        .await
        .expect("out-of-band refresh");
    assert_eq!(resp.status().as_u16(), 200, "out-of-band refresh works");
}
