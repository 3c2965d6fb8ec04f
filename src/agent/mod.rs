//! Token agent: a sidecar that mirrors one managed Secret into files (and optionally a
//! loopback HTTP endpoint) within a second of each change.
//!
//! - [`watch`]: watches the one Secret (`fieldSelector=metadata.name=NAME`, so RBAC can
//!   restrict the agent to `get/list/watch` on that Secret by `resourceNames`), re-watching
//!   with backoff; keeps the last good token when the Secret is gone or the API is down.
//! - [`files`]: writes each key as a file, atomically (temp file, fsync, rename), never a
//!   refresh token.
//! - [`http`]: `GET /token` (JSON, loopback only) and `GET /healthz`.
//!
//! Logs name keys, resourceVersions and expiry times, never values.

pub mod files;
pub mod http;
pub mod state;
pub mod watch;

use crate::startup::{init_logging, LogFormat};
use files::TokenDir;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use state::Shared;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// The in-cluster namespace file, read when neither `--namespace` nor `POD_NAMESPACE` is set.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Flags of `exact-operator agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Name of the managed workload Secret to mirror.
    #[arg(long, env = "EXACT_AGENT_SECRET")]
    pub secret: String,
    /// Namespace of the Secret [default: $POD_NAMESPACE, else the in-cluster namespace file].
    #[arg(long, env = "EXACT_AGENT_NAMESPACE")]
    pub namespace: Option<String>,
    /// Directory to write one file per key into (created when missing).
    #[arg(long, env = "EXACT_AGENT_DIR", default_value = "/var/run/exact")]
    pub dir: PathBuf,
    /// Permission bits of the files, in octal.
    #[arg(long, env = "EXACT_AGENT_FILE_MODE", default_value = "0640", value_parser = parse_mode)]
    pub file_mode: u32,
    /// Serve `GET /token` (JSON) and `/healthz` here; loopback addresses only.
    #[arg(long, env = "EXACT_AGENT_HTTP")]
    pub http: Option<SocketAddr>,
    /// Serve `/healthz` and `/readyz` (no token values) here, e.g. 0.0.0.0:8098 for kubelet
    /// probes.
    #[arg(long, env = "EXACT_AGENT_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "EXACT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level filter (RUST_LOG overrides it).
    #[arg(long, env = "EXACT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl AgentArgs {
    /// Arguments for mirroring `secret` into `dir`, with every other flag at its default
    /// (mode 0640, no HTTP listeners, namespace from the environment).
    pub fn new(secret: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        AgentArgs {
            secret: secret.into(),
            namespace: None,
            dir: dir.into(),
            file_mode: 0o640,
            http: None,
            health_addr: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

/// Parses an octal permission mode such as `0640` or `640`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like 0640")),
    }
}

/// Why the agent cannot start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// `--http` names a non-loopback address.
    #[error(
        "--http {0} is not a loopback address: GET /token serves the access token without \
         authentication, so it may only listen on 127.0.0.1 or [::1] (use --health-addr for \
         probes from the kubelet)"
    )]
    NonLoopbackHttp(SocketAddr),
    /// No namespace could be determined.
    #[error(
        "cannot tell the Secret's namespace: pass --namespace, set POD_NAMESPACE, or run \
         in-cluster ({NAMESPACE_FILE})"
    )]
    NoNamespace,
    /// `--secret` is empty.
    #[error("--secret must name the workload Secret to mirror")]
    NoSecret,
    /// The token directory is unusable.
    #[error(transparent)]
    Files(#[from] files::FilesError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The I/O error.
        error: std::io::Error,
    },
    /// No Kubernetes configuration.
    #[error("no Kubernetes configuration (KUBECONFIG or in-cluster): {0}")]
    Kube(kube::Error),
}

/// The Secret's namespace: `--namespace`, else `POD_NAMESPACE`, else the in-cluster file's
/// content (each used only when non-blank).
pub fn resolve_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    namespace_file: Option<&str>,
) -> Result<String, AgentError> {
    [flag, pod_namespace, namespace_file]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(AgentError::NoNamespace)
}

/// Checks the flags that need no cluster: a Secret name and a loopback `--http`.
pub fn validate(args: &AgentArgs) -> Result<(), AgentError> {
    if args.secret.trim().is_empty() {
        return Err(AgentError::NoSecret);
    }
    match args.http {
        Some(addr) if !http::is_loopback(&addr) => Err(AgentError::NonLoopbackHttp(addr)),
        _ => Ok(()),
    }
}

/// A running agent (see [`start`]).
pub struct Agent {
    http_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: signal::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    /// Where `GET /token` listens, when `--http` was given (the bound port for port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the health endpoint listens, when `--health-addr` was given.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The health verdict now (what `/healthz` answers).
    pub fn health(&self) -> Result<String, String> {
        self.shared.health(jiff::Timestamp::now())
    }

