//! The `ExactWebhookSubscription` kind: Exact webhook subscriptions declared in YAML. Every
//! field carries a `///` comment because these become `kubectl explain` text.

use crate::crd::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to an ExactConnection in the subscription's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ConnectionRef {
    /// Name of the ExactConnection whose access token creates the subscriptions and whose
    /// app's webhook secret verifies the messages.
    pub name: String,
}

/// A Service that receives the messages: `http://<name>.<namespace>.svc:<port><path>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ServiceTarget {
    /// Name of the Service.
    pub name: String,
    /// Namespace of the Service; default: the subscription's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Port of the Service.
    pub port: u16,
    /// Path the messages are POSTed to; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Where verified messages are delivered: exactly one of `service` or `url`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTarget {
    /// An in-cluster Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceTarget>,
    /// Any http(s) URL reachable from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Exact webhook subscriptions the operator keeps at Exact and whose messages it verifies
/// and delivers in the cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "exact-operator.io",
    version = "v1alpha1",
    kind = "ExactWebhookSubscription",
    namespaced,
    status = "ExactWebhookSubscriptionStatus",
    shortname = "exacthook",
    shortname = "ews",
    doc = "Exact Online webhook subscriptions kept at Exact by the operator; verified messages are POSTed to a target in the cluster.",
    printcolumn = r#"{"name":"Connection","type":"string","jsonPath":".spec.connectionRef.name"}"#,
    printcolumn = r#"{"name":"Topics","type":"string","jsonPath":".spec.topics"}"#,
    printcolumn = r#"{"name":"Division","type":"integer","jsonPath":".status.division"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExactWebhookSubscriptionSpec {
    /// The ExactConnection (same namespace) used to manage the subscriptions. The operator
    /// only reads its current access token; it never makes a token call for webhooks.
    pub connection_ref: ConnectionRef,
    /// Exact division (company) to subscribe in; default: the connection's division.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<i64>,
    /// Exact webhook topics, e.g. Accounts, SalesInvoices, Items. One subscription each.
    pub topics: Vec<String>,
    /// Where verified messages are POSTed, byte for byte as Exact sent them.
    pub target: WebhookTarget,
}

/// One subscription as it exists at Exact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ActiveSubscription {
    /// The topic.
    pub topic: String,
    /// Exact's ID of the subscription (a GUID).
    pub id: String,
}

/// Observed state of an ExactWebhookSubscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExactWebhookSubscriptionStatus {
    /// Ready and its reason: SubscriptionsActive, ConnectionNotFound, ConnectionNotReady,
    /// WebhookSecretMissing, NoPublicUrl, InvalidSpec, ExactRefused, ExactUnavailable.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The CallbackURL registered at Exact (the operator's public webhook route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The division the subscriptions live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<i64>,
    /// The subscriptions at Exact, one per topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<ActiveSubscription>,
}

impl WebhookTarget {
    /// The URL messages go to, for a subscription in namespace `ns`; Err says what is wrong.
    pub fn resolve(&self, ns: &str) -> Result<url::Url, String> {
        let raw = match (&self.service, &self.url) {
            (Some(s), None) => {
                let path = s.path.as_deref().unwrap_or("/");
                let slash = if path.starts_with('/') { "" } else { "/" };
                format!(
                    "http://{}.{}.svc:{}{slash}{path}",
                    s.name,
                    s.namespace.as_deref().unwrap_or(ns),
                    s.port
                )
            }
            (None, Some(u)) => u.clone(),
            _ => return Err("spec.target needs exactly one of service or url".into()),
        };
        let url = url::Url::parse(&raw).map_err(|e| format!("spec.target is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("spec.target must be an http or https URL".into());
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve() {
        let svc = WebhookTarget {
            service: Some(ServiceTarget {
                name: "shop".into(),
                namespace: None,
                port: 8080,
                path: Some("hooks/exact".into()),
            }),
            url: None,
        };
        assert_eq!(
            svc.resolve("prod").expect("ok").as_str(),
            "http://shop.prod.svc:8080/hooks/exact"
        );
        let url = WebhookTarget {
            service: None,
            url: Some("http://127.0.0.1:9/x".into()),
        };
        assert_eq!(
            url.resolve("p").expect("ok").as_str(),
            "http://127.0.0.1:9/x"
        );
        assert!(WebhookTarget::default().resolve("p").is_err());
        let ftp = WebhookTarget {
            service: None,
            url: Some("ftp://x/".into()),
        };
        assert!(ftp.resolve("p").is_err());
    }
}
