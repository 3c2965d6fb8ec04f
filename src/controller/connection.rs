//! Reconcile of ExactConnection, read as its stages:
//! resolve (dereference + validate) -> load (state, bootstrap import) -> decide (the chain
//! core, pure) -> act (restore the workload Secret, exchange) -> report (publish, Events)
//! -> status (projected by `status::write_status`).

use super::status::{write_status, Outcome};
use super::Error;
use crate::budget::{self, UserBudget};
use crate::cache::FreshSecret;
use crate::chain::{self, ChainGrant, ChainSpec, Decision, End, ExchangeEnd, ExchangeJob, Stored};
use crate::conditions::reason;
use crate::context::Context;
use crate::crd::ExactConnection;
use crate::events::event;
use crate::identity::{ask_me, identify, identity_from_status};
use crate::publish::{publish_from_state, Published};
use crate::resolve::{dereference, Blocked, Resolved};
use crate::secrets::{load_state, RefError};
use crate::state::{digest, ConnectionState};
use crate::state_store::StateHandle;
use crate::token::TokenEndpoint;
use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use rand::Rng;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

/// How long after a start reconciles wait for the managed-Secret watch's first list before
/// they read from the API server instead. (At 10,000 connections among 30,000 other Secrets
/// the list took longer and each reconcile that gave up cost two GETs, but 45 s here made
/// tests/connections.rs's TargetSecretConflict case miss its 30 s under load: the watch can
/// be slower to list than the fallback reads; left at 10 s until that is understood.)
const MANAGED_LIST_WAIT: Duration = Duration::from_secs(10);

/// Turns for reconciles that do work, first come first served, and for what they tell
/// afterwards.
///
/// kube-runtime's own concurrency limit keeps the reconciles that wait for a slot in a hash
/// set and starts them in no particular order: in a burst of 1,000 new connections an early
/// one could wait until the end (p99 apply -> Secret was the burst's whole length). tokio's
/// semaphore hands out permits in the order they were asked for, and a reconcile is boxed
/// only once its turn comes, so one that waits costs a few hundred bytes.
///
/// The status write (the API server's most expensive request of a reconcile: server-side
/// apply of a custom resource) and a new connection's first Event take a second kind of
/// turn, `TELLING_AT_ONCE` at a time, after the work turn is given back: in a burst the
/// writes between an apply and the workload's token (claim, chain, workload Secret) do not
/// queue behind other connections' statuses. The reconcile still ends with its status
/// written, so its errors, the shutdown and the next reconcile see it as before.
pub struct Turns {
    work: tokio::sync::Semaphore,
    telling: tokio::sync::Semaphore,
}

/// Status writes (with their Events) at once. Steady refreshing needs few (10,000
/// connections make ~17 status writes a second, a few ms each).
const TELLING_AT_ONCE: usize = 2;

impl Turns {
    /// `at_once` reconciles at a time (0: no limit).
    pub fn new(at_once: u16) -> Self {
        let permits = match at_once {
            0 => tokio::sync::Semaphore::MAX_PERMITS,
            n => usize::from(n),
        };
        Turns {
            work: tokio::sync::Semaphore::new(permits),
            telling: tokio::sync::Semaphore::new(TELLING_AT_ONCE),
        }
    }
}

/// Reconciles one connection, in its turns.
pub async fn reconcile(
    conn: Arc<ExactConnection>,
    ctx: Arc<Context>,
    turns: Arc<Turns>,
) -> Result<Action, Error> {
    // Another replica's shard: no API call. Acquiring the shard reconciles it at once.
    if !crate::shard::ownership::owns(ctx.shards.as_deref(), &*conn) {
        return Ok(Action::await_change());
    }
    let Ok(turn) = turns.work.acquire().await else {
        return Ok(Action::await_change());
    };
    // The process began to stop while this one waited (a cold start or burst can queue
    // thousands): the next process reconciles it; the shutdown waits only for work begun.
    if ctx.caches.is_stopping() {
        return Ok(Action::await_change());
    }
    let outcome = Box::pin(work(&conn, &ctx)).await?;
    drop(turn);
    // What waits for a telling turn is the outcome (its futures are boxed once it starts).
    let _telling = match outcome.tells() {
        true => turns.telling.acquire().await.ok(),
        false => None,
    };
    Box::pin(tell(&conn, &ctx, outcome)).await
}

