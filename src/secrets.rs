//! Kubernetes Secret I/O: reading referenced keys, the state Secret with conditional writes,
//! and the workload Secret.

use crate::state::ConnectionState;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use secrecy::SecretString;
use std::collections::BTreeMap;
use thiserror::Error;

/// Label put on every Secret the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "exact-operator";
/// Label naming the connection a managed Secret belongs to.
pub const CONNECTION_LABEL: &str = "exact-operator.io/connection";
/// Label telling state from workload Secrets.
pub const ROLE_LABEL: &str = "exact-operator.io/role";

/// Why a referenced Secret key can't be used. Never holds the value.
#[derive(Debug, Error)]
pub enum RefError {
    /// The Secret does not exist.
    #[error("Secret {namespace}/{name} not found")]
    SecretMissing { namespace: String, name: String },
    /// The key is not in the Secret.
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// The value is empty, whitespace or not UTF-8 text.
    #[error("Secret {namespace}/{name} key {key:?} is empty or not text")]
    BadValue {
        namespace: String,
        name: String,
        key: String,
    },
    /// The API server could not be asked.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether a kube error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is a 409 (conflict or already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Reads `key` of Secret `name`, trimmed. Values are text tokens; binary garbage is refused.
pub async fn read_key(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretString, RefError> {
    read_key_versioned(api, namespace, name, key)
        .await
        .map(|(v, _)| v)
}

/// Like [`read_key`], also returning the Secret's resourceVersion (for caching).
pub async fn read_key_versioned(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<(SecretString, Option<String>), RefError> {
    let secret = match api.get_opt(name).await {
        Ok(s) => s,
        Err(source) => {
            return Err(RefError::Api {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })
        }
    };
    let rv = secret
        .as_ref()
        .and_then(|s| s.metadata.resource_version.clone());
    key_of(secret.as_ref(), namespace, name, key).map(|v| (v, rv))
}

/// The trimmed text value of `key` in `secret` (None: the Secret does not exist).
pub fn key_of(
    secret: Option<&Secret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretString, RefError> {
    let Some(secret) = secret else {
        return Err(RefError::SecretMissing {
            namespace: namespace.into(),
            name: name.into(),
        });
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(raw) = raw else {
        return Err(RefError::KeyMissing {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        });
    };
    match String::from_utf8(raw) {
        Ok(s) if !s.trim().is_empty() && !s.trim().chars().any(char::is_control) => {
            Ok(SecretString::from(s.trim().to_string()))
        }
        _ => Err(RefError::BadValue {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        }),
    }
}

/// The state Secret as read, with the resourceVersion that guards the next write.
pub struct StoredState {
    /// Decoded state.
    pub state: ConnectionState,
    /// resourceVersion of the Secret it came from; None when it does not exist yet.
    pub resource_version: Option<String>,
}

/// Name of a connection's state Secret.
pub fn state_secret_name(connection: &str) -> String {
    format!("{connection}-exact-state")
}

/// Reads the state Secret (absent means empty state).
pub async fn load_state(api: &Api<Secret>, name: &str) -> Result<StoredState, kube::Error> {
    Ok(match api.get_opt(name).await? {
        Some(s) => StoredState {
            state: ConnectionState::from_data(&s.data.unwrap_or_default()),
            resource_version: s.metadata.resource_version,
        },
        None => StoredState {
            state: ConnectionState::default(),
            resource_version: None,
        },
    })
}

/// Writes the state only if nobody changed it since `resource_version` was read (create when
/// None). Returns the new resourceVersion; a 409 means someone else wrote first.
pub async fn write_state(
    api: &Api<Secret>,
    name: &str,
    owner: &OwnerReference,
    connection: &str,
    state: &ConnectionState,
    resource_version: Option<&str>,
) -> Result<String, kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version: resource_version.map(str::to_string),
            labels: Some(managed_labels(connection, "state")),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(state.to_data()),
        ..Default::default()
    };
    let written = match resource_version {
        Some(_) => api.replace(name, &PostParams::default(), &secret).await?,
        None => api.create(&PostParams::default(), &secret).await?,
    };
    Ok(written.metadata.resource_version.unwrap_or_default())
}

/// Labels of a managed Secret.
pub fn managed_labels(connection: &str, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (CONNECTION_LABEL.to_string(), connection.to_string()),
        (ROLE_LABEL.to_string(), role.to_string()),
    ])
}

/// Whether `secret` is controlled by the object with `uid`.
pub fn owned_by(secret: &Secret, uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// Compares Secret data without exposing it; `a` may be a digest ([`digest_data`]).
pub fn same_data(
    a: Option<&BTreeMap<String, ByteString>>,
    b: &BTreeMap<String, ByteString>,
) -> bool {
    match a {
        Some(a) if a.len() == 1 && a.contains_key(DATA_DIGEST_KEY) => {
            a.get(DATA_DIGEST_KEY).map(|d| d.0.as_slice()) == Some(data_digest(b).as_slice())
        }
        Some(a) => a == b,
        None => false,
    }
}

/// The key under which a cached workload Secret keeps the digest of its data instead of
/// the data. Never a real key: Secret keys are `[-._a-zA-Z0-9]+`.
pub const DATA_DIGEST_KEY: &str = "#sha256";

/// SHA-256 over a Secret's keys and values, each length-prefixed (no two data share one).
pub fn data_digest(data: &BTreeMap<String, ByteString>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_be_bytes());
        h.update(&v.0);
    }
    h.finalize().to_vec()
}

/// Replaces a Secret's data by its digest: what the watch cache keeps of a workload
/// Secret, whose data the operator only ever compares with what it would write (so memory
/// per connection holds no second copy of its token, templates and divisions).
pub fn digest_data(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        let digest = data_digest(data);
        *data = BTreeMap::from([(DATA_DIGEST_KEY.to_string(), ByteString(digest))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_digested_secret_compares_like_its_data() {
        let written = data(&[("access_token", "AT1"), ("division", "42")]);
        let mut cached = Secret {
            data: Some(written.clone()),
            ..Secret::default()
        };
        digest_data(&mut cached);
        let kept = cached.data.as_ref().expect("data");
        assert_eq!(kept.len(), 1, "only the digest is kept");
        assert!(
            !kept.values().any(|v| v.0 == b"AT1"),
            "no token in the cache"
        );
        assert!(same_data(Some(kept), &written));
        assert!(!same_data(
            Some(kept),
            &data(&[("access_token", "AT2"), ("division", "42")])
        ));
        assert!(
            !same_data(Some(kept), &data(&[("access_token", "AT1division42")])),
            "the same bytes under other keys are other data"
        );
        assert!(!same_data(None, &written));
        assert!(
            same_data(Some(&written), &written),
            "plain data still compares"
        );
    }
}
