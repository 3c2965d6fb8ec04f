//! The simulator's mutable world: clock, connections (chains), tokens and codes.
//!
//! Everything lives in one [`State`] behind a `std::sync::Mutex` (see [`Shared`]);
//! the lock is never held across an `.await`.

use crate::config::{Faults, SimClient, SimConfig};
use crate::limits::{ErrorBudget, RateLimits};
use crate::stats::Stats;
use rand::distributions::Alphanumeric;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Simulated time: elapsed since the simulator started, plus any manual advance.
pub type SimTime = Duration;

/// Prune expired access tokens once the map grows past this size.
const ACCESS_PRUNE_THRESHOLD: usize = 1024;

/// A clock that can be advanced by hand (for fast tests of long lifetimes).
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    start_epoch_ms: u64,
    offset: Duration,
}

impl Clock {
    fn new() -> Self {
        let start_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            start: Instant::now(),
            start_epoch_ms,
            offset: Duration::ZERO,
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> SimTime {
        self.start.elapsed() + self.offset
    }

    /// Wall-clock milliseconds since the Unix epoch for simulated time `t`.
    pub fn epoch_ms(&self, t: SimTime) -> u64 {
        self.start_epoch_ms
            .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    }

    /// Moves simulated time forward.
    pub fn advance(&mut self, by: Duration) {
        self.offset += by;
    }
}

/// A connection: one consent, followed by a chain of rotating refresh tokens.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Connection name (stats key).
    pub name: String,
    /// Owning client id.
    pub client_id: String,
    /// `CurrentDivision` reported by `Me`.
    pub division: i64,
    /// `UserID` reported by `Me`.
    pub user_id: String,
    /// Expiry of the newest access token, if one was ever issued.
    pub access_expiry: Option<SimTime>,
}

/// A refresh token record.
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    /// Index into [`State::chains`].
    pub chain: usize,
    /// When it was issued (expiry = issued + refresh-token lifetime).
    pub issued: SimTime,
    /// Rotated away by a successful refresh.
    pub old: bool,
}

/// An access token record.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Index into [`State::chains`].
    pub chain: usize,
    /// Expiry time.
    pub expires: SimTime,
}

/// An authorization code record.
#[derive(Debug, Clone)]
pub struct CodeRecord {
    /// Client the code was issued to.
    pub client_id: String,
    /// Redirect URI of the authorization request (must match at exchange).
    pub redirect_uri: String,
    /// Connection name given at consent.
    pub name: String,
    /// Issue time (expiry = issued + code lifetime).
    pub issued: SimTime,
    /// Already exchanged.
    pub used: bool,
}

/// A freshly issued access/refresh token pair.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The access token.
    pub access: String,
    /// The refresh token.
    pub refresh: String,
}

/// All mutable simulator state.
#[derive(Debug)]
pub struct State {
    /// Configuration (immutable after start, except faults which live in `faults`).
    pub cfg: SimConfig,
    /// Current fault settings.
    pub faults: Faults,
    /// Simulated clock.
    pub clock: Clock,
    /// Registered clients by id.
    pub clients: HashMap<String, SimClient>,
    /// All connections ever created.
    pub chains: Vec<Chain>,
    /// Refresh tokens (current and old).
    pub refresh_tokens: HashMap<String, RefreshRecord>,
    /// Access tokens.
    pub access_tokens: HashMap<String, AccessRecord>,
    /// Authorization codes.
    pub codes: HashMap<String, CodeRecord>,
    /// Per-client error budget.
    pub errors: ErrorBudget,
    /// REST rate limits.
    pub rate: RateLimits,
    /// Counters.
    pub stats: Stats,
    consents: HashMap<String, u64>,
}

/// Shared handle to the state.
pub type Shared = Arc<Mutex<State>>;

/// Locks the state, recovering from poisoning (a panicked handler must not wedge the sim).
pub fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random URL-safe token of `len` characters.
pub fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_guid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl State {
    /// Builds the initial state from a configuration.
    pub fn new(cfg: SimConfig) -> Self {
        let clients = cfg
            .clients
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        Self {
            faults: cfg.faults.clone(),
            cfg,
            clock: Clock::new(),
            clients,
            chains: Vec::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            codes: HashMap::new(),
            errors: ErrorBudget::default(),
            rate: RateLimits::default(),
            stats: Stats::default(),
            consents: HashMap::new(),
        }
    }

    /// Current simulated time.
    pub fn now(&self) -> SimTime {
        self.clock.now()
    }

    /// Creates a new connection without tokens and returns its index.
    pub fn new_chain(&mut self, client_id: &str, name: &str, division: Option<i64>) -> usize {
        self.chains.push(Chain {
            name: name.to_string(),
            client_id: client_id.to_string(),
            division: division.unwrap_or(self.cfg.division),
            user_id: random_guid(),
            access_expiry: None,
        });
        self.stats.connections.entry(name.to_string()).or_default();
        self.chains.len() - 1
    }

    /// Creates a connection whose current refresh token is `token` (random when `None`).
    /// The connection has no live access token, so it may be refreshed at once.
    pub fn seed(
        &mut self,
        client_id: &str,
        name: &str,
        token: Option<&str>,
        division: Option<i64>,
    ) -> String {
        let chain = self.new_chain(client_id, name, division);
        let token = token.map_or_else(|| random_token(48), str::to_string);
        let issued = self.now();
        self.refresh_tokens.insert(
            token.clone(),
            RefreshRecord {
                chain,
                issued,
                old: false,
            },
        );
        tracing::info!(connection = name, client_id, "seeded connection");
        token
    }

    /// Issues a new access token and refresh token for `chain`.
    pub fn issue_tokens(&mut self, chain: usize) -> TokenPair {
        let now = self.now();
        if self.access_tokens.len() > ACCESS_PRUNE_THRESHOLD {
            self.access_tokens.retain(|_, a| a.expires > now);
        }
        let access = random_token(64);
        let refresh = random_token(48);
        let expires = now + self.cfg.access_token_lifetime;
        self.access_tokens
            .insert(access.clone(), AccessRecord { chain, expires });
        self.refresh_tokens.insert(
            refresh.clone(),
            RefreshRecord {
                chain,
                issued: now,
                old: false,
            },
        );
        if let Some(c) = self.chains.get_mut(chain) {
            c.access_expiry = Some(expires);
        }
        TokenPair { access, refresh }
    }

    /// The connection of a live (unexpired) access token.
    pub fn access_chain(&self, token: &str) -> Option<usize> {
        let now = self.now();
        self.access_tokens
            .get(token)
            .filter(|a| a.expires > now)
            .map(|a| a.chain)
    }

    /// The name of connection `idx`.
    pub fn chain_name(&self, idx: usize) -> Option<String> {
        self.chains.get(idx).map(|c| c.name.clone())
    }

    /// Next connection name for a consent by `client_id`: `<client_id>-<n>`, n from 1.
    pub fn next_consent_name(&mut self, client_id: &str) -> String {
        let n = self.consents.entry(client_id.to_string()).or_insert(0);
        *n += 1;
        format!("{client_id}-{n}")
    }
}
