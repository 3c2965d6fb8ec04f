//! Webhook subscriptions: the REST collection (bearer-checked, per division and app), the
//! validation POST after creation, signed messages and the `/_sim/webhooks` control routes.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use common::*;
use exact_sim::webhooks::sign;
use exact_sim::{FireOptions, Signature, SimConfig};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback receiver recording every body.
async fn receiver() -> (Arc<Mutex<Vec<Bytes>>>, String) {
    let got: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/cb",
            axum::routing::post(
                |State(g): State<Arc<Mutex<Vec<Bytes>>>>, b: Bytes| async move {
                    g.lock().unwrap().push(b);
                    "ok"
                },
            ),
        )
        .with_state(got.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (got, url)
}

fn cfg() -> SimConfig {
    SimConfig {
        webhook_validation_delay: Duration::from_millis(50),
        ..config()
    }
    .with_webhook_secret(CLIENT, "whsec")
}

fn collection(sim: &exact_sim::Sim, division: i64) -> String {
    format!(
        "{}/api/v1/{division}/webhooks/WebhookSubscriptions",
        sim.base_url()
    )
}

#[tokio::test]
async fn subscriptions_are_created_validated_listed_and_deleted() {
    let sim = start(cfg()).await;
    let rt = sim.seed_connection(CLIENT, "acme", Some(42));
    let (access, _) = refresh_ok(&sim, &rt).await;
    let (got, cb) = receiver().await;

    let unauth = http()
        .post(collection(&sim, 42))
        .json(&json!({"CallbackURL": cb, "Topic": "Accounts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401, "bearer required");
    let other_division = http()
        .get(collection(&sim, 7))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(other_division.status().as_u16(), 403);

    let created = http()
        .post(collection(&sim, 42))
        .bearer_auth(&access)
        .json(&json!({"CallbackURL": cb, "Topic": "Accounts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let body: Value = created.json().await.unwrap();
    let id = body["d"]["ID"].as_str().expect("ID").to_string();

    // The empty validation POST arrives shortly after creation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.lock().unwrap().clone(), vec![Bytes::new()]);
    assert_eq!(sim.webhook_subscriptions()[0].validation_status, Some(200));

    let list: Value = http()
        .get(collection(&sim, 42))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = list["d"]["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["CallbackURL"], json!(cb));
    assert_eq!(results[0]["Topic"], json!("Accounts"));

    let del = |id: String| {
        let url = format!("{}(guid'{id}')", collection(&sim, 42));
        let access = access.clone();
        async move {
            http()
                .delete(url)
                .bearer_auth(access)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(del(id.clone()).await, 204);
    assert_eq!(del(id).await, 404);
    assert!(sim.webhook_subscriptions().is_empty());
}

#[tokio::test]
async fn messages_are_signed_over_the_raw_content() {
    let sim = start(cfg()).await;
    let rt = sim.seed_connection(CLIENT, "acme", Some(42));
    let (access, _) = refresh_ok(&sim, &rt).await;
    let (got, cb) = receiver().await;
    let created: Value = http()
        .post(collection(&sim, 42))
        .bearer_auth(&access)
        .json(&json!({"CallbackURL": cb, "Topic": "Accounts"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["d"]["ID"].as_str().unwrap().to_string();

    let fired = sim
        .fire_webhook(
            &id,
            &FireOptions {
                key: Some("k-1".into()),
                ..Default::default()
            },
        )
        .await
        .expect("fired");
    assert_eq!(fired.status, Some(200));
    assert!(got
        .lock()
        .unwrap()
        .contains(&Bytes::from(fired.body.clone())));
    let v: Value = serde_json::from_str(&fired.body).unwrap();
    assert_eq!(v["Content"]["Key"], json!("k-1"));
    assert_eq!(v["Content"]["Division"], json!(42));
    assert_eq!(v["Content"]["ClientId"], json!(CLIENT));
    let start = fired.body.find("{\"Topic\"").unwrap();
    let end = fired.body.find(", \"HashCode\"").unwrap();
    let raw = &fired.body[start..end];
    let hash = v["HashCode"].as_str().unwrap();
    assert_eq!(hash, sign("whsec", raw.as_bytes()));
    assert_eq!(hash, hash.to_uppercase());
    let reserialized = serde_json::to_string(&v["Content"]).unwrap();
    assert_ne!(
        sign("whsec", reserialized.as_bytes()),
        hash,
        "a receiver must use the raw bytes"
    );

    let wrong = sim
        .fire_webhook(
            &id,
            &FireOptions {
                signature: Signature::Wrong,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let w: Value = serde_json::from_str(&wrong.body).unwrap();
    assert_ne!(w["HashCode"], v["HashCode"]);
    let missing = sim
        .fire_webhook(
            &id,
            &FireOptions {
                signature: Signature::Missing,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!missing.body.contains("HashCode"));

    // The same through /_sim, then a deletion behind the app's back.
    let r: Value = http()
        .post(format!("{}/_sim/webhooks/fire", sim.base_url()))
        .json(&json!({"id": id, "signature": "wrong"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["status"],
        json!(200),
        "the receiver here accepts anything"
    );
    let listed: Value = http()
        .get(format!("{}/_sim/webhooks", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let gone = http()
        .post(format!("{}/_sim/webhooks/delete", sim.base_url()))
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    assert!(sim.webhook_subscriptions().is_empty());
    assert!(sim
        .fire_webhook(&id, &FireOptions::default())
        .await
        .is_err());
}
