//! Refresh-token rules: body shape, refresh window, rotation, expiry, client auth,
//! error budget.

mod common;

use common::*;
use exact_sim::SimConfig;
use std::time::Duration;

#[tokio::test]
async fn success_body_has_exact_keys_and_string_expires_in() {
    let sim = start(SimConfig {
        access_token_lifetime: Duration::from_secs(600),
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let resp = refresh(&sim, &rt).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let text = resp.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["access_token", "expires_in", "refresh_token", "token_type"]
    );
    assert_eq!(
        body["expires_in"],
        serde_json::json!("600"),
        "string, not number"
    );
    assert_eq!(body["token_type"], "bearer");
    assert!(
        text.starts_with("{\"access_token\":"),
        "field order as Exact: {text}"
    );
    let access = body["access_token"].as_str().unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap();
    assert!(access.len() >= 32 && refresh_token.len() >= 32);
    assert_ne!(refresh_token, rt, "rotated");
    assert!(sim.access_token_valid(access));
    sim.shutdown().await;
}

#[tokio::test]
async fn too_early_refresh_is_refused_and_consumes_nothing() {
    let sim = start(config()).await; // access 2 s, window 1 s
    let rt0 = sim.seed_connection(CLIENT, "acme", None);
    let (access1, rt1) = refresh_ok(&sim, &rt0).await;

    let resp = refresh(&sim, &rt1).await;
    assert_eq!(
        resp.headers().get("Reason").map(|v| v.to_str().unwrap()),
        Some("TooEarlyToRefreshTokens")
    );
    let body = assert_oauth_error(resp, 400, "access_denied").await;
    assert_eq!(
        body["error_description"],
        "Rate limit exceeded: access_token not expired"
    );
    assert!(sim.access_token_valid(&access1), "access token untouched");

    // Inside the window the SAME refresh token still works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (access2, rt2) = refresh_ok(&sim, &rt1).await;
    assert_ne!(access2, access1);
    assert_ne!(rt2, rt1);

    let stats = sim.connection_stats("acme").unwrap();
    assert_eq!(stats.counters.too_early, 1);
    assert_eq!(stats.counters.refresh_ok, 2);
    assert_eq!(stats.counters.token_calls, 3);
    let min = stats.min_remaining_at_refresh_ms.unwrap();
    assert!(
        min <= 1000,
        "refreshed inside the 1 s window (or after expiry): {min}"
    );
    assert_eq!(stats.remaining_at_refresh_ms.len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn refresh_is_allowed_after_access_token_expired() {
    let sim = start(config()).await;
    let rt0 = sim.seed_connection(CLIENT, "late", None);
    let (access, rt1) = refresh_ok(&sim, &rt0).await;
    sim.advance_clock(Duration::from_secs(5));
    assert!(!sim.access_token_valid(&access), "expired");
    refresh_ok(&sim, &rt1).await;
    let min = sim
        .connection_stats("late")
        .unwrap()
        .min_remaining_at_refresh_ms;
    assert!(min.unwrap() < 0, "negative when late: {min:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn rotation_rejects_old_token_but_new_token_stays_valid() {
    let sim = start(config()).await;
    let rt0 = sim.seed_connection(CLIENT, "acme", None);
    let (_, rt1) = refresh_ok(&sim, &rt0).await;

    let body = assert_oauth_error(refresh(&sim, &rt0).await, 401, "unauthorized_client").await;
    assert_eq!(body["error_description"], "Old refresh token used.");

    sim.advance_clock(Duration::from_secs(2));
    refresh_ok(&sim, &rt1).await;
    assert_eq!(sim.stats().totals.old_refresh_token_used, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn unused_refresh_token_expires() {
    let sim = start(SimConfig {
        refresh_token_lifetime: Duration::from_secs(2),
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "stale", None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let body = assert_oauth_error(refresh(&sim, &rt).await, 400, "invalid_request").await;
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.starts_with("The refresh token expired at 20"),
        "{desc}"
    );
    assert!(desc.ends_with('Z'), "{desc}");
    assert_eq!(
        sim.connection_stats("stale")
            .unwrap()
            .counters
            .refresh_token_expired,
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_client_and_unknown_token_are_refused() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let wrong_secret = token_call(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", CLIENT),
            ("client_secret", "nope"),
        ],
    )
    .await
    .unwrap();
    assert_oauth_error(wrong_secret, 401, "invalid_client").await;
    let unknown_client = token_call(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "someone-else"),
            ("client_secret", SECRET),
        ],
    )
    .await
    .unwrap();
    assert_oauth_error(unknown_client, 401, "invalid_client").await;

    let body = assert_oauth_error(refresh(&sim, "never-issued").await, 400, "invalid_grant").await;
    assert_eq!(body["error_description"], "Invalid refresh token.");

    let no_grant = token_call(&sim, &[("client_id", CLIENT), ("client_secret", SECRET)])
        .await
        .unwrap();
    assert_oauth_error(no_grant, 400, "invalid_request").await;
    let bad_grant = token_call(
        &sim,
        &[
            ("grant_type", "password"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await
    .unwrap();
    assert_oauth_error(bad_grant, 400, "unsupported_grant_type").await;

    // Nothing was consumed by the failures.
    refresh_ok(&sim, &rt).await;
    let totals = sim.stats().totals;
    assert_eq!(totals.invalid_client, 2);
    assert_eq!(totals.invalid_grant, 1);
    assert_eq!(totals.invalid_request, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn error_budget_blocks_client_for_the_rest_of_the_hour() {
    let sim = start(SimConfig {
        error_limit_per_hour: 3,
        clients: vec![
            exact_sim::SimClient::new(CLIENT, SECRET),
            exact_sim::SimClient::new("other", "pw"),
        ],
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    for _ in 0..4 {
        assert_oauth_error(refresh(&sim, "garbage").await, 400, "invalid_grant").await;
    }
    let body = assert_oauth_error(refresh(&sim, &rt).await, 403, "access_denied").await;
    assert_eq!(
        body["error_description"],
        "Too many errors. Application blocked."
    );
    // Blocked even for otherwise fine requests, and the token was not consumed.
    assert_oauth_error(refresh(&sim, &rt).await, 403, "access_denied").await;
    assert_eq!(sim.stats().totals.blocked, 2);

    // Another client is unaffected.
    let other_rt = sim.seed_connection("other", "other-conn", None);
    let other = token_call(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", other_rt.as_str()),
            ("client_id", "other"),
            ("client_secret", "pw"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 200);

    sim.advance_clock(Duration::from_secs(3601));
    refresh_ok(&sim, &rt).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn at_the_limit_the_client_is_not_yet_blocked() {
    let sim = start(SimConfig {
        error_limit_per_hour: 3,
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    for _ in 0..3 {
        assert_oauth_error(refresh(&sim, "garbage").await, 400, "invalid_grant").await;
    }
    refresh_ok(&sim, &rt).await;
    assert_eq!(sim.stats().totals.blocked, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn seeded_connection_with_known_token_and_division() {
    let sim = start(config()).await;
    sim.seed_connection_with_token(CLIENT, "demo", "known-token-123", Some(42));
    let (access, _) = refresh_ok(&sim, "known-token-123").await;
    let me: serde_json::Value = http()
        .get(sim.me_url())
        .bearer_auth(&access)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 42);
    sim.shutdown().await;
}
