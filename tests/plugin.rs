//! End-to-end tests of the `kubectl-exact` plugin binary against the real control plane,
//! exact-sim and the operator (in-process): the compiled binary runs as a subprocess with
//! `KUBECONFIG` pointing at the test cluster, and its output and exit codes are checked.

mod harness;
mod support;

use exact_operator::crd::{ExactConnection, REFRESH_REQUEST_ANNOTATION};
use exact_sim::Sim;
use harness::*;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use kube::Client;
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What one run of the plugin produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-exact"));
    cmd.args(args)
        .env("KUBECONFIG", support::kubeconfig_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn finished(output: std::process::Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the plugin to completion (asynchronously, so the in-process operator keeps running).
async fn plugin(args: &[&str]) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(90), command(args).output())
        .await
        .unwrap_or_else(|_| panic!("kubectl-exact {args:?} did not finish within 90s"))
        .expect("kubectl-exact runs");
    finished(output)
}

/// A namespace with a working client `app` and, when `ready` names them, bootstrapped
/// connections that have reached TokenPublished under a running operator.
async fn setup(ready: &[&str]) -> (Client, String, Sim, Operator) {
    let TestEnv { admin, ns, sim } = env_with_connections(ready).await;
    let op = Operator::start(&ns, "op").await;
    for name in ready {
        wait_published(&admin, &ns, name).await;
    }
    (admin, ns, sim, op)
}

#[tokio::test]
async fn status_lists_connections_and_exits_non_zero_when_one_is_not_ready() {
    let (admin, ns, _sim, op) = setup(&["acme"]).await;

    let run = plugin(&["status", "-n", &ns]).await;
    assert_eq!(run.code, 0, "all Ready: {run:?}");
    let mut lines = run.stdout.lines();
    let header = lines.next().expect("a header line");
    for column in [
        "NAME",
        "READY",
        "REASON",
        "DIVISION",
        "TOKEN EXPIRES",
        "NEXT REFRESH",
        "REFRESH TOKEN EXPIRES",
        "AGE",
    ] {
        assert!(header.contains(column), "{column} missing: {header}");
    }
    assert!(
        !header.contains("NAMESPACE"),
        "no NAMESPACE column without -A"
    );
    let row = lines.next().expect("a row for acme");
    for cell in ["acme", "True", "TokenPublished", "123456", "in "] {
        assert!(row.contains(cell), "{cell} missing: {row}");
    }

    // JSON carries the fields, with absolute times matching the status.
    let run = plugin(&["status", "-n", &ns, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
    let item = &doc["items"][0];
    assert_eq!(item["name"], "acme");
    assert_eq!(item["namespace"], ns.as_str());
    assert_eq!(item["ready"], true);
    assert_eq!(item["reason"], "TokenPublished");
    assert_eq!(item["division"], 123456);
    for field in [
        "accessTokenExpiresAt",
        "nextRefreshTime",
        "refreshTokenExpiresAt",
        "created",
    ] {
        let value = item[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing: {item}"));
        assert!(
            value.parse::<jiff::Timestamp>().is_ok(),
            "{field} is RFC 3339: {value}"
        );
    }
    let yaml = plugin(&["status", "-n", &ns, "-o", "yaml"]).await;
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml.stdout).expect("valid YAML");
    assert_eq!(doc["items"][0]["name"], "acme");

    // A connection whose client does not exist: ClientNotReady, and status fails.
    put_connection(
        &admin,
        &ns,
        "orphan",
        serde_json::json!({"clientRef": {"name": "missing"}}),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "orphan",
        "ClientNotReady",
        Duration::from_secs(30),
    )
    .await;
    let run = plugin(&["status", "-n", &ns]).await;
    assert_eq!(run.code, 1, "one connection is not Ready: {run:?}");
    let orphan = run
        .stdout
        .lines()
        .find(|l| l.starts_with("orphan"))
        .expect("orphan row");
    assert!(
        orphan.contains("False") && orphan.contains("ClientNotReady"),
        "{orphan}"
    );

    // -A adds the NAMESPACE column and finds this namespace's connections.
    let run = plugin(&["status", "-A"]).await;
    assert!(run.stdout.starts_with("NAMESPACE"), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&ns) && l.contains("acme")),
        "{run:?}"
    );

    // An empty namespace: exit 0 and a clear message.
    let empty = support::fresh_namespace(&admin).await;
    let run = plugin(&["status", "--namespace", &empty]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains(&format!("No ExactConnections found in {empty} namespace.")),
        "{run:?}"
    );
    op.stop().await;
}

