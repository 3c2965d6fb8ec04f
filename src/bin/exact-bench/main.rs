//! exact-bench: scale benchmark of exact-operator on the real control plane and exact-sim.
//!
//! ```sh
//! cargo run --release --bin exact-bench -- --connections 1000 --token-lifetime 60s \
//!     --window 5s --duration 10m --burst 1000 --report bench.md
//! ```
//!
//! Phases: create N connections (operator not running yet) -> start the operator process and
//! time the cold start until all are Ready -> steady refreshing for `--duration`, with no
//! bench traffic on the API server -> a burst of `--burst` new connections. See BENCHMARKS.md.
#![forbid(unsafe_code)]

mod cluster;
mod fixtures;
// Shared with the HA and chaos tests: one home for running the operator as a process.
#[path = "../../../tests/harness/process.rs"]
mod operator_process;
mod phases;
mod process;
mod report;
mod sim;
mod watch;

use anyhow::{bail, Context as _};
use clap::Parser;
use cluster::ControlPlane;
use exact_operator::duration::parse_duration;
use fixtures::Fixture;
use phases::{Mark, Probes};
use process::{cpu_seconds, spawn_operator, status_kib, OperatorSettings, RssSampler};
use report::{Params, Report};
use sim::SimHandle;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use watch::FirstSeen;

/// Scale benchmark of exact-operator.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Connections that exist before the operator starts.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Access-token lifetime (simulator and client spec).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    token_lifetime: Duration,
    /// Refresh window (simulator and client spec).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    window: Duration,
    /// refreshBefore of each connection (default: 5/6 of the window).
    #[arg(long, value_parser = parse_duration)]
    refresh_before: Option<Duration>,
    /// Length of the steady phase (0 skips it).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// New connections applied at once after the steady phase (0 skips the burst).
    #[arg(long, default_value_t = 0)]
    burst: usize,
    /// Also write the markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use this cluster (admin rights) instead of starting one with scripts/testenv.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Use an exact-sim already running here (client bench:bench-secret, same lifetimes).
    #[arg(long)]
    sim_url: Option<String>,
    /// Operator binary (default: exact-operator next to this binary, built if missing).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Namespace for everything (default: bench-<unix time>).
    #[arg(long)]
    namespace: Option<String>,
    /// Concurrent API requests while creating objects.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Operator --log-level.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Give up on the cold start after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    cold_start_timeout: Duration,
    /// Give up on the burst after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    burst_timeout: Duration,
    /// Folder for logs and the control plane's state (default: a temporary folder, deleted
    /// afterwards unless --keep).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work folder (logs).
    #[arg(long)]
    keep: bool,
    /// Unrelated Secrets created in the namespace before the run (other people's Secrets:
    /// the operator's memory must not grow with them).
    #[arg(long, default_value_t = 0)]
    foreign_secrets: usize,
    /// Restart the operator this far into the steady phase (which then ends there) and
    /// measure what the restart costs: token calls, writes, time to resync.
    #[arg(long, value_parser = parse_duration)]
    restart_at: Option<Duration>,
    /// Operator processes (replicas) to run side by side, e.g. with
    /// `--operator-arg=--shards=8`; figures are summed, the steady phase adds each replica's
    /// share of the refreshes.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// An extra argument for every operator process (repeatable).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
}

/// Progress on stderr.
pub fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn machine() -> (usize, f64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    (cpus, kib / 1024.0 / 1024.0)
}

