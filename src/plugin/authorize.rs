//! `kubectl exact authorize`: show where a person consents (`status.authorizationUrl`), or
//! why there is no such URL, then wait until the connection is Ready or fails.

use super::cluster::{is_failure_reason, is_ready, qualified, ready_condition, Session};
use super::progress::Progress;
use super::{note, out, Error, EXIT_NOT_READY, EXIT_OK, EXIT_TIMEOUT};
use crate::conditions::reason;
use crate::consent::REAUTHORIZE_ANNOTATION;
use crate::crd::{Condition, ExactConnection};
use kube::api::{Patch, PatchParams};
use std::time::Duration;

/// How often the wait re-reads the connection.
const POLL: Duration = Duration::from_secs(1);

/// Where a connection stands for `authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ready=True: done.
    Ready {
        /// The Ready reason, e.g. TokenPublished.
        reason: String,
        /// The Ready message.
        message: String,
    },
    /// A failure reason that authorizing (again) does not fix, or a new failure after the
    /// wait started.
    Failed {
        /// The Ready reason, e.g. ClientNotReady.
        reason: String,
        /// The Ready message.
        message: String,
    },
    /// Still waiting (for consent, a bootstrap Secret, or the operator).
    Waiting {
        /// The current Ready reason, or None before the operator wrote status.
        reason: Option<String>,
    },
}

/// What was seen when the wait started, to tell a new failure from the one that made the
/// person run `authorize` (e.g. ReauthorizationRequired).
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    ready: Option<Condition>,
    bootstrap_digest: Option<String>,
}

impl Baseline {
    /// Records the connection as it is now.
    pub fn of(conn: &ExactConnection) -> Baseline {
        Baseline {
            ready: ready_condition(conn).cloned(),
            bootstrap_digest: conn
                .status
                .as_ref()
                .and_then(|s| s.imported_bootstrap_digest.clone()),
        }
    }
}

/// Classifies `conn` against the `baseline` taken when the wait started.
pub fn verdict(conn: &ExactConnection, baseline: &Baseline) -> Verdict {
    let Some(c) = ready_condition(conn) else {
        return Verdict::Waiting { reason: None };
    };
    if c.status == "True" {
        return Verdict::Ready {
            reason: c.reason.clone(),
            message: c.message.clone(),
        };
    }
    let digest = conn
        .status
        .as_ref()
        .and_then(|s| s.imported_bootstrap_digest.clone());
    let changed = baseline.ready.as_ref() != Some(c) || baseline.bootstrap_digest != digest;
    let needs_consent = c.reason == reason::REAUTHORIZATION_REQUIRED;
    if is_failure_reason(&c.reason) && (!needs_consent || changed) {
        return Verdict::Failed {
            reason: c.reason.clone(),
            message: c.message.clone(),
        };
    }
    Verdict::Waiting {
        reason: Some(c.reason.clone()),
    }
}

/// The authorization URL, if the operator published a non-empty one.
pub fn authorization_url(conn: &ExactConnection) -> Option<&str> {
    conn.status
        .as_ref()
        .and_then(|s| s.authorization_url.as_deref())
        .filter(|u| !u.trim().is_empty())
}

/// Why `conn` has no authorization URL, one reason per line (empty when it has one).
pub fn no_url_reasons(conn: &ExactConnection) -> Vec<String> {
    if authorization_url(conn).is_some() {
        return Vec::new();
    }
    let mut why = Vec::new();
    let ready = ready_condition(conn);
    match ready {
        None => why.push(format!(
            "the operator has not reported on {} yet: is it running and watching namespace {}?",
            qualified(conn),
            conn.metadata.namespace.as_deref().unwrap_or_default()
        )),
        Some(c) if c.status == "True" => why.push(format!(
            "it is already Ready ({}: {}); nothing to authorize",
            c.reason, c.message
        )),
        Some(_) => {}
    }
    if let Some(r) = &conn.spec.refresh_token_secret_ref {
        why.push(format!(
            "it bootstraps from the refresh token in Secret {} (key {}): to (re)authorize it, put a new refresh token there; the operator imports each new value once",
            r.name, r.key
        ));
    } else if ready.is_some_and(|c| c.status != "True") {
        why.push(
            "the operator publishes an authorization URL only when it serves the authorization-code flow (started with --public-url / EXACT_PUBLIC_URL and --oauth-addr, and the client's redirectUri set to <public-url>/oauth2/callback); configure that, or set spec.refreshTokenSecretRef to a Secret holding a refresh token"
                .into(),
        );
    }
    why
}

