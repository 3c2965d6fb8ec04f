//! Watches of the Secrets ExactOAuthClients reference (client secret, webhook secret), one
//! per Secret by name (`fieldSelector=metadata.name=...`) while some client references it.
//! They are few (one or two per client), so a watch each costs less than any alternative:
//! no read per reconcile, a change is seen at once, and no unrelated Secret is ever listed.
//! Each watch fills the Secret's cache entry and triggers the connections of its clients.

use crate::context::Context;
use crate::crd::ExactOAuthClient;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{future, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

type SecretId = (String, String);

/// The running per-name watches.
pub struct ReferencedSecrets {
    ctx: Arc<Context>,
    running: Mutex<HashMap<SecretId, AbortHandle>>,
    changed: UnboundedSender<Result<Secret, watcher::Error>>,
}

impl Drop for ReferencedSecrets {
    fn drop(&mut self) {
        if let Ok(running) = self.running.lock() {
            for ((ns, name), watch) in running.iter() {
                watch.abort();
                self.ctx.caches.unwatch_secret(ns, name);
            }
        }
    }
}

/// Secrets a client references.
fn referenced_by(client: &ExactOAuthClient) -> Vec<SecretId> {
    let ns = client.namespace().unwrap_or_default();
    let mut ids = vec![(ns.clone(), client.spec.client_secret_ref.name.clone())];
    if let Some(w) = &client.spec.webhook_secret_ref {
        ids.push((ns, w.name.clone()));
    }
    ids
}

impl ReferencedSecrets {
    /// No watches yet, and the stream of changed (or deleted) referenced Secrets.
    pub fn new(ctx: Arc<Context>) -> (Self, UnboundedReceiver<Result<Secret, watcher::Error>>) {
        let (changed, rx) = unbounded();
        let me = ReferencedSecrets {
            ctx,
            running: Mutex::new(HashMap::new()),
            changed,
        };
        (me, rx)
    }

    /// Runs exactly the watches of the Secrets the clients in `clients` reference.
    pub fn sync(&self, clients: &Store<ExactOAuthClient>) {
        let wanted: HashSet<SecretId> = clients
            .state()
            .iter()
            .flat_map(|c| referenced_by(c))
            .collect();
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        running.retain(|(ns, name), watch| {
            let keep = wanted.contains(&(ns.clone(), name.clone()));
            if !keep {
                watch.abort();
                self.ctx.caches.unwatch_secret(ns, name);
            }
            keep
        });
        for id in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(id) {
                let watch = self.start(slot.key());
                slot.insert(watch);
            }
        }
    }

    fn start(&self, (ns, name): &SecretId) -> AbortHandle {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        let (store, writer) = reflector::store::<Secret>();
        self.ctx.caches.watch_secret(ns, name, store);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .any_semantic();
        let changed = self.changed.clone();
        let stream = watcher(api, config)
            .default_backoff()
            .modify(super::strip_for_cache)
            .reflect(writer)
            .touched_objects();
        tokio::spawn(stream.for_each(move |secret| {
            if let Ok(s) = secret {
                let _ = changed.unbounded_send(Ok(s));
            }
            future::ready(())
        }))
        .abort_handle()
    }
}
