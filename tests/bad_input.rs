//! Bad input, one case at a time: each gets a precise condition, Event or exit message, and
//! a healthy control connection next to it keeps working ("nothing else broke").

mod harness;
mod support;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use exact_operator::crd::{ExactConnection, ExactOAuthClient};
use exact_sim::Sim;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

/// A namespace with the `control` connection, which must stay fine whatever else breaks.
async fn setup() -> (Client, String, Sim) {
    let TestEnv { admin, ns, sim } = env_with_connections(&["control"]).await;
    (admin, ns, sim)
}

/// The control connection is still fine and no chain broke.
async fn nothing_else_broke(admin: &Client, ns: &str, sim: &Sim) {
    wait_reason(admin, ns, "control", "TokenPublished", T).await;
    let data = secret_data(admin, ns, "control-exact-token")
        .await
        .expect("control secret");
    assert!(
        sim.access_token_valid(&data["access_token"]) || sim.connection_stats("control").is_some()
    );
    assert_eq!(
        sim.stats().totals.old_refresh_token_used,
        0,
        "no chain broke"
    );
}

async fn expect(admin: &Client, ns: &str, conn: &str, reason: &str, fragment: &str) {
    let (_, _, msg) = wait_reason(admin, ns, conn, reason, T).await;
    assert!(
        msg.contains(fragment),
        "{conn}: expected {fragment:?} in {msg:?}"
    );
}

async fn client_ready(admin: &Client, ns: &str, name: &str, reason: &str, fragment: &str) {
    let api: Api<ExactOAuthClient> = Api::namespaced(admin.clone(), ns);
    let got = support::wait_for(T, || async {
        let c = api.get(name).await.ok()?;
        let cond = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (cond.reason == reason && cond.message.contains(fragment)).then_some(cond)
    })
    .await;
    assert!(
        got.is_some(),
        "client {name}: expected {reason} with {fragment:?}"
    );
}

fn conn_body(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection", "metadata": {"name": name}, "spec": spec})
}

fn client_body(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactOAuthClient", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn schema_invalid_manifests_are_rejected_by_the_api_server() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let secret_ref = serde_json::json!({"name": "s", "key": "k"});
    let bad_conns = [
        (
            "no-client-ref",
            serde_json::json!({"division": 1}),
            "clientRef",
        ),
        (
            "bad-suspend",
            serde_json::json!({"clientRef": {"name": "a"}, "suspend": "yes"}),
            "suspend",
        ),
        (
            "bad-division",
            serde_json::json!({"clientRef": {"name": "a"}, "division": "abc"}),
            "division",
        ),
        (
            "bad-ref",
            serde_json::json!({"clientRef": {"name": "a"}, "refreshTokenSecretRef": {"name": "x"}}),
            "key",
        ),
    ];
    for (name, spec, field) in bad_conns {
        let err = create_raw::<ExactConnection>(&admin, &ns, conn_body(name, spec)).await;
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains(field)),
            "{name}: {err}"
        );
    }
    let bad_clients = [
        (
            "no-client-id",
            serde_json::json!({"clientSecretRef": secret_ref}),
            "clientId",
        ),
        (
            "bad-region",
            serde_json::json!({"clientId": "x", "clientSecretRef": secret_ref, "region": "mars"}),
            "region",
        ),
        (
            "no-secret-ref",
            serde_json::json!({"clientId": "x"}),
            "clientSecretRef",
        ),
    ];
    for (name, spec, field) in bad_clients {
        let err = create_raw::<ExactOAuthClient>(&admin, &ns, client_body(name, spec)).await;
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains(field)),
            "{name}: {err}"
        );
    }
    let conns: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let clients: Api<ExactOAuthClient> = Api::namespaced(admin.clone(), &ns);
    assert!(
        conns
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "nothing was stored"
    );
    assert!(
        clients
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "nothing was stored"
    );
}

/// Creates an object from raw JSON (as kubectl would send it) and returns the refusal.
async fn create_raw<K>(client: &Client, ns: &str, body: serde_json::Value) -> kube::Error
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(body).expect("dynamic object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect_err("the API server must refuse it")
}

