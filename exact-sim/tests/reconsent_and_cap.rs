//! One grant per user per app (a new consent revokes the older chain) and the daily
//! token-call cap per (user, client), with their introspection.

mod common;

use common::*;
use exact_sim::{SimClient, SimConfig, SimDivision, SimUser};
use serde_json::Value;
use std::time::Duration;

fn cfg() -> SimConfig {
    SimConfig {
        auto_consent: true,
        clients: vec![
            SimClient::new(CLIENT, SECRET),
            SimClient::new("app-2", "pw-2"),
        ],
        ..config()
    }
    .with_user(SimUser::new("alice").with_division(SimDivision::new(100)))
}

async fn users(sim: &exact_sim::Sim) -> Value {
    http()
        .get(format!("{}/_sim/users", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_consent_of_the_same_user_revokes_the_older_chain() {
    let sim = start(cfg()).await;
    let code1 = consent_code(&sim, CLIENT, Some("alice")).await;
    let (access1, rt1) = exchange_ok(&sim, &code1).await;
    let code2 = consent_code(&sim, CLIENT, Some("alice")).await;
    // Consent alone changes nothing; the exchange replaces the grant.
    assert!(sim.access_token_valid(&access1));
    let (access2, rt2) = exchange_ok(&sim, &code2).await;

    sim.advance_clock(Duration::from_secs(2));
    let body = assert_oauth_error(refresh(&sim, &rt1).await, 400, "invalid_grant").await;
    assert_eq!(body["error_description"], "Invalid refresh token.");
    refresh_ok(&sim, &rt2).await;
    assert!(
        !sim.access_token_valid(&access1),
        "old access token revoked too"
    );
    let _ = access2;

    let old = format!("{CLIENT}-1");
    assert_eq!(sim.connection_revoked(&old), Some(true));
    assert_eq!(sim.connection_revoked(&format!("{CLIENT}-2")), Some(false));
    let c = sim.connection_stats(&old).unwrap().counters;
    assert_eq!((c.chains_revoked, c.revoked_chain_used), (1, 1));
    assert_eq!(sim.stats().totals.chains_revoked, 1);

    let u = users(&sim).await;
    let alice = &u["users"][0];
    assert_eq!(alice["user_name"], "alice");
    let chains = alice["clients"][CLIENT]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(chains[0]["revoked"], true);
    assert_eq!(chains[1]["revoked"], false);
    sim.shutdown().await;
}

#[tokio::test]
async fn other_users_other_clients_and_anonymous_consents_are_untouched() {
    let sim = start(cfg()).await;
    let (_, a1) = exchange_ok(&sim, &consent_code(&sim, CLIENT, Some("alice")).await).await;
    // Anonymous consents (no user named, no default user): a new user each time.
    let (_, n1) = exchange_ok(&sim, &consent_code(&sim, CLIENT, None).await).await;
    let (_, n2) = exchange_ok(&sim, &consent_code(&sim, CLIENT, None).await).await;
    // Alice on another app.
    let code = consent_code(&sim, "app-2", Some("alice")).await;
    let resp = token_call_basic(
        &sim,
        "app-2",
        "pw-2",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    sim.advance_clock(Duration::from_secs(2));
    for rt in [a1, n1, n2] {
        refresh_ok(&sim, &rt).await;
    }
    assert_eq!(sim.stats().totals.chains_revoked, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_rule_can_be_switched_off() {
    let sim = start(SimConfig {
        revoke_on_reconsent: false,
        ..cfg()
    })
    .await;
    let (_, rt1) = exchange_ok(&sim, &consent_code(&sim, CLIENT, Some("alice")).await).await;
    let (_, rt2) = exchange_ok(&sim, &consent_code(&sim, CLIENT, Some("alice")).await).await;
    sim.advance_clock(Duration::from_secs(2));
    refresh_ok(&sim, &rt1).await;
    refresh_ok(&sim, &rt2).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn daily_token_call_cap_per_user_and_client() {
    let sim = start(SimConfig {
        token_calls_per_day: 3,
        error_limit_per_hour: 1,
        ..cfg()
    })
    .await;
    let rt = sim
        .seed_connection_for_user(CLIENT, "alice-1", "alice")
        .unwrap();
    let other = sim.seed_connection(CLIENT, "someone-else", None);
    // Call 1: refresh; call 2: too early (counts: it is a token call); call 3: refresh.
    let (_, rt) = refresh_ok(&sim, &rt).await;
    assert_oauth_error(refresh(&sim, &rt).await, 400, "access_denied").await;
    sim.advance_clock(Duration::from_secs(2));
    let (_, rt) = refresh_ok(&sim, &rt).await;
    assert_eq!(sim.token_calls_24h("alice", CLIENT), 3);
    sim.advance_clock(Duration::from_secs(2));

    let resp = refresh(&sim, &rt).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 86_000 && retry <= 86_400, "{retry}");
    let body = assert_oauth_error(resp, 429, "access_denied").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("Rate limit exceeded"));
    // Refused calls are not counted, not charged to the error budget (limit 1 and
    // already one too-early error: one more charge would block), consume nothing.
    assert_oauth_error(refresh(&sim, &rt).await, 429, "access_denied").await;
    assert_eq!(sim.token_calls_24h("alice", CLIENT), 3);
    // Another user of the same client is unaffected.
    refresh_ok(&sim, &other).await;
    let u = users(&sim).await;
    assert_eq!(u["users"][0]["clients"][CLIENT]["token_calls_24h"], 3);
    assert_eq!(u["users"][0]["clients"][CLIENT]["token_calls_cap"], 3);
    let all = http()
        .get(format!("{}/_sim/users?all=true", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        all["users"].as_array().unwrap().len(),
        2,
        "anonymous user listed"
    );
    assert_eq!(sim.stats().totals.token_cap_exceeded, 2);

    // Rolling window: a day after the first call there is room again.
    sim.advance_clock(Duration::from_secs(86_400));
    assert_eq!(sim.token_calls_24h("alice", CLIENT), 0);
    refresh_ok(&sim, &rt).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_zero_cap_disables_the_daily_cap() {
    let sim = start(SimConfig {
        token_calls_per_day: 0,
        access_token_lifetime: Duration::from_millis(1),
        refresh_window: Duration::from_millis(1),
        ..cfg()
    })
    .await;
    let mut rt = sim.seed_connection(CLIENT, "busy", None);
    for _ in 0..20 {
        rt = refresh_ok(&sim, &rt).await.1;
    }
    assert_eq!(
        sim.token_calls_24h("busy@example.invalid", CLIENT),
        0,
        "not even counted"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn default_cap_is_200_and_counts_code_exchanges() {
    assert_eq!(SimConfig::default().token_calls_per_day, 200);
    assert!(SimConfig::default().revoke_on_reconsent);
    let sim = start(cfg()).await;
    exchange_ok(&sim, &consent_code(&sim, CLIENT, Some("alice")).await).await;
    assert_eq!(sim.token_calls_24h("alice", CLIENT), 1);
    sim.shutdown().await;
}
