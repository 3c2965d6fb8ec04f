//! Users with several divisions: `Me` with `$select`, `hrm/Divisions`,
//! `system/Divisions`, paged `crm/Accounts`, division access and rate limits.

mod common;

use common::*;
use exact_sim::{Sim, SimConfig, SimDivision, SimUser};
use serde_json::Value;
use std::time::Duration;

fn alice() -> SimUser {
    SimUser::new("alice")
        .with_division(SimDivision::new(100).with_description("Alice BV"))
        .with_division(
            SimDivision::new(200)
                .with_description("Bakery")
                .with_accounts(7),
        )
        .with_current_division(200)
}

fn users_config() -> SimConfig {
    SimConfig {
        access_token_lifetime: Duration::from_secs(600),
        refresh_window: Duration::from_secs(30),
        accounts_per_division: 130,
        ..config()
    }
    .with_user(alice())
    .with_user(SimUser::new("bob").with_division(SimDivision::new(300)))
}

async fn alice_token(sim: &Sim) -> String {
    let rt = sim
        .seed_connection_for_user(CLIENT, "alice-conn", "alice")
        .expect("alice configured");
    refresh_ok(sim, &rt).await.0
}

fn api(sim: &Sim, path: &str) -> String {
    format!("{}/api/v1/{path}", sim.base_url())
}

