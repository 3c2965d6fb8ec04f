//! Client authentication by HTTP Basic (RFC 6749 2.3.1) next to the form body, and the
//! `!`-bearing token shapes.

mod common;

use common::*;
use exact_sim::{SimClient, SimConfig};
use std::time::Duration;

/// A secret with every character that form-encoding changes, plus ':' which would
/// split the Basic credentials if it were not encoded.
const HARD_ID: &str = "id:with+odd&chars";
const HARD_SECRET: &str = "s3cr:et+with %&=!*";

fn hard_config() -> SimConfig {
    SimConfig {
        auto_consent: true,
        clients: vec![
            SimClient::new(CLIENT, SECRET),
            SimClient::new(HARD_ID, HARD_SECRET),
            SimClient::new("plus", "a+b"),
        ],
        ..config()
    }
}

#[tokio::test]
async fn basic_auth_works_for_refresh_and_code_exchange() {
    let sim = start(hard_config()).await;
    let rt = sim.seed_connection(HARD_ID, "hard", None);
    let resp = token_call_basic(
        &sim,
        HARD_ID,
        HARD_SECRET,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");

    let code = consent_code(&sim, HARD_ID, None).await;
    let resp = token_call_basic(
        &sim,
        HARD_ID,
        HARD_SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    let totals = sim.stats().totals;
    assert_eq!((totals.refresh_ok, totals.code_ok), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn basic_credentials_must_be_form_encoded_first() {
    let sim = start(hard_config()).await;
    let rt = sim.seed_connection("plus", "plus", None);
    // reqwest's basic_auth alone does not form-encode: "+" then decodes to a space and
    // the secret no longer matches, as on any RFC-following server.
    let resp = http()
        .post(sim.token_url())
        .basic_auth("plus", Some("a+b"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = token_call_basic(
        &sim,
        "plus",
        "a+b",
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(resp.status(), 200, "encoded '+' is %2B");
    // A plain id and secret (no special characters) need no encoding at all.
    let rt2 = sim.seed_connection(CLIENT, "plain", None);
    let resp = http()
        .post(sim.token_url())
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt2)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_basic_secret_is_invalid_client_with_a_challenge() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let resp = token_call_basic(
        &sim,
        CLIENT,
        "wrong",
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    assert_oauth_error(resp, 401, "invalid_client").await;

    let malformed = http()
        .post(sim.token_url())
        .header("Authorization", "Basic !!!not-base64")
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(malformed, 401, "invalid_client").await;
    // Nothing consumed.
    refresh_ok(&sim, &rt).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn basic_and_body_must_agree() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    // The same credentials in both places: accepted.
    let same = token_call_basic(
        &sim,
        CLIENT,
        SECRET,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await;
    let (status, body) = status_json(same).await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    sim.advance_clock(Duration::from_secs(2));

    // Differing secret or id: refused as ambiguous, nothing consumed.
    for (id, secret) in [(CLIENT, "other"), ("other-client", SECRET)] {
        let resp = token_call_basic(
            &sim,
            CLIENT,
            SECRET,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("client_id", id),
                ("client_secret", secret),
            ],
        )
        .await;
        assert_oauth_error(resp, 400, "invalid_request").await;
    }
    refresh_ok(&sim, &rt).await;
    assert_eq!(sim.stats().totals.invalid_request, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn basic_and_body_share_one_error_budget() {
    let sim = start(SimConfig {
        error_limit_per_hour: 3,
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    for i in 0..4 {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", "garbage"),
        ];
        let resp = if i % 2 == 0 {
            token_call_basic(&sim, CLIENT, SECRET, &form).await
        } else {
            refresh(&sim, "garbage").await
        };
        assert_oauth_error(resp, 400, "invalid_grant").await;
    }
    let resp = token_call_basic(
        &sim,
        CLIENT,
        SECRET,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_oauth_error(resp, 403, "access_denied").await;
    assert_oauth_error(refresh(&sim, &rt).await, 403, "access_denied").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_are_shaped_like_exacts_and_survive_form_encoding() {
    let sim = start(config()).await;
    let rt0 = sim.seed_connection(CLIENT, "acme", None);
    assert!(rt0.starts_with("stamp") && rt0.contains('!'), "{rt0}");
    let (access, rt1) = refresh_ok(&sim, &rt0).await;
    for t in [&access, &rt1] {
        assert!(t.starts_with("stamp") && t.contains('!'), "{t}");
        assert!(t.len() >= 40, "{t}");
    }
    // The form encodes '!' as %21; the server must decode it exactly once.
    let encoded = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={CLIENT}&client_secret={SECRET}",
        form_encode(&rt1)
    );
    assert!(encoded.contains("%21"));
    sim.advance_clock(Duration::from_secs(2));
    let resp = http()
        .post(sim.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(encoded)
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    // A '!' access token works as a bearer token.
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(get_json(&sim.me_url(), access).await.status(), 200);
    // A literal '!' (legal in a form body) names the same token.
    let rt2 = body["refresh_token"].as_str().unwrap();
    sim.advance_clock(Duration::from_secs(2));
    let raw = format!(
        "grant_type=refresh_token&refresh_token={rt2}&client_id={CLIENT}&client_secret={SECRET}"
    );
    let resp = http()
        .post(sim.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sim.shutdown().await;
}
