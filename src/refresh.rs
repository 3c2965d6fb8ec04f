//! One refresh, keeping the chain intact:
//! 1. claim the refresh with a conditional write on the state Secret (no claim, no call);
//! 2. call the token endpoint once;
//! 3. persist the rotated refresh token before anything else, retrying while the process lives.

use crate::context::Context;
use crate::schedule::{after_failure, after_too_early, grant_times, record_error, RefreshPolicy};
use crate::secrets::{is_conflict, load_state, write_state, StoredState};
use crate::state::{Claim, ConnectionState, DeadChain};
use crate::token::{ExpiresIn, Grant, TokenEndpoint, TokenGrant, TokenOutcome};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, Instant};

/// Where a connection's state lives.
pub struct StateHandle {
    /// Secrets of the connection's namespace.
    pub api: Api<Secret>,
    /// State Secret name.
    pub name: String,
    /// Owner reference to the connection.
    pub owner: OwnerReference,
    /// Connection name (for labels).
    pub connection: String,
}

impl StateHandle {
    /// Conditional write (create when `rv` is None).
    pub async fn write(
        &self,
        state: &ConnectionState,
        rv: Option<&str>,
    ) -> Result<String, kube::Error> {
        write_state(
            &self.api,
            &self.name,
            &self.owner,
            &self.connection,
            state,
            rv,
        )
        .await
    }

