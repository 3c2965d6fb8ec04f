//! A third-party-style client against Exact's real timing (600 s tokens, 30 s window):
//! consent page, code exchange with HTTP Basic, `Me`, `hrm/Divisions`, every division's
//! `crm/Accounts` followed through `__next` to the end, refresh with HTTP Basic.

mod common;

use common::*;
use exact_sim::{SimClient, SimConfig, SimDivision, SimUser};
use serde_json::Value;
use std::time::Duration;

/// What a client library does with a token answer: keep both tokens, schedule the
/// refresh 30 s before `expires_in` (a string at Exact).
struct Tokens {
    access: String,
    refresh: String,
    expires_in: u64,
}

async fn token_answer(resp: reqwest::Response) -> Tokens {
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    Tokens {
        access: body["access_token"].as_str().unwrap().to_string(),
        refresh: body["refresh_token"].as_str().unwrap().to_string(),
        expires_in: body["expires_in"].as_str().unwrap().parse().unwrap(),
    }
}

async fn get(url: &str, token: &str) -> Value {
    let resp = get_json(url, token).await;
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn basic_auth_client_walks_divisions_and_pages_accounts() {
    const ID: &str = "3rd-party-app";
    const PW: &str = "pa$$:word+1";
    let carol = SimUser::new("carol")
        .with_division(SimDivision::new(11).with_description("Carol Holding"))
        .with_division(SimDivision::new(22).with_accounts(3));
    let sim = start(
        SimConfig {
            clients: vec![SimClient::new(ID, PW).with_redirect(REDIRECT)],
            accounts_per_division: 125,
            ..SimConfig::default() // Exact's own timing: 600 s tokens, 30 s window
        }
        .with_user(carol),
    )
    .await;

    // Consent as carol on the consent page.
    let resp = http()
        .post(format!("{}/api/oauth2/auth/approve", sim.base_url()))
        .form(&[
            ("client_id", ID),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("state", "s1"),
            ("user", "carol"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let code = url::Url::parse(&loc)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    let t = token_answer(
        token_call_basic(
            &sim,
            ID,
            PW,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(t.expires_in, 600);

    let me = get(
        &format!("{}?$select=CurrentDivision,UserName", sim.me_url()),
        &t.access,
    )
    .await;
    let current = me["d"]["results"][0]["CurrentDivision"].as_i64().unwrap();
    assert_eq!(current, 11);
    assert_eq!(me["d"]["results"][0]["UserName"], "carol");

    let base = format!("{}/api/v1", sim.base_url());
    let divs = get(&format!("{base}/{current}/hrm/Divisions"), &t.access).await;
    let codes: Vec<i64> = divs["d"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [11, 22]);

    let mut per_division = Vec::new();
    for code in &codes {
        let mut url = format!("{base}/{code}/crm/Accounts?$select=ID,Name,Division");
        let mut n = 0;
        loop {
            let page = get(&url, &t.access).await;
            let results = page["d"]["results"].as_array().unwrap();
            assert!(results.len() <= 60);
            assert!(results.iter().all(|a| a["Division"] == *code));
            n += results.len();
            match page["d"]["__next"].as_str() {
                Some(next) => url = next.to_string(),
                None => break,
            }
        }
        per_division.push(n);
    }
    assert_eq!(per_division, [125, 3]);

    // Refresh with Basic once inside the 30 s window, as such clients do.
    sim.advance_clock(Duration::from_secs(t.expires_in - 30));
    let t2 = token_answer(
        token_call_basic(
            &sim,
            ID,
            PW,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &t.refresh),
            ],
        )
        .await,
    )
    .await;
    assert!(t2.refresh.contains('!') && t2.access.contains('!'));
    get(&format!("{base}/22/crm/Accounts"), &t2.access).await;
    let totals = sim.stats().totals;
    assert_eq!((totals.code_ok, totals.refresh_ok), (1, 1));
    assert_eq!(totals.too_early + totals.invalid_client, 0);
    sim.shutdown().await;
}
