//! End-to-end: workload Secret templates (`spec.target.template`), a bootstrap Secret that
//! carries a current access token (published at once), and lifetimes written as bare
//! integers of milliseconds. Real kube-apiserver, real exact-sim.

mod harness;
mod support;

use exact_operator::crd::ExactOAuthClient;
use exact_operator::duration::Lifetime;
use exact_sim::SimConfig;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn templated_spec(template: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "clientRef": {"name": "app"},
        "refreshTokenSecretRef": {"name": "acme-bootstrap", "key": "refresh-token"},
        "refreshBefore": "1s",
        "target": {"template": template},
    })
}

fn good_template() -> serde_json::Value {
    serde_json::json!({
        "Authorization": "{{ token_type }} {{ access_token }}",
        "tap-config.json": "{\"access_token\": {{ access_token | json }}, \"base_url\": {{ api_base_url | json }}, \"expires_at\": {{ expires_at | json }}, \"connection\": \"{{ connection_namespace }}/{{ connection_name }}\"}",
    })
}

async fn event_reasons(admin: &Client, ns: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("events");
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

/// Checks the templated keys against the standard ones of the same Secret.
fn assert_rendered(data: &std::collections::BTreeMap<String, String>, ns: &str) {
    assert_eq!(
        data["Authorization"],
        format!("Bearer {}", data["access_token"])
    );
    let config: serde_json::Value =
        serde_json::from_str(&data["tap-config.json"]).expect("the rendered config is JSON");
    assert_eq!(config["access_token"], data["access_token"].as_str());
    assert_eq!(config["base_url"], data["api_base_url"].as_str());
    assert_eq!(config["expires_at"], data["expires_at"].as_str());
    assert_eq!(config["connection"], format!("{ns}/acme").as_str());
}

#[tokio::test]
async fn a_templated_key_is_rendered_and_refreshed_with_the_token() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    let seeded = sim.seed_connection("app-1", "acme", None);
    put_secret(&admin, &ns, "acme-bootstrap", &[("refresh-token", &seeded)]).await;
    put_connection(&admin, &ns, "acme", templated_spec(good_template())).await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "acme").await;
    let first = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert_rendered(&first, &ns);
    assert!(sim.access_token_valid(&first["access_token"]));
    let state = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state secret");
    assert!(
        first
            .values()
            .all(|v| !v.contains(state["refresh_token"].as_str())),
        "the refresh token reaches no key, templated or not"
    );
    // The next rotation re-renders the templated keys with the new token.
    let rotated = support::wait_for(T, || async {
        secret_data(&admin, &ns, "acme-exact-token")
            .await
            .filter(|d| d["access_token"] != first["access_token"])
    })
    .await
    .expect("the token rotates");
    assert_rendered(&rotated, &ns);
    assert!(sim.access_token_valid(&rotated["access_token"]));
    op.stop().await;
}

#[tokio::test]
async fn a_bad_template_is_reported_and_the_last_good_secret_is_kept() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    let seeded = sim.seed_connection("app-1", "acme", None);
    put_secret(&admin, &ns, "acme-bootstrap", &[("refresh-token", &seeded)]).await;
    put_connection(&admin, &ns, "acme", templated_spec(good_template())).await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "acme").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);

    let bad_cases = [
        (
            serde_json::json!({"Authorization": "Bearer {{ acces_token }}"}),
            "unknown variable \"acces_token\"",
        ),
        (
            serde_json::json!({"creds": "{{ refresh_token }}"}),
            "the refresh token is never available",
        ),
        (
            serde_json::json!({"access_token": "x{{ access_token }}"}),
            "is a standard key",
        ),
        (
            serde_json::json!({"Authorization": "Bearer {{ access_token"}),
            "never closed",
        ),
    ];
    for (template, fragment) in bad_cases {
        put_connection(&admin, &ns, "acme", templated_spec(template)).await;
        let got = support::wait_for(T, || async {
            ready_of(&admin, &ns, "acme")
                .await
                .filter(|(_, r, m)| r == "InvalidTemplate" && m.contains(fragment))
        })
        .await;
        let Some((status, _, message)) = got else {
            let last = ready_of(&admin, &ns, "acme").await;
            panic!("expected InvalidTemplate with {fragment:?}; last Ready: {last:?}");
        };
        assert_eq!(status, "False");
        assert!(message.contains("spec.target.template"), "{message}");
    }
    assert!(
        event_reasons(&admin, &ns)
            .await
            .iter()
            .any(|r| r == "InvalidTemplate"),
        "an Event tells people"
    );
    // Read once no call can be in flight any more (a refresh started before the first bad
    // template may still have published). It is what the good template rendered.
    let good = secrets.get("acme-exact-token").await.expect("secret");
    let good_data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert_rendered(&good_data, &ns);
    assert!(!good_data.contains_key("creds"));
    // Longer than a token lifetime (6 s): no token call, no write; the Secret stays as the
    // last good template rendered it.
    let calls_before = sim.stats().totals.refresh_ok;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let kept = secrets.get("acme-exact-token").await.expect("secret");
    assert_eq!(
        kept.metadata.resource_version, good.metadata.resource_version,
        "the last good Secret is untouched"
    );
    assert_eq!(kept.data, good.data);
    assert_eq!(
        sim.stats().totals.refresh_ok,
        calls_before,
        "no token call while the template is invalid"
    );
    assert_eq!(
        ready_of(&admin, &ns, "acme").await.map(|r| r.1),
        Some("InvalidTemplate".to_string())
    );

    // Fixed: published again (a fresh token, since the kept one expired meanwhile).
    put_connection(&admin, &ns, "acme", templated_spec(good_template())).await;
    let fixed = support::wait_for(T, || async {
        secret_data(&admin, &ns, "acme-exact-token")
            .await
            .filter(|d| sim.access_token_valid(&d["access_token"]))
    })
    .await
    .expect("published again once the template is fixed");
    assert_rendered(&fixed, &ns);
    wait_published(&admin, &ns, "acme").await;
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    op.stop().await;
}

