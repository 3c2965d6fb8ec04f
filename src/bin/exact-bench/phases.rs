//! The measured phases after the cold start: steady refreshing and the burst, plus the
//! readings taken at phase boundaries.

use crate::cluster::{self, Requests};
use crate::fixtures::{self, Fixture};
use crate::log;
use crate::operator_process::OperatorProcess;
use crate::process::{cpu_seconds, RssSampler};
use crate::report::{Burst, Phase, PhaseInput, Restart, Steady, SteadyInput};
use crate::sim::{SimHandle, Stats};
use crate::watch::FirstSeen;
use anyhow::bail;
use std::time::{Duration, Instant};

/// Processes whose CPU the bench reads, and the operators' metrics.
pub struct Probes<'a> {
    /// The operator processes (replicas).
    pub operators: &'a [OperatorProcess],
    pub apiserver: Option<u32>,
    pub etcd: Option<u32>,
    pub client: &'a kube::Client,
}

/// Readings at a phase boundary.
pub struct Mark {
    pub at: Instant,
    pub requests: Requests,
    /// CPU seconds per operator process.
    pub cpu: Vec<f64>,
    pub apiserver: Option<f64>,
    pub etcd: Option<f64>,
    /// Reconciles, summed over the operators.
    pub reconciles: Option<f64>,
    /// Granted token calls per operator process (its own counter).
    pub granted: Vec<f64>,
}

/// The metric `exact_operator_token_calls_total{outcome="granted"}` of one operator.
const GRANTED: &str = "exact_operator_token_calls_total{outcome=\"granted\"}";

impl Probes<'_> {
    pub async fn mark(&self) -> anyhow::Result<Mark> {
        let mut reconciles = Some(0.0);
        let mut granted = Vec::with_capacity(self.operators.len());
        for o in self.operators {
            let r = o.metric("exact_operator_reconciles_total").await;
            reconciles = reconciles.zip(r).map(|(a, b)| a + b);
            granted.push(o.metric(GRANTED).await.unwrap_or(0.0));
        }
        Ok(Mark {
            requests: cluster::scrape(self.client).await?,
            cpu: self
                .operators
                .iter()
                .map(|o| cpu_seconds(o.pid()).unwrap_or(0.0))
                .collect(),
            apiserver: self.apiserver.and_then(cpu_seconds),
            etcd: self.etcd.and_then(cpu_seconds),
            reconciles,
            granted,
            at: Instant::now(),
        })
    }

    pub async fn phase(
        &self,
        start: &Mark,
        units: f64,
        elapsed: Option<Duration>,
    ) -> anyhow::Result<Phase> {
        let end = self.mark().await?;
        let sub = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Ok(Phase::new(PhaseInput {
            elapsed: elapsed.unwrap_or(end.at - start.at),
            units,
            requests: &cluster::diff(&start.requests, &end.requests),
            cpu_s: end.cpu.iter().sum::<f64>() - start.cpu.iter().sum::<f64>(),
            apiserver_cpu_s: sub(start.apiserver, end.apiserver),
            etcd_cpu_s: sub(start.etcd, end.etcd),
            reconciles: sub(start.reconciles, end.reconciles),
        }))
    }
}

