//! Watches that record when each object first reached a state (the bench's own clock).
//! They run only during cold start and burst, never during the steady phase, so the
//! steady API figures are the operator's alone.

use exact_operator::crd::ExactConnection;
use exact_operator::secrets::ROLE_LABEL;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;

/// When each name was first seen in the wanted state.
pub struct FirstSeen {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    synced: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl FirstSeen {
    fn start<K, F>(api: Api<K>, cfg: watcher::Config, wanted: F) -> Self
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        F: Fn(&K) -> bool + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let synced = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (seen.clone(), synced.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, cfg).default_backoff().boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                let obj = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        n.notify_one();
                        continue;
                    }
                    _ => continue,
                };
                if wanted(&obj) {
                    if let Ok(mut m) = s.lock() {
                        m.entry(obj.name_any()).or_insert(now);
                    }
                }
            }
        });
        FirstSeen { seen, synced, task }
    }

    /// Connections whose Ready condition is True.
    pub fn ready_connections(client: &Client, ns: &str) -> Self {
        Self::start(
            Api::<ExactConnection>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            |c| {
                c.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            },
        )
    }

    /// Workload Secrets that hold an access token.
    pub fn token_secrets(client: &Client, ns: &str) -> Self {
        Self::start(
            Api::<Secret>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(&format!("{ROLE_LABEL}=token")),
            |s| {
                s.data
                    .as_ref()
                    .is_some_and(|d| d.contains_key("access_token"))
            },
        )
    }

    /// Waits until the initial list is done.
    pub async fn synced(&self) {
        self.synced.notified().await;
    }

    /// When `name` was first seen in the wanted state.
    pub fn get(&self, name: &str) -> Option<Instant> {
        self.seen.lock().ok()?.get(name).copied()
    }

    /// How many of `names` were seen.
    pub fn count(&self, names: &[String]) -> usize {
        let Ok(m) = self.seen.lock() else { return 0 };
        names.iter().filter(|n| m.contains_key(*n)).count()
    }

    /// Stops the watch.
    pub fn stop(self) {
        self.task.abort();
    }
}
