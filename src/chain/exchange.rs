//! The one transaction that spends a refresh token or an authorization code:
//! 1. claim the chain with a conditional write (no claim, no call);
//! 2. for a refresh, journal the intent (which chain is being spent), then call the token
//!    endpoint once;
//! 3. persist the answer before anything else, retrying while the process lives; overwrite
//!    only what the call was entitled to replace (the chain it consumed, or for a consent
//!    the rule the consent's ticket allows).

use super::outcome::{on_outcome, outcome_label, End, OutcomeInputs};
use crate::schedule::RefreshPolicy;
use crate::state::{Claim, ConnectionState};
use crate::token::{Grant, TokenOutcome};
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::time::{Duration, Instant};

/// A stored state and the version it was read at (None: nothing stored yet).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The state.
    pub state: ConnectionState,
    /// Opaque version for conditional writes (a resourceVersion).
    pub version: Option<String>,
}

/// Why a conditional write did not happen.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The stored version is not the one given: someone wrote meanwhile.
    Conflict,
    /// The store could not be reached or refused for another reason.
    Other(E),
}

/// What a journalled answer may overwrite when it is replayed (the persist rule of its
/// exchange).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "rule", rename_all = "camelCase")]
pub enum Entitlement {
    /// A refresh: only while the stored chain is the one consumed (its SHA-256).
    SameChain {
        /// Digest of the consumed refresh token.
        consumed: String,
    },
    /// A consent: over a chain that does not work, or anything with `supersede`.
    Consent {
        /// A requested re-authorization.
        supersede: bool,
    },
}

/// Where a chain's state lives.
pub trait StateStore {
    /// Store errors (API server unavailable, ...).
    type Error: std::fmt::Display;
    /// Reads the current state.
    fn load(&self) -> impl Future<Output = Result<Stored, Self::Error>> + Send;
    /// Writes `state` if the stored version is still `version` (None: create); returns the
    /// new version.
    fn write(
        &self,
        state: &ConnectionState,
        version: Option<&str>,
    ) -> impl Future<Output = Result<String, WriteError<Self::Error>>> + Send;
    /// Keeps a new chain somewhere durable before it is persisted (the token journal), so
    /// the death of the process before the write loses nothing. Default: nowhere.
    fn journal(&self, _state: &ConnectionState, _entitlement: Entitlement) {}
    /// A refresh is about to spend the chain whose refresh token has digest `chain` (the
    /// claim is written; the call is next): kept durable so that a successor can tell the
    /// call was in flight if this process dies before its answer. Default: nowhere.
    fn intend(&self, _chain: &str, _holder: &str) {}
    /// The journalled chain is persisted (or superseded), or the answer of an intended call
    /// is in hand with nothing to keep: the journal may drop it.
    fn settle(&self) {}
}

/// The token endpoint.
pub trait TokenCaller {
    /// Sends one token request.
    fn call(&self, grant: Grant<'_>) -> impl Future<Output = TokenOutcome> + Send;
}

/// Which grant an exchange spends.
#[derive(Debug, Clone, Copy)]
pub enum ChainGrant<'a> {
    /// The stored refresh token.
    Refresh,
    /// An authorization code from a consent.
    Code {
        /// The code (decoded exactly once).
        code: &'a SecretString,
        /// The redirect URI the code was issued for.
        redirect_uri: &'a str,
        /// Replace whatever is stored (a requested re-authorization); otherwise replace only
        /// a chain that does not work (none, or dead).
        supersede: bool,
    },
}

/// What an exchange needs besides the store and the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeJob<'a> {
    /// Identity recorded as the claim holder.
    pub holder: &'a str,
    /// How long the claim is valid.
    pub claim_ttl: Duration,
    /// Timing rules.
    pub policy: &'a RefreshPolicy,
    /// Fingerprint recorded with a dead chain.
    pub fingerprint: &'a str,
    /// Uniform in [0, 1], for retry spreading.
    pub jitter: f64,
}

/// How an exchange ended.
#[derive(Debug)]
// `Done` is the common case and is moved once; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum ExchangeEnd {
    /// Someone else holds the claim or wrote meanwhile, or there is nothing to refresh:
    /// nothing was spent.
    Contended,
    /// The call's answer was persisted (or, for a refused code, the claim released).
    Done {
        /// How the answer ended for the chain.
        end: End,
        /// The state as persisted.
        state: ConnectionState,
        /// Its version.
        version: String,
        /// Metric label of the answer.
        label: &'static str,
        /// Duration of the token call.
        call_seconds: f64,
    },
    /// A newer chain than the one we spent was stored meanwhile (ours was simply old):
    /// nothing written.
    NewerChainStored {
        /// Metric label of the answer.
        label: &'static str,
    },
    /// A consent's new chain was not stored because a working chain appeared meanwhile.
    ConsentLost {
        /// Metric label of the answer.
        label: &'static str,
    },
}

