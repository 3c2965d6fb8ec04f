//! Kubernetes Events on a connection (never a secret in a note).

use crate::context::Context;
use crate::crd::ExactConnection;
use kube::runtime::events::{Event, EventType};
use kube::Resource;

/// Publishes an Event on `conn`; a failure is logged, never fatal.
pub async fn event(
    ctx: &Context,
    conn: &ExactConnection,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = reconcile_event(type_, reason, note);
    if let Err(e) = ctx.events.publish(&ev, &conn.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}

/// Like [`event`], published in the background (see `Events::publish_soon`).
pub fn event_soon(
    ctx: &Context,
    conn: &ExactConnection,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = reconcile_event(type_, reason, note);
    ctx.events.publish_soon(ev, conn.object_ref(&()));
}

fn reconcile_event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    }
}
