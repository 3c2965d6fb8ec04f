//! Who a connection's token belongs to: `/api/v1/current/Me` (user, current division),
//! recorded in state, with an Event when a consent changed the person or company.

use crate::conditions::{find_ready, reason};
use crate::context::Context;
use crate::crd::client_key;
use crate::crd::{ExactConnection, ExactConnectionStatus};
use crate::events::event;
use crate::resolve::Resolved;
use crate::state::ConnectionState;
use crate::state_store::StateHandle;
use crate::token::who_am_i;
use kube::runtime::events::EventType;
use kube::ResourceExt;

/// Asks Me with the state's access token (a REST call, not a token call) and stores the
/// answer. `new_consent`: the chain was just created by a consent, so a different user or
/// division than before is worth an Event (someone else took the connection over).
pub async fn identify(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    handle: &StateHandle,
    state: &mut ConnectionState,
    rv: String,
    new_consent: bool,
) {
    if ask_me(ctx, conn, r, state, new_consent).await {
        if let Err(e) = handle.write(state, Some(&rv)).await {
            tracing::warn!(error = %e, "storing who the token belongs to failed; it is asked again later");
        }
    }
}

/// Asks Me with the state's access token and records the answer in `state` only; whether
/// it answered. After a refresh the answer is not written by itself: the status that
/// reconcile writes carries it, [`identity_from_status`] takes it back into the loaded
/// state, and the state Secret's next write (the next claim) stores it. That saves a new
/// connection its sixth write.
pub async fn ask_me(
    ctx: &Context,
    conn: &ExactConnection,
    r: &Resolved,
    state: &mut ConnectionState,
    new_consent: bool,
) -> bool {
    let Some(token) = state.access_token.clone() else {
        return false;
    };
    match who_am_i(&r.http, &r.settings.api_base_url, &token).await {
        Ok(me) => {
            let change = state.record_me(&me, new_consent, conn.spec.division);
            if let Some((old, new)) = change.user {
                let note = format!(
                    "this consent was given by a different Exact user (UserID {new}, before {old}): a different person or company now holds this connection"
                );
                event(ctx, conn, EventType::Warning, "ExactUserChanged", note).await;
            }
            if let (true, Some((old, new))) = (new_consent, change.division) {
                let note = format!(
                    "the consenting user's current division is {new} (before {old}); the token is published for {new}"
                );
                event(ctx, conn, EventType::Warning, "DivisionChanged", note).await;
            }
            true
        }
        Err(e) if conn.spec.division.is_none() && state.division.is_none() => {
            event(ctx, conn, EventType::Warning, "DivisionDiscoveryFailed", e).await;
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "Me request failed; the user is asked again later");
            false
        }
    }
}

/// Takes the current chain's user (and, without `spec.division`, its division) from
/// `status` into a `state` that has none, when that status was written for this very grant
/// (its lastRefreshTime is the state's): Me's answer after a refresh reaches the state
/// Secret only with its next write, and until then that status holds it (also across a
/// restart). A status of an earlier grant says nothing about this chain. Whether it took
/// anything. Pure.
pub fn identity_from_status(
    state: &mut ConnectionState,
    status: &ExactConnectionStatus,
    spec_division: Option<i64>,
) -> bool {
    let (None, Some(granted), Some(user)) = (
        state.exact_user_id.as_ref(),
        state.last_refresh_at,
        status.exact_user_id.as_ref(),
    ) else {
        return false;
    };
    if status.last_refresh_time != Some(granted) {
        return false;
    }
    state.exact_user_id = Some(user.clone());
    state.exact_user_name = status.exact_user_name.clone();
    if spec_division.is_none() && state.division.is_none() {
        state.division = status.division;
    }
    true
}

/// Condition type set (True) while another connection on the same client holds a consent
/// of the same Exact user.
pub const DUPLICATE_USER: &str = "DuplicateUser";

/// Another connection on the same ExactOAuthClient whose consent is the same Exact user's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SameUser {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its chain is dead (ReauthorizationRequired): it is the replaced one.
    pub dead: bool,
    /// Its uid.
    pub uid: String,
    /// Its token calls in the rolling 24 h (status.tokenCalls24h).
    pub token_calls24h: u32,
}

