//! Keeps each ExactWebhookSubscription's topics subscribed at Exact: lists the app's
//! subscriptions on every reconcile (and every resync), creates missing ones (also ones
//! deleted at Exact behind our back), deletes ones for topics no longer wanted, and on
//! delete removes them all before releasing the finalizer.

use super::crd::{ActiveSubscription, ExactWebhookSubscription};
use super::exact_api::{ApiError, ExactApi, Remote};
use super::link::{current_token, link, reason, Linked, NotReady, Token};
use crate::conditions;
use crate::context::Context;
use crate::crd::ExactConnection;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Finalizer that removes the subscriptions at Exact before the object goes.
pub const FINALIZER: &str = "exact-operator.io/webhook-subscriptions";

/// Path of the webhook route under the public URL.
pub fn callback_url(public_url: &str, ns: &str, name: &str) -> String {
    format!(
        "{}/webhooks/exact/{ns}/{name}",
        public_url.trim_end_matches('/')
    )
}

/// Reconcile errors.
#[derive(Debug, Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Exact failed while deleting subscriptions (retried; the finalizer stays).
    #[error("deleting subscriptions at Exact: {0}")]
    Cleanup(#[source] ApiError),
}

/// What the webhook controller needs from the connection watch, which it shares (a second
/// watch of every connection would deserialize every status write twice): the connections
/// that turned Ready or not, or moved division, since last seen. Their token refreshes alone
/// change nothing here and are not passed on.
pub struct ConnectionFeed {
    last: HashMap<String, u64>,
    tx: UnboundedSender<(String, String)>,
}

/// The far end of a [`ConnectionFeed`]: `(namespace, name)` of each changed connection.
pub type ConnectionChanges = UnboundedReceiver<(String, String)>;

impl ConnectionFeed {
    /// A feed and the end the controller reads.
    pub fn new() -> (Self, ConnectionChanges) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let feed = ConnectionFeed {
            last: HashMap::new(),
            tx,
        };
        (feed, rx)
    }

    /// Called with every connection the watch applies.
    pub fn observe(&mut self, c: &ExactConnection) {
        let (Some(uid), Some(ns)) = (c.metadata.uid.as_ref(), c.metadata.namespace.as_ref()) else {
            return;
        };
        let readiness = connection_readiness(c);
        if self.last.get(uid) == Some(&readiness) {
            return;
        }
        self.last.insert(uid.clone(), readiness);
        let _ = self.tx.unbounded_send((ns.clone(), c.name_any()));
    }

    /// Called with a deleted connection.
    pub fn forget(&mut self, c: &ExactConnection) {
        if let Some(uid) = c.metadata.uid.as_deref() {
            self.last.remove(uid);
        }
    }
}

/// Runs the controller until `shutdown` resolves; `connections` come from the connection
/// controller's watch ([`ConnectionFeed`]).
pub async fn run(
    ctx: Arc<Context>,
    connections: ConnectionChanges,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ExactWebhookSubscription> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let subs = controller.store();
    // A connection that turns Ready (or moves division) is acted on at once instead of at
    // the next retry.
    let triggers = connections
        .flat_map(move |(ns, name)| futures::stream::iter(subscriptions_using(&subs, &ns, &name)));
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// What a subscription depends on in its connection: whether it is Ready and its division.
fn connection_readiness(c: &ExactConnection) -> u64 {
    let status = c.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|r| r.status.as_str());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ready, status.and_then(|s| s.division)).hash(&mut h);
    h.finish()
}

fn subscriptions_using(
    subs: &Store<ExactWebhookSubscription>,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<ExactWebhookSubscription>> {
    subs.state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns) && s.spec.connection_ref.name == name)
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

