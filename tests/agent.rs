//! End-to-end tests of the token agent (`exact-operator agent`) against the real control
//! plane: files within a second of each Secret change, atomic replacement, never a refresh
//! token, the loopback HTTP endpoint, deletion and re-creation, API-server blips, minimal
//! RBAC, the binary with SIGTERM, and the freshness measurement with exact-sim and the
//! operator (`EXACT_FRESHNESS_CYCLES=10` for the long run, see docs/token-freshness.md).

mod harness;
mod support;

use exact_operator::agent::{self, Agent, AgentArgs, AgentError};
use exact_sim::{Sim, SimConfig};
use futures::StreamExt;
use harness::process::percentile;
use harness::{bootstrap_connection, put_app_client, put_secret, Operator};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bound every change must reach the files within.
const ONE_SECOND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh directory under `target/tmp`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n: u64 = rand::random();
        let p = support::repo_path("target/tmp/agent").join(format!("{tag}-{n:016x}"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The content of `dir/key`, if readable.
fn read(dir: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(key)).ok()
}

/// The sorted file names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Polls every 2 ms until `dir/key` holds `want`; returns how long that took from `since`.
async fn wait_file(
    dir: &Path,
    key: &str,
    want: &str,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    let deadline = since + timeout;
    loop {
        if read(dir, key).as_deref() == Some(want) {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (up to 10 s) until the agent's `access_token` file holds `want`; panics if never.
async fn wait_token_file(dir: &Path, want: &str) {
    let took = wait_file(
        dir,
        "access_token",
        want,
        Instant::now(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        took.is_some(),
        "{}/access_token never held the expected token; holds {:?}",
        dir.display(),
        read(dir, "access_token").map(|t| t.len())
    );
}

/// An RFC 3339 time `secs` from now.
fn in_secs(secs: i64) -> String {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .expect("time in range")
        .to_string()
}

/// Workload-Secret data with the given token and expiry.
fn token_data<'a>(token: &'a str, expires_at: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("access_token", token),
        ("token_type", "Bearer"),
        ("expires_at", expires_at),
        ("division", "123456"),
        ("api_base_url", "https://start.exactonline.nl/api/v1/123456"),
    ]
}

/// Agent arguments for `secret` in `ns`, writing to `dir`.
fn args(ns: &str, secret: &str, dir: &Path) -> AgentArgs {
    let mut a = AgentArgs::new(secret, dir);
    a.namespace = Some(ns.to_string());
    a
}

/// Starts the agent in-process.
async fn start(client: Client, args: AgentArgs) -> Agent {
    agent::start(client, args).await.expect("agent starts")
}

/// GET `url`: (status, body).
async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("HTTP request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// A client to the test API server with `token` as bearer, optionally through another URL.
async fn client_with(token: Option<&str>, url: Option<&str>) -> Client {
    let kubeconfig = Kubeconfig::read_from(support::kubeconfig_path()).expect("admin kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    if let Some(token) = token {
        config.auth_info = AuthInfo {
            token: Some(token.to_string().into()),
            ..AuthInfo::default()
        };
    }
    if let Some(url) = url {
        config.cluster_url = url.parse().expect("valid URL");
    }
    Client::try_from(config).expect("client builds")
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn files_follow_each_secret_change_within_a_second() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("follow");
    let exp = in_secs(600);
    put_secret(&admin, &ns, "tok", &token_data("AT-0", &exp)).await;
    let agent = start(admin.clone(), args(&ns, "tok", dir.path())).await;

    wait_token_file(dir.path(), "AT-0").await;
    // access_token is written first, the other keys right after it.
    for (k, v) in token_data("AT-0", &exp) {
        wait_file(dir.path(), k, v, Instant::now(), ONE_SECOND)
            .await
            .unwrap_or_else(|| panic!("file {k} holds {:?}", read(dir.path(), k)));
    }
    let mut latencies = Vec::new();
    for i in 1..=10 {
        let token = format!("AT-{i}");
        let exp = in_secs(600 + i);
        let t0 = Instant::now();
        put_secret(&admin, &ns, "tok", &token_data(&token, &exp)).await;
        let took = wait_file(
            dir.path(),
            "access_token",
            &token,
            t0,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|| panic!("token {i} never reached the file"));
        wait_file(dir.path(), "expires_at", &exp, t0, Duration::from_secs(5))
            .await
            .expect("expires_at follows");
        latencies.push(took);
    }
    latencies.sort();
    println!(
        "Secret write -> file: min {:?} p50 {:?} max {:?}",
        latencies[0], latencies[5], latencies[9]
    );
    assert!(
        latencies[9] < ONE_SECOND,
        "every change must reach the file within 1 s: {latencies:?}"
    );
    assert_eq!(
        listing(dir.path()),
        vec![
            "access_token",
            "api_base_url",
            "division",
            "expires_at",
            "token_type"
        ],
        "exactly the Secret's keys, no temp files left"
    );
    agent.stop().await.expect("stops cleanly");
    assert_eq!(
        read(dir.path(), "access_token").as_deref(),
        Some("AT-10"),
        "files stay"
    );
}

#[tokio::test]
async fn refresh_tokens_are_never_written_or_served() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("rt");
    let exp = in_secs(600);
    let mut data = token_data("AT-rt", &exp);
    data.extend([
        ("refresh_token", "RT-SECRET-1"),
        ("refresh-token", "RT-SECRET-2"),
        ("refreshToken", "RT-SECRET-3"),
    ]);
    put_secret(&admin, &ns, "tok", &data).await;
    let mut a = args(&ns, "tok", dir.path());
    a.http = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = start(admin.clone(), a).await;
    wait_token_file(dir.path(), "AT-rt").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files = listing(dir.path());
    assert!(
        files.iter().all(|f| !f.to_lowercase().contains("refresh")),
        "no refresh-token file: {files:?}"
    );
    for f in &files {
        let content = read(dir.path(), f).unwrap_or_default();
        assert!(!content.contains("RT-SECRET"), "{f} holds a refresh token");
    }
    let addr = agent.http_addr().expect("http bound");
    let (status, body) = get(&format!("http://{addr}/token")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("RT-SECRET"),
        "/token must not serve the refresh token"
    );
    agent.stop().await.expect("stops");
}

#[tokio::test]
async fn files_are_replaced_atomically() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("atomic");
    let exp = in_secs(600);
    // Values of very different lengths: a partial or in-place write would show a prefix,
    // a mix, or an empty file.
    let values: Vec<String> = (0..24)
        .map(|i| {
            let c = char::from(b'A' + (i % 26) as u8);
            c.to_string().repeat(if i % 2 == 0 { 64 * 1024 } else { 7 })
        })
        .collect();
    put_secret(&admin, &ns, "tok", &token_data(&values[0], &exp)).await;
    let agent = start(admin.clone(), args(&ns, "tok", dir.path())).await;
    wait_token_file(dir.path(), &values[0]).await;

    let allowed: Arc<BTreeSet<String>> = Arc::new(values.iter().cloned().collect());
    let stop = Arc::new(AtomicBool::new(false));
    let path = dir.path().join("access_token");
    let reader = {
        let (allowed, stop) = (allowed.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut bad) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match std::fs::read_to_string(&path) {
                    Ok(s) if allowed.contains(&s) => {}
                    Ok(s) => bad.push(format!("partial content of {} bytes", s.len())),
                    Err(e) => bad.push(format!("read failed: {e}")),
                }
            }
            (reads, bad)
        })
    };
    for v in &values[1..] {
        let t0 = Instant::now();
        put_secret(&admin, &ns, "tok", &token_data(v, &exp)).await;
        wait_file(dir.path(), "access_token", v, t0, Duration::from_secs(5))
            .await
            .expect("value reaches the file");
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().expect("reader thread");
    println!(
        "atomic replace: {reads} reads during {} replacements",
        values.len() - 1
    );
    assert!(
        reads > 100,
        "the reader must have raced the writer ({reads} reads)"
    );
    assert!(
        bad.is_empty(),
        "{} bad reads, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    agent.stop().await.expect("stops");
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_endpoint_serves_json_and_health_and_refuses_non_loopback_binds() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("http");

    for bad in ["0.0.0.0:0", "[::]:0", "192.0.2.10:8099"] {
        let mut a = args(&ns, "tok", dir.path());
        a.http = Some(bad.parse().expect("addr"));
        match agent::start(admin.clone(), a).await {
            Err(e @ AgentError::NonLoopbackHttp(_)) => {
                assert!(e.to_string().contains("not a loopback address"), "{e}")
            }
            Err(e) => panic!("{bad}: wrong error {e}"),
            Ok(_) => panic!("{bad}: a non-loopback --http must be refused"),
        }
    }

    let mut a = args(&ns, "tok", dir.path());
    a.http = Some("127.0.0.1:0".parse().expect("addr"));
    a.health_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = start(admin.clone(), a).await;
    let http = agent.http_addr().expect("http bound");
    let health = agent.health_addr().expect("health bound");

    // No Secret yet: 503 with a reason.
    let (s, body) = get(&format!("http://{http}/healthz")).await;
    assert_eq!(s, 503);
    assert!(body.contains("waiting for Secret"), "{body}");
    let (s, body) = get(&format!("http://{http}/token")).await;
    assert_eq!(s, 503);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    assert!(v["error"].is_string(), "{body}");

    let exp = in_secs(600);
    put_secret(&admin, &ns, "tok", &token_data("AT-http", &exp)).await;
    wait_token_file(dir.path(), "AT-http").await;
    let r = reqwest::get(format!("http://{http}/token"))
        .await
        .expect("GET /token");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "access_token": "AT-http", "token_type": "Bearer", "expires_at": exp,
            "division": "123456", "api_base_url": "https://start.exactonline.nl/api/v1/123456",
        })
    );
    for base in [http, health] {
        let (s, body) = get(&format!("http://{base}/healthz")).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("ok"), "{body}");
    }
    let (s, _) = get(&format!("http://{health}/token")).await;
    assert_eq!(s, 404, "the health listener never serves the token");

    // An expired token: unhealthy, and /token refuses it.
    let past = in_secs(-5);
    put_secret(&admin, &ns, "tok", &token_data("AT-old", &past)).await;
    wait_file(
        dir.path(),
        "access_token",
        "AT-old",
        Instant::now(),
        Duration::from_secs(5),
    )
    .await
    .expect("token written");
    let (s, body) = get(&format!("http://{health}/healthz")).await;
    assert_eq!(s, 503);
    assert!(body.contains("expired"), "{body}");
    let (s, body) = get(&format!("http://{http}/token")).await;
    assert_eq!(s, 503);
    assert!(
        body.contains("expired") && !body.contains("AT-old"),
        "{body}"
    );
    agent.stop().await.expect("stops");
}

