//! End-to-end tests of the operator core against the real control plane and exact-sim.

mod harness;
mod support;

use exact_operator::crd::ExactConnection;
use exact_sim::SimConfig;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::time::Duration;

#[tokio::test]
async fn happy_path_rotates_on_time_and_never_publishes_the_refresh_token() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;

    wait_published(&admin, &ns, "acme").await;
    // At least 5 rotations after the first grant.
    let rotated = support::wait_for(Duration::from_secs(60), || async {
        sim.connection_stats("acme")
            .filter(|c| c.counters.refresh_ok >= 6)
    })
    .await;
    assert!(
        rotated.is_some(),
        "expected 6 refreshes, sim saw {:?}",
        sim.connection_stats("acme")
    );
    let stats = sim.stats();
    assert_eq!(stats.totals.too_early, 0, "no too-early calls");
    assert_eq!(stats.totals.old_refresh_token_used, 0, "no old-token uses");

    // The workload Secret: documented keys, a token the simulator accepts, no refresh token.
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "access_token",
            "api_base_url",
            "division",
            "expires_at",
            "token_type"
        ]
    );
    assert!(
        sim.access_token_valid(&data["access_token"]),
        "published token is valid at the simulator"
    );
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(
        data["division"], "123456",
        "division discovered via /current/Me"
    );
    assert_eq!(
        data["api_base_url"],
        format!("{}/api/v1/123456", sim.base_url())
    );
    let state = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state secret");
    let rt = &state["refresh_token"];
    assert!(
        data.values().all(|v| !v.contains(rt.as_str())),
        "refresh token must not reach the workload Secret"
    );

    // Status timestamps and ownership.
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let conn = api.get("acme").await.expect("connection");
    let st = conn.status.clone().expect("status");
    let expires = st.access_token_expires_at.expect("expiry");
    let last = st.last_refresh_time.expect("last refresh");
    let next = st.next_refresh_time.expect("next refresh");
    assert_eq!(
        expires.duration_since(last).as_secs(),
        6,
        "expiry measured from send time"
    );
    assert_eq!(
        expires.duration_since(next).as_secs(),
        1,
        "next refresh = expiry - refreshBefore"
    );
    assert!(st.refresh_token_expires_at.is_some());
    assert_eq!(st.division, Some(123456));
    assert_eq!(st.observed_generation, conn.metadata.generation);
    assert_eq!(data["expires_at"], expires.to_string());
    let uid = conn.metadata.uid.clone().expect("uid");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    for name in ["acme-exact-token", "acme-exact-state"] {
        let s = secrets.get(name).await.expect("secret");
        let owners = s.metadata.owner_references.expect("owner refs");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid, "{name} is owned by the connection");
        assert_eq!(owners[0].controller, Some(true));
    }
    op.stop().await;
}

#[tokio::test]
async fn explicit_division_and_custom_target() {
    let TestEnv { admin, ns, sim } = test_env(
        fast_sim(),
        serde_json::json!({"accessTokenExpiresIn": "600000"}),
    )
    .await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "globex",
        serde_json::json!({"division": 777, "target": {"secretName": "globex-api", "labels": {"team": "finance"}}}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "globex").await;
    let data = secret_data(&admin, &ns, "globex-api")
        .await
        .expect("target secret");
    assert_eq!(data["division"], "777");
    assert!(data["api_base_url"].ends_with("/api/v1/777"));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let s = secrets.get("globex-api").await.expect("secret");
    assert_eq!(
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("finance")
    );
    assert!(
        sim.stats().totals.me_ok <= 1,
        "explicit division: Me once at most, to learn the user, never per refresh"
    );
    op.stop().await;
}