/// Whether waiting can lead anywhere: false when there is neither a URL nor a bootstrap
/// Secret while the connection needs consent.
pub fn can_progress(conn: &ExactConnection) -> bool {
    let needs_consent = ready_condition(conn).is_some_and(|c| {
        c.reason == reason::AWAITING_AUTHORIZATION || c.reason == reason::REAUTHORIZATION_REQUIRED
    });
    !needs_consent
        || authorization_url(conn).is_some()
        || conn.spec.refresh_token_secret_ref.is_some()
}

/// Tries to open `url` in a browser (`xdg-open`, else `open`).
pub async fn open_browser(url: &str) -> Result<(), String> {
    let mut failures = Vec::new();
    for opener in ["xdg-open", "open"] {
        let child = tokio::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(Duration::from_secs(10), child).await {
            Ok(Ok(status)) if status.success() => return Ok(()),
            Ok(Ok(status)) => failures.push(format!("{opener} exited with {status}")),
            Ok(Err(e)) => failures.push(format!("{opener}: {e}")),
            Err(_) => failures.push(format!("{opener} did not return within 10s")),
        }
    }
    Err(failures.join("; "))
}

fn print_url(conn: &ExactConnection, url: &str) {
    out(&format!(
        "Open this URL in a browser and sign in to Exact Online to authorize {}:\n\n  {url}\n\n",
        qualified(conn)
    ));
}

/// The merge patch asking for a re-authorization link (request `value`).
pub fn reauthorize_patch(value: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {REAUTHORIZE_ANNOTATION: value}}})
}

/// Runs `authorize --force`: asks for a link although the connection may work, prints it,
/// and waits until a consent through it completed (the link is gone and the connection is
/// Ready) or failed.
pub async fn run_forced(
    session: &Session,
    name: &str,
    open: bool,
    timeout: Duration,
) -> Result<u8, Error> {
    let before = session.connection(name).await?;
    let id = qualified(&before);
    let old_url = authorization_url(&before).map(str::to_string);
    let value = jiff::Timestamp::now().to_string();
    session
        .connections()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&reauthorize_patch(&value)),
        )
        .await
        .map_err(|e| Error::kube(format!("annotating ExactConnection {id}"), e))?;
    out(&format!(
        "Asked the operator for a re-authorization link for {id} ({REAUTHORIZE_ANNOTATION}={value}).\n"
    ));
    let mut progress = Progress::new();
    let mut shown: Option<String> = None;
    loop {
        let conn = session.connection(name).await?;
        let url = authorization_url(&conn).map(str::to_string);
        match (&shown, url) {
            (None, Some(u)) if Some(&u) != old_url.as_ref() || !is_ready(&conn) => {
                progress.finish();
                print_url(&conn, &u);
                if open {
                    if let Err(e) = open_browser(&u).await {
                        note(&format!(
                            "Could not open a browser ({e}); open the URL yourself."
                        ));
                    }
                }
                shown = Some(u);
            }
            (Some(_), None) if is_ready(&conn) => {
                progress.finish();
                out(&format!("{id} is authorized again and Ready.\n"));
                return Ok(EXIT_OK);
            }
            (Some(_), Some(u)) if shown.as_ref() != Some(&u) => {
                progress.finish();
                print_url(&conn, &u);
                shown = Some(u);
            }
            _ => {}
        }
        let what = if shown.is_some() {
            "waiting for the consent"
        } else {
            "waiting for the operator to issue a link"
        };
        progress.set(&format!("{id}: {what}"));
        if progress.elapsed() >= timeout {
            progress.finish();
            out(&format!(
                "Timed out after {} {what} for {id}.\n",
                super::table::compact(timeout.as_secs() as i64)
            ));
            return Ok(EXIT_TIMEOUT);
        }
        progress
            .sleep(POLL.min(timeout.saturating_sub(progress.elapsed())))
            .await;
    }
}

