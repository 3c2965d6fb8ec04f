//! Consent capabilities, pure (no I/O): the **start ticket** that makes a start link usable,
//! and the OAuth **state** that carries the ticket through Exact and back.
//!
//! Anyone on the Internet can reach the operator's start URL, so the URL alone must open
//! nothing. A ticket is issued only into `status.authorizationUrl` (readable only by those
//! RBAC lets see the connection), only while the connection waits for consent or someone
//! with `patch` rights asked for re-authorization. It is HMAC-signed, bound to the
//! connection's UID, short-lived, and spent when a consent completes through it: the state
//! carries the ticket's nonce, and the callback records that nonce as used in the
//! connection's state Secret before it calls Exact. It is deliberately not spent when the
//! start URL is merely opened: link previews and a person clicking twice must not burn it.
//!
//! Tickets and states share one key (the `exact-operator-oauth-state-key` Secret) but are
//! signed under different purposes, so neither can stand in for the other.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Annotation by which someone with `patch` rights on a connection asks for a new consent
/// although its chain works (`kubectl exact authorize --force` sets it to the current time).
/// A ticket is issued for that request for one ticket lifetime; once a consent through it
/// completed, the request is handled and no further ticket is issued for it.
pub const REAUTHORIZE_ANNOTATION: &str = "exact-operator.io/reauthorize-requested-at";

/// Query parameter of the start URL that carries the ticket.
pub const TICKET_PARAM: &str = "ticket";

/// The signing key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Wraps key bytes (at least 32 random bytes in production).
    pub fn new(bytes: Vec<u8>) -> Self {
        SigningKey(bytes)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a link may replace the connection's chain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum Grounds {
    /// The connection had no working chain when the ticket was issued; a consent through it
    /// is refused if the connection got a working chain meanwhile by another way.
    Consent,
    /// Someone asked for re-authorization with the annotation set to `requested_at`; valid
    /// while the annotation still says so and the request was not handled yet.
    Reauthorize {
        /// The annotation's value.
        requested_at: String,
    },
}

/// What a start ticket vouches for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TicketClaims {
    /// Namespace of the connection.
    pub ns: String,
    /// Name of the connection.
    pub name: String,
    /// UID of the connection (a re-created connection does not accept old tickets).
    pub uid: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Random nonce; spent when a consent completes through this ticket.
    pub nonce: String,
    /// Why it was issued.
    #[serde(flatten)]
    pub grounds: Grounds,
}

/// What an OAuth `state` vouches for: the ticket it was started with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StateClaims {
    /// Namespace of the connection.
    pub ns: String,
    /// Name of the connection.
    pub name: String,
    /// UID of the connection when the flow started.
    pub uid: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// The ticket's nonce: single use across every state started from that ticket.
    pub nonce: String,
    /// The ticket's grounds.
    #[serde(flatten)]
    pub grounds: Grounds,
}

