//! The managed-Secret watch's cache (the operator's state and workload Secrets, already
//! reduced by the controller), each Secret kept as one compact JSON buffer instead of a
//! `Secret` value in a reflector store.
//!
//! Why: at 10,000 connections the reflector held 20,000 Secrets at ~1.3 KB each (a
//! `Secret` struct is ~0.5 KB before any content, and every label, annotation and data
//! key is its own allocation in its own B-tree node), the largest part of the operator's
//! heap. Their JSON, with data kept as text where it is text, is a fraction of that; a
//! reader gets a `Secret` decoded afresh (two reads per refresh: microseconds).
//!
//! Like kube's reflector: a relist (`Init` .. `InitDone`) is collected aside and replaces
//! the listed Secrets when complete, so readers see the old list until then; `ready` is set
//! by the first complete list.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

type SecretId = (String, String);
type Packed = Box<[u8]>;

#[derive(Default)]
struct Listed {
    by_id: HashMap<SecretId, Packed>,
    /// A list in progress (from `Init`), swapped in at `InitDone`.
    relisting: Option<HashMap<SecretId, Packed>>,
}

/// The managed Secrets seen by the watch, packed.
pub struct PackedSecrets {
    listed: RwLock<Listed>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for PackedSecrets {
    fn default() -> Self {
        PackedSecrets {
            listed: RwLock::default(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl PackedSecrets {
    /// Forgets everything: a new watch starts (a new controller run), not ready until it
    /// has listed.
    pub fn reset(&self) {
        if let Ok(mut l) = self.listed.write() {
            *l = Listed::default();
        }
        self.ready.send_replace(false);
    }

    /// Applies one event of the watch.
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        let Ok(mut l) = self.listed.write() else {
            return;
        };
        match event {
            watcher::Event::Apply(s) => {
                if let Some((id, packed)) = pack(s) {
                    l.by_id.insert(id, packed);
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(id) = id_of(s) {
                    l.by_id.remove(&id);
                }
            }
            watcher::Event::Init => l.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                if let (Some((id, packed)), Some(list)) = (pack(s), l.relisting.as_mut()) {
                    list.insert(id, packed);
                }
            }
            watcher::Event::InitDone => {
                if let Some(mut list) = l.relisting.take() {
                    list.shrink_to_fit();
                    l.by_id = list;
                }
                drop(l);
                self.ready.send_replace(true);
            }
        }
    }

    /// Whether a complete list has been seen.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once a complete list has been seen.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Secret `namespace/name` as the watch last showed it (None: not seen).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Secret> {
        let l = self.listed.read().ok()?;
        let packed = l.by_id.get(&(namespace.to_string(), name.to_string()))?;
        unpack(packed)
    }

    /// Secrets listed.
    pub fn len(&self) -> usize {
        self.listed.read().map_or(0, |l| l.by_id.len())
    }

    /// Whether no Secret is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn id_of(secret: &Secret) -> Option<SecretId> {
    let m = &secret.metadata;
    Some((m.namespace.clone()?, m.name.clone()?))
}

/// The Secret as JSON, its data values that are text moved to `stringData` (base64 would
/// make them a third larger). The API server never returns `stringData`, so `unpack` can
/// move everything in it back into `data`.
fn pack(secret: &Secret) -> Option<(SecretId, Packed)> {
    let id = id_of(secret)?;
    let mut compact = secret.clone();
    if let Some(data) = compact.data.as_mut() {
        let mut text = BTreeMap::new();
        data.retain(|k, v| match std::str::from_utf8(&v.0) {
            Ok(s) => {
                text.insert(k.clone(), s.to_owned());
                false
            }
            Err(_) => true,
        });
        compact.string_data = (!text.is_empty()).then_some(text);
    }
    let json = serde_json::to_vec(&compact).ok()?;
    Some((id, json.into_boxed_slice()))
}

fn unpack(packed: &[u8]) -> Option<Secret> {
    let mut secret: Secret = serde_json::from_slice(packed).ok()?;
    if let Some(text) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        data.extend(
            text.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes()))),
        );
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn secret(name: &str, rv: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                labels: Some([("role".to_string(), "token".to_string())].into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_packed_secret_reads_back_as_it_was_and_is_smaller() {
        let token = "R".repeat(400);
        let s = secret(
            "a",
            "7",
            &[
                ("refresh_token", token.as_bytes()),
                ("raw", &[0xff, 0x00]),
                ("empty", b""),
            ],
        );
        let (id, packed) = pack(&s).expect("packed");
        assert_eq!(id, ("ns".to_string(), "a".to_string()));
        assert_eq!(
            unpack(&packed),
            Some(s.clone()),
            "text and binary values both"
        );
        let json = serde_json::to_vec(&s).expect("json");
        assert!(packed.len() < json.len(), "text values are not base64");
    }

    #[test]
    fn a_relist_replaces_the_list_when_complete_and_ready_follows_the_first() {
        let store = PackedSecrets::default();
        let a = secret("a", "1", &[("k", b"v1")]);
        let b = secret("b", "2", &[("k", b"v2")]);
        store.apply(&watcher::Event::Init);
        store.apply(&watcher::Event::InitApply(a.clone()));
        assert!(!store.is_ready(), "not before the list is complete");
        assert_eq!(
            store.get("ns", "a"),
            None,
            "a list in progress is not served"
        );
        store.apply(&watcher::Event::InitDone);
        assert!(store.is_ready());
        assert_eq!(store.get("ns", "a"), Some(a.clone()));

        store.apply(&watcher::Event::Apply(b.clone()));
        assert_eq!(store.get("ns", "b"), Some(b.clone()));
        store.apply(&watcher::Event::Delete(b));
        assert_eq!(store.get("ns", "b"), None);

        // A relist in which `a` is gone: served until the new list is complete.
        store.apply(&watcher::Event::Init);
        assert_eq!(
            store.get("ns", "a"),
            Some(a),
            "the old list serves meanwhile"
        );
        store.apply(&watcher::Event::InitDone);
        assert_eq!(store.get("ns", "a"), None);
        assert!(store.is_empty());

        store.reset();
        assert!(!store.is_ready(), "a new watch lists first");
    }
}