async fn work(conn: &ExactConnection, ctx: &Context) -> Result<Outcome, Error> {
    ctx.metrics.reconciles.inc();
    ctx.events.forget_old();
    let started = std::time::Instant::now();
    let outcome = run(conn, ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    outcome
}

/// Publishes the outcome's Event and status, and plans the next reconcile.
async fn tell(
    conn: &ExactConnection,
    ctx: &Context,
    mut outcome: Outcome,
) -> Result<Action, Error> {
    if let Some((type_, reason, note)) = outcome.event.take() {
        event(ctx, conn, type_, reason, note).await;
    }
    let (requeue, requeue_at) = (outcome.requeue, outcome.requeue_at);
    write_status(conn, ctx, outcome).await?;
    // A planned call is due at its moment, however long this reconcile's writes took.
    let requeue = match requeue_at {
        Some(at) => {
            Some(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO))
        }
        None => requeue,
    };
    Ok(Action::requeue(
        requeue
            .unwrap_or(ctx.settings.recheck_interval)
            .max(Duration::from_millis(50)),
    ))
}

async fn run(conn: &ExactConnection, ctx: &Context) -> Result<Outcome, Error> {
    // Right after a start: the state and workload Secrets come from the managed watch once
    // it has listed (one LIST for all instead of two GETs per connection).
    ctx.caches.wait_for_managed(MANAGED_LIST_WAIT).await;
    let r = match dereference(conn, ctx).await? {
        Ok(r) => r,
        Err(Blocked { reason, message }) => return Ok(Outcome::not_ready(reason, message)),
    };
    let handle = state_handle(conn, ctx)?;
    let (mut stored, unsaved_import) = match load(conn, ctx, &r, &handle).await? {
        Ok(loaded) => loaded,
        Err(blocked) => return Ok(blocked),
    };
    let spec = chain_spec(conn, ctx, &r);
    let now = Timestamp::now();
    let decision = chain::decide(&stored.state, &r.policy, &spec, now);
    // A new connection's import is stored by its claim write; otherwise store it now.
    if unsaved_import && !matches!(decision, Decision::Call { .. }) {
        let rv = handle.write(&stored.state, None).await?;
        stored.version = Some(rv);
    }
    crate::divisions::ensure(ctx, conn, &r, &stored.state).await;
    // Restore the workload Secret from state when it was edited or deleted: no token call.
    let restore = matches!(
        decision,
        Decision::Wait { restore: true, .. } | Decision::Call { restore: true }
    );
    if restore && publish_from_state(ctx, conn, &r, &stored.state).await? == Published::Conflict {
        return Ok(conflict(&r).with_state(&stored.state, &r.policy));
    }
    match decision {
        Decision::AwaitConsent => Ok(Outcome::not_ready(
            reason::AWAITING_AUTHORIZATION,
            "no refresh token yet: authorize the connection or set spec.refreshTokenSecretRef"
                .into(),
        )
        .with_state(&stored.state, &r.policy)),
        Decision::Dead(dead) => Ok(
            Outcome::not_ready(reason_constant(&dead.reason), dead.message)
                .with_state(&stored.state, &r.policy),
        ),
        Decision::Wait { .. } => Ok(steady(conn, &r, &spec, &stored.state, now)),
        Decision::Call { .. } => match budget_hold(ctx, conn, &r, &stored.state, now) {
            Some((until, budget)) => Ok(held(conn, &r, &spec, &stored.state, now, until, &budget)),
            None => refresh_now(conn, ctx, &r, &handle, stored).await,
        },
    }
}

fn state_handle(conn: &ExactConnection, ctx: &Context) -> Result<StateHandle, Error> {
    StateHandle::for_connection(ctx, conn).ok_or(Error::MissingNamespace)
}

fn chain_spec<'a>(conn: &ExactConnection, ctx: &'a Context, r: &'a Resolved) -> ChainSpec<'a> {
    ChainSpec {
        suspend: conn.spec.suspend,
        fingerprint: &r.fingerprint,
        holder: &ctx.identity,
    }
}

