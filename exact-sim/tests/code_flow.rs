//! Authorization-code flow: consent, redirect encoding, single use, expiry, mismatch.

mod common;

use common::*;
use exact_sim::{Sim, SimClient, SimConfig};
use std::time::Duration;

fn auto() -> SimConfig {
    SimConfig {
        auto_consent: true,
        ..config()
    }
}

/// Requests authorization and returns the raw `Location` header.
async fn authorize(sim: &Sim, redirect: &str, state: Option<&str>) -> reqwest::Response {
    let mut q = vec![
        ("client_id", CLIENT),
        ("redirect_uri", redirect),
        ("response_type", "code"),
    ];
    if let Some(s) = state {
        q.push(("state", s));
    }
    http().get(sim.auth_url()).query(&q).send().await.unwrap()
}

fn location(resp: &reqwest::Response) -> String {
    assert_eq!(resp.status(), 302, "expected a redirect");
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// Decoded query parameter of a URL.
fn param(url: &str, key: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn exchange(sim: &Sim, code: &str, redirect: &str) -> reqwest::Response {
    token_call(
        sim,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn auto_consent_redirects_with_encoded_code_and_state() {
    let sim = start(auto()).await;
    let loc = location(&authorize(&sim, REDIRECT, Some("xyz 1/2")).await);
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let raw_code = loc
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(raw_code.contains("%21"), "'!' percent-encoded: {loc}");
    assert!(!raw_code.contains('!'));
    let code = param(&loc, "code").unwrap();
    assert!(code.starts_with("stamp") && code.contains('!'), "{code}");
    assert_eq!(param(&loc, "state").as_deref(), Some("xyz 1/2"));

    let (status, body) = status_json(exchange(&sim, &code, REDIRECT).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], "2");
    let access = body["access_token"].as_str().unwrap();
    assert!(sim.access_token_valid(access));

    let stats = sim.stats();
    assert_eq!(stats.totals.code_ok, 1);
    let conn = stats
        .connection(&format!("{CLIENT}-1"))
        .expect("named after client");
    assert_eq!(conn.counters.code_ok, 1);

    // The refresh token from the code flow refreshes normally once due.
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    sim.advance_clock(Duration::from_secs(2));
    refresh_ok(&sim, &rt).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn state_is_optional_and_names_count_up() {
    let sim = start(auto()).await;
    let loc = location(&authorize(&sim, REDIRECT, None).await);
    assert!(param(&loc, "state").is_none());
    let loc2 = location(&authorize(&sim, REDIRECT, None).await);
    for l in [&loc, &loc2] {
        let code = param(l, "code").unwrap();
        assert_eq!(exchange(&sim, &code, REDIRECT).await.status(), 200);
    }
    let names: Vec<String> = sim.stats().connections.keys().cloned().collect();
    assert_eq!(names, [format!("{CLIENT}-1"), format!("{CLIENT}-2")]);
    sim.shutdown().await;
}

#[tokio::test]
async fn code_is_single_use() {
    let sim = start(auto()).await;
    let code = param(&location(&authorize(&sim, REDIRECT, None).await), "code").unwrap();
    assert_eq!(exchange(&sim, &code, REDIRECT).await.status(), 200);
    assert_oauth_error(exchange(&sim, &code, REDIRECT).await, 400, "invalid_grant").await;
    assert_oauth_error(
        exchange(&sim, "stamp10!bogus", REDIRECT).await,
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(sim.stats().totals.invalid_grant, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn code_expires() {
    let sim = start(SimConfig {
        code_lifetime: Duration::from_secs(1),
        ..auto()
    })
    .await;
    let code = param(&location(&authorize(&sim, REDIRECT, None).await), "code").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body =
        assert_oauth_error(exchange(&sim, &code, REDIRECT).await, 400, "invalid_grant").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    sim.shutdown().await;
}

#[tokio::test]
async fn redirect_uri_must_match_at_exchange() {
    let sim = start(auto()).await;
    let code = param(&location(&authorize(&sim, REDIRECT, None).await), "code").unwrap();
    let body = assert_oauth_error(
        exchange(&sim, &code, "http://localhost:9999/other").await,
        400,
        "invalid_grant",
    )
    .await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("Redirect"));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_authorization_requests_get_400() {
    let registered = SimClient::new(CLIENT, SECRET).with_redirect(REDIRECT);
    let sim = start(SimConfig {
        clients: vec![registered],
        ..auto()
    })
    .await;
    // Registered redirect works.
    assert_eq!(authorize(&sim, REDIRECT, None).await.status(), 302);
    // Unregistered redirect.
    let r = authorize(&sim, "http://evil.example/cb", None).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("redirect_uri"));
    // Unknown client.
    let r = http()
        .get(sim.auth_url())
        .query(&[
            ("client_id", "nobody"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Wrong response_type.
    let r = http()
        .get(sim.auth_url())
        .query(&[
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("response_type", "token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Garbage query.
    let r = http()
        .get(format!("{}?%zz=%%&client_id", sim.auth_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn consent_page_then_approve_redirects_with_code() {
    let sim = start(config()).await; // no auto-consent
    let resp = authorize(&sim, REDIRECT, Some("st<&>")).await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/api/oauth2/auth/approve\""));
    assert!(html.contains("Approve"));
    assert!(
        html.contains("value=\"st&lt;&amp;&gt;\""),
        "state escaped: {html}"
    );
    assert!(
        sim.stats().connections.is_empty(),
        "no connection before approval"
    );

    let approve = |decision: &'static str| {
        http()
            .post(format!("{}/api/oauth2/auth/approve", sim.base_url()))
            .form(&[
                ("client_id", CLIENT),
                ("redirect_uri", REDIRECT),
                ("response_type", "code"),
                ("state", "st<&>"),
                ("decision", decision),
            ])
            .send()
    };
    let loc = location(&approve("approve").await.unwrap());
    assert_eq!(param(&loc, "state").as_deref(), Some("st<&>"));
    let code = param(&loc, "code").unwrap();
    assert!(loc.contains("%21"));
    assert_eq!(exchange(&sim, &code, REDIRECT).await.status(), 200);

    let denied = location(&approve("deny").await.unwrap());
    assert_eq!(param(&denied, "error").as_deref(), Some("access_denied"));
    assert!(param(&denied, "code").is_none());
    sim.shutdown().await;
}
