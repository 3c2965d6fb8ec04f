//! The operator-served authorization-code flow, end to end through exact-sim (auto-consent)
//! against the real control plane, and every way a callback can be bad.

mod harness;
mod support;

use exact_operator::crd::ExactConnection;
use exact_sim::{Sim, SimConfig};
use harness::*;
use kube::api::{Api, DeleteParams};
use kube::Client;
use std::time::Duration;

async fn setup(state_ttl: Duration) -> (Client, String, Sim, Operator) {
    let cfg = SimConfig {
        auto_consent: true,
        ..fast_sim()
    };
    let TestEnv { admin, ns, sim } = test_env(cfg, serde_json::json!({})).await;
    let op = Operator::start_with_oauth(&ns, "op", state_ttl).await;
    let callback = format!(
        "{}/oauth2/callback",
        op.oauth_url.clone().expect("oauth url")
    );
    put_client(
        &admin,
        &ns,
        "app",
        &sim,
        serde_json::json!({"redirectUri": callback}),
    )
    .await;
    (admin, ns, sim, op)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn authorization_url(admin: &Client, ns: &str, name: &str) -> String {
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), ns);
    support::wait_for(Duration::from_secs(30), || async {
        api.get(name).await.ok()?.status?.authorization_url
    })
    .await
    .expect("status.authorizationUrl")
}

/// Follows start -> Exact (sim) by hand and returns the callback URL Exact redirected to.
async fn callback_url(start: &str) -> String {
    let http = no_redirects();
    let to_exact = http.get(start).send().await.expect("start");
    assert_eq!(to_exact.status().as_u16(), 302);
    let exact = to_exact.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        exact.contains("response_type=code") && exact.contains("state="),
        "{exact}"
    );
    let back = http.get(&exact).send().await.expect("sim auth");
    assert_eq!(back.status().as_u16(), 302);
    back.headers()["location"]
        .to_str()
        .expect("location")
        .to_string()
}

fn state_of(url: &str) -> String {
    let u = url::Url::parse(url).expect("url");
    u.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state")
}

async fn event_reasons(admin: &Client, ns: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("events");
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

#[tokio::test]
async fn one_click_authorization_then_replay_is_refused() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"}),
    )
    .await;
    let (status, _, _) = wait_reason(
        &admin,
        &ns,
        "acme",
        "AwaitingAuthorization",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(status, "False");
    let start = authorization_url(&admin, &ns, "acme").await;
    assert!(
        start.ends_with(&format!("/oauth2/start/{ns}/acme")),
        "{start}"
    );

    let callback = callback_url(&start).await;
    assert!(
        callback.contains("code=") && callback.contains("%21"),
        "code arrives percent-encoded: {callback}"
    );
    let page = reqwest::get(&callback).await.expect("callback");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("body");
    assert!(
        html.contains(&format!("{ns}/acme")) && html.contains("authorized"),
        "{html}"
    );
    wait_reason(
        &admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(30),
    )
    .await;
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert!(
        !html.contains(&data["access_token"]),
        "the page never shows a token"
    );
    assert!(sim.access_token_valid(&data["access_token"]));
    assert_eq!(
        sim.stats().totals.code_ok,
        1,
        "code decoded once and exchanged once"
    );
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let st = api.get("acme").await.expect("conn").status.expect("status");
    assert_eq!(
        st.authorization_url, None,
        "no consent link once authorized"
    );

    // Replaying the same callback: refused, nothing spent, the chain unharmed.
    let state_before = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state");
    let replay = reqwest::get(&callback).await.expect("replay");
    assert_eq!(replay.status().as_u16(), 400);
    assert!(replay.text().await.expect("body").contains("already used"));
    let state_after = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state");
    assert_eq!(
        state_before.get("refresh_token"),
        state_after.get("refresh_token")
    );
    assert_eq!(sim.stats().totals.code_ok, 1);
    assert_eq!(
        sim.stats().totals.invalid_grant,
        0,
        "a replayed state never reaches Exact"
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|r| r == "Authorized"));
    op.stop().await;
}

#[tokio::test]
async fn bad_callbacks_change_nothing() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"}),
    )
    .await;
    let start = authorization_url(&admin, &ns, "acme").await;
    let base = op.oauth_url.clone().expect("url");
    let callback = callback_url(&start).await;
    let state = state_of(&callback);

    let cases = [
        (format!("{base}/oauth2/callback?code=abc"), "no state"),
        (format!("{base}/oauth2/callback?code=abc&state=x{state}"), "tampered"),
        (format!("{base}/oauth2/callback?state={state}"), "no authorization code"),
        (
            format!("{base}/oauth2/callback?state={state}&error=access_denied&error_description=User%20denied"),
            "access_denied",
        ),
    ];
    for (url, expected) in cases {
        let resp = reqwest::get(&url).await.expect("callback");
        assert_eq!(resp.status().as_u16(), 400, "{expected}");
        let body = resp.text().await.expect("body");
        assert!(body.contains(expected), "{expected}: {body}");
    }
    assert!(
        secret_data(&admin, &ns, "acme-exact-state").await.is_none(),
        "no state written"
    );
    assert_eq!(sim.stats().totals.token_calls, 0, "no token call");
    assert_eq!(
        ready_of(&admin, &ns, "acme").await.map(|r| r.1),
        Some("AwaitingAuthorization".into())
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|r| r == "AuthorizationFailed"));

    // A state for a connection that was deleted and recreated is foreign.
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    api.delete("acme", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for(Duration::from_secs(10), || async {
        api.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"}),
    )
    .await;
    let resp = reqwest::get(&callback).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp
        .text()
        .await
        .expect("body")
        .contains("no longer exists"));
    assert_eq!(sim.stats().totals.token_calls, 0);
    op.stop().await;
}

#[tokio::test]
async fn expired_state_is_refused() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(1)).await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"}),
    )
    .await;
    let start = authorization_url(&admin, &ns, "acme").await;
    let callback = callback_url(&start).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = reqwest::get(&callback).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("expired"));
    assert_eq!(sim.stats().totals.token_calls, 0);
    op.stop().await;
}

#[tokio::test]
async fn dead_chain_shows_the_consent_link_again_and_reconsent_recovers() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
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
    wait_reason(
        &admin,
        &ns,
        "acme",
        "ReauthorizationRequired",
        Duration::from_secs(30),
    )
    .await;
    let start = authorization_url(&admin, &ns, "acme").await;
    let page = reqwest::get(&start).await.expect("follow the whole flow");
    assert_eq!(page.status().as_u16(), 200);
    wait_reason(
        &admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(30),
    )
    .await;
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("secret");
    assert!(sim.access_token_valid(&data["access_token"]));
    op.stop().await;
}
