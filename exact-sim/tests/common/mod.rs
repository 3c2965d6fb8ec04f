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
