//! The controllers: ExactConnection (the token keeper), ExactOAuthClient (validation) and
//! ExactWebhookSubscription (`crate::webhook::controller`).

pub mod client;
pub mod connection;
pub mod referenced;
pub mod status;

use crate::context::Context;
use crate::crd::{ExactConnection, ExactOAuthClient};
use crate::secrets::{MANAGED_BY, MANAGED_BY_LABEL, ROLE_LABEL};
use crate::webhook::controller::ConnectionFeed;
use futures::{future, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{predicates, watcher, Predicate, WatchStreamExt};
use kube::ResourceExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Reconcile errors; the error policy picks the requeue by kind.
#[derive(Debug, Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A namespaced object without a namespace.
    #[error("object has no namespace")]
    MissingNamespace,
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(error = %err, "reconcile failed");
    match err {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
            Action::requeue(Duration::from_millis(500))
        }
        Error::Kube(_) => Action::requeue(Duration::from_secs(2)),
        Error::MissingNamespace => Action::await_change(),
    }
}

pub use crate::crd::client_key;

/// Connections that a change to a referenced `secret` affects: via their client's client
/// Secret (webhook Secrets reach the webhook controller through the same cache).
fn connections_for_secret(
    secret: &Secret,
    conns: &Store<ExactConnection>,
    clients: &Store<ExactOAuthClient>,
) -> Vec<ObjectRef<ExactConnection>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    conns
        .state()
        .into_iter()
        .filter(|c| {
            let (cns, cname) = client_key(c);
            cns == ns
                && clients
                    .get(&ObjectRef::new(&cname).within(&cns))
                    .is_some_and(|cl| cl.spec.client_secret_ref.name == name)
        })
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

/// What the caches keep of a watched object: no managedFields (often most of an object),
/// and no copy of the object `kubectl apply` leaves in an annotation.
fn strip_for_cache<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// The annotation in which `kubectl apply` keeps the applied manifest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until `shutdown` resolves; in-flight reconciles (and so any
/// refresh in flight, through to its persisted state) finish first.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    ctx.caches.set_stopping(false);
    let stopping = ctx.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.caches.set_stopping(true);
        let _ = tx.send(true);
    });
    let scope = ctx.settings.watch_namespace.clone();
    let clients: Api<ExactOAuthClient> = scoped(&ctx.client, scope.as_deref());
    let client_ctrl = Controller::new(clients, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(stop(rx.clone()))
        .run(client::reconcile, error_policy, ctx.clone())
        .for_each(|_| future::ready(()));
    let (feed, changes) = crate::webhook::controller::ConnectionFeed::new();
    let connections = run_connections(ctx.clone(), feed, stop(rx.clone()));
    let webhooks = crate::webhook::controller::run(ctx.clone(), changes, stop(rx));
    future::join3(connections, client_ctrl, webhooks).await;
}