// ---------------------------------------------------------------------------------------
// Resilience
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn keeps_the_last_token_when_the_secret_is_deleted_and_picks_up_a_new_one() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("delete");
    let exp = in_secs(600);
    put_secret(&admin, &ns, "tok", &token_data("AT-1", &exp)).await;
    let mut a = args(&ns, "tok", dir.path());
    a.http = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = start(admin.clone(), a).await;
    let http = agent.http_addr().expect("http bound");
    wait_token_file(dir.path(), "AT-1").await;

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    secrets
        .delete("tok", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        read(dir.path(), "access_token").as_deref(),
        Some("AT-1"),
        "file kept"
    );
    assert_eq!(
        read(dir.path(), "expires_at").as_deref(),
        Some(exp.as_str())
    );
    let (s, body) = get(&format!("http://{http}/token")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("AT-1"));
    let health = agent
        .health()
        .expect("still healthy: the token has not expired");
    assert!(health.contains("Secret deleted"), "{health}");

    let exp2 = in_secs(700);
    let t0 = Instant::now();
    put_secret(&admin, &ns, "tok", &token_data("AT-2", &exp2)).await;
    let took = wait_file(
        dir.path(),
        "access_token",
        "AT-2",
        t0,
        Duration::from_secs(5),
    )
    .await
    .expect("the re-created Secret is picked up");
    println!("re-created Secret -> file: {took:?}");
    assert!(took < ONE_SECOND, "{took:?}");
    let health = agent.health().expect("healthy");
    assert!(!health.contains("deleted"), "{health}");
    agent.stop().await.expect("stops");
}

