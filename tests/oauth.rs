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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    put_unauthorized_connection(&admin, &ns, "acme").await;
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
        start.contains(&format!("/oauth2/start/{ns}/acme?ticket=")),
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
    wait_published(&admin, &ns, "acme").await;
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
    put_unauthorized_connection(&admin, &ns, "acme").await;
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
    put_unauthorized_connection(&admin, &ns, "acme").await;
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
    put_unauthorized_connection(&admin, &ns, "acme").await;
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
    wait_published(&admin, &ns, "acme").await;
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("secret");
    assert!(sim.access_token_valid(&data["access_token"]));
    op.stop().await;
}

/// Headers that keep codes and states out of caches, Referers and frames.
fn assert_hardened(resp: &reqwest::Response, what: &str) {
    let h = resp.headers();
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(get("cache-control"), "no-store", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
}

/// Everything an outsider could change, read at once.
async fn snapshot(
    admin: &Client,
    ns: &str,
    name: &str,
) -> (Option<String>, Option<String>, String) {
    let state = secret_data(admin, ns, &format!("{name}-exact-state"))
        .await
        .and_then(|d| d.get("refresh_token").cloned());
    let token = secret_data(admin, ns, &format!("{name}-exact-token"))
        .await
        .and_then(|d| d.get("access_token").cloned());
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), ns);
    let ready = api
        .get(name)
        .await
        .ok()
        .and_then(|c| c.status)
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| format!("{} {} {}", c.status, c.reason, c.last_transition_time))
        .unwrap_or_default();
    (state, token, ready)
}

/// Exchanges `code` at the simulator directly: proves whether it is still unspent.
async fn code_still_unspent(sim: &Sim, code: &str, redirect_uri: &str) -> bool {
    reqwest::Client::new()
        .post(sim.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", "app-1"),
            ("client_secret", "secret-1"),
        ])
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

fn code_of(url: &str) -> String {
    let u = url::Url::parse(url).expect("url");
    u.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code")
}

#[tokio::test]
async fn an_outsider_cannot_start_replace_or_hijack_a_ready_connection() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
    let base = op.oauth_url.clone().expect("url");
    let spec = serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s"});
    put_connection(&admin, &ns, "acme", spec.clone()).await;
    put_connection(&admin, &ns, "beta", spec).await;

    // acme: the legitimate one-click flow through the status link.
    let link = authorization_url(&admin, &ns, "acme").await;
    let page = reqwest::get(&link).await.expect("one click");
    assert_eq!(page.status().as_u16(), 200);
    wait_published(&admin, &ns, "acme").await;

    // beta: an outsider got hold of beta's link while it waited and went as far as Exact;
    // meanwhile beta became Ready another way (a bootstrap refresh token).
    let beta_link = authorization_url(&admin, &ns, "beta").await;
    let outsider_callback = callback_url(&beta_link).await;
    let boot = sim.seed_connection("app-1", "beta-boot", None);
    put_secret(&admin, &ns, "beta-bootstrap", &[("refresh-token", &boot)]).await;
    put_connection(
        &admin,
        &ns,
        "beta",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s",
            "refreshTokenSecretRef": {"name": "beta-bootstrap", "key": "refresh-token"}}),
    )
    .await;
    wait_published(&admin, &ns, "beta").await;
    let acme_before = snapshot(&admin, &ns, "acme").await;
    let beta_before = snapshot(&admin, &ns, "beta").await;
    let codes_before = (sim.stats().totals.code_ok, sim.stats().totals.invalid_grant);

    let http = no_redirects();
    // 1. The bare start URL of a Ready connection (names are easy to guess).
    let bare = http
        .get(format!("{base}/oauth2/start/{ns}/acme"))
        .send()
        .await
        .expect("bare start");
    assert_eq!(bare.status().as_u16(), 403);
    assert_hardened(&bare, "bare start");
    let body = bare.text().await.expect("body");
    assert!(body.contains("kubectl exact authorize acme"), "{body}");
    // 2. acme's own link, already used by the legitimate consent.
    let replay = http.get(&link).send().await.expect("replayed ticket");
    assert_eq!(replay.status().as_u16(), 400);
    assert!(replay.text().await.expect("body").contains("already used"));
    // 3. beta's link, issued while it waited: beta is Ready now.
    let late = http.get(&beta_link).send().await.expect("late ticket");
    assert_eq!(late.status().as_u16(), 409);
    assert!(late
        .text()
        .await
        .expect("body")
        .contains("authorized meanwhile"));
    // 4. The consent the outsider completed at Exact (another Exact user) comes back.
    let cb = http.get(&outsider_callback).send().await.expect("callback");
    assert_eq!(cb.status().as_u16(), 409);
    assert_hardened(&cb, "refused callback");

    assert_eq!(
        (sim.stats().totals.code_ok, sim.stats().totals.invalid_grant),
        codes_before,
        "no token call with the outsider's code"
    );
    // Compare before the direct exchange below, which would not touch the cluster anyway.
    assert_eq!(
        snapshot(&admin, &ns, "acme").await,
        acme_before,
        "acme unchanged"
    );
    let beta_after = snapshot(&admin, &ns, "beta").await;
    assert_eq!(beta_after.0, beta_before.0, "beta's stored chain unchanged");
    assert_eq!(
        beta_after.2, beta_before.2,
        "beta's Ready condition unchanged"
    );
    let redirect = format!("{base}/oauth2/callback");
    assert!(
        code_still_unspent(&sim, &code_of(&outsider_callback), &redirect).await,
        "the refused consent's code was never sent to Exact"
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|r| r == "AuthorizationRefused"));
    op.stop().await;
}