/// Loads the state (from the watch) and imports a bootstrap refresh token whose value is
/// new. A dead chain whose inputs changed is marked alive again (the next write stores
/// that). An import into a state Secret that does not exist yet is not written here (true):
/// the claim creates the Secret with it. A bad `spec.target.template` stops here, before any
/// token call or write: the workload Secret keeps its last good contents until it is fixed.
async fn load(
    conn: &ExactConnection,
    ctx: &Context,
    r: &Resolved,
    handle: &StateHandle,
) -> Result<Result<(Stored, bool), Outcome>, Error> {
    let mut stored = handle.load_cached(&ctx.caches).await?;
    // Only a chain whose user is not stored yet looks at the status (not every reconcile).
    if stored.state.exact_user_id.is_none() {
        if let Some(status) = ctx.caches.freshest_status(conn) {
            identity_from_status(&mut stored.state, &status, conn.spec.division);
        }
    }
    let recheck = if bootstrap_read_afresh(conn, &stored) {
        Duration::ZERO
    } else {
        ctx.settings.bootstrap_recheck
    };
    if let Err(bad) = template_check(conn, ctx).await {
        return Ok(Err(bad.with_state(&stored.state, &r.policy)));
    }
    // A chain already imported from this bootstrap Secret: a new process reads it at its
    // turn within the recheck time instead of all at once when it starts.
    let ns = conn.namespace().unwrap_or_default();
    let bootstrap = conn.spec.refresh_token_secret_ref.as_ref().filter(|bref| {
        let imported = stored.state.bootstrap_digest.is_some();
        let uid = conn.uid().unwrap_or_default();
        !(imported
            && ctx
                .caches
                .first_read_deferred(&ns, &bref.name, &uid, recheck))
    });
    if let Some(bref) = bootstrap {
        let known = stored.state.bootstrap_digest.as_deref();
        let read = ctx
            .caches
            .secret_unless_known(&handle.api, &ns, &bref.name, &bref.key, recheck, known)
            .await;
        match read.and_then(|fresh| fresh.map(|f| f.key(&bref.key).map(|t| (t, f))).transpose()) {
            // The value this chain was imported from, as read less than `recheck` ago.
            Ok(None) => {}
            Ok(Some((token, fresh))) => {
                let d = digest(token.expose_secret());
                if known != Some(d.as_str()) {
                    let unsaved;
                    (stored, unsaved) =
                        import(conn, ctx, r, handle, stored, &fresh, token, d).await?;
                    if unsaved {
                        revive_if_inputs_changed(&mut stored, r);
                        return Ok(Ok((stored, true)));
                    }
                }
            }
            Err(RefError::Api { source, .. }) => return Err(source.into()),
            Err(e) if stored.state.refresh_token.is_none() => {
                return Ok(Err(Outcome::not_ready(
                    reason::AWAITING_AUTHORIZATION,
                    format!("bootstrap refresh token: {e}"),
                )));
            }
            // Already imported; the bootstrap Secret may be gone, which is fine.
            Err(_) => {}
        }
    }
    revive_if_inputs_changed(&mut stored, r);
    Ok(Ok((stored, false)))
}

/// Bootstrap Secrets are not watched (they carry no label of ours), so their value is
/// reused for `--bootstrap-recheck-seconds`; it is read afresh when that reuse could hide a
/// new value someone is waiting for: a spec not yet reconciled (e.g. a new bootstrap ref), a
/// `kubectl exact refresh` not yet handled, or a chain that is dead or has no token yet (a
/// new bootstrap value is then the way out, and such connections are few).
fn bootstrap_read_afresh(conn: &ExactConnection, stored: &Stored) -> bool {
    let status = conn.status.as_ref();
    let spec_changed = status.and_then(|s| s.observed_generation) != conn.metadata.generation;
    let requested = conn
        .annotations()
        .get(crate::crd::REFRESH_REQUEST_ANNOTATION)
        .is_some_and(|r| status.and_then(|s| s.handled_refresh_request.as_ref()) != Some(r));
    let stuck = stored.state.dead.is_some() || stored.state.refresh_token.is_none();
    spec_changed || requested || stuck
}

fn revive_if_inputs_changed(stored: &mut Stored, r: &Resolved) {
    if stored
        .state
        .dead
        .as_ref()
        .is_some_and(|d| d.fingerprint != r.fingerprint)
    {
        stored.state.dead = None;
    }
}