/// The connection controller, fed by its own watch (spec and annotation changes), its
/// managed Secrets (by label: an edited or deleted workload Secret is restored at once), its
/// clients and the Secrets they reference (each watched by name); it fills the watch-backed
/// caches the reconcile reads. No watch covers Secrets the operator does not manage or use.
async fn run_connections(
    ctx: Arc<Context>,
    mut webhook_feed: ConnectionFeed,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().any_semantic();
    let scope = ctx.settings.watch_namespace.clone();
    let conns: Api<ExactConnection> = scoped(&client, scope.as_deref());
    let clients: Api<ExactOAuthClient> = scoped(&client, scope.as_deref());
    let (client_store, client_writer) = reflector::store::<ExactOAuthClient>();
    let (referenced, referenced_changes) = referenced::ReferencedSecrets::new(ctx.clone());
    let synced_clients = client_store.clone();
    let client_stream = watcher(clients, wc.clone())
        .default_backoff()
        .modify(strip_for_cache)
        .reflect(client_writer)
        .touched_objects()
        .inspect(move |_| referenced.sync(&synced_clients));
    // Connections trigger on spec (generation) and annotation changes only: status writes,
    // most of them our own, need no reconcile. The same watch keeps the user index and feeds
    // the webhook controller (one deserialization per connection event).
    let (conn_store, conn_writer) = reflector::store::<ExactConnection>();
    let indexing = ctx.clone();
    let conn_stream = watcher(conns, wc)
        .default_backoff()
        .modify(strip_for_cache)
        .reflect(conn_writer)
        .inspect_ok(move |event| {
            indexing.caches.observe_connection(event);
            match event {
                watcher::Event::Apply(c) | watcher::Event::InitApply(c) => webhook_feed.observe(c),
                watcher::Event::Delete(c) => webhook_feed.forget(c),
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    let echo = ctx.clone();
    let caching = ctx.clone();
    let workload_changes = watcher(scoped::<Secret>(&client, scope.as_deref()), managed())
        .default_backoff()
        .modify(reduce_managed_secret)
        .inspect_ok(move |event| caching.caches.observe_managed(event))
        .touched_objects()
        .try_filter(move |s| future::ready(is_workload_secret(s) && !echo.caches.is_own_write(s)));
    ctx.caches.install(client_store.clone());
    // Another connection's finding (e.g. the same Exact user) reconciles this one.
    let (peer_tx, peer_rx) = futures::channel::mpsc::unbounded();
    ctx.caches.install_connections(conn_store.clone(), peer_tx);
    let turns = Arc::new(connection::Turns::new(ctx.settings.concurrency));
    let by_client = conn_store.clone();
    let by_secret = (conn_store.clone(), client_store);
    Controller::for_stream(conn_stream, conn_store)
        // The reconciles take their turns in `connection::reconcile`, first come first
        // served, `settings.concurrency` at a time; kube-runtime's own limit only bounds how
        // many wait for a turn (it polls every one it runs on each wake: unbounded, a cold
        // start of 10,000 doubled the operator's CPU per connection).
        .with_config(ControllerConfig::default().concurrency(WAITING_RECONCILES))
        .owns_stream(workload_changes)
        .watches_stream(client_stream, move |c: ExactOAuthClient| {
            connections_of_client(&by_client, &c)
        })
        .watches_stream(referenced_changes, move |s| {
            connections_for_secret(&s, &by_secret.0, &by_secret.1)
        })
        .reconcile_on(peer_rx)
        .graceful_shutdown_on(stop)
        .run(
            move |conn, ctx| connection::reconcile(conn, ctx, turns.clone()),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
        .await;
}

/// Reconciles that kube-runtime starts at once, most of them waiting for a turn
/// (`connection::Turns`): a burst of up to this many new connections is served first come
/// first served; beyond it kube-runtime starts the rest in no particular order.
const WAITING_RECONCILES: u16 = 1024;

/// The Secrets the operator manages (state and workload Secrets), by label.
fn managed() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
        .any_semantic()
}

/// What the cache keeps of a managed Secret: of a workload Secret its metadata and the
/// digest of its data (publishing only compares), of a state Secret its data and the
/// metadata the conditional writes need (name, resourceVersion).
fn reduce_managed_secret(secret: &mut Secret) {
    strip_for_cache(secret);
    if is_workload_secret(secret) {
        crate::secrets::digest_data(secret);
    } else {
        // Without its labels a state Secret is still no workload Secret (the trigger filter
        // below), and nothing else reads them from the cache.
        let meta = &mut secret.metadata;
        meta.owner_references = None;
        meta.annotations = None;
        meta.labels = None;
    }
}

/// Workload Secrets trigger their connection (an edit or deletion is restored at once);
/// state Secrets are written only by the operator itself and trigger nothing.
fn is_workload_secret(secret: &Secret) -> bool {
    secret
        .labels()
        .get(ROLE_LABEL)
        .is_some_and(|role| role == "token")
}

fn connections_of_client(
    store: &reflector::Store<ExactConnection>,
    c: &ExactOAuthClient,
) -> Vec<ObjectRef<ExactConnection>> {
    let key = (c.namespace().unwrap_or_default(), c.name_any());
    store
        .state()
        .into_iter()
        .filter(|conn| client_key(conn) == key)
        .map(|conn| ObjectRef::from_obj(&*conn))
        .collect()
}
