//! The HMAC key that signs OAuth `state`: kept in a Secret the operator creates once, so
//! every replica (and every restart) signs and verifies with the same key.

use crate::secrets::{is_conflict, MANAGED_BY, MANAGED_BY_LABEL};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use rand::RngCore;
use std::collections::BTreeMap;

/// Name of the Secret holding the state-signing key.
pub const KEY_SECRET: &str = "exact-operator-oauth-state-key";
const KEY_FIELD: &str = "key";

/// Reads the key, creating it on first use (a concurrent creator wins; its key is read back).
pub async fn load_or_create(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(KEY_SECRET).await? {
            let key = s
                .data
                .and_then(|d| d.get(KEY_FIELD).map(|b| b.0.clone()))
                .unwrap_or_default();
            anyhow::ensure!(
                key.len() >= 32,
                "Secret {namespace}/{KEY_SECRET} has no usable key: delete it to regenerate"
            );
            return Ok(key);
        }
        let mut key = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_string(),
                    MANAGED_BY.to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                KEY_FIELD.to_string(),
                ByteString(key.clone()),
            )])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(key),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not create or read Secret {namespace}/{KEY_SECRET}")
}
