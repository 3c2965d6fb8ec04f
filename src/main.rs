//! exact-operator: thin entry point; the logic lives in the library.

use clap::Parser;
use exact_operator::context::{Context, Settings};
use exact_operator::http::{router, Health};
use exact_operator::metrics::Metrics;
use exact_operator::startup::{check_crds, identity, init_logging, LogFormat};
use std::net::SocketAddr;
use std::sync::Arc;

/// Keeps Exact Online OAuth 2.0 connections alive: refreshes tokens before they expire and
/// publishes them in Secrets.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the controllers (the default when no subcommand is given).
    Run(Args),
    /// Run as a token agent sidecar: mirror one managed Secret into files.
    Agent(exact_operator::agent::AgentArgs),
}

/// Flags of the controller process.
#[derive(clap::Args, Debug)]
struct Args {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "EXACT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "EXACT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level filter (RUST_LOG overrides it).
    #[arg(long, env = "EXACT_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Token-call errors allowed per connection per rolling hour (Exact blocks apps at ~10).
    #[arg(long, env = "EXACT_MAX_ERRORS_PER_HOUR", default_value_t = 8)]
    max_errors_per_hour: u32,
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Serve the OAuth authorization-code flow (start and callback routes) on this address.
    #[arg(long, env = "EXACT_OAUTH_ADDR")]
    oauth_addr: Option<SocketAddr>,
    /// Public base URL under which the OAuth routes are reachable (the ExactOAuthClient's
    /// redirectUri is <public-url>/oauth2/callback); shown in status.authorizationUrl.
    #[arg(long, env = "EXACT_PUBLIC_URL")]
    public_url: Option<String>,
    /// OAuth start/callback requests allowed per client IP per minute (sustained; bursts of
    /// a third of it). Refusals count in exact_operator_oauth_rate_limited_total.
    #[arg(long, env = "EXACT_OAUTH_RATE_LIMIT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    oauth_rate_limit: u32,
    /// Header naming the client IP, set by a trusted proxy in front of the OAuth routes
    /// (e.g. X-Forwarded-For; its last entry counts). Without it the peer address counts.
    #[arg(long, env = "EXACT_OAUTH_CLIENT_IP_HEADER")]
    oauth_client_ip_header: Option<axum::http::HeaderName>,
    /// Keep each token answer in this directory (fsync'd, mode 0600) until it is in the state
    /// Secret, and replay what a killed predecessor left there on start. Use a directory
    /// that survives container restarts within the pod (the chart mounts a memory emptyDir).
    #[arg(long, env = "EXACT_JOURNAL_DIR")]
    journal_dir: Option<std::path::PathBuf>,
    /// Run the controllers only while holding the Lease `exact-operator-leader` in the
    /// operator namespace (use with more than one replica): one replica works, the others
    /// stand by. This is sharding's one-shard special case; see --shards.
    #[arg(long, env = "EXACT_LEADER_ELECT", conflicts_with = "shards")]
    leader_elect: bool,
    /// Spread the work over this many shards (by a stable hash of each object's UID), each
    /// held by one replica through the Lease `exact-operator-shard-<i>` in the operator
    /// namespace; every replica takes a fair share (ceil(shards / replicas)) and takes over
    /// a dead replica's shards when their Leases run out. Without it this process works on
    /// everything. Exclusive with --leader-elect (the one-shard case with a standby).
    #[arg(long, env = "EXACT_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: Option<u32>,
    /// Holder identity in the shard Leases (default: POD_NAME, so a restarted container of
    /// the same pod resumes its shards at once; else HOSTNAME). Set it when several
    /// processes share a host or pod name (tests).
    #[arg(long, env = "EXACT_SHARD_IDENTITY", requires = "shards")]
    shard_identity: Option<String>,
    /// Seconds a shard Lease lasts without renewal: a dead replica's shards are taken over
    /// within it plus a tick (a third of it), up to --shard-lease-seconds * 4/3.
    #[arg(long, env = "EXACT_SHARD_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    shard_lease_seconds: u64,
    /// After each write of a workload Secret, patch the annotation
    /// exact-operator.io/token-published-at on the pods of its namespace labelled
    /// exact-operator.io/refresh-mounts=<secret name>, so the kubelet refreshes their Secret
    /// volume at once instead of at its next resync (60-90 s). Needs list and patch on pods.
    #[arg(long, env = "EXACT_NUDGE_MOUNTING_PODS")]
    nudge_mounting_pods: bool,
    /// Namespace of the operator's own Secrets and Lease (the OAuth state-signing key).
    #[arg(long, env = "POD_NAMESPACE", default_value = "exact-operator-system")]
    operator_namespace: String,
    /// Seconds a bootstrap refresh token read from its Secret is reused before that Secret is
    /// read again (bootstrap Secrets are not watched: a new value is imported within this).
    #[arg(long, env = "EXACT_BOOTSTRAP_RECHECK_SECONDS", default_value_t = 3600)]
    bootstrap_recheck_seconds: u64,
}