/// Imports a new bootstrap refresh token, with the access token and expiry that may sit
/// next to it in the same Secret (`access_token`, `expires_at`): a usable one is published
/// at once by the restore that follows, an unusable one is ignored with an Event. A new
/// connection's plain import is not written (true): its claim write stores it, and its one
/// Event is the first published token's.
#[allow(clippy::too_many_arguments)]
async fn import(
    conn: &ExactConnection,
    ctx: &Context,
    r: &Resolved,
    handle: &StateHandle,
    stored: Stored,
    bootstrap: &FreshSecret,
    token: secrecy::SecretString,
    token_digest: String,
) -> Result<(Stored, bool), Error> {
    let Some(bref) = &conn.spec.refresh_token_secret_ref else {
        return Ok((stored, false));
    };
    // The keys beside the refresh token, from the same read (absent or unusable: none).
    let access = chain::BootstrapAccess {
        access_token: bootstrap.key("access_token").ok(),
        expires_at: bootstrap.key("expires_at").ok(),
    };
    let with_access = access.access_token.is_some();
    let mut st = stored.state.clone();
    let ignored = chain::import_bootstrap(
        &mut st,
        token,
        token_digest,
        access,
        &r.policy,
        Timestamp::now(),
    );
    if stored.version.is_none() && !with_access {
        let stored = Stored {
            state: st,
            version: None,
        };
        return Ok((stored, true));
    }
    let rv = handle.write(&st, stored.version.as_deref()).await?;
    import_events(ctx, conn, &bref.name, ignored.as_ref(), with_access).await;
    if with_access && ignored.is_none() && conn.spec.division.is_none() {
        // Published at once, so the division is needed now, not at the first refresh. Me
        // is a REST call, not a token call; it stores its answer, hence the re-read.
        identify(ctx, conn, r, handle, &mut st, rv, false).await;
        let reloaded = load_state(&handle.api, &handle.name).await?;
        let stored = Stored {
            state: reloaded.state,
            version: reloaded.resource_version,
        };
        return Ok((stored, false));
    }
    let stored = Stored {
        state: st,
        version: Some(rv),
    };
    Ok((stored, false))
}

/// Tells what an import took from the bootstrap Secret (never a value).
async fn import_events(
    ctx: &Context,
    conn: &ExactConnection,
    secret: &str,
    ignored: Option<&chain::AccessIgnored>,
    with_access: bool,
) {
    let note = if with_access && ignored.is_none() {
        format!("imported a refresh token and a current access token from Secret {secret}")
    } else {
        format!("imported a refresh token from Secret {secret}")
    };
    event(ctx, conn, EventType::Normal, "BootstrapImported", note).await;
    if let Some(why) = ignored {
        let note = format!("{why}; it is ignored and the refresh token is used at once instead");
        let reason = "BootstrapAccessTokenIgnored";
        event(ctx, conn, EventType::Warning, reason, note).await;
    }
}

/// Checks `spec.target.template`; a bad one is a Ready=False InvalidTemplate outcome and an
/// Event (once per distinct message, not on every reconcile).
async fn template_check(conn: &ExactConnection, ctx: &Context) -> Result<(), Outcome> {
    let Err(e) =
        crate::template::parse_all(&conn.spec.target.template, &crate::publish::OPERATOR_KEYS)
    else {
        return Ok(());
    };
    let message = format!("spec.target.template: {e}; the workload Secret is left as it was");
    let reported = conn
        .status
        .as_ref()
        .and_then(|s| crate::conditions::find_ready(&s.conditions))
        .is_some_and(|c| c.reason == crate::template::INVALID_TEMPLATE && c.message == message);
    if !reported {
        let (reason, note) = (crate::template::INVALID_TEMPLATE, message.clone());
        event(ctx, conn, EventType::Warning, reason, note).await;
    }
    Err(Outcome::not_ready(
        crate::template::INVALID_TEMPLATE,
        message,
    ))
}

