//! The token journal: a rotated refresh token is on local disk (fsync'd) before the state
//! Secret is written, so the death of the process between Exact's answer and that write
//! (a SIGKILL, an OOM kill, a panic, a liveness restart of the container) loses nothing. The
//! chart mounts a `medium: Memory` emptyDir here: it survives container restarts within the
//! pod, not the pod. On start the operator replays what it finds, with the same rule as any
//! persist: an entry overwrites the stored chain only while that chain is the one the
//! entry's call consumed.
//!
//! One file per connection (`<namespace>_<connection>.json`, mode 0600, directory 0700),
//! replaced atomically (temp file, fsync, rename, fsync of the directory). The refresh token
//! in it is as sensitive as in the Secret: never logged, the directory not shared.

pub use crate::chain::Entitlement;
use crate::chain::{StateStore, Stored};
use crate::state::{digest, ConnectionState};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const VERSION: u32 = 1;

/// One journalled answer: the state to persist.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Entry {
    /// Format version.
    pub v: u32,
    /// Namespace of the connection.
    pub namespace: String,
    /// Name of the connection.
    pub connection: String,
    /// When the answer arrived.
    pub received_at: Timestamp,
    /// What it may overwrite.
    pub entitlement: Entitlement,
    /// The state Secret's data (strings).
    pub data: BTreeMap<String, String>,
}

impl Entry {
    /// An entry for `state`.
    pub fn new(
        namespace: &str,
        connection: &str,
        state: &ConnectionState,
        entitlement: Entitlement,
    ) -> Self {
        Entry {
            v: VERSION,
            namespace: namespace.into(),
            connection: connection.into(),
            received_at: Timestamp::now(),
            entitlement,
            data: state
                .to_data()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        }
    }

    /// The journalled state.
    pub fn state(&self) -> ConnectionState {
        let data: BTreeMap<String, ByteString> = self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect();
        ConnectionState::from_data(&data)
    }
}

/// What replay does with an entry, given what is stored now.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// Write the entry's state over the stored one.
    Apply,
    /// Drop the entry, for this reason.
    Drop(&'static str),
}

/// Decides an entry's fate (pure).
pub fn replay_decision(
    entry: &Entry,
    stored: &ConnectionState,
    now: Timestamp,
    max_age: Duration,
) -> Replay {
    let age = now.duration_since(entry.received_at);
    if age > jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX) {
        return Replay::Drop("older than the refresh-token lifetime");
    }
    let entry_token = entry.state().refresh_token;
    let stored_token = stored
        .refresh_token
        .as_ref()
        .map(|t| t.expose_secret().to_string());
    if entry_token.as_ref().map(|t| t.expose_secret().to_string()) == stored_token {
        return Replay::Drop("already stored");
    }
    match &entry.entitlement {
        Entitlement::SameChain { consumed } => {
            if stored_token.as_deref().map(digest).as_deref() == Some(consumed.as_str()) {
                Replay::Apply
            } else {
                Replay::Drop("superseded: the stored chain is not the one this answer consumed")
            }
        }
        Entitlement::Consent { supersede } => {
            if *supersede || !stored.has_working_chain() {
                Replay::Apply
            } else {
                Replay::Drop("superseded: a working chain was stored meanwhile")
            }
        }
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// A journal file that could not be read as an entry.
#[derive(Debug)]
pub struct BadEntry {
    /// The file.
    pub path: PathBuf,
    /// Why (no content).
    pub why: String,
}

impl Journal {
    /// Opens (creating, mode 0700) the directory; refuses one others may read.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Journal { dir: dir.into() })
    }

    fn path(&self, namespace: &str, connection: &str) -> PathBuf {
        // Kubernetes names contain no '_' or '/': the file name is unambiguous.
        self.dir.join(format!("{namespace}_{connection}.json"))
    }

    /// Writes `entry` durably (temp file, fsync, rename, fsync the directory).
    pub fn record(&self, entry: &Entry) -> std::io::Result<()> {
        let path = self.path(&entry.namespace, &entry.connection);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        // The width of the window a kill can still lose an answer in (the chaos suite
        // reads it): from the answer in hand to its entry durable.
        let durable_after = Timestamp::now().duration_since(entry.received_at);
        tracing::debug!(
            namespace = %entry.namespace,
            connection = %entry.connection,
            micros = durable_after.as_micros().max(0) as u64,
            "token journal: entry written"
        );
        Ok(())
    }

    /// Drops the entry of a connection (its answer is in the state Secret now).
    pub fn settle(&self, namespace: &str, connection: &str) {
        let path = self.path(namespace, connection);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "removing a settled journal entry failed")
            }
        }
    }

    /// Every entry, and the files that are not entries (reported, never fatal).
    pub fn entries(&self) -> (Vec<(PathBuf, Entry)>, Vec<BadEntry>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return (good, bad);
        };
        for item in dir.flatten() {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                if path.to_string_lossy().ends_with(".json.tmp") {
                    // A write that never completed: its answer was never relied on.
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| unreadable(&e)))
            {
                Ok(e) if e.v == VERSION && path == self.path(&e.namespace, &e.connection) => {
                    good.push((path, e))
                }
                Ok(_) => bad.push(BadEntry {
                    path,
                    why: "an entry of another version or for another file name".into(),
                }),
                Err(why) => bad.push(BadEntry { path, why }),
            }
        }
        (good, bad)
    }

    /// Moves a bad entry aside (`.bad`) so it is reported once and never replayed.
    pub fn quarantine(&self, bad: &BadEntry) {
        let _ = fs::rename(&bad.path, bad.path.with_extension("bad"));
    }
}

