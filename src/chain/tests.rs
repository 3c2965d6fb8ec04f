//! The chain invariant in memory: a fake store with resourceVersion semantics and a scripted
//! token endpoint that rotates like Exact. No API server; each test runs in milliseconds.
//! The invariant: a refresh token is presented to Exact only by the holder of a fresh claim,
//! never once it was rotated away by an answer the store knows of, and an answer in hand is
//! in the store before `exchange` returns.

use super::*;
use crate::schedule::RefreshPolicy;
use crate::state::ConnectionState;
use crate::token::{ExpiresIn, Grant, TokenGrant, TokenOutcome};
use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// A store with optimistic concurrency, and hooks to act "meanwhile".
#[derive(Default)]
struct FakeStore {
    inner: Mutex<StoreInner>,
    /// What `journal` holds (a token journal on local disk in production).
    journalled: Mutex<Option<(ConnectionState, Entitlement)>>,
    /// The intent `intend` holds: (digest of the chain being spent, holder).
    intended: Mutex<Option<(String, String)>>,
}

#[derive(Default)]
struct StoreInner {
    state: Option<ConnectionState>,
    version: u64,
    /// Applied (as another writer) right before the next write with this index.
    meanwhile: Vec<(u64, ConnectionState)>,
    writes: u64,
    /// Writes from this index on fail (API server gone).
    fail_from: Option<u64>,
}

impl FakeStore {
    fn with_token(token: &str) -> Self {
        let s = FakeStore::default();
        s.put(ConnectionState {
            refresh_token: Some(SecretString::from(token)),
            ..Default::default()
        });
        s
    }
    fn put(&self, state: ConnectionState) {
        let mut i = self.inner.lock().expect("lock");
        i.state = Some(state);
        i.version += 1;
    }
    fn token(&self) -> Option<String> {
        let i = self.inner.lock().expect("lock");
        i.state
            .as_ref()
            .and_then(|s| s.refresh_token.as_ref())
            .map(|t| t.expose_secret().to_string())
    }
    fn stored(&self) -> ConnectionState {
        self.inner
            .lock()
            .expect("lock")
            .state
            .clone()
            .unwrap_or_default()
    }
    fn snapshot(&self) -> Stored {
        let i = self.inner.lock().expect("lock");
        Stored {
            state: i.state.clone().unwrap_or_default(),
            version: i.state.as_ref().map(|_| i.version.to_string()),
        }
    }
    /// Another writer stores `state` right before write number `at` (0 = the claim).
    fn meanwhile(&self, at: u64, state: ConnectionState) {
        self.inner.lock().expect("lock").meanwhile.push((at, state));
    }
}

#[derive(Debug)]
struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("store unavailable")
    }
}

impl StateStore for FakeStore {
    type Error = Down;
    async fn load(&self) -> Result<Stored, Down> {
        Ok(self.snapshot())
    }
    async fn write(
        &self,
        state: &ConnectionState,
        version: Option<&str>,
    ) -> Result<String, WriteError<Down>> {
        let mut i = self.inner.lock().expect("lock");
        let n = i.writes;
        i.writes += 1;
        if let Some(pos) = i.meanwhile.iter().position(|(at, _)| *at == n) {
            let (_, other) = i.meanwhile.remove(pos);
            i.state = Some(other);
            i.version += 1;
        }
        if i.fail_from.is_some_and(|f| n >= f) {
            return Err(WriteError::Other(Down));
        }
        let current = i.state.as_ref().map(|_| i.version.to_string());
        if current.as_deref() != version {
            return Err(WriteError::Conflict);
        }
        i.state = Some(state.clone());
        i.version += 1;
        Ok(i.version.to_string())
    }
    fn journal(&self, state: &ConnectionState, entitlement: Entitlement) {
        // The answer replaces the intent of its call (the same journal file).
        *self.intended.lock().expect("lock") = None;
        *self.journalled.lock().expect("lock") = Some((state.clone(), entitlement));
    }
    fn intend(&self, chain: &str, holder: &str) {
        *self.intended.lock().expect("lock") = Some((chain.into(), holder.into()));
    }
    fn settle(&self) {
        *self.journalled.lock().expect("lock") = None;
        *self.intended.lock().expect("lock") = None;
    }
}