/// What a consent just returned: a refresh and an access token with its `expires_in`.
async fn consent_like_tokens(sim: &exact_sim::Sim, name: &str) -> (String, String, u64) {
    let seeded = sim.seed_connection("app-1", name, None);
    let resp: serde_json::Value = reqwest::Client::new()
        .post(sim.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", seeded.as_str()),
            ("client_id", "app-1"),
            ("client_secret", "secret-1"),
        ])
        .send()
        .await
        .expect("token call")
        .json()
        .await
        .expect("token JSON");
    let field = |k: &str| resp[k].as_str().expect("string field").to_string();
    let expires_in = field("expires_in").parse().expect("expires_in seconds");
    (field("refresh_token"), field("access_token"), expires_in)
}

#[tokio::test]
async fn a_bootstrap_with_an_access_token_is_ready_within_two_seconds() {
    // 20 s tokens, refreshable in the last 5 s: without the access token the connection
    // would wait ~15 s for Exact's window.
    let cfg = SimConfig {
        access_token_lifetime: Duration::from_secs(20),
        refresh_window: Duration::from_secs(5),
        ..SimConfig::default()
    }
    .with_client("app-1", "secret-1");
    let TestEnv { admin, ns, sim } = test_env(
        cfg,
        serde_json::json!({"accessTokenExpiresIn": "20s", "refreshWindow": "5s"}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;

    let (refresh, access, expires_in) = consent_like_tokens(&sim, "acme").await;
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expires_in as i64);
    put_secret(
        &admin,
        &ns,
        "acme-bootstrap",
        &[
            ("refresh-token", &refresh),
            ("access_token", &access),
            ("expires_at", &expires_at.to_string()),
        ],
    )
    .await;
    let applied = Instant::now();
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "acme-bootstrap", "key": "refresh-token"},
            "refreshBefore": "1s",
            "division": 123456,
        }),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(5),
    )
    .await;
    let took = applied.elapsed();
    println!("bootstrap with an access token: Ready {took:?} after apply");
    assert!(took < Duration::from_secs(2), "Ready after {took:?}");
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert_eq!(
        data["access_token"], access,
        "the bootstrap token is published"
    );
    assert!(sim.access_token_valid(&data["access_token"]));
    assert_eq!(
        sim.connection_stats("acme").map(|c| c.counters.refresh_ok),
        Some(1),
        "no token call by the operator yet (the one refresh is the consent's)"
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|r| r == "BootstrapImported"));

    // Without spec.division the division is asked (Me, no token call) before publishing.
    let (refresh, other_access, expires_in) = consent_like_tokens(&sim, "globex").await;
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expires_in as i64);
    put_secret(
        &admin,
        &ns,
        "globex-bootstrap",
        &[
            ("refresh-token", &refresh),
            ("access_token", &other_access),
            ("expires_at", &expires_at.as_second().to_string()),
        ],
    )
    .await;
    let applied = Instant::now();
    put_connection(
        &admin,
        &ns,
        "globex",
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "globex-bootstrap", "key": "refresh-token"},
            "refreshBefore": "1s",
        }),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "globex",
        "TokenPublished",
        Duration::from_secs(5),
    )
    .await;
    let took = applied.elapsed();
    println!("bootstrap with an access token, division discovered: Ready {took:?} after apply");
    assert!(took < Duration::from_secs(2), "Ready after {took:?}");
    let data = secret_data(&admin, &ns, "globex-exact-token")
        .await
        .expect("workload secret");
    assert_eq!(data["access_token"], other_access);
    assert_eq!(data["division"], "123456", "division known at once");
    assert_eq!(
        sim.connection_stats("globex")
            .map(|c| c.counters.refresh_ok),
        Some(1),
        "no token call by the operator"
    );

    // The first refresh is planned from that expiry: after it, once, never too early.
    let refreshed = support::wait_for(Duration::from_secs(40), || async {
        secret_data(&admin, &ns, "acme-exact-token")
            .await
            .filter(|d| d["access_token"] != access)
    })
    .await
    .expect("refreshed before the bootstrap token's expiry");
    assert!(sim.access_token_valid(&refreshed["access_token"]));
    let stats = sim.stats();
    assert_eq!(
        stats.totals.too_early, 0,
        "the schedule follows the given expiry"
    );
    assert_eq!(stats.totals.old_refresh_token_used, 0);
    op.stop().await;
}