#[tokio::test]
async fn semantically_invalid_specs_and_secrets_are_reported_in_status() {
    let (admin, ns, sim) = setup().await;
    let op = Operator::start(&ns, "op").await;
    let sim_url = |p: &str| format!("{}{p}", sim.base_url());
    // Clients with invalid settings (each with a connection using it).
    let client_cases = [
        (
            "http-url",
            serde_json::json!({"allowInsecureHttp": false}),
            "must use https",
        ),
        (
            "bad-url",
            serde_json::json!({"authorizationUrl": "not a url"}),
            "authorizationUrl",
        ),
        (
            "bad-lifetime",
            serde_json::json!({"accessTokenExpiresIn": "ten minutes"}),
            "accessTokenExpiresIn",
        ),
        (
            "zero-window",
            serde_json::json!({"refreshWindow": "0s"}),
            "refreshWindow must be greater than zero",
        ),
        (
            "bad-ca",
            serde_json::json!({"caBundle": "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"}),
            "caBundle",
        ),
        (
            "ftp-url",
            serde_json::json!({"tokenUrl": "ftp://example.com/token"}),
            "is not http(s)",
        ),
    ];
    for (name, extra, fragment) in &client_cases {
        put_secret(
            &admin,
            &ns,
            &format!("{name}-credentials"),
            &[("client-secret", "secret-1")],
        )
        .await;
        put_client(&admin, &ns, name, &sim, extra.clone()).await;
        bootstrap_connection(
            &admin,
            &ns,
            &sim,
            &format!("uses-{name}"),
            serde_json::json!({"clientRef": {"name": name}}),
        )
        .await;
        let _ = sim_url("");
        client_ready(&admin, &ns, name, "InvalidSpec", fragment).await;
        expect(
            &admin,
            &ns,
            &format!("uses-{name}"),
            "ClientNotReady",
            fragment,
        )
        .await;
    }
    // Connection specs.
    let conn_cases = [
        (
            "before-too-wide",
            serde_json::json!({"refreshBefore": "40s"}),
            "InvalidSpec",
            "exceeds the client's refresh window",
        ),
        (
            "before-garbage",
            serde_json::json!({"refreshBefore": "soon"}),
            "InvalidSpec",
            "refreshBefore",
        ),
        (
            "before-zero",
            serde_json::json!({"refreshBefore": "0s"}),
            "InvalidSpec",
            "greater than zero",
        ),
        (
            "missing-client",
            serde_json::json!({"clientRef": {"name": "nope"}}),
            "ClientNotReady",
            "not found",
        ),
    ];
    for (name, extra, reason, fragment) in &conn_cases {
        bootstrap_connection(&admin, &ns, &sim, name, extra.clone()).await;
        expect(&admin, &ns, name, reason, fragment).await;
    }
    // Client secret values: missing Secret, missing key, empty, binary garbage.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret_cases: [(&str, Option<Vec<u8>>, &str, &str); 4] = [
        ("no-secret", None, "SecretNotFound", "not found"),
        ("no-key", Some(vec![]), "SecretNotFound", "has no key"),
        (
            "empty-value",
            Some(b"   ".to_vec()),
            "SecretNotFound",
            "empty or not text",
        ),
        (
            "binary-value",
            Some(vec![0xff, 0x00, 0xfe]),
            "SecretNotFound",
            "empty or not text",
        ),
    ];
    for (name, value, reason, fragment) in &secret_cases {
        if let Some(v) = value {
            let key = if v.is_empty() {
                "other-key"
            } else {
                "client-secret"
            };
            let s = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{name}-credentials")),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    key.to_string(),
                    ByteString(if v.is_empty() {
                        b"x".to_vec()
                    } else {
                        v.clone()
                    }),
                )])),
                ..Default::default()
            };
            secrets
                .create(&PostParams::default(), &s)
                .await
                .expect("secret");
        }
        put_client(&admin, &ns, name, &sim, serde_json::json!({})).await;
        bootstrap_connection(
            &admin,
            &ns,
            &sim,
            &format!("uses-{name}"),
            serde_json::json!({"clientRef": {"name": name}}),
        )
        .await;
        client_ready(&admin, &ns, name, reason, fragment).await;
        expect(
            &admin,
            &ns,
            &format!("uses-{name}"),
            "ClientNotReady",
            fragment,
        )
        .await;
    }
    // Bootstrap Secret problems.
    put_connection(
        &admin,
        &ns,
        "boot-missing",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshTokenSecretRef": {"name": "nope", "key": "refresh-token"}, "refreshBefore": "1s"}),
    )
    .await;
    expect(
        &admin,
        &ns,
        "boot-missing",
        "AwaitingAuthorization",
        "Secret",
    )
    .await;
    put_secret(&admin, &ns, "boot-empty", &[("refresh-token", "")]).await;
    put_connection(
        &admin,
        &ns,
        "boot-empty",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshTokenSecretRef": {"name": "boot-empty", "key": "refresh-token"}, "refreshBefore": "1s"}),
    )
    .await;
    expect(
        &admin,
        &ns,
        "boot-empty",
        "AwaitingAuthorization",
        "empty or not text",
    )
    .await;
    put_unauthorized_connection(&admin, &ns, "no-bootstrap").await;
    expect(
        &admin,
        &ns,
        "no-bootstrap",
        "AwaitingAuthorization",
        "no refresh token yet",
    )
    .await;
    nothing_else_broke(&admin, &ns, &sim).await;
    op.stop().await;
}