/// `git describe --always --dirty` of the repository (the operator may include local edits).
fn revision() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn run(args: &Args, work: &std::path::Path) -> anyhow::Result<Report> {
    let window = args.window;
    let refresh_before = args.refresh_before.unwrap_or(window * 5 / 6);
    if refresh_before > window || window >= args.token_lifetime {
        bail!("need refreshBefore <= window < token lifetime");
    }
    if args.replicas == 0 || (args.replicas > 1 && args.restart_at.is_some()) {
        bail!("--replicas must be at least 1, and --restart-at needs --replicas 1");
    }
    let (cpus, mem_gib) = machine();
    let mut report = Report {
        params: Params {
            connections: args.connections,
            token_lifetime_s: args.token_lifetime.as_secs_f64(),
            window_s: window.as_secs_f64(),
            refresh_before_s: refresh_before.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            burst: args.burst,
            cpus,
            mem_gib,
            revision: revision(),
            foreign_secrets: args.foreign_secrets,
            restart_at_s: args.restart_at.map(|d| d.as_secs_f64()),
            replicas: args.replicas,
            operator_args: args.operator_args.clone(),
        },
        ..Default::default()
    };

    let plane = match &args.kubeconfig {
        Some(k) => ControlPlane::existing(k.clone()),
        None => ControlPlane::start(&work.join("testenv"))?,
    };
    let client = cluster::client(&plane.kubeconfig).await?;
    cluster::install_crds(&client).await?;
    let sim = match &args.sim_url {
        Some(url) => SimHandle::attach(url),
        None => SimHandle::spawn(
            &process::sibling_binary("exact-sim", "exact-sim")?,
            args.token_lifetime,
            window,
            &work.join("exact-sim.log"),
        )?,
    };
    let operator_bin = match &args.operator {
        Some(p) => p.clone(),
        None => process::sibling_binary("exact-operator", "exact-operator")?,
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("bench-{secs}")
    });
    let fx = Fixture {
        client: client.clone(),
        namespace: namespace.clone(),
        refresh_before,
        concurrency: args.concurrency.max(1),
    };

    // Setup: N connections before the operator runs.
    log(format!(
        "creating {} connections in namespace {namespace}",
        args.connections
    ));
    fx.base(&sim, args.token_lifetime, window).await?;
    if args.foreign_secrets > 0 {
        log(format!("creating {} foreign Secrets", args.foreign_secrets));
        fx.foreign_secrets(args.foreign_secrets).await?;
    }
    let names = fixtures::names("c", args.connections);
    let t = Instant::now();
    fx.bootstrap(&sim, &names).await?;
    fx.connections(&names).await?;
    report.setup_seconds = t.elapsed().as_secs_f64();

    // Cold start.
    let ready = FirstSeen::ready_connections(&client, &namespace);
    ready.synced().await;
    let log_file = |i: usize| match i {
        0 => work.join("operator.log"),
        i => work.join(format!("operator-{i}.log")),
    };
    log(format!(
        "starting {} x{} (log: {})",
        operator_bin.display(),
        args.replicas,
        log_file(0).display()
    ));
    let pre_requests = cluster::scrape(&client).await?;
    let started = Instant::now();
    let mut operators = (0..args.replicas)
        .map(|i| {
            spawn_operator(
                &operator_bin,
                &plane.kubeconfig,
                &namespace,
                &OperatorSettings {
                    pod: &format!("bench-operator-{i}"),
                    log_level: &args.log_level,
                    extra_args: &args.operator_args,
                },
                &log_file(i),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rss: Vec<RssSampler> = operators
        .iter()
        .map(|o| RssSampler::start(o.pid()))
        .collect();
    let probes_start = Mark {
        at: started,
        requests: pre_requests,
        cpu: vec![0.0; operators.len()],
        apiserver: plane.pid("kube-apiserver").and_then(cpu_seconds),
        etcd: plane.pid("etcd").and_then(cpu_seconds),
        reconciles: Some(0.0),
        granted: vec![0.0; operators.len()],
    };
    phases::wait_all(&ready, &names, args.cold_start_timeout, &operators)
        .await
        .context("cold start")?;
    let last_ready = names
        .iter()
        .filter_map(|n| ready.get(n))
        .max()
        .unwrap_or(started);
    ready.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = Probes {
        operators: &operators,
        apiserver: plane.pid("kube-apiserver"),
        etcd: plane.pid("etcd"),
        client: &client,
    };
    if operators[0]
        .metric("exact_operator_reconciles_total")
        .await
        .is_none()
    {
        log("warning: operator /metrics not readable");
    }
    if !names.is_empty() {
        let cold = probes
            .phase(
                &probes_start,
                names.len() as f64,
                Some(last_ready - started),
            )
            .await?;
        log(format!(
            "cold start: all {} Ready after {:.1} s",
            names.len(),
            cold.seconds
        ));
        report.cold_start = Some(cold);
    }

    if !args.duration.is_zero() && !names.is_empty() {
        let timing = phases::Timing {
            lifetime: args.token_lifetime,
            window,
            refresh_before,
        };
        let length = args
            .restart_at
            .map_or(args.duration, |at| at.min(args.duration));
        let steady = phases::steady(&probes, &sim, &names, timing, length, &rss);
        report.steady = Some(steady.await?);
    }
    if let (Some(_), Some(steady)) = (args.restart_at, &report.steady) {
        let input = phases::RestartInput {
            names: &names,
            calls_per_second: steady.token_calls as f64 / steady.phase.seconds.max(1.0),
            writes_per_refresh: steady.phase.writes_per_unit,
            timeout: args.cold_start_timeout,
        };
        let spawn = || {
            spawn_operator(
                &operator_bin,
                &plane.kubeconfig,
                &namespace,
                &OperatorSettings {
                    pod: "bench-operator-0",
                    log_level: &args.log_level,
                    extra_args: &args.operator_args,
                },
                &work.join("operator-restarted.log"),
            )
        };
        report.rss_peak_mib = peak_mib(&operators);
        let restarted = phases::restart(&mut operators[0], spawn, &client, &sim, input);
        report.restart = Some(restarted.await?);
    }
    let probes = Probes {
        operators: &operators,
        apiserver: plane.pid("kube-apiserver"),
        etcd: plane.pid("etcd"),
        client: &client,
    };
    if args.burst > 0 {
        let burst = phases::burst(&probes, &fx, &sim, args.burst, args.burst_timeout);
        report.burst = Some(burst.await?);
    }

    report.rss_peak_mib = report.rss_peak_mib.max(peak_mib(&operators));
    for operator in &mut operators {
        operator.stop();
    }
    drop(sim);
    drop(plane);
    Ok(report)
}

/// The largest peak resident memory (VmHWM) of the operator processes.
fn peak_mib(operators: &[operator_process::OperatorProcess]) -> f64 {
    operators
        .iter()
        .map(|o| status_kib(o.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0)
        .fold(0.0, f64::max)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = args.work_dir.is_none();
    let work = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("exact-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let result = run(&args, &work).await;
    if temp && !args.keep && result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        log(format!("logs kept in {}", work.display()));
    }
    let report = result?;
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = &args.report {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