/// Runs `authorize`: returns the exit code.
pub async fn run(
    session: &Session,
    name: &str,
    open: bool,
    timeout: Duration,
) -> Result<u8, Error> {
    let mut conn = session.connection(name).await?;
    let baseline = Baseline::of(&conn);
    let id = qualified(&conn);
    match verdict(&conn, &baseline) {
        Verdict::Ready { reason, message } => {
            out(&format!(
                "{id} is already Ready ({reason}): {message}\nTo replace its authorization (e.g. by another Exact user), run `kubectl exact authorize {name} --force`.\n"
            ));
            if let Some(r) = &conn.spec.refresh_token_secret_ref {
                out(&format!(
                    "There is no authorization URL: it bootstraps from Secret {} (key {}); put a new refresh token there to re-authorize.\n",
                    r.name, r.key
                ));
            }
            return Ok(EXIT_OK);
        }
        Verdict::Failed { reason, message } => {
            out(&format!(
                "Cannot authorize {id}: the operator reports {reason}: {message}\nAuthorizing does not fix that; see `kubectl exact inspect {name}`.\n"
            ));
            return Ok(EXIT_NOT_READY);
        }
        Verdict::Waiting { .. } => {}
    }
    let mut shown_url = authorization_url(&conn).map(str::to_string);
    match &shown_url {
        Some(url) => {
            print_url(&conn, url);
            if open {
                if let Err(e) = open_browser(url).await {
                    note(&format!(
                        "Could not open a browser ({e}); open the URL yourself."
                    ));
                }
            }
        }
        None => {
            let mut text = format!("{id} has no authorization URL:\n");
            for why in no_url_reasons(&conn) {
                text.push_str(&format!("  - {why}\n"));
            }
            out(&text);
            if !can_progress(&conn) {
                return Ok(EXIT_NOT_READY);
            }
        }
    }

    let mut progress = Progress::new();
    loop {
        match verdict(&conn, &baseline) {
            Verdict::Ready { reason, message } => {
                progress.finish();
                out(&format!("{id} is Ready ({reason}): {message}\n"));
                return Ok(EXIT_OK);
            }
            Verdict::Failed { reason, message } => {
                progress.finish();
                out(&format!("{id} failed: {reason}: {message}\n"));
                return Ok(EXIT_NOT_READY);
            }
            Verdict::Waiting { reason } => {
                let url = authorization_url(&conn).map(str::to_string);
                if url.is_some() && url != shown_url {
                    progress.finish();
                    if let Some(u) = &url {
                        print_url(&conn, u);
                    }
                    shown_url = url;
                }
                let state = reason.unwrap_or_else(|| "no status yet".into());
                progress.set(&format!("waiting for {id} to become Ready: {state}"));
            }
        }
        if progress.elapsed() >= timeout {
            progress.finish();
            let last = ready_condition(&conn)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "no status from the operator".into());
            out(&format!(
                "Timed out after {} waiting for {id} to become Ready; last state: {last}\n",
                super::table::compact(timeout.as_secs() as i64)
            ));
            return Ok(EXIT_TIMEOUT);
        }
        progress
            .sleep(POLL.min(timeout.saturating_sub(progress.elapsed())))
            .await;
        conn = session.connection(name).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ExactConnectionStatus;
    use jiff::Timestamp;

    fn conn(ready: Option<(&str, &str)>, bootstrap: bool, url: Option<&str>) -> ExactConnection {
        let mut spec = serde_json::json!({"clientRef": {"name": "app"}});
        if bootstrap {
            spec["refreshTokenSecretRef"] = serde_json::json!({"name": "boot", "key": "rt"});
        }
        let mut c: ExactConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
            "metadata": {"name": "acme", "namespace": "team-a"}, "spec": spec,
        }))
        .expect("valid connection");
        c.status = ready.map(|(status, reason)| ExactConnectionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: format!("{reason} message"),
                last_transition_time: Timestamp::from_second(1_800_000_000).expect("valid"),
                observed_generation: None,
            }],
            authorization_url: url.map(str::to_string),
            ..Default::default()
        });
        c
    }

    #[test]
    fn ready_and_blocking_failures_end_the_wait() {
        let base = Baseline::default();
        assert!(matches!(
            verdict(&conn(Some(("True", "TokenPublished")), true, None), &base),
            Verdict::Ready { reason, .. } if reason == "TokenPublished"
        ));
        for r in [
            "InvalidClient",
            "ClientNotReady",
            "ClientNotAllowed",
            "TargetSecretConflict",
            "InvalidSpec",
        ] {
            assert!(
                matches!(
                    verdict(&conn(Some(("False", r)), true, None), &base),
                    Verdict::Failed { .. }
                ),
                "{r} fails"
            );
        }
        assert_eq!(
            verdict(
                &conn(Some(("False", "AwaitingAuthorization")), true, None),
                &base
            ),
            Verdict::Waiting {
                reason: Some("AwaitingAuthorization".into())
            }
        );
        assert_eq!(
            verdict(&conn(None, true, None), &base),
            Verdict::Waiting { reason: None }
        );
    }

    #[test]
    fn reauthorization_required_fails_only_when_it_is_new() {
        let dead = conn(
            Some(("False", "ReauthorizationRequired")),
            false,
            Some("http://x/start"),
        );
        let baseline = Baseline::of(&dead);
        assert!(
            matches!(verdict(&dead, &baseline), Verdict::Waiting { .. }),
            "the reason to authorize is not a failure of the wait"
        );
        let mut again = dead.clone();
        if let Some(s) = again.status.as_mut() {
            s.conditions[0].message = "new consent failed too".into();
        }
        assert!(matches!(verdict(&again, &baseline), Verdict::Failed { .. }));
        let fresh = conn(Some(("False", "AwaitingAuthorization")), false, None);
        assert!(matches!(
            verdict(&dead, &Baseline::of(&fresh)),
            Verdict::Failed { reason, .. } if reason == "ReauthorizationRequired"
        ));
    }

    #[test]
    fn missing_url_is_explained() {
        let boot = conn(Some(("True", "TokenPublished")), true, None);
        let why = no_url_reasons(&boot).join("\n");
        assert!(why.contains("already Ready"), "{why}");
        assert!(why.contains("Secret boot (key rt)"), "{why}");
        let waiting = conn(Some(("False", "AwaitingAuthorization")), false, None);
        let why = no_url_reasons(&waiting).join("\n");
        assert!(why.contains("--public-url"), "{why}");
        assert!(
            !can_progress(&waiting),
            "nothing can happen without URL or bootstrap"
        );
        let unseen = no_url_reasons(&conn(None, false, None)).join("\n");
        assert!(
            unseen.contains("not reported") && unseen.contains("team-a"),
            "{unseen}"
        );
        let with_url = conn(
            Some(("False", "AwaitingAuthorization")),
            false,
            Some("http://x/start"),
        );
        assert!(no_url_reasons(&with_url).is_empty());
        assert_eq!(authorization_url(&with_url), Some("http://x/start"));
        assert!(can_progress(&with_url));
        assert!(can_progress(&conn(
            Some(("False", "AwaitingAuthorization")),
            true,
            None
        )));
    }
}
