//! The result of a connection reconcile and how it lands in status (server-side apply,
//! skipped when nothing changed).

use super::Error;
use crate::conditions::ready;
use crate::consent;
use crate::context::Context;
use crate::crd::Condition;
use crate::crd::{ExactConnection, ExactConnectionStatus};
use crate::identity::{
    duplicate_message, peers_in_cache, replaced_note, user_label, SameUser, DUPLICATE_USER,
};
use crate::metrics::ConnectionTimes;
use crate::schedule::{refresh_token_expires_at, RefreshPolicy};
use crate::state::ConnectionState;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use std::time::Duration;

/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "exact-operator";

/// What a reconcile concluded.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Ready condition status; None leaves the status as it is (requeue only).
    pub ready: Option<(bool, &'static str, String)>,
    /// Timing and division facts from state.
    pub access_token_expires_at: Option<Timestamp>,
    /// Last successful call.
    pub last_refresh_time: Option<Timestamp>,
    /// Next planned call.
    pub next_refresh_time: Option<Timestamp>,
    /// When the refresh token expires unused.
    pub refresh_token_expires_at: Option<Timestamp>,
    /// Division.
    pub division: Option<i64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Imported bootstrap digest.
    pub bootstrap_digest: Option<String>,
    /// Exact user of the chain, and the one before a takeover.
    pub exact_user_id: Option<String>,
    /// That user's name.
    pub exact_user_name: Option<String>,
    /// The user before the last consent, when someone else consented.
    pub previous_exact_user_id: Option<String>,
    /// The re-authorization request the last consent answered.
    pub handled_reauthorize: Option<String>,
    /// When to reconcile again.
    pub requeue: Option<Duration>,
    /// The same as a moment (a planned call): the requeue is measured from the end of the
    /// reconcile, so the writes after planning do not push every refresh later.
    pub requeue_at: Option<Timestamp>,
    /// This connection's token calls in the rolling 24 h.
    pub token_calls24h: Option<u32>,
    /// An Event told just before the status (type, reason, note; never a secret).
    pub event: Option<(EventType, &'static str, String)>,
}

impl Outcome {
    /// Whether publishing it may write (an Event or a status): it waits for a telling turn.
    pub fn tells(&self) -> bool {
        self.event.is_some() || self.ready.is_some()
    }
    /// Ready=True.
    pub fn ready(reason: &'static str, message: String) -> Self {
        Outcome {
            ready: Some((true, reason, message)),
            ..Default::default()
        }
    }
    /// Ready=False.
    pub fn not_ready(reason: &'static str, message: String) -> Self {
        Outcome {
            ready: Some((false, reason, message)),
            ..Default::default()
        }
    }
    /// No status change, just look again later.
    pub fn requeue_only(after: Duration) -> Self {
        Outcome {
            requeue: Some(after),
            ..Default::default()
        }
    }
    /// Copies the facts of `state`.
    pub fn with_state(mut self, state: &ConnectionState, policy: &RefreshPolicy) -> Self {
        self.access_token_expires_at = state.times.access_token_expires_at;
        self.last_refresh_time = state.last_refresh_at;
        self.refresh_token_expires_at = state
            .times
            .refresh_token_issued_at
            .map(|t| refresh_token_expires_at(policy, t));
        self.division = state.division;
        self.consecutive_failures = state.times.consecutive_failures;
        self.bootstrap_digest = state.bootstrap_digest.clone();
        self.exact_user_id = state.exact_user_id.clone();
        self.exact_user_name = state.exact_user_name.clone();
        self.previous_exact_user_id = state.previous_exact_user_id.clone();
        self.handled_reauthorize = state.handled_reauthorize.clone();
        self.token_calls24h =
            Some(crate::budget::counts(&state.token_calls, Timestamp::now()).calls);
        self
    }
    /// Plans the next call at `due`.
    pub fn next_at(mut self, due: Timestamp, now: Timestamp) -> Self {
        self.next_refresh_time = Some(due);
        let wait = due.duration_since(now);
        self.requeue = Some(Duration::try_from(wait).unwrap_or(Duration::ZERO));
        self.requeue_at = Some(due);
        self
    }
}

/// Applies the outcome to the connection's status when it differs.
pub async fn write_status(
    conn: &ExactConnection,
    ctx: &Context,
    out: Outcome,
) -> Result<(), Error> {
    let uid = conn.uid().unwrap_or_default();
    let prev = ctx.caches.freshest_status(conn).unwrap_or_default();
    let Some((status, reason)) = project(conn, ctx, out, &prev, Timestamp::now()) else {
        return Ok(());
    };
    ctx.metrics.connection(
        &conn.namespace().unwrap_or_default(),
        &conn.name_any(),
        reason,
        &ConnectionTimes {
            access_token_expires_at: status.access_token_expires_at,
            refresh_token_expires_at: status.refresh_token_expires_at,
            next_refresh_at: status.next_refresh_time,
        },
    );
    user_calls_metric(conn, ctx, &status);
    if same_status(&prev, &status) {
        return Ok(());
    }
    let api: Api<ExactConnection> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "exact-operator.io/v1alpha1",
        "kind": "ExactConnection",
        "status": status,
    });
    let written = api
        .patch_status(
            &conn.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.caches
        .remember_status(&uid, written.metadata.resource_version.as_deref(), &status);
    announce_duplicate(conn, ctx, &prev, &status).await;
    Ok(())
}

