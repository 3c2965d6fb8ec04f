//! What the agent knows: the last good token (in memory, never logged), whether the Secret
//! currently exists, and the last watch and file errors; plus the health verdict.

use super::files::is_publishable_key;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// The last good content of the Secret: every publishable key (never a refresh token).
/// `Debug` prints no values.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Key to value.
    pub values: BTreeMap<String, SecretString>,
    /// The Secret's resourceVersion it came from.
    pub resource_version: Option<String>,
}

impl Snapshot {
    /// The Secret's publishable data, or `None` when it has no non-empty `access_token`
    /// (then it is not a good token and the last good one is kept). Also returns the keys
    /// that were skipped.
    pub fn from_secret(secret: &Secret) -> (Option<Snapshot>, Vec<String>) {
        let mut values = BTreeMap::new();
        let mut skipped = Vec::new();
        for (k, v) in secret.data.iter().flatten() {
            if !is_publishable_key(k) {
                skipped.push(k.clone());
                continue;
            }
            values.insert(
                k.clone(),
                SecretString::from(String::from_utf8_lossy(&v.0).into_owned()),
            );
        }
        let good = values
            .get("access_token")
            .is_some_and(|t| !t.expose_secret().trim().is_empty());
        let snap = good.then(|| Snapshot {
            values,
            resource_version: secret.metadata.resource_version.clone(),
        });
        (snap, skipped)
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|v| v.expose_secret())
    }

    /// Whether two snapshots hold the same values.
    pub fn same_values(&self, other: &Snapshot) -> bool {
        self.values.len() == other.values.len()
            && self.values.iter().all(|(k, v)| {
                other
                    .values
                    .get(k)
                    .is_some_and(|o| o.expose_secret() == v.expose_secret())
            })
    }

    /// The parsed `expires_at`, or why it is unusable.
    pub fn expires_at(&self) -> Result<Timestamp, String> {
        let raw = self
            .get("expires_at")
            .ok_or_else(|| "the Secret has no expires_at".to_string())?;
        raw.trim()
            .parse::<Timestamp>()
            .map_err(|_| format!("expires_at {raw:?} is not an RFC 3339 timestamp"))
    }

    /// The entries to write, `access_token` first: a reader that sees a new `expires_at`
    /// then always finds the new token already in place.
    pub fn file_entries(&self) -> Vec<(String, Vec<u8>)> {
        let token = self.values.get_key_value("access_token");
        token
            .into_iter()
            .chain(self.values.iter().filter(|(k, _)| *k != "access_token"))
            .map(|(k, v)| (k.clone(), v.expose_secret().as_bytes().to_vec()))
            .collect()
    }

    /// The JSON body of `GET /token`.
    pub fn view(&self) -> TokenView<'_> {
        TokenView {
            access_token: self.get("access_token"),
            token_type: self.get("token_type"),
            expires_at: self.get("expires_at"),
            division: self.get("division"),
            api_base_url: self.get("api_base_url"),
        }
    }
}

/// `GET /token`: the workload Secret's keys as strings (`null` when absent).
#[derive(Debug, Serialize)]
pub struct TokenView<'a> {
    /// The access token.
    pub access_token: Option<&'a str>,
    /// `Bearer`.
    pub token_type: Option<&'a str>,
    /// RFC 3339 expiry.
    pub expires_at: Option<&'a str>,
    /// The Exact division, as text.
    pub division: Option<&'a str>,
    /// `<apiBaseUrl>/v1/<division>`.
    pub api_base_url: Option<&'a str>,
}

/// Everything the watch loop reports and the HTTP endpoints read.
#[derive(Debug, Default)]
pub struct Status {
    /// The last good token.
    pub token: Option<Snapshot>,
    /// Whether the Secret exists as far as the last watch event tells.
    pub secret_present: bool,
    /// Whether the Secret was ever seen.
    pub secret_seen: bool,
    /// The last watch error since the last successful (re)list.
    pub watch_error: Option<String>,
    /// The last failure to write the files, until a write succeeds.
    pub files_error: Option<String>,
}

/// The agent's shared state.
#[derive(Debug)]
pub struct Shared {
    /// `namespace/name` of the Secret, for messages.
    pub secret: String,
    status: Mutex<Status>,
}

