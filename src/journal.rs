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
//!
//! Format version 2 has two kinds of record in that file: an *intent*, written after the
//! claim and just before a refresh's token call (which chain is being spent, as a digest,
//! when and by which process), replaced by the *answer* once it is in hand, and dropped when
//! it is persisted. An intent found on start means its process died with the call in flight:
//! Exact may have rotated the chain and nobody will ever hold the answer (a lost response).
//! Version 1 files (answers only, no `kind`) still replay.

pub use crate::chain::Entitlement;
use crate::chain::{StateStore, Stored};
use crate::state::{digest, ConnectionState, InterruptedRefresh};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The format written now.
pub const VERSION: u32 = 2;
/// The first format (answers only, no `kind`): still replayed.
const VERSION_ANSWERS_ONLY: u32 = 1;

/// What a journal file holds.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Record {
    /// A token answer not yet known to be persisted.
    Answer(Entry),
    /// A refresh whose token call is (or was) in flight.
    Intent(Intent),
}

impl Record {
    /// The file's bytes (JSON).
    pub fn to_bytes(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// Reads a file's bytes: version 2 by `kind`, version 1 as an answer. The error says
    /// why without any of the content.
    pub fn parse(bytes: &[u8]) -> Result<Record, String> {
        #[derive(Deserialize)]
        struct Head {
            v: u32,
            kind: Option<String>,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| unreadable(&e))?;
        match (head.v, head.kind.as_deref()) {
            (VERSION_ANSWERS_ONLY, None) => serde_json::from_slice::<Entry>(bytes)
                .map(Record::Answer)
                .map_err(|e| unreadable(&e)),
            (VERSION, Some("answer" | "intent")) => {
                serde_json::from_slice::<Record>(bytes).map_err(|e| unreadable(&e))
            }
            _ => Err("an entry of another version or for another file name".into()),
        }
    }

    /// (namespace, connection) of the record.
    pub fn connection(&self) -> (&str, &str) {
        match self {
            Record::Answer(e) => (&e.namespace, &e.connection),
            Record::Intent(i) => (&i.namespace, &i.connection),
        }
    }
}

/// A refresh about to spend a chain: written after the claim, right before the token call.
/// No secret in it: the chain is named by its digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Format version.
    pub v: u32,
    /// Namespace of the connection.
    pub namespace: String,
    /// Name of the connection.
    pub connection: String,
    /// SHA-256 (hex) of the refresh token the call spends.
    pub chain: String,
    /// When the call was about to be sent.
    pub at: Timestamp,
    /// Identity of the process making the call.
    pub holder: String,
}

impl Intent {
    /// An intent to spend `refresh_token` now, by `holder`.
    pub fn new(namespace: &str, connection: &str, chain_digest: &str, holder: &str) -> Self {
        Intent {
            v: VERSION,
            namespace: namespace.into(),
            connection: connection.into(),
            chain: chain_digest.into(),
            at: Timestamp::now(),
            holder: holder.into(),
        }
    }
}

