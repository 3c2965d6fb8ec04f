//! One Exact user, one chain, end to end against the real control plane and exact-sim:
//! a second consent by the same user is reported on both connections (and names the
//! replacement once the older chain dies), one consent serves several divisions, and the
//! daily token-call budget holds retries back.

mod harness;
mod support;

use exact_operator::crd::{ExactConnection, ExactConnectionStatus};
use exact_sim::{SimConfig, SimDivision, SimUser};
use harness::*;
use kube::api::Api;
use kube::Client;
use std::time::Duration;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A user "jan" who may open divisions 100 (current) and 200.
fn jan() -> SimUser {
    SimUser::new("jan")
        .with_division(SimDivision::new(100).with_description("Jan Holding"))
        .with_division(SimDivision::new(200).with_description("Jan Retail"))
        .with_current_division(100)
}

async fn status_of(admin: &Client, ns: &str, name: &str) -> Option<ExactConnectionStatus> {
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), ns);
    api.get(name).await.ok()?.status
}

fn condition<'a>(s: &'a ExactConnectionStatus, type_: &str) -> Option<&'a str> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.message.as_str())
}

async fn events_about(admin: &Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn a_second_consent_by_the_same_user_is_reported_on_both_and_named_when_the_old_dies() {
    init_tracing();
    let cfg = SimConfig {
        auto_consent: true,
        default_user: Some("jan".into()),
        ..fast_sim()
    }
    .with_user(jan());
    let TestEnv { admin, ns, sim } = test_env(cfg, serde_json::json!({})).await;
    let op = Operator::start_with_oauth(&ns, "op", Duration::from_secs(600)).await;
    let callback = format!("{}/oauth2/callback", op.oauth_url.clone().expect("oauth"));
    put_client(
        &admin,
        &ns,
        "app",
        &sim,
        serde_json::json!({"redirectUri": callback}),
    )
    .await;

    // "old": an existing grant of jan's, bootstrapped.
    let token = sim
        .seed_connection_for_user("app-1", "old", "jan")
        .expect("jan is configured");
    put_secret(&admin, &ns, "old-bootstrap", &[("refresh-token", &token)]).await;
    put_connection(
        &admin,
        &ns,
        "old",
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "old-bootstrap", "key": "refresh-token"},
            "refreshBefore": "1s",
        }),
    )
    .await;
    wait_published(&admin, &ns, "old").await;
    let jan_id = support::wait_for(Duration::from_secs(20), || async {
        status_of(&admin, &ns, "old").await?.exact_user_id
    })
    .await
    .expect("old knows its user");
    assert!(
        condition(
            &status_of(&admin, &ns, "old").await.expect("status"),
            "DuplicateUser"
        )
        .is_none(),
        "one connection of jan's is no duplicate"
    );

    // "new": jan consents again on the same app (through the operator's start link).
    put_unauthorized_connection(&admin, &ns, "new").await;
    let link = support::wait_for(Duration::from_secs(30), || async {
        status_of(&admin, &ns, "new").await?.authorization_url
    })
    .await
    .expect("consent link");
    let consent = reqwest::get(&link).await.expect("consent");
    assert_eq!(consent.status().as_u16(), 200);
    wait_published(&admin, &ns, "new").await;
    assert_eq!(
        sim.connection_revoked("old"),
        Some(true),
        "Exact's rule: one grant per user per app"
    );

    // Both carry the condition naming the other, with the same user.
    let on_new = support::wait_for(Duration::from_secs(20), || async {
        let s = status_of(&admin, &ns, "new").await?;
        condition(&s, "DuplicateUser").map(str::to_string)
    })
    .await
    .expect("new reports the duplicate");
    assert!(
        on_new.contains(&format!("{ns}/old")) && on_new.contains(&jan_id),
        "{on_new}"
    );
    let on_old = support::wait_for(Duration::from_secs(20), || async {
        let s = status_of(&admin, &ns, "old").await?;
        condition(&s, "DuplicateUser").map(str::to_string)
    })
    .await
    .expect("old reports the duplicate");
    assert!(on_old.contains(&format!("{ns}/new")), "{on_old}");
    assert_eq!(
        status_of(&admin, &ns, "new")
            .await
            .and_then(|s| s.exact_user_id),
        Some(jan_id.clone())
    );

    // The older chain dies at its next refresh; its message names the replacement.
    let (_, _, message) = wait_reason(
        &admin,
        &ns,
        "old",
        "ReauthorizationRequired",
        PUBLISH_TIMEOUT,
    )
    .await;
    assert!(
        message.contains("newer consent") && message.contains(&format!("{ns}/new")),
        "{message}"
    );
    let dead_events = events_about(&admin, &ns, "old", "ReauthorizationRequired").await;
    assert!(
        dead_events.iter().any(|n| n.contains(&format!("{ns}/new"))),
        "{dead_events:?}"
    );
    for name in ["old", "new"] {
        let notes = events_about(&admin, &ns, name, "DuplicateUser").await;
        assert!(!notes.is_empty(), "a DuplicateUser Event on {name}");
    }
    // The newer one keeps working and never claims to be the replaced one.
    let (ok, _, new_message) = ready_of(&admin, &ns, "new").await.expect("ready");
    assert_eq!(ok, "True");
    assert!(!new_message.contains("replaced"), "{new_message}");
    op.stop().await;
}