/// One exchange of the stored refresh token, then what its end means for the connection.
async fn refresh_now(
    conn: &ExactConnection,
    ctx: &Context,
    r: &Resolved,
    handle: &StateHandle,
    stored: Stored,
) -> Result<Outcome, Error> {
    let was_failing = stored.state.times.consecutive_failures > 0;
    let endpoint = TokenEndpoint {
        http: &r.http,
        url: &r.settings.token_url,
        client_id: &r.client.spec.client_id,
        client_secret: &r.client_secret,
    };
    let job = ExchangeJob {
        holder: &ctx.identity,
        claim_ttl: ctx.settings.claim_ttl,
        policy: &r.policy,
        fingerprint: &r.fingerprint,
        jitter: rand::thread_rng().gen_range(0.0..=1.0),
    };
    match chain::exchange(handle, &endpoint, stored, ChainGrant::Refresh, &job).await? {
        ExchangeEnd::Done {
            end,
            state,
            label,
            call_seconds,
            ..
        } => {
            ctx.metrics.token_call(label, call_seconds);
            tracing::info!(connection = %handle.connection, outcome = label, "token call");
            report(conn, ctx, r, end, state, was_failing).await
        }
        ExchangeEnd::NewerChainStored { label } | ExchangeEnd::ConsentLost { label } => {
            ctx.metrics.token_call(label, 0.0);
            tracing::info!(connection = %handle.connection, outcome = label, "token call; a newer chain was stored meanwhile");
            Ok(Outcome::requeue_only(Duration::from_secs(1)))
        }
        ExchangeEnd::Contended => Ok(Outcome::requeue_only(Duration::from_secs(1))),
    }
}

/// Publishes and tells what a persisted exchange ended in.
async fn report(
    conn: &ExactConnection,
    ctx: &Context,
    r: &Resolved,
    end: End,
    mut state: ConnectionState,
    was_failing: bool,
) -> Result<Outcome, Error> {
    let now = Timestamp::now();
    let spec = chain_spec(conn, ctx, r);
    match end {
        End::Rotated => {
            // Me is asked only when the division or the user is unknown (an explicit
            // division costs no call once the user is known); a consent always asks it.
            // Its answer goes out with this reconcile's status and into the state Secret
            // with the next claim (no write of its own).
            if (conn.spec.division.is_none() && state.division.is_none())
                || state.exact_user_id.is_none()
            {
                ask_me(ctx, conn, r, &mut state, false).await;
            }
            crate::divisions::ensure(ctx, conn, r, &state).await;
            if publish_from_state(ctx, conn, r, &state).await? == Published::Conflict {
                return Ok(conflict(r).with_state(&state, &r.policy));
            }
            let first = conn
                .status
                .as_ref()
                .and_then(|s| s.last_refresh_time)
                .is_none();
            let told = if was_failing {
                Some(("Recovered", "token refresh works again".to_string()))
            } else if first {
                // The one Event of a new connection (its bootstrap import has none).
                let note = match &conn.spec.refresh_token_secret_ref {
                    Some(b) => format!(
                        "first access token published (refresh token imported from Secret {})",
                        b.name
                    ),
                    None => "first access token published".to_string(),
                };
                Some(("Authorized", note))
            } else {
                None
            };
            let mut out = steady(conn, r, &spec, &state, now);
            // Told with the status, in a telling turn (the token is out already).
            out.event = told.map(|(reason, note)| (EventType::Normal, reason, note));
            return Ok(out);
        }
        End::Dead => {
            let (why, message) = state
                .dead
                .as_ref()
                .map(|d| (d.reason.clone(), d.message.clone()))
                .unwrap_or_else(|| (reason::REAUTHORIZATION_REQUIRED.into(), String::new()));
            let note = replaced_by_note(ctx, conn, &state)
                .filter(|_| why == reason::REAUTHORIZATION_REQUIRED);
            let told = note.map_or(message.clone(), |n| format!("{message}; {n}"));
            event(ctx, conn, EventType::Warning, &why, told).await;
            return Ok(
                Outcome::not_ready(reason_constant(&why), message).with_state(&state, &r.policy)
            );
        }
        End::Failed { reason: why } if !was_failing => {
            event(ctx, conn, EventType::Warning, "RefreshFailing", why).await;
        }
        End::Failed { .. } | End::TooEarly | End::CodeRefused { .. } => {}
    }
    Ok(steady(conn, r, &spec, &state, now))
}

/// When the chain died and a live connection of the same Exact user exists: that its newer
/// consent replaced this grant.
fn replaced_by_note(
    ctx: &Context,
    conn: &ExactConnection,
    state: &ConnectionState,
) -> Option<String> {
    let user = state.exact_user_id.as_deref()?;
    let peers = crate::identity::peers_in_cache(ctx, conn, user);
    let label = crate::identity::user_label(user, state.exact_user_name.as_deref());
    crate::identity::replaced_note(&label, &peers)
}