impl FakeStore {
    fn journalled_token(&self) -> Option<String> {
        self.journalled
            .lock()
            .expect("lock")
            .as_ref()
            .and_then(|(s, _)| s.refresh_token.as_ref())
            .map(|t| t.expose_secret().to_string())
    }
}

/// Exact's rotation: one current refresh token; a used one is retired forever.
struct ScriptedExact {
    inner: Mutex<ExactInner>,
}

struct ExactInner {
    current: String,
    retired: HashSet<String>,
    serial: u32,
    /// Rotate but lose the answer on this call index.
    lose_answer_on: Option<u32>,
    calls: u32,
    /// Tokens presented after they were retired (each is a dead chain).
    reused: Vec<String>,
}

impl ScriptedExact {
    fn new(current: &str) -> Self {
        ScriptedExact {
            inner: Mutex::new(ExactInner {
                current: current.into(),
                retired: HashSet::new(),
                serial: 0,
                lose_answer_on: None,
                calls: 0,
                reused: Vec::new(),
            }),
        }
    }
    fn current(&self) -> String {
        self.inner.lock().expect("lock").current.clone()
    }
    fn calls(&self) -> u32 {
        self.inner.lock().expect("lock").calls
    }
    fn reused(&self) -> Vec<String> {
        self.inner.lock().expect("lock").reused.clone()
    }
}

impl TokenCaller for ScriptedExact {
    async fn call(&self, grant: Grant<'_>) -> TokenOutcome {
        let mut i = self.inner.lock().expect("lock");
        let n = i.calls;
        i.calls += 1;
        let presented = match grant {
            Grant::RefreshToken(t) => t.expose_secret().to_string(),
            Grant::AuthorizationCode { .. } => i.current.clone(),
        };
        if i.retired.contains(&presented) {
            i.reused.push(presented);
            return TokenOutcome::OldRefreshTokenUsed;
        }
        i.serial += 1;
        let next = format!("rt-{}", i.serial);
        let old = std::mem::replace(&mut i.current, next.clone());
        i.retired.insert(old);
        if i.lose_answer_on == Some(n) {
            return TokenOutcome::Transient {
                reason: "connection lost while reading the answer".into(),
                retry_after: None,
            };
        }
        TokenOutcome::Granted(TokenGrant {
            access_token: SecretString::from(format!("at-{}", i.serial)),
            refresh_token: Some(SecretString::from(next)),
            expires_in: ExpiresIn::Given(Duration::from_secs(600)),
        })
    }
}

fn policy() -> RefreshPolicy {
    RefreshPolicy {
        refresh_before: Duration::from_secs(25),
        refresh_window: Duration::from_secs(30),
        access_token_lifetime: Duration::from_secs(600),
        refresh_token_lifetime: Duration::from_secs(30 * 86400),
        max_errors_per_hour: 8,
    }
}

fn job<'a>(holder: &'a str, policy: &'a RefreshPolicy) -> ExchangeJob<'a> {
    ExchangeJob {
        holder,
        claim_ttl: Duration::from_secs(20),
        policy,
        fingerprint: "f",
        jitter: 0.5,
    }
}

async fn refresh(store: &FakeStore, exact: &ScriptedExact, holder: &str) -> ExchangeEnd {
    let p = policy();
    exchange(
        store,
        exact,
        store.snapshot(),
        ChainGrant::Refresh,
        &job(holder, &p),
    )
    .await
    .unwrap_or_else(|e| panic!("store error: {e}"))
}

#[tokio::test]
async fn a_rotated_token_is_stored_before_exchange_returns() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    let end = refresh(&store, &exact, "a").await;
    assert!(
        matches!(
            end,
            ExchangeEnd::Done {
                end: End::Rotated,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(store.token(), Some(exact.current()), "persisted first");
    assert_eq!(
        store.stored().claim,
        None,
        "claim released with the persist"
    );
    let again = refresh(&store, &exact, "b").await;
    assert!(matches!(
        again,
        ExchangeEnd::Done {
            end: End::Rotated,
            ..
        }
    ));
    assert!(exact.reused().is_empty());
}

#[tokio::test]
async fn a_conflict_at_claim_spends_nothing() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    let stale = store.snapshot();
    store.put(store.stored()); // someone wrote meanwhile
    let p = policy();
    let end = exchange(&store, &exact, stale, ChainGrant::Refresh, &job("a", &p))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(end, ExchangeEnd::Contended));
    assert_eq!(exact.calls(), 0, "no claim, no call");
}