#[tokio::test]
async fn inspect_shows_secret_keys_and_events_but_never_token_values() {
    let (admin, ns, _sim, op) = setup(&["acme"]).await;
    let before = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    let state_before = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state secret");

    let text = plugin(&["inspect", "acme", "-n", &ns]).await;
    let json = plugin(&["inspect", "acme", "-n", &ns, "-o", "json"]).await;
    let yaml = plugin(&["inspect", "acme", "-n", &ns, "-o", "yaml"]).await;

    let after = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    let state_after = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state secret");
    let bootstrap = secret_data(&admin, &ns, "acme-bootstrap")
        .await
        .expect("bootstrap secret");
    // Every secret value seen around the runs (tokens rotate every few seconds).
    let secrets: Vec<&String> = [&before, &after, &state_before, &state_after, &bootstrap]
        .iter()
        .flat_map(|d| {
            [
                d.get("access_token"),
                d.get("refresh_token"),
                d.get("refresh-token"),
            ]
        })
        .flatten()
        .filter(|v| v.len() >= 8)
        .collect();
    assert!(secrets.len() >= 3, "found the token values to look for");
    for run in [&text, &json, &yaml] {
        assert_eq!(run.code, 0, "{run:?}");
        for value in &secrets {
            assert!(
                !run.all().contains(value.as_str()),
                "a token value leaked into the output"
            );
        }
    }

    for expected in [
        "ExactConnection ",
        "Client:",
        &format!("{ns}/app"),
        "Secret acme-bootstrap key refresh-token",
        "TokenPublished",
        "Client ID:  app-1",
        "acme-exact-token (workload): access_token, api_base_url, division, expires_at, token_type",
        "acme-exact-state (state): ",
        "refresh_token",
        "Events (last 10):",
        // A new connection's one Event (its bootstrap import has none of its own).
        "Authorized",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected:?} missing:\n{}",
            text.stdout
        );
    }

    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("valid JSON");
    assert_eq!(doc["name"], "acme");
    assert_eq!(doc["spec"]["targetSecret"], "acme-exact-token");
    assert_eq!(doc["client"]["found"], true);
    let keys: Vec<&str> = doc["secrets"][0]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "api_base_url",
            "division",
            "expires_at",
            "token_type"
        ]
    );
    assert_eq!(doc["secrets"][0]["ownedByConnection"], true);
    assert_eq!(doc["secrets"][1]["name"], "acme-exact-state");
    let reasons: Vec<&str> = doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"Authorized"), "{reasons:?}");
    let mut sorted = doc["events"].as_array().expect("events").clone();
    sorted.sort_by_key(|e| e["time"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        &sorted,
        doc["events"].as_array().expect("events"),
        "oldest first"
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml.stdout).expect("valid YAML");
    assert_eq!(doc["status"]["conditions"][0]["reason"], "TokenPublished");

    let missing = plugin(&["inspect", "nope", "-n", &ns]).await;
    assert_eq!(missing.code, 4, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains(&format!("ExactConnection {ns}/nope not found")),
        "{missing:?}"
    );
    op.stop().await;
}