/// The status a reconcile's outcome projects to (with its Ready reason), given the status
/// before; None leaves the status as it is.
fn project(
    conn: &ExactConnection,
    ctx: &Context,
    out: Outcome,
    prev: &ExactConnectionStatus,
    now: Timestamp,
) -> Option<(ExactConnectionStatus, &'static str)> {
    let (ok, reason, mut message) = out.ready.clone()?;
    let generation = conn.metadata.generation;
    let same_user = SameUserFacts::of(conn, ctx, &out, prev);
    if let (true, Some(note)) = (
        reason == crate::conditions::reason::REAUTHORIZATION_REQUIRED,
        same_user.replaced_note(),
    ) {
        message = format!("{message}; {note}");
    }
    let condition = ready(&prev.conditions, ok, reason, &message, generation, now);
    let mut conditions = vec![condition];
    conditions.extend(same_user.condition(prev, generation, now));
    let served = ServedDivisions::of(ctx, conn);
    conditions.extend(served.condition(prev, generation, now));
    let status = ExactConnectionStatus {
        conditions,
        observed_generation: generation,
        access_token_expires_at: out.access_token_expires_at,
        last_refresh_time: out.last_refresh_time,
        next_refresh_time: out.next_refresh_time,
        refresh_token_expires_at: out.refresh_token_expires_at,
        division: conn.spec.division.or(out.division),
        consecutive_failures: out.consecutive_failures,
        imported_bootstrap_digest: out
            .bootstrap_digest
            .or(prev.imported_bootstrap_digest.clone()),
        authorization_url: authorization_url(
            conn,
            ctx,
            reason,
            out.handled_reauthorize.as_deref(),
            prev.authorization_url.as_deref(),
            now,
        ),
        exact_user_id: out.exact_user_id.or(prev.exact_user_id.clone()),
        exact_user_name: out.exact_user_name.or(prev.exact_user_name.clone()),
        previous_exact_user_id: out
            .previous_exact_user_id
            .or(prev.previous_exact_user_id.clone()),
        handled_refresh_request: conn
            .annotations()
            .get(crate::crd::REFRESH_REQUEST_ANNOTATION)
            .cloned()
            .or(prev.handled_refresh_request.clone()),
        secret_name: Some(crate::resolve::target_name(conn)),
        message: Some(message),
        divisions: served.selection.published,
        divisions_discovered_at: served.discovered_at,
        token_calls24h: out.token_calls24h.or(prev.token_calls24h),
        exact_user_token_calls24h: same_user.user_calls(out.token_calls24h.or(prev.token_calls24h)),
    };
    Some((status, reason))
}

/// The start link (with a fresh or still-good ticket) while a person's consent is what the
/// connection needs, or while a re-authorization request is pending; see `consent`.
fn authorization_url(
    conn: &ExactConnection,
    ctx: &Context,
    reason: &str,
    handled_reauthorize: Option<&str>,
    current_link: Option<&str>,
    now: Timestamp,
) -> Option<String> {
    use crate::conditions::reason::{AWAITING_AUTHORIZATION, REAUTHORIZATION_REQUIRED};
    let base = ctx.settings.public_url.as_deref()?;
    let key = ctx.consent_key.as_ref()?;
    let input = consent::IssueInput {
        awaiting_consent: reason == AWAITING_AUTHORIZATION || reason == REAUTHORIZATION_REQUIRED,
        reauthorize_requested_at: conn
            .annotations()
            .get(consent::REAUTHORIZE_ANNOTATION)
            .map(String::as_str),
        handled_reauthorize,
        current_link,
    };
    consent::link_now(
        key,
        base,
        &conn.namespace().unwrap_or_default(),
        &conn.name_any(),
        &conn.uid().unwrap_or_default(),
        &input,
        now,
        ctx.settings.consent_ticket_ttl,
    )
}

fn same_status(a: &ExactConnectionStatus, b: &ExactConnectionStatus) -> bool {
    a == b
}

/// Who else on the same client holds a consent of this connection's Exact user.
struct SameUserFacts {
    label: String,
    peers: Vec<SameUser>,
}

impl SameUserFacts {
    fn of(
        conn: &ExactConnection,
        ctx: &Context,
        out: &Outcome,
        prev: &ExactConnectionStatus,
    ) -> Self {
        let id = out.exact_user_id.clone().or(prev.exact_user_id.clone());
        let name = out.exact_user_name.clone().or(prev.exact_user_name.clone());
        let Some(id) = id else {
            return SameUserFacts {
                label: String::new(),
                peers: vec![],
            };
        };
        SameUserFacts {
            label: user_label(&id, name.as_deref()),
            peers: peers_in_cache(ctx, conn, &id),
        }
    }

    /// The user's calls in 24 h: this connection's plus the others'.
    fn user_calls(&self, own: Option<u32>) -> Option<u32> {
        let own = own?;
        Some(
            self.peers
                .iter()
                .fold(own, |a, p| a.saturating_add(p.token_calls24h)),
        )
    }