/// What replay does with an intent, given what is stored now.
#[derive(Debug, PartialEq, Eq)]
pub enum IntentReplay {
    /// The stored chain is the one the call spent: its process died with the call in
    /// flight, and Exact may have rotated the chain. Record that on the state, tell.
    Interrupted,
    /// Drop the intent, for this reason.
    Drop(&'static str),
}

/// Decides an intent's fate (pure).
pub fn intent_decision(
    intent: &Intent,
    stored: &ConnectionState,
    now: Timestamp,
    max_age: Duration,
) -> IntentReplay {
    let age = now.duration_since(intent.at);
    if age > jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX) {
        return IntentReplay::Drop("older than the refresh-token lifetime");
    }
    let stored_chain = stored
        .refresh_token
        .as_ref()
        .map(|t| digest(t.expose_secret()));
    if stored_chain.as_deref() != Some(intent.chain.as_str()) {
        return IntentReplay::Drop(
            "superseded: the stored chain is not the one the interrupted call spent",
        );
    }
    if stored.dead.is_some() {
        return IntentReplay::Drop("the stored chain is already marked dead");
    }
    if stored.interrupted.as_ref().map(|i| (&i.chain, i.at)) == Some((&intent.chain, intent.at)) {
        return IntentReplay::Drop("already recorded as interrupted");
    }
    IntentReplay::Interrupted
}

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
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// When this process's intents became durable, per file: the in-flight window (intent
    /// durable -> answer durable) is logged with the answer.
    intents: Mutex<HashMap<PathBuf, Instant>>,
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
        Ok(Journal {
            dir: dir.into(),
            intents: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, namespace: &str, connection: &str) -> PathBuf {
        // Kubernetes names contain no '_' or '/': the file name is unambiguous.
        self.dir.join(format!("{namespace}_{connection}.json"))
    }

    /// Replaces the connection's file with `record` durably (temp file, fsync, rename,
    /// fsync the directory).
    fn write_record(&self, record: &Record) -> std::io::Result<PathBuf> {
        let (namespace, connection) = record.connection();
        let path = self.path(namespace, connection);
        let tmp = path.with_extension("json.tmp");
        let bytes = record.to_bytes().map_err(std::io::Error::other)?;
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
        Ok(path)
    }

    /// Writes `entry` (an answer) durably, replacing the intent of its call.
    pub fn record(&self, entry: &Entry) -> std::io::Result<()> {
        let path = self.write_record(&Record::Answer(entry.clone()))?;
        // The width of the window a kill can still lose an answer in (the chaos suite
        // reads it): from the answer in hand to its entry durable.
        let durable_after = Timestamp::now().duration_since(entry.received_at);
        // And how long the call was in flight as the journal saw it (intent durable ->
        // answer durable): a kill in there leaves the intent, never the answer.
        let in_flight = self
            .intents
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&path))
            .map(|t| t.elapsed().as_micros() as u64);
        tracing::debug!(
            namespace = %entry.namespace,
            connection = %entry.connection,
            micros = durable_after.as_micros().max(0) as u64,
            in_flight_micros = in_flight,
            "token journal: entry written"
        );
        Ok(())
    }

    /// Writes `intent` durably: the call it announces may now be sent.
    pub fn intend(&self, intent: &Intent) -> std::io::Result<()> {
        let started = Instant::now();
        let path = self.write_record(&Record::Intent(intent.clone()))?;
        if let Ok(mut m) = self.intents.lock() {
            m.insert(path, Instant::now());
        }
        tracing::debug!(
            namespace = %intent.namespace,
            connection = %intent.connection,
            micros = started.elapsed().as_micros() as u64,
            "token journal: intent written"
        );
        Ok(())
    }

    /// Drops the entry of a connection (its answer is in the state Secret now).
    pub fn settle(&self, namespace: &str, connection: &str) {
        let path = self.path(namespace, connection);
        if let Ok(mut m) = self.intents.lock() {
            m.remove(&path);
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "removing a settled journal entry failed")
            }
        }
    }

    /// Every record, and the files that are not records (reported, never fatal).
    pub fn entries(&self) -> (Vec<(PathBuf, Record)>, Vec<BadEntry>) {
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
            match read_record(&path) {
                Ok(r) if path == self.path(r.connection().0, r.connection().1) => {
                    good.push((path, r))
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

/// Reads one journal file (the chaos suite classifies its kills with it).
pub fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = fs::read(path).map_err(|e| e.kind().to_string())?;
    Record::parse(&bytes)
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

/// The wait between replay attempts while the API server is unreachable: 200 ms, doubling
/// up to 5 s.
struct RetryDelay(Duration);

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay(Duration::from_millis(200))
    }
}

impl RetryDelay {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Replays one entry through `store` (retrying while the store is unreachable); returns
/// what was done.
pub async fn replay_entry<S: StateStore>(store: &S, entry: &Entry, max_age: Duration) -> Replay {
    let mut delay = RetryDelay::default();
    loop {
        let stored: Stored = match store.load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %entry.connection, error = %e, "journal replay: reading state failed; retrying");
                delay.wait().await;
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
                delay.wait().await;
            }
        }
    }
}

