//! Shards across replicas against the real control plane: three operator processes (the
//! real binary, with the operator's RBAC identity) with `--shards 6` share the shard Leases
//! 2 + 2 + 2, each connection is refreshed only by the process holding its shard, and after
//! a SIGKILL the survivors take the dead one's shards within the lease duration plus a tick,
//! while every workload Secret keeps a valid token (gaps no longer than the takeover) and
//! exact-sim never sees an old refresh token.

mod harness;
mod support;

use exact_operator::crd::ExactConnection;
use exact_operator::shard::shard_of;
use exact_sim::Sim;
use harness::process::{free_loopback_addr, OperatorCommand, OperatorProcess};
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 6;
/// Short leases so the takeover fits well inside the sim's 6 s token lifetime twice over.
const LEASE: Duration = Duration::from_secs(6);
const TICK: Duration = Duration::from_secs(2);

fn spawn(ns: &str, pod: &str, log: &Path) -> OperatorProcess {
    spawn_with(ns, pod, log, &[])
}

fn spawn_with(ns: &str, pod: &str, log: &Path, extra: &[String]) -> OperatorProcess {
    let addr = free_loopback_addr().expect("free port").to_string();
    OperatorCommand::new(
        env!("CARGO_BIN_EXE_exact-operator"),
        support::operator_kubeconfig_path(),
        ns,
    )
    .pod(pod)
    .env(
        "RUST_LOG",
        "warn,exact_operator::controller::connection=info,exact_operator::shard=info",
    )
    .metrics_addr(&addr)
    .log(log)
    .args(["--log-format", "json"])
    .args(["--operator-namespace", ns])
    .args(["--max-errors-per-hour", "100"])
    .args(["--shards", &SHARDS.to_string()])
    .args(["--shard-lease-seconds", &LEASE.as_secs().to_string()])
    .args(extra.iter().cloned())
    .spawn()
    .expect("spawn exact-operator")
}

/// Live holders of the shard Leases, by shard.
async fn holders(client: &Client, ns: &str) -> BTreeMap<u32, String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&Default::default()).await else {
        return BTreeMap::new();
    };
    let now = jiff::Timestamp::now();
    list.items
        .into_iter()
        .filter_map(|l| {
            let shard = l
                .metadata
                .name
                .as_deref()?
                .strip_prefix("exact-operator-shard-")?
                .parse()
                .ok()?;
            let spec = l.spec?;
            let renewed = spec.renew_time?.0;
            let until = renewed
                .checked_add(jiff::SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds?,
                )))
                .ok()?;
            (until > now).then_some((shard, spec.holder_identity?))
        })
        .collect()
}

fn per_holder(h: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for v in h.values() {
        *c.entry(v.clone()).or_insert(0) += 1;
    }
    c
}