impl SameUser {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The connections among `all` (with their freshest status, from `status_of`) on the
/// same client as `me` whose Exact user is `user_id`, in a stable order. Pure.
pub fn same_user_peers(
    me: &ExactConnection,
    user_id: &str,
    all: &[std::sync::Arc<ExactConnection>],
    status_of: impl Fn(&ExactConnection) -> Option<ExactConnectionStatus>,
) -> Vec<SameUser> {
    let my_client = client_key(me);
    let my_uid = me.uid();
    let mut peers: Vec<SameUser> = all
        .iter()
        .filter(|c| c.uid() != my_uid && client_key(c) == my_client)
        .filter_map(|c| {
            let status = status_of(c)?;
            (status.exact_user_id.as_deref() == Some(user_id)).then(|| SameUser {
                namespace: c.namespace().unwrap_or_default(),
                name: c.name_any(),
                dead: find_ready(&status.conditions)
                    .is_some_and(|r| r.reason == reason::REAUTHORIZATION_REQUIRED),
                uid: c.uid().unwrap_or_default(),
                token_calls24h: status.token_calls24h.unwrap_or(0),
            })
        })
        .collect();
    peers.sort_by_key(SameUser::id);
    peers
}

/// The DuplicateUser condition's message. Pure.
pub fn duplicate_message(user: &str, peers: &[SameUser]) -> String {
    let names: Vec<String> = peers.iter().map(SameUser::id).collect();
    format!(
        "Exact user {user} also consented on connection {} (same ExactOAuthClient): Exact keeps one grant per user per app, so the older consent's chain stops working; serve several divisions from one connection with spec.divisions instead",
        names.join(", ")
    )
}

/// What to add to a ReauthorizationRequired message when a live connection of the same
/// user exists: its newer consent replaced this grant. Pure.
pub fn replaced_note(user: &str, peers: &[SameUser]) -> Option<String> {
    let live: Vec<String> = peers.iter().filter(|p| !p.dead).map(SameUser::id).collect();
    (!live.is_empty()).then(|| {
        format!(
            "a newer consent by the same Exact user {user} on connection {} replaced this grant (Exact keeps one grant per user per app)",
            live.join(", ")
        )
    })
}

/// [`same_user_peers`] over the watched connections of that user (the user index), each
/// with the freshest status known.
pub fn peers_in_cache(ctx: &Context, me: &ExactConnection, user_id: &str) -> Vec<SameUser> {
    let all = ctx.caches.connections_of_user(&client_key(me), user_id);
    same_user_peers(me, user_id, &all, |c| ctx.caches.freshest_status(c))
}

/// How a user is named in messages: the user name when known, else the UserID.
pub fn user_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{n} (UserID {id})"),
        None => format!("UserID {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::ready;
    use crate::crd::{ClientRef, ExactConnectionSpec, TargetSecret};
    use std::sync::Arc;

    fn conn(
        ns: &str,
        name: &str,
        client: &str,
        user: Option<&str>,
        why: &str,
    ) -> Arc<ExactConnection> {
        let mut c = ExactConnection::new(
            name,
            ExactConnectionSpec {
                client_ref: ClientRef {
                    name: client.into(),
                    namespace: Some("apps".into()),
                },
                refresh_token_secret_ref: None,
                division: None,
                target: TargetSecret::default(),
                refresh_before: None,
                suspend: false,
                divisions: vec![],
                all_divisions: false,
            },
        );
        c.metadata.namespace = Some(ns.into());
        c.metadata.uid = Some(format!("uid-{ns}-{name}"));
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("valid");
        c.status = Some(ExactConnectionStatus {
            conditions: vec![ready(
                &[],
                why == reason::TOKEN_PUBLISHED,
                why,
                "",
                None,
                now,
            )],
            exact_user_id: user.map(str::to_string),
            ..Default::default()
        });
        Arc::new(c)
    }

    #[test]
    fn peers_are_same_user_on_same_client_only() {
        let me = conn(
            "a",
            "old",
            "app",
            Some("u1"),
            reason::REAUTHORIZATION_REQUIRED,
        );
        let all = vec![
            me.clone(),
            conn("b", "new", "app", Some("u1"), reason::TOKEN_PUBLISHED),
            conn(
                "b",
                "other-user",
                "app",
                Some("u2"),
                reason::TOKEN_PUBLISHED,
            ),
            conn(
                "b",
                "other-app",
                "app-2",
                Some("u1"),
                reason::TOKEN_PUBLISHED,
            ),
            conn("b", "unknown-user", "app", None, reason::TOKEN_PUBLISHED),
        ];
        let peers = same_user_peers(&me, "u1", &all, |c| c.status.clone());
        assert_eq!(
            peers.iter().map(SameUser::id).collect::<Vec<_>>(),
            vec!["b/new"]
        );
        assert!(!peers[0].dead);
        let msg = duplicate_message("jan (UserID u1)", &peers);
        assert!(msg.contains("b/new") && msg.contains("jan"), "{msg}");
        let note = replaced_note("jan", &peers).expect("a live newer consent");
        assert!(
            note.contains("newer consent") && note.contains("b/new"),
            "{note}"
        );
        // Seen from the live one, the peer is dead: no replacement note.
        let from_new = same_user_peers(&all[1], "u1", &all, |c| c.status.clone());
        assert_eq!(
            from_new.iter().map(SameUser::id).collect::<Vec<_>>(),
            vec!["a/old"]
        );
        assert!(from_new[0].dead);
        assert_eq!(replaced_note("jan", &from_new), None);
    }

    #[test]
    fn the_status_of_this_grant_lends_its_user_to_a_state_without_one() {
        let t = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).expect("valid");
        let status = ExactConnectionStatus {
            last_refresh_time: Some(t(0)),
            exact_user_id: Some("u1".into()),
            exact_user_name: Some("jan".into()),
            division: Some(100),
            ..Default::default()
        };
        let granted = ConnectionState {
            last_refresh_at: Some(t(0)),
            ..Default::default()
        };
        let mut st = granted.clone();
        assert!(identity_from_status(&mut st, &status, None));
        assert_eq!(
            (
                st.exact_user_id.as_deref(),
                st.exact_user_name.as_deref(),
                st.division
            ),
            (Some("u1"), Some("jan"), Some(100))
        );
        // With spec.division the status shows the spec's: the state keeps none of it.
        let mut st = granted.clone();
        assert!(identity_from_status(&mut st, &status, Some(100)));
        assert_eq!(
            (st.exact_user_id.as_deref(), st.division),
            (Some("u1"), None)
        );
        // A status of an earlier grant says nothing about this chain.
        let mut st = ConnectionState {
            last_refresh_at: Some(t(570)),
            ..Default::default()
        };
        assert!(!identity_from_status(&mut st, &status, None));
        assert_eq!((st.exact_user_id, st.division), (None, None));
        // Nothing granted yet, or a user already stored: left alone.
        let mut st = ConnectionState::default();
        assert!(!identity_from_status(&mut st, &status, None));
        let mut st = ConnectionState {
            exact_user_id: Some("u2".into()),
            division: Some(7),
            ..granted
        };
        assert!(!identity_from_status(&mut st, &status, None));
        assert_eq!(
            (st.exact_user_id.as_deref(), st.division),
            (Some("u2"), Some(7))
        );
    }
}