#[tokio::test]
async fn a_newer_chain_stored_while_we_called_is_kept() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    // Between our claim (write 0) and our persist (write 1), another process stored a chain
    // it got elsewhere (a consent).
    store.meanwhile(
        1,
        ConnectionState {
            refresh_token: Some(SecretString::from("consent-chain")),
            ..Default::default()
        },
    );
    let end = refresh(&store, &exact, "a").await;
    assert!(
        matches!(end, ExchangeEnd::NewerChainStored { .. }),
        "{end:?}"
    );
    assert_eq!(store.token().as_deref(), Some("consent-chain"));
}

#[tokio::test]
async fn a_conflict_on_the_same_chain_is_written_through() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    // Someone touched the state (same chain, e.g. a status-only field) while we called.
    let mut touched = store.stored();
    touched.warning = Some("touched".into());
    store.meanwhile(1, touched);
    let end = refresh(&store, &exact, "a").await;
    assert!(
        matches!(
            end,
            ExchangeEnd::Done {
                end: End::Rotated,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(store.token(), Some(exact.current()));
}

#[tokio::test]
async fn a_lost_answer_is_the_one_loss_and_it_is_reported_not_repeated() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    exact.inner.lock().expect("lock").lose_answer_on = Some(0);
    let end = refresh(&store, &exact, "a").await;
    assert!(matches!(
        end,
        ExchangeEnd::Done {
            end: End::Failed { .. },
            ..
        }
    ));
    assert_eq!(
        store.token().as_deref(),
        Some("rt-0"),
        "nothing new to store"
    );
    assert!(store.stored().not_before.is_some(), "backoff recorded");
    let end = refresh(&store, &exact, "a").await;
    assert!(
        matches!(end, ExchangeEnd::Done { end: End::Dead, .. }),
        "{end:?}"
    );
    assert!(
        store.stored().dead.is_some(),
        "dead chain recorded, no more calls"
    );
    let p = policy();
    let spec = ChainSpec {
        suspend: false,
        fingerprint: "f",
        holder: "a",
    };
    assert!(matches!(
        decide(&store.stored(), &p, &spec, jiff::Timestamp::now()),
        Decision::Dead(_)
    ));
}

#[tokio::test]
async fn dying_after_the_call_leaves_exactly_the_claim() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    store.inner.lock().expect("lock").fail_from = Some(1); // the API server goes away
    let p = policy();
    let ja = job("a", &p);
    let exchange = exchange(&store, &exact, store.snapshot(), ChainGrant::Refresh, &ja);
    // The persist retries while the process lives; the process dies now.
    assert!(tokio::time::timeout(Duration::from_millis(300), exchange)
        .await
        .is_err());
    let stored = store.stored();
    assert_eq!(
        stored
            .refresh_token
            .map(|t| t.expose_secret().to_string())
            .as_deref(),
        Some("rt-0")
    );
    assert_eq!(
        stored.claim.map(|c| c.holder).as_deref(),
        Some("a"),
        "the claim, nothing more"
    );
    assert_eq!(exact.calls(), 1);
    assert_eq!(
        store.journalled_token(),
        Some(exact.current()),
        "the rotated token is in the journal before the persist is tried"
    );
}

#[tokio::test]
async fn the_persist_outlives_a_store_outage() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    store.inner.lock().expect("lock").fail_from = Some(1);
    let p = policy();
    let ja = job("a", &p);
    let heal = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        store.inner.lock().expect("lock").fail_from = None;
    };
    let (end, ()) = tokio::join!(
        exchange(&store, &exact, store.snapshot(), ChainGrant::Refresh, &ja),
        heal
    );
    assert!(matches!(
        end,
        Ok(ExchangeEnd::Done {
            end: End::Rotated,
            ..
        })
    ));
    assert_eq!(store.token(), Some(exact.current()));
}

