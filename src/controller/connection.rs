//! Reconcile of ExactConnection, as a pipeline: dereference -> validate -> load state ->
//! import bootstrap -> restore the workload Secret -> decide (pure schedule) -> refresh ->
//! publish -> status.

use super::deref::{dereference, Blocked, Resolved};
use super::status::{write_status, Outcome};
use super::Error;
use crate::conditions::reason;
use crate::context::Context;
use crate::crd::ExactConnection;
use crate::publish::{publish, workload_data, Published, Target, WorkloadToken};
use crate::refresh::{import_bootstrap, refresh, RefreshEnd, RefreshJob, StateHandle};
use crate::schedule::{next_refresh, RefreshPolicy};
use crate::secrets::{load_state, state_secret_name, RefError};
use crate::state::{digest, ConnectionState};
use crate::token::{discover_division, TokenEndpoint};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

/// Reconciles one connection.
pub async fn reconcile(conn: Arc<ExactConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let outcome = run(&conn, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let outcome = outcome?;
    let requeue = outcome.requeue.or(Some(ctx.settings.recheck_interval));
    write_status(&conn, &ctx, outcome).await?;
    Ok(Action::requeue(
        requeue
            .unwrap_or(ctx.settings.recheck_interval)
            .max(Duration::from_millis(50)),
    ))
}

pub(crate) async fn event(
    ctx: &Context,
    conn: &ExactConnection,
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
    if let Err(e) = ctx.recorder.publish(&ev, &conn.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}

fn blocked(b: Blocked) -> Outcome {
    Outcome::not_ready(b.reason, b.message)
}

async fn run(conn: &ExactConnection, ctx: &Context) -> Result<Outcome, Error> {
    let ns = conn.namespace().ok_or(Error::MissingNamespace)?;
    let name = conn.name_any();
    let owner = conn
        .controller_owner_ref(&())
        .ok_or(Error::MissingNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let handle = StateHandle {
        api: secrets.clone(),
        name: state_secret_name(&name),
        owner: owner.clone(),
        connection: name.clone(),
    };

    // Dereference + validate.
    let r = match dereference(conn, ctx).await? {
        Ok(r) => r,
        Err(b) => return Ok(blocked(b)),
    };

    // Load state and import a new bootstrap token.
    let mut stored = load_state(&secrets, &handle.name).await?;
    if let Some(bref) = &conn.spec.refresh_token_secret_ref {
        match ctx
            .caches
            .secret_key(&secrets, &ns, &bref.name, &bref.key)
            .await
        {
            Ok(token) => {
                let d = digest(token.expose_secret());
                if stored.state.bootstrap_digest.as_deref() != Some(d.as_str()) {
                    let mut st = stored.state.clone();
                    import_bootstrap(&mut st, token, d);
                    let rv = handle
                        .write(&st, stored.resource_version.as_deref())
                        .await?;
                    stored.state = st;
                    stored.resource_version = Some(rv);
                    event(
                        ctx,
                        conn,
                        EventType::Normal,
                        "BootstrapImported",
                        format!("imported a refresh token from Secret {}", bref.name),
                    )
                    .await;
                }
            }
            Err(RefError::Api { source, .. }) => return Err(source.into()),
            Err(e) if stored.state.refresh_token.is_none() => {
                return Ok(Outcome::not_ready(
                    reason::AWAITING_AUTHORIZATION,
                    format!("bootstrap refresh token: {e}"),
                ));
            }
            // Already imported; the bootstrap Secret may be gone, which is fine.
            Err(_) => {}
        }
    }
    let mut state = stored.state;
    let mut rv = stored.resource_version;
    if state.refresh_token.is_none() {
        return Ok(Outcome::not_ready(
            reason::AWAITING_AUTHORIZATION,
            "no refresh token yet: authorize the connection or set spec.refreshTokenSecretRef"
                .into(),
        )
        .with_state(&state, &r.policy));
    }

    // A dead chain stays dead until its inputs change.
    if let Some(dead) = &state.dead {
        if dead.fingerprint == r.fingerprint {
            return Ok(
                Outcome::not_ready(reason_constant(&dead.reason), dead.message.clone())
                    .with_state(&state, &r.policy),
            );
        }
        state.dead = None;
    }

    // Restore the workload Secret from state when it was edited or deleted: no token call.
    let now = Timestamp::now();
    if state.access_token_valid(now)
        && publish_from_state(ctx, conn, &r, &state).await? == Published::Conflict
    {
        return Ok(conflict(&r).with_state(&state, &r.policy));
    }

    // Decide.
    let mut due = next_refresh(&r.policy, &state.times, conn.spec.suspend, now);
    if let Some(nb) = state.not_before {
        due = due.max(nb);
    }
    if let Some(claim) = state.claimed_by_other(&ctx.identity, now) {
        due = due.max(claim.until);
    }
    if due > now {
        return Ok(steady(conn, &r.policy, &state, due, now));
    }

    // Refresh.
    let job = RefreshJob {
        endpoint: TokenEndpoint {
            http: &r.http,
            url: &r.settings.token_url,
            client_id: &r.client.spec.client_id,
            client_secret: &r.client_secret,
        },
        policy: &r.policy,
        fingerprint: &r.fingerprint,
    };
    let was_failing = state.times.consecutive_failures > 0;
    match refresh(ctx, &handle, state, rv.take(), &job).await? {
        RefreshEnd::Rotated {
            mut state,
            resource_version,
        } => {
            if conn.spec.division.is_none() && state.division.is_none() {
                discover(ctx, conn, &r, &handle, &mut state, resource_version).await;
            }
            if publish_from_state(ctx, conn, &r, &state).await? == Published::Conflict {
                return Ok(conflict(&r).with_state(&state, &r.policy));
            }
            if was_failing {
                event(
                    ctx,
                    conn,
                    EventType::Normal,
                    "Recovered",
                    "token refresh works again".into(),
                )
                .await;
            } else if conn
                .status
                .as_ref()
                .and_then(|s| s.last_refresh_time)
                .is_none()
            {
                event(
                    ctx,
                    conn,
                    EventType::Normal,
                    "Authorized",
                    "first access token published".into(),
                )
                .await;
            }
            let now = Timestamp::now();
            let due = next_refresh(&r.policy, &state.times, conn.spec.suspend, now);
            Ok(steady(conn, &r.policy, &state, due, now))
        }
        RefreshEnd::Contended | RefreshEnd::NewerTokenExists => {
            Ok(Outcome::requeue_only(Duration::from_secs(1)))
        }
        RefreshEnd::TooEarly { state } => {
            let now = Timestamp::now();
            let due = state.not_before.unwrap_or(now);
            Ok(steady(conn, &r.policy, &state, due, now))
        }
        RefreshEnd::Dead { state } => {
            let dead = state
                .dead
                .clone()
                .unwrap_or_else(|| crate::state::DeadChain {
                    reason: reason::REAUTHORIZATION_REQUIRED.into(),
                    message: String::new(),
                    fingerprint: String::new(),
                });
            event(
                ctx,
                conn,
                EventType::Warning,
                &dead.reason,
                dead.message.clone(),
            )
            .await;
            Ok(
                Outcome::not_ready(reason_constant(&dead.reason), dead.message)
                    .with_state(&state, &r.policy),
            )
        }
        RefreshEnd::Failed { state, reason: why } => {
            if !was_failing {
                event(ctx, conn, EventType::Warning, "RefreshFailing", why).await;
            }
            let now = Timestamp::now();
            let due = state.not_before.unwrap_or(now);
            Ok(steady(conn, &r.policy, &state, due, now))
        }
    }
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

fn steady(
    conn: &ExactConnection,
    policy: &RefreshPolicy,
    state: &ConnectionState,
    due: Timestamp,
    now: Timestamp,
) -> Outcome {
    let failures = state.times.consecutive_failures;
    let out = if conn.spec.suspend {
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
    };
    out.with_state(state, policy).next_at(due, now)
}

pub(crate) async fn publish_from_state(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    state: &ConnectionState,
) -> Result<Published, Error> {
    let (Some(token), Some(expires_at)) =
        (&state.access_token, state.times.access_token_expires_at)
    else {
        return Ok(Published::Unchanged);
    };
    let division = conn.spec.division.or(state.division);
    let data = workload_data(&WorkloadToken {
        access_token: token,
        expires_at,
        division,
        api_base_url: &r.settings.api_base_url,
    });
    let owner = conn
        .controller_owner_ref(&())
        .ok_or(Error::MissingNamespace)?;
    let name = conn.name_any();
    let target = Target {
        name: &r.target_name,
        connection: &name,
        owner: &owner,
        labels: &conn.spec.target.labels,
        annotations: &conn.spec.target.annotations,
    };
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let published = publish(&api, &target, data).await?;
    Ok(crate::nudge::after_publish(ctx, conn, &r.target_name, published).await)
}

pub(crate) async fn discover(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    handle: &StateHandle,
    state: &mut ConnectionState,
    rv: String,
) {
    let Some(token) = state.access_token.clone() else {
        return;
    };
    match discover_division(&r.http, &r.settings.api_base_url, &token).await {
        Ok(d) => {
            state.division = Some(d);
            if let Err(e) = handle.write(state, Some(&rv)).await {
                tracing::warn!(error = %e, "storing the discovered division failed; it is rediscovered later");
            }
        }
        Err(e) => {
            event(ctx, conn, EventType::Warning, "DivisionDiscoveryFailed", e).await;
        }
    }
}
