//! The text rendering of `kubectl exact inspect` (the report itself is collected in
//! [`super::inspect`]): pure, so it is unit-tested without a cluster.

use super::inspect_report::{Report, EVENT_LIMIT};
use super::table::{self, NONE};
use crate::crd::Condition;
use jiff::Timestamp;

fn conditions_table(conditions: &[Condition], now: Timestamp) -> String {
    if conditions.is_empty() {
        return "  Conditions: <none>\n".into();
    }
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                table::age(c.last_transition_time, now),
                c.message.clone(),
            ]
        })
        .collect();
    indent(&table::render(
        &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
        &rows,
    ))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Renders the report as text for people.
pub fn render(r: &Report, now: Timestamp) -> String {
    let mut s = format!("ExactConnection {}/{}\n", r.namespace, r.name);
    s += &table::fields(
        2,
        &[(
            "Created",
            table::instant_and(r.created, now, table::relative),
        )],
    );
    s += "Spec:\n";
    let bootstrap = r.spec.bootstrap_secret.as_ref().map_or_else(
        || "<none> (authorization-code flow)".into(),
        |b| format!("Secret {} key {}", b.name, b.key),
    );
    s += &table::fields(
        2,
        &[
            ("Client", r.spec.client.clone()),
            ("Bootstrap secret", bootstrap),
            (
                "Division",
                r.spec
                    .division
                    .map_or_else(|| "<discovered via /current/Me>".into(), |d| d.to_string()),
            ),
            ("Target secret", r.spec.target_secret.clone()),
            (
                "Refresh before",
                r.spec
                    .refresh_before
                    .clone()
                    .unwrap_or_else(|| "25s (default)".into()),
            ),
            ("Suspend", r.spec.suspend.to_string()),
        ],
    );
    s += &format!("Client {}/{}:\n", r.client.namespace, r.client.name);
    if let Some(e) = &r.client.error {
        s += &format!("  cannot read it: {e}\n");
    } else if !r.client.found {
        s += "  not found\n";
    } else {
        s += &table::fields(
            2,
            &[("Client ID", r.client.client_id.clone().unwrap_or_default())],
        );
        s += &conditions_table(&r.client.conditions, now);
    }
    s += "Status:\n";
    match &r.status {
        None => s += "  <none>: the operator has not reported on this connection yet\n",
        Some(st) => {
            s += &table::fields(
                2,
                &[
                    ("Message", st.message.clone().unwrap_or_else(|| NONE.into())),
                    (
                        "Division",
                        st.division.map_or_else(|| NONE.into(), |d| d.to_string()),
                    ),
                    (
                        "Access token expires",
                        table::instant_and(st.access_token_expires_at, now, table::expiry),
                    ),
                    (
                        "Last refresh",
                        table::instant_and(st.last_refresh_time, now, table::relative),
                    ),
                    (
                        "Next refresh",
                        table::instant_and(st.next_refresh_time, now, table::relative),
                    ),
                    (
                        "Refresh token expires",
                        table::instant_and(st.refresh_token_expires_at, now, table::expiry),
                    ),
                    ("Consecutive failures", st.consecutive_failures.to_string()),
                    (
                        "Observed generation",
                        format!(
                            "{} (metadata.generation {})",
                            st.observed_generation
                                .map_or_else(|| NONE.into(), |g| g.to_string()),
                            r.generation.map_or_else(|| NONE.into(), |g| g.to_string())
                        ),
                    ),
                    (
                        "Authorization URL",
                        st.authorization_url.clone().unwrap_or_else(|| NONE.into()),
                    ),
                    (
                        "Handled refresh request",
                        st.handled_refresh_request
                            .clone()
                            .unwrap_or_else(|| NONE.into()),
                    ),
                ],
            );
            s += "Conditions:\n";
            s += &conditions_table(&st.conditions, now);
        }
    }
    s += "Secrets (keys only; values are never shown):\n";
    for k in &r.secrets {
        let what = match (&k.error, k.exists) {
            (Some(e), _) => format!("cannot read it: {e}"),
            (None, false) => "does not exist".into(),
            (None, true) if k.keys.is_empty() => "no keys".into(),
            (None, true) => k.keys.join(", "),
        };
        let owner = if k.exists && !k.owned_by_connection {
            " [NOT owned by this connection]"
        } else {
            ""
        };
        s += &format!("  {} ({}){owner}: {what}\n", k.name, k.role);
    }
    s += &super::webhooks::render_section(&r.webhook_subscriptions);
    s += &format!("Events (last {EVENT_LIMIT}):\n");
    if r.events.is_empty() {
        s += "  <none>\n";
    } else {
        let rows: Vec<Vec<String>> = r
            .events
            .iter()
            .map(|e| {
                let age = e.time.map_or_else(|| NONE.into(), |t| table::age(t, now));
                let age = if e.count > 1 {
                    format!("{age} (x{})", e.count)
                } else {
                    age
                };
                vec![
                    age,
                    e.type_.clone(),
                    e.reason.clone(),
                    e.source.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        s += &indent(&table::render(
            &["AGE", "TYPE", "REASON", "FROM", "MESSAGE"],
            &rows,
        ));
    }
    for n in &r.notes {
        s += &format!("Note: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExactConnectionStatus, SecretKeyRef};
    use crate::plugin::events::EventRow;
    use crate::plugin::inspect::{ClientSummary, SecretKeys, SpecSummary};
    use crate::plugin::{render_data, Format};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    fn report() -> Report {
        Report {
            namespace: "team-a".into(),
            name: "acme".into(),
            created: Some(at(-600)),
            generation: Some(2),
            spec: SpecSummary {
                client: "team-a/app".into(),
                bootstrap_secret: Some(SecretKeyRef {
                    name: "acme-bootstrap".into(),
                    key: "refresh-token".into(),
                }),
                division: None,
                target_secret: "acme-exact-token".into(),
                refresh_before: None,
                suspend: false,
            },
            client: ClientSummary {
                namespace: "team-a".into(),
                name: "app".into(),
                found: true,
                client_id: Some("app-1".into()),
                conditions: Vec::new(),
                error: None,
            },
            status: Some(ExactConnectionStatus {
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "TokenPublished".into(),
                    message: "access token published".into(),
                    last_transition_time: at(-60),
                    observed_generation: Some(2),
                }],
                access_token_expires_at: Some(at(252)),
                observed_generation: Some(2),
                ..Default::default()
            }),
            secrets: vec![
                SecretKeys {
                    role: "workload".into(),
                    name: "acme-exact-token".into(),
                    exists: true,
                    owned_by_connection: true,
                    keys: vec!["access_token".into(), "expires_at".into()],
                    error: None,
                },
                SecretKeys {
                    role: "state".into(),
                    name: "acme-exact-state".into(),
                    exists: false,
                    owned_by_connection: false,
                    keys: Vec::new(),
                    error: None,
                },
            ],
            webhook_subscriptions: Vec::new(),
            events: vec![EventRow {
                time: Some(at(-30)),
                type_: "Normal".into(),
                reason: "Authorized".into(),
                source: "exact-operator".into(),
                count: 2,
                message: "first access token published".into(),
                uid: "u".into(),
            }],
            notes: vec!["core v1 Events unavailable: forbidden".into()],
        }
    }

    #[test]
    fn text_has_every_section() {
        let text = render(&report(), at(0));
        for expected in [
            "ExactConnection team-a/acme",
            "Client:            team-a/app",
            "Client ID:  app-1\n  Conditions: <none>",
            "Secret acme-bootstrap key refresh-token",
            "<discovered via /current/Me>",
            "25s (default)",
            "(in 4m12s)",
            "Ready   True     TokenPublished   60s",
            "acme-exact-token (workload): access_token, expires_at",
            "acme-exact-state (state): does not exist",
            "30s (x2)",
            "Authorized",
            "Note: core v1 Events unavailable",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
    }

    #[test]
    fn foreign_secrets_are_flagged_and_json_has_the_sections() {
        let mut r = report();
        r.secrets[0].owned_by_connection = false;
        let text = render(&r, at(0));
        assert!(
            text.contains("acme-exact-token (workload) [NOT owned by this connection]"),
            "{text}"
        );
        let json = render_data(&r, Format::Json).expect("renders");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["spec"]["targetSecret"], "acme-exact-token");
        assert_eq!(v["secrets"][0]["keys"][0], "access_token");
        assert_eq!(v["events"][0]["reason"], "Authorized");
        assert!(v["events"][0].get("uid").is_none());
    }
}