/// Why a ticket or state is refused. Shown to the person in the browser (no secrets).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignedError {
    /// No value.
    #[error("the link carries no {0}")]
    Missing(&'static str),
    /// Not produced by this operator, altered, or for another purpose.
    #[error("the {0} is invalid: it was not issued by this operator or was tampered with")]
    Tampered(&'static str),
    /// Older than its lifetime.
    #[error("the authorization link expired")]
    Expired,
}

const TICKET: &str = "ticket";
const STATE: &str = "state";

fn mac(key: &SigningKey, purpose: &str, payload: &str) -> HmacSha256 {
    let mut m =
        <HmacSha256 as Mac>::new_from_slice(&key.0).expect("HMAC accepts keys of any length");
    m.update(purpose.as_bytes());
    m.update(b".");
    m.update(payload.as_bytes());
    m
}

fn sign<T: Serialize>(key: &SigningKey, purpose: &str, claims: &T) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let sig = URL_SAFE_NO_PAD.encode(mac(key, purpose, &payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Verifies signature and purpose; the caller checks expiry (both kinds carry `exp`).
fn verify<T: DeserializeOwned>(
    key: &SigningKey,
    purpose: &'static str,
    value: &str,
) -> Result<T, SignedError> {
    if value.is_empty() {
        return Err(SignedError::Missing(purpose));
    }
    let tampered = || SignedError::Tampered(purpose);
    let (payload, sig) = value.split_once('.').ok_or_else(tampered)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| tampered())?;
    mac(key, purpose, payload)
        .verify_slice(&sig)
        .map_err(|_| tampered())?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| tampered())?;
    serde_json::from_slice(&bytes).map_err(|_| tampered())
}

fn random_nonce() -> String {
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    hex::encode(nonce)
}

fn expiry(now: Timestamp, ttl: Duration) -> i64 {
    now.as_second()
        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// Issues a new ticket.
pub fn issue_ticket(
    key: &SigningKey,
    ns: &str,
    name: &str,
    uid: &str,
    grounds: Grounds,
    now: Timestamp,
    ttl: Duration,
) -> String {
    sign(
        key,
        TICKET,
        &TicketClaims {
            ns: ns.into(),
            name: name.into(),
            uid: uid.into(),
            exp: expiry(now, ttl),
            nonce: random_nonce(),
            grounds,
        },
    )
}

/// Verifies a ticket's signature and expiry.
pub fn verify_ticket(
    key: &SigningKey,
    ticket: &str,
    now: Timestamp,
) -> Result<TicketClaims, SignedError> {
    let claims: TicketClaims = verify(key, TICKET, ticket)?;
    if claims.exp <= now.as_second() {
        return Err(SignedError::Expired);
    }
    Ok(claims)
}

/// The `state` sent to Exact for a flow started with `ticket`; lives `ttl` at most, and never
/// longer than the ticket.
pub fn state_for(key: &SigningKey, ticket: &TicketClaims, now: Timestamp, ttl: Duration) -> String {
    sign(
        key,
        STATE,
        &StateClaims {
            ns: ticket.ns.clone(),
            name: ticket.name.clone(),
            uid: ticket.uid.clone(),
            exp: expiry(now, ttl).min(ticket.exp),
            nonce: ticket.nonce.clone(),
            grounds: ticket.grounds.clone(),
        },
    )
}

/// Verifies a state's signature and expiry.
pub fn verify_state(
    key: &SigningKey,
    state: &str,
    now: Timestamp,
) -> Result<StateClaims, SignedError> {
    let claims: StateClaims = verify(key, STATE, state)?;
    if claims.exp <= now.as_second() {
        return Err(SignedError::Expired);
    }
    Ok(claims)
}

/// The operator's start URL of a connection (without a ticket, it only explains how to get one).
pub fn start_url(public_url: &str, ns: &str, name: &str) -> String {
    format!(
        "{}/oauth2/start/{ns}/{name}",
        public_url.trim_end_matches('/')
    )
}

/// The start URL carrying `ticket`.
pub fn start_link(public_url: &str, ns: &str, name: &str, ticket: &str) -> String {
    let mut url = start_url(public_url, ns, name);
    url.push('?');
    url.push_str(TICKET_PARAM);
    url.push('=');
    // base64url and '.' need no escaping in a query.
    url.push_str(ticket);
    url
}

/// The ticket inside a start link, if any.
pub fn ticket_of(link: &str) -> Option<&str> {
    let (_, query) = link.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
        .filter(|t| !t.is_empty())
}

/// What the connection looks like to the ticket issuer (from its status and state).
#[derive(Debug, Clone, Copy)]
pub struct IssueInput<'a> {
    /// The connection waits for consent (AwaitingAuthorization, ReauthorizationRequired).
    pub awaiting_consent: bool,
    /// Value of the re-authorization annotation, if set.
    pub reauthorize_requested_at: Option<&'a str>,
    /// The request the last completed re-authorization answered.
    pub handled_reauthorize: Option<&'a str>,
    /// The link currently in status (reused while it has at least half its life left, so
    /// status is not rewritten on every reconcile).
    pub current_link: Option<&'a str>,
}

/// Why a connection gets a ticket now, if it does: it waits for consent, or a
/// re-authorization request is pending (not handled, and not older than one ticket lifetime,
/// so a forgotten annotation does not keep a door open).
pub fn grounds_now(input: &IssueInput<'_>, now: Timestamp, ttl: Duration) -> Option<Grounds> {
    if input.awaiting_consent {
        return Some(Grounds::Consent);
    }
    let requested = input.reauthorize_requested_at?;
    if input.handled_reauthorize == Some(requested) {
        return None;
    }
    let at: Timestamp = requested.parse().ok()?;
    let age = now.duration_since(at);
    let fresh = age < jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX)
        && age > -jiff::SignedDuration::from_secs(300);
    fresh.then(|| Grounds::Reauthorize {
        requested_at: requested.to_string(),
    })
}

