//! The simulator's mutable world: clock, connections (chains), tokens and codes.
//!
//! Everything lives in one [`State`] behind a `std::sync::Mutex` (see [`Shared`]);
//! the lock is never held across an `.await`.

use crate::config::{Faults, SimClient, SimConfig, SimDivision};
use crate::limits::{ErrorBudget, RateLimits};
use crate::stats::Stats;
use rand::distributions::Alphanumeric;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::clock::SimTime;

/// Prune expired access tokens once the map grows past this size.
const ACCESS_PRUNE_THRESHOLD: usize = 1024;

/// Window of the daily token-call cap.
pub const TOKEN_CAP_WINDOW: Duration = Duration::from_secs(86_400);

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

/// A user as the running simulator knows it (named from the config, or anonymous).
#[derive(Debug, Clone)]
pub struct UserRec {
    /// `UserName` in `Me`.
    pub user_name: String,
    /// `FullName` in `Me`.
    pub full_name: String,
    /// `UserID` in `Me` (a GUID).
    pub user_id: String,
    /// Accessible divisions (never empty).
    pub divisions: Vec<SimDivision>,
    /// `CurrentDivision` in `Me`.
    pub current_division: i64,
    /// Created for one consent or seed only (not in the config).
    pub anonymous: bool,
}

impl UserRec {
    /// The accessible division with code `code`.
    pub fn division(&self, code: i64) -> Option<&SimDivision> {
        self.divisions.iter().find(|d| d.code == code)
    }
}

/// Why a chain stopped working before its tokens did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The same user consented again on the same client.
    Reconsent,
}

/// A connection: one consent, followed by a chain of rotating refresh tokens.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Connection name (stats key).
    pub name: String,
    /// Owning client id.
    pub client_id: String,
    /// Index into [`State::users`].
    pub user: usize,
    /// Expiry of the newest access token, if one was ever issued.
    pub access_expiry: Option<SimTime>,
    /// Set when the chain was revoked; its tokens no longer work.
    pub revoked: Option<Revoked>,
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
    /// User who consented (index into [`State::users`]).
    pub user: usize,
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
    /// Named users (first, in config order) and anonymous ones.
    pub users: Vec<UserRec>,
    /// Named users by `user_name`.
    pub user_index: HashMap<String, usize>,
    /// Times of token calls per (user index, client id), within the cap window.
    pub token_calls: HashMap<(usize, String), VecDeque<SimTime>>,
    consents: HashMap<String, u64>,
    /// Webhook subscriptions at this "Exact".
    pub webhooks: crate::webhook_registry::Registry,
}

/// Shared handle to the state.
pub type Shared = Arc<Mutex<State>>;

/// Locks the state, recovering from poisoning (a panicked handler must not wedge the sim).
pub fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A token shaped like Exact's (`stamp<NN>!<random>`): the `!` makes sure clients
/// form-encode tokens (it arrives as `%21`) and treat them as opaque.
pub fn exact_token(len: usize) -> String {
    let stamp: u8 = rand::thread_rng().gen_range(10..100);
    format!("stamp{stamp}!{}", random_token(len))
}