#[tokio::test]
async fn two_exchanges_racing_on_one_chain_make_one_call() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    let p = policy();
    let (ja, jb) = (job("a", &p), job("b", &p));
    let snap = store.snapshot();
    let (a, b) = tokio::join!(
        exchange(&store, &exact, snap.clone(), ChainGrant::Refresh, &ja),
        exchange(&store, &exact, snap, ChainGrant::Refresh, &jb),
    );
    let ends = [
        a.unwrap_or_else(|e| panic!("{e}")),
        b.unwrap_or_else(|e| panic!("{e}")),
    ];
    let contended = ends
        .iter()
        .filter(|e| matches!(e, ExchangeEnd::Contended))
        .count();
    assert_eq!(contended, 1, "{ends:?}");
    assert_eq!(exact.calls(), 1);
    assert_eq!(store.token(), Some(exact.current()));
}

#[tokio::test]
async fn a_consent_never_replaces_a_chain_that_started_working_meanwhile() {
    let store = FakeStore::default();
    let exact = ScriptedExact::new("unused");
    store.meanwhile(
        1,
        ConnectionState {
            refresh_token: Some(SecretString::from("bootstrap-chain")),
            ..Default::default()
        },
    );
    let p = policy();
    let code = SecretString::from("stamp12!code");
    let grant = ChainGrant::Code {
        code: &code,
        redirect_uri: "https://op/oauth2/callback",
        supersede: false,
    };
    let end = exchange(&store, &exact, store.snapshot(), grant, &job("a", &p))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(end, ExchangeEnd::ConsentLost { .. }), "{end:?}");
    assert_eq!(store.token().as_deref(), Some("bootstrap-chain"));
}

#[derive(Debug, Clone)]
enum Step {
    /// Holder `0` refreshes from a fresh read.
    Fresh(u8),
    /// Holder refreshes from the snapshot taken `n` steps ago (a slow or stale process).
    Stale(u8, usize),
    /// Another writer touches the state (same chain) before the next write.
    Touch,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(Step::Fresh),
        (0u8..3, 1usize..4).prop_map(|(h, n)| Step::Stale(h, n)),
        Just(Step::Touch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the interleaving of fresh and stale processes and concurrent touches, no
    /// refresh token is ever presented after it was rotated, and the store always holds
    /// Exact's current token.
    #[test]
    fn no_interleaving_spends_a_refresh_token_twice(steps in proptest::collection::vec(step(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let store = FakeStore::with_token("rt-0");
            let exact = ScriptedExact::new("rt-0");
            let p = policy();
            let mut snapshots = vec![store.snapshot()];
            for s in steps {
                let (holder, snap) = match s {
                    Step::Fresh(h) => (h, store.snapshot()),
                    Step::Stale(h, n) => (h, snapshots[snapshots.len().saturating_sub(n)].clone()),
                    Step::Touch => {
                        let mut t = store.stored();
                        t.warning = Some("touched".into());
                        let next = store.inner.lock().expect("lock").writes;
                        store.meanwhile(next, t);
                        continue;
                    }
                };
                let name = format!("h{holder}");
                let _ = exchange(&store, &exact, snap, ChainGrant::Refresh, &job(&name, &p)).await;
                snapshots.push(store.snapshot());
                prop_assert!(exact.reused().is_empty(), "a rotated token was presented again");
                prop_assert_eq!(store.token(), Some(exact.current()));
            }
            Ok(())
        })?;
    }
}

mod bootstrap_import {
    use super::*;
    use crate::chain::{decide, ChainSpec, Decision, WaitWhy};
    use jiff::{SignedDuration, Timestamp};

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid")
    }

    fn access(at: Option<&str>, exp: Option<&str>) -> BootstrapAccess {
        BootstrapAccess {
            access_token: at.map(SecretString::from),
            expires_at: exp.map(SecretString::from),
        }
    }

    fn import(a: BootstrapAccess) -> (ConnectionState, Option<AccessIgnored>) {
        let mut st = ConnectionState {
            access_token: Some(SecretString::from("old-at")),
            last_error: Some("old failure".into()),
            ..Default::default()
        };
        st.times.consecutive_failures = 3;
        let ignored = import_bootstrap(
            &mut st,
            SecretString::from("RT!1"),
            "d1".into(),
            a,
            &policy(),
            now(),
        );
        (st, ignored)
    }

