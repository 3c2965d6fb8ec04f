//! One scenario's bench: a namespace, an in-process exact-sim, N bootstrapped connections on
//! short tokens, the observer, and the operator processes; plus the accounting of kills
//! (did a kill lose a rotated refresh token?) and the final settle.

use super::observe::{Observed, Observer};
use super::operator::OperatorOpts;
use super::{random_string, secs, Output};
use crate::harness::process::OperatorProcess;
use crate::harness::{put_client, put_connection, put_secret};
use crate::support;
use exact_operator::crd::ExactConnection;
use exact_sim::{Sim, SimConfig, Stats};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The OAuth client id of every scenario.
pub const CLIENT_ID: &str = "app-1";
/// Lease of `--leader-elect`.
pub const LEASE: &str = "exact-operator-leader";
/// A connection's Ready condition: (status, reason, message).
pub type Ready = (String, String, String);

/// exact-sim with the short tokens: 6 s access tokens, refresh window 2 s.
pub fn short_token_sim(client_secret: &str) -> SimConfig {
    SimConfig {
        access_token_lifetime: Duration::from_secs(6),
        refresh_window: Duration::from_secs(2),
        ..SimConfig::default()
    }
    .with_client(CLIENT_ID, client_secret)
}

/// What becomes of a killed process's token journal (`--journal-dir`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalFate {
    /// The container restarts in the same pod: its successor gets the same directory.
    Kept,
    /// The pod is gone (deleted, node lost): the directory goes with the process.
    LostWithProcess,
}

/// What one kill did.
#[derive(Clone, Debug, Default)]
pub struct Kill {
    /// Connections whose rotated refresh token died with the process: the kill fell between
    /// Exact's answer and the persisted write, and the answer is in no journal that
    /// survives (not fsync'd yet, or the journal went with the process).
    pub lost: Vec<String>,
    /// Connections whose rotated refresh token was not persisted but was in the kept
    /// journal: the successor must replay it.
    pub held: Vec<String>,
    /// Connections whose unpersisted answer was in the journal the pod took with it (they
    /// are in `lost` too).
    pub in_lost_journal: Vec<String>,
    /// Lost connections (in `lost` too) whose journal held the intent of a call spending
    /// the stored chain: the kill fell while the token request was in flight (Exact
    /// rotated, the answer died with the process), the lost-response class.
    pub in_flight: Vec<String>,
    /// Lost connections (in `lost` too) whose journal held neither the answer nor an intent
    /// for the stored chain: an answer the journal failed to hold.
    pub answer_lost: Vec<String>,
    /// Connections held by the journal at an earlier kill and still not persisted now: the
    /// replay did not happen (a failure).
    pub unreplayed: Vec<String>,
    /// Refresh claims the killed process still held (they block for the claim TTL).
    pub stranded_claims: usize,
    /// What the kill moment was aimed at.
    pub aim: Aim,
}

/// How a kill moment is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aim {
    /// A random moment.
    #[default]
    Random,
    /// 0-40 ms after exact-sim granted a refresh (the answer may still be on its way).
    AfterGrant,
    /// As soon as an entry appeared in the process's journal (the answer is on disk, the
    /// state write pending or under way).
    AfterJournalEntry,
}

impl Aim {
    /// How it reads in the report.
    pub fn label(self) -> &'static str {
        match self {
            Aim::Random => "at a random moment",
            Aim::AfterGrant => "0-40 ms after a grant at Exact",
            Aim::AfterJournalEntry => "as soon as a journal entry appeared",
        }
    }
}

/// Everything a scenario's report needs, after the bench is torn down.
pub struct Finished {
    /// Namespace of the scenario.
    pub ns: String,
    /// Connection names.
    pub names: Vec<String>,
    /// exact-sim counters at the end.
    pub stats: Stats,
    /// What the observer saw.
    pub observed: Observed,
    /// Ready condition of each connection at the end.
    pub ready: BTreeMap<String, Ready>,
    /// Whether every connection settled (Ready with a valid token, or a dead chain).
    pub settled: bool,
    /// Refresh tokens seeded, authorization codes issued, and the client secret.
    pub issued: Vec<String>,
    /// Log files of every operator process.
    pub logs: Vec<PathBuf>,
    /// Scenario run time.
    pub wall: Duration,
}