    /// Persists `state` no matter what, as long as the process lives: the rotated refresh token
    /// exists nowhere else. On a conflict it re-reads; it overwrites only when the stored chain
    /// is still the one we consumed (`consumed`), otherwise somebody holds a newer token and
    /// ours must not replace it.
    pub async fn persist(
        &self,
        state: &ConnectionState,
        rv: Option<String>,
        consumed: &str,
    ) -> Result<String, kube::Error> {
        self.persist_if(state, rv, |current| {
            let same_chain = current
                .state
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret() == consumed);
            same_chain.unwrap_or(current.resource_version.is_none())
        })
        .await
    }

    /// Persists a chain that was just created by a consent. With `supersede` (a requested
    /// re-authorization) it replaces whatever is stored, so a conflict only means "re-read the
    /// version and write again"; without, it replaces only a stored chain that does not work
    /// (none, or dead): a chain that started working meanwhile by another way is kept.
    pub async fn persist_new_chain(
        &self,
        state: &ConnectionState,
        rv: Option<String>,
        supersede: bool,
    ) -> Result<String, kube::Error> {
        self.persist_if(state, rv, |current| {
            supersede || !current.state.has_working_chain()
        })
        .await
    }

    /// The one retry loop behind both: write conditionally; on a conflict re-read and write
    /// again if `may_overwrite` accepts what is stored now; on other errors back off and retry
    /// while the process lives.
    async fn persist_if(
        &self,
        state: &ConnectionState,
        mut rv: Option<String>,
        may_overwrite: impl Fn(&StoredState) -> bool,
    ) -> Result<String, kube::Error> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.write(state, rv.as_deref()).await {
                Ok(new_rv) => return Ok(new_rv),
                Err(e) if is_conflict(&e) => match load_state(&self.api, &self.name).await {
                    Ok(current) if may_overwrite(&current) => {
                        rv = current.resource_version;
                        continue;
                    }
                    Ok(_) => {
                        tracing::warn!(state = %self.name, "state changed to another chain while persisting; keeping the stored one");
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(state = %self.name, error = %e, "re-reading state failed; retrying")
                    }
                },
                Err(e) => {
                    tracing::warn!(state = %self.name, error = %e, "persisting state failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// How a refresh attempt ended (state already persisted where it says so).
pub enum RefreshEnd {
    /// New tokens persisted.
    Rotated {
        state: ConnectionState,
        resource_version: String,
    },
    /// Another process holds the claim, or wrote the state meanwhile: look again soon.
    Contended,
    /// Refused as too early; next attempt scheduled in state.
    TooEarly { state: ConnectionState },
    /// A newer refresh token was written by someone else meanwhile.
    NewerTokenExists,
    /// The chain (or the client) is dead; recorded in state.
    Dead { state: ConnectionState },
    /// A retryable failure; backoff recorded in state.
    Failed {
        state: ConnectionState,
        reason: String,
    },
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Inputs of one refresh.
pub struct RefreshJob<'a> {
    /// Token endpoint of the client.
    pub endpoint: TokenEndpoint<'a>,
    /// Timing rules.
    pub policy: &'a RefreshPolicy,
    /// Fingerprint recorded with a dead chain.
    pub fingerprint: &'a str,
}

/// Claims, calls and persists. Errors are API-server errors before the call (nothing spent).
pub async fn refresh(
    ctx: &Context,
    handle: &StateHandle,
    mut state: ConnectionState,
    rv: Option<String>,
    job: &RefreshJob<'_>,
) -> Result<RefreshEnd, kube::Error> {
    let Some(refresh_token) = state.refresh_token.clone() else {
        return Ok(RefreshEnd::Contended);
    };
    let now = Timestamp::now();
    state.claim = Some(Claim {
        holder: ctx.identity.clone(),
        until: now
            .saturating_add(to_signed(ctx.settings.claim_ttl))
            .unwrap_or(now),
    });
    let claimed_rv = match handle.write(&state, rv.as_deref()).await {
        Ok(v) => v,
        Err(e) if is_conflict(&e) => return Ok(RefreshEnd::Contended),
        Err(e) => return Err(e),
    };
    let sent_at = Timestamp::now();
    let started = Instant::now();
    let outcome = job.endpoint.call(Grant::RefreshToken(&refresh_token)).await;
    let label = outcome_label(&outcome);
    ctx.metrics
        .token_call(label, started.elapsed().as_secs_f64());
    tracing::info!(connection = %handle.connection, outcome = label, "token call");
    state.claim = None;
    let consumed = refresh_token.expose_secret().to_string();
    match outcome {
        TokenOutcome::Granted(grant) => {
            apply_grant(&mut state, grant, job.policy, sent_at, Timestamp::now());
            let resource_version = handle.persist(&state, Some(claimed_rv), &consumed).await?;
            Ok(RefreshEnd::Rotated {
                state,
                resource_version,
            })
        }
        TokenOutcome::TooEarly => {
            state.times.too_early_refusals += 1;
            state.not_before = Some(after_too_early(
                job.policy,
                state.times.too_early_refusals,
                Timestamp::now(),
            ));
            handle.persist(&state, Some(claimed_rv), &consumed).await?;
            Ok(RefreshEnd::TooEarly { state })
        }
        TokenOutcome::OldRefreshTokenUsed
        | TokenOutcome::RefreshTokenExpired
        | TokenOutcome::InvalidGrant(_)
        | TokenOutcome::InvalidClient(_) => {
            // Someone may have written a newer token while we called: then ours was simply old.
            let current = load_state(&handle.api, &handle.name).await?;
            if current
                .state
                .refresh_token
                .as_ref()
                .is_some_and(|t| t.expose_secret() != consumed)
            {
                return Ok(RefreshEnd::NewerTokenExists);
            }
            let (reason, message) = dead_reason(&outcome);
            state.times.recent_errors = record_error(&state.times.recent_errors, Timestamp::now());
            state.dead = Some(DeadChain {
                reason: reason.into(),
                message,
                fingerprint: job.fingerprint.into(),
            });
            handle
                .persist(&state, current.resource_version, &consumed)
                .await?;
            Ok(RefreshEnd::Dead { state })
        }
        TokenOutcome::Blocked(retry_after) => {
            let now = Timestamp::now();
            state.times.consecutive_failures += 1;
            state.times.recent_errors = record_error(&state.times.recent_errors, now);
            let wait = retry_after.unwrap_or(Duration::from_secs(3600));
            state.not_before = Some(now.saturating_add(to_signed(wait)).unwrap_or(now));
            state.last_error = Some("Exact blocked the app for too many errors".into());
            handle.persist(&state, Some(claimed_rv), &consumed).await?;
            Ok(RefreshEnd::Failed {
                state,
                reason: "Exact blocked the app for too many errors".into(),
            })
        }
        TokenOutcome::Transient {
            reason,
            retry_after,
        } => {
            let now = Timestamp::now();
            state.times.consecutive_failures += 1;
            state.times.recent_errors = record_error(&state.times.recent_errors, now);
            let jitter = rand::thread_rng().gen_range(0.0..=1.0);
            state.not_before = Some(after_failure(
                job.policy,
                &state.times,
                retry_after,
                jitter,
                now,
            ));
            state.last_error = Some(reason.clone());
            handle.persist(&state, Some(claimed_rv), &consumed).await?;
            Ok(RefreshEnd::Failed { state, reason })
        }
    }
}

/// Folds a grant into the state: new tokens, validity measured from the send time, the
/// next refresh allowed only once Exact's window has surely opened (see `grant_times`).
pub fn apply_grant(
    state: &mut ConnectionState,
    grant: TokenGrant,
    policy: &RefreshPolicy,
    sent_at: Timestamp,
    received_at: Timestamp,
) {
    let (lifetime, warning) = match grant.expires_in {
        ExpiresIn::Given(d) => (d, None),
        ExpiresIn::Missing => (policy.access_token_lifetime, None),
        ExpiresIn::Unusable(raw) => (
            policy.access_token_lifetime,
            Some(format!(
                "token endpoint sent an unusable expires_in {raw:?}; assumed the configured lifetime {:?}",
                policy.access_token_lifetime
            )),
        ),
    };
    if let Some(rt) = grant.refresh_token {
        state.refresh_token = Some(rt);
    }
    state.access_token = Some(grant.access_token);
    let (expires, allowed) = grant_times(policy, sent_at, received_at, lifetime);
    state.times.access_token_expires_at = Some(expires);
    state.times.refresh_allowed_from = Some(allowed);
    state.times.refresh_token_issued_at = Some(sent_at);
    state.times.consecutive_failures = 0;
    state.times.too_early_refusals = 0;
    state.last_refresh_at = Some(sent_at);
    state.not_before = None;
    state.dead = None;
    state.claim = None;
    state.warning = warning;
    state.last_error = None;
}

fn dead_reason(outcome: &TokenOutcome) -> (&'static str, String) {
    use crate::conditions::reason::{INVALID_CLIENT, REAUTHORIZATION_REQUIRED};
    match outcome {
        TokenOutcome::OldRefreshTokenUsed => (
            REAUTHORIZATION_REQUIRED,
            "Exact answered \"Old refresh token used.\": the refresh-token chain is broken; a new consent is needed".into(),
        ),
        TokenOutcome::RefreshTokenExpired => (
            REAUTHORIZATION_REQUIRED,
            "the refresh token expired unused; a new consent is needed".into(),
        ),
        TokenOutcome::InvalidGrant(d) => (
            REAUTHORIZATION_REQUIRED,
            format!("Exact rejected the refresh token (invalid_grant: {d}); a new consent is needed"),
        ),
        TokenOutcome::InvalidClient(d) => (
            INVALID_CLIENT,
            format!("Exact rejected the client id or secret (invalid_client: {d}); fix the ExactOAuthClient or its Secret"),
        ),
        _ => (REAUTHORIZATION_REQUIRED, "refresh refused".into()),
    }
}

/// Metric label of an outcome.
pub fn outcome_label(o: &TokenOutcome) -> &'static str {
    match o {
        TokenOutcome::Granted(_) => "granted",
        TokenOutcome::TooEarly => "too_early",
        TokenOutcome::OldRefreshTokenUsed => "old_refresh_token_used",
        TokenOutcome::RefreshTokenExpired => "refresh_token_expired",
        TokenOutcome::InvalidGrant(_) => "invalid_grant",
        TokenOutcome::InvalidClient(_) => "invalid_client",
        TokenOutcome::Blocked(_) => "blocked",
        TokenOutcome::Transient { .. } => "transient",
    }
}

/// Imports a bootstrap refresh token into the state: a new chain, refreshed at once.
pub fn import_bootstrap(state: &mut ConnectionState, token: SecretString, digest: String) {
    state.refresh_token = Some(token);
    state.access_token = None;
    state.times = Default::default();
    state.bootstrap_digest = Some(digest);
    state.dead = None;
    state.not_before = None;
    state.warning = None;
    state.last_error = None;
}