/// (connection, outcome) of every "token call" log line after byte `from` of `log`.
fn token_calls(log: &Path, from: usize) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let f = v.get("fields")?;
            let msg = f.get("message")?.as_str()?;
            if !msg.starts_with("token call") {
                return None;
            }
            Some((
                f.get("connection")?.as_str()?.to_string(),
                f.get("outcome")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// Longest stretch per connection without a valid access token in its workload Secret,
/// sampled every 250 ms from `start` on.
fn sample_validity(
    admin: Client,
    ns: String,
    sim: Arc<Sim>,
    names: Vec<String>,
) -> (
    Arc<Mutex<BTreeMap<String, Duration>>>,
    tokio::task::JoinHandle<()>,
) {
    let worst = Arc::new(Mutex::new(BTreeMap::new()));
    let out = worst.clone();
    let task = tokio::spawn(async move {
        let mut gap_since: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            for n in &names {
                let token = secret_data(&admin, &ns, &format!("{n}-exact-token"))
                    .await
                    .and_then(|d| d.get("access_token").cloned());
                let valid = token.is_some_and(|t| sim.access_token_valid(&t));
                let now = Instant::now();
                if valid {
                    gap_since.remove(n);
                } else {
                    let since = *gap_since.entry(n.clone()).or_insert(now);
                    let mut w = out.lock().expect("lock");
                    let e = w.entry(n.clone()).or_insert(Duration::ZERO);
                    *e = (*e).max(now - since);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (worst, task)
}

#[tokio::test]
async fn three_replicas_share_six_shards_and_take_over_after_sigkill() {
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let TestEnv { admin, ns, sim } = env_with_connections(&refs).await;
    let sim = Arc::new(sim);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("shards-{ns}"));
    let pods = ["op-a", "op-b", "op-c"];
    let logs: Vec<PathBuf> = pods.iter().map(|p| dir.join(format!("{p}.log"))).collect();
    let mut procs: Vec<OperatorProcess> = pods
        .iter()
        .zip(&logs)
        .map(|(p, l)| spawn(&ns, p, l))
        .collect();

    // Fair share: 2 + 2 + 2, held by the three pods (holder = pod name, no suffix).
    let balanced = support::wait_for(Duration::from_secs(60), || async {
        let h = holders(&admin, &ns).await;
        let c = per_holder(&h);
        (h.len() == SHARDS as usize && c.len() == 3 && c.values().all(|n| *n == 2)).then_some(h)
    })
    .await;
    let Some(held) = balanced else {
        panic!("never balanced: {:?}", holders(&admin, &ns).await);
    };
    assert_eq!(
        per_holder(&held).keys().cloned().collect::<BTreeSet<_>>(),
        pods.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>()
    );
    for n in &names {
        wait_published(&admin, &ns, n).await;
    }
    for p in &procs {
        let got = support::wait_for(Duration::from_secs(10), || async {
            p.metric("exact_operator_shards_held")
                .await
                .filter(|v| *v == 2.0)
        })
        .await;
        assert_eq!(got, Some(2.0), "{}: exact_operator_shards_held", p.pod);
    }

    // Each connection's shard, hence its expected refresher.
    let conns: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let mut shard_by_name = BTreeMap::new();
    for n in &names {
        let c = conns.get(n).await.expect("connection");
        let uid = c.metadata.uid.expect("uid");
        shard_by_name.insert(n.clone(), shard_of(&uid, SHARDS));
    }
    let spread: BTreeSet<u32> = shard_by_name.values().copied().collect();
    assert!(
        spread.len() >= 3,
        "12 UIDs over 6 shards: {shard_by_name:?}"
    );

    // Two token lifetimes with a stable holding: only the holder calls for a connection.
    let marks: Vec<usize> = logs.iter().map(|l| log_len(l)).collect();
    let before: BTreeMap<String, u64> = names
        .iter()
        .map(|n| (n.clone(), refresh_ok(&sim, n)))
        .collect();
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(
        holders(&admin, &ns).await,
        held,
        "no flapping while balanced"
    );
    let mut logged: BTreeSet<String> = BTreeSet::new();
    for (pod, (log, from)) in pods.iter().zip(logs.iter().zip(&marks)) {
        for (conn, outcome) in token_calls(log, *from) {
            logged.insert(conn.clone());
            let shard = shard_by_name.get(&conn).copied();
            let holder = shard.and_then(|s| held.get(&s));
            assert_eq!(
                holder.map(String::as_str),
                Some(*pod),
                "{pod} made a token call ({outcome}) for {conn} of shard {shard:?}"
            );
        }
    }
    for n in &names {
        assert!(
            refresh_ok(&sim, n) > before[n],
            "{n} refreshed while balanced"
        );
        assert!(logged.contains(n), "{n}: its holder logged its token calls");
    }

    // SIGKILL the holder of shard 0: the two survivors take 3 each.
    let (sampler_worst, sampler) =
        sample_validity(admin.clone(), ns.clone(), sim.clone(), names.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = held[&0].clone();
    let idx = pods.iter().position(|p| *p == victim).expect("victim");
    procs[idx].sigkill();
    let killed_at = Instant::now();
    let took_over = support::wait_for(Duration::from_secs(40), || async {
        let h = holders(&admin, &ns).await;
        let c = per_holder(&h);
        (h.len() == SHARDS as usize && !c.contains_key(&victim) && c.values().all(|n| *n == 3))
            .then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        took_over.is_some(),
        "survivors take over: {:?}",
        holders(&admin, &ns).await
    );
    println!("takeover of {victim}'s shards after SIGKILL: {takeover:?}");
    let bound = LEASE + TICK + Duration::from_secs(2);
    assert!(takeover <= bound, "takeover {takeover:?} > {bound:?}");

    // Every connection refreshes again, tokens stay valid but for the takeover.
    let after_kill: BTreeMap<String, u64> = names
        .iter()
        .map(|n| (n.clone(), refresh_ok(&sim, n)))
        .collect();
    let refreshed = support::wait_for(Duration::from_secs(30), || async {
        names
            .iter()
            .all(|n| refresh_ok(&sim, n) >= after_kill[n] + 2)
            .then_some(())
    })
    .await;
    assert!(
        refreshed.is_some(),
        "every connection refreshes after the takeover"
    );
    sampler.abort();
    let worst = sampler_worst.lock().expect("lock").clone();
    let longest = worst.values().max().copied().unwrap_or_default();
    println!("longest stretch without a valid token: {longest:?} ({worst:?})");
    assert!(
        longest <= bound,
        "a connection went without a valid token for {longest:?} (takeover bound {bound:?})"
    );

    // SIGTERM releases the Leases after the refreshes in flight: the last replica takes all
    // six at its next tick, long before they would run out (>= 4 s left at exit).
    let leaving = pods.iter().position(|p| *p != victim).expect("a survivor");
    let (status, _) = procs[leaving]
        .sigterm(Duration::from_secs(20))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    let exited = Instant::now();
    let last = pods
        .iter()
        .find(|p| **p != victim && **p != pods[leaving])
        .expect("the last replica")
        .to_string();
    let all = support::wait_for(Duration::from_secs(20), || async {
        let h = holders(&admin, &ns).await;
        (h.len() == SHARDS as usize && h.values().all(|v| *v == last)).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "{last} holds every shard: {:?}",
        holders(&admin, &ns).await
    );
    let handover = exited.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    assert!(
        handover <= TICK + Duration::from_millis(1500),
        "released on SIGTERM, not left to run out: {handover:?}"
    );
    let totals = sim.stats().totals;
    assert_eq!(
        totals.old_refresh_token_used, 0,
        "no old refresh token used"
    );
    assert_eq!(totals.too_early, 0);
    drop(procs);
}

/// The OAuth callback may land on a replica that does not hold the connection's shard (a
/// Service spreads requests): its local trigger is gated there, yet the connection must be
/// published at once, not at the holder's next recheck (60 s). (It is: the stored chain's
/// workload Secret, written by the callback's replica, triggers the holder.)
#[tokio::test]
async fn a_consent_landing_on_the_other_replica_is_published_at_once() {
    let oauth = [
        free_loopback_addr().expect("free port"),
        free_loopback_addr().expect("free port"),
    ];
    let cfg = exact_sim::SimConfig {
        auto_consent: true,
        ..fast_sim()
    };
    let TestEnv {
        admin,
        ns,
        sim: _sim,
    } = test_env(
        cfg,
        serde_json::json!({"redirectUri": format!("http://{}/oauth2/callback", oauth[0])}),
    )
    .await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("shards-{ns}"));
    let pods = ["op-a", "op-b"];
    let _procs: Vec<OperatorProcess> = pods
        .iter()
        .zip(&oauth)
        .map(|(p, addr)| {
            let extra = [
                "--oauth-addr".to_string(),
                addr.to_string(),
                "--public-url".to_string(),
                format!("http://{addr}"),
            ];
            spawn_with(&ns, p, &dir.join(format!("{p}.log")), &extra)
        })
        .collect();
    let balanced = support::wait_for(Duration::from_secs(60), || async {
        let h = holders(&admin, &ns).await;
        let c = per_holder(&h);
        (h.len() == SHARDS as usize && c.len() == 2 && c.values().all(|n| *n == 3)).then_some(h)
    })
    .await;
    let held = balanced.expect("3 + 3 shards");
    put_unauthorized_connection(&admin, &ns, "consent").await;
    let conns: Api<ExactConnection> = Api::namespaced(admin.clone(), &ns);
    let start = support::wait_for(Duration::from_secs(30), || async {
        conns.get("consent").await.ok()?.status?.authorization_url
    })
    .await
    .expect("status.authorizationUrl");
    let uid = conns
        .get("consent")
        .await
        .expect("connection")
        .metadata
        .uid
        .expect("uid");
    let owner = held[&shard_of(&uid, SHARDS)].clone();
    let other = if owner == pods[0] { oauth[1] } else { oauth[0] };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let location = |r: reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string)
            .expect("redirect")
    };
    let to_exact = location(http.get(&start).send().await.expect("start"));
    let callback = location(http.get(&to_exact).send().await.expect("consent"));
    // The callback reaches the replica that does not hold the connection.
    let mut callback = url::Url::parse(&callback).expect("callback url");
    callback.set_port(Some(other.port())).expect("port");
    let page = http.get(callback.as_str()).send().await.expect("callback");
    assert_eq!(page.status().as_u16(), 200, "callback accepted");
    let answered = Instant::now();
    wait_reason(
        &admin,
        &ns,
        "consent",
        "TokenPublished",
        Duration::from_secs(15),
    )
    .await;
    println!(
        "consent on the replica without the shard ({owner} holds it): published after {:?}",
        answered.elapsed()
    );
}

fn refresh_ok(sim: &Sim, name: &str) -> u64 {
    sim.connection_stats(name)
        .map(|c| c.counters.refresh_ok)
        .unwrap_or(0)
}
