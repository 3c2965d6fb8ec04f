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
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.events.publish(&ev, &conn.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}
