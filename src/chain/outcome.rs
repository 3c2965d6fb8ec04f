//! The state after a token answer, and the other pure transitions of a chain (a grant
//! folded in, a bootstrap token imported). No clock, no randomness: both are passed in.

use crate::schedule::{after_failure, after_too_early, grant_times, record_error, RefreshPolicy};
use crate::state::{ConnectionState, DeadChain};
use crate::token::{ExpiresIn, TokenGrant, TokenOutcome};
use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;
use std::time::Duration;

/// How a token answer ended for the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// New tokens (the state holds them).
    Rotated,
    /// Refused as too early; nothing consumed, next attempt in `not_before`.
    TooEarly,
    /// The chain (or the client) is dead; recorded in `dead`.
    Dead,
    /// A retryable failure; backoff recorded in `not_before`.
    Failed {
        /// Why (no secrets).
        reason: String,
    },
    /// An authorization code was not turned into a chain; the stored chain is untouched.
    CodeRefused {
        /// Why (no secrets).
        what: String,
    },
}

/// The facts of one token call besides its answer.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeInputs<'a> {
    /// Timing rules.
    pub policy: &'a RefreshPolicy,
    /// Fingerprint recorded with a dead chain.
    pub fingerprint: &'a str,
    /// When the request was sent (validity is counted from here).
    pub sent_at: Timestamp,
    /// When the answer arrived.
    pub received_at: Timestamp,
    /// Uniform in [0, 1]: spreads retries.
    pub jitter: f64,
    /// The call exchanged an authorization code (its failures never touch the stored chain).
    pub code_grant: bool,
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// The state after `outcome`. The claim is always released.
pub fn on_outcome(
    mut state: ConnectionState,
    outcome: TokenOutcome,
    inp: &OutcomeInputs<'_>,
) -> (ConnectionState, End) {
    state.claim = None;
    let now = inp.received_at;
    // Every call counts toward Exact's daily cap, whatever its answer.
    let retry = state.times.consecutive_failures > 0 && !inp.code_grant;
    state.token_calls = crate::budget::record(&state.token_calls, inp.sent_at, retry);
    if inp.code_grant {
        let what = match outcome {
            TokenOutcome::Granted(grant) if grant.refresh_token.is_some() => {
                apply_grant(&mut state, grant, inp.policy, inp.sent_at, now);
                return (state, End::Rotated);
            }
            TokenOutcome::Granted(_) => "Exact granted no refresh token".to_string(),
            TokenOutcome::InvalidGrant(d) => {
                format!("Exact refused the authorization code ({d}); start again")
            }
            TokenOutcome::InvalidClient(d) => format!("Exact refused the client credentials ({d})"),
            TokenOutcome::Transient { reason, .. } => format!("{reason}; start again"),
            _ => "Exact refused the authorization code; start again".to_string(),
        };
        return (state, End::CodeRefused { what });
    }
    match outcome {
        TokenOutcome::Granted(grant) => {
            apply_grant(&mut state, grant, inp.policy, inp.sent_at, now);
            (state, End::Rotated)
        }
        TokenOutcome::TooEarly => {
            state.times.too_early_refusals += 1;
            state.not_before = Some(after_too_early(
                inp.policy,
                state.times.too_early_refusals,
                now,
            ));
            (state, End::TooEarly)
        }
        TokenOutcome::OldRefreshTokenUsed
        | TokenOutcome::RefreshTokenExpired
        | TokenOutcome::InvalidGrant(_)
        | TokenOutcome::InvalidClient(_) => {
            let (reason, mut message) = dead_reason(&outcome);
            if matches!(outcome, TokenOutcome::OldRefreshTokenUsed) {
                if let Some(why) = lost_in_flight(&state) {
                    message = why;
                }
            }
            state.times.recent_errors = record_error(&state.times.recent_errors, now);
            state.dead = Some(DeadChain {
                reason: reason.into(),
                message,
                fingerprint: inp.fingerprint.into(),
            });
            (state, End::Dead)
        }
        TokenOutcome::Blocked(retry_after) => {
            let reason = "Exact blocked the app for too many errors".to_string();
            state.times.consecutive_failures += 1;
            state.times.recent_errors = record_error(&state.times.recent_errors, now);
            let wait = retry_after.unwrap_or(Duration::from_secs(3600));
            state.not_before = Some(now.saturating_add(to_signed(wait)).unwrap_or(now));
            state.last_error = Some(reason.clone());
            (state, End::Failed { reason })
        }
        TokenOutcome::Transient {
            reason,
            retry_after,
        } => {
            state.times.consecutive_failures += 1;
            state.times.recent_errors = record_error(&state.times.recent_errors, now);
            state.not_before = Some(after_failure(
                inp.policy,
                &state.times,
                retry_after,
                inp.jitter,
                now,
            ));
            state.last_error = Some(reason.clone());
            (state, End::Failed { reason })
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
    // A new chain: an interruption of the old one explains nothing about it.
    state.interrupted = None;
}

/// The account of an "Old refresh token used." answer when the journal replay found that a
/// previous process died while its call spending this very chain was in flight: Exact
/// rotated the chain and the answer died with that process (a lost response), rather than
/// another party spending the token.
fn lost_in_flight(state: &ConnectionState) -> Option<String> {
    use secrecy::ExposeSecret;
    let interrupted = state.interrupted.as_ref()?;
    let spent = state.refresh_token.as_ref()?;
    (crate::state::digest(spent.expose_secret()) == interrupted.chain).then(|| {
        format!(
            "Exact answered \"Old refresh token used.\": the chain was lost to a process death \
             during the token call (operator process {} sent the refresh at {} and died \
             before its answer; Exact rotated the chain, the answer was never received: a lost \
             response, not another party); a new consent is needed",
            interrupted.holder, interrupted.at
        )
    })
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

/// What a bootstrap Secret may carry besides the refresh token: the access token a consent
/// just returned and its expiry (sibling keys `access_token` and `expires_at`), as read.
#[derive(Debug, Default)]
pub struct BootstrapAccess {
    /// The access token, when the key is present.
    pub access_token: Option<SecretString>,
    /// Its expiry as written: RFC 3339 or Unix seconds.
    pub expires_at: Option<SecretString>,
}

/// Why a bootstrap access token was not used (the refresh token is imported regardless and
/// refreshed at once, as without one). Messages never quote the values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessIgnored {
    /// Only one of the two keys is there.
    #[error("the bootstrap Secret has only one of access_token and expires_at; both are needed")]
    Incomplete,
    /// The expiry is not a timestamp.
    #[error(
        "expires_at of the bootstrap Secret is neither an RFC 3339 timestamp nor Unix seconds"
    )]
    Malformed,
    /// The access token is empty or equals the refresh token (a mis-pointed key).
    #[error("access_token of the bootstrap Secret is empty or the same as the refresh token")]
    NotAnAccessToken,
    /// Expired, or so close to it that it is refreshed at once anyway.
    #[error("the bootstrap access token expired at {0} (or is about to)")]
    Expired(Timestamp),
    /// Later than a token of the client's lifetime could live: a wrong value.
    #[error("the bootstrap access token's expiry {0} lies further ahead than the client's access-token lifetime allows")]
    TooLate(Timestamp),
}