#[tokio::test]
async fn an_unusable_bootstrap_access_token_is_ignored_with_an_event() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    let seeded = sim.seed_connection("app-1", "acme", None);
    put_secret(
        &admin,
        &ns,
        "acme-bootstrap",
        &[
            ("refresh-token", &seeded),
            ("access_token", "not-a-live-token"),
            ("expires_at", "next tuesday"),
        ],
    )
    .await;
    put_connection(&admin, &ns, "acme", templated_spec(serde_json::json!({}))).await;
    wait_published(&admin, &ns, "acme").await;
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert_ne!(data["access_token"], "not-a-live-token");
    assert!(sim.access_token_valid(&data["access_token"]));
    let reasons = event_reasons(&admin, &ns).await;
    assert!(
        reasons.iter().any(|r| r == "BootstrapAccessTokenIgnored"),
        "{reasons:?}"
    );
    op.stop().await;
}

async fn client_reason(admin: &Client, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<ExactOAuthClient> = Api::namespaced(admin.clone(), ns);
    let got = support::wait_for(T, || async {
        let c = api.get(name).await.ok()?;
        let cond = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (cond.reason == reason).then_some(cond.message)
    })
    .await;
    got.unwrap_or_else(|| panic!("client {name} never reached {reason}"))
}

#[tokio::test]
async fn lifetimes_are_accepted_as_bare_integer_milliseconds_or_strings() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    let yaml = |name: &str, at: &str, rt: &str| {
        format!(
            "apiVersion: exact-operator.io/v1alpha1\nkind: ExactOAuthClient\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clientId: app-1\n  clientSecretRef: {{name: app-credentials, key: client-secret}}\n  tokenUrl: {}\n  allowInsecureHttp: true\n  accessTokenExpiresIn: {at}\n  refreshTokenExpiresIn: {rt}\n",
            sim.token_url()
        )
    };
    // Bare YAML integers, as Exact and the seed write them (30 days in ms exceeds i32).
    support::apply_yaml(&admin, &yaml("ints", "3599999", "2592000000"))
        .await
        .expect("bare integers are valid");
    support::apply_yaml(&admin, &yaml("strings", "\"600s\"", "\"720h\""))
        .await
        .expect("strings are valid");
    // Fractions are still a type error at the API server.
    let fraction = support::apply_yaml(&admin, &yaml("fraction", "1.5", "\"720h\"")).await;
    assert!(fraction.is_err(), "a fraction is rejected: {fraction:?}");

    let api: Api<ExactOAuthClient> = Api::namespaced(admin.clone(), &ns);
    let ints = api.get("ints").await.expect("typed read");
    assert_eq!(
        ints.spec.access_token_expires_in,
        Some(Lifetime::Millis(3_599_999))
    );
    assert_eq!(
        ints.spec.refresh_token_expires_in,
        Some(Lifetime::Millis(2_592_000_000))
    );
    let strings = api.get("strings").await.expect("typed read");
    assert_eq!(
        strings.spec.access_token_expires_in,
        Some(Lifetime::from("600s"))
    );
    client_reason(&admin, &ns, "ints", "ClientReady").await;
    client_reason(&admin, &ns, "strings", "ClientReady").await;

    // A negative integer passes the schema but not the operator: a clear condition.
    support::apply_yaml(&admin, &yaml("negative", "-5", "\"720h\""))
        .await
        .expect("schema-valid");
    let message = client_reason(&admin, &ns, "negative", "InvalidSpec").await;
    assert!(message.contains("accessTokenExpiresIn"), "{message}");
    op.stop().await;
}