async fn json_of(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

#[tokio::test]
async fn me_honours_select_in_json_and_xml() {
    let sim = start(users_config()).await;
    let access = alice_token(&sim).await;
    let me = json_of(get_json(&sim.me_url(), &access).await).await;
    let r = &me["d"]["results"][0];
    assert_eq!(r["CurrentDivision"], 200);
    assert_eq!(r["UserName"], "alice");
    assert!(r["FullName"].is_string() && r["UserID"].is_string());

    let url = format!("{}?$select=UserID,CurrentDivision", sim.me_url());
    let me = json_of(get_json(&url, &access).await).await;
    let obj = me["d"]["results"][0].as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["CurrentDivision", "UserID", "__metadata"]);

    // Percent-encoded `$` works as well; XML honours $select too.
    let xml = http()
        .get(format!("{}?%24select=CurrentDivision", sim.me_url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(xml.contains(r#"<d:CurrentDivision m:type="Edm.Int32">200</d:CurrentDivision>"#));
    assert!(
        !xml.contains("FullName") && !xml.contains("d:UserID"),
        "{xml}"
    );

    let bad = get_json(&format!("{}?$select=Nope", sim.me_url()), &access).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["error"]["message"]["value"]
        .as_str()
        .unwrap()
        .contains("Nope"));
    sim.shutdown().await;
}

#[tokio::test]
async fn divisions_list_the_users_divisions() {
    let sim = start(users_config()).await;
    let access = alice_token(&sim).await;
    for service in ["hrm", "system"] {
        let resp = get_json(&api(&sim, &format!("100/{service}/Divisions")), &access).await;
        assert!(resp
            .headers()
            .contains_key("X-RateLimit-Minutely-Remaining"));
        let body = json_of(resp).await;
        let results = body["d"]["results"].as_array().unwrap();
        let codes: Vec<i64> = results
            .iter()
            .map(|d| d["Code"].as_i64().unwrap())
            .collect();
        assert_eq!(codes, [100, 200], "{service}");
        assert_eq!(results[0]["Description"], "Alice BV");
        assert_eq!(results[1]["Description"], "Bakery");
        assert!(results[0]["CustomerName"].is_string());
        assert!(body["d"].get("__next").is_none());
        if service == "system" {
            assert_eq!(results[1]["Current"], true);
            assert_eq!(results[0]["Current"], false);
        } else {
            assert!(results[0].get("Current").is_none(), "hrm has no Current");
        }
    }
    let sel = json_of(
        get_json(
            &api(&sim, "200/hrm/Divisions?$select=Code,Description"),
            &access,
        )
        .await,
    )
    .await;
    let keys: Vec<String> = sel["d"]["results"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}"); // Code, Description, __metadata
    sim.shutdown().await;
}

#[tokio::test]
async fn divisions_without_access_or_token_are_refused() {
    let sim = start(users_config()).await;
    let access = alice_token(&sim).await;
    // Bob's division: 403 with an OData error body.
    let resp = get_json(&api(&sim, "300/crm/Accounts"), &access).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"]["value"].is_string());
    assert_eq!(
        get_json(&api(&sim, "300/hrm/Divisions"), &access)
            .await
            .status(),
        403
    );
    assert_eq!(
        get_json(&api(&sim, "abc/hrm/Divisions"), &access)
            .await
            .status(),
        400
    );
    // No or a bad bearer token: 401.
    let anon = http()
        .get(api(&sim, "100/crm/Accounts"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(
        get_json(&api(&sim, "100/crm/Accounts"), "stamp10!bogus")
            .await
            .status(),
        401
    );
    let c = sim.connection_stats("alice-conn").unwrap().counters;
    assert_eq!(c.division_forbidden, 2);
    sim.shutdown().await;
}

/// Follows `__next` to the end; returns the pages' sizes and all records.
async fn all_pages(first: &str, token: &str) -> (Vec<usize>, Vec<Value>) {
    let mut url = first.to_string();
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    loop {
        let body = json_of(get_json(&url, token).await).await;
        let page = body["d"]["results"].as_array().unwrap().clone();
        sizes.push(page.len());
        all.extend(page);
        match body["d"]["__next"].as_str() {
            Some(n) => {
                assert!(n.contains("$skiptoken=guid'"), "{n}");
                url = n.to_string();
            }
            None => break,
        }
        assert!(sizes.len() < 100, "paging never ends");
    }
    (sizes, all)
}

#[tokio::test]
async fn accounts_are_paged_per_division() {
    let sim = start(users_config()).await;
    let access = alice_token(&sim).await;
    let (sizes, all) = all_pages(&api(&sim, "100/crm/Accounts"), &access).await;
    assert_eq!(sizes, [60, 60, 10], "default page size 60");
    let mut ids: Vec<&str> = all.iter().map(|a| a["ID"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 130, "no record twice");
    assert!(all.iter().all(|a| a["Division"] == 100));
    assert!(all[0]["Name"].as_str().unwrap().starts_with("Alice BV"));

    // The other division has its own (fewer) accounts.
    let (sizes, other) = all_pages(&api(&sim, "200/crm/Accounts"), &access).await;
    assert_eq!(sizes, [7]);
    assert!(other.iter().all(|a| a["Division"] == 200));
    assert!(other
        .iter()
        .all(|a| !ids.contains(&a["ID"].as_str().unwrap())));
    sim.shutdown().await;
}

#[tokio::test]
async fn accounts_honour_top_and_select_across_pages() {
    let sim = start(SimConfig {
        page_size: 4,
        ..users_config()
    })
    .await;
    let access = alice_token(&sim).await;
    let (sizes, all) = all_pages(
        &api(&sim, "100/crm/Accounts?$select=ID,Name&$top=10"),
        &access,
    )
    .await;
    assert_eq!(sizes, [4, 4, 2], "$top bounds the whole result");
    for a in &all {
        let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ID", "Name", "__metadata"], "$select kept on __next");
    }
    let (sizes, _) = all_pages(&api(&sim, "100/crm/Accounts?$top=3"), &access).await;
    assert_eq!(sizes, [3]);
    let bad = get_json(&api(&sim, "100/crm/Accounts?$top=lots"), &access).await;
    assert_eq!(bad.status(), 400);
    let bad = get_json(&api(&sim, "100/crm/Accounts?$skiptoken=guid'x'"), &access).await;
    assert_eq!(bad.status(), 400);
    // XML form carries a next link too.
    let xml = http()
        .get(api(&sim, "100/crm/Accounts"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(xml.contains(r#"<link rel="next" href=""#), "{xml}");
    assert_eq!(xml.matches("<entry>").count(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn rest_rate_limits_are_per_client_and_division() {
    let sim = start(SimConfig {
        rest_limit_per_minute: 2,
        rest_limit_per_day: 50,
        ..users_config()
    })
    .await;
    let access = alice_token(&sim).await;
    // Align just past a minute boundary of simulated wall time.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    sim.advance_clock(Duration::from_millis(60_000 - now_ms % 60_000 + 50));
    for _ in 0..2 {
        let r = get_json(&api(&sim, "100/crm/Accounts"), &access).await;
        assert_eq!(r.status(), 200);
        for h in [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-RateLimit-Minutely-Limit",
            "X-RateLimit-Minutely-Remaining",
            "X-RateLimit-Minutely-Reset",
        ] {
            assert!(r.headers().contains_key(h), "{h}");
        }
    }
    let r = get_json(&api(&sim, "100/hrm/Divisions"), &access).await;
    assert_eq!(
        r.status(),
        429,
        "Divisions and Accounts share the company's budget"
    );
    assert_eq!(r.headers()["X-RateLimit-Minutely-Remaining"], "0");
    assert_eq!(r.headers()["X-RateLimit-Remaining"], "48");
    assert!(r.bytes().await.unwrap().is_empty());
    // Division 200 is another company: its own budget. (Me counts against the
    // current division, 200.)
    assert_eq!(
        get_json(&api(&sim, "200/crm/Accounts"), &access)
            .await
            .status(),
        200
    );
    assert_eq!(get_json(&sim.me_url(), &access).await.status(), 200);
    assert_eq!(get_json(&sim.me_url(), &access).await.status(), 429);
    sim.advance_clock(Duration::from_secs(60));
    assert_eq!(
        get_json(&api(&sim, "100/crm/Accounts"), &access)
            .await
            .status(),
        200
    );
    assert_eq!(sim.stats().totals.rate_limited, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn consent_picks_the_user_and_current_division_can_change() {
    let sim = start(SimConfig {
        default_user: Some("bob".into()),
        ..users_config()
    })
    .await;
    // The consent page offers the configured users, the default preselected.
    let page = http()
        .get(sim.auth_url())
        .query(&[
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<select name="user">"#), "{page}");
    assert!(page.contains(r#"<option value="bob" selected>"#), "{page}");
    assert!(page.contains(r#"<option value="alice">"#), "{page}");
    assert!(page.contains("divisions 100, 200"));

    // Approving as alice gives a chain of alice.
    let resp = http()
        .post(format!("{}/api/oauth2/auth/approve", sim.base_url()))
        .form(&[
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("user", "alice"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let code = url::Url::parse(&loc)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let (access, _) = exchange_ok(&sim, &code).await;
    assert_eq!(
        sim.connection_user(&format!("{CLIENT}-1")).as_deref(),
        Some("alice")
    );
    let me = json_of(get_json(&sim.me_url(), &access).await).await;
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 200);

    // Opening another division in the browser changes CurrentDivision.
    assert!(sim.set_current_division("alice", 100));
    assert!(!sim.set_current_division("alice", 300), "not hers");
    let me = json_of(get_json(&sim.me_url(), &access).await).await;
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 100);
    let r = http()
        .post(format!("{}/_sim/users/current-division", sim.base_url()))
        .json(&serde_json::json!({"user": "alice", "division": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me = json_of(get_json(&sim.me_url(), &access).await).await;
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 200);

    // Unknown user in the request: 400.
    let r = http()
        .get(sim.auth_url())
        .query(&[
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("user", "mallory"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn anonymous_users_keep_todays_single_division_shape() {
    let sim = start(SimConfig {
        division: 4242,
        ..config()
    })
    .await;
    let rt = sim.seed_connection(CLIENT, "acme", None);
    let (access, _) = refresh_ok(&sim, &rt).await;
    let body = json_of(get_json(&api(&sim, "4242/hrm/Divisions"), &access).await).await;
    assert_eq!(body["d"]["results"].as_array().unwrap().len(), 1);
    assert_eq!(body["d"]["results"][0]["Code"], 4242);
    let (sizes, _) = all_pages(&api(&sim, "4242/crm/Accounts"), &access).await;
    assert_eq!(sizes, [60, 40], "100 accounts by default");
    let me = json_of(get_json(&sim.me_url(), &access).await).await;
    assert_eq!(me["d"]["results"][0]["UserName"], "acme@example.invalid");
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_default_user_is_a_start_error() {
    let cfg = SimConfig {
        default_user: Some("nobody".into()),
        ..config()
    };
    assert!(Sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .is_err());
}
