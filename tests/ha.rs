//! High availability against the real control plane: leader election between two operator
//! processes (the real binary, with the operator's RBAC identity), takeover after SIGKILL,
//! and SIGTERM restarts that finish refreshes in flight. Never an old-token use.

mod harness;
mod support;

use exact_sim::{Faults, Sim};
use harness::process::{OperatorCommand, OperatorProcess};
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use std::time::{Duration, Instant};

/// The operator binary with the operator's RBAC identity, watching `ns` (Lease in
/// `lease_ns`); SIGKILLed when dropped.
fn spawn_operator(ns: &str, lease_ns: &str, pod: &str, leader_elect: bool) -> OperatorProcess {
    spawn_operator_on(ns, lease_ns, pod, leader_elect, "127.0.0.1:0")
}

fn spawn_operator_on(
    ns: &str,
    lease_ns: &str,
    pod: &str,
    leader_elect: bool,
    metrics: &str,
) -> OperatorProcess {
    OperatorCommand::new(
        env!("CARGO_BIN_EXE_exact-operator"),
        support::operator_kubeconfig_path(),
        ns,
    )
    .pod(pod)
    .env("RUST_LOG", "warn")
    .metrics_addr(metrics)
    .args(["--operator-namespace", lease_ns])
    .args(["--max-errors-per-hour", "100"])
    .arg_if(leader_elect, "--leader-elect")
    .spawn()
    .expect("spawn exact-operator")
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt("exact-operator-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn setup(connections: &[&str]) -> (Client, String, Sim) {
    let TestEnv { admin, ns, sim } = env_with_connections(connections).await;
    (admin, ns, sim)
}

fn refreshes(sim: &Sim, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| sim.connection_stats(n))
        .map(|c| c.counters.refresh_ok)
        .sum()
}

#[tokio::test]
async fn only_the_leader_refreshes_and_a_follower_takes_over_after_sigkill() {
    let names = ["c1", "c2", "c3"];
    let (admin, ns, sim) = setup(&names).await;
    let mut a = spawn_operator(&ns, &ns, "op-a", true);
    let leader = support::wait_for(Duration::from_secs(30), || async {
        holder(&admin, &ns).await.filter(|h| h.starts_with("op-a"))
    })
    .await;
    assert!(leader.is_some(), "op-a becomes leader");
    let b = spawn_operator(&ns, &ns, "op-b", true);
    for n in names {
        wait_published(&admin, &ns, n).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        holder(&admin, &ns)
            .await
            .is_some_and(|h| h.starts_with("op-a")),
        "op-b stays follower"
    );

    a.sigkill();
    let killed_at = Instant::now();
    let before = refreshes(&sim, &names);
    let took_over = support::wait_for(Duration::from_secs(60), || async {
        holder(&admin, &ns).await.filter(|h| h.starts_with("op-b"))
    })
    .await;
    assert!(took_over.is_some(), "op-b takes the lease");
    let lease_takeover = killed_at.elapsed();
    let refreshed = support::wait_for(Duration::from_secs(60), || async {
        (refreshes(&sim, &names) >= before + 3).then_some(())
    })
    .await;
    assert!(refreshed.is_some(), "the new leader refreshes");
    println!(
        "takeover after SIGKILL: lease {:?}, refreshing again after {:?}",
        lease_takeover,
        killed_at.elapsed()
    );
    assert!(
        lease_takeover < Duration::from_secs(30),
        "bounded takeover: {lease_takeover:?}"
    );
    let s = sim.stats();
    assert_eq!(s.totals.old_refresh_token_used, 0);
    assert_eq!(s.totals.too_early, 0);
    for n in names {
        wait_published(&admin, &ns, n).await;
    }
    drop(b);
}

#[tokio::test]
async fn sigterm_restarts_finish_refreshes_in_flight_and_exit_promptly() {
    let names = ["r1", "r2", "r3"];
    let (admin, ns, sim) = setup(&names).await;
    // Token calls take 700 ms, so SIGTERM often lands while one is in flight.
    sim.set_faults(Faults {
        latency: Duration::from_millis(700),
        ..Faults::default()
    });
    let mut worst_exit = Duration::ZERO;
    for round in 0..5 {
        let mut p = spawn_operator(&ns, &ns, &format!("op-{round}"), false);
        tokio::time::sleep(Duration::from_millis(3000 + 700 * round)).await;
        let (status, took) = p
            .sigterm(Duration::from_secs(20))
            .await
            .expect("operator exits after SIGTERM");
        assert!(status.success(), "clean exit: {status:?}");
        worst_exit = worst_exit.max(took);
    }
    println!("slowest SIGTERM exit: {worst_exit:?}");
    assert!(
        worst_exit < Duration::from_secs(10),
        "exits well inside a grace period"
    );
    // No claim left behind, chains intact: a new process continues at once.
    for n in names {
        let state = secret_data(&admin, &ns, &format!("{n}-exact-state"))
            .await
            .expect("state");
        assert!(
            !state.contains_key("claim_holder"),
            "{n}: claim released on shutdown"
        );
    }
    let last = spawn_operator(&ns, &ns, "op-last", false);
    let before = refreshes(&sim, &names);
    let moved = support::wait_for(Duration::from_secs(30), || async {
        (refreshes(&sim, &names) >= before + 3).then_some(())
    })
    .await;
    assert!(moved.is_some());
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0);
    drop(last);
}

#[tokio::test]
async fn metrics_and_probes_are_served() {
    let names = ["m1"];
    let (admin, ns, sim) = setup(&names).await;
    let addr = harness::process::free_loopback_addr()
        .expect("free port")
        .to_string();
    let _p = spawn_operator_on(&ns, &ns, "op-m", false, &addr);
    wait_published(&admin, &ns, "m1").await;
    let http = reqwest::Client::new();
    for probe in ["healthz", "readyz"] {
        let r = http
            .get(format!("http://{addr}/{probe}"))
            .send()
            .await
            .expect("probe");
        assert_eq!(r.status().as_u16(), 200, "{probe}");
    }
    let series = [
        format!(
            r#"exact_operator_connection_ready_reason{{namespace="{ns}",name="m1",reason="TokenPublished"}} 1"#
        ),
        format!(
            r#"exact_operator_access_token_expiry_timestamp_seconds{{namespace="{ns}",name="m1"}}"#
        ),
        format!(
            r#"exact_operator_refresh_token_expiry_timestamp_seconds{{namespace="{ns}",name="m1"}}"#
        ),
        format!(r#"exact_operator_next_refresh_timestamp_seconds{{namespace="{ns}",name="m1"}}"#),
        r#"exact_operator_token_calls_total{outcome="granted"}"#.to_string(),
        "exact_operator_token_call_duration_seconds_bucket".to_string(),
        "exact_operator_reconcile_duration_seconds_count".to_string(),
        "exact_operator_is_leader 1".to_string(),
    ];
    let text = support::wait_for(Duration::from_secs(20), || async {
        let t = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        series.iter().all(|s| t.contains(s.as_str())).then_some(t)
    })
    .await;
    assert!(text.is_some(), "all series present");
    let text = text.unwrap_or_default();
    let state = secret_data(&admin, &ns, "m1-exact-state")
        .await
        .expect("state");
    assert!(
        !text.contains(&state["access_token"]) && !text.contains(&state["refresh_token"]),
        "no token in metrics"
    );
    drop(sim);
}