/// Claim -> call -> persist-first. `stored` is the snapshot the caller decided on (for a
/// consent, with the ticket already marked as used); a store error before the call is
/// returned (nothing spent), after it the answer is persisted while the process lives.
pub async fn exchange<S: StateStore + Sync, C: TokenCaller + Sync>(
    store: &S,
    caller: &C,
    stored: Stored,
    grant: ChainGrant<'_>,
    job: &ExchangeJob<'_>,
) -> Result<ExchangeEnd, S::Error> {
    let mut state = stored.state;
    let consumed = match grant {
        ChainGrant::Refresh => match state.refresh_token.clone() {
            Some(t) => Some(t),
            None => return Ok(ExchangeEnd::Contended),
        },
        ChainGrant::Code { .. } => None,
    };
    let now = Timestamp::now();
    let ttl = SignedDuration::try_from(job.claim_ttl).unwrap_or(SignedDuration::from_secs(60));
    state.claim = Some(Claim {
        holder: job.holder.to_string(),
        until: now.saturating_add(ttl).unwrap_or(now),
    });
    let claimed = match store.write(&state, stored.version.as_deref()).await {
        Ok(v) => v,
        Err(WriteError::Conflict) => return Ok(ExchangeEnd::Contended),
        Err(WriteError::Other(e)) => return Err(e),
    };

    if let Some(rt) = &consumed {
        store.intend(&crate::state::digest(rt.expose_secret()), job.holder);
    }
    let sent_at = Timestamp::now();
    let started = Instant::now();
    let outcome = match (grant, &consumed) {
        (
            ChainGrant::Code {
                code, redirect_uri, ..
            },
            _,
        ) => {
            caller
                .call(Grant::AuthorizationCode { code, redirect_uri })
                .await
        }
        (ChainGrant::Refresh, Some(rt)) => caller.call(Grant::RefreshToken(rt)).await,
        (ChainGrant::Refresh, None) => return Ok(ExchangeEnd::Contended),
    };
    let call_seconds = started.elapsed().as_secs_f64();
    let label = outcome_label(&outcome);
    let inputs = OutcomeInputs {
        policy: job.policy,
        fingerprint: job.fingerprint,
        sent_at,
        received_at: Timestamp::now(),
        jitter: job.jitter,
        code_grant: matches!(grant, ChainGrant::Code { .. }),
    };
    let (state, end) = on_outcome(state, outcome, &inputs);
    if consumed.is_some() && end != End::Rotated {
        // The answer is in hand and spends nothing new: the intent has told all it can.
        store.settle();
    }
    let done = |state, version| ExchangeEnd::Done {
        end: end.clone(),
        state,
        version,
        label,
        call_seconds,
    };

    match (grant, consumed) {
        (ChainGrant::Refresh, Some(consumed)) => {
            let consumed = consumed.expose_secret().to_string();
            let mut version = Some(claimed);
            if end == End::Dead {
                // A refusal may only mean that someone stored a newer token while we called.
                let current = reload(store).await;
                if current
                    .state
                    .refresh_token
                    .as_ref()
                    .is_some_and(|t| t.expose_secret() != consumed)
                {
                    return Ok(ExchangeEnd::NewerChainStored { label });
                }
                version = current.version;
            }
            if end == End::Rotated {
                store.journal(
                    &state,
                    Entitlement::SameChain {
                        consumed: crate::state::digest(&consumed),
                    },
                );
            }
            let same_chain = |current: &Stored| {
                current
                    .state
                    .refresh_token
                    .as_ref()
                    .map(|t| t.expose_secret() == consumed)
                    .unwrap_or(current.version.is_none())
            };
            let persisted = persist(store, &state, version, same_chain).await;
            if end == End::Rotated {
                store.settle();
            }
            match persisted {
                Some(v) => Ok(done(state, v)),
                None => Ok(ExchangeEnd::NewerChainStored { label }),
            }
        }
        (ChainGrant::Code { supersede, .. }, _) => {
            if let End::CodeRefused { .. } = end {
                // Only the claim to release; the stored chain is untouched.
                let v = store.write(&state, Some(&claimed)).await.unwrap_or(claimed);
                return Ok(done(state, v));
            }
            store.journal(&state, Entitlement::Consent { supersede });
            let may_replace = |current: &Stored| supersede || !current.state.has_working_chain();
            let persisted = persist(store, &state, Some(claimed), may_replace).await;
            store.settle();
            match persisted {
                Some(v) => Ok(done(state, v)),
                None => Ok(ExchangeEnd::ConsentLost { label }),
            }
        }
        (ChainGrant::Refresh, None) => Ok(ExchangeEnd::Contended),
    }
}

/// Reads the state, retrying while the process lives (the answer in hand must be kept).
async fn reload<S: StateStore>(store: &S) -> Stored {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.load().await {
            Ok(s) => return s,
            Err(e) => tracing::warn!(error = %e, "re-reading state failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Persists `state` as long as the process lives: the answer exists nowhere else. On a
/// conflict it re-reads and writes again if `may_overwrite` accepts what is stored now;
/// returns None when it does not (somebody stored a chain ours must not replace).
pub(crate) async fn persist<S: StateStore>(
    store: &S,
    state: &ConnectionState,
    mut version: Option<String>,
    may_overwrite: impl Fn(&Stored) -> bool,
) -> Option<String> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.write(state, version.as_deref()).await {
            Ok(v) => return Some(v),
            Err(WriteError::Conflict) => {
                match store.load().await {
                    Ok(current) if may_overwrite(&current) => {
                        version = current.version;
                        continue;
                    }
                    Ok(_) => {
                        tracing::warn!("state changed to another chain while persisting; keeping the stored one");
                        return None;
                    }
                    Err(e) => tracing::warn!(error = %e, "re-reading state failed; retrying"),
                }
            }
            Err(WriteError::Other(e)) => {
                tracing::warn!(error = %e, "persisting state failed; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