/// A random URL-safe token of `len` characters.
pub fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) fn random_guid() -> String {
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
        let mut users = Vec::new();
        let mut user_index = HashMap::new();
        for u in &cfg.users {
            if user_index.contains_key(&u.user_name) {
                continue; // first definition wins; main.rs merges repeated flags
            }
            let mut divisions = u.divisions.clone();
            if divisions.is_empty() {
                divisions.push(SimDivision::new(cfg.division));
            }
            let current_division = u
                .current_division
                .filter(|c| divisions.iter().any(|d| d.code == *c))
                .unwrap_or(divisions[0].code);
            user_index.insert(u.user_name.clone(), users.len());
            users.push(UserRec {
                user_name: u.user_name.clone(),
                full_name: u.full_name.clone(),
                user_id: random_guid(),
                divisions,
                current_division,
                anonymous: false,
            });
        }
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
            users,
            user_index,
            token_calls: HashMap::new(),
            consents: HashMap::new(),
            webhooks: Default::default(),
        }
    }

    /// Creates an anonymous user for connection `name` (today's one-user-per-connection
    /// model) with a single division, and returns its index.
    pub fn anonymous_user(&mut self, name: &str, division: Option<i64>) -> usize {
        let code = division.unwrap_or(self.cfg.division);
        self.users.push(UserRec {
            user_name: format!("{name}@example.invalid"),
            full_name: format!("Simulated User ({name})"),
            user_id: random_guid(),
            divisions: vec![SimDivision::new(code)],
            current_division: code,
            anonymous: true,
        });
        self.users.len() - 1
    }

    /// The user of connection `chain`.
    pub fn chain_user(&self, chain: usize) -> Option<&UserRec> {
        self.chains.get(chain).and_then(|c| self.users.get(c.user))
    }

    /// Revokes every live chain of `user` on `client_id` except `keep`; returns how
    /// many were revoked. Their access tokens stop working too.
    pub fn revoke_user_chains(&mut self, user: usize, client_id: &str, keep: usize) -> usize {
        let mut revoked = Vec::new();
        for (i, c) in self.chains.iter_mut().enumerate() {
            if i != keep && c.user == user && c.client_id == client_id && c.revoked.is_none() {
                c.revoked = Some(Revoked::Reconsent);
                revoked.push(i);
            }
        }
        if !revoked.is_empty() {
            self.access_tokens
                .retain(|_, a| !revoked.contains(&a.chain));
        }
        for i in &revoked {
            let name = self.chain_name(*i);
            self.stats
                .record(name.as_deref(), crate::stats::Outcome::ChainRevoked);
            tracing::info!(
                connection = name.as_deref().unwrap_or("-"),
                client_id,
                "chain revoked by a new consent of its user"
            );
        }
        revoked.len()
    }

    /// Token calls of (`user`, `client_id`) within the last 24 h, pruning older ones.
    pub fn token_calls_24h(&mut self, user: usize, client_id: &str) -> u32 {
        let now = self.now();
        let Some(q) = self.token_calls.get_mut(&(user, client_id.to_string())) else {
            return 0;
        };
        while q.front().is_some_and(|t| *t + TOKEN_CAP_WINDOW <= now) {
            q.pop_front();
        }
        u32::try_from(q.len()).unwrap_or(u32::MAX)
    }

    /// When the oldest counted call of (`user`, `client_id`) leaves the 24 h window.
    pub fn token_cap_frees_in(&self, user: usize, client_id: &str) -> Duration {
        let now = self.now();
        self.token_calls
            .get(&(user, client_id.to_string()))
            .and_then(|q| q.front())
            .map_or(Duration::ZERO, |t| {
                (*t + TOKEN_CAP_WINDOW).saturating_sub(now)
            })
    }

    /// Counts one token call of (`user`, `client_id`).
    pub fn count_token_call(&mut self, user: usize, client_id: &str) {
        let now = self.now();
        self.token_calls
            .entry((user, client_id.to_string()))
            .or_default()
            .push_back(now);
    }

    /// Current simulated time.
    pub fn now(&self) -> SimTime {
        self.clock.now()
    }

    /// Creates a new connection of `user` without tokens and returns its index.
    pub fn new_chain(&mut self, client_id: &str, name: &str, user: usize) -> usize {
        self.chains.push(Chain {
            name: name.to_string(),
            client_id: client_id.to_string(),
            user,
            access_expiry: None,
            revoked: None,
        });
        self.stats.connections.entry(name.to_string()).or_default();
        self.chains.len() - 1
    }

    /// Creates a connection whose current refresh token is `token` (random when `None`)
    /// for a fresh anonymous user whose only division is `division`.
    /// The connection has no live access token, so it may be refreshed at once.
    pub fn seed(
        &mut self,
        client_id: &str,
        name: &str,
        token: Option<&str>,
        division: Option<i64>,
    ) -> String {
        let user = self.anonymous_user(name, division);
        self.seed_for(client_id, name, token, user)
    }

    /// Like [`State::seed`] for an existing user (no revocation: seeding models a grant
    /// that already exists, not a new consent).
    pub fn seed_for(
        &mut self,
        client_id: &str,
        name: &str,
        token: Option<&str>,
        user: usize,
    ) -> String {
        let chain = self.new_chain(client_id, name, user);
        let token = token.map_or_else(|| exact_token(48), str::to_string);
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
        let access = exact_token(64);
        let refresh = exact_token(48);
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
