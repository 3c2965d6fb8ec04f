//! Outcome counters, in total and per connection (refresh-token chain).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many refresh timings are kept per connection.
const MAX_TIMINGS: usize = 1000;

/// One observable outcome of a simulator call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authorization code exchanged for tokens.
    CodeOk,
    /// Refresh token exchanged for new tokens.
    RefreshOk,
    /// Refresh refused: access token not (nearly) expired.
    TooEarly,
    /// A rotated-away refresh token was presented.
    OldRefreshTokenUsed,
    /// An unused refresh token outlived its lifetime.
    RefreshTokenExpired,
    /// Unknown client or wrong secret.
    InvalidClient,
    /// Unknown refresh token / bad, reused or expired code / redirect mismatch.
    InvalidGrant,
    /// Malformed token request (missing fields, unsupported grant type).
    InvalidRequest,
    /// Token call refused because the client exceeded its error budget.
    Blocked,
    /// Injected Apigee 500 fault.
    Fault500,
    /// Injected empty body.
    EmptyBody,
    /// Injected non-JSON body.
    NonJson,
    /// Injected lost response (connection closed after processing).
    LostResponse,
    /// `Me` answered.
    MeOk,
    /// A REST call (`Me`, `Divisions`, `Accounts`) refused: missing, unknown, expired
    /// or revoked bearer token. (Named after `Me`, its first endpoint.)
    MeUnauthorized,
    /// A REST call refused by a rate limit (429).
    RateLimited,
    /// A refresh token of a chain revoked by a newer consent of its user was presented.
    RevokedChainUsed,
    /// A token call refused by the daily per-(user, client) cap (429).
    TokenCapExceeded,
    /// A chain was revoked because its user consented again on the same client.
    ChainRevoked,
    /// A REST collection (`Divisions`, `Accounts`) answered.
    RestOk,
    /// A REST call refused: the user may not open the division in the path (403).
    DivisionForbidden,
}

/// Counters per outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Calls to the token endpoint (any outcome).
    pub token_calls: u64,
    /// See [`Outcome::CodeOk`].
    pub code_ok: u64,
    /// See [`Outcome::RefreshOk`].
    pub refresh_ok: u64,
    /// See [`Outcome::TooEarly`].
    pub too_early: u64,
    /// See [`Outcome::OldRefreshTokenUsed`].
    pub old_refresh_token_used: u64,
    /// See [`Outcome::RefreshTokenExpired`].
    pub refresh_token_expired: u64,
    /// See [`Outcome::InvalidClient`].
    pub invalid_client: u64,
    /// See [`Outcome::InvalidGrant`].
    pub invalid_grant: u64,
    /// See [`Outcome::InvalidRequest`].
    pub invalid_request: u64,
    /// See [`Outcome::Blocked`].
    pub blocked: u64,
    /// See [`Outcome::Fault500`].
    pub faults_500: u64,
    /// See [`Outcome::EmptyBody`].
    pub empty_bodies: u64,
    /// See [`Outcome::NonJson`].
    pub non_json_bodies: u64,
    /// See [`Outcome::LostResponse`].
    pub lost_responses: u64,
    /// See [`Outcome::MeOk`].
    pub me_ok: u64,
    /// See [`Outcome::MeUnauthorized`].
    pub me_unauthorized: u64,
    /// See [`Outcome::RateLimited`].
    pub rate_limited: u64,
    /// See [`Outcome::RevokedChainUsed`].
    pub revoked_chain_used: u64,
    /// See [`Outcome::TokenCapExceeded`].
    pub token_cap_exceeded: u64,
    /// See [`Outcome::ChainRevoked`].
    pub chains_revoked: u64,
    /// See [`Outcome::RestOk`].
    pub rest_ok: u64,
    /// See [`Outcome::DivisionForbidden`].
    pub division_forbidden: u64,
}

impl Counters {
    /// Increments the counter for `o`.
    pub fn record(&mut self, o: Outcome) {
        let c = match o {
            Outcome::CodeOk => &mut self.code_ok,
            Outcome::RefreshOk => &mut self.refresh_ok,
            Outcome::TooEarly => &mut self.too_early,
            Outcome::OldRefreshTokenUsed => &mut self.old_refresh_token_used,
            Outcome::RefreshTokenExpired => &mut self.refresh_token_expired,
            Outcome::InvalidClient => &mut self.invalid_client,
            Outcome::InvalidGrant => &mut self.invalid_grant,
            Outcome::InvalidRequest => &mut self.invalid_request,
            Outcome::Blocked => &mut self.blocked,
            Outcome::Fault500 => &mut self.faults_500,
            Outcome::EmptyBody => &mut self.empty_bodies,
            Outcome::NonJson => &mut self.non_json_bodies,
            Outcome::LostResponse => &mut self.lost_responses,
            Outcome::MeOk => &mut self.me_ok,
            Outcome::MeUnauthorized => &mut self.me_unauthorized,
            Outcome::RateLimited => &mut self.rate_limited,
            Outcome::RevokedChainUsed => &mut self.revoked_chain_used,
            Outcome::TokenCapExceeded => &mut self.token_cap_exceeded,
            Outcome::ChainRevoked => &mut self.chains_revoked,
            Outcome::RestOk => &mut self.rest_ok,
            Outcome::DivisionForbidden => &mut self.division_forbidden,
        };
        *c += 1;
    }
}

/// Counters and refresh timing of one connection (chain), keyed by its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainStats {
    /// Outcome counters of this connection.
    #[serde(flatten)]
    pub counters: Counters,
    /// Smallest remaining access-token lifetime (ms) seen at a successful refresh;
    /// negative when the refresh came after expiry. `None` until a refresh happened
    /// while an access token existed.
    pub min_remaining_at_refresh_ms: Option<i64>,
    /// Remaining access-token lifetime (ms) at each successful refresh, oldest first
    /// (at most 1000 kept).
    pub remaining_at_refresh_ms: Vec<i64>,
}

impl ChainStats {
    /// Records the remaining lifetime of the replaced access token at a refresh.
    pub fn record_refresh_timing(&mut self, remaining_ms: i64) {
        self.min_remaining_at_refresh_ms = Some(
            self.min_remaining_at_refresh_ms
                .map_or(remaining_ms, |m| m.min(remaining_ms)),
        );
        if self.remaining_at_refresh_ms.len() < MAX_TIMINGS {
            self.remaining_at_refresh_ms.push(remaining_ms);
        }
    }
}

/// A snapshot of all counters (`GET /_sim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Counters over all calls, including those not attributable to a connection.
    pub totals: Counters,
    /// Per connection, by connection (chain) name.
    pub connections: BTreeMap<String, ChainStats>,
}

impl Stats {
    /// Records `o` in the totals and, when known, in the connection's counters.
    pub fn record(&mut self, chain: Option<&str>, o: Outcome) {
        self.totals.record(o);
        if let Some(name) = chain {
            self.connections
                .entry(name.to_string())
                .or_default()
                .counters
                .record(o);
        }
    }

    /// Counts a token call, in total and for the connection when known.
    pub fn token_call(&mut self, chain: Option<&str>) {
        self.totals.token_calls += 1;
        if let Some(name) = chain {
            self.connections
                .entry(name.to_string())
                .or_default()
                .counters
                .token_calls += 1;
        }
    }

    /// The stats of connection `name`, if any call was attributed to it.
    pub fn connection(&self, name: &str) -> Option<&ChainStats> {
        self.connections.get(name)
    }
}