/// A TCP proxy in front of the API server that can cut every connection and refuse new
/// ones for a while: an API-server blip as the agent sees it.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().expect("lock").push(h.abort_handle());
            }
        });
        Proxy {
            addr,
            blocked,
            conns,
            task,
        }
    }

    /// Closes every open connection and refuses new ones until [`Proxy::resume`].
    fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for h in self.conns.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    fn resume(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test]
async fn keeps_working_through_an_api_server_blip() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("blip");
    let exp = in_secs(600);
    put_secret(&admin, &ns, "tok", &token_data("AT-before", &exp)).await;

    let kubeconfig = Kubeconfig::read_from(support::kubeconfig_path()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    let host = config.cluster_url.host().expect("host").to_string();
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let upstream = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve API server")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = client_with(None, Some(&format!("https://{host}:{}", proxy.addr.port()))).await;

    let mut a = args(&ns, "tok", dir.path());
    a.http = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = start(via_proxy, a).await;
    let http = agent.http_addr().expect("http bound");
    wait_token_file(dir.path(), "AT-before").await;

    // The blip: connections cut, API unreachable for 3 s; the Secret changes meanwhile.
    proxy.cut();
    put_secret(&admin, &ns, "tok", &token_data("AT-during", &in_secs(650))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read(dir.path(), "access_token").as_deref(),
        Some("AT-before"),
        "the last good token stays on disk while the API is unreachable"
    );
    let (s, body) = get(&format!("http://{http}/healthz")).await;
    assert_eq!(s, 200, "still healthy while the token is valid: {body}");
    let (s, body) = get(&format!("http://{http}/token")).await;
    assert_eq!(s, 200);
    assert!(body.contains("AT-before"));

    proxy.resume();
    let t0 = Instant::now();
    let took = wait_file(
        dir.path(),
        "access_token",
        "AT-during",
        t0,
        Duration::from_secs(40),
    )
    .await
    .expect("the agent re-watches after the blip and catches up");
    println!("caught up {took:?} after the API came back");

    // And it is live again: the next change arrives within a second.
    let t0 = Instant::now();
    put_secret(&admin, &ns, "tok", &token_data("AT-after", &in_secs(700))).await;
    let took = wait_file(
        dir.path(),
        "access_token",
        "AT-after",
        t0,
        Duration::from_secs(5),
    )
    .await
    .expect("live again");
    assert!(took < ONE_SECOND, "{took:?}");
    agent.stop().await.expect("stops");
}