/// Imports a bootstrap refresh token into the state: a new chain. Without a usable access
/// token it is refreshed at once. With one (`access`), that token is published at once and
/// the first refresh is planned from its expiry, as if it had come from our own grant.
/// Returns why a given access token was not used, if it was not.
pub fn import_bootstrap(
    state: &mut ConnectionState,
    token: SecretString,
    digest: String,
    access: BootstrapAccess,
    policy: &RefreshPolicy,
    now: Timestamp,
) -> Option<AccessIgnored> {
    let accepted = match (access.access_token, access.expires_at) {
        (None, None) => Ok(None),
        (Some(at), Some(exp)) => {
            bootstrap_expiry(&at, &exp, &token, policy, now).map(|e| Some((at, e)))
        }
        _ => Err(AccessIgnored::Incomplete),
    };
    state.refresh_token = Some(token);
    state.access_token = None;
    state.times = Default::default();
    state.bootstrap_digest = Some(digest);
    state.dead = None;
    state.not_before = None;
    state.warning = None;
    state.last_error = None;
    match accepted {
        Ok(Some((at, expires))) => {
            state.access_token = Some(at);
            state.times.access_token_expires_at = Some(expires);
            // Exact opens the window `refresh_window` before the expiry it set; ours is the
            // consent's, never later than Exact's, so this never asks too early by design.
            let allowed = expires
                .saturating_sub(to_signed(policy.refresh_window))
                .unwrap_or(expires);
            state.times.refresh_allowed_from = Some(allowed);
            // The refresh token came with the access token: issued about one lifetime before
            // its expiry (never later than now), which dates its own unused expiry safely.
            let issued = expires
                .saturating_sub(to_signed(policy.access_token_lifetime))
                .unwrap_or(expires)
                .min(now);
            state.times.refresh_token_issued_at = Some(issued);
            None
        }
        Ok(None) => None,
        Err(why) => Some(why),
    }
}

/// The usable expiry of a bootstrap access token, or why it is not usable.
fn bootstrap_expiry(
    access_token: &SecretString,
    expires_at: &SecretString,
    refresh_token: &SecretString,
    policy: &RefreshPolicy,
    now: Timestamp,
) -> Result<Timestamp, AccessIgnored> {
    use secrecy::ExposeSecret;
    let at = access_token.expose_secret().trim();
    if at.is_empty() || at == refresh_token.expose_secret().trim() {
        return Err(AccessIgnored::NotAnAccessToken);
    }
    let raw = expires_at.expose_secret().trim();
    let expires = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse::<i64>()
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
    } else {
        raw.parse::<Timestamp>().ok()
    }
    .ok_or(AccessIgnored::Malformed)?;
    let soonest = now
        .saturating_add(to_signed(policy.refresh_before))
        .unwrap_or(now);
    if expires <= soonest {
        return Err(AccessIgnored::Expired(expires));
    }
    // A minute of slack for the clocks of whoever wrote the Secret.
    let latest = now
        .saturating_add(to_signed(
            policy.access_token_lifetime + Duration::from_secs(60),
        ))
        .unwrap_or(now);
    if expires > latest {
        return Err(AccessIgnored::TooLate(expires));
    }
    Ok(expires)
}
