//! ExactWebhookSubscriptions as `kubectl exact status` and `inspect` show them: one row per
//! subscription object, with the subscriptions it holds at Exact (topic and Exact's ID;
//! neither is a secret).

use super::cluster::{is_missing_resource_type, Readiness, Session};
use super::table::{self, NONE};
use super::Error;
use crate::crd::Condition;
use crate::webhook::crd::ExactWebhookSubscription;
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

/// One ExactWebhookSubscription, summarized.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRow {
    /// Namespace of the subscription object.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The ExactConnection it uses.
    pub connection: String,
    /// The division the subscriptions live in (status, else spec).
    pub division: Option<i64>,
    /// The topics asked for.
    pub topics: Vec<String>,
    /// The subscriptions at Exact: `topic=ID`.
    pub active: Vec<String>,
    /// The CallbackURL registered at Exact.
    pub callback_url: Option<String>,
    /// Its Ready condition (`ready`, `readyStatus`, `reason`, `message` in JSON).
    #[serde(flatten)]
    pub readiness: Readiness,
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl WebhookRow {
    /// Summarizes one subscription object.
    pub fn from_subscription(s: &ExactWebhookSubscription) -> WebhookRow {
        let status = s.status.clone().unwrap_or_default();
        let ready: Option<&Condition> = s
            .status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"));
        WebhookRow {
            namespace: s.metadata.namespace.clone().unwrap_or_default(),
            name: s.metadata.name.clone().unwrap_or_default(),
            connection: s.spec.connection_ref.name.clone(),
            division: status.division.or(s.spec.division),
            topics: s.spec.topics.clone(),
            active: status
                .subscriptions
                .iter()
                .map(|a| format!("{}={}", a.topic, a.id))
                .collect(),
            callback_url: status.callback_url,
            readiness: Readiness::of(ready),
            created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// Lists the subscriptions of the session's namespace (or all), sorted by namespace and
/// name. A cluster without the ExactWebhookSubscription kind (an older chart) has none.
pub async fn list(session: &Session, all_namespaces: bool) -> Result<Vec<WebhookRow>, Error> {
    let api: Api<ExactWebhookSubscription> = if all_namespaces {
        Api::all(session.client.clone())
    } else {
        Api::namespaced(session.client.clone(), &session.namespace)
    };
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 404 && is_missing_resource_type(&s) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(Error::kube("listing ExactWebhookSubscriptions", e)),
    };
    let mut rows: Vec<WebhookRow> = list
        .items
        .iter()
        .map(WebhookRow::from_subscription)
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// Renders rows as a table; `all_namespaces` adds the NAMESPACE column.
pub fn render_table(rows: &[WebhookRow], all_namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "SUBSCRIPTION",
        "CONNECTION",
        "DIVISION",
        "TOPICS",
        "AT EXACT",
        "READY",
        "REASON",
        "AGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![
                r.name.clone(),
                r.connection.clone(),
                r.division.map_or_else(|| NONE.into(), |d| d.to_string()),
                r.topics.join(","),
                format!("{}/{}", r.active.len(), r.topics.len()),
                r.readiness.ready_status.clone(),
                r.readiness.reason.clone().unwrap_or_else(|| NONE.into()),
                table::or_none(r.created, now, table::age),
            ];
            if all_namespaces {
                line.insert(0, r.namespace.clone());
            }
            line
        })
        .collect();
    table::render(&headers, &cells)
}

/// The inspect section for one connection's subscriptions.
pub fn render_section(rows: &[WebhookRow]) -> String {
    let mut s = String::from("Webhook subscriptions:\n");
    if rows.is_empty() {
        s += "  <none>\n";
    }
    for r in rows {
        s += &format!(
            "  {} ({}, division {}): {}\n",
            r.name,
            match &r.readiness.reason {
                Some(reason) => format!("Ready={} {reason}", r.readiness.ready_status),
                None => format!("Ready={}", r.readiness.ready_status),
            },
            r.division.map_or_else(|| NONE.into(), |d| d.to_string()),
            r.readiness.message.clone().unwrap_or_else(|| NONE.into()),
        );
        s += &table::fields(
            4,
            &[
                ("Topics", r.topics.join(", ")),
                (
                    "At Exact",
                    if r.active.is_empty() {
                        NONE.into()
                    } else {
                        r.active.join(", ")
                    },
                ),
                (
                    "Callback URL",
                    r.callback_url.clone().unwrap_or_else(|| NONE.into()),
                ),
            ],
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    fn subscription(ready: bool) -> ExactWebhookSubscription {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactWebhookSubscription",
            "metadata": {"name": "accounts", "namespace": "team-a",
                         "creationTimestamp": at(-600).to_string()},
            "spec": {"connectionRef": {"name": "acme"}, "topics": ["Accounts", "Items"],
                     "target": {"url": "http://sink.team-a.svc/"}},
            "status": {
                "division": 123456,
                "callbackUrl": "https://op.example/webhooks/team-a/accounts",
                "subscriptions": [{"topic": "Accounts", "id": "0f8e-1"}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                "reason": if ready {"SubscriptionsActive"} else {"ExactRefused"},
                                "message": "m", "lastTransitionTime": at(-60).to_string()}]
            }
        }))
        .expect("valid subscription")
    }

    #[test]
    fn rows_show_topics_ids_and_readiness() {
        let row = WebhookRow::from_subscription(&subscription(false));
        assert_eq!(row.connection, "acme");
        assert_eq!(row.active, vec!["Accounts=0f8e-1".to_string()]);
        assert!(!row.readiness.ready);
        assert_eq!(row.readiness.reason.as_deref(), Some("ExactRefused"));
        let table = render_table(std::slice::from_ref(&row), false, at(0));
        assert!(table.contains("accounts"), "{table}");
        assert!(table.contains("1/2"), "{table}");
        assert!(table.contains("Accounts,Items"), "{table}");
        let section = render_section(&[row]);
        assert!(section.contains("Accounts=0f8e-1"), "{section}");
        assert!(section.contains("Ready=False ExactRefused"), "{section}");
        assert!(render_section(&[]).contains("<none>"));
    }

    #[test]
    fn a_subscription_that_is_not_ready_fails_status() {
        use crate::plugin::status::exit_code;
        use crate::plugin::{EXIT_NOT_READY, EXIT_OK};
        let failing = WebhookRow::from_subscription(&subscription(false));
        let ready = WebhookRow::from_subscription(&subscription(true));
        assert_eq!(exit_code(&[], std::slice::from_ref(&ready)), EXIT_OK);
        assert_eq!(exit_code(&[], &[ready, failing]), EXIT_NOT_READY);
    }
}