/// Entries older than Exact's refresh-token lifetime are worthless.
const JOURNAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Agent(a)) => return exact_operator::agent::run(a).await,
        Some(Command::Run(a)) => a,
        None => cli.run,
    };
    init_logging(args.log_format, &args.log_level);
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes configuration (KUBECONFIG or in-cluster): {e}")
    })?;
    check_crds(&client).await?;
    let metrics = Metrics::default();
    let health = Health::default();
    let settings = Settings {
        max_errors_per_hour: args.max_errors_per_hour,
        watch_namespace: args.namespace.filter(|n| !n.is_empty()),
        public_url: args.public_url.filter(|u| !u.is_empty()),
        nudge_mounting_pods: args.nudge_mounting_pods,
        bootstrap_recheck: std::time::Duration::from_secs(args.bootstrap_recheck_seconds),
        ..Settings::default()
    };
    let mut ctx = Context::new(client, identity(), settings, metrics.clone());
    if let Some(n) = args.shards {
        ctx.shards = Some(Arc::new(exact_operator::shard::Ownership::new(n)));
    }
    if args.oauth_addr.is_some() || ctx.settings.public_url.is_some() {
        // One key for every replica: start tickets in status and states at the callback.
        let key = exact_operator::oauth::key::load_or_create(&ctx.client, &args.operator_namespace)
            .await
            .map_err(|e| anyhow::anyhow!("OAuth state key: {e}"))?;
        ctx.consent_key = Some(exact_operator::consent::SigningKey::new(key));
    }
    if let Some(dir) = &args.journal_dir {
        let journal = exact_operator::journal::Journal::open(dir)
            .map_err(|e| anyhow::anyhow!("token journal {}: {e}", dir.display()))?;
        // Before any controller: a reconcile must not spend the old token of a chain whose
        // rotated successor is still only in the journal.
        exact_operator::startup::replay_journal(&ctx, &journal, JOURNAL_MAX_AGE).await;
        ctx.journal = Some(Arc::new(journal));
    }
    let ctx = Arc::new(ctx);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, identity = %ctx.identity, "exact-operator starting");
    let app = router(metrics.clone(), health.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    if let Some(addr) = args.oauth_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving the OAuth flow");
        let limit = exact_operator::oauth::guard::RateLimit {
            per_minute: std::num::NonZeroU32::new(args.oauth_rate_limit)
                .unwrap_or(std::num::NonZeroU32::MIN),
            burst: std::num::NonZeroU32::new(args.oauth_rate_limit.div_ceil(3))
                .unwrap_or(std::num::NonZeroU32::MIN),
            client_ip_header: args.oauth_client_ip_header.clone(),
        };
        let state = exact_operator::oauth::OAuthState::new(ctx.clone(), &limit);
        tokio::spawn(async move {
            if let Err(e) = exact_operator::oauth::serve(listener, state).await {
                tracing::error!(error = %e, "OAuth server stopped");
            }
        });
    }
    health.set_ready(true);
    if let Some(shards) = args.shards {
        let duration = std::time::Duration::from_secs(args.shard_lease_seconds);
        let settings = exact_operator::shard::ShardSettings {
            shards,
            namespace: args.operator_namespace.clone(),
            identity: exact_operator::shard::holder_identity(
                args.shard_identity.as_deref(),
                &ctx.identity,
            ),
            duration,
            tick: duration / 3,
        };
        metrics.is_leader.set(1);
        exact_operator::shard::run_sharded(ctx, settings, shutdown_signal()).await?;
    } else if args.leader_elect {
        let lease = exact_operator::leader::LeaseSettings {
            namespace: args.operator_namespace.clone(),
            ..Default::default()
        };
        let leader_metric = metrics.clone();
        exact_operator::leader::run_as_leader(ctx, lease, shutdown_signal(), move |l| {
            leader_metric.is_leader.set(i64::from(l));
        })
        .await?;
    } else {
        metrics.is_leader.set(1);
        exact_operator::controller::run(ctx, shutdown_signal()).await;
    }
    tracing::info!("exact-operator stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing refreshes in flight");
}