/// A scenario under way.
pub struct Bench {
    /// Cluster admin client.
    pub admin: Client,
    /// Fresh namespace of the scenario.
    pub ns: String,
    /// The Exact simulator.
    pub sim: Arc<Sim>,
    /// Connection names (bootstrapped ones).
    pub names: Vec<String>,
    /// Seeded refresh token of each connection.
    pub seeded: BTreeMap<String, String>,
    /// The client secret of the OAuth client.
    pub client_secret: String,
    /// Authorization codes issued during the scenario (the secrecy test adds them).
    pub codes: Vec<String>,
    /// The Secrets as the workloads see them.
    pub observer: Observer,
    /// How operator processes are started.
    pub opts: OperatorOpts,
    /// The test's output.
    pub out: Output,
    /// What a kill does to the journal of the killed process.
    pub journal_fate: JournalFate,
    /// Holds one `--journal-dir` per process slot (spawn prefix).
    journal_root: PathBuf,
    logs: Vec<PathBuf>,
    spawned: usize,
    started: Instant,
    /// Connections whose rotated token a kill lost (attributed so far).
    lost: BTreeSet<String>,
    /// Connections a kept journal held at a kill, with their grant count then.
    held: BTreeMap<String, u64>,
}

/// Where the scenario's journals live: tmpfs like the chart's `medium: Memory` emptyDir
/// when the machine has one, else the target directory.
fn journal_root(ns: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.join("exact-chaos")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-journal")
    };
    base.join(ns)
}

impl Bench {
    /// A namespace with `connections` bootstrapped connections (refreshBefore 1 s) against a
    /// fresh exact-sim built from `sim_cfg` (which must know [`CLIENT_ID`] with `secret`).
    pub async fn new(
        label: &str,
        connections: usize,
        secret: &str,
        sim_cfg: SimConfig,
        out: &Output,
    ) -> Bench {
        let started = Instant::now();
        let admin = support::admin_client().await;
        let ns = support::fresh_namespace(&admin).await;
        let sim = Arc::new(
            Sim::start(sim_cfg, "127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("exact-sim"),
        );
        put_secret(&admin, &ns, "app-credentials", &[("client-secret", secret)]).await;
        put_client(&admin, &ns, "app", &sim, serde_json::json!({})).await;
        let names: Vec<String> = (1..=connections).map(|i| format!("c{i:02}")).collect();
        let mut seeded = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let token = bootstrap(&admin, &ns, &sim, name, 200_000 + i as i64).await;
            seeded.insert(name.clone(), token);
        }
        let observer = Observer::start(&admin, &ns, sim.clone(), &names);
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos")
            .join(&ns);
        out.say(format!(
            "[{label}] namespace {ns}: {connections} connections, operator logs in {}",
            log_dir.display()
        ));
        let journal_root = journal_root(&ns);
        out.say(format!("  token journals in {}", journal_root.display()));
        let opts = OperatorOpts {
            namespace: ns.clone(),
            leader_elect: false,
            // kube_client's debug lines time the state writes, the journal's its entries
            // (report::persist_windows).
            rust_log: "info,kube_client=debug,exact_operator::journal=debug".into(),
            oauth: None,
            log_dir,
        };
        Bench {
            admin,
            ns,
            sim,
            names,
            seeded,
            client_secret: secret.to_string(),
            codes: Vec::new(),
            observer,
            opts,
            out: out.clone(),
            journal_fate: JournalFate::Kept,
            journal_root,
            logs: Vec::new(),
            spawned: 0,
            started,
            lost: BTreeSet::new(),
            held: BTreeMap::new(),
        }
    }

    /// The default bench: short tokens, a random client secret.
    pub async fn short_tokens(label: &str, connections: usize, out: &Output) -> Bench {
        let secret = random_string(32);
        Self::new(label, connections, &secret, short_token_sim(&secret), out).await
    }

    /// Starts one more operator process, `POD_NAME=<prefix>-<n>`, with the journal
    /// directory of slot `prefix` (what a restarted container of that pod finds).
    pub fn spawn(&mut self, prefix: &str) -> OperatorProcess {
        let journal = self.journal_root.join(prefix);
        let p = self
            .opts
            .spawn(&format!("{prefix}-{}", self.spawned), Some(&journal));
        self.spawned += 1;
        self.logs.extend(p.log.clone());
        p
    }

    /// The Ready condition of every connection (one LIST); None when the API is down.
    pub async fn ready(&self) -> Option<BTreeMap<String, Ready>> {
        let api: Api<ExactConnection> = Api::namespaced(self.admin.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .into_iter()
                .map(|c| {
                    let name = c.name_any();
                    let ready = c
                        .status
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                        .map(|c| (c.status, c.reason, c.message))
                        .unwrap_or_default();
                    (name, ready)
                })
                .collect(),
        )
    }