/// The start link to show in status now: the current one while it is still good for these
/// grounds and has at least half its life left, otherwise a new ticket; `None` when no ticket
/// may be issued.
#[allow(clippy::too_many_arguments)]
pub fn link_now(
    key: &SigningKey,
    public_url: &str,
    ns: &str,
    name: &str,
    uid: &str,
    input: &IssueInput<'_>,
    now: Timestamp,
    ttl: Duration,
) -> Option<String> {
    let grounds = grounds_now(input, now, ttl)?;
    let half = i64::try_from(ttl.as_secs() / 2).unwrap_or(i64::MAX);
    let reusable = input.current_link.filter(|link| {
        link.starts_with(&start_url(public_url, ns, name))
            && ticket_of(link)
                .and_then(|t| verify_ticket(key, t, now).ok())
                .is_some_and(|c| {
                    c.uid == uid && c.grounds == grounds && c.exp - now.as_second() >= half
                })
    });
    if let Some(link) = reusable {
        return Some(link.to_string());
    }
    let ticket = issue_ticket(key, ns, name, uid, grounds, now, ttl);
    Some(start_link(public_url, ns, name, &ticket))
}

/// Why a consent through a ticket may not go ahead. Decided before Exact is asked for
/// anything, so a refused consent spends no code and changes nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    /// A consent already completed through this ticket.
    #[error("this authorization link was already used")]
    AlreadyUsed,
    /// The ticket was for a connection waiting for consent, and it has a working chain now.
    #[error("the connection was authorized meanwhile by another way; nothing was changed. To replace its authorization, run `kubectl exact authorize --force`")]
    AlreadyAuthorized,
    /// The re-authorization request the ticket was issued for was withdrawn or replaced.
    #[error("the re-authorization request this link was issued for is no longer current")]
    RequestWithdrawn,
}