/// Replays one intent through `store` (retrying while the store is unreachable): when the
/// stored chain is the one the interrupted call spent, records the interruption on the
/// state (so a later "Old refresh token used." is explained) and returns `Interrupted`.
pub async fn replay_intent<S: StateStore>(
    store: &S,
    intent: &Intent,
    max_age: Duration,
) -> IntentReplay {
    let mut delay = RetryDelay::default();
    loop {
        let stored: Stored = match store.load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %intent.connection, error = %e, "journal replay: reading state failed; retrying");
                delay.wait().await;
                continue;
            }
        };
        let decision = intent_decision(intent, &stored.state, Timestamp::now(), max_age);
        if decision != IntentReplay::Interrupted {
            return decision;
        }
        let mut state = stored.state;
        state.interrupted = Some(InterruptedRefresh {
            chain: intent.chain.clone(),
            at: intent.at,
            holder: intent.holder.clone(),
        });
        match store.write(&state, stored.version.as_deref()).await {
            Ok(_) => return IntentReplay::Interrupted,
            Err(crate::chain::WriteError::Conflict) => continue,
            Err(crate::chain::WriteError::Other(e)) => {
                tracing::warn!(connection = %intent.connection, error = %e, "journal replay: writing state failed; retrying");
                delay.wait().await;
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
        let Record::Answer(answer) = &good[0].1 else {
            panic!("an answer");
        };
        assert_eq!(
            answer
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

    fn intent_for(chain_token: &str) -> Intent {
        Intent::new("ns", "c", &digest(chain_token), "op-a-0001")
    }

    #[test]
    fn an_intent_for_the_stored_chain_means_the_call_was_in_flight() {
        let i = intent_for("rt-1");
        let now = i.at;
        assert_eq!(
            intent_decision(&i, &state("rt-1"), now, MONTH),
            IntentReplay::Interrupted
        );
        assert!(matches!(
            intent_decision(&i, &state("rt-2"), now, MONTH),
            IntentReplay::Drop(why) if why.starts_with("superseded")
        ));
        assert!(matches!(
            intent_decision(&i, &ConnectionState::default(), now, MONTH),
            IntentReplay::Drop(why) if why.starts_with("superseded")
        ));
        let mut dead = state("rt-1");
        dead.dead = Some(crate::state::DeadChain {
            reason: "ReauthorizationRequired".into(),
            message: "m".into(),
            fingerprint: "f".into(),
        });
        assert!(matches!(
            intent_decision(&i, &dead, now, MONTH),
            IntentReplay::Drop(_)
        ));
        let mut recorded = state("rt-1");
        recorded.interrupted = Some(InterruptedRefresh {
            chain: i.chain.clone(),
            at: i.at,
            holder: i.holder.clone(),
        });
        assert_eq!(
            intent_decision(&i, &recorded, now, MONTH),
            IntentReplay::Drop("already recorded as interrupted")
        );
        let later = now
            .saturating_add(jiff::SignedDuration::from_hours(24 * 31))
            .unwrap_or(now);
        assert_eq!(
            intent_decision(&i, &state("rt-1"), later, MONTH),
            IntentReplay::Drop("older than the refresh-token lifetime")
        );
    }

    #[test]
    fn the_format_is_versioned_and_version_1_answers_still_replay() {
        // Version 1: an answer, no kind.
        let e = Entry::new(
            "ns",
            "c",
            &state("rt-2"),
            Entitlement::SameChain {
                consumed: digest("rt-1"),
            },
        );
        let mut v1 = serde_json::to_value(&e).expect("json");
        v1["v"] = 1.into();
        let bytes = serde_json::to_vec(&v1).expect("json");
        assert!(
            matches!(Record::parse(&bytes), Ok(Record::Answer(a)) if a.entitlement == e.entitlement)
        );
        // Version 2: tagged; an intent holds no token, only its digest.
        let i = intent_for("rt-1");
        let bytes = Record::Intent(i.clone()).to_bytes().expect("json");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(
            text.contains("\"kind\":\"intent\"") && text.contains("\"v\":2"),
            "{text}"
        );
        assert!(!text.contains("rt-1"), "{text}");
        assert!(matches!(Record::parse(&bytes), Ok(Record::Intent(back)) if back == i));
        let answer = Record::Answer(e).to_bytes().expect("json");
        assert!(matches!(Record::parse(&answer), Ok(Record::Answer(_))));
        // Unknown versions and kinds, and a version 2 file without a kind, are bad entries.
        for bad in [
            serde_json::json!({"v": 3, "kind": "intent"}),
            serde_json::json!({"v": 2, "kind": "wish"}),
            serde_json::json!({"v": 2, "namespace": "ns"}),
            serde_json::json!({"v": 1, "kind": "intent"}),
        ] {
            let bytes = serde_json::to_vec(&bad).expect("json");
            assert!(Record::parse(&bytes).is_err(), "{bad}");
        }
        // A version-2 intent cut short is reported without content.
        let cut = &bytes_of(&i)[..20];
        assert!(Record::parse(cut).is_err());
    }

    fn bytes_of(i: &Intent) -> Vec<u8> {
        Record::Intent(i.clone()).to_bytes().expect("json")
    }

    #[test]
    fn the_answer_replaces_the_intent_in_the_same_file() {
        let dir = std::env::temp_dir().join(format!("journal-intent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let j = Journal::open(&dir).expect("open");
        j.intend(&intent_for("rt-1")).expect("intend");
        let (good, bad) = j.entries();
        assert!(bad.is_empty());
        assert!(matches!(good.as_slice(), [(_, Record::Intent(_))]));
        assert_eq!(
            fs::metadata(dir.join("ns_c.json"))
                .expect("file")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let e = Entry::new(
            "ns",
            "c",
            &state("rt-2"),
            Entitlement::SameChain {
                consumed: digest("rt-1"),
            },
        );
        j.record(&e).expect("record");
        let (good, _) = j.entries();
        assert!(matches!(good.as_slice(), [(_, Record::Answer(_))]));
        j.settle("ns", "c");
        assert!(j.entries().0.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