// ---------------------------------------------------------------------------------------
// RBAC and the binary
// ---------------------------------------------------------------------------------------

/// Creates ServiceAccount `agent` with a Role allowing only get/list/watch on Secret
/// `secret`, and returns a bearer token for it from the TokenRequest API.
async fn restricted_identity(admin: &Client, ns: &str, secret: &str) -> String {
    let yaml = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: agent, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
         metadata: {{name: token-agent, namespace: {ns}}}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [secrets]\n  resourceNames: [{secret}]\n  \
         verbs: [get, list, watch]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {{name: token-agent, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: token-agent}}\n\
         subjects:\n- {{kind: ServiceAccount, name: agent, namespace: {ns}}}\n"
    );
    support::apply_yaml(admin, &yaml)
        .await
        .expect("apply agent RBAC");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    accounts
        .create_token_request("agent", &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token
}

#[tokio::test]
async fn runs_with_only_get_list_watch_on_its_one_secret() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("rbac");
    put_secret(&admin, &ns, "tok", &token_data("AT-rbac-1", &in_secs(600))).await;
    put_secret(&admin, &ns, "other", &[("access_token", "NOT-YOURS")]).await;
    let token = restricted_identity(&admin, &ns, "tok").await;
    let restricted = client_with(Some(&token), None).await;

    let secrets: Api<Secret> = Api::namespaced(restricted.clone(), &ns);
    support::wait_for(Duration::from_secs(30), || async {
        secrets.get("tok").await.ok()
    })
    .await
    .expect("RBAC lets the agent read its Secret");
    let denied = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(
        denied(secrets.get("other").await.map(|_| ())),
        "other Secrets are off limits"
    );
    assert!(
        denied(secrets.list(&ListParams::default()).await.map(|_| ())),
        "listing all Secrets is off limits"
    );

    let agent = start(restricted, args(&ns, "tok", dir.path())).await;
    wait_token_file(dir.path(), "AT-rbac-1").await;
    let t0 = Instant::now();
    put_secret(&admin, &ns, "tok", &token_data("AT-rbac-2", &in_secs(700))).await;
    let took = wait_file(
        dir.path(),
        "access_token",
        "AT-rbac-2",
        t0,
        Duration::from_secs(5),
    )
    .await
    .expect("the watch delivers changes");
    assert!(took < ONE_SECOND, "{took:?}");
    assert!(agent.health().is_ok());
    agent.stop().await.expect("stops");
}

