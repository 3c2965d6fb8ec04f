//! Exact webhooks end to end: ExactWebhookSubscription against exact-sim and the real
//! control plane — subscriptions created, validated, listed, re-created and deleted; signed
//! messages delivered byte for byte to a loopback target; bad ones refused and counted; a
//! failing target makes Exact retry; and none of it causes a token call.

mod harness;
mod support;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use exact_operator::crd::ExactWebhookSubscription;
use exact_sim::{FireOptions, Signature, SimConfig};
use harness::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback target that records every body and can be told to fail.
#[derive(Clone, Default)]
struct Echo {
    got: Arc<Mutex<Vec<Bytes>>>,
    down: Arc<AtomicBool>,
}

impl Echo {
    async fn start() -> (Echo, String) {
        let echo = Echo::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(echo.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (echo, url)
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.got.lock().expect("lock").clone()
    }
}

async fn record(State(e): State<Echo>, body: Bytes) -> StatusCode {
    if e.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    e.got.lock().expect("lock").push(body);
    StatusCode::NO_CONTENT
}

fn sim_config() -> SimConfig {
    // Long-lived tokens: the connection makes one token call and then none during the test,
    // so any token call would come from the webhook code.
    SimConfig {
        webhook_validation_delay: Duration::from_millis(200),
        ..SimConfig::default()
    }
    .with_client("app-1", "secret-1")
    .with_webhook_secret("app-1", "whsec-1")
}

async fn put_subscription(admin: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let body = serde_json::json!({
        "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactWebhookSubscription",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    let api: Api<ExactWebhookSubscription> = Api::namespaced(admin.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply subscription");
}

async fn subscription(admin: &Client, ns: &str, name: &str) -> Option<ExactWebhookSubscription> {
    let api: Api<ExactWebhookSubscription> = Api::namespaced(admin.clone(), ns);
    api.get_opt(name).await.expect("get subscription")
}

fn ready_reason(s: &ExactWebhookSubscription) -> Option<(String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// `kubectl exact status` and `inspect` list the subscription with its IDs at Exact.
async fn plugin_shows_subscription(ns: &str, accounts_id: &str) {
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-exact"))
            .args(&args)
            .env("KUBECONFIG", support::kubeconfig_path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("kubectl-exact runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, table) = run(args(&["status", "-n", ns])).await;
    assert_eq!(code, Some(0), "all Ready -> exit 0: {table}");
    assert!(table.contains("SUBSCRIPTION"), "{table}");
    assert!(table.contains("orders") && table.contains("2/2"), "{table}");
    let (_, json) = run(args(&["status", "-n", ns, "-o", "json"])).await;
    let doc: serde_json::Value = serde_json::from_str(&json).expect("status -o json");
    let hooks = &doc["webhookSubscriptions"];
    assert_eq!(hooks[0]["name"], "orders", "{json}");
    assert_eq!(hooks[0]["ready"], true, "{json}");
    let (code, text) = run(args(&["inspect", "acme", "-n", ns])).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Webhook subscriptions:"), "{text}");
    assert!(text.contains(&format!("Accounts={accounts_id}")), "{text}");
}

async fn event_reasons(admin: &Client, ns: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("events");
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

fn counter(text: &str, outcome: &str) -> u64 {
    let prefix = format!("exact_operator_webhook_messages_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn subscriptions_kept_messages_verified_and_delivered() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let TestEnv { admin, ns, sim } = test_env(
        sim_config(),
        serde_json::json!({
            "accessTokenExpiresIn": "600s",
            "refreshWindow": "30s",
            "webhookSecretRef": {"name": "app-webhook", "key": "secret"},
        }),
    )
    .await;
    put_secret(&admin, &ns, "app-webhook", &[("secret", "whsec-1")]).await;
    let op = Operator::start_with_oauth(&ns, "op", Duration::from_secs(600)).await;
    let public = op.oauth_url.clone().expect("public url");
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "acme",
        serde_json::json!({"refreshBefore": "25s"}),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(30),
    )
    .await;
    let token_calls = sim.stats().totals.token_calls;

    let (echo, target) = Echo::start().await;
    put_subscription(
        &admin,
        &ns,
        "orders",
        serde_json::json!({
            "connectionRef": {"name": "acme"},
            "topics": ["Accounts", "SalesInvoices"],
            "target": {"url": target},
        }),
    )
    .await;

    // Created at Exact with our callback URL, validated, listed in status.
    let callback = format!("{public}/webhooks/exact/{ns}/orders");
    let active = support::wait_for(Duration::from_secs(30), || async {
        let s = subscription(&admin, &ns, "orders").await?;
        let st = s.status.clone()?;
        (ready_reason(&s)? == ("True".into(), "SubscriptionsActive".into())
            && st.subscriptions.len() == 2)
            .then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("never active: {:?}", sim.webhook_subscriptions()));
    assert_eq!(active.callback_url.as_deref(), Some(callback.as_str()));
    assert_eq!(active.division, Some(123_456));
    let validated = support::wait_for(Duration::from_secs(10), || async {
        let subs = sim.webhook_subscriptions();
        (subs.len() == 2 && subs.iter().all(|s| s.validation_status == Some(200))).then_some(subs)
    })
    .await
    .unwrap_or_else(|| panic!("not validated: {:?}", sim.webhook_subscriptions()));
    assert!(validated.iter().all(|s| s.callback_url == callback));
    let accounts = active
        .subscriptions
        .iter()
        .find(|s| s.topic == "Accounts")
        .expect("Accounts subscribed")
        .id
        .clone();
    assert!(validated.iter().any(|s| s.id == accounts));
    plugin_shows_subscription(&ns, &accounts).await;

    // A signed message is delivered exactly as sent.
    let fired = sim
        .fire_webhook(&accounts, &FireOptions::default())
        .await
        .expect("fire");
    assert_eq!(fired.status, Some(200), "delivered -> 2xx to Exact");
    assert_eq!(echo.bodies(), vec![Bytes::from(fired.body.clone())]);

    // Wrong, missing and tampered HashCodes and oversized bodies are refused, never forwarded.
    for signature in [Signature::Wrong, Signature::Missing] {
        let f = sim
            .fire_webhook(
                &accounts,
                &FireOptions {
                    signature,
                    ..Default::default()
                },
            )
            .await
            .expect("fire");
        assert_eq!(f.status, Some(401), "{signature:?}");
    }
    let tampered = fired.body.replace("\"Update\"", "\"Delete\"");
    assert_ne!(tampered, fired.body);
    let resp = reqwest::Client::new()
        .post(&callback)
        .body(tampered)
        .send()
        .await
        .expect("post tampered");
    assert_eq!(resp.status().as_u16(), 401, "tampered Content");
    let big = sim
        .fire_webhook(
            &accounts,
            &FireOptions {
                pad_to: 70_000,
                ..Default::default()
            },
        )
        .await
        .expect("fire big");
    assert_eq!(big.status, Some(413));
    let unknown = reqwest::Client::new()
        .post(format!("{public}/webhooks/exact/{ns}/nope"))
        .body(fired.body.clone())
        .send()
        .await
        .expect("post unknown");
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(echo.bodies().len(), 1, "nothing bad was forwarded");

    // Target down: Exact gets a 5xx (and retries); once it is back, the retry is delivered.
    echo.down.store(true, Ordering::SeqCst);
    let retry = FireOptions {
        key: Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into()),
        ..Default::default()
    };
    let failed = sim.fire_webhook(&accounts, &retry).await.expect("fire");
    assert!(
        failed.status.is_some_and(|s| s >= 500),
        "target down -> 5xx: {:?}",
        failed.status
    );
    echo.down.store(false, Ordering::SeqCst);
    let again = sim.fire_webhook(&accounts, &retry).await.expect("fire");
    assert_eq!(again.status, Some(200));
    assert_eq!(echo.bodies().len(), 2);
    assert_eq!(echo.bodies()[1], Bytes::from(again.body.clone()));

    let text = op.metrics.render();
    assert_eq!(counter(&text, "forwarded"), 2, "{text}");
    assert_eq!(counter(&text, "bad_signature"), 3, "{text}");
    assert_eq!(counter(&text, "too_large"), 1, "{text}");
    assert_eq!(counter(&text, "target_failed"), 1, "{text}");
    assert_eq!(counter(&text, "unknown_subscription"), 1, "{text}");
    assert_eq!(counter(&text, "validation"), 2, "{text}");
    assert!(
        text.contains("exact_operator_webhook_forward_duration_seconds_count 3"),
        "{text}"
    );

    // Deleted at Exact behind our back: re-created at the next resync.
    assert!(sim.delete_webhook_subscription(&accounts));
    let recreated = support::wait_for(Duration::from_secs(30), || async {
        let st = subscription(&admin, &ns, "orders").await?.status?;
        let id = st
            .subscriptions
            .iter()
            .find(|s| s.topic == "Accounts")?
            .id
            .clone();
        (id != accounts && sim.webhook_subscriptions().iter().any(|s| s.id == id)).then_some(id)
    })
    .await
    .expect("re-created");
    assert_eq!(sim.webhook_subscriptions().len(), 2);
    let f = sim
        .fire_webhook(&recreated, &FireOptions::default())
        .await
        .expect("fire");
    assert_eq!(f.status, Some(200));
    let reasons = event_reasons(&admin, &ns).await;
    for r in ["SubscriptionCreated", "SubscriptionRecreated"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // Deleted in the cluster: deleted at Exact, then the object goes.
    let api: Api<ExactWebhookSubscription> = Api::namespaced(admin.clone(), &ns);
    api.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for(Duration::from_secs(30), || async {
        subscription(&admin, &ns, "orders")
            .await
            .is_none()
            .then_some(())
    })
    .await
    .expect("finalizer released");
    assert!(
        sim.webhook_subscriptions().is_empty(),
        "{:?}",
        sim.webhook_subscriptions()
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|x| x == "SubscriptionsDeleted"));

    assert_eq!(
        sim.stats().totals.token_calls,
        token_calls,
        "webhooks never cause a token call"
    );
    op.stop().await;
}

#[tokio::test]
async fn missing_connection_or_secret_is_reported_and_never_blocks_deletion() {
    let TestEnv { admin, ns, sim } = test_env(sim_config(), serde_json::json!({})).await;
    let op = Operator::start_with_oauth(&ns, "op", Duration::from_secs(600)).await;
    let spec = |conn: &str| {
        serde_json::json!({
            "connectionRef": {"name": conn},
            "topics": ["Accounts"],
            "target": {"url": "http://127.0.0.1:9/hook"},
        })
    };
    put_subscription(&admin, &ns, "ghost", spec("nobody")).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    put_subscription(&admin, &ns, "nosecret", spec("acme")).await;
    for (name, reason) in [
        ("ghost", "ConnectionNotFound"),
        ("nosecret", "WebhookSecretMissing"),
    ] {
        support::wait_for(Duration::from_secs(30), || async {
            let s = subscription(&admin, &ns, name).await?;
            (ready_reason(&s)? == ("False".into(), reason.into())).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{name} never reported {reason}"));
        let s = subscription(&admin, &ns, name).await.expect("exists");
        assert!(
            s.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "exact-operator.io/webhook-subscriptions"),
            "{name} has the finalizer"
        );
    }
    assert!(sim.webhook_subscriptions().is_empty());
    let api: Api<ExactWebhookSubscription> = Api::namespaced(admin.clone(), &ns);
    for name in ["ghost", "nosecret"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    support::wait_for(Duration::from_secs(30), || async {
        let a = subscription(&admin, &ns, "ghost").await;
        let b = subscription(&admin, &ns, "nosecret").await;
        (a.is_none() && b.is_none()).then_some(())
    })
    .await
    .expect("finalizers released");
    op.stop().await;
}