/// Reads the connection's workload Secret and calls `crm/Accounts` of `api_base_url` with
/// its token, as a workload would: the answer's status and body.
async fn accounts(token: &str, api_base_url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!(
            "{api_base_url}/crm/Accounts?$select=ID,Name&$top=1"
        ))
        .bearer_auth(token)
        .header("Accept", "application/json")
        .send()
        .await
        .expect("accounts");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn one_consent_serves_two_divisions_to_two_workloads() {
    init_tracing();
    let cfg = fast_sim().with_user(jan());
    let TestEnv { admin, ns, sim } = test_env(cfg, serde_json::json!({})).await;
    let op = Operator::start(&ns, "op").await;
    let token = sim
        .seed_connection_for_user("app-1", "books", "jan")
        .expect("jan is configured");
    put_secret(&admin, &ns, "books-bootstrap", &[("refresh-token", &token)]).await;
    let spec = |divisions: serde_json::Value| {
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "books-bootstrap", "key": "refresh-token"},
            "refreshBefore": "1s",
            "divisions": divisions,
        })
    };
    // 300 is a company jan may not open.
    put_connection(
        &admin,
        &ns,
        "books",
        spec(serde_json::json!([100, 200, 300])),
    )
    .await;
    wait_published(&admin, &ns, "books").await;
    let status = support::wait_for(Duration::from_secs(20), || async {
        let s = status_of(&admin, &ns, "books").await?;
        (s.divisions.len() == 2).then_some(s)
    })
    .await
    .expect("status lists the divisions");
    assert_eq!(
        status
            .divisions
            .iter()
            .map(|d| d.division)
            .collect::<Vec<_>>(),
        vec![100, 200]
    );
    assert_eq!(status.divisions[1].name.as_deref(), Some("Jan Retail"));
    let available = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DivisionsAvailable")
        .expect("DivisionsAvailable");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "DivisionNotAccessible")
    );
    assert!(available.message.contains("300"), "{}", available.message);
    let (ok, _, _) = ready_of(&admin, &ns, "books").await.expect("ready");
    assert_eq!(ok, "True", "a bad division code loses nothing else");

    // The primary keys stay as before; the divisions key serves both companies.
    let data = secret_data(&admin, &ns, "books-exact-token")
        .await
        .expect("workload secret");
    assert_eq!(data["division"], "100");
    assert!(data["api_base_url"].ends_with("/api/v1/100"));
    assert!(!data.contains_key("refresh_token"));
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&data["divisions"]).expect("divisions key is JSON");
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Two workloads, one per company, each with the same token and its own base URL.
    for (entry, code) in entries.iter().zip([100, 200]) {
        assert_eq!(entry["division"], code);
        let base = entry["api_base_url"].as_str().expect("api_base_url");
        assert!(base.ends_with(&format!("/api/v1/{code}")), "{base}");
        let (status, body) = accounts(&data["access_token"], base).await;
        assert_eq!(status, 200, "{code}: {body}");
        assert!(body.contains(&format!("/api/v1/{code}/")), "{code}: {body}");
    }
    let base_300 = data["api_base_url"].replace("/v1/100", "/v1/300");
    assert_ne!(
        accounts(&data["access_token"], &base_300).await.0,
        200,
        "300 is refused"
    );

    // A spec change publishes the new set at once, with no new consent.
    put_connection(&admin, &ns, "books", spec(serde_json::json!([200]))).await;
    let entries = support::wait_for(Duration::from_secs(20), || async {
        let data = secret_data(&admin, &ns, "books-exact-token").await?;
        let entries: Vec<serde_json::Value> = serde_json::from_str(&data["divisions"]).ok()?;
        (entries.len() == 1).then_some(entries)
    })
    .await
    .expect("one division now");
    assert_eq!(entries[0]["division"], 200);
    let healed = support::wait_for(Duration::from_secs(20), || async {
        let s = status_of(&admin, &ns, "books").await?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "DivisionsAvailable" && c.status == "True")
    })
    .await;
    assert!(
        healed.is_some(),
        "DivisionsAvailable=True once every code is open to jan"
    );
    op.stop().await;
}