/// Waits until `seen` has every name, the operator died, or `timeout` passed.
pub async fn wait_all(
    seen: &FirstSeen,
    names: &[String],
    timeout: Duration,
    operators: &[OperatorProcess],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_log = Instant::now();
    loop {
        let n = seen.count(names);
        if n == names.len() {
            return Ok(());
        }
        if !operators.iter().all(OperatorProcess::alive) {
            bail!("an operator exited ({n}/{} done)", names.len());
        }
        if Instant::now() > deadline {
            bail!("timed out: {n}/{} done after {timeout:?}", names.len());
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            log(format!("  {n}/{} done", names.len()));
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Token timing of the run.
#[derive(Clone, Copy)]
pub struct Timing {
    /// Access-token lifetime.
    pub lifetime: Duration,
    /// Refresh window.
    pub window: Duration,
    /// refreshBefore of each connection.
    pub refresh_before: Duration,
}

/// Steady refreshing for `duration`; no bench requests reach the API server between the
/// two marks.
pub async fn steady(
    probes: &Probes<'_>,
    sim: &SimHandle,
    names: &[String],
    timing: Timing,
    duration: Duration,
    rss: &[RssSampler],
) -> anyhow::Result<Steady> {
    let before = sim.stats().await?;
    let start = probes.mark().await?;
    for r in rss {
        r.take();
    }
    log(format!("steady phase: {duration:?}"));
    let end = Instant::now() + duration;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        log(format!("  {:.0} s left", left.as_secs_f64()));
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
    let after = sim.stats().await?;
    let refreshes =
        |s: &Stats, n: &String| s.connections.get(n).map_or(0, |c| c.counters.refresh_ok);
    let total: u64 = names
        .iter()
        .map(|n| refreshes(&after, n) - refreshes(&before, n))
        .sum();
    let end_mark = probes.mark().await?;
    let phase = probes.phase(&start, total as f64, None).await?;
    let samples: Vec<Vec<u64>> = rss.iter().map(RssSampler::take).collect();
    let per_replica =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| y - x).collect() };
    Ok(Steady::new(
        SteadyInput {
            names,
            before: &before,
            after: &after,
            refresh_before: timing.refresh_before,
            window: timing.window,
            lifetime: timing.lifetime,
            rss_kib: &samples,
            granted: &per_replica(&start.granted, &end_mark.granted),
            cpu_s: &per_replica(&start.cpu, &end_mark.cpu),
        },
        phase,
    ))
}

/// `count` new connections applied at once; latency from each apply to its workload Secret.
pub async fn burst(
    probes: &Probes<'_>,
    fx: &Fixture,
    sim: &SimHandle,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Burst> {
    let burst = fixtures::names("b", count);
    log(format!("burst: seeding {count} new connections"));
    fx.bootstrap(sim, &burst).await?;
    let secrets = FirstSeen::token_secrets(&fx.client, &fx.namespace);
    secrets.synced().await;
    let ready = FirstSeen::ready_connections(&fx.client, &fx.namespace);
    ready.synced().await;
    let start = probes.mark().await?;
    let t = Instant::now();
    let sent = fx.connections(&burst).await?;
    let apply = t.elapsed();
    let target = |n: &str| format!("{n}-exact-token");
    let targets: Vec<String> = burst.iter().map(|n| target(n)).collect();
    if let Err(e) = wait_all(&secrets, &targets, timeout, probes.operators).await {
        log(format!("burst incomplete: {e:#}"));
    }
    // The statuses may follow the Secrets: the phase ends when both are in.
    if let Err(e) = wait_all(&ready, &burst, timeout, probes.operators).await {
        log(format!("burst statuses incomplete: {e:#}"));
    }
    let latencies = sent
        .iter()
        .filter_map(|(n, at)| Some((secrets.get(&target(n))? - *at).as_secs_f64() * 1000.0))
        .collect();
    let ready_latencies = sent
        .iter()
        .filter_map(|(n, at)| Some((ready.get(n)? - *at).as_secs_f64() * 1000.0))
        .collect();
    let last = targets
        .iter()
        .filter_map(|n| secrets.get(n))
        .max()
        .unwrap_or(t);
    secrets.stop();
    ready.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let phase = probes
        .phase(
            &start,
            count as f64,
            Some(last.saturating_duration_since(t)),
        )
        .await?;
    Ok(Burst::new(phase, count, apply, latencies, ready_latencies))
}

/// What the restart phase needs besides the probes.
pub struct RestartInput<'a> {
    /// The existing connections.
    pub names: &'a [String],
    /// Token calls per second in the steady phase before.
    pub calls_per_second: f64,
    /// API writes per refresh in the steady phase before.
    pub writes_per_refresh: f64,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Stops `operator` (SIGTERM, as a rollout does) and starts a new one with `spawn`; measures
/// from the SIGTERM until the new process has reconciled every connection once (each
/// reconcile schedules that connection's next refresh) plus 2 s. The new process replaces
/// `operator`.
pub async fn restart(
    operator: &mut OperatorProcess,
    spawn: impl FnOnce() -> anyhow::Result<OperatorProcess>,
    client: &kube::Client,
    sim: &SimHandle,
    input: RestartInput<'_>,
) -> anyhow::Result<Restart> {
    let n = input.names.len() as f64;
    let before = sim.stats().await?;
    let requests = cluster::scrape(client).await?;
    let t0 = Instant::now();
    log("restart: stopping the operator");
    let (_, stopped) = operator
        .sigterm(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    *operator = spawn()?;
    let started = Instant::now();
    loop {
        let done = operator.metric("exact_operator_reconciles_total").await;
        if done.is_some_and(|d| d >= n) {
            break;
        }
        if !operator.alive() {
            bail!("the restarted operator exited");
        }
        if started.elapsed() > input.timeout {
            bail!(
                "restart: not resynced after {:?} ({done:?} reconciles)",
                input.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resync = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sim.stats().await?;
    let end = cluster::scrape(client).await?;
    let window = t0.elapsed();
    let phase = Phase::new(PhaseInput {
        elapsed: window,
        units: n,
        requests: &cluster::diff(&requests, &end),
        cpu_s: cpu_seconds(operator.pid()).unwrap_or(0.0),
        apiserver_cpu_s: None,
        etcd_cpu_s: None,
        reconciles: operator.metric("exact_operator_reconciles_total").await,
    });
    let scheduled_calls = input.calls_per_second * window.as_secs_f64();
    let restart = Restart {
        stop_seconds: stopped.as_secs_f64(),
        resync_seconds: resync.as_secs_f64(),
        token_calls: after.totals.token_calls - before.totals.token_calls,
        scheduled_calls,
        unscheduled_calls: (after.totals.too_early - before.totals.too_early)
            + (after.totals.old_refresh_token_used - before.totals.old_refresh_token_used),
        writes: phase.writes_per_unit * n,
        scheduled_writes: scheduled_calls * input.writes_per_refresh,
        rss_mib: crate::process::status_kib(operator.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0,
        phase,
    };
    log(format!(
        "restart: resynced {:.1} s after the start; {} token calls, {:.0} writes in {:.1} s",
        restart.resync_seconds,
        restart.token_calls,
        restart.writes,
        window.as_secs_f64()
    ));
    Ok(restart)
}