    fn spec() -> ChainSpec<'static> {
        ChainSpec {
            suspend: false,
            fingerprint: "f",
            holder: "me",
        }
    }

    #[test]
    fn an_access_token_with_its_expiry_is_published_at_once_and_refreshed_from_that_expiry() {
        let expires = now() + SignedDuration::from_secs(540);
        let (st, ignored) = import(access(Some("AT!1"), Some(&expires.to_string())));
        assert_eq!(ignored, None);
        assert_eq!(
            st.access_token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            Some("AT!1".into())
        );
        assert_eq!(st.times.access_token_expires_at, Some(expires));
        assert_eq!(st.times.consecutive_failures, 0);
        assert_eq!(st.last_error, None);
        // Exact's window opens 30 s before the expiry; the refresh token dates from about one
        // lifetime before it.
        assert_eq!(
            st.times.refresh_allowed_from,
            Some(expires - SignedDuration::from_secs(30))
        );
        assert_eq!(
            st.times.refresh_token_issued_at,
            Some(now() - SignedDuration::from_secs(60))
        );
        // No token call now: the stored token is restored into the workload Secret and the
        // first refresh is planned refreshBefore (25 s) ahead of the expiry.
        match decide(&st, &policy(), &spec(), now()) {
            Decision::Wait { due, why, restore } => {
                assert!(restore, "the imported token must be published");
                assert_eq!(why, WaitWhy::Schedule);
                assert_eq!(due, expires - SignedDuration::from_secs(25));
            }
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn unix_seconds_are_an_expiry_too() {
        let expires = now() + SignedDuration::from_secs(300);
        let (st, ignored) = import(access(Some("AT"), Some(&expires.as_second().to_string())));
        assert_eq!(ignored, None);
        assert_eq!(st.times.access_token_expires_at, Some(expires));
    }

    #[test]
    fn unusable_access_tokens_are_ignored_and_the_refresh_token_is_used_at_once() {
        let soon = (now() + SignedDuration::from_secs(10)).to_string();
        let past = (now() - SignedDuration::from_secs(1)).to_string();
        let far = (now() + SignedDuration::from_secs(3600)).to_string();
        let ok = (now() + SignedDuration::from_secs(300)).to_string();
        let cases: Vec<(BootstrapAccess, AccessIgnored)> = vec![
            (access(Some("AT"), None), AccessIgnored::Incomplete),
            (access(None, Some(&ok)), AccessIgnored::Incomplete),
            (
                access(Some("AT"), Some("tomorrow")),
                AccessIgnored::Malformed,
            ),
            (access(Some("AT"), Some("")), AccessIgnored::Malformed),
            (
                access(Some("AT"), Some("99999999999999999999")),
                AccessIgnored::Malformed,
            ),
            (
                access(Some(" "), Some(&ok)),
                AccessIgnored::NotAnAccessToken,
            ),
            // A mis-pointed key must never publish the refresh token to workloads.
            (
                access(Some("RT!1"), Some(&ok)),
                AccessIgnored::NotAnAccessToken,
            ),
            (
                access(Some("AT"), Some(&past)),
                AccessIgnored::Expired(past.parse().expect("ts")),
            ),
            // Inside refreshBefore: refreshed at once anyway.
            (
                access(Some("AT"), Some(&soon)),
                AccessIgnored::Expired(soon.parse().expect("ts")),
            ),
            (
                access(Some("AT"), Some(&far)),
                AccessIgnored::TooLate(far.parse().expect("ts")),
            ),
        ];
        for (a, want) in cases {
            let (st, ignored) = import(a);
            assert_eq!(ignored.as_ref(), Some(&want));
            assert!(st.access_token.is_none(), "{want:?}: no access token kept");
            assert_eq!(st.times.access_token_expires_at, None);
            assert_eq!(
                st.refresh_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string()),
                Some("RT!1".into())
            );
            assert_eq!(st.bootstrap_digest.as_deref(), Some("d1"));
            assert_eq!(
                decide(&st, &policy(), &spec(), now()),
                Decision::Call { restore: false },
                "{want:?}"
            );
            assert!(!want.to_string().contains("RT!1"));
        }
    }

    #[test]
    fn without_an_access_token_the_import_is_as_before() {
        let (st, ignored) = import(BootstrapAccess::default());
        assert_eq!(ignored, None);
        assert!(st.access_token.is_none());
        assert_eq!(
            decide(&st, &policy(), &spec(), now()),
            Decision::Call { restore: false }
        );
    }
}