fn error_policy(_obj: Arc<ExactWebhookSubscription>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(error = %err, "webhook subscription reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(sub: Arc<ExactWebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Another replica's shard (and finalizer): look again in case the shard moves here.
    if !crate::shard::ownership::owns(ctx.shards.as_deref(), &*sub) {
        return Ok(Action::requeue(crate::shard::ownership::UNOWNED_RECHECK));
    }
    let ns = sub.namespace().unwrap_or_default();
    let api: Api<ExactWebhookSubscription> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, sub, |event| async {
        match event {
            FinalizerEvent::Apply(s) => apply(&s, &ctx).await,
            FinalizerEvent::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The result of one pass: Ready or why not, and what Exact holds.
struct Outcome {
    ready: Result<String, NotReady>,
    division: Option<i64>,
    callback_url: Option<String>,
    subscriptions: Vec<ActiveSubscription>,
}

impl Outcome {
    fn not_ready(n: NotReady, previous: &ExactWebhookSubscription) -> Self {
        let st = previous.status.clone().unwrap_or_default();
        Outcome {
            ready: Err(n),
            division: st.division,
            callback_url: st.callback_url,
            // What we last knew stays listed: the subscriptions still exist at Exact.
            subscriptions: st.subscriptions,
        }
    }
}

async fn apply(sub: &ExactWebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    let outcome = match plan(sub, ctx).await? {
        Ok(o) => o,
        Err(n) => Outcome::not_ready(n, sub),
    };
    let retry = outcome.ready.is_err();
    write_status(sub, ctx, outcome).await?;
    // Resync: a subscription deleted at Exact is noticed within one interval.
    let every = ctx.settings.recheck_interval;
    Ok(Action::requeue(if retry {
        every.min(Duration::from_secs(10))
    } else {
        every
    }))
}

async fn plan(
    sub: &ExactWebhookSubscription,
    ctx: &Context,
) -> Result<Result<Outcome, NotReady>, Error> {
    let ns = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let Some(public) = ctx.settings.public_url.as_deref() else {
        return Ok(Err(NotReady::new(
            reason::NO_PUBLIC_URL,
            "the operator runs without --public-url, so Exact cannot reach its webhook route",
        )));
    };
    let callback = callback_url(public, &ns, &name);
    if let Err(e) = validate(sub, &ns) {
        return Ok(Err(NotReady::new(reason::INVALID_SPEC, e)));
    }
    let linked = match link(ctx, sub).await? {
        Ok(l) => l,
        Err(n) => return Ok(Err(n)),
    };
    let token = match current_token(ctx, &linked).await? {
        Ok(t) => t,
        Err(n) => return Ok(Err(n)),
    };
    let Some(division) = division_of(sub, &linked, &token) else {
        return Ok(Err(NotReady::new(
            reason::CONNECTION_NOT_READY,
            "the connection has no division yet",
        )));
    };
    let exact = ExactApi {
        http: &linked.resolved.http,
        api_base_url: &linked.resolved.settings.api_base_url,
        token: &token.access_token,
    };
    if let Err(e) = leave_old_division(sub, ctx, &exact, division).await {
        return Ok(Err(exact_failure(&e)));
    }
    match sync(sub, ctx, &exact, division, &callback).await {
        Ok(subscriptions) => Ok(Ok(Outcome {
            ready: Ok(format!(
                "{} subscription(s) active in division {division}",
                subscriptions.len()
            )),
            division: Some(division),
            callback_url: Some(callback),
            subscriptions,
        })),
        Err(e) => Ok(Err(exact_failure(&e))),
    }
}

/// When the division changed (spec or the connection's), the subscriptions in the old one
/// would keep sending messages nobody asked for: delete them first.
async fn leave_old_division(
    sub: &ExactWebhookSubscription,
    ctx: &Context,
    exact: &ExactApi<'_>,
    division: i64,
) -> Result<(), ApiError> {
    let Some(st) = sub.status.as_ref() else {
        return Ok(());
    };
    let Some(old) = st.division.filter(|d| *d != division) else {
        return Ok(());
    };
    for s in &st.subscriptions {
        exact.delete(old, &s.id).await?;
        event(
            ctx,
            sub,
            EventType::Normal,
            "SubscriptionDeleted",
            format!(
                "deleted subscription {} for topic {} in division {old} (now {division})",
                s.id, s.topic
            ),
        )
        .await;
    }
    Ok(())
}

fn exact_failure(e: &ApiError) -> NotReady {
    match e {
        ApiError::Unauthorized => NotReady::new(
            reason::EXACT_REFUSED,
            "Exact refused the connection's access token; waiting for the connection's next refresh",
        ),
        ApiError::Status { status, .. } if *status < 500 && *status != 429 => {
            NotReady::new(reason::EXACT_REFUSED, e.to_string())
        }
        _ => NotReady::new(reason::EXACT_UNAVAILABLE, e.to_string()),
    }
}

fn validate(sub: &ExactWebhookSubscription, ns: &str) -> Result<(), String> {
    if sub.spec.topics.is_empty() || sub.spec.topics.iter().any(|t| t.trim().is_empty()) {
        return Err("spec.topics must list at least one non-empty topic".into());
    }
    sub.spec.target.resolve(ns).map(|_| ())
}

fn division_of(sub: &ExactWebhookSubscription, linked: &Linked, token: &Token) -> Option<i64> {
    sub.spec
        .division
        .or(token.division)
        .or_else(|| linked.conn.status.as_ref().and_then(|s| s.division))
}

/// Makes Exact hold exactly one subscription per wanted topic with our callback URL.
async fn sync(
    sub: &ExactWebhookSubscription,
    ctx: &Context,
    exact: &ExactApi<'_>,
    division: i64,
    callback: &str,
) -> Result<Vec<ActiveSubscription>, ApiError> {
    let ours: Vec<Remote> = exact
        .list(division)
        .await?
        .into_iter()
        .filter(|r| r.callback_url == callback)
        .collect();
    // Only subscriptions we held in this division can have "disappeared".
    let previous = sub
        .status
        .as_ref()
        .filter(|s| s.division == Some(division))
        .map(|s| s.subscriptions.clone())
        .unwrap_or_default();
    let mut active = Vec::new();
    for topic in dedup(&sub.spec.topics) {
        if let Some(r) = ours.iter().find(|r| r.topic == topic) {
            active.push(ActiveSubscription {
                topic,
                id: r.id.clone(),
            });
            continue;
        }
        let id = exact.create(division, callback, &topic).await?;
        let (reason, note) = match previous.iter().find(|p| p.topic == topic) {
            Some(p) => (
                "SubscriptionRecreated",
                format!(
                    "subscription {} for topic {topic} disappeared at Exact; re-created as {id}",
                    p.id
                ),
            ),
            None => (
                "SubscriptionCreated",
                format!("subscribed to topic {topic} in division {division} ({id})"),
            ),
        };
        tracing::info!(namespace = ?sub.namespace(), name = %sub.name_any(), %topic, %id, "{reason}");
        event(ctx, sub, EventType::Normal, reason, note).await;
        active.push(ActiveSubscription { topic, id });
    }
    // Subscriptions with our URL that are not kept: topics removed from spec, duplicates.
    for r in &ours {
        if !active.iter().any(|a| a.id == r.id) {
            exact.delete(division, &r.id).await?;
            event(
                ctx,
                sub,
                EventType::Normal,
                "SubscriptionDeleted",
                format!("deleted subscription {} for topic {}", r.id, r.topic),
            )
            .await;
        }
    }
    Ok(active)
}

fn dedup(topics: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in topics.iter().map(|t| t.trim().to_string()) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// On delete: remove the subscriptions at Exact. When that is impossible for good (the
/// connection is gone or has no token), say so and let the object go rather than keep it
/// stuck; transient Exact failures are retried.
async fn cleanup(sub: &ExactWebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    let ns = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let known = sub
        .status
        .as_ref()
        .map(|s| s.subscriptions.clone())
        .unwrap_or_default();
    let division = sub.status.as_ref().and_then(|s| s.division);
    let callback = ctx
        .settings
        .public_url
        .as_deref()
        .map(|p| callback_url(p, &ns, &name));
    let access = match link(ctx, sub).await? {
        Ok(l) => match current_token(ctx, &l).await? {
            Ok(t) => Ok((l, t)),
            Err(n) => Err(n),
        },
        Err(n) => Err(n),
    };
    let (linked, token) = match access {
        Ok(a) => a,
        Err(n) => {
            if !known.is_empty() {
                let ids: Vec<_> = known.iter().map(|k| k.id.as_str()).collect();
                let note = format!(
                    "cannot delete subscription(s) {} at Exact: {}; remove them in Exact's app settings",
                    ids.join(", "),
                    n.message
                );
                abandon(sub, ctx, &n, &note).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let Some(division) = division.or_else(|| division_of(sub, &linked, &token)) else {
        return Ok(Action::await_change());
    };
    let exact = ExactApi {
        http: &linked.resolved.http,
        api_base_url: &linked.resolved.settings.api_base_url,
        token: &token.access_token,
    };
    let mut ids: Vec<String> = known.iter().map(|k| k.id.clone()).collect();
    if let Some(cb) = &callback {
        match exact.list(division).await {
            Ok(list) => ids.extend(
                list.into_iter()
                    .filter(|r| &r.callback_url == cb)
                    .map(|r| r.id),
            ),
            Err(ApiError::Unauthorized) => {}
            Err(e) => return Err(Error::Cleanup(e)),
        }
    }
    ids.sort();
    ids.dedup();
    for id in &ids {
        match exact.delete(division, id).await {
            Ok(()) => {}
            Err(ApiError::Unauthorized) => {
                let n = exact_failure(&ApiError::Unauthorized);
                let note = format!(
                    "Exact refused the access token while deleting subscription {id}; remove the rest in Exact's app settings"
                );
                abandon(sub, ctx, &n, &note).await?;
                return Ok(Action::await_change());
            }
            Err(e) => return Err(Error::Cleanup(e)),
        }
    }
    if !ids.is_empty() {
        event(
            ctx,
            sub,
            EventType::Normal,
            "SubscriptionsDeleted",
            format!(
                "deleted {} subscription(s) at Exact: {}",
                ids.len(),
                ids.join(", ")
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

async fn abandon(
    sub: &ExactWebhookSubscription,
    ctx: &Context,
    n: &NotReady,
    note: &str,
) -> Result<(), Error> {
    tracing::warn!(namespace = ?sub.namespace(), name = %sub.name_any(), reason = n.reason, "{note}");
    event(
        ctx,
        sub,
        EventType::Warning,
        "SubscriptionsAbandoned",
        note.to_string(),
    )
    .await;
    let outcome = Outcome::not_ready(NotReady::new(n.reason, note), sub);
    write_status(sub, ctx, outcome).await
}

async fn write_status(
    sub: &ExactWebhookSubscription,
    ctx: &Context,
    o: Outcome,
) -> Result<(), Error> {
    let ns = sub.namespace().unwrap_or_default();
    let previous = sub
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = sub.meta().generation;
    let now = jiff::Timestamp::now();
    let cond = match &o.ready {
        Ok(msg) => conditions::ready(
            &previous,
            true,
            reason::SUBSCRIPTIONS_ACTIVE,
            msg,
            generation,
            now,
        ),
        Err(n) => conditions::ready(&previous, false, n.reason, &n.message, generation, now),
    };
    let unchanged = previous.iter().any(|c| {
        c.type_ == cond.type_
            && c.status == cond.status
            && c.reason == cond.reason
            && c.message == cond.message
            && c.observed_generation == cond.observed_generation
    });
    let status = sub.status.clone().unwrap_or_default();
    if unchanged
        && status.subscriptions == o.subscriptions
        && status.division == o.division
        && status.callback_url == o.callback_url
    {
        return Ok(());
    }
    // A merge patch with explicit nulls and lists, so cleared fields are cleared.
    let body = serde_json::json!({"status": {
        "conditions": [cond],
        "observedGeneration": generation,
        "callbackUrl": o.callback_url,
        "division": o.division,
        "subscriptions": o.subscriptions,
    }});
    let api: Api<ExactWebhookSubscription> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .patch_status(
            &sub.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile (the finalizer was already released by another pass).
        Err(e) if crate::secrets::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn event(
    ctx: &Context,
    sub: &ExactWebhookSubscription,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.events.publish(&ev, &sub.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}
