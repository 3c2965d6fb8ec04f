//! The connection's durable state, kept in a Secret owned by the connection (never the
//! workload's Secret): the refresh token, the current access token (so the workload Secret can
//! be restored without a token call), timing, the refresh claim and the dead-chain marker.
//! This module only converts between that model and Secret data; it does no I/O.

use crate::schedule::TokenTimes;
use crate::token::MeInfo;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Who is allowed to call the token endpoint for this connection, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Identity of the operator process holding the claim.
    pub holder: String,
    /// After this instant the claim is void (its holder crashed or hung).
    pub until: Timestamp,
}

/// Why the chain cannot be refreshed any more, and under which inputs that was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadChain {
    /// Condition reason: ReauthorizationRequired or InvalidClient.
    pub reason: String,
    /// Human-readable account (no secrets).
    pub message: String,
    /// Digest of the inputs (client id/secret, specs) that failed; a change allows a new try.
    pub fingerprint: String,
}

/// A refresh whose process died while its token call was in flight (found by the journal
/// replay of its successor): Exact may have rotated the chain without anyone receiving the
/// answer. Kept so that a later "Old refresh token used." can say why the chain died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptedRefresh {
    /// Digest of the refresh token that call spent (never the token).
    pub chain: String,
    /// When the call was about to be sent.
    pub at: Timestamp,
    /// Identity of the process that died.
    pub holder: String,
}

/// What a Me answer changed about who the connection is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityChange {
    /// (previous, new) Exact user ID.
    pub user: Option<(String, String)>,
    /// (previous, new) division.
    pub division: Option<(i64, i64)>,
}

/// Everything the operator remembers about one connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectionState {
    /// The current refresh token (rotates on every refresh).
    pub refresh_token: Option<SecretString>,
    /// The current access token.
    pub access_token: Option<SecretString>,
    /// Expiries, failures and errors used by the schedule.
    pub times: TokenTimes,
    /// When the last successful token call was sent.
    pub last_refresh_at: Option<Timestamp>,
    /// The division the token is used with.
    pub division: Option<i64>,
    /// Digest of the last imported bootstrap refresh token.
    pub bootstrap_digest: Option<String>,
    /// The refresh claim, if any.
    pub claim: Option<Claim>,
    /// Set when the chain is dead.
    pub dead: Option<DeadChain>,
    /// Earliest time of the next token call decided after a failure or refusal.
    pub not_before: Option<Timestamp>,
    /// A warning about the last grant (e.g. an unusable expires_in), shown in status.
    pub warning: Option<String>,
    /// Why the last token call failed (no secrets), while failures continue.
    pub last_error: Option<String>,
    /// Nonces of start tickets through which a consent completed (the last few): each
    /// ticket opens one consent only.
    pub used_auth_nonces: Vec<String>,
    /// The Exact user whose consent the chain is (`UserID` of `/api/v1/current/Me`).
    pub exact_user_id: Option<String>,
    /// That user's `UserName`.
    pub exact_user_name: Option<String>,
    /// The user before the last consent, when that consent was given by someone else.
    pub previous_exact_user_id: Option<String>,
    /// The re-authorization request (annotation value) the last consent answered.
    pub handled_reauthorize: Option<String>,
    /// Token calls per hour over the last day, for Exact's daily cap (`crate::budget`).
    pub token_calls: Vec<crate::budget::Bucket>,
    /// A refresh of the stored chain interrupted by a process death (until a new chain).
    pub interrupted: Option<InterruptedRefresh>,
}

const K_REFRESH: &str = "refresh_token";
const K_ACCESS: &str = "access_token";
const K_EXPIRES: &str = "access_token_expires_at";
const K_RT_ISSUED: &str = "refresh_token_issued_at";
const K_ALLOWED: &str = "refresh_allowed_from";
const K_LAST: &str = "last_refresh_at";
const K_FAILURES: &str = "consecutive_failures";
const K_TOO_EARLY: &str = "too_early_refusals";
const K_ERRORS: &str = "recent_errors";
const K_DIVISION: &str = "division";
const K_BOOTSTRAP: &str = "bootstrap_digest";
const K_CLAIM_HOLDER: &str = "claim_holder";
const K_CLAIM_UNTIL: &str = "claim_until";
const K_DEAD_REASON: &str = "dead_reason";
const K_DEAD_MESSAGE: &str = "dead_message";
const K_DEAD_FINGERPRINT: &str = "dead_fingerprint";
const K_NOT_BEFORE: &str = "not_before";
const K_WARNING: &str = "warning";
const K_NONCES: &str = "used_auth_nonces";
const K_LAST_ERROR: &str = "last_error";
const K_USER_ID: &str = "exact_user_id";
const K_USER_NAME: &str = "exact_user_name";
const K_PREVIOUS_USER_ID: &str = "previous_exact_user_id";
const K_HANDLED_REAUTHORIZE: &str = "handled_reauthorize";
const K_TOKEN_CALLS: &str = "token_calls_hourly";
const K_INTERRUPTED_CHAIN: &str = "interrupted_chain";
const K_INTERRUPTED_AT: &str = "interrupted_at";
const K_INTERRUPTED_HOLDER: &str = "interrupted_holder";