/// A token endpoint that notes what the store's journal held when the call went out.
struct Witness<'a> {
    store: &'a FakeStore,
    exact: &'a ScriptedExact,
    intent_at_call: Mutex<Option<(String, String)>>,
}

impl TokenCaller for Witness<'_> {
    async fn call(&self, grant: Grant<'_>) -> TokenOutcome {
        *self.intent_at_call.lock().expect("lock") =
            self.store.intended.lock().expect("lock").clone();
        self.exact.call(grant).await
    }
}

#[tokio::test]
async fn a_refresh_journals_its_intent_before_the_call_and_every_answer_drops_it() {
    let store = FakeStore::with_token("rt-0");
    let exact = ScriptedExact::new("rt-0");
    let witness = Witness {
        store: &store,
        exact: &exact,
        intent_at_call: Mutex::new(None),
    };
    let p = policy();
    let end = exchange(
        &store,
        &witness,
        store.snapshot(),
        ChainGrant::Refresh,
        &job("a", &p),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(
            end,
            ExchangeEnd::Done {
                end: End::Rotated,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(
        witness.intent_at_call.lock().expect("lock").clone(),
        Some((crate::state::digest("rt-0"), "a".to_string())),
        "the intent names the spent chain (by digest) and the holder before the call"
    );
    assert_eq!(
        *store.intended.lock().expect("lock"),
        None,
        "answered: dropped"
    );
    // A refused refresh (the chain was spent elsewhere) drops the intent too.
    store.put(ConnectionState {
        refresh_token: Some(SecretString::from("rt-0")),
        ..Default::default()
    });
    let end = refresh(&store, &exact, "b").await;
    assert!(
        matches!(end, ExchangeEnd::Done { end: End::Dead, .. }),
        "{end:?}"
    );
    assert_eq!(*store.intended.lock().expect("lock"), None);
}

/// An "Old refresh token used." on a chain whose refresh the journal replay found
/// interrupted names the lost response; on any other chain it keeps the usual account.
#[tokio::test]
async fn old_token_used_after_an_interrupted_refresh_names_the_lost_response() {
    for (interrupted_chain, in_flight) in [("rt-0", true), ("rt-other", false)] {
        let exact = ScriptedExact::new("rt-0");
        // The interrupted call reached Exact: rt-0 is retired, its answer died.
        let _ = exact
            .call(Grant::RefreshToken(&SecretString::from("rt-0")))
            .await;
        let store = FakeStore::default();
        store.put(ConnectionState {
            refresh_token: Some(SecretString::from("rt-0")),
            interrupted: Some(crate::state::InterruptedRefresh {
                chain: crate::state::digest(interrupted_chain),
                at: jiff::Timestamp::now(),
                holder: "op-0-dead".into(),
            }),
            ..Default::default()
        });
        let end = refresh(&store, &exact, "op-1").await;
        let ExchangeEnd::Done {
            end: End::Dead,
            state,
            ..
        } = end
        else {
            panic!("{end:?}");
        };
        let message = state.dead.map(|d| d.message).unwrap_or_default();
        assert!(message.contains("Old refresh token used."), "{message}");
        assert_eq!(
            message.contains("lost to a process death during the token call"),
            in_flight,
            "{message}"
        );
        assert_eq!(message.contains("op-0-dead"), in_flight, "{message}");
        assert!(!message.contains("rt-0"), "never the token: {message}");
    }
}

#[tokio::test]
async fn a_new_chain_forgets_the_interruption_of_the_old_one() {
    let store = FakeStore::default();
    store.put(ConnectionState {
        refresh_token: Some(SecretString::from("rt-0")),
        interrupted: Some(crate::state::InterruptedRefresh {
            chain: crate::state::digest("rt-0"),
            at: jiff::Timestamp::now(),
            holder: "op-0-dead".into(),
        }),
        ..Default::default()
    });
    // The interrupted call never reached Exact: the chain goes on.
    let exact = ScriptedExact::new("rt-0");
    let end = refresh(&store, &exact, "op-1").await;
    assert!(
        matches!(
            end,
            ExchangeEnd::Done {
                end: End::Rotated,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(store.stored().interrupted, None);
}