#[tokio::test]
async fn the_daily_budget_is_counted_and_holds_retries_back_near_the_cap() {
    init_tracing();
    // Hour-long tokens: 24 regular refreshes a day; a cap of 28 leaves 4 retries.
    let cfg = SimConfig {
        access_token_lifetime: Duration::from_secs(3600),
        token_calls_per_day: 28,
        ..fast_sim()
    }
    .with_user(jan());
    let TestEnv { admin, ns, sim } = test_env(
        cfg,
        serde_json::json!({"accessTokenExpiresIn": "3600s", "tokenCallsPerDay": 28}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    let first = sim
        .seed_connection_for_user("app-1", "budget", "jan")
        .expect("jan is configured");
    put_secret(
        &admin,
        &ns,
        "budget-bootstrap",
        &[("refresh-token", &first)],
    )
    .await;
    put_connection(
        &admin,
        &ns,
        "budget",
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "budget-bootstrap", "key": "refresh-token"},
            "refreshBefore": "1s",
        }),
    )
    .await;
    wait_published(&admin, &ns, "budget").await;
    let status = support::wait_for(Duration::from_secs(20), || async {
        let s = status_of(&admin, &ns, "budget").await?;
        (s.exact_user_id.is_some() && s.token_calls24h == Some(1)).then_some(s)
    })
    .await
    .expect("one call counted, the user known");
    assert_eq!(status.exact_user_token_calls24h, Some(1));
    let jan_id = status.exact_user_id.expect("user");

    // Exact fails every token call; a new bootstrap token makes a call due now.
    sim.set_faults(exact_sim::Faults {
        fault_500_ratio: 1.0,
        ..Default::default()
    });
    let second = sim
        .seed_connection_for_user("app-1", "budget-2", "jan")
        .expect("jan");
    put_secret(
        &admin,
        &ns,
        "budget-bootstrap",
        &[("refresh-token", &second)],
    )
    .await;
    // Bootstrap Secrets are not watched: `kubectl exact refresh` has the new value read now.
    let conns: kube::Api<exact_operator::crd::ExactConnection> =
        kube::Api::namespaced(admin.clone(), &ns);
    let annotation = serde_json::json!({"metadata": {"annotations": {
        exact_operator::crd::REFRESH_REQUEST_ANNOTATION: jiff::Timestamp::now().to_string()
    }}});
    conns
        .patch(
            "budget",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&annotation),
        )
        .await
        .expect("annotate");
    let (_, _, message) = support::wait_for(Duration::from_secs(30), || async {
        ready_of(&admin, &ns, "budget")
            .await
            .filter(|(_, _, m)| m.contains("retries held back"))
    })
    .await
    .unwrap_or_else(|| panic!("never held back; sim stats {:?}", sim.stats().totals));
    assert!(message.contains("of Exact's cap 28"), "{message}");
    // 1 grant + the imported token's first call + 4 retries; then nothing more.
    assert_eq!(sim.stats().totals.token_calls, 6, "{message}");
    assert_eq!(sim.stats().totals.faults_500, 5);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(sim.stats().totals.token_calls, 6, "retries stay held back");
    // The operator counts every call; exact-sim does not count its gateway 500s.
    assert!(sim.token_calls_24h("jan", "app-1") <= 6);
    let s = status_of(&admin, &ns, "budget").await.expect("status");
    assert_eq!(s.token_calls24h, Some(6));
    assert_eq!(s.exact_user_token_calls24h, Some(6));
    let next = s.next_refresh_time.expect("next call planned");
    assert!(
        next > jiff::Timestamp::now() + jiff::SignedDuration::from_mins(50),
        "the next try waits for the regular cadence: {next}"
    );
    let metrics = op.metrics.render();
    let series =
        format!("exact_operator_token_calls_24h{{client=\"{ns}/app\",exact_user=\"{jan_id}\"}} 6");
    assert!(metrics.contains(&series), "{series} in\n{metrics}");
    op.stop().await;
}

