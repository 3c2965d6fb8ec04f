//! Injected faults: Apigee 500, empty body, non-JSON body, lost response, latency.

mod common;

use common::*;
use exact_sim::{Faults, APIGEE_FAULT};
use std::time::{Duration, Instant};

#[tokio::test]
async fn fault_500_returns_apigee_body_and_consumes_nothing() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    sim.set_faults(Faults {
        fault_500_ratio: 1.0,
        ..Faults::default()
    });
    let resp = refresh(&sim, &rt).await;
    assert_eq!(resp.status(), 500);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["fault"]["faultstring"],
        "Failed to execute the ExtractVariables: ExtractAccessToken"
    );
    assert_eq!(
        body["fault"]["detail"]["errorcode"],
        "steps.extractvariables.ExecutionFailed"
    );
    assert_eq!(
        body,
        serde_json::from_str::<serde_json::Value>(APIGEE_FAULT).unwrap()
    );
    sim.set_faults(Faults::default());
    refresh_ok(&sim, &rt).await;
    let c = sim.connection_stats("acme").unwrap().counters;
    assert_eq!((c.faults_500, c.refresh_ok, c.token_calls), (1, 1, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn empty_and_non_json_bodies() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    sim.set_faults(Faults {
        empty_body_ratio: 1.0,
        ..Faults::default()
    });
    let resp = refresh(&sim, &rt).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());

    sim.set_faults(Faults {
        non_json_ratio: 1.0,
        ..Faults::default()
    });
    let resp = refresh(&sim, &rt).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
    assert!(text.contains("<html"));

    sim.set_faults(Faults::default());
    refresh_ok(&sim, &rt).await;
    let t = sim.stats().totals;
    assert_eq!((t.empty_bodies, t.non_json_bodies, t.refresh_ok), (1, 1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn lost_response_rotates_token_but_client_gets_an_error() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    sim.set_faults(Faults {
        lost_response_ratio: 1.0,
        ..Faults::default()
    });
    let result = token_call(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await;
    let err = result.expect_err("no response must reach the client");
    assert!(!err.is_timeout(), "connection closed, not a timeout: {err}");

    sim.set_faults(Faults::default());
    // The token WAS rotated: the one we still hold is now old.
    let body = assert_oauth_error(refresh(&sim, &rt).await, 401, "unauthorized_client").await;
    assert_eq!(body["error_description"], "Old refresh token used.");
    let c = sim.connection_stats("acme").unwrap().counters;
    assert_eq!(
        (c.lost_responses, c.refresh_ok, c.old_refresh_token_used),
        (1, 1, 1)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn server_keeps_serving_after_lost_responses() {
    let sim = start(config()).await;
    sim.set_faults(Faults {
        lost_response_ratio: 1.0,
        ..Faults::default()
    });
    for i in 0..3 {
        let rt = sim.seed_connection(CLIENT, &format!("c{i}"), None);
        assert!(token_call(
            &sim,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
            ],
        )
        .await
        .is_err());
    }
    sim.set_faults(Faults::default());
    let rt = sim.seed_connection(CLIENT, "fine", None);
    refresh_ok(&sim, &rt).await;
    assert_eq!(sim.stats().totals.lost_responses, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_answers() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    sim.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let t0 = Instant::now();
    refresh_ok(&sim, &rt).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ratios_between_zero_and_one_mix_outcomes() {
    let sim = start(config()).await;
    sim.set_faults(Faults {
        fault_500_ratio: 0.5,
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    for i in 0..40 {
        let rt = sim.seed_connection(CLIENT, &format!("m{i}"), None);
        statuses.push(refresh(&sim, &rt).await.status().as_u16());
    }
    let n500 = statuses.iter().filter(|s| **s == 500).count();
    let n200 = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(n500 + n200, 40);
    assert!(
        n500 > 0 && n200 > 0,
        "both outcomes in 40 tries: {n500}/{n200}"
    );
    assert_eq!(sim.stats().totals.faults_500, n500 as u64);
    sim.shutdown().await;
}