/// Whether a consent through a ticket with `grounds` and `nonce` may replace what is stored.
pub fn may_consent(
    grounds: &Grounds,
    nonce: &str,
    stored: &crate::state::ConnectionState,
    reauthorize_annotation: Option<&str>,
) -> Result<(), Refused> {
    if stored.used_auth_nonces.iter().any(|n| n == nonce) {
        return Err(Refused::AlreadyUsed);
    }
    match grounds {
        Grounds::Consent if stored.has_working_chain() => Err(Refused::AlreadyAuthorized),
        Grounds::Consent => Ok(()),
        Grounds::Reauthorize { requested_at } => {
            if stored.handled_reauthorize.as_deref() == Some(requested_at) {
                Err(Refused::AlreadyUsed)
            } else if reauthorize_annotation != Some(requested_at) {
                Err(Refused::RequestWithdrawn)
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }
    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    const TTL: Duration = Duration::from_secs(1800);

    #[test]
    fn ticket_round_trip_and_expiry() {
        let t = issue_ticket(&key(), "ns", "c", "u1", Grounds::Consent, at(1000), TTL);
        let c = verify_ticket(&key(), &t, at(1000)).expect("valid");
        assert_eq!(
            (c.ns.as_str(), c.name.as_str(), c.uid.as_str()),
            ("ns", "c", "u1")
        );
        assert_eq!(c.exp, 2800);
        assert_eq!(
            verify_ticket(&key(), &t, at(2800)),
            Err(SignedError::Expired)
        );
    }

    #[test]
    fn another_key_or_an_edit_or_garbage_is_tampered() {
        let t = issue_ticket(&key(), "ns", "c", "u1", Grounds::Consent, at(0), TTL);
        let other = SigningKey::new(b"another operator's key 32 bytes!".to_vec());
        assert_eq!(
            verify_ticket(&other, &t, at(0)),
            Err(SignedError::Tampered("ticket"))
        );
        let (payload, sig) = t.split_once('.').expect("dot");
        let mut claims: TicketClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        claims.name = "victim".into();
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"))
        );
        assert_eq!(
            verify_ticket(&key(), &forged, at(0)),
            Err(SignedError::Tampered("ticket"))
        );
        for bad in ["no-dot", "!!.??", ".", "a.b"] {
            assert_eq!(
                verify_ticket(&key(), bad, at(0)),
                Err(SignedError::Tampered("ticket"))
            );
        }
        assert_eq!(
            verify_ticket(&key(), "", at(0)),
            Err(SignedError::Missing("ticket"))
        );
    }

    #[test]
    fn a_ticket_is_no_state_and_a_state_is_no_ticket() {
        let t = issue_ticket(&key(), "ns", "c", "u1", Grounds::Consent, at(0), TTL);
        assert_eq!(
            verify_state(&key(), &t, at(0)),
            Err(SignedError::Tampered("state"))
        );
        let claims = verify_ticket(&key(), &t, at(0)).expect("valid");
        let s = state_for(&key(), &claims, at(0), Duration::from_secs(600));
        assert_eq!(
            verify_ticket(&key(), &s, at(0)),
            Err(SignedError::Tampered("ticket"))
        );
        let st = verify_state(&key(), &s, at(0)).expect("valid state");
        assert_eq!(
            st.nonce, claims.nonce,
            "the state carries the ticket's nonce"
        );
        assert_eq!(st.exp, 600);
    }

    #[test]
    fn a_state_never_outlives_its_ticket() {
        let t = issue_ticket(&key(), "ns", "c", "u", Grounds::Consent, at(0), TTL);
        let claims = verify_ticket(&key(), &t, at(1700)).expect("valid");
        let s = state_for(&key(), &claims, at(1700), Duration::from_secs(600));
        assert_eq!(verify_state(&key(), &s, at(1700)).expect("valid").exp, 1800);
    }

    fn input<'a>(awaiting: bool, req: Option<&'a str>, handled: Option<&'a str>) -> IssueInput<'a> {
        IssueInput {
            awaiting_consent: awaiting,
            reauthorize_requested_at: req,
            handled_reauthorize: handled,
            current_link: None,
        }
    }

    #[test]
    fn tickets_only_while_waiting_or_for_a_fresh_unhandled_request() {
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().expect("time");
        assert_eq!(
            grounds_now(&input(true, None, None), now, TTL),
            Some(Grounds::Consent)
        );
        assert_eq!(grounds_now(&input(false, None, None), now, TTL), None);
        let req = "2026-12-01T11:50:00Z";
        assert_eq!(
            grounds_now(&input(false, Some(req), None), now, TTL),
            Some(Grounds::Reauthorize {
                requested_at: req.into()
            })
        );
        assert_eq!(
            grounds_now(&input(false, Some(req), Some(req)), now, TTL),
            None
        );
        assert_eq!(
            grounds_now(&input(false, Some("2026-12-01T11:00:00Z"), None), now, TTL),
            None,
            "older than one ticket lifetime"
        );
        assert_eq!(
            grounds_now(&input(false, Some("tomorrow"), None), now, TTL),
            None
        );
    }

    #[test]
    fn consent_gate() {
        use crate::state::{ConnectionState, DeadChain};
        use secrecy::SecretString;
        let empty = ConnectionState::default();
        let working = ConnectionState {
            refresh_token: Some(SecretString::from("r")),
            ..Default::default()
        };
        let dead = ConnectionState {
            dead: Some(DeadChain {
                reason: "ReauthorizationRequired".into(),
                message: String::new(),
                fingerprint: String::new(),
            }),
            ..working.clone()
        };
        let c = Grounds::Consent;
        assert_eq!(may_consent(&c, "n", &empty, None), Ok(()));
        assert_eq!(may_consent(&c, "n", &dead, None), Ok(()));
        assert_eq!(
            may_consent(&c, "n", &working, None),
            Err(Refused::AlreadyAuthorized)
        );
        let used = ConnectionState {
            used_auth_nonces: vec!["n".into()],
            ..Default::default()
        };
        assert_eq!(may_consent(&c, "n", &used, None), Err(Refused::AlreadyUsed));
        let r = Grounds::Reauthorize {
            requested_at: "t1".into(),
        };
        assert_eq!(may_consent(&r, "n", &working, Some("t1")), Ok(()));
        assert_eq!(
            may_consent(&r, "n", &working, Some("t2")),
            Err(Refused::RequestWithdrawn)
        );
        assert_eq!(
            may_consent(&r, "n", &working, None),
            Err(Refused::RequestWithdrawn)
        );
        let handled = ConnectionState {
            handled_reauthorize: Some("t1".into()),
            ..working
        };
        assert_eq!(
            may_consent(&r, "n", &handled, Some("t1")),
            Err(Refused::AlreadyUsed)
        );
    }

    #[test]
    fn the_link_is_reused_until_half_its_life_then_renewed() {
        let k = key();
        let base = "https://op.example.com/";
        let l1 = link_now(
            &k,
            base,
            "ns",
            "c",
            "u",
            &input(true, None, None),
            at(0),
            TTL,
        )
        .expect("link");
        assert!(
            l1.starts_with("https://op.example.com/oauth2/start/ns/c?ticket="),
            "{l1}"
        );
        let again = |link: &str, now: i64, uid: &str| {
            let i = IssueInput {
                current_link: Some(link),
                ..input(true, None, None)
            };
            link_now(&k, base, "ns", "c", uid, &i, at(now), TTL).expect("link")
        };
        assert_eq!(again(&l1, 900, "u"), l1);
        assert_ne!(again(&l1, 901, "u"), l1);
        assert_ne!(again(&l1, 10, "other-uid"), l1);
        assert_eq!(ticket_of("https://x/oauth2/start/a/b"), None);
    }
}
