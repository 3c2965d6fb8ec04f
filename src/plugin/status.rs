//! `kubectl exact status`: one line per ExactConnection, and an exit code scripts can use
//! (non-zero when any listed connection is not Ready).

use super::cluster::{is_missing_resource_type, ready_condition, Readiness, Session};
use super::table::{self, NONE};
use super::webhooks::{self, WebhookRow};
use super::{out, render_data, Error, Format, EXIT_NOT_READY, EXIT_OK};
use crate::crd::ExactConnection;
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

/// One connection as `status` reports it (the JSON/YAML item; the table shows the same).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace of the connection.
    pub namespace: String,
    /// Name of the connection.
    pub name: String,
    /// Its Ready condition (`ready`, `readyStatus`, `reason`, `message` in JSON).
    #[serde(flatten)]
    pub readiness: Readiness,
    /// The Exact division (company).
    pub division: Option<i64>,
    /// When the published access token expires.
    pub access_token_expires_at: Option<Timestamp>,
    /// When the operator plans the next token call.
    pub next_refresh_time: Option<Timestamp>,
    /// When the refresh token expires if unused.
    pub refresh_token_expires_at: Option<Timestamp>,
    /// When the last successful token call was sent.
    pub last_refresh_time: Option<Timestamp>,
    /// Failed token calls since the last success.
    pub consecutive_failures: u32,
    /// The workload Secret's name, once published.
    pub secret_name: Option<String>,
    /// When the connection was created.
    pub created: Option<Timestamp>,
}