/// Hex SHA-256 of a secret value: safe to show and compare.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

fn time(data: &BTreeMap<String, ByteString>, key: &str) -> Option<Timestamp> {
    text(data, key).and_then(|s| s.parse().ok())
}

impl ConnectionState {
    /// Reads the state from a Secret's data; unreadable fields count as absent.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Self {
        let claim = match (text(data, K_CLAIM_HOLDER), time(data, K_CLAIM_UNTIL)) {
            (Some(holder), Some(until)) => Some(Claim { holder, until }),
            _ => None,
        };
        let dead = match (text(data, K_DEAD_REASON), text(data, K_DEAD_FINGERPRINT)) {
            (Some(reason), Some(fingerprint)) => Some(DeadChain {
                reason,
                message: text(data, K_DEAD_MESSAGE).unwrap_or_default(),
                fingerprint,
            }),
            _ => None,
        };
        ConnectionState {
            refresh_token: text(data, K_REFRESH).map(SecretString::from),
            access_token: text(data, K_ACCESS).map(SecretString::from),
            times: TokenTimes {
                access_token_expires_at: time(data, K_EXPIRES),
                refresh_token_issued_at: time(data, K_RT_ISSUED),
                refresh_allowed_from: time(data, K_ALLOWED),
                consecutive_failures: text(data, K_FAILURES)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                too_early_refusals: text(data, K_TOO_EARLY)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                recent_errors: text(data, K_ERRORS)
                    .map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect())
                    .unwrap_or_default(),
            },
            last_refresh_at: time(data, K_LAST),
            division: text(data, K_DIVISION).and_then(|s| s.parse().ok()),
            bootstrap_digest: text(data, K_BOOTSTRAP),
            claim,
            dead,
            not_before: time(data, K_NOT_BEFORE),
            warning: text(data, K_WARNING),
            last_error: text(data, K_LAST_ERROR),
            used_auth_nonces: text(data, K_NONCES)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            exact_user_id: text(data, K_USER_ID),
            exact_user_name: text(data, K_USER_NAME),
            previous_exact_user_id: text(data, K_PREVIOUS_USER_ID),
            handled_reauthorize: text(data, K_HANDLED_REAUTHORIZE),
            token_calls: text(data, K_TOKEN_CALLS)
                .map(|s| crate::budget::from_text(&s))
                .unwrap_or_default(),
            interrupted: match (
                text(data, K_INTERRUPTED_CHAIN),
                time(data, K_INTERRUPTED_AT),
            ) {
                (Some(chain), Some(at)) => Some(InterruptedRefresh {
                    chain,
                    at,
                    holder: text(data, K_INTERRUPTED_HOLDER).unwrap_or_default(),
                }),
                _ => None,
            },
        }
    }

    /// Writes the state as Secret data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), ByteString(v.into_bytes()));
            }
        };
        put(
            K_REFRESH,
            self.refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        );
        put(
            K_ACCESS,
            self.access_token
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        );
        put(
            K_EXPIRES,
            self.times.access_token_expires_at.map(|t| t.to_string()),
        );
        put(
            K_RT_ISSUED,
            self.times.refresh_token_issued_at.map(|t| t.to_string()),
        );
        put(
            K_ALLOWED,
            self.times.refresh_allowed_from.map(|t| t.to_string()),
        );
        put(K_LAST, self.last_refresh_at.map(|t| t.to_string()));
        put(
            K_FAILURES,
            Some(self.times.consecutive_failures.to_string()),
        );
        put(K_TOO_EARLY, Some(self.times.too_early_refusals.to_string()));
        if !self.times.recent_errors.is_empty() {
            let joined: Vec<String> = self
                .times
                .recent_errors
                .iter()
                .map(|t| t.to_string())
                .collect();
            put(K_ERRORS, Some(joined.join(",")));
        }
        put(K_DIVISION, self.division.map(|d| d.to_string()));
        put(K_BOOTSTRAP, self.bootstrap_digest.clone());
        if let Some(c) = &self.claim {
            put(K_CLAIM_HOLDER, Some(c.holder.clone()));
            put(K_CLAIM_UNTIL, Some(c.until.to_string()));
        }
        if let Some(d) = &self.dead {
            put(K_DEAD_REASON, Some(d.reason.clone()));
            put(K_DEAD_MESSAGE, Some(d.message.clone()));
            put(K_DEAD_FINGERPRINT, Some(d.fingerprint.clone()));
        }
        put(K_NOT_BEFORE, self.not_before.map(|t| t.to_string()));
        put(K_WARNING, self.warning.clone());
        put(K_LAST_ERROR, self.last_error.clone());
        if !self.used_auth_nonces.is_empty() {
            put(K_NONCES, Some(self.used_auth_nonces.join(",")));
        }
        put(K_USER_ID, self.exact_user_id.clone());
        put(K_USER_NAME, self.exact_user_name.clone());
        put(K_PREVIOUS_USER_ID, self.previous_exact_user_id.clone());
        put(K_HANDLED_REAUTHORIZE, self.handled_reauthorize.clone());
        if !self.token_calls.is_empty() {
            put(
                K_TOKEN_CALLS,
                Some(crate::budget::to_text(&self.token_calls)),
            );
        }
        if let Some(i) = &self.interrupted {
            put(K_INTERRUPTED_CHAIN, Some(i.chain.clone()));
            put(K_INTERRUPTED_AT, Some(i.at.to_string()));
            put(K_INTERRUPTED_HOLDER, Some(i.holder.clone()));
        }
        m
    }

    /// Whether a claim by someone other than `me` is still in force at `now`.
    pub fn claimed_by_other(&self, me: &str, now: Timestamp) -> Option<&Claim> {
        self.claim
            .as_ref()
            .filter(|c| c.holder != me && c.until > now)
    }

    /// Records who the token belongs to (a Me answer). `new_consent`: the chain was just
    /// created by a consent, so a different user than before means someone else took the
    /// connection over. `spec_division`: the division fixed in spec, if any (then the user's
    /// current division is not the connection's).
    pub fn record_me(
        &mut self,
        me: &MeInfo,
        new_consent: bool,
        spec_division: Option<i64>,
    ) -> IdentityChange {
        let mut change = IdentityChange::default();
        if let (Some(old), Some(new)) = (&self.exact_user_id, &me.user_id) {
            if old != new {
                change.user = Some((old.clone(), new.clone()));
            }
        }
        if new_consent {
            self.previous_exact_user_id = change.user.as_ref().map(|(old, _)| old.clone());
        }
        if me.user_id.is_some() {
            self.exact_user_id = me.user_id.clone();
            self.exact_user_name = me.user_name.clone();
        }
        if spec_division.is_none() {
            if let Some(old) = self.division.filter(|d| *d != me.current_division) {
                change.division = Some((old, me.current_division));
            }
            if new_consent || self.division.is_none() {
                self.division = Some(me.current_division);
            }
        }
        change
    }

    /// Whether the stored chain can still be refreshed: a refresh token not marked dead.
    /// A consent through a `Consent` ticket must not replace such a chain.
    pub fn has_working_chain(&self) -> bool {
        self.refresh_token.is_some() && self.dead.is_none()
    }

    /// Whether the stored access token is still usable at `now`.
    pub fn access_token_valid(&self, now: Timestamp) -> bool {
        self.access_token.is_some() && self.times.access_token_expires_at.is_some_and(|e| e > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("valid");
        let st = ConnectionState {
            refresh_token: Some(SecretString::from("r1")),
            access_token: Some(SecretString::from("a1")),
            times: TokenTimes {
                access_token_expires_at: Some(t(600)),
                refresh_token_issued_at: Some(t(0)),
                refresh_allowed_from: Some(t(570)),
                consecutive_failures: 2,
                too_early_refusals: 1,
                recent_errors: vec![t(1), t(2)],
            },
            last_refresh_at: Some(t(0)),
            division: Some(42),
            bootstrap_digest: Some(digest("boot")),
            claim: Some(Claim {
                holder: "op-1".into(),
                until: t(60),
            }),
            dead: Some(DeadChain {
                reason: "ReauthorizationRequired".into(),
                message: "m".into(),
                fingerprint: "f".into(),
            }),
            not_before: Some(t(30)),
            warning: Some("w".into()),
            last_error: Some("e".into()),
            used_auth_nonces: vec!["n1".into(), "n2".into()],
            exact_user_id: Some("u-1".into()),
            exact_user_name: Some("jan@example.invalid".into()),
            previous_exact_user_id: Some("u-0".into()),
            handled_reauthorize: Some("2026-12-01T12:00:00Z".into()),
            token_calls: vec![crate::budget::Bucket {
                hour: 500_000,
                calls: 3,
                retries: 1,
            }],
            interrupted: Some(InterruptedRefresh {
                chain: digest("r0"),
                at: t(5),
                holder: "op-0".into(),
            }),
        };
        let back = ConnectionState::from_data(&st.to_data());
        assert_eq!(back.interrupted, st.interrupted);
        assert_eq!(
            back.refresh_token.map(|s| s.expose_secret().to_string()),
            Some("r1".into())
        );
        assert_eq!(
            back.access_token.map(|s| s.expose_secret().to_string()),
            Some("a1".into())
        );
        assert_eq!(back.times, st.times);
        assert_eq!(back.division, Some(42));
        assert_eq!(back.claim, st.claim);
        assert_eq!(back.dead, st.dead);
        assert_eq!(back.not_before, st.not_before);
        assert_eq!(back.bootstrap_digest, st.bootstrap_digest);
        assert_eq!(back.warning.as_deref(), Some("w"));
        assert_eq!(back.last_error.as_deref(), Some("e"));
        assert_eq!(
            back.used_auth_nonces,
            vec!["n1".to_string(), "n2".to_string()]
        );
        assert_eq!(back.exact_user_id.as_deref(), Some("u-1"));
        assert_eq!(back.exact_user_name.as_deref(), Some("jan@example.invalid"));
        assert_eq!(back.previous_exact_user_id.as_deref(), Some("u-0"));
        assert_eq!(back.handled_reauthorize, st.handled_reauthorize);
        assert_eq!(back.token_calls, st.token_calls);
    }

    fn me(user: &str, division: i64) -> MeInfo {
        MeInfo {
            user_id: Some(user.into()),
            user_name: Some(format!("{user}@example.invalid")),
            current_division: division,
        }
    }

    #[test]
    fn a_consent_by_someone_else_is_recorded_as_a_takeover() {
        let mut st = ConnectionState::default();
        assert_eq!(
            st.record_me(&me("u1", 10), true, None),
            IdentityChange::default()
        );
        assert_eq!(
            (st.exact_user_id.as_deref(), st.division),
            (Some("u1"), Some(10))
        );
        let change = st.record_me(&me("u2", 20), true, None);
        assert_eq!(change.user, Some(("u1".into(), "u2".into())));
        assert_eq!(change.division, Some((10, 20)));
        assert_eq!(st.previous_exact_user_id.as_deref(), Some("u1"));
        assert_eq!(st.division, Some(20));
        // The same user consenting again clears the takeover note.
        assert_eq!(
            st.record_me(&me("u2", 20), true, None),
            IdentityChange::default()
        );
        assert_eq!(st.previous_exact_user_id, None);
    }

    #[test]
    fn a_refresh_never_moves_the_division_and_spec_division_wins() {
        let mut st = ConnectionState::default();
        st.record_me(&me("u1", 10), true, None);
        let change = st.record_me(&me("u1", 11), false, None);
        assert_eq!(change.division, Some((10, 11)), "reported");
        assert_eq!(st.division, Some(10), "but kept: only a consent moves it");
        let mut fixed = ConnectionState::default();
        assert_eq!(
            fixed.record_me(&me("u1", 11), true, Some(99)),
            IdentityChange::default()
        );
        assert_eq!(fixed.division, None);
    }

    #[test]
    fn claims_expire_and_belong_to_their_holder() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("valid");
        let st = ConnectionState {
            claim: Some(Claim {
                holder: "a".into(),
                until: t(60),
            }),
            ..Default::default()
        };
        assert!(st.claimed_by_other("b", t(10)).is_some());
        assert!(st.claimed_by_other("a", t(10)).is_none());
        assert!(st.claimed_by_other("b", t(61)).is_none());
    }

    #[test]
    fn garbage_data_reads_as_absent() {
        let mut data = BTreeMap::new();
        data.insert(K_EXPIRES.to_string(), ByteString(vec![0xff, 0x00]));
        data.insert(K_FAILURES.to_string(), ByteString(b"many".to_vec()));
        let st = ConnectionState::from_data(&data);
        assert!(st.times.access_token_expires_at.is_none());
        assert_eq!(st.times.consecutive_failures, 0);
        assert_eq!(digest("x").len(), 64);
    }
}