    fn replaced_note(&self) -> Option<String> {
        replaced_note(&self.label, &self.peers)
    }

    /// DuplicateUser=True while such connections exist (absent otherwise).
    fn condition(
        &self,
        prev: &ExactConnectionStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Option<Condition> {
        if self.peers.is_empty() {
            return None;
        }
        let since = prev
            .conditions
            .iter()
            .find(|c| c.type_ == DUPLICATE_USER && c.status == "True")
            .map(|c| c.last_transition_time)
            .unwrap_or(now);
        Some(Condition {
            type_: DUPLICATE_USER.into(),
            status: "True".into(),
            reason: "SameExactUser".into(),
            message: duplicate_message(&self.label, &self.peers),
            last_transition_time: since,
            observed_generation: generation,
        })
    }
}

/// The DuplicateUser condition's message, if any.
fn duplicate_of(status: &ExactConnectionStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == DUPLICATE_USER)
        .map(|c| c.message.as_str())
}

/// A newly found (or changed) same-user duplicate: an Event here, and the other
/// connections reconciled soon so they report it too (after the watch saw this status).
async fn announce_duplicate(
    conn: &ExactConnection,
    ctx: &Context,
    prev: &ExactConnectionStatus,
    status: &ExactConnectionStatus,
) {
    let Some(message) = duplicate_of(status) else {
        return;
    };
    if duplicate_of(prev) == Some(message) {
        return;
    }
    crate::events::event(
        ctx,
        conn,
        EventType::Warning,
        "DuplicateUser",
        message.to_string(),
    )
    .await;
    let Some(user) = status.exact_user_id.as_deref() else {
        return;
    };
    let peers: Vec<ObjectRef<ExactConnection>> = peers_in_cache(ctx, conn, user)
        .into_iter()
        .map(|p| ObjectRef::new(&p.name).within(&p.namespace))
        .collect();
    for peer in peers {
        ctx.caches.reconcile_soon(peer);
    }
}

/// The divisions a connection serves besides its primary one (spec.divisions or
/// spec.allDivisions), as last discovered.
struct ServedDivisions {
    wanted: bool,
    selection: crate::divisions::Selection,
    discovered_at: Option<Timestamp>,
    error: Option<String>,
}

impl ServedDivisions {
    fn of(ctx: &Context, conn: &ExactConnection) -> Self {
        let wanted = crate::divisions::wanted(&conn.spec);
        let known = wanted.then(|| crate::divisions::known(ctx, conn)).flatten();
        ServedDivisions {
            wanted,
            selection: known
                .as_ref()
                .map(|k| crate::divisions::select(&conn.spec, &k.divisions))
                .unwrap_or_default(),
            discovered_at: known.as_ref().map(|k| k.at),
            error: known.and_then(|k| k.error),
        }
    }

    /// DivisionsAvailable: True when every requested division is one the user may open,
    /// False naming the ones it may not; absent until first discovered.
    fn condition(
        &self,
        prev: &ExactConnectionStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Option<Condition> {
        if !self.wanted {
            return None;
        }
        self.discovered_at?;
        let missing = &self.selection.missing;
        let (status, reason, mut message) = if missing.is_empty() {
            let codes: Vec<String> = self
                .selection
                .published
                .iter()
                .map(|d| d.division.to_string())
                .collect();
            (
                "True",
                "DivisionsPublished",
                format!(
                    "divisions {} published in the divisions key",
                    codes.join(", ")
                ),
            )
        } else {
            let codes: Vec<String> = missing.iter().map(i64::to_string).collect();
            (
                "False",
                "DivisionNotAccessible",
                format!(
                    "the consenting Exact user may not open division(s) {}: left out of the divisions key; the others are published",
                    codes.join(", ")
                ),
            )
        };
        if let Some(e) = &self.error {
            message = format!(
                "{message} (last discovery failed: {e}; showing the divisions known before)"
            );
        }
        let since = prev
            .conditions
            .iter()
            .find(|c| c.type_ == DIVISIONS_AVAILABLE && c.status == status)
            .map(|c| c.last_transition_time)
            .unwrap_or(now);
        Some(Condition {
            type_: DIVISIONS_AVAILABLE.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        })
    }
}

/// Condition type about the divisions a connection serves.
pub const DIVISIONS_AVAILABLE: &str = "DivisionsAvailable";

/// exact_operator_token_calls_24h{client, exact_user}: the user's calls as this
/// connection sees them (every connection of the user computes the same sum).
fn user_calls_metric(conn: &ExactConnection, ctx: &Context, status: &ExactConnectionStatus) {
    let (Some(user), Some(calls)) = (&status.exact_user_id, status.exact_user_token_calls24h)
    else {
        return;
    };
    let (ns, name) = super::client_key(conn);
    let label = crate::metrics::UserLabel {
        client: format!("{ns}/{name}"),
        exact_user: user.clone(),
    };
    ctx.metrics
        .user_token_calls
        .get_or_create(&label)
        .set(i64::from(calls));
}
