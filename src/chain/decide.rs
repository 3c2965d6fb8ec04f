//! What a connection's chain needs now. Pure: the one place that says when the next token
//! call is due.

use crate::schedule::{next_refresh, RefreshPolicy};
use crate::state::{ConnectionState, DeadChain};
use jiff::Timestamp;

/// What of the connection's spec the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct ChainSpec<'a> {
    /// `spec.suspend`: only keep-alive refreshes of the refresh token.
    pub suspend: bool,
    /// Digest of the inputs (client, secrets, spec); a dead chain stays dead until it changes.
    pub fingerprint: &'a str,
    /// This process's identity (holder of its own claims).
    pub holder: &'a str,
}

/// Why no token call is made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitWhy {
    /// The schedule (refresh window, keep-alive) says later.
    Schedule,
    /// A backoff after a failure or a too-early refusal.
    Backoff,
    /// Another process holds the claim.
    ClaimedByOther,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No refresh token: a consent or a bootstrap token is needed.
    AwaitConsent,
    /// The chain is dead under the current inputs.
    Dead(DeadChain),
    /// Nothing to call until `due`. `restore`: the stored access token is valid and the
    /// workload Secret should show it (restored without a token call if edited or deleted).
    Wait {
        /// When to look again.
        due: Timestamp,
        /// Why not now.
        why: WaitWhy,
        /// Publish the stored token first.
        restore: bool,
    },
    /// Refresh now (after restoring the stored token if `restore`).
    Call {
        /// Publish the stored token first.
        restore: bool,
    },
}

/// When the next token call is due: the schedule, never before a recorded backoff, never
/// while another process holds the claim.
pub fn next_due(
    state: &ConnectionState,
    policy: &RefreshPolicy,
    spec: &ChainSpec<'_>,
    now: Timestamp,
) -> (Timestamp, WaitWhy) {
    let mut due = (
        next_refresh(policy, &state.times, spec.suspend, now),
        WaitWhy::Schedule,
    );
    if let Some(nb) = state.not_before.filter(|nb| *nb > due.0) {
        due = (nb, WaitWhy::Backoff);
    }
    if let Some(claim) = state
        .claimed_by_other(spec.holder, now)
        .filter(|c| c.until > due.0)
    {
        due = (claim.until, WaitWhy::ClaimedByOther);
    }
    due
}

/// Decides what the chain needs at `now`. A dead chain whose inputs changed is treated as
/// alive again (the caller clears the marker with its next write).
pub fn decide(
    state: &ConnectionState,
    policy: &RefreshPolicy,
    spec: &ChainSpec<'_>,
    now: Timestamp,
) -> Decision {
    if state.refresh_token.is_none() {
        return Decision::AwaitConsent;
    }
    if let Some(dead) = state
        .dead
        .as_ref()
        .filter(|d| d.fingerprint == spec.fingerprint)
    {
        return Decision::Dead(dead.clone());
    }
    let restore = state.access_token_valid(now);
    let (due, why) = next_due(state, policy, spec, now);
    if due > now {
        Decision::Wait { due, why, restore }
    } else {
        Decision::Call { restore }
    }
}