#[tokio::test]
async fn client_problems_are_reported_and_recover_without_losing_the_chain() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let sim = start_sim(fast_sim()).await;
    // Client whose Secret does not exist yet.
    put_client(&admin, &ns, "app", &sim, serde_json::json!({})).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    let (_, _, msg) = wait_reason(
        &admin,
        &ns,
        "acme",
        "ClientNotReady",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        msg.contains("app-credentials") && msg.contains("not found"),
        "{msg}"
    );
    // Wrong key name.
    put_secret(&admin, &ns, "app-credentials", &[("wrong-key", "secret-1")]).await;
    let (_, _, msg) = support::wait_for(Duration::from_secs(30), || async {
        ready_of(&admin, &ns, "acme")
            .await
            .filter(|(_, _, m)| m.contains("no key"))
    })
    .await
    .expect("missing key reported");
    assert!(msg.contains("client-secret"), "{msg}");
    assert_eq!(
        sim.stats().totals.token_calls,
        0,
        "nothing spent while the client is broken"
    );
    // Fixed: the chain was never touched, so it works.
    put_secret(
        &admin,
        &ns,
        "app-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    wait_published(&admin, &ns, "acme").await;
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    op.stop().await;
}

#[tokio::test]
async fn wrong_client_secret_stops_token_calls_until_fixed() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let sim = start_sim(fast_sim()).await;
    put_secret(
        &admin,
        &ns,
        "app-credentials",
        &[("client-secret", "not-the-secret")],
    )
    .await;
    put_client(&admin, &ns, "app", &sim, serde_json::json!({})).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    let (status, _, msg) = wait_reason(
        &admin,
        &ns,
        "acme",
        "InvalidClient",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(status, "False");
    assert!(
        !msg.contains("not-the-secret"),
        "message must not echo the secret: {msg}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.stats().totals.invalid_client,
        1,
        "exactly one refused call, then none"
    );
    put_secret(
        &admin,
        &ns,
        "app-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    wait_published(&admin, &ns, "acme").await;
    op.stop().await;
}

#[tokio::test]
async fn namespace_not_allowed_by_client() {
    let admin = support::admin_client().await;
    let home = support::fresh_namespace(&admin).await;
    let other = support::fresh_namespace(&admin).await;
    let sim = start_sim(fast_sim()).await;
    put_app_client(&admin, &home, &sim, serde_json::json!({})).await;
    let token = sim.seed_connection("app-1", "x", None);
    put_secret(&admin, &other, "b", &[("refresh-token", &token)]).await;
    put_connection(
        &admin,
        &other,
        "x",
        serde_json::json!({"clientRef": {"name": "app", "namespace": home}, "refreshTokenSecretRef": {"name": "b", "key": "refresh-token"}, "refreshBefore": "1s"}),
    )
    .await;
    let admin_op = Operator::start_with(admin.clone(), &other, "op");
    let (_, _, msg) = wait_reason(
        &admin,
        &other,
        "x",
        "ClientNotAllowed",
        Duration::from_secs(30),
    )
    .await;
    assert!(msg.contains(&other), "{msg}");
    assert_eq!(sim.stats().totals.token_calls, 0);
    // Allow it: the connection proceeds.
    put_client(
        &admin,
        &home,
        "app",
        &sim,
        serde_json::json!({"allowedNamespaces": [other.clone()]}),
    )
    .await;
    wait_published(&admin, &other, "x").await;
    admin_op.stop().await;
}

#[tokio::test]
async fn foreign_and_shared_target_secrets_are_never_overwritten() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    put_secret(&admin, &ns, "foreign", &[("hello", "world")]).await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "a",
        serde_json::json!({"target": {"secretName": "foreign"}}),
    )
    .await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "b",
        serde_json::json!({"target": {"secretName": "shared"}}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    wait_reason(
        &admin,
        &ns,
        "a",
        "TargetSecretConflict",
        Duration::from_secs(30),
    )
    .await;
    wait_published(&admin, &ns, "b").await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "c",
        serde_json::json!({"target": {"secretName": "shared"}}),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "c",
        "TargetSecretConflict",
        Duration::from_secs(30),
    )
    .await;
    let foreign = secret_data(&admin, &ns, "foreign").await.expect("foreign");
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign["hello"], "world", "foreign Secret untouched");
    let shared = secret_data(&admin, &ns, "shared").await.expect("shared");
    assert!(sim.access_token_valid(&shared["access_token"]) || shared.contains_key("access_token"));
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    op.stop().await;
}