    /// Waits until every connection shows TokenPublished; panics after `timeout`.
    pub async fn wait_all_published(&self, timeout: Duration) {
        let t = Instant::now();
        let done = support::wait_for(timeout, || async {
            let ready = self.ready().await?;
            (ready.len() >= self.names.len()
                && ready.values().all(|(_, r, _)| r == "TokenPublished"))
            .then_some(())
        })
        .await;
        assert!(
            done.is_some(),
            "{}: not all connections published a token within {timeout:?}: {:?}",
            self.ns,
            self.ready().await
        );
        self.out.say(format!(
            "  all {} connections published after {}",
            self.names.len(),
            secs(t.elapsed())
        ));
    }

    /// Refresh tokens Exact rotated whose successor never reached the state Secret, per
    /// connection: grants counted by exact-sim minus rotations seen in the state Secret.
    pub fn lost_grants(&self) -> BTreeMap<String, u64> {
        let stats = self.sim.stats();
        let observed = self.observer.get();
        self.names
            .iter()
            .filter_map(|n| {
                let granted = stats
                    .connections
                    .get(n)
                    .map_or(0, |c| c.counters.refresh_ok);
                let persisted = observed.persisted_rotations(n, &self.seeded[n]);
                (granted > persisted).then(|| (n.clone(), granted - persisted))
            })
            .collect()
    }

    /// The journal directory of `p` (its slot: the pod name without the counter).
    pub fn journal_of(&self, p: &OperatorProcess) -> PathBuf {
        let slot = p.pod.rsplit_once('-').map_or(p.pod.as_str(), |(s, _)| s);
        self.journal_root.join(slot)
    }

    /// SIGKILLs `p` and accounts for it: rotated tokens that died with it or that only its
    /// journal holds, claims it held. A grant whose successor never reaches the state
    /// Secret once the process is dead fell between Exact's answer and the persisted
    /// write; it is lost unless it is in a journal the successor gets, or an earlier kill
    /// lost it (a lost chain never rotates again). With [`JournalFate::LostWithProcess`]
    /// the journal directory is deleted here, as a deleted pod's emptyDir is.
    pub async fn kill(&mut self, p: &mut OperatorProcess) -> Kill {
        p.sigkill();
        // A write the process sent just before dying may still land: let it, then look.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.observer.read_now().await;
        let granted = self.sim.stats();
        let grants = |n: &str| {
            granted
                .connections
                .get(n)
                .map_or(0, |c| c.counters.refresh_ok)
        };
        let journal = self.journal_of(p);
        let mut kill = Kill::default();
        for n in self.lost_grants().into_keys() {
            if self.lost.contains(&n) {
                continue;
            }
            if self.held.get(&n) == Some(&grants(&n)) {
                kill.unreplayed.push(n);
                continue;
            }
            let file = journal.join(format!("{}_{n}.json", self.ns));
            let stored_chain = observed_chain(&self.observer.get(), &n);
            match (
                journalled(&file, stored_chain.as_deref()),
                self.journal_fate,
            ) {
                (Journalled::Answer, JournalFate::Kept) => {
                    self.held.insert(n.clone(), grants(&n));
                    kill.held.push(n);
                }
                (Journalled::Answer, JournalFate::LostWithProcess) => {
                    kill.in_lost_journal.push(n.clone());
                    kill.lost.push(n);
                }
                (Journalled::Intent, _) => {
                    kill.in_flight.push(n.clone());
                    kill.lost.push(n);
                }
                (Journalled::Neither, _) => {
                    kill.answer_lost.push(n.clone());
                    kill.lost.push(n);
                }
            }
        }
        if self.journal_fate == JournalFate::LostWithProcess {
            let _ = std::fs::remove_dir_all(&journal);
        }
        self.lost.extend(kill.lost.iter().cloned());
        kill.stranded_claims = self.claims_held_by(p);
        kill
    }

    /// State Secrets whose refresh claim `p` holds (as of the last read).
    pub fn claims_held_by(&self, p: &OperatorProcess) -> usize {
        self.observer
            .get()
            .conns
            .values()
            .filter(|v| v.claim_holder.as_deref().is_some_and(|h| p.is(h)))
            .count()
    }

