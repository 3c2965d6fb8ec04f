//! Pods on real nodes (`tests/support/node.rs`: kube-controller-manager, kube-scheduler and
//! two kubelets + containerd, Kubernetes v1.20.2):
//!
//! - the chart installed by real Helm (`scripts/chart-test install`, Helm v4's Go SDK):
//!   two operator replicas Running and Ready under the chart's ServiceAccount, RBAC and
//!   restricted security context, with leader election; a connection against exact-sim
//!   (on loopback in this process; pods use hostNetwork) becomes Ready through them, and
//!   `helm upgrade` plus deleting the leader pod keep the chain intact (no old refresh
//!   token is ever used);
//! - mounted token Secrets: share of time a pod reading its mounted `access_token` holds
//!   an expired token, plain mount vs. mount with the operator's pod nudge
//!   (`--nudge-mounting-pods`) vs. the token agent as a sidecar — one run, the figures of
//!   docs/token-freshness.md. `EXACT_NODE_FRESHNESS_CYCLES` sets the refresh cycles
//!   measured (default 3, about 1 minute; the documented run used 10).
//!
//! Both tests share one release of the chart (cluster-wide ClusterRole) and run one after
//! the other: a rollout in the middle of a measurement would measure the rollout.

mod harness;
mod support;

use std::time::{Duration, Instant};

use exact_sim::{Sim, SimConfig};
use harness::{bootstrap_connection, put_client, put_secret, start_sim, wait_reason};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::Client;
use support::node::{
    node_env, NodeEnv, BUSYBOX_IMAGE, OPERATOR_IMAGE_REPOSITORY, OPERATOR_IMAGE_TAG,
};

const RELEASE_NAMESPACE: &str = "exact-operator-system";
const RELEASE: &str = "exact-operator";
const TOKEN_SECRET: &str = "acme-exact-token";

/// One test at a time: they share the operator release.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Set once the release is installed and rolled out (by whichever test comes first).
static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Compressed Exact timing (as the demo and docs/token-freshness.md): 20 s access tokens,
/// refreshes allowed in the last 5 s; connections refresh 1 s before expiry.
fn sim_config() -> SimConfig {
    SimConfig {
        access_token_lifetime: Duration::from_secs(20),
        refresh_window: Duration::from_secs(5),
        ..SimConfig::default()
    }
    .with_client("app-1", "secret-1")
}

