//! The running simulator: router, accept loop and the [`Sim`] handle.

use crate::config::{Faults, SimConfig};
use crate::faults::ConnKill;
use crate::state::{lock, Shared, State};
use crate::stats::{ChainStats, Stats};
use crate::{admin, auth, rest, tls, token, webhooks};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

/// Builds the HTTP routes over shared state.
fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/oauth2/auth", get(auth::authorize))
        .route(auth::APPROVE_PATH, post(auth::approve))
        .route("/api/oauth2/token", post(token::token_handler))
        .route("/api/v1/current/Me", get(rest::me))
        .route("/api/v1/{division}/hrm/Divisions", get(rest::hrm_divisions))
        .route(
            "/api/v1/{division}/system/Divisions",
            get(rest::system_divisions),
        )
        .route("/api/v1/{division}/crm/Accounts", get(rest::accounts))
        .route(
            "/api/v1/{division}/webhooks/{item}",
            get(webhooks::list)
                .post(webhooks::create)
                .delete(webhooks::delete),
        )
        .merge(admin::routes())
        .with_state(shared)
}

/// Handle to a running simulator. Dropping it stops the server (without waiting).
pub struct Sim {
    addr: SocketAddr,
    shared: Shared,
    cert_pem: Option<String>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sim {
    /// Binds `addr` (port 0 picks a free port) and starts serving in the background.
    pub async fn start(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<Sim> {
        if let Some(d) = &cfg.default_user {
            if !cfg.users.iter().any(|u| &u.user_name == d) {
                anyhow::bail!("default user {d:?} is not among the configured users");
            }
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (acceptor, cert_pem) = if cfg.tls {
            let ss = tls::self_signed()?;
            (Some(ss.acceptor), Some(ss.cert_pem))
        } else {
            (None, None)
        };
        let shared: Shared = Arc::new(Mutex::new(State::new(cfg)));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            router(shared.clone()),
            acceptor,
            shutdown_rx,
        ));
        Ok(Sim {
            addr,
            shared,
            cert_pem,
            shutdown_tx: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (or `https://` with TLS); Exact's REST base is `<base_url>/api`.
    pub fn base_url(&self) -> String {
        let scheme = if self.cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/api/oauth2/token", self.base_url())
    }

    /// The authorization endpoint URL.
    pub fn auth_url(&self) -> String {
        format!("{}/api/oauth2/auth", self.base_url())
    }

    /// The `Me` endpoint URL.
    pub fn me_url(&self) -> String {
        format!("{}/api/v1/current/Me", self.base_url())
    }

    /// PEM of the self-signed certificate when started with `tls: true`.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Creates a connection named `name` for `client_id` and returns its first refresh
    /// token. It has no live access token, so an immediate refresh is allowed.
    /// `division` defaults to [`SimConfig::division`]. (A connection for an unknown
    /// client can be created but never refreshed.)
    pub fn seed_connection(&self, client_id: &str, name: &str, division: Option<i64>) -> String {
        lock(&self.shared).seed(client_id, name, None, division)
    }

    /// Like [`Sim::seed_connection`] but with a known refresh token (for demos).
    pub fn seed_connection_with_token(
        &self,
        client_id: &str,
        name: &str,
        refresh_token: &str,
        division: Option<i64>,
    ) {
        lock(&self.shared).seed(client_id, name, Some(refresh_token), division);
    }

    /// Creates a connection named `name` for the configured user `user_name` (an existing
    /// grant: no other chain is revoked) and returns its first refresh token; `None` when
    /// no such user is configured.
    pub fn seed_connection_for_user(
        &self,
        client_id: &str,
        name: &str,
        user_name: &str,
    ) -> Option<String> {
        let mut st = lock(&self.shared);
        let user = *st.user_index.get(user_name)?;
        Some(st.seed_for(client_id, name, None, user))
    }

    /// Sets the `CurrentDivision` of a configured user (Exact: the division the user
    /// last opened in the browser). False when the user or division is unknown to it.
    pub fn set_current_division(&self, user_name: &str, division: i64) -> bool {
        let mut st = lock(&self.shared);
        let Some(i) = st.user_index.get(user_name).copied() else {
            return false;
        };
        match st.users.get_mut(i) {
            Some(u) if u.division(division).is_some() => {
                u.current_division = division;
                true
            }
            _ => false,
        }
    }

    /// Token calls of (`user_name`, `client_id`) in the rolling 24 h window of the
    /// daily cap. Anonymous users are named `<connection>@example.invalid`.
    pub fn token_calls_24h(&self, user_name: &str, client_id: &str) -> u32 {
        let mut st = lock(&self.shared);
        let Some(user) = st.users.iter().position(|u| u.user_name == user_name) else {
            return 0;
        };
        st.token_calls_24h(user, client_id)
    }

    /// Whether connection `name` was revoked (its user consented again on the same
    /// client); `None` for an unknown connection.
    pub fn connection_revoked(&self, name: &str) -> Option<bool> {
        let st = lock(&self.shared);
        st.chains
            .iter()
            .rev()
            .find(|c| c.name == name)
            .map(|c| c.revoked.is_some())
    }

    /// The user of connection `name` (its `UserName`).
    pub fn connection_user(&self, name: &str) -> Option<String> {
        let st = lock(&self.shared);
        let idx = st.chains.iter().rposition(|c| c.name == name)?;
        st.chain_user(idx).map(|u| u.user_name.clone())
    }

    /// Every webhook subscription at this "Exact".
    pub fn webhook_subscriptions(&self) -> Vec<webhooks::WebhookSubscription> {
        lock(&self.shared).webhooks.all()
    }

    /// Deletes a webhook subscription behind its owner's back (as if removed in Exact's
    /// UI); false when unknown.
    pub fn delete_webhook_subscription(&self, id: &str) -> bool {
        lock(&self.shared).webhooks.remove(id)
    }

    /// Fires one message for subscription `id` at its CallbackURL, signed as `opts` say.
    pub async fn fire_webhook(
        &self,
        id: &str,
        opts: &webhooks::FireOptions,
    ) -> Result<webhooks::Fired, webhooks::FireError> {
        webhooks::fire(&self.shared, id, opts).await
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, f: Faults) {
        lock(&self.shared).faults = f;
    }

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        lock(&self.shared).faults.clone()
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> Stats {
        lock(&self.shared).stats.clone()
    }

    /// A snapshot of one connection's counters.
    pub fn connection_stats(&self, name: &str) -> Option<ChainStats> {
        lock(&self.shared).stats.connection(name).cloned()
    }

    /// Whether `token` is a known, unexpired access token.
    pub fn access_token_valid(&self, token: &str) -> bool {
        lock(&self.shared).access_chain(token).is_some()
    }

    /// Moves the simulator's clock forward (tokens, codes, error windows, rate limits).
    pub fn advance_clock(&self, by: Duration) {
        lock(&self.shared).clock.advance(by);
    }

    /// Stops accepting, closes all connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle_conn(stream, router.clone(), tls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn handle_conn(stream: TcpStream, router: Router, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_io(TokioIo::new(stream), router).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(s) => serve_io(TokioIo::new(s), router).await,
            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
        },
    }
}

/// Serves HTTP/1.1 on one connection. A handler that triggers the connection's
/// [`ConnKill`] makes us drop the connection (closing the socket) without answering.
async fn serve_io<I>(io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let kill = ConnKill::default();
    let handle = kill.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        let mut r = router.clone();
        async move { r.call(req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection error");
            }
        }
        _ = kill.triggered() => tracing::debug!("connection dropped on purpose"),
    }
}
