//! Who a connection's token belongs to: `/api/v1/current/Me` (user, current division),
//! recorded in state, with an Event when a consent changed the person or company.

use crate::context::Context;
use crate::crd::ExactConnection;
use crate::events::event;
use crate::resolve::Resolved;
use crate::state::ConnectionState;
use crate::state_store::StateHandle;
use crate::token::who_am_i;
use kube::runtime::events::EventType;

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
    let Some(token) = state.access_token.clone() else {
        return;
    };
    match who_am_i(&r.http, &r.settings.api_base_url, &token).await {
        Ok(me) => {
            let change = state.record_me(&me, new_consent, conn.spec.division);
            if let Err(e) = handle.write(state, Some(&rv)).await {
                tracing::warn!(error = %e, "storing who the token belongs to failed; it is asked again later");
            }
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
        }
        Err(e) if conn.spec.division.is_none() && state.division.is_none() => {
            event(ctx, conn, EventType::Warning, "DivisionDiscoveryFailed", e).await;
        }
        Err(e) => tracing::debug!(error = %e, "Me request failed; the user is asked again later"),
    }
}
