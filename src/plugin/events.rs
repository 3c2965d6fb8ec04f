//! Events about one object from both Event APIs (events.k8s.io/v1, which the operator
//! writes, and core v1, which older tools write), merged, de-duplicated and sorted by time.

use super::cluster::describe;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::api::{Api, ListParams};
use kube::Client;
use serde::Serialize;
use std::collections::BTreeSet;

/// One Event, normalized across both APIs.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// When it (last) happened.
    pub time: Option<Timestamp>,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    /// CamelCase reason, e.g. BootstrapImported.
    pub reason: String,
    /// Who reported it.
    pub source: String,
    /// How often it happened (series or legacy count); 1 for single events.
    pub count: i32,
    /// The note/message.
    pub message: String,
    /// The Event object's uid, to merge both APIs' views of the same object.
    #[serde(skip)]
    pub uid: String,
}

/// Whether `r` refers to the object (kind, name and, when both are known, uid).
fn refers_to(r: &ObjectReference, kind: &str, name: &str, uid: Option<&str>) -> bool {
    r.kind.as_deref() == Some(kind)
        && r.name.as_deref() == Some(name)
        && match (r.uid.as_deref(), uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Normalizes an events.k8s.io/v1 Event.
pub fn from_new(e: &NewEvent) -> EventRow {
    let time = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    EventRow {
        time,
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        source: e
            .reporting_controller
            .clone()
            .or_else(|| {
                e.deprecated_source
                    .as_ref()
                    .and_then(|s| s.component.clone())
            })
            .unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1)
            .max(1),
        message: e.note.clone().unwrap_or_default(),
        uid: e.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Normalizes a core v1 Event.
pub fn from_core(e: &CoreEvent) -> EventRow {
    let time = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    EventRow {
        time,
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        source: e
            .reporting_component
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
            .unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(e.count)
            .unwrap_or(1)
            .max(1),
        message: e.message.clone().unwrap_or_default(),
        uid: e.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Merges rows from both APIs: one row per Event object (by uid), oldest first, only the
/// last `limit`.
pub fn merge(rows: impl IntoIterator<Item = EventRow>, limit: usize) -> Vec<EventRow> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<EventRow> = rows
        .into_iter()
        .filter(|r| r.uid.is_empty() || seen.insert(r.uid.clone()))
        .collect();
    out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.reason.cmp(&b.reason)));
    let skip = out.len().saturating_sub(limit);
    out.split_off(skip)
}

/// Events about `kind` `namespace/name`, from both APIs, the last `limit`. An API that
/// cannot be read (RBAC, not served) is skipped and reported in the returned notes.
pub async fn about(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    uid: Option<&str>,
    limit: usize,
) -> (Vec<EventRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let new_api: Api<NewEvent> = Api::namespaced(client.clone(), namespace);
    let selected = ListParams::default().fields(&format!("regarding.name={name}"));
    let listed = match new_api.list(&selected).await {
        Ok(list) => Ok(list),
        // Older API servers do not support this field selector: filter here instead.
        Err(kube::Error::Api(s)) if s.code == 400 => new_api.list(&ListParams::default()).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(list) => rows.extend(
            list.items
                .iter()
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .is_some_and(|r| refers_to(r, kind, name, uid))
                })
                .map(from_new),
        ),
        Err(e) => notes.push(format!(
            "events.k8s.io/v1 Events unavailable: {}",
            describe(&e)
        )),
    }

    let core_api: Api<CoreEvent> = Api::namespaced(client.clone(), namespace);
    let selected = ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    match core_api.list(&selected).await {
        Ok(list) => rows.extend(
            list.items
                .iter()
                .filter(|e| refers_to(&e.involved_object, kind, name, uid))
                .map(from_core),
        ),
        Err(e) => notes.push(format!("core v1 Events unavailable: {}", describe(&e))),
    }
    (merge(rows, limit), notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uid: &str, secs: i64, reason: &str) -> EventRow {
        EventRow {
            time: Some(Timestamp::from_second(1_800_000_000 + secs).expect("valid")),
            type_: "Normal".into(),
            reason: reason.into(),
            source: "exact-operator".into(),
            count: 1,
            message: String::new(),
            uid: uid.into(),
        }
    }

    #[test]
    fn merge_dedupes_sorts_and_keeps_the_latest() {
        let rows = vec![
            row("b", 20, "Authorized"),
            row("a", 10, "BootstrapImported"),
            row("b", 20, "Authorized"),
            row("c", 30, "RefreshFailing"),
        ];
        let merged = merge(rows, 2);
        let reasons: Vec<&str> = merged.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, vec!["Authorized", "RefreshFailing"]);
        assert_eq!(merge(vec![row("a", 1, "X"), row("a", 1, "X")], 10).len(), 1);
    }

    #[test]
    fn both_apis_normalize_alike() {
        let new: NewEvent = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e1", "uid": "u1"},
            "eventTime": "2027-01-15T08:00:00.000000Z",
            "type": "Warning", "reason": "RefreshFailing", "note": "boom",
            "reportingController": "exact-operator", "action": "Reconcile",
            "regarding": {"kind": "ExactConnection", "name": "acme", "uid": "c1"},
        }))
        .expect("valid event");
        let core: CoreEvent = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e1", "uid": "u1"},
            "lastTimestamp": "2027-01-15T08:00:00Z", "count": 3,
            "type": "Warning", "reason": "RefreshFailing", "message": "boom",
            "source": {"component": "exact-operator"},
            "involvedObject": {"kind": "ExactConnection", "name": "acme", "uid": "c1"},
        }))
        .expect("valid event");
        let (a, b) = (from_new(&new), from_core(&core));
        assert_eq!(
            (a.reason.as_str(), a.message.as_str()),
            ("RefreshFailing", "boom")
        );
        assert_eq!(
            (b.reason.as_str(), b.message.as_str()),
            ("RefreshFailing", "boom")
        );
        assert_eq!(a.source, b.source);
        assert_eq!(a.time, b.time);
        assert_eq!(b.count, 3);
        assert!(refers_to(
            &core.involved_object,
            "ExactConnection",
            "acme",
            Some("c1")
        ));
        assert!(!refers_to(
            &core.involved_object,
            "ExactConnection",
            "acme",
            Some("c2")
        ));
        assert!(!refers_to(&core.involved_object, "Secret", "acme", None));
    }
}