    /// Waits until every connection's workload Secret holds a token exact-sim accepts;
    /// returns how long that took, or None after `timeout`.
    pub async fn wait_all_valid(&self, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            let all = self.observer.get().conns.iter().all(|(n, v)| {
                !self.names.contains(n)
                    || v.published
                        .as_deref()
                        .is_some_and(|tok| self.sim.access_token_valid(tok))
            });
            if all {
                return Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Holder identity of the leader Lease.
    pub async fn lease_holder(&self) -> Option<String> {
        let api: Api<Lease> = Api::namespaced(self.admin.clone(), &self.ns);
        api.get_opt(LEASE).await.ok()??.spec?.holder_identity
    }

    /// Waits until every connection is settled: refreshed again since now and Ready with a
    /// token exact-sim accepts in its workload Secret, or a dead chain
    /// (ReauthorizationRequired / InvalidClient).
    pub async fn settle(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        let refreshed = |stats: &Stats, n: &str| {
            stats
                .connections
                .get(n)
                .map_or(0, |c| c.counters.refresh_ok)
        };
        let before = self.sim.stats();
        let settled = support::wait_for(timeout, || async {
            self.observer.read_now().await.then_some(())?;
            let ready = self.ready().await?;
            let now = self.sim.stats();
            if now.totals.blocked > 0 {
                // Exact blocked the whole app for the rest of the hour: nothing recovers.
                return Some(false);
            }
            let observed = self.observer.get();
            let all = self.names.iter().all(|n| {
                let valid = observed.conns[n]
                    .published
                    .as_deref()
                    .is_some_and(|tok| self.sim.access_token_valid(tok));
                let moved = refreshed(&now, n) > refreshed(&before, n);
                match ready.get(n).map(|(_, r, _)| r.as_str()) {
                    Some("TokenPublished") => valid && moved,
                    Some("ReauthorizationRequired" | "InvalidClient") => true,
                    _ => false,
                }
            });
            all.then_some(true)
        })
        .await
        .unwrap_or(false);
        self.out
            .say(format!("  settled: {settled} after {}", secs(t.elapsed())));
        settled
    }

    /// Settles (up to `timeout`), stops the operators and the observer, and gathers the
    /// figures.
    pub async fn finish(self, operators: Vec<OperatorProcess>, timeout: Duration) -> Finished {
        let settled = self.settle(timeout).await;
        let ready = self.ready().await.unwrap_or_default();
        drop(operators);
        let stats = self.sim.stats();
        let observed = self.observer.stop();
        let _ = std::fs::remove_dir_all(&self.journal_root);
        let mut issued: Vec<String> = self.seeded.values().cloned().collect();
        issued.extend(self.codes.iter().cloned());
        issued.push(self.client_secret.clone());
        Finished {
            ns: self.ns,
            names: self.names,
            stats,
            observed,
            ready,
            settled,
            issued,
            logs: self.logs,
            wall: self.started.elapsed(),
        }
    }
}

/// What a killed process's journal file held for a connection.
enum Journalled {
    /// The unpersisted answer.
    Answer,
    /// The intent of a call spending the stored chain.
    Intent,
    /// Nothing that explains the loss.
    Neither,
}

fn journalled(file: &Path, stored_chain: Option<&str>) -> Journalled {
    use exact_operator::journal::{read_record, Record};
    match read_record(file) {
        Ok(Record::Answer(_)) => Journalled::Answer,
        Ok(Record::Intent(i))
            if stored_chain.map(exact_operator::state::digest) == Some(i.chain.clone()) =>
        {
            Journalled::Intent
        }
        _ => Journalled::Neither,
    }
}

/// The refresh token the state Secret of `name` held at the last read (tokens never repeat,
/// so the last one first seen is the current one).
fn observed_chain(observed: &Observed, name: &str) -> Option<String> {
    observed.conns.get(name)?.refresh_tokens.last().cloned()
}

/// Seeds a chain in exact-sim (its own division, so no two connections share Exact's
/// per-division rate limit) and creates a connection bootstrapped from it.
async fn bootstrap(admin: &Client, ns: &str, sim: &Sim, name: &str, division: i64) -> String {
    let token = sim.seed_connection(CLIENT_ID, name, Some(division));
    let secret = format!("{name}-bootstrap");
    put_secret(admin, ns, &secret, &[("refresh-token", &token)]).await;
    put_connection(
        admin,
        ns,
        name,
        serde_json::json!({
            "clientRef": {"name": "app"},
            "refreshTokenSecretRef": {"name": secret, "key": "refresh-token"},
            "refreshBefore": "1s",
        }),
    )
    .await;
    token
}

impl Finished {
    /// Connections whose final reason is `reason`.
    pub fn with_reason(&self, reason: &str) -> BTreeSet<String> {
        self.ready
            .iter()
            .filter(|(_, (_, r, _))| r == reason)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// exact-sim's counters of one connection.
    pub fn counters(&self, name: &str) -> exact_sim::Counters {
        self.stats
            .connections
            .get(name)
            .map(|c| c.counters.clone())
            .unwrap_or_default()
    }
}