fn chart_test(args: &[&str]) -> String {
    let script = support::repo_path("scripts/chart-test");
    let output = std::process::Command::new(&script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "`scripts/chart-test {}` failed ({}):\n{}",
        args.first().copied().unwrap_or_default(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The test bed's values: the offline image, host network (no kube-proxy, Exact on the
/// host's loopback), the API server's loopback address, and the pod nudge.
fn release_values(env: &NodeEnv, extra: serde_json::Value) -> std::path::PathBuf {
    let mut values = serde_json::json!({
        "image": {"repository": OPERATOR_IMAGE_REPOSITORY, "tag": OPERATOR_IMAGE_TAG, "pullPolicy": "Never"},
        "hostNetwork": true,
        "nudgeMountingPods": true,
        // The chart shards by default; this test covers leader election (the one-shard case).
        "leaderElection": {"enabled": true},
        "sharding": {"shards": 0, "leaseSeconds": 15},
        // Another process on this host may hold 8080.
        "metrics": {"port": free_port()},
        "extraEnv": env.api_env(),
    });
    if let (Some(values), serde_json::Value::Object(extra)) = (values.as_object_mut(), extra) {
        values.extend(extra);
    }
    let path = env.dir.join(format!("values-{}.json", free_port()));
    std::fs::write(&path, values.to_string()).expect("write the values file");
    path
}

fn helm(env: &NodeEnv, command: &str, values: &std::path::Path) {
    let kubeconfig = env.kubeconfig.to_str().expect("UTF-8 path");
    let values = values.to_str().expect("UTF-8 path");
    chart_test(&[
        command,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        RELEASE_NAMESPACE,
        "--name",
        RELEASE,
        "-f",
        values,
    ]);
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the operator Deployment's pods of the current template are all Ready and no
/// other pods are left; returns them.
async fn wait_rolled_out(admin: &Client, timeout: Duration) -> Vec<Pod> {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let selector = "app.kubernetes.io/name=exact-operator";
    let done = support::wait_for(timeout, || async {
        let d = deployments.get(RELEASE).await.ok()?;
        let status = d.status.as_ref()?;
        let want = d.spec.as_ref()?.replicas.unwrap_or(1);
        let current = status.observed_generation >= d.metadata.generation
            && status.updated_replicas == Some(want)
            && status.ready_replicas == Some(want)
            && status.replicas == Some(want);
        if !current {
            return None;
        }
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        let live: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == want as usize && live.iter().all(is_ready)).then_some(live)
    })
    .await;
    match done {
        Some(pods) => pods,
        None => panic!(
            "the operator Deployment did not roll out within {timeout:?}: {:?}; pods: {:?}",
            deployments.get(RELEASE).await.ok().and_then(|d| d.status),
            pods.list(&ListParams::default().labels(selector))
                .await
                .map(|l| l
                    .items
                    .iter()
                    .map(|p| (
                        p.metadata.name.clone(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.clone())
                            .map(|c| format!("{c:?}"))
                    ))
                    .collect::<Vec<_>>())
        ),
    }
}

/// Installs the chart once per test binary and waits for two Ready replicas.
async fn ensure_release(env: &NodeEnv) {
    INSTALLED
        .get_or_init(|| async {
            let admin = env.admin_client().await;
            let namespaces: Api<Namespace> = Api::all(admin.clone());
            let ns: Namespace = serde_json::from_value(
                serde_json::json!({"metadata": {"name": RELEASE_NAMESPACE}}),
            )
            .expect("namespace literal");
            let _ = namespaces.create(&PostParams::default(), &ns).await;
            let started = Instant::now();
            helm(env, "install", &release_values(env, serde_json::json!({})));
            let pods = wait_rolled_out(&admin, Duration::from_secs(180)).await;
            eprintln!(
                "NODE helm install -> {} operator pods Ready in {:.1} s",
                pods.len(),
                started.elapsed().as_secs_f64()
            );
        })
        .await;
}

/// A fresh namespace with exact-sim (20 s tokens), client `app` and connection `acme`,
/// Ready through the operator pods.
async fn ready_connection(admin: &Client) -> (String, Sim) {
    let ns = support::fresh_namespace(admin).await;
    let sim = start_sim(sim_config()).await;
    put_secret(
        admin,
        &ns,
        "app-credentials",
        &[("client-secret", "secret-1")],
    )
    .await;
    put_client(
        admin,
        &ns,
        "app",
        &sim,
        serde_json::json!({"accessTokenExpiresIn": "20s", "refreshWindow": "5s"}),
    )
    .await;
    bootstrap_connection(admin, &ns, &sim, "acme", serde_json::json!({})).await;
    wait_reason(
        admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(90),
    )
    .await;
    (ns, sim)
}

fn chain(sim: &Sim) -> exact_sim::stats::ChainStats {
    sim.connection_stats("acme").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_pods_keep_the_chain_through_helm_upgrade_and_pod_deletion() {
    let _serial = SERIAL.lock().await;
    let env = node_env();
    ensure_release(env).await;
    let admin = env.admin_client().await;

    // The pods run as the chart made them: its ServiceAccount, restricted security
    // context, host network, one per node.
    let pods = wait_rolled_out(&admin, Duration::from_secs(60)).await;
    assert_eq!(pods.len(), 2, "two replicas");
    let mut nodes = Vec::new();
    for pod in &pods {
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
        assert_eq!(spec.host_network, Some(true));
        let sc = spec.containers[0]
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        nodes.push(spec.node_name.clone().unwrap_or_default());
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 2, "the replicas run on both nodes: {nodes:?}");

    let started = Instant::now();
    let (ns, sim) = ready_connection(&admin).await;
    eprintln!(
        "NODE connection Ready through the pods in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // helm upgrade that changes the pod template: a rollout, one pod at a time.
    let started = Instant::now();
    helm(
        env,
        "upgrade",
        &release_values(
            env,
            serde_json::json!({"podAnnotations": {"exact-operator.io/test-rollout": "2"}}),
        ),
    );
    let pods = wait_rolled_out(&admin, Duration::from_secs(180)).await;
    assert!(pods.iter().all(|p| p
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("exact-operator.io/test-rollout"))));
    eprintln!(
        "NODE helm upgrade rolled out in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Delete the leader: the other replica takes over.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let holder = support::wait_for(Duration::from_secs(60), || async {
        let lease = leases.get("exact-operator-leader").await.ok()?;
        let holder = lease.spec?.holder_identity?;
        pods.iter()
            .filter_map(|p| p.metadata.name.clone())
            .find(|name| holder.starts_with(&format!("{name}-")))
    })
    .await
    .expect("one of the current pods holds the leader Lease");
    let pod_api: Api<Pod> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let started = Instant::now();
    pod_api
        .delete(&holder, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let pods = wait_rolled_out(&admin, Duration::from_secs(180)).await;
    assert!(pods
        .iter()
        .all(|p| p.metadata.name.as_deref() != Some(holder.as_str())));
    eprintln!(
        "NODE leader pod deleted, replacement Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The chain goes on: two more refreshes after all that, none with an old token.
    let before = chain(&sim).counters.refresh_ok;
    let after = support::wait_for(Duration::from_secs(90), || async {
        let ok = chain(&sim).counters.refresh_ok;
        (ok >= before + 2).then_some(ok)
    })
    .await;
    let stats = chain(&sim);
    assert!(
        after.is_some(),
        "no two refreshes after the upgrade and the pod deletion: {stats:?}"
    );
    assert_eq!(stats.counters.old_refresh_token_used, 0, "{stats:?}");
    assert_eq!(stats.counters.too_early, 0, "{stats:?}");
    wait_reason(
        &admin,
        &ns,
        "acme",
        "TokenPublished",
        Duration::from_secs(30),
    )
    .await;
    let data = harness::secret_data(&admin, &ns, TOKEN_SECRET)
        .await
        .expect("workload Secret");
    assert!(
        sim.access_token_valid(data.get("access_token").map(String::as_str).unwrap_or("")),
        "the published token is accepted"
    );
    eprintln!(
        "NODE chain intact: refresh_ok={} old_refresh_token_used={} too_early={}",
        stats.counters.refresh_ok, stats.counters.old_refresh_token_used, stats.counters.too_early
    );
}

/// Shell loop of a consumer container: every 200 ms read the token file and ask exact-sim
/// whether it accepts that token (`/_sim/token-valid`); print V (valid), X (expired or
/// unknown) or E (no answer). The token goes only to the simulator, never to the log.
/// (No `wget -T`: Debian's static busybox 1.35 crashes with it.)
fn reader_script(sim_port: u16, file: &str) -> String {
    format!(
        "while :; do t=$(cat {file} 2>/dev/null); \
         r=$(wget -q -O - \"http://127.0.0.1:{sim_port}/_sim/token-valid?access_token=$t\" 2>/dev/null); \
         case \"$r\" in *true*) echo V;; *false*) echo X;; *) echo E;; esac; sleep 0.2; done"
    )
}

fn reader_container(sim_port: u16, file: &str, mount: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", reader_script(sim_port, file)],
        "volumeMounts": [mount],
    })
}

/// Creates a pod, retrying while the namespace's ServiceAccount (or its token) is not there
/// yet: the ServiceAccount admission plugin refuses pods until then.
async fn create_pod(pods: &Api<Pod>, pod: serde_json::Value) {
    let pod: Pod = serde_json::from_value(pod).expect("pod literal");
    let last = std::sync::Mutex::new(String::new());
    let created = support::wait_for(Duration::from_secs(60), || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => Some(p),
            Err(e) => {
                if let Ok(mut last) = last.lock() {
                    *last = e.to_string();
                }
                None
            }
        }
    })
    .await;
    assert!(
        created.is_some(),
        "cannot create pod: {:?}",
        last.lock().map(|l| l.clone())
    );
}

#[derive(Default, Debug)]
struct Samples {
    valid: u64,
    expired: u64,
    no_answer: u64,
}

impl Samples {
    fn total(&self) -> u64 {
        self.valid + self.expired + self.no_answer
    }
    fn expired_percent(&self) -> f64 {
        100.0 * self.expired as f64 / self.total().max(1) as f64
    }
}

/// The V/X/E lines container `app` of `pod` printed between `from` and `to` (an error
/// while the container has not started yet).
async fn samples(
    pods: &Api<Pod>,
    pod: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> kube::Result<Samples> {
    let params = LogParams {
        container: Some("app".into()),
        timestamps: true,
        ..LogParams::default()
    };
    let log = pods.logs(pod, &params).await?;
    let mut s = Samples::default();
    for line in log.lines() {
        let Some((ts, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<jiff::Timestamp>() else {
            continue;
        };
        if ts < from || ts > to {
            continue;
        }
        match value.trim() {
            "V" => s.valid += 1,
            "X" => s.expired += 1,
            _ => s.no_answer += 1,
        }
    }
    Ok(s)
}

/// The host path of the token file in the Secret volume `token` of `pod`: the kubelet's
/// volume folder, the same tmpfs the container sees.
async fn volume_file(env: &NodeEnv, pods: &Api<Pod>, pod: &str) -> std::path::PathBuf {
    let p = pods.get(pod).await.expect("pod");
    let uid = p.metadata.uid.clone().expect("pod uid");
    let node = p.spec.and_then(|s| s.node_name).expect("scheduled pod");
    let index = node.rsplit('.').next().unwrap_or("1");
    env.dir.join(format!(
        "node-{index}/kubelet/pods/{uid}/volumes/kubernetes.io~secret/token/access_token"
    ))
}

/// When each access token appeared: in the Secret (the test's own watch) and in the given
/// volume files (polled every 20 ms from the host). Values stay in memory, never printed.
#[derive(Default)]
struct Arrivals {
    secret: Vec<(String, Instant)>,
    /// Published expiry (`expires_at`) of each token seen in the Secret.
    expiry: std::collections::HashMap<String, jiff::Timestamp>,
    files: Vec<Vec<(String, Instant)>>,
    /// Per file: 20 ms polls that found a token past its published expiry, and all polls.
    polls: Vec<(u64, u64)>,
}

fn track_arrivals(
    secrets: Api<k8s_openapi::api::core::v1::Secret>,
    files: Vec<std::path::PathBuf>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Arrivals> {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut arrivals = Arrivals {
            files: vec![Vec::new(); files.len()],
            polls: vec![(0, 0); files.len()],
            ..Arrivals::default()
        };
        let config = kube::runtime::watcher::Config::default()
            .fields(&format!("metadata.name={TOKEN_SECRET}"));
        let mut watch = kube::runtime::watcher(secrets, config)
            .applied_objects()
            .boxed();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                Some(Ok(secret)) = watch.next() => {
                    let field = |key: &str| secret.data.as_ref().and_then(|d| d.get(key))
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                    let token = field("access_token");
                    if let (Some(token), Some(expires)) = (&token, field("expires_at").and_then(|e| e.parse().ok())) {
                        arrivals.expiry.insert(token.clone(), expires);
                    }
                    if let Some(token) = token {
                        if arrivals.secret.last().map(|(t, _)| t) != Some(&token) {
                            arrivals.secret.push((token, Instant::now()));
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = jiff::Timestamp::now();
                    for (i, file) in files.iter().enumerate() {
                        if let Ok(token) = std::fs::read_to_string(file) {
                            // Judged by the expiry the operator published (measured from
                            // when it sent the token request, so at or before Exact's).
                            if let Some(expires) = arrivals.expiry.get(&token) {
                                arrivals.polls[i].1 += 1;
                                if *expires <= now {
                                    arrivals.polls[i].0 += 1;
                                }
                            }
                            if arrivals.files[i].last().map(|(t, _)| t) != Some(&token) {
                                arrivals.files[i].push((token, Instant::now()));
                            }
                        }
                    }
                }
            }
        }
        arrivals
    })
}

/// Delays from each Secret change to the file showing that token, in seconds, and how many
/// tokens the file skipped entirely.
fn delays(secret: &[(String, Instant)], file: &[(String, Instant)]) -> (Vec<f64>, usize) {
    let mut out = Vec::new();
    let mut missed = 0;
    // The first entry is the token already there when tracking began: no change to time.
    for (token, at) in secret.iter().skip(1) {
        match file.iter().find(|(t, _)| t == token) {
            Some((_, seen)) => out.push(seen.saturating_duration_since(*at).as_secs_f64()),
            None => missed += 1,
        }
    }
    out.sort_by(f64::total_cmp);
    (out, missed)
}

fn summary(d: &[f64]) -> String {
    if d.is_empty() {
        return "n=0".into();
    }
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min={:.2}s p50={:.2}s max={:.2}s",
        d.len(),
        d[0],
        at(0.5),
        d[d.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_token_freshness_plain_nudged_and_agent() {
    let _serial = SERIAL.lock().await;
    let env = node_env();
    ensure_release(env).await;
    let admin = env.admin_client().await;
    let (ns, sim) = ready_connection(&admin).await;
    let sim_port = sim.addr().port();
    let cycles: u32 = std::env::var("EXACT_NODE_FRESHNESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);

    // The agent reads the Secret with its own ServiceAccount, allowed that one Secret only.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "reader"}})).expect("sa");
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    support::apply_yaml(
        &admin,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: token-reader, namespace: {ns}}}
rules:
- apiGroups: [\"\"]
  resources: [secrets]
  resourceNames: [{TOKEN_SECRET}]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: token-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: token-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {ns}}}
"
        ),
    )
    .await
    .expect("agent RBAC");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let secret_volume =
        serde_json::json!({"name": "token", "secret": {"secretName": TOKEN_SECRET}});
    let mount = serde_json::json!({"name": "token", "mountPath": "/exact", "readOnly": true});
    for (name, labels) in [
        ("plain", serde_json::json!({})),
        (
            "nudged",
            serde_json::json!({"exact-operator.io/refresh-mounts": TOKEN_SECRET}),
        ),
    ] {
        create_pod(
            &pods,
            serde_json::json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": false,
                    "containers": [reader_container(sim_port, "/exact/access_token", mount.clone())],
                    "volumes": [secret_volume.clone()],
                }
            }),
        )
        .await;
    }
    let mut agent_env = env.api_env();
    if let Some(list) = agent_env.as_array_mut() {
        list.push(serde_json::json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}));
    }
    let shared = serde_json::json!({"name": "exact", "mountPath": "/var/run/exact"});
    create_pod(
        &pods,
        serde_json::json!({
            "metadata": {"name": "agent"},
            "spec": {
                "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                "serviceAccountName": "reader",
                "securityContext": {"fsGroup": 65532},
                "containers": [
                    {
                        "name": "exact-token-agent",
                        "image": format!("{OPERATOR_IMAGE_REPOSITORY}:{OPERATOR_IMAGE_TAG}"),
                        "imagePullPolicy": "Never",
                        "args": ["agent", "--secret", TOKEN_SECRET, "--dir", "/var/run/exact"],
                        "env": agent_env,
                        "volumeMounts": [shared.clone()],
                        "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                             "runAsNonRoot": true, "runAsUser": 65532},
                    },
                    reader_container(sim_port, "/var/run/exact/access_token", shared),
                ],
                "volumes": [{"name": "exact", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
            }
        }),
    )
    .await;

    // Every consumer reads a valid token once before the measurement starts.
    let consumers = ["plain", "nudged", "agent"];
    let since = jiff::Timestamp::now();
    for pod in consumers {
        let ok = support::wait_for(Duration::from_secs(120), || async {
            let s = samples(&pods, pod, since, jiff::Timestamp::now())
                .await
                .ok()?;
            (s.valid > 0).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "pod {pod} never read a valid token: {:?}",
            pods.get(pod).await.ok().and_then(|p| p.status)
        );
    }

    let files = vec![
        volume_file(env, &pods, "plain").await,
        volume_file(env, &pods, "nudged").await,
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tracker = track_arrivals(Api::namespaced(admin.clone(), &ns), files, stop.clone());

    let refreshes_before = chain(&sim).counters.refresh_ok;
    let from = jiff::Timestamp::now();
    let started = Instant::now();
    // One cycle is about 19 s (20 s tokens, refreshed 1 s before expiry).
    let done = support::wait_for(Duration::from_secs(u64::from(cycles) * 30 + 30), || async {
        (chain(&sim).counters.refresh_ok >= refreshes_before + u64::from(cycles)).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{cycles} refreshes did not happen: {:?}",
        chain(&sim)
    );
    // Let the last refresh's old token expire (1 s) and the pods sample it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = jiff::Timestamp::now();
    let window = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let arrivals = tracker.await.expect("arrival tracker");
    let (plain_delays, plain_missed) = delays(&arrivals.secret, &arrivals.files[0]);
    let (nudged_delays, nudged_missed) = delays(&arrivals.secret, &arrivals.files[1]);
    let share = |(expired, all): (u64, u64)| 100.0 * expired as f64 / all.max(1) as f64;
    let (plain_polls, nudged_polls) = (arrivals.polls[0], arrivals.polls[1]);

    let mut results = Vec::new();
    for pod in consumers {
        let s = samples(&pods, pod, from, to).await.expect("pod logs");
        results.push((pod, s));
    }
    let stats = chain(&sim);
    eprintln!(
        "FRESHNESS-NODE cycles={cycles} refreshes={} window={window:.1}s (a sample every ~200 ms per pod)",
        stats.counters.refresh_ok - refreshes_before
    );
    for (pod, s) in &results {
        eprintln!(
            "  {pod:<7} expired {:>4}/{:<4} = {:6.2}%  (valid {}, no answer {})",
            s.expired,
            s.total(),
            s.expired_percent(),
            s.valid,
            s.no_answer
        );
    }
    eprintln!(
        "  Secret change -> volume: plain {} (tokens never shown: {plain_missed}); nudged {} (never shown: {nudged_missed})",
        summary(&plain_delays),
        summary(&nudged_delays)
    );
    eprintln!(
        "  volume files polled from the host every 20 ms, token past its expires_at: plain {}/{} = {:.2}%, nudged {}/{} = {:.2}%",
        plain_polls.0,
        plain_polls.1,
        share(plain_polls),
        nudged_polls.0,
        nudged_polls.1,
        share(nudged_polls)
    );
    eprintln!(
        "  sim: refresh_ok={} too_early={} old_refresh_token_used={}",
        stats.counters.refresh_ok, stats.counters.too_early, stats.counters.old_refresh_token_used
    );

    let [(_, plain), (_, nudged), (_, agent)] = &results[..] else {
        unreachable!("three consumers");
    };
    for (pod, s) in &results {
        // Up to 5 samples per second per pod (fewer when forks are slow on a busy host);
        // less than one every 2 s means the pod was not sampling all along.
        assert!(
            s.total() as f64 >= window * 0.5,
            "{pod}: only {} samples in {window:.0} s",
            s.total()
        );
        assert!(
            (s.no_answer as f64) < 0.01 * s.total() as f64,
            "{pod}: exact-sim did not answer {} of {} samples",
            s.no_answer,
            s.total()
        );
    }
    assert_eq!(
        agent.expired, 0,
        "the agent's file never holds an expired token"
    );
    assert!(
        nudged.expired_percent() <= 1.0,
        "a nudged mount holds an expired token {:.2} % of the time",
        nudged.expired_percent()
    );
    assert!(
        share(nudged_polls) <= 0.5,
        "the nudged volume held an expired token {:.2} % of 20 ms polls",
        share(nudged_polls)
    );
    assert!(
        nudged_missed == 0 && nudged_delays.len() >= cycles as usize,
        "every refresh reaches the nudged volume: {} of {} (skipped {nudged_missed})",
        nudged_delays.len(),
        arrivals.secret.len().saturating_sub(1)
    );
    // The measurement must tell the two mounts apart: without the nudge the kubelet
    // rewrites the volume only every 60-90 s, several 20 s tokens late.
    assert!(
        plain.expired_percent() >= 10.0,
        "the plain mount was expired only {:.2} % of the time: is the kubelet resync faster than assumed?",
        plain.expired_percent()
    );
    assert_eq!(stats.counters.old_refresh_token_used, 0);
}