/// A token endpoint that misbehaves in one chosen way per path.
async fn rogue_token_endpoint() -> String {
    async fn token(Path(case): Path<String>) -> axum::response::Response {
        let ok = |expires: &str| {
            format!(
                r#"{{"access_token":"rogue-{case}","token_type":"bearer","expires_in":{expires},"refresh_token":"rogue-r-{case}"}}"#
            )
        };
        match case.as_str() {
            "oversized" => (StatusCode::OK, "x".repeat(200_000)).into_response(),
            "html" => (
                StatusCode::OK,
                "<html><body>Service Unavailable</body></html>",
            )
                .into_response(),
            "truncated" => (StatusCode::OK, r#"{"access_token":"abc","expi"#).into_response(),
            "empty" => (StatusCode::OK, "").into_response(),
            "fault" => (StatusCode::INTERNAL_SERVER_ERROR, exact_sim::APIGEE_FAULT).into_response(),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                (StatusCode::OK, ok("\"600\"")).into_response()
            }
            "ratelimited" => {
                let mut h = HeaderMap::new();
                h.insert("retry-after", "30".parse().expect("header"));
                (StatusCode::TOO_MANY_REQUESTS, h, "").into_response()
            }
            "expires-zero" => (StatusCode::OK, ok("\"0\"")).into_response(),
            "expires-negative" => (StatusCode::OK, ok("\"-5\"")).into_response(),
            "expires-huge" => (StatusCode::OK, ok("\"99999999\"")).into_response(),
            "expires-text" => (StatusCode::OK, ok("\"soon\"")).into_response(),
            _ => (StatusCode::NOT_FOUND, "").into_response(),
        }
    }
    let app = axum::Router::new().route("/{case}/token", post(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn broken_token_responses_are_retried_or_reported_and_never_trusted() {
    let (admin, ns, sim) = setup().await;
    let rogue = rogue_token_endpoint().await;
    let op = Operator::start(&ns, "op").await;
    let failing = [
        ("ratelimited", "429"),
        ("oversized", "oversized answer"),
        ("html", "not token JSON"),
        ("truncated", "not token JSON"),
        ("empty", "empty body"),
        ("fault", "500 fault"),
        ("slow", "timed out"),
    ];
    let granted = [
        ("expires-zero", "\"0\""),
        ("expires-negative", "\"-5\""),
        ("expires-huge", "\"99999999\""),
        ("expires-text", "\"soon\""),
    ];
    for (case, _) in failing.iter().chain(granted.iter()) {
        put_secret(
            &admin,
            &ns,
            &format!("{case}-credentials"),
            &[("client-secret", "secret-1")],
        )
        .await;
        put_client(&admin, &ns, case, &sim, serde_json::json!({"tokenUrl": format!("{rogue}/{case}/token"), "accessTokenExpiresIn": "30s"})).await;
        bootstrap_connection(
            &admin,
            &ns,
            &sim,
            &format!("c-{case}"),
            serde_json::json!({"clientRef": {"name": case}}),
        )
        .await;
    }
    for (case, fragment) in failing {
        let (status, _, msg) = wait_reason(
            &admin,
            &ns,
            &format!("c-{case}"),
            "RefreshFailing",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(status, "False");
        assert!(msg.contains(fragment), "{case}: {msg}");
        if case == "ratelimited" {
            // Retry-After (30 s) is honoured: checked right after the refusal was seen.
            let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
            let st = api
                .get("c-ratelimited")
                .await
                .expect("conn")
                .status
                .expect("status");
            let next = st.next_refresh_time.expect("next");
            let wait = next.duration_since(jiff::Timestamp::now()).as_secs();
            assert!(wait >= 20, "Retry-After 30 s respected: next in {wait} s");
        }
        assert!(
            secret_data(&admin, &ns, &format!("c-{case}-exact-token"))
                .await
                .is_none(),
            "{case}: nothing published"
        );
    }
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    for (case, raw) in granted {
        let conn = format!("c-{case}");
        let (status, _, msg) = wait_reason(&admin, &ns, &conn, "TokenPublished", T).await;
        assert_eq!(status, "True");
        assert!(
            msg.contains("unusable expires_in") && msg.contains(raw),
            "{case}: {msg}"
        );
        let st = api.get(&conn).await.expect("conn").status.expect("status");
        let life = st
            .access_token_expires_at
            .expect("exp")
            .duration_since(st.last_refresh_time.expect("last"));
        assert_eq!(
            life.as_secs(),
            30,
            "{case}: the configured lifetime is used instead"
        );
    }
    nothing_else_broke(&admin, &ns, &sim).await;
    op.stop().await;
}

#[tokio::test]
async fn deleting_a_client_in_use_keeps_the_chain_for_when_it_returns() {
    let (admin, ns, sim) = setup().await;
    put_secret(
        &admin,
        &ns,
        "other-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    put_client(&admin, &ns, "other", &sim, serde_json::json!({})).await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "acme",
        serde_json::json!({"clientRef": {"name": "other"}}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;
    wait_reason(&admin, &ns, "acme", "TokenPublished", T).await;
    let clients: Api<ExactOAuthClient> = Api::namespaced(admin.clone(), &ns);
    clients
        .delete("other", &DeleteParams::default())
        .await
        .expect("delete client");
    expect(&admin, &ns, "acme", "ClientNotReady", "ExactOAuthClient").await;
    let state = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state kept");
    assert!(state.contains_key("refresh_token"), "refresh token kept");
    put_client(&admin, &ns, "other", &sim, serde_json::json!({})).await;
    wait_reason(&admin, &ns, "acme", "TokenPublished", T).await;
    let calls = sim
        .connection_stats("acme")
        .expect("stats")
        .counters
        .refresh_ok;
    support::wait_for(T, || async {
        (sim.connection_stats("acme")?.counters.refresh_ok > calls).then_some(())
    })
    .await
    .expect("refreshing again without re-authorization");
    nothing_else_broke(&admin, &ns, &sim).await;
    op.stop().await;
}

#[tokio::test]
async fn startup_problems_exit_with_a_clear_message() {
    let bin = env!("CARGO_BIN_EXE_exact-operator");
    let bad_flag = std::process::Command::new(bin)
        .args(["--metrics-addr", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(bad_flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("--metrics-addr"));

    let dir = tempfile_dir();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .expect("write kubeconfig");
    let unreachable = std::process::Command::new(bin)
        .env("KUBECONFIG", &kubeconfig)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(unreachable.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        err.contains("cannot check CRD exactoauthclients.exact-operator.io"),
        "{err}"
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = support::repo_path(&format!("target/tmp/bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}