impl Shared {
    /// Empty state for the Secret `namespace/name`.
    pub fn new(secret: String) -> Self {
        Shared {
            secret,
            status: Mutex::new(Status::default()),
        }
    }

    /// Locks the status (a poisoned lock still holds consistent data: every writer only
    /// assigns fields).
    pub fn lock(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok(message)` when the last good token is present and unexpired and the files are
    /// current, else `Err(reason)`.
    pub fn health(&self, now: Timestamp) -> Result<String, String> {
        health(&self.lock(), &self.secret, now)
    }
}

/// The health verdict of a status at `now`.
pub fn health(s: &Status, secret: &str, now: Timestamp) -> Result<String, String> {
    let api = s
        .watch_error
        .as_deref()
        .map(|e| format!("; last API error: {e}"))
        .unwrap_or_default();
    let Some(token) = &s.token else {
        let why = if s.secret_seen {
            format!("Secret {secret} has no access_token yet")
        } else {
            format!("no token yet: waiting for Secret {secret}")
        };
        return Err(format!("{why}{api}"));
    };
    if let Some(e) = &s.files_error {
        return Err(format!("token files are stale: {e}"));
    }
    let expires = token.expires_at()?;
    let gone = if s.secret_present {
        ""
    } else {
        " (Secret deleted: serving the last token)"
    };
    if expires <= now {
        return Err(format!("token expired at {expires}{gone}{api}"));
    }
    Ok(format!("ok: token valid until {expires}{gone}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn snapshot_drops_refresh_tokens_and_needs_an_access_token() {
        let (snap, skipped) = Snapshot::from_secret(&secret(&[
            ("access_token", "AT"),
            ("refresh_token", "RT"),
            ("expires_at", "2030-01-01T00:00:00Z"),
        ]));
        let snap = snap.expect("good");
        assert_eq!(skipped, vec!["refresh_token"]);
        assert_eq!(snap.get("access_token"), Some("AT"));
        assert!(snap.get("refresh_token").is_none());
        assert!(
            !format!("{snap:?}").contains("AT\""),
            "Debug must not show values"
        );
        let (none, _) = Snapshot::from_secret(&secret(&[("access_token", " "), ("division", "1")]));
        assert!(none.is_none());
    }

    #[test]
    fn files_are_written_access_token_first() {
        let (snap, _) = Snapshot::from_secret(&secret(&[
            ("api_base_url", "u"),
            ("access_token", "AT"),
            ("expires_at", "e"),
        ]));
        let keys: Vec<String> = snap
            .expect("good")
            .file_entries()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["access_token", "api_base_url", "expires_at"]);
    }

    #[test]
    fn health_reports_why_it_is_not_ok() {
        let now = at("2030-01-01T00:00:00Z");
        let mut s = Status::default();
        let e = health(&s, "ns/tok", now).expect_err("no token");
        assert!(e.contains("waiting for Secret ns/tok"), "{e}");
        s.secret_seen = true;
        s.secret_present = true;
        s.watch_error = Some("403".into());
        let e = health(&s, "ns/tok", now).expect_err("no token");
        assert!(e.contains("no access_token") && e.contains("403"), "{e}");

        s.watch_error = None;
        let (snap, _) = Snapshot::from_secret(&secret(&[
            ("access_token", "AT"),
            ("expires_at", "2030-01-01T00:00:10Z"),
        ]));
        s.token = snap;
        assert!(health(&s, "ns/tok", now).is_ok());
        s.secret_present = false;
        let ok = health(&s, "ns/tok", now).expect("still ok");
        assert!(ok.contains("Secret deleted"), "{ok}");
        let e = health(&s, "ns/tok", at("2030-01-01T00:00:10Z")).expect_err("expired");
        assert!(e.contains("expired at 2030-01-01T00:00:10Z"), "{e}");
        s.files_error = Some("disk full".into());
        let e = health(&s, "ns/tok", now).expect_err("files");
        assert!(e.contains("disk full"), "{e}");
    }

    #[test]
    fn unparsable_expiry_is_unhealthy() {
        let (snap, _) = Snapshot::from_secret(&secret(&[
            ("access_token", "AT"),
            ("expires_at", "tomorrow"),
        ]));
        let s = Status {
            token: snap,
            secret_present: true,
            secret_seen: true,
            ..Status::default()
        };
        let e = health(&s, "ns/tok", Timestamp::now()).expect_err("bad expiry");
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