/// Who the token belongs to (Me, asked after the first refresh) costs no write of its own: the
/// status carries it, an operator started before the next refresh takes it from that status
/// (the workload Secret keeps the division, neither Secret is written), and the next claim
/// stores it in the state Secret.
#[tokio::test]
async fn the_user_a_refresh_learns_reaches_the_state_secret_with_the_next_claim() {
    init_tracing();
    let cfg = SimConfig {
        access_token_lifetime: Duration::from_secs(24),
        refresh_window: Duration::from_secs(4),
        ..fast_sim()
    }
    .with_user(jan());
    let TestEnv { admin, ns, sim } = test_env(cfg, serde_json::json!({})).await;
    let token = sim
        .seed_connection_for_user("app-1", "ledger", "jan")
        .expect("jan is configured");
    put_secret(
        &admin,
        &ns,
        "ledger-bootstrap",
        &[("refresh-token", &token)],
    )
    .await;
    put_connection(
        &admin,
        &ns,
        "ledger",
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": "ledger-bootstrap", "key": "refresh-token"},
            "refreshBefore": "2s",
        }),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    wait_published(&admin, &ns, "ledger").await;
    let user = support::wait_for(Duration::from_secs(10), || async {
        status_of(&admin, &ns, "ledger").await?.exact_user_id
    })
    .await
    .expect("status.exactUserId after the first refresh");
    let state_name = exact_operator::secrets::state_secret_name("ledger");
    let (state_rv, state) = secret_version(&admin, &ns, &state_name)
        .await
        .expect("state Secret");
    assert_eq!(
        state.get("exact_user_id"),
        None,
        "the first refresh's writes are the claim and the chain; the user waits for the next"
    );
    let (token_rv, token_data) = secret_version(&admin, &ns, "ledger-exact-token")
        .await
        .expect("workload Secret");
    assert_eq!(token_data.get("division").map(String::as_str), Some("100"));

    // A new process before the next refresh: the user and division come from the status.
    op.stop().await;
    let op = Operator::start(&ns, "op-2").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let status = status_of(&admin, &ns, "ledger").await.expect("status");
    assert_eq!(status.exact_user_id.as_deref(), Some(user.as_str()));
    assert_eq!(status.division, Some(100));
    let (rv, _) = secret_version(&admin, &ns, "ledger-exact-token")
        .await
        .expect("workload Secret");
    assert_eq!(rv, token_rv, "the restart rewrote the workload Secret");
    let (rv, _) = secret_version(&admin, &ns, &state_name)
        .await
        .expect("state Secret");
    assert_eq!(rv, state_rv, "the restart wrote the state Secret");

    // The next refresh's claim stores the user.
    let stored = support::wait_for(Duration::from_secs(40), || async {
        let (_, data) = secret_version(&admin, &ns, &state_name).await?;
        data.get("exact_user_id").cloned()
    })
    .await;
    assert_eq!(stored.as_deref(), Some(user.as_str()));
    let (_, token_data) = secret_version(&admin, &ns, "ledger-exact-token")
        .await
        .expect("workload Secret");
    assert_eq!(token_data.get("division").map(String::as_str), Some("100"));
    op.stop().await;
}