#[tokio::test]
async fn the_binary_mirrors_the_secret_logs_no_tokens_and_stops_on_sigterm() {
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("bin");
    let bin = env!("CARGO_BIN_EXE_exact-operator");

    // Refused before touching the cluster.
    let out = std::process::Command::new(bin)
        .args([
            "agent",
            "--secret",
            "tok",
            "--namespace",
            &ns,
            "--http",
            "0.0.0.0:8099",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("run binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");

    put_secret(
        &admin,
        &ns,
        "tok",
        &token_data("AT-BIN-SECRET-1", &in_secs(600)),
    )
    .await;
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let files = dir.path().join("files");
    let mut child = tokio::process::Command::new(bin)
        .args([
            "agent",
            "--secret",
            "tok",
            "--namespace",
            &ns,
            "--log-level",
            "debug",
        ])
        .arg("--dir")
        .arg(&files)
        .env("KUBECONFIG", support::kubeconfig_path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");
    wait_file(
        &files,
        "access_token",
        "AT-BIN-SECRET-1",
        Instant::now(),
        Duration::from_secs(20),
    )
    .await
    .expect("the binary writes the token");
    let t0 = Instant::now();
    put_secret(
        &admin,
        &ns,
        "tok",
        &token_data("AT-BIN-SECRET-2", &in_secs(700)),
    )
    .await;
    let took = wait_file(
        &files,
        "access_token",
        "AT-BIN-SECRET-2",
        t0,
        Duration::from_secs(5),
    )
    .await
    .expect("the binary follows changes");
    assert!(took < ONE_SECOND, "{took:?}");

    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    assert_eq!(
        read(&files, "access_token").as_deref(),
        Some("AT-BIN-SECRET-2")
    );

    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(logs.contains("new token received"), "logs: {logs}");
    assert!(
        !logs.contains("AT-BIN-SECRET"),
        "logs must never contain token values:\n{logs}"
    );
}

// ---------------------------------------------------------------------------------------
// Freshness measurement
// ---------------------------------------------------------------------------------------

/// The simulated kubelet delay for compressed timing: 60 s scaled by 20/600.
const KUBELET_DELAY: Duration = Duration::from_secs(2);

/// The token a Secret held at `t`, from its change trace.
fn token_at(trace: &[(Instant, String)], t: Instant) -> Option<&str> {
    trace
        .iter()
        .rev()
        .find(|(at, _)| *at <= t)
        .map(|(_, tok)| tok.as_str())
}

/// Runs exact-sim (20 s tokens, 5 s window), the operator (refreshBefore 1 s: Exact's 25 s of
/// 600 s scaled to 20 s) and the agent for `EXACT_FRESHNESS_CYCLES` refresh cycles (default
/// 3), sampling every 100 ms whether the agent's `access_token` file holds a token the
/// simulator accepts, next to the Secret itself and a kubelet-mounted copy modelled as the
/// same trace delayed by 2 s; and the Secret-change-to-file latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_the_agent_file_always_holds_a_valid_token() {
    let cycles: usize = std::env::var("EXACT_FRESHNESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let admin = support::admin_client().await;
    let ns = support::fresh_namespace(&admin).await;
    let dir = TempDir::new("fresh");
    let cfg = SimConfig {
        access_token_lifetime: Duration::from_secs(20),
        refresh_window: Duration::from_secs(5),
        ..SimConfig::default()
    }
    .with_client("app-1", "secret-1");
    let sim = Sim::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim starts");
    put_app_client(
        &admin,
        &ns,
        &sim,
        serde_json::json!({"accessTokenExpiresIn": "20s", "refreshWindow": "5s"}),
    )
    .await;
    bootstrap_connection(
        &admin,
        &ns,
        &sim,
        "acme",
        serde_json::json!({"refreshBefore": "1s"}),
    )
    .await;
    let op = Operator::start(&ns, "op").await;

    // Our own watch on the Secret: when each token value appeared.
    let trace: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let watch_task = {
        let trace = trace.clone();
        let api: Api<Secret> = Api::namespaced(admin.clone(), &ns);
        tokio::spawn(async move {
            let cfg = watcher::Config::default().fields("metadata.name=acme-exact-token");
            let mut events = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = events.next().await {
                let secret = match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                    _ => continue,
                };
                let now = Instant::now();
                let Some(tok) = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("access_token"))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                else {
                    continue;
                };
                let mut t = trace.lock().expect("lock");
                if t.last().is_none_or(|(_, last)| *last != tok) {
                    t.push((now, tok));
                }
            }
        })
    };
    let agent = start(admin.clone(), args(&ns, "acme-exact-token", dir.path())).await;
    support::wait_for(Duration::from_secs(60), || async {
        read(dir.path(), "access_token").filter(|t| sim.access_token_valid(t))
    })
    .await
    .expect("the agent writes the operator's first token");
    // Let the 2 s-late mount model have a value before measuring.
    tokio::time::sleep(KUBELET_DELAY + Duration::from_millis(500)).await;

    let start_at = Instant::now();
    let start_changes = trace.lock().expect("lock").len();
    let deadline = start_at + Duration::from_secs(30 * cycles as u64 + 30);
    let mut file_trace: Vec<(Instant, String)> = Vec::new();
    let (mut samples, mut agent_ok, mut secret_ok, mut mount_ok) = (0u64, 0u64, 0u64, 0u64);
    // Samples where the Secret held a valid token but the agent's file did not: the agent's
    // own share of any gap (the rest would be the operator's).
    let mut agent_behind = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_sample = start_at;
    let mut last_change_seen: Option<Instant> = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let file = read(dir.path(), "access_token").unwrap_or_default();
        if file_trace.last().is_none_or(|(_, last)| *last != file) {
            file_trace.push((now, file.clone()));
        }
        if now >= next_sample {
            next_sample += Duration::from_millis(100);
            let (secret_tok, mount_tok) = {
                let t = trace.lock().expect("lock");
                (
                    token_at(&t, now).map(str::to_string),
                    now.checked_sub(KUBELET_DELAY)
                        .and_then(|d| token_at(&t, d))
                        .map(str::to_string),
                )
            };
            samples += 1;
            let file_valid = sim.access_token_valid(&file);
            let secret_valid = secret_tok.is_some_and(|t| sim.access_token_valid(&t));
            agent_ok += u64::from(file_valid);
            secret_ok += u64::from(secret_valid);
            agent_behind += u64::from(secret_valid && !file_valid);
            mount_ok += u64::from(mount_tok.is_some_and(|t| sim.access_token_valid(&t)));
        }
        let changes = trace.lock().expect("lock").len() - start_changes;
        if changes >= cycles && last_change_seen.is_none() {
            last_change_seen = Some(now);
        }
        // Run until `cycles` refreshes, plus 3 s so the late-mount model sees the last one.
        if last_change_seen.is_some_and(|t| now >= t + Duration::from_secs(3)) {
            break;
        }
        assert!(
            now < deadline,
            "only {changes} refreshes in {:?}",
            now - start_at
        );
    }
    let window = start_at.elapsed();
    agent.stop().await.expect("agent stops");
    op.stop().await;
    watch_task.abort();

    // Latency: each Secret change in the window to the first file read showing it.
    let trace = trace.lock().expect("lock").clone();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for (at, tok) in trace.iter().filter(|(at, _)| *at >= start_at) {
        match file_trace
            .iter()
            .find(|(ft, ftok)| ftok == tok && *ft + ONE_SECOND >= *at)
        {
            Some((ft, _)) => latencies.push(ft.saturating_duration_since(*at)),
            None => missed += 1,
        }
    }
    latencies.sort();
    let refreshes = trace.iter().filter(|(at, _)| *at >= start_at).count();
    let pct = |n: u64| 100.0 * n as f64 / samples.max(1) as f64;
    let stats = sim.stats();
    println!(
        "FRESHNESS cycles={cycles} refreshes={} window={:.1}s samples={samples} (every 100 ms)\n\
         \x20 agent file holds a valid token:      {agent_ok}/{samples} = {:.2}%\n\
         \x20 Secret (API) holds a valid token:    {secret_ok}/{samples} = {:.2}%\n\
         \x20 agent file behind a valid Secret:    {agent_behind} samples\n\
         \x20 kubelet mount model (2 s late):      {mount_ok}/{samples} = {:.2}%\n\
         \x20 Secret change -> agent file latency: n={} p50={:?} p99={:?} max={:?} missed={missed}\n\
         \x20 sim: refresh_ok={} too_early={} old_refresh_token_used={}",
        refreshes,
        window.as_secs_f64(),
        pct(agent_ok),
        pct(secret_ok),
        pct(mount_ok),
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        stats.totals.refresh_ok,
        stats.totals.too_early,
        stats.totals.old_refresh_token_used,
    );
    assert_eq!(missed, 0, "every Secret change reached the file");
    assert!(latencies.len() >= cycles, "saw {} changes", latencies.len());
    assert!(
        pct(agent_ok) >= 99.0,
        "the agent's file must hold a valid token >= 99% of the time: {:.2}%",
        pct(agent_ok)
    );
    assert!(
        percentile(&latencies, 0.99) < ONE_SECOND,
        "p99 latency {:?}",
        percentile(&latencies, 0.99)
    );
    sim.shutdown().await;
}