/// Why a file is not an entry, without any of its content: serde's own messages quote the
/// unexpected value ("invalid type: string \"...\""), which may be a token.
fn unreadable(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON, but not a journal entry",
        serde_json::error::Category::Eof => "cut short (truncated)",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Replays one entry through `store` (retrying while the store is unreachable); returns
/// what was done.
pub async fn replay_entry<S: StateStore>(store: &S, entry: &Entry, max_age: Duration) -> Replay {
    let mut delay = Duration::from_millis(200);
    loop {
        let stored: Stored = match store.load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %entry.connection, error = %e, "journal replay: reading state failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let decision = replay_decision(entry, &stored.state, Timestamp::now(), max_age);
        if decision != Replay::Apply {
            return decision;
        }
        match store.write(&entry.state(), stored.version.as_deref()).await {
            Ok(_) => return Replay::Apply,
            Err(crate::chain::WriteError::Conflict) => continue,
            Err(crate::chain::WriteError::Other(e)) => {
                tracing::warn!(connection = %entry.connection, error = %e, "journal replay: writing state failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn state(rt: &str) -> ConnectionState {
        ConnectionState {
            refresh_token: Some(SecretString::from(rt)),
            access_token: Some(SecretString::from("at")),
            ..Default::default()
        }
    }
    const MONTH: Duration = Duration::from_secs(30 * 86400);

    #[test]
    fn replay_applies_only_over_the_chain_it_consumed() {
        let e = Entry::new(
            "ns",
            "c",
            &state("rt-2"),
            Entitlement::SameChain {
                consumed: digest("rt-1"),
            },
        );
        let now = e.received_at;
        assert_eq!(
            replay_decision(&e, &state("rt-1"), now, MONTH),
            Replay::Apply
        );
        assert_eq!(
            replay_decision(&e, &state("rt-2"), now, MONTH),
            Replay::Drop("already stored")
        );
        assert!(matches!(
            replay_decision(&e, &state("rt-9"), now, MONTH),
            Replay::Drop(why) if why.starts_with("superseded")
        ));
        let later = now
            .saturating_add(jiff::SignedDuration::from_hours(24 * 31))
            .unwrap_or(now);
        assert!(matches!(
            replay_decision(&e, &state("rt-1"), later, MONTH),
            Replay::Drop(_)
        ));
    }

    #[test]
    fn a_consent_entry_never_replaces_a_working_chain_unless_it_supersedes() {
        let e = Entry::new(
            "ns",
            "c",
            &state("new"),
            Entitlement::Consent { supersede: false },
        );
        let now = e.received_at;
        assert_eq!(
            replay_decision(&e, &ConnectionState::default(), now, MONTH),
            Replay::Apply
        );
        assert!(matches!(
            replay_decision(&e, &state("other"), now, MONTH),
            Replay::Drop(_)
        ));
        let s = Entry::new(
            "ns",
            "c",
            &state("new"),
            Entitlement::Consent { supersede: true },
        );
        assert_eq!(
            replay_decision(&s, &state("other"), now, MONTH),
            Replay::Apply
        );
    }

    #[test]
    fn entries_are_private_durable_files_and_garbage_is_reported() {
        let dir = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let j = Journal::open(&dir).expect("open");
        assert_eq!(
            fs::metadata(&dir).expect("dir").permissions().mode() & 0o777,
            0o700
        );
        let e = Entry::new(
            "ns",
            "c",
            &state("rt-2"),
            Entitlement::Consent { supersede: false },
        );
        j.record(&e).expect("record");
        let file = dir.join("ns_c.json");
        assert_eq!(
            fs::metadata(&file).expect("file").permissions().mode() & 0o777,
            0o600
        );
        fs::write(dir.join("ns_d.json"), b"{not json").expect("garbage");
        fs::write(dir.join("ns_e.json.tmp"), b"half").expect("torn write");
        let (good, bad) = j.entries();
        assert_eq!(good.len(), 1);
        assert_eq!(
            good[0]
                .1
                .state()
                .refresh_token
                .map(|t| t.expose_secret().to_string()),
            Some("rt-2".into())
        );
        assert_eq!(bad.len(), 1);
        j.quarantine(&bad[0]);
        assert!(dir.join("ns_d.bad").exists());
        assert!(
            !dir.join("ns_e.json.tmp").exists(),
            "torn writes are removed"
        );
        j.settle("ns", "c");
        assert!(j.entries().0.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