#[tokio::test]
async fn edited_or_deleted_workload_secret_is_restored_without_a_token_call() {
    let TestEnv { admin, ns, sim } = test_env(
        SimConfig {
            access_token_lifetime: Duration::from_secs(120),
            refresh_window: Duration::from_secs(2),
            ..SimConfig::default()
        }
        .with_client("app-1", "secret-1"),
        serde_json::json!({"accessTokenExpiresIn": "120s"}),
    )
    .await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "acme").await;
    let original = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("secret");
    let calls = sim.stats().totals.token_calls;

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let edit = serde_json::json!({"data": {"access_token": "Z2FyYmFnZQ=="}});
    secrets
        .patch(
            "acme-exact-token",
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .expect("edit");
    let restored = support::wait_for(Duration::from_secs(20), || async {
        secret_data(&admin, &ns, "acme-exact-token")
            .await
            .filter(|d| d["access_token"] == original["access_token"])
    })
    .await;
    assert!(restored.is_some(), "edited Secret restored");

    secrets
        .delete("acme-exact-token", &DeleteParams::default())
        .await
        .expect("delete");
    let recreated = support::wait_for(Duration::from_secs(20), || async {
        secret_data(&admin, &ns, "acme-exact-token")
            .await
            .filter(|d| d["access_token"] == original["access_token"])
    })
    .await;
    assert!(recreated.is_some(), "deleted Secret recreated");
    assert_eq!(
        sim.stats().totals.token_calls,
        calls,
        "restoring made no token call"
    );
    op.stop().await;
}

#[tokio::test]
async fn bootstrap_secret_reimported_only_when_its_value_changes() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    let first = bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "acme").await;
    // GitOps re-applies the same (consumed) value, with an extra key to trigger a change.
    put_secret(
        &admin,
        &ns,
        "acme-bootstrap",
        &[("refresh-token", &first), ("note", "re-applied")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        sim.stats().totals.old_refresh_token_used,
        0,
        "consumed value never imported again"
    );
    assert_eq!(
        ready_of(&admin, &ns, "acme").await.map(|r| r.1),
        Some("TokenPublished".into())
    );
    // A new consent gives a new value: imported, and the connection follows the new chain.
    let second = sim.seed_connection("app-1", "acme-2", None);
    put_secret(&admin, &ns, "acme-bootstrap", &[("refresh-token", &second)]).await;
    let moved = support::wait_for(Duration::from_secs(30), || async {
        sim.connection_stats("acme-2")
            .filter(|c| c.counters.refresh_ok >= 1)
    })
    .await;
    assert!(moved.is_some(), "new chain used");
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    op.stop().await;
}

#[tokio::test]
async fn dead_chain_requires_reauthorization_and_stops_calls() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    // Rotate the seeded token out of band, then hand the operator the old one.
    let old = sim.seed_connection("app-1", "acme", None);
    rotate_out_of_band(&sim, &old).await;
    put_secret(&admin, &ns, "acme-bootstrap", &[("refresh-token", &old)]).await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshTokenSecretRef": {"name": "acme-bootstrap", "key": "refresh-token"}, "refreshBefore": "1s"}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    let (status, _, msg) = wait_reason(
        &admin,
        &ns,
        "acme",
        "ReauthorizationRequired",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(status, "False");
    assert!(msg.contains("Old refresh token used"), "{msg}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.stats().totals.old_refresh_token_used,
        1,
        "no further calls on a dead chain"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &ns);
    let list = events.list(&Default::default()).await.expect("events");
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ReauthorizationRequired")),
        "an Event tells people"
    );
    op.stop().await;
}

