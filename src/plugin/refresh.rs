//! `kubectl exact refresh`: ask the operator to look at a connection now, by setting the
//! `exact-operator.io/refresh-requested-at` annotation, and report what it did. The plugin
//! never calls Exact itself: the operator decides whether a token call is due (Exact refuses
//! refreshes outside its window, and a refused or doubled call can kill the token chain).

use super::cluster::{qualified, ready_condition, Session};
use super::progress::Progress;
use super::table;
use super::{out, Error, EXIT_NOT_READY, EXIT_OK, EXIT_TIMEOUT};
use crate::crd::{ExactConnection, REFRESH_REQUEST_ANNOTATION};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use std::time::Duration;

/// How often the wait re-reads the connection.
const POLL: Duration = Duration::from_millis(500);

/// The merge patch that sets the refresh-request annotation to `value`.
pub fn request_patch(value: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {REFRESH_REQUEST_ANNOTATION: value}}})
}

/// Whether the operator has acted on request `value`.
pub fn handled(conn: &ExactConnection, value: &str) -> bool {
    conn.status
        .as_ref()
        .and_then(|s| s.handled_refresh_request.as_deref())
        == Some(value)
}

/// What happened between `before` (when the request was made) and `after` (once handled),
/// and the exit code: [`EXIT_OK`] when Ready, [`EXIT_NOT_READY`] otherwise.
pub fn summarize(
    before: &ExactConnection,
    after: &ExactConnection,
    now: Timestamp,
) -> (String, u8) {
    let status = after.status.clone().unwrap_or_default();
    let ready = ready_condition(after);
    let old_expiry = before
        .status
        .as_ref()
        .and_then(|s| s.access_token_expires_at);
    let new_expiry = status.access_token_expires_at;
    let token = match (old_expiry, new_expiry) {
        (_, None) => "none published".to_string(),
        (Some(old), Some(new)) if old == new => {
            "unchanged: no token call was due (the operator refreshes only inside Exact's window)"
                .to_string()
        }
        (Some(old), Some(new)) => format!(
            "renewed: expiry moved from {} to {}",
            table::instant(old),
            table::instant(new)
        ),
        (None, Some(new)) => format!("published: expires {}", table::instant(new)),
    };
    let mut text = table::fields(
        2,
        &[
            (
                "Ready",
                ready.map_or_else(
                    || "Unknown".to_string(),
                    |c| format!("{} ({}): {}", c.status, c.reason, c.message),
                ),
            ),
            (
                "Handled request",
                status.handled_refresh_request.clone().unwrap_or_default(),
            ),
            (
                "Last refresh",
                table::instant_and(status.last_refresh_time, now, table::relative),
            ),
            (
                "Next refresh",
                table::instant_and(status.next_refresh_time, now, table::relative),
            ),
            (
                "Access token expires",
                table::instant_and(new_expiry, now, table::expiry),
            ),
            ("Token", token),
        ],
    );
    text.insert_str(
        0,
        &format!(
            "The operator handled the refresh request for {}:\n",
            qualified(after)
        ),
    );
    let code = if ready.is_some_and(|c| c.status == "True") {
        EXIT_OK
    } else {
        EXIT_NOT_READY
    };
    (text, code)
}

/// Runs `refresh`: sets the annotation, waits up to `wait` for the operator to handle it.
pub async fn run(session: &Session, name: &str, wait: Duration) -> Result<u8, Error> {
    let before = session.connection(name).await?;
    let id = qualified(&before);
    let value = Timestamp::now().to_string();
    session
        .connections()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&request_patch(&value)),
        )
        .await
        .map_err(|e| Error::kube(format!("annotating ExactConnection {id}"), e))?;
    out(&format!(
        "Requested a refresh of {id} ({REFRESH_REQUEST_ANNOTATION}={value}).\n"
    ));
    if wait.is_zero() {
        return Ok(EXIT_OK);
    }
    let mut progress = Progress::new();
    progress.set(&format!(
        "waiting for the operator to handle the request for {id}"
    ));
    loop {
        let conn = session.connection(name).await?;
        if handled(&conn, &value) {
            progress.finish();
            let (text, code) = summarize(&before, &conn, Timestamp::now());
            out(&text);
            return Ok(code);
        }
        if progress.elapsed() >= wait {
            progress.finish();
            out(&format!(
                "The operator did not handle the request within {}: is it running and watching namespace {}?\n",
                table::compact(wait.as_secs() as i64),
                session.namespace
            ));
            return Ok(EXIT_TIMEOUT);
        }
        progress
            .sleep(POLL.min(wait.saturating_sub(progress.elapsed())))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Condition, ExactConnectionStatus};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    fn conn(expires: Option<i64>, handled: Option<&str>) -> ExactConnection {
        let mut c: ExactConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
            "metadata": {"name": "acme", "namespace": "team-a"},
            "spec": {"clientRef": {"name": "app"}},
        }))
        .expect("valid connection");
        c.status = Some(ExactConnectionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "TokenPublished".into(),
                message: "access token published".into(),
                last_transition_time: t(0),
                observed_generation: None,
            }],
            access_token_expires_at: expires.map(t),
            next_refresh_time: expires.map(|e| t(e - 1)),
            handled_refresh_request: handled.map(str::to_string),
            ..Default::default()
        });
        c
    }

    #[test]
    fn patch_sets_only_the_annotation() {
        let p = request_patch("2027-01-15T08:00:00Z");
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"annotations": {"exact-operator.io/refresh-requested-at": "2027-01-15T08:00:00Z"}}})
        );
        assert!(handled(&conn(None, Some("v1")), "v1"));
        assert!(!handled(&conn(None, Some("v0")), "v1"));
        assert!(!handled(&conn(None, None), "v1"));
    }

    #[test]
    fn summary_tells_whether_the_token_changed() {
        let (text, code) = summarize(&conn(Some(6), None), &conn(Some(6), Some("v1")), t(0));
        assert_eq!(code, EXIT_OK);
        assert!(
            text.contains("Token:") && text.contains("unchanged"),
            "{text}"
        );
        assert!(text.contains("Handled request:       v1"), "{text}");
        assert!(text.contains("True (TokenPublished)"), "{text}");
        let (text, _) = summarize(&conn(Some(6), None), &conn(Some(12), Some("v1")), t(0));
        assert!(text.contains("renewed: expiry moved from"), "{text}");
        assert!(text.contains("(in 12s)"), "{text}");
        let mut failing = conn(None, Some("v1"));
        if let Some(s) = failing.status.as_mut() {
            s.conditions[0].status = "False".into();
        }
        let (text, code) = summarize(&conn(None, None), &failing, t(0));
        assert_eq!(code, EXIT_NOT_READY);
        assert!(text.contains("none published"), "{text}");
    }
}