#[tokio::test]
async fn forced_reauthorization_replaces_the_chain_and_names_the_new_user() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
    put_unauthorized_connection(&admin, &ns, "acme").await;
    let first = authorization_url(&admin, &ns, "acme").await;
    assert_eq!(
        reqwest::get(&first)
            .await
            .expect("consent")
            .status()
            .as_u16(),
        200
    );
    wait_published(&admin, &ns, "acme").await;
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let user_a = support::wait_for(Duration::from_secs(30), || async {
        api.get("acme").await.ok()?.status?.exact_user_id
    })
    .await
    .expect("status.exactUserId after the first consent");
    let chain_a = snapshot(&admin, &ns, "acme").await.0;

    // Someone with patch rights asks for a new consent (what `authorize --force` does).
    let requested = jiff::Timestamp::now().to_string();
    api.patch(
        "acme",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations":
            {"exact-operator.io/reauthorize-requested-at": requested}}})),
    )
    .await
    .expect("annotate");
    let second = authorization_url(&admin, &ns, "acme").await;
    assert_ne!(second, first);
    assert_eq!(
        reqwest::get(&second)
            .await
            .expect("re-consent")
            .status()
            .as_u16(),
        200
    );
    let status = support::wait_for(Duration::from_secs(30), || async {
        let s = api.get("acme").await.ok()?.status?;
        (s.exact_user_id.as_deref() != Some(user_a.as_str()) && s.authorization_url.is_none())
            .then_some(s)
    })
    .await
    .expect("the new user in status and the link gone");
    assert_eq!(
        status.previous_exact_user_id.as_deref(),
        Some(user_a.as_str())
    );
    assert_ne!(
        snapshot(&admin, &ns, "acme").await.0,
        chain_a,
        "a new chain"
    );
    assert!(event_reasons(&admin, &ns)
        .await
        .iter()
        .any(|r| r == "ExactUserChanged"));
    // The handled request opens nothing again.
    let replay = no_redirects().get(&second).send().await.expect("replay");
    assert_eq!(replay.status().as_u16(), 400);
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("secret");
    assert!(sim.access_token_valid(&data["access_token"]));
    op.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let (admin, ns, sim, op) = setup(Duration::from_secs(600)).await;
    let base = op.oauth_url.clone().expect("url");
    put_unauthorized_connection(&admin, &ns, "acme").await;
    let link = authorization_url(&admin, &ns, "acme").await;
    let callback = callback_url(&link).await;
    let state = state_of(&callback);
    let code = code_of(&callback);
    let ticket = exact_operator::consent::ticket_of(&link)
        .expect("ticket")
        .to_string();
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let uid = api
        .get("acme")
        .await
        .expect("conn")
        .metadata
        .uid
        .expect("uid");
    let foreign = exact_operator::consent::issue_ticket(
        &exact_operator::consent::SigningKey::new(b"another operator's key, 32 bytes".to_vec()),
        &ns,
        "acme",
        &uid,
        exact_operator::consent::Grounds::Consent,
        jiff::Timestamp::now(),
        Duration::from_secs(600),
    );
    let start = format!("{base}/oauth2/start/{ns}/acme");
    let cb = format!("{base}/oauth2/callback");
    let get = reqwest::Method::GET;
    let cases: Vec<(reqwest::Method, String, u16, &str)> = vec![
        (get.clone(), start.clone(), 403, "no start ticket"),
        (
            get.clone(),
            format!("{start}?ticket={foreign}"),
            403,
            "not issued by this operator",
        ),
        (
            get.clone(),
            format!("{start}?ticket=garbage"),
            403,
            "not issued by this operator",
        ),
        (
            get.clone(),
            format!("{start}?ticket={ticket}&ticket={ticket}"),
            400,
            "more than once",
        ),
        (get.clone(), format!("{start}?ticket=%FF%FE"), 400, "UTF-8"),
        (
            get.clone(),
            format!("{base}/oauth2/start/{ns}/other?ticket={ticket}"),
            403,
            "another connection",
        ),
        (
            get.clone(),
            format!("{base}/oauth2/start/{ns}/UPPER%2Fcase?ticket={ticket}"),
            404,
            "no such connection",
        ),
        (
            get.clone(),
            format!("{start}?ticket={}", "a".repeat(5000)),
            414,
            "too long",
        ),
        (
            get.clone(),
            format!("{base}/oauth2/start/{}", "x/".repeat(3000)),
            414,
            "too long",
        ),
        (reqwest::Method::HEAD, link.clone(), 405, ""),
        (reqwest::Method::POST, link.clone(), 405, "only GET"),
        (reqwest::Method::POST, callback.clone(), 405, "only GET"),
        (
            get.clone(),
            format!("{cb}?state={state}&state={state}&code={code}"),
            400,
            "more than once",
        ),
        (
            get.clone(),
            format!("{cb}?state={state}&code=%C3%28"),
            400,
            "UTF-8",
        ),
        (
            get.clone(),
            format!("{cb}?state={state}&code={code}&error=access_denied"),
            400,
            "both a code and an error",
        ),
        (
            get.clone(),
            format!("{cb}?state={ticket}&code={code}"),
            400,
            "state is invalid",
        ),
    ];
    let http = no_redirects();
    for (method, url, status, expected) in &cases {
        let resp = http
            .request(method.clone(), url)
            .send()
            .await
            .expect("request");
        let what = format!("{method} {}", &url[..url.len().min(120)]);
        assert_eq!(resp.status().as_u16(), *status, "{what}");
        assert_hardened(&resp, &what);
        let body = resp.text().await.expect("body");
        assert!(body.contains(expected), "{what}: {body}");
    }
    assert_eq!(sim.stats().totals.token_calls, 0, "no token call");
    assert!(
        secret_data(&admin, &ns, "acme-exact-state").await.is_none(),
        "nothing written"
    );

    // A ticket for a connection that was deleted and re-created opens nothing.
    api.delete("acme", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for(Duration::from_secs(10), || async {
        api.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await;
    put_unauthorized_connection(&admin, &ns, "acme").await;
    let resp = http.get(&link).send().await.expect("start");
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp
        .text()
        .await
        .expect("body")
        .contains("no longer exists"));
    assert_eq!(sim.stats().totals.token_calls, 0);
    // The legitimate link of the new connection still works in one click.
    let fresh = support::wait_for(Duration::from_secs(30), || async {
        let url = api.get("acme").await.ok()?.status?.authorization_url?;
        (url != link).then_some(url)
    })
    .await
    .expect("a new link");
    assert_eq!(
        reqwest::get(&fresh)
            .await
            .expect("consent")
            .status()
            .as_u16(),
        200
    );
    wait_published(&admin, &ns, "acme").await;
    op.stop().await;
}

#[tokio::test]
async fn start_and_callback_are_rate_limited_per_client_ip() {
    let cfg = SimConfig {
        auto_consent: true,
        ..fast_sim()
    };
    let TestEnv { admin, ns, sim } = test_env(cfg, serde_json::json!({})).await;
    let limit = exact_operator::oauth::guard::RateLimit {
        per_minute: std::num::NonZeroU32::new(3).expect("non-zero"),
        burst: std::num::NonZeroU32::new(3).expect("non-zero"),
        client_ip_header: None,
    };
    let op = Operator::start_with_oauth_limit(&ns, "op", Duration::from_secs(600), &limit).await;
    let base = op.oauth_url.clone().expect("url");
    let http = no_redirects();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = http
            .get(format!("{base}/oauth2/start/{ns}/acme"))
            .send()
            .await
            .expect("start");
        if resp.status().as_u16() == 429 {
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("60")
            );
            assert_hardened(&resp, "429");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, vec![403, 403, 403, 429, 429]);
    let cb = http
        .get(format!("{base}/oauth2/callback?state=x&code=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(cb.status().as_u16(), 429, "one budget per client IP");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &op.metrics.registry).expect("encode");
    assert!(
        text.contains("exact_operator_oauth_rate_limited_total{route=\"start\"} 2"),
        "{text}"
    );
    assert!(text.contains("exact_operator_oauth_rate_limited_total{route=\"callback\"} 1"));
    assert_eq!(sim.stats().totals.token_calls, 0);
    drop(admin);
    op.stop().await;
}