#[tokio::test]
async fn two_operators_on_the_same_connections_never_reuse_a_refresh_token() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    for name in ["c1", "c2", "c3"] {
        bootstrap_connection(&admin, &ns, &sim, name, serde_json::json!({})).await;
    }
    let a = Operator::start(&ns, "op-a").await;
    let b = Operator::start(&ns, "op-b").await;
    let done = support::wait_for(Duration::from_secs(90), || async {
        let s = sim.stats();
        ["c1", "c2", "c3"]
            .iter()
            .all(|n| s.connection(n).is_some_and(|c| c.counters.refresh_ok >= 5))
            .then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "all connections rotated 5 times: {:?}",
        sim.stats().totals
    );
    let s = sim.stats();
    assert_eq!(s.totals.old_refresh_token_used, 0);
    assert_eq!(s.totals.too_early, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn suspended_connection_only_keeps_its_refresh_token_alive() {
    let TestEnv { admin, ns, sim } = test_env(
        fast_sim(),
        serde_json::json!({"refreshTokenExpiresIn": "20s"}),
    )
    .await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "idle",
        serde_json::json!({"suspend": true}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    let (status, _, _) =
        wait_reason(&admin, &ns, "idle", "Suspended", Duration::from_secs(30)).await;
    assert_eq!(status, "False");
    let first = support::wait_for(Duration::from_secs(10), || async {
        sim.connection_stats("idle")
            .filter(|c| c.counters.refresh_ok == 1)
    })
    .await;
    assert!(first.is_some(), "one keep-alive refresh on import");
    // 6 s tokens would have been refreshed ~once per 5 s; suspended, nothing happens until
    // half of the 20 s refresh-token lifetime has passed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        sim.connection_stats("idle").map(|c| c.counters.refresh_ok),
        Some(1)
    );
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let st = api.get("idle").await.expect("conn").status.expect("status");
    let gap = st
        .next_refresh_time
        .expect("next")
        .duration_since(st.last_refresh_time.expect("last"));
    assert_eq!(
        gap.as_secs(),
        10,
        "keep-alive halfway through the refresh token's life"
    );
    let kept_alive = support::wait_for(Duration::from_secs(15), || async {
        sim.connection_stats("idle")
            .filter(|c| c.counters.refresh_ok == 2)
    })
    .await;
    assert!(
        kept_alive.is_some(),
        "keep-alive refresh before the refresh token expires"
    );
    assert_eq!(sim.stats().totals.refresh_token_expired, 0);
    op.stop().await;
}

#[tokio::test]
async fn private_ca_bundle_is_trusted_for_https_endpoints() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let sim = start_sim(SimConfig {
        tls: true,
        ..fast_sim()
    })
    .await;
    assert!(sim.base_url().starts_with("https://"));
    let pem = sim.cert_pem().expect("sim certificate").to_string();
    put_secret(
        &admin,
        &ns,
        "app-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    put_secret(
        &admin,
        &ns,
        "untrusted-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    put_client(
        &admin,
        &ns,
        "app",
        &sim,
        serde_json::json!({"allowInsecureHttp": false, "caBundle": pem}),
    )
    .await;
    put_client(
        &admin,
        &ns,
        "untrusted",
        &sim,
        serde_json::json!({"allowInsecureHttp": false}),
    )
    .await;
    bootstrap_connection(&admin, &ns, &sim, "trusted", serde_json::json!({})).await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "stranger",
        serde_json::json!({"clientRef": {"name": "untrusted"}}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "trusted").await;
    let (_, _, msg) = wait_reason(
        &admin,
        &ns,
        "stranger",
        "RefreshFailing",
        Duration::from_secs(30),
    )
    .await;
    assert!(msg.contains("connection failed"), "{msg}");
    assert_eq!(
        sim.connection_stats("stranger")
            .map(|c| c.counters.token_calls)
            .unwrap_or(0),
        0
    );
    op.stop().await;
}
