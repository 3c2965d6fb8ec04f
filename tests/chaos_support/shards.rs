//! Chaos scenario (h): three replicas with `--shards 6`, one of them SIGKILLed repeatedly
//! and replaced by a new pod (a new name and a new, empty journal: the pod is gone), so the
//! survivors must take its shards over. Criteria: no old-token use but on chains whose
//! rotated token a kill caught between Exact's answer and the persisted write, and no other
//! connection without a valid token longer than the takeover (lease + tick + slack).

use super::bench::{short_token_sim, Bench, JournalFate, Kill};
use super::report::{mean, Row};
use super::{random_ms, random_string, secs, Output, Size};
use crate::harness::process::{OperatorCommand, OperatorProcess};
use crate::support;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SHARDS: u32 = 6;
const LEASE: Duration = Duration::from_secs(6);
const TICK: Duration = Duration::from_secs(2);
/// Until every connection is settled at the end (a claim stranded by a kill blocks for
/// the claim TTL first).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(100);

/// Starts replica `pod` of the scenario with its own journal, its log beside the bench's.
fn spawn(bench: &Bench, pod: &str, journals: &std::path::Path) -> OperatorProcess {
    let o = &bench.opts;
    OperatorCommand::new(
        env!("CARGO_BIN_EXE_exact-operator"),
        support::operator_kubeconfig_path(),
        &o.namespace,
    )
    .pod(pod)
    .env("RUST_LOG", &o.rust_log)
    .args(["--operator-namespace", &o.namespace])
    .metrics_addr("127.0.0.1:0")
    .args(["--max-errors-per-hour", "1000"])
    .args(["--log-format", "json"])
    .args(["--shards", &SHARDS.to_string()])
    .args(["--shard-lease-seconds", &LEASE.as_secs().to_string()])
    .args([
        "--journal-dir".to_string(),
        journals.join(pod).display().to_string(),
    ])
    .log(o.log_dir.join(format!("{pod}.log")))
    .spawn()
    .expect("spawn exact-operator")
}

/// Live holders of the shard Leases.
async fn holders(bench: &Bench) -> BTreeMap<u32, String> {
    let api: Api<Lease> = Api::namespaced(bench.admin.clone(), &bench.ns);
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
            let until = spec
                .renew_time?
                .0
                .checked_add(jiff::SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds?,
                )))
                .ok()?;
            (until > now).then_some((shard, spec.holder_identity?))
        })
        .collect()
}

/// (h) SIGKILL one of three sharded replicas at random, `kills` times.
pub async fn replica_kills(size: &Size, out: &Output) -> Row {
    let kills_wanted = if size.full { 10 } else { 4 };
    let secret = random_string(32);
    let cfg = exact_sim::SimConfig {
        error_limit_per_hour: 1000,
        ..short_token_sim(&secret)
    };
    let mut bench = Bench::new("h", size.connections, &secret, cfg, out).await;
    bench.journal_fate = JournalFate::LostWithProcess;
    let journals = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos-shards")
        .join(&bench.ns);
    let mut spawned = 0usize;
    let mut next_pod = |slot: &str| {
        spawned += 1;
        format!("{slot}-{spawned}")
    };
    let slots = ["a", "b", "c"];
    let mut ops: Vec<OperatorProcess> = slots
        .iter()
        .map(|s| spawn(&bench, &next_pod(s), &journals))
        .collect();
    bench.wait_all_published(Duration::from_secs(90)).await;
    let mut kills: Vec<Kill> = Vec::new();
    let mut takeovers = Vec::new();
    let mut problems = Vec::new();
    for i in 0..kills_wanted {
        tokio::time::sleep(random_ms(2000, 6000)).await;
        let victim = rand::thread_rng().gen_range(0..ops.len());
        let pod = ops[victim].pod.clone();
        let killed_at = Instant::now();
        let kill = bench.kill(&mut ops[victim]).await;
        out.say(format!(
            "  kill {i}: {pod} SIGKILLed; rotated tokens lost {:?}, claims left {}",
            kill.lost, kill.stranded_claims
        ));
        kills.push(kill);
        ops[victim] = spawn(&bench, &next_pod(slots[victim]), &journals);
        let moved = support::wait_for(Duration::from_secs(40), || async {
            let h = holders(&bench).await;
            (h.len() == SHARDS as usize && h.values().all(|v| *v != pod)).then_some(())
        })
        .await;
        match moved {
            Some(()) => takeovers.push(killed_at.elapsed()),
            None => problems.push(format!("kill {i}: {pod}'s shards were not taken over")),
        }
        out.say(format!(
            "  {pod}'s shards held by others after {}",
            takeovers.last().map(|d| secs(*d)).unwrap_or_default()
        ));
    }
    let f = bench.finish(ops, SETTLE_TIMEOUT).await;
    let mut row = Row::new(
        format!("h. sharded replica SIGKILL ×{kills_wanted}, 3 replicas"),
        &f,
    );
    takeovers.sort();
    let bound = LEASE + TICK + Duration::from_secs(2);
    row.note(format!(
        "{SHARDS} shards over 3 replicas, Lease {}: takeover of a killed replica's shards \
         mean {}, slowest {}",
        secs(LEASE),
        secs(mean(&takeovers)),
        secs(takeovers.last().copied().unwrap_or_default())
    ));
    row.failures.extend(problems);
    for t in &takeovers {
        row.check(
            *t <= bound,
            format!("a takeover took {} (bound {})", secs(*t), secs(bound)),
        );
    }
    let lost: BTreeSet<String> = kills.iter().flat_map(|k| k.lost.iter().cloned()).collect();
    // A lost token may be spent once by each replica that ran after the kill that lost it.
    let mut allowed = BTreeMap::new();
    for (i, k) in kills.iter().enumerate() {
        for n in &k.lost {
            allowed.insert(n.clone(), (2 + kills.len() - i) as u64);
        }
    }
    row.note(format!(
        "kills between Exact's answer and the persisted write lost the chain(s) {lost:?}"
    ));
    let gap = f
        .observed
        .conns
        .iter()
        .filter(|(n, _)| !lost.contains(*n))
        .map(|(_, v)| v.longest_gap)
        .max()
        .unwrap_or_default();
    row.note(format!(
        "longest stretch without a valid token (chains not lost): {}",
        secs(gap)
    ));
    row.check(
        gap <= bound,
        format!(
            "a connection went without a valid token for {} (takeover bound {})",
            secs(gap),
            secs(bound)
        ),
    );
    let _ = std::fs::remove_dir_all(&journals);
    row.check_no_too_early();
    row.check_losses_explained(&f, &allowed);
    // A kill is judged from outside 300 ms after it: a state write still in flight then may
    // land later, so a chain counted lost may live on. Only the ones that did die must end
    // ReauthorizationRequired.
    let dead: BTreeSet<String> = lost
        .iter()
        .filter(|n| {
            f.ready
                .get(*n)
                .is_none_or(|(_, r, _)| r != "TokenPublished")
        })
        .cloned()
        .collect();
    if dead.len() < lost.len() {
        row.note(format!(
            "{} of them lived on: their state write landed after the kill was judged",
            lost.len() - dead.len()
        ));
    }
    row.check_final_states(&f, &dead);
    row
}