impl Row {
    /// Summarizes one connection (no Secret is read; status never holds a token).
    pub fn from_connection(conn: &ExactConnection) -> Row {
        let status = conn.status.clone().unwrap_or_default();
        let ready = ready_condition(conn);
        Row {
            namespace: conn.metadata.namespace.clone().unwrap_or_default(),
            name: conn.metadata.name.clone().unwrap_or_default(),
            readiness: Readiness::of(ready),
            division: status.division.or(conn.spec.division),
            access_token_expires_at: status.access_token_expires_at,
            next_refresh_time: status.next_refresh_time,
            refresh_token_expires_at: status.refresh_token_expires_at,
            last_refresh_time: status.last_refresh_time,
            consecutive_failures: status.consecutive_failures,
            secret_name: status.secret_name,
            created: conn.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// The JSON/YAML document of `status`.
#[derive(Serialize, Debug)]
pub struct Report {
    /// The listed connections, sorted by namespace and name.
    pub items: Vec<Row>,
    /// The ExactWebhookSubscriptions in the same scope, sorted by namespace and name.
    #[serde(rename = "webhookSubscriptions")]
    pub webhook_subscriptions: Vec<WebhookRow>,
}

/// Renders rows as the `status` table; `all_namespaces` adds the NAMESPACE column.
pub fn render_table(rows: &[Row], all_namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "NAME",
        "READY",
        "REASON",
        "DIVISION",
        "TOKEN EXPIRES",
        "NEXT REFRESH",
        "REFRESH TOKEN EXPIRES",
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
                r.readiness.ready_status.clone(),
                r.readiness.reason.clone().unwrap_or_else(|| NONE.into()),
                r.division.map_or_else(|| NONE.into(), |d| d.to_string()),
                table::or_none(r.access_token_expires_at, now, table::expiry),
                table::or_none(r.next_refresh_time, now, table::relative),
                table::or_none(r.refresh_token_expires_at, now, table::expiry),
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

/// The exit code for a listing: [`EXIT_NOT_READY`] when any connection or webhook
/// subscription is not Ready, else [`EXIT_OK`] (also for an empty list).
pub fn exit_code(rows: &[Row], hooks: &[WebhookRow]) -> u8 {
    if rows.iter().all(|r| r.readiness.ready) && hooks.iter().all(|h| h.readiness.ready) {
        EXIT_OK
    } else {
        EXIT_NOT_READY
    }
}

/// The "nothing here" line, like kubectl's "No resources found in x namespace.".
pub fn empty_message(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No ExactConnections found in {ns} namespace."),
        None => "No ExactConnections found in any namespace.".into(),
    }
}

/// Runs `status`: lists connections of the namespace (or all), prints them, returns the exit code.
pub async fn run(session: &Session, all_namespaces: bool, format: Format) -> Result<u8, Error> {
    let api: Api<ExactConnection> = if all_namespaces {
        Api::all(session.client.clone())
    } else {
        session.connections()
    };
    let scope = if all_namespaces {
        "all namespaces".to_string()
    } else {
        format!("namespace {}", session.namespace)
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 && is_missing_resource_type(&s) => {
                Error::CrdMissing
            }
            e => Error::kube(format!("listing ExactConnections in {scope}"), e),
        })?;
    let mut rows: Vec<Row> = list.items.iter().map(Row::from_connection).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let hooks = webhooks::list(session, all_namespaces).await?;
    let code = exit_code(&rows, &hooks);
    let now = Timestamp::now();
    match format {
        Format::Table => {
            if rows.is_empty() {
                let ns = (!all_namespaces).then_some(session.namespace.as_str());
                super::note(&empty_message(ns));
            } else {
                out(&render_table(&rows, all_namespaces, now));
            }
            if !hooks.is_empty() {
                out(&format!(
                    "\n{}",
                    webhooks::render_table(&hooks, all_namespaces, now)
                ));
            }
        }
        Format::Json | Format::Yaml => out(&render_data(
            &Report {
                items: rows,
                webhook_subscriptions: hooks,
            },
            format,
        )?),
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Condition, ExactConnectionStatus};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    fn connection(name: &str, ready: Option<(&str, &str)>) -> ExactConnection {
        let mut c: ExactConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
            "metadata": {"name": name, "namespace": "team-a",
                         "creationTimestamp": at(-300).to_string()},
            "spec": {"clientRef": {"name": "app"}},
        }))
        .expect("valid connection");
        c.status = ready.map(|(status, reason)| ExactConnectionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: "m".into(),
                last_transition_time: at(-10),
                observed_generation: Some(1),
            }],
            access_token_expires_at: Some(at(252)),
            next_refresh_time: Some(at(227)),
            refresh_token_expires_at: Some(at(30 * 86_400)),
            division: Some(123456),
            ..Default::default()
        });
        c
    }

    #[test]
    fn rows_summarize_the_ready_condition() {
        let row = Row::from_connection(&connection("acme", Some(("True", "TokenPublished"))));
        assert!(row.readiness.ready);
        assert_eq!(row.readiness.reason.as_deref(), Some("TokenPublished"));
        assert_eq!(row.division, Some(123456));
        let unseen = Row::from_connection(&connection("new", None));
        assert!(!unseen.readiness.ready);
        assert_eq!(unseen.readiness.ready_status, "Unknown");
        assert_eq!(unseen.readiness.reason, None);
    }

    #[test]
    fn table_shows_relative_times() {
        let rows = vec![
            Row::from_connection(&connection("acme", Some(("True", "TokenPublished")))),
            Row::from_connection(&connection("new", None)),
        ];
        let out = render_table(&rows, false, at(0));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME   READY"), "{out}");
        assert!(lines[0].ends_with("REFRESH TOKEN EXPIRES   AGE"), "{out}");
        for cell in [
            "acme",
            "True",
            "TokenPublished",
            "123456",
            "in 4m12s",
            "in 3m47s",
            "in 30d",
            "5m",
        ] {
            assert!(lines[1].contains(cell), "{cell} missing in {:?}", lines[1]);
        }
        assert!(
            lines[2].contains("Unknown") && lines[2].contains("<none>"),
            "{out}"
        );
        let all = render_table(&rows, true, at(0));
        assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
        assert!(all.lines().nth(1).is_some_and(|l| l.starts_with("team-a")));
    }

    #[test]
    fn expired_tokens_say_so() {
        let rows = vec![Row::from_connection(&connection(
            "acme",
            Some(("False", "RefreshFailing")),
        ))];
        let out = render_table(&rows, false, at(300));
        assert!(out.contains("expired 48s ago"), "{out}");
        assert!(out.contains("1m13s ago"), "overdue refresh: {out}");
    }

    #[test]
    fn exit_code_is_non_zero_when_anything_is_not_ready() {
        let ready = Row::from_connection(&connection("a", Some(("True", "TokenPublished"))));
        let failing = Row::from_connection(&connection("b", Some(("False", "ClientNotReady"))));
        assert_eq!(exit_code(&[], &[]), EXIT_OK);
        assert_eq!(exit_code(std::slice::from_ref(&ready), &[]), EXIT_OK);
        assert_eq!(exit_code(&[ready, failing], &[]), EXIT_NOT_READY);
        assert_eq!(
            empty_message(Some("team-a")),
            "No ExactConnections found in team-a namespace."
        );
        assert_eq!(
            empty_message(None),
            "No ExactConnections found in any namespace."
        );
    }

    #[test]
    fn json_items_carry_the_fields() {
        let rows = vec![Row::from_connection(&connection(
            "acme",
            Some(("True", "TokenPublished")),
        ))];
        let report = Report {
            items: rows,
            webhook_subscriptions: Vec::new(),
        };
        let json = render_data(&report, Format::Json).expect("renders");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let item = &v["items"][0];
        assert_eq!(item["name"], "acme");
        assert_eq!(item["ready"], true);
        assert_eq!(item["reason"], "TokenPublished");
        assert_eq!(item["accessTokenExpiresAt"], at(252).to_string());
        assert_eq!(v["webhookSubscriptions"], serde_json::json!([]));
    }
}
