//! What the workloads see. A sampler reads every managed Secret every 250 ms (one LIST),
//! asks exact-sim whether each workload Secret's access token is valid and sums, per
//! connection, the time without a valid one (from the first published token on). A watch on
//! the state Secrets sees every persisted refresh token. Both remember every token value
//! they saw (for the log-secrecy check).

use exact_sim::Sim;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Sampling period of the workload Secrets.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

const MANAGED: &str = "app.kubernetes.io/managed-by=exact-operator";
const STATE_ROLE: &str = "exact-operator.io/role=state";

/// One connection as seen from outside.
#[derive(Clone, Debug, Default)]
pub struct ConnView {
    /// Access token in the workload Secret at the last successful read.
    pub published: Option<String>,
    /// A token was published at least once: the invalid-time clock runs from then on.
    pub ever_published: bool,
    /// Sum of the sampling intervals without a valid token in the workload Secret.
    pub invalid: Duration,
    /// Longest uninterrupted stretch without a valid token.
    pub longest_gap: Duration,
    current_gap: Duration,
    /// Distinct refresh tokens the state Secret held, in the order first seen.
    pub refresh_tokens: Vec<String>,
    /// Holder of the refresh claim at the last read of the state Secret.
    pub claim_holder: Option<String>,
}

/// Everything observed so far.
#[derive(Debug, Default)]
pub struct Observed {
    /// Per connection name.
    pub conns: BTreeMap<String, ConnView>,
    /// Every token value seen in a managed Secret.
    pub values: BTreeSet<String>,
    /// Successful samples.
    pub samples: u64,
    /// Samples whose LIST failed (e.g. API server down): the last known contents count.
    pub failed_reads: u64,
}

impl Observed {
    fn absorb(&mut self, secret: &Secret) {
        let name = secret.name_any();
        let data: BTreeMap<String, String> = secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        for key in ["access_token", "refresh_token"] {
            if let Some(v) = data.get(key).filter(|v| !v.is_empty()) {
                self.values.insert(v.clone());
            }
        }
        if let Some(conn) = name.strip_suffix("-exact-state") {
            let view = self.conns.entry(conn.to_string()).or_default();
            view.claim_holder = data.get("claim_holder").cloned();
            if let Some(rt) = data.get("refresh_token") {
                if !view.refresh_tokens.contains(rt) {
                    view.refresh_tokens.push(rt.clone());
                }
            }
        }
    }

    /// Folds one successful LIST in: workload Secrets that are gone count as "no token".
    fn absorb_list(&mut self, secrets: &[Secret]) {
        for view in self.conns.values_mut() {
            view.published = None;
        }
        for s in secrets {
            self.absorb(s);
            if let Some(conn) = s.name_any().strip_suffix("-exact-token") {
                let token = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("access_token"))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                if let Some(view) = self.conns.get_mut(conn) {
                    view.ever_published |= token.is_some();
                    view.published = token;
                }
            }
        }
    }

    /// Charges `dt` to every connection whose published token is not valid now.
    fn charge(&mut self, sim: &Sim, dt: Duration) {
        for view in self.conns.values_mut().filter(|v| v.ever_published) {
            let valid = view
                .published
                .as_deref()
                .is_some_and(|t| sim.access_token_valid(t));
            if valid {
                view.current_gap = Duration::ZERO;
            } else {
                view.invalid += dt;
                view.current_gap += dt;
                view.longest_gap = view.longest_gap.max(view.current_gap);
            }
        }
    }

    /// Refresh tokens persisted by rotations (the seeded bootstrap token excluded).
    pub fn persisted_rotations(&self, conn: &str, seeded: &str) -> u64 {
        self.conns.get(conn).map_or(0, |v| {
            v.refresh_tokens.iter().filter(|t| *t != seeded).count() as u64
        })
    }
}

/// The running sampler and state watch of one namespace.
pub struct Observer {
    shared: Arc<Mutex<Observed>>,
    secrets: Api<Secret>,
    tasks: Vec<JoinHandle<()>>,
}

impl Observer {
    /// Starts sampling the Secrets of `names` in `ns`.
    pub fn start(admin: &Client, ns: &str, sim: Arc<Sim>, names: &[String]) -> Observer {
        let observed = Observed {
            conns: names
                .iter()
                .map(|n| (n.clone(), ConnView::default()))
                .collect(),
            ..Observed::default()
        };
        let shared = Arc::new(Mutex::new(observed));
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
        let sampler = tokio::spawn(sample(secrets.clone(), sim, shared.clone()));
        let watch = tokio::spawn(watch_state(secrets.clone(), shared.clone()));
        Observer {
            shared,
            secrets,
            tasks: vec![sampler, watch],
        }
    }

    /// The observations so far.
    pub fn get(&self) -> MutexGuard<'_, Observed> {
        lock(&self.shared)
    }

    /// Reads every managed Secret now (e.g. right after a kill) and folds it in.
    pub async fn read_now(&self) -> bool {
        match list(&self.secrets).await {
            Some(items) => {
                self.get().absorb_list(&items);
                true
            }
            None => false,
        }
    }

    /// Stops sampling and returns the observations.
    pub fn stop(self) -> Observed {
        for t in &self.tasks {
            t.abort();
        }
        std::mem::take(&mut *lock(&self.shared))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(m: &Mutex<Observed>) -> MutexGuard<'_, Observed> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn list(secrets: &Api<Secret>) -> Option<Vec<Secret>> {
    let params = ListParams::default().labels(MANAGED);
    match tokio::time::timeout(Duration::from_secs(2), secrets.list(&params)).await {
        Ok(Ok(list)) => Some(list.items),
        _ => None,
    }
}

async fn sample(secrets: Api<Secret>, sim: Arc<Sim>, shared: Arc<Mutex<Observed>>) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let items = list(&secrets).await;
        let now = Instant::now();
        let dt = now - last;
        last = now;
        let mut o = lock(&shared);
        match items {
            Some(items) => {
                o.samples += 1;
                o.absorb_list(&items);
            }
            None => o.failed_reads += 1,
        }
        o.charge(&sim, dt);
    }
}

async fn watch_state(secrets: Api<Secret>, shared: Arc<Mutex<Observed>>) {
    let stream = watcher(secrets, watcher::Config::default().labels(STATE_ROLE))
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Ok(secret) = event {
            lock(&shared).absorb(&secret);
        }
    }
}
