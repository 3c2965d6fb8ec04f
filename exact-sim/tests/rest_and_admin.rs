//! `Me` (JSON/XML, bearer check, rate limits) and the `/_sim` control routes.

mod common;

use common::*;
use exact_sim::{Faults, SimConfig};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn me(url: &str, token: Option<&str>, json: bool) -> reqwest::Response {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if json {
        req = req.header("Accept", "application/json");
    }
    req.send().await.unwrap()
}

fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn me_answers_json_or_xml() {
    let sim = start(SimConfig {
        division: 777,
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let (access, _) = refresh_ok(&sim, &rt).await;

    let resp = me(&sim.me_url(), Some(&access), true).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let r = &body["d"]["results"][0];
    assert_eq!(r["CurrentDivision"], 777);
    assert!(r["FullName"].as_str().unwrap().contains("acme"));
    let uid = r["UserID"].as_str().unwrap();
    assert_eq!(uid.len(), 36);
    assert_eq!(uid.matches('-').count(), 4);

    let resp = me(&sim.me_url(), Some(&access), false).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/atom+xml"), "{ct}");
    let xml = resp.text().await.unwrap();
    assert!(xml.starts_with("<?xml"));
    assert!(xml.contains(r#"<d:CurrentDivision m:type="Edm.Int32">777</d:CurrentDivision>"#));
    assert!(xml.contains(uid), "same user in both forms");
    assert_eq!(sim.connection_stats("acme").unwrap().counters.me_ok, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn me_requires_a_valid_bearer_token() {
    let sim = start(config()).await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let (access, _) = refresh_ok(&sim, &rt).await;
    assert_eq!(me(&sim.me_url(), None, true).await.status(), 401);
    assert_eq!(me(&sim.me_url(), Some("bogus"), true).await.status(), 401);
    let basic = http()
        .get(sim.me_url())
        .header("Authorization", format!("Basic {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "must be a Bearer token");
    assert_eq!(me(&sim.me_url(), Some(&access), true).await.status(), 200);
    sim.advance_clock(Duration::from_secs(3));
    assert_eq!(
        me(&sim.me_url(), Some(&access), true).await.status(),
        401,
        "expired"
    );
    assert!(!sim.access_token_valid(&access));
    let stats = sim.stats();
    assert_eq!(stats.totals.me_unauthorized, 4);
    assert_eq!(
        stats.connection("acme").unwrap().counters.me_unauthorized,
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_headers_and_minutely_429() {
    let sim = start(SimConfig {
        rest_limit_per_minute: 3,
        rest_limit_per_day: 100,
        access_token_lifetime: Duration::from_secs(600),
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let (access, _) = refresh_ok(&sim, &rt).await;
    // Align the simulated clock just past a minute boundary so the test cannot
    // straddle two minutely windows.
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let to_boundary = 60_000 - wall_ms % 60_000 + 50;
    sim.advance_clock(Duration::from_millis(to_boundary));
    let now_ms = wall_ms + to_boundary;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = me(&sim.me_url(), Some(&access), true).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 100);
        assert_eq!(header_u64(&r, "X-RateLimit-Minutely-Limit"), 3);
        let reset = header_u64(&r, "X-RateLimit-Minutely-Reset");
        assert_eq!(reset, now_ms - 50 + 60_000, "epoch ms of the next minute");
        let day_reset = header_u64(&r, "X-RateLimit-Reset");
        assert!(day_reset > now_ms && day_reset <= now_ms + 86_400_000);
        assert_eq!(day_reset % 86_400_000, 0, "midnight UTC");
        remaining.push(header_u64(&r, "X-RateLimit-Minutely-Remaining"));
    }
    assert_eq!(remaining, [2, 1, 0]);
    let r = me(&sim.me_url(), Some(&access), true).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header_u64(&r, "X-RateLimit-Minutely-Remaining"), 0);
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 97);
    assert!(r.bytes().await.unwrap().is_empty(), "429 has an empty body");
    assert_eq!(sim.stats().totals.rate_limited, 1);

    sim.advance_clock(Duration::from_secs(60));
    assert_eq!(me(&sim.me_url(), Some(&access), true).await.status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn daily_limit_gives_429() {
    let sim = start(SimConfig {
        rest_limit_per_minute: 100,
        rest_limit_per_day: 2,
        access_token_lifetime: Duration::from_secs(600),
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let (access, _) = refresh_ok(&sim, &rt).await;
    assert_eq!(me(&sim.me_url(), Some(&access), true).await.status(), 200);
    let r = me(&sim.me_url(), Some(&access), true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 0);
    assert_eq!(me(&sim.me_url(), Some(&access), true).await.status(), 429);
    sim.shutdown().await;
}

#[tokio::test]
async fn control_routes_seed_stats_token_valid_faults_advance() {
    let sim = start(config()).await;
    let base = sim.base_url();
    let c = http();

    assert_eq!(
        c.get(format!("{base}/_sim/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let seeded: Value = c
        .post(format!("{base}/_sim/seed"))
        .json(&json!({"client_id": CLIENT, "name": "scripted", "division": 9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rt = seeded["refresh_token"].as_str().unwrap();
    let (access, _) = refresh_ok(&sim, rt).await;

    let known = c
        .post(format!("{base}/_sim/seed"))
        .json(&json!({"client_id": CLIENT, "name": "known", "refresh_token": "abc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(known.status(), 200);
    refresh_ok(&sim, "abc").await;

    let bad = c
        .post(format!("{base}/_sim/seed"))
        .json(&json!({"client_id": "nobody", "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = c
        .post(format!("{base}/_sim/seed"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let valid = |t: String| {
        let c = c.clone();
        let url = format!("{base}/_sim/token-valid");
        async move {
            let v: Value = c
                .get(url)
                .query(&[("access_token", t)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["valid"].as_bool().unwrap()
        }
    };
    assert!(valid(access.clone()).await);
    assert!(!valid("nope".to_string()).await);

    let stats: Value = c
        .get(format!("{base}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["totals"]["refresh_ok"], 2);
    assert_eq!(stats["connections"]["scripted"]["refresh_ok"], 1);
    assert_eq!(stats["connections"]["known"]["token_calls"], 1);
    let typed: exact_sim::Stats = serde_json::from_value(stats).unwrap();
    assert_eq!(typed, sim.stats());

    let put = c
        .put(format!("{base}/_sim/faults"))
        .json(&json!({"fault_500_ratio": 1.0, "latency_ms": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(
        sim.faults(),
        Faults {
            fault_500_ratio: 1.0,
            latency: Duration::from_millis(5),
            ..Faults::default()
        }
    );
    let got: Value = c
        .get(format!("{base}/_sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["latency_ms"], 5);
    let bad = c
        .put(format!("{base}/_sim/faults"))
        .json(&json!({"fault_500_ratio": "lots"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    sim.set_faults(Faults::default());

    let adv = c
        .post(format!("{base}/_sim/advance"))
        .json(&json!({"seconds": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(adv.status(), 200);
    assert!(!valid(access).await, "expired after advancing the clock");
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_serves_https_with_self_signed_cert() {
    let sim = start(SimConfig {
        tls: true,
        ..config()
    })
    .await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let pem = sim.cert_pem().expect("cert").to_string();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let rt = sim.seed_connection(CLIENT, "secure", None);
    let resp = client
        .post(sim.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // An untrusting client fails the handshake.
    assert!(http()
        .get(format!("{}/_sim/health", sim.base_url()))
        .send()
        .await
        .is_err());
    sim.shutdown().await;
}
