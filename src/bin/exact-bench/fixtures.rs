//! The objects under test: namespace, client, bootstrap Secrets and connections, created
//! with server-side apply at bounded concurrency.

use crate::cluster::FIELD_MANAGER;
use crate::sim::{ms, SimHandle, CLIENT_ID, CLIENT_SECRET, DIVISION};
use exact_operator::crd::{ExactConnection, ExactOAuthClient};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use std::time::{Duration, Instant};

/// Name of the ExactOAuthClient.
pub const APP: &str = "bench-app";

/// What every connection shares.
pub struct Fixture {
    /// API client (admin).
    pub client: Client,
    /// Namespace of everything.
    pub namespace: String,
    /// `refreshBefore` of each connection.
    pub refresh_before: Duration,
    /// Concurrent API requests while creating objects.
    pub concurrency: usize,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

impl Fixture {
    async fn apply<K>(&self, api: &Api<K>, name: &str, body: serde_json::Value) -> kube::Result<()>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.patch(name, &params(), &Patch::Apply(&body))
            .await
            .map(|_| ())
    }

    /// Namespace, client Secret and ExactOAuthClient pointing at the simulator.
    pub async fn base(
        &self,
        sim: &SimHandle,
        lifetime: Duration,
        window: Duration,
    ) -> anyhow::Result<()> {
        let ns: Api<Namespace> = Api::all(self.client.clone());
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
        self.apply(&ns, &self.namespace, body).await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = format!("{APP}-credentials");
        let body = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "stringData": {"client-secret": CLIENT_SECRET}});
        self.apply(&secrets, &name, body).await?;
        let clients: Api<ExactOAuthClient> = Api::namespaced(self.client.clone(), &self.namespace);
        let body = json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactOAuthClient",
            "metadata": {"name": APP},
            "spec": {
                "clientId": CLIENT_ID,
                "clientSecretRef": {"name": name, "key": "client-secret"},
                "authorizationUrl": format!("{}/api/oauth2/auth", sim.url),
                "tokenUrl": format!("{}/api/oauth2/token", sim.url),
                "apiBaseUrl": format!("{}/api", sim.url),
                "allowInsecureHttp": true,
                "accessTokenExpiresIn": ms(lifetime),
                "refreshWindow": ms(window),
            }
        });
        self.apply(&clients, APP, body).await?;
        Ok(())
    }

    /// Seeds each name in the simulator and applies its bootstrap Secret.
    pub async fn bootstrap(&self, sim: &SimHandle, names: &[String]) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        stream::iter(names)
            .map(|name| {
                let secrets = secrets.clone();
                async move {
                    let token = sim.seed(name).await?;
                    let secret = format!("{name}-bootstrap");
                    let body = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": secret}, "stringData": {"refresh-token": token}});
                    self.apply(&secrets, &secret, body).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// `count` Secrets nobody references, in the bench namespace (the operator watches it):
    /// other people's Secrets, ~1 KiB each like a small certificate or config.
    pub async fn foreign_secrets(&self, count: usize) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let filler = "x".repeat(1024);
        stream::iter(names("foreign-", count))
            .map(|name| {
                let secrets = secrets.clone();
                let body = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name),
                        labels: Some([("app".to_string(), "someone-else".to_string())].into()),
                        ..Default::default()
                    },
                    string_data: Some([("config".to_string(), filler.clone())].into()),
                    ..Default::default()
                };
                async move {
                    secrets.create(&Default::default(), &body).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Applies the connections; returns when each apply was sent, by name.
    pub async fn connections(&self, names: &[String]) -> anyhow::Result<Vec<(String, Instant)>> {
        let api: Api<ExactConnection> = Api::namespaced(self.client.clone(), &self.namespace);
        let sent = stream::iter(names)
            .map(|name| {
                let api = api.clone();
                async move {
                    let body = json!({
                        "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
                        "metadata": {"name": name},
                        "spec": {
                            "clientRef": {"name": APP},
                            "refreshTokenSecretRef": {"name": format!("{name}-bootstrap"), "key": "refresh-token"},
                            "division": DIVISION,
                            "refreshBefore": ms(self.refresh_before),
                        }
                    });
                    let at = Instant::now();
                    self.apply(&api, name, body).await?;
                    anyhow::Ok((name.clone(), at))
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        Ok(sent)
    }
}

/// `prefix00000`, `prefix00001`, ...
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}