    /// Stops watching and serving (files stay in place) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| anyhow::anyhow!("agent task failed: {e}"))?,
            None => Ok(()),
        }
    }

    /// Waits until the agent stops by itself (it only does on an unrecoverable error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        match self.task.as_mut() {
            Some(task) => {
                let r = task
                    .await
                    .map_err(|e| anyhow::anyhow!("agent task failed: {e}"))?;
                self.task = None;
                r
            }
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the agent with `client`: validates the flags, prepares the directory, binds the
/// listeners and spawns the watch loop. The namespace comes from `args.namespace`, else
/// `POD_NAMESPACE`, else the in-cluster namespace file.
pub async fn start(client: Client, args: AgentArgs) -> Result<Agent, AgentError> {
    validate(&args)?;
    let file_ns = std::fs::read_to_string(NAMESPACE_FILE).ok();
    let pod_ns = std::env::var("POD_NAMESPACE").ok();
    let namespace = resolve_namespace(
        args.namespace.as_deref(),
        pod_ns.as_deref(),
        file_ns.as_deref(),
    )?;
    let dir = TokenDir::new(&args.dir, args.file_mode);
    {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || d.prepare())
            .await
            .map_err(|e| {
                AgentError::Files(files::FilesError::Dir {
                    path: args.dir.clone(),
                    error: std::io::Error::other(e.to_string()),
                })
            })??;
    }
    let shared = Arc::new(Shared::new(format!("{namespace}/{}", args.secret)));
    let (stop, stopped) = signal::channel(false);

    let mut servers = Vec::new();
    let bound = |addr: Option<SocketAddr>, what: &'static str| async move {
        match addr {
            Some(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map(Some)
                .map_err(|error| AgentError::Listen { addr, what, error }),
            None => Ok(None),
        }
    };
    let token_listener = bound(args.http, "--http").await?;
    let health_listener = bound(args.health_addr, "--health-addr").await?;
    let http_addr = token_listener.as_ref().map(|(a, _)| *a);
    let health_addr = health_listener.as_ref().map(|(a, _)| *a);
    if let Some((addr, l)) = token_listener {
        tracing::info!(%addr, "serving GET /token and /healthz");
        servers.push(serve(
            l,
            http::token_router(shared.clone()),
            stopped.clone(),
        ));
    }
    if let Some((addr, l)) = health_listener {
        tracing::info!(%addr, "serving /healthz and /readyz");
        servers.push(serve(
            l,
            http::health_router(shared.clone()),
            stopped.clone(),
        ));
    }

    let api: Api<Secret> = Api::namespaced(client, &namespace);
    tracing::info!(secret = %shared.secret, dir = %args.dir.display(), "token agent starting");
    let name = args.secret.clone();
    let watch_shared = shared.clone();
    let task = tokio::spawn(async move {
        let result = watch::run(api, &name, dir, watch_shared, changed(stopped)).await;
        for s in servers {
            if result.is_err() {
                s.abort();
            }
            let _ = s.await;
        }
        result
    });
    Ok(Agent {
        http_addr,
        health_addr,
        shared,
        stop,
        task: Some(task),
    })
}

/// Resolves once `rx` sees `true` (or its sender is gone).
async fn changed(mut rx: signal::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves `app` on `listener` until the stop signal.
fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stopped: signal::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(changed(stopped))
            .await
        {
            tracing::error!(error = %e, "agent HTTP server stopped");
        }
    })
}

/// Runs the agent until SIGTERM (or Ctrl-C): logging, the flags, a client from KUBECONFIG or
/// the in-cluster configuration, then [`start`].
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log_level);
    validate(&args)?;
    let client = Client::try_default().await.map_err(AgentError::Kube)?;
    run_until(client, args, shutdown_signal()).await
}

/// Runs the agent with `client` until `shutdown` resolves, then stops it gracefully.
pub async fn run_until(
    client: Client,
    args: AgentArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut agent = start(client, args).await?;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested: stopping (token files stay in place)");
            agent.stop().await
        }
        r = agent.wait() => r,
    }
}

/// SIGTERM or Ctrl-C.
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
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_comes_from_flag_then_env_then_file() {
        let ns = |f, e, file| resolve_namespace(f, e, file).ok();
        assert_eq!(ns(Some("a"), Some("b"), Some("c")), Some("a".into()));
        assert_eq!(ns(None, Some("b"), Some("c")), Some("b".into()));
        assert_eq!(ns(Some(" "), None, Some("c\n")), Some("c".into()));
        assert_eq!(ns(None, Some(""), None), None);
        let e = resolve_namespace(None, None, None).expect_err("none");
        assert!(e.to_string().contains("--namespace"), "{e}");
    }

    #[test]
    fn http_must_be_loopback() {
        let mut args = AgentArgs::new("tok", "/tmp/x");
        args.http = Some("127.0.0.1:8099".parse().expect("addr"));
        assert!(validate(&args).is_ok());
        args.http = Some("0.0.0.0:8099".parse().expect("addr"));
        let e = validate(&args).expect_err("non-loopback");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        args.http = None;
        args.health_addr = Some("0.0.0.0:8098".parse().expect("addr"));
        assert!(validate(&args).is_ok(), "health may listen anywhere");
    }

    #[test]
    fn file_modes_are_octal() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("1777").is_err());
    }

    #[test]
    fn cli_flags_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "agent",
            "--secret",
            "acme-exact-token",
            "--namespace",
            "shop",
            "--dir",
            "/run/exact",
            "--http",
            "127.0.0.1:8099",
            "--health-addr",
            "0.0.0.0:8098",
            "--file-mode",
            "0600",
        ])
        .expect("parses");
        assert_eq!(cli.agent.secret, "acme-exact-token");
        assert_eq!(cli.agent.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.agent.file_mode, 0o600);
        assert_eq!(
            cli.agent.http,
            Some("127.0.0.1:8099".parse().expect("addr"))
        );
    }
}
