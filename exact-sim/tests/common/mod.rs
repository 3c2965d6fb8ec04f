//! Shared helpers for the integration tests.
#![allow(dead_code)]

use exact_sim::{Sim, SimClient, SimConfig};
use serde_json::Value;
use std::time::Duration;

pub const CLIENT: &str = "client-1";
pub const SECRET: &str = "secret-1";
pub const REDIRECT: &str = "http://localhost:9999/callback";

/// A config with one client (no registered redirects) and compressed lifetimes.
pub fn config() -> SimConfig {
    SimConfig {
        access_token_lifetime: Duration::from_secs(2),
        refresh_window: Duration::from_secs(1),
        clients: vec![SimClient::new(CLIENT, SECRET)],
        ..SimConfig::default()
    }
}

pub async fn start(cfg: SimConfig) -> Sim {
    Sim::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim starts")
}

/// A client that does not follow redirects and does not pool connections.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// POSTs a form to the token endpoint.
pub async fn token_call(sim: &Sim, form: &[(&str, &str)]) -> reqwest::Result<reqwest::Response> {
    http().post(sim.token_url()).form(form).send().await
}

/// Refresh with the default client credentials.
pub async fn refresh(sim: &Sim, token: &str) -> reqwest::Response {
    token_call(
        sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await
    .expect("token call answered")
}

/// Status and parsed JSON body.
pub async fn status_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// Refreshes successfully and returns (access_token, refresh_token).
pub async fn refresh_ok(sim: &Sim, token: &str) -> (String, String) {
    let (status, body) = status_json(refresh(sim, token).await).await;
    assert_eq!(status, 200, "refresh should succeed: {body}");
    (
        body["access_token"].as_str().expect("access").to_string(),
        body["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

/// Asserts an OAuth error answer.
pub async fn assert_oauth_error(resp: reqwest::Response, status: u16, error: &str) -> Value {
    let (s, body) = status_json(resp).await;
    assert_eq!(s, status, "unexpected status, body {body}");
    assert_eq!(body["error"], error, "body {body}");
    body
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 2.3.1 applies
/// it to the client id and secret before Basic's base64).
pub fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// POSTs a form to the token endpoint with the client credentials in HTTP Basic,
/// form-encoded first as RFC 6749 2.3.1 says.
pub async fn token_call_basic(
    sim: &Sim,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http()
        .post(sim.token_url())
        .basic_auth(form_encode(id), Some(form_encode(secret)))
        .form(form)
        .send()
        .await
        .expect("token call answered")
}

/// Auto-consents (the config must have `auto_consent`) and returns the decoded code.
pub async fn consent_code(sim: &Sim, client: &str, user: Option<&str>) -> String {
    let mut q = vec![
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
    ];
    if let Some(u) = user {
        q.push(("user", u));
    }
    let resp = http()
        .get(sim.auth_url())
        .query(&q)
        .send()
        .await
        .expect("auth");
    assert_eq!(resp.status(), 302, "expected a redirect");
    let loc = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    url::Url::parse(&loc)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code")
}

/// Exchanges a code with the credentials in the body; returns (access, refresh).
pub async fn exchange_ok(sim: &Sim, code: &str) -> (String, String) {
    let resp = token_call(
        sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await
    .expect("answered");
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "exchange should succeed: {body}");
    (
        body["access_token"].as_str().expect("access").to_string(),
        body["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

/// GET with a bearer token and `Accept: application/json`.
pub async fn get_json(url: &str, token: &str) -> reqwest::Response {
    http()
        .get(url)
        .bearer_auth(token)
        .header("Accept", "application/json")
        .send()
        .await
        .expect("answered")
}