/// The Exact user's daily token-call budget as this connection sees it: its own calls
/// (state) and those of the other connections of the same user on the same client (their
/// status, from the watch cache).
fn user_budget(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    state: &ConnectionState,
    now: Timestamp,
) -> UserBudget {
    let cap = r
        .client
        .spec
        .token_calls_per_day
        .unwrap_or(budget::DEFAULT_CALLS_PER_DAY);
    let others: Vec<u32> = state
        .exact_user_id
        .as_deref()
        .map(|u| crate::identity::peers_in_cache(ctx, conn, u))
        .unwrap_or_default()
        .iter()
        .map(|p| p.token_calls24h)
        .collect();
    let own = budget::counts(&state.token_calls, now);
    budget::user_budget(cap, own, &others, token_lifetime(r, state))
}

/// The lifetime of the last granted access token (what Exact actually gives), else the
/// configured one.
fn token_lifetime(r: &Resolved, state: &ConnectionState) -> Duration {
    match (state.last_refresh_at, state.times.access_token_expires_at) {
        (Some(sent), Some(expires)) if expires > sent => {
            Duration::try_from(expires.duration_since(sent))
                .unwrap_or(r.policy.access_token_lifetime)
        }
        _ => r.policy.access_token_lifetime,
    }
}

/// A due retry that would eat into the calls kept for regular refreshes waits for the
/// regular cadence: until when, and the budget that says so.
fn budget_hold(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    state: &ConnectionState,
    now: Timestamp,
) -> Option<(Timestamp, UserBudget)> {
    if state.times.consecutive_failures == 0 {
        return None;
    }
    let b = user_budget(ctx, conn, r, state, now);
    if b.retry_fits() {
        return None;
    }
    let last = state
        .times
        .recent_errors
        .iter()
        .max()
        .copied()
        .unwrap_or(now);
    let until = budget::held_until(last, token_lifetime(r, state), now);
    (until > now).then_some((until, b))
}

/// The status of a connection whose retry is held back by the daily budget.
fn held(
    conn: &ExactConnection,
    r: &Resolved,
    spec: &ChainSpec<'_>,
    state: &ConnectionState,
    now: Timestamp,
    until: Timestamp,
    b: &UserBudget,
) -> Outcome {
    let mut out = steady(conn, r, spec, state, now).next_at(until, now);
    if let Some((_, _, message)) = out.ready.as_mut() {
        message.push_str(&format!(
            "; retries held back until {until} (the regular cadence): {}",
            b.describe()
        ));
    }
    out
}

/// Maps a stored reason string to the static reason constant.
fn reason_constant(stored: &str) -> &'static str {
    if stored == reason::INVALID_CLIENT {
        reason::INVALID_CLIENT
    } else {
        reason::REAUTHORIZATION_REQUIRED
    }
}

fn conflict(r: &Resolved) -> Outcome {
    Outcome::not_ready(
        reason::TARGET_SECRET_CONFLICT,
        format!(
            "Secret {} exists and is not owned by this connection; it is left untouched",
            r.target_name
        ),
    )
}

/// The status of a chain that works (or is retrying), planned at the chain core's next due
/// time.
fn steady(
    conn: &ExactConnection,
    r: &Resolved,
    spec: &ChainSpec<'_>,
    state: &ConnectionState,
    now: Timestamp,
) -> Outcome {
    let (due, _) = chain::next_due(state, &r.policy, spec, now);
    ready_outcome(conn, state, now)
        .with_state(state, &r.policy)
        .next_at(due, now)
}

fn ready_outcome(conn: &ExactConnection, state: &ConnectionState, now: Timestamp) -> Outcome {
    let failures = state.times.consecutive_failures;
    if conn.spec.suspend {
        Outcome::not_ready(
            reason::SUSPENDED,
            "suspended: only keep-alive refreshes of the refresh token".into(),
        )
    } else if let (true, Some(why)) = (failures > 0, &state.last_error) {
        let msg = format!("token refresh failed {failures} time(s) in a row: {why}");
        if state.access_token_valid(now) {
            Outcome::ready(
                reason::TOKEN_PUBLISHED,
                format!("{msg}; the published token is still valid"),
            )
        } else {
            Outcome::not_ready(reason::REFRESH_FAILING, msg)
        }
    } else if state.access_token_valid(now) {
        let msg = state
            .warning
            .clone()
            .unwrap_or_else(|| "access token published".into());
        Outcome::ready(reason::TOKEN_PUBLISHED, msg)
    } else {
        Outcome::not_ready(reason::PENDING, "waiting for the next token call".into())
    }
}