#[tokio::test]
async fn refresh_sets_the_annotation_and_reports_what_the_operator_did() {
    let (admin, ns, sim, op) = setup(&["acme"]).await;

    let run = plugin(&["refresh", "acme", "-n", &ns, "--wait", "30s"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let conn = api.get("acme").await.expect("connection");
    let requested = conn
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFRESH_REQUEST_ANNOTATION))
        .expect("annotation set")
        .clone();
    assert!(
        requested.parse::<jiff::Timestamp>().is_ok(),
        "RFC 3339: {requested}"
    );
    assert_eq!(
        conn.status
            .as_ref()
            .and_then(|s| s.handled_refresh_request.as_deref()),
        Some(requested.as_str())
    );
    for expected in [
        format!("{REFRESH_REQUEST_ANNOTATION}={requested}"),
        format!("Handled request:       {requested}"),
        "True (TokenPublished)".to_string(),
        "Last refresh:".to_string(),
        "Next refresh:".to_string(),
        "Token:".to_string(),
    ] {
        assert!(
            run.stdout.contains(&expected),
            "{expected:?} missing:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("unchanged") || run.stdout.contains("renewed"),
        "says whether the token changed:\n{}",
        run.stdout
    );
    assert_eq!(
        sim.stats().totals.too_early,
        0,
        "the request never forced an early call"
    );

    // Without an operator watching, the request is set but never handled: exit 3.
    let quiet = support::fresh_namespace(&admin).await;
    put_connection(
        &admin,
        &quiet,
        "idle",
        serde_json::json!({"clientRef": {"name": "app"}}),
    )
    .await;
    let run = plugin(&["refresh", "idle", "-n", &quiet, "--wait", "2s"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("did not handle the request"), "{run:?}");
    let missing = plugin(&["refresh", "nope", "-n", &quiet]).await;
    assert_eq!(missing.code, 4, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    op.stop().await;
}

#[tokio::test]
async fn authorize_explains_missing_urls_and_waits_until_ready() {
    let (admin, ns, sim, op) = setup(&["acme"]).await;

    // Bootstrapped and Ready: nothing to authorize, and it says why there is no URL.
    let run = plugin(&["authorize", "acme", "-n", &ns]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("already Ready (TokenPublished)"),
        "{run:?}"
    );
    assert!(run.stdout.contains("no authorization URL"), "{run:?}");
    assert!(
        run.stdout
            .contains("Secret acme-bootstrap (key refresh-token)"),
        "{run:?}"
    );

    // Waiting for a bootstrap Secret that appears while authorize waits: exit 0 once Ready.
    put_connection(
        &admin,
        &ns,
        "later",
        serde_json::json!({"clientRef": {"name": "app"}, "refreshBefore": "1s",
            "refreshTokenSecretRef": {"name": "later-bootstrap", "key": "refresh-token"}}),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "later",
        "AwaitingAuthorization",
        Duration::from_secs(30),
    )
    .await;
    let child = command(&["authorize", "later", "-n", &ns, "--timeout", "60s"])
        .spawn()
        .expect("authorize starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = sim.seed_connection("app-1", "later", None);
    put_secret(&admin, &ns, "later-bootstrap", &[("refresh-token", &token)]).await;
    let run = finished(
        tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("authorize returns")
            .expect("authorize ran"),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("later has no authorization URL"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("Secret later-bootstrap (key refresh-token)"),
        "{run:?}"
    );
    assert!(run.stdout.contains("is Ready (TokenPublished)"), "{run:?}");
    assert!(
        run.stderr.contains("waiting for"),
        "progress on stderr: {run:?}"
    );
    assert!(
        !run.all().contains(&token),
        "the refresh token is never printed"
    );

    // A client problem is not something authorizing fixes: exit 1 with reason and message.
    put_connection(
        &admin,
        &ns,
        "orphan",
        serde_json::json!({"clientRef": {"name": "missing"}}),
    )
    .await;
    wait_reason(
        &admin,
        &ns,
        "orphan",
        "ClientNotReady",
        Duration::from_secs(30),
    )
    .await;
    let run = plugin(&["authorize", "orphan", "-n", &ns, "--timeout", "5s"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("ClientNotReady") && run.stdout.contains("missing"),
        "{run:?}"
    );
    op.stop().await;
}

#[tokio::test]
async fn authorize_prints_the_operator_url_and_returns_once_consent_is_given() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let sim = start_sim(exact_sim::SimConfig {
        auto_consent: true,
        ..fast_sim()
    })
    .await;
    let op = Operator::start_with_oauth(&ns, "op", Duration::from_secs(600)).await;
    let callback = format!(
        "{}/oauth2/callback",
        op.oauth_url.clone().expect("oauth url")
    );
    put_app_client(
        &admin,
        &ns,
        &sim,
        serde_json::json!({"redirectUri": callback}),
    )
    .await;
    put_unauthorized_connection(&admin, &ns, "acme").await;
    wait_reason(
        &admin,
        &ns,
        "acme",
        "AwaitingAuthorization",
        Duration::from_secs(30),
    )
    .await;
    let api: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let published = support::wait_for(Duration::from_secs(30), || async {
        api.get("acme").await.ok()?.status?.authorization_url
    })
    .await
    .expect("the operator publishes status.authorizationUrl");

    // Nobody consents: the URL is printed on a line of its own, then the wait times out.
    let run = plugin(&["authorize", "acme", "-n", &ns, "--timeout", "2s"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l.trim() == published),
        "URL on its own line: {run:?}"
    );
    assert!(run.stdout.contains("Timed out after 2s"), "{run:?}");
    assert!(
        run.stdout.contains("AwaitingAuthorization"),
        "last state named: {run:?}"
    );

    // A person follows the printed URL (exact-sim consents at once): authorize returns 0.
    let mut child = command(&["authorize", "acme", "-n", &ns, "--timeout", "60s"])
        .spawn()
        .expect("authorize starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut printed = Vec::new();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reads stdout") {
            printed.push(line.clone());
            if line.trim().starts_with("http") {
                return line.trim().to_string();
            }
        }
        panic!("no URL printed: {printed:?}");
    })
    .await
    .expect("the URL is printed promptly");
    assert_eq!(url, published);
    let page = reqwest::get(&url).await.expect("the consent round trip");
    assert_eq!(page.status().as_u16(), 200, "start -> Exact -> callback");
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.expect("reads stdout") {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("authorize returns")
        .expect("authorize ran");
    assert_eq!(status.code(), Some(0), "{printed:?}\n{rest}");
    assert!(rest.contains("acme is Ready (TokenPublished)"), "{rest}");
    let stats = sim.stats();
    assert_eq!(stats.totals.old_refresh_token_used, 0);

    // Ready now: plain `authorize` points to --force; --force prints a new link and returns
    // once a consent through it completed.
    let run = plugin(&["authorize", "acme", "-n", &ns, "--timeout", "5s"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("--force"), "{run:?}");
    let mut child = command(&[
        "authorize",
        "acme",
        "-n",
        &ns,
        "--force",
        "--timeout",
        "60s",
    ])
    .spawn()
    .expect("authorize --force starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let forced = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reads stdout") {
            if line.trim().starts_with("http") {
                return line.trim().to_string();
            }
        }
        panic!("no URL printed by --force");
    })
    .await
    .expect("a re-authorization link is printed promptly");
    assert_ne!(forced, url, "a new ticket");
    let page = reqwest::get(&forced)
        .await
        .expect("the re-consent round trip");
    assert_eq!(page.status().as_u16(), 200);
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.expect("reads stdout") {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("authorize --force returns")
        .expect("authorize --force ran");
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("authorized again and Ready"), "{rest}");
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    op.stop().await;
}

#[tokio::test]
async fn snippet_is_multi_document_yaml_granting_only_the_token_secret() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    put_connection(
        &admin,
        &ns,
        "acme",
        serde_json::json!({"clientRef": {"name": "app"}, "target": {"secretName": "acme-api"}}),
    )
    .await;
    let run = plugin(&[
        "snippet",
        "acme",
        "-n",
        &ns,
        "--image",
        "registry.local/exact-operator:test",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&run.stdout)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    );
    assert_eq!(docs[1]["rules"][0]["resourceNames"][0], "acme-api");
    let pod = &docs[3]["spec"]["template"]["spec"];
    let agent = &pod["initContainers"][0];
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(agent["image"], "registry.local/exact-operator:test");
    let args: Vec<&str> = agent["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        args,
        [
            "agent",
            "--secret",
            "acme-api",
            "--dir",
            "/var/run/exact",
            "--health-addr",
            "0.0.0.0:8098"
        ]
    );
    assert_eq!(pod["serviceAccountName"], "acme-app");

    // The RBAC part works on the real API server: the ServiceAccount may read exactly that Secret.
    let rbac: String = run
        .stdout
        .split("\n---\n")
        .take(4)
        .collect::<Vec<_>>()
        .join("\n---\n");
    support::apply_yaml(&admin, &rbac)
        .await
        .expect("ServiceAccount, Role and RoleBinding apply");
    let user = format!("system:serviceaccount:{ns}:acme-app");
    assert!(can(&admin, &user, &ns, "get", Some("acme-api")).await);
    assert!(can(&admin, &user, &ns, "watch", Some("acme-api")).await);
    assert!(
        !can(&admin, &user, &ns, "get", Some("acme-exact-state")).await,
        "not the state Secret"
    );
    assert!(
        !can(&admin, &user, &ns, "update", Some("acme-api")).await,
        "read-only"
    );
}

/// Asks the API server whether `user` may `verb` the Secret `name` in `ns`.
async fn can(admin: &Client, user: &str, ns: &str, verb: &str, name: Option<&str>) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
            "resourceAttributes": {"namespace": ns, "verb": verb, "resource": "secrets", "name": name},
        }
    }))
    .expect("valid review");
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("review answered");
    answer.status.is_some_and(|s| s.allowed)
}
