//! `docs/argocd-health.lua` (Argo CD resource health of ExactConnection and ExactOAuthClient)
//! run in a real Lua interpreter on objects whose status is built with the operator's own
//! types and condition helper, so a renamed reason or status field shows up here.
//!
//! Argo CD hands the object over as Lua tables converted from JSON, numbers as floats; the
//! conversion below does the same.

use exact_operator::conditions::{ready, reason};
use exact_operator::crd::{ExactConnectionStatus, ExactOAuthClientStatus};
use jiff::{SignedDuration, Timestamp};
use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{json, Value};

const SCRIPT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/argocd-health.lua");

/// Argo CD's result: (status, message).
fn health(object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(SCRIPT_PATH).expect("docs/argocd-health.lua exists");
    let lua = Lua::new();
    let obj = to_lua(&lua, object).expect("object converts to Lua");
    lua.globals().set("obj", obj).expect("set obj");
    let hs: Table = lua
        .load(&script)
        .set_name("argocd-health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("the health script failed on {object:#}: {e}"));
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: Option<String> = hs.get("message").expect("hs.message is a string or nil");
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "not an Argo CD health status: {status}"
    );
    (status, message.unwrap_or_default())
}

/// JSON -> Lua the way Argo CD does it: objects and arrays become tables (arrays 1-based),
/// every number a float, null fields absent.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => LuaValue::Number(n.as_f64().expect("finite number")),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.set(i + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(table)
        }
        Value::Object(fields) => {
            let table = lua.create_table()?;
            for (key, item) in fields {
                table.set(key.as_str(), to_lua(lua, item)?)?;
            }
            LuaValue::Table(table)
        }
    })
}

fn now() -> Timestamp {
    "2026-03-02T10:00:00Z".parse().expect("timestamp")
}

fn metadata(kind: &str, generation: i64) -> Value {
    json!({
        "apiVersion": "exact-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": "acme",
            "namespace": "finance",
            "generation": generation,
            "uid": "6a1b9c5e-8f57-4a43-9d0e-2f1c1e3b7d10",
            "resourceVersion": "4711",
            "creationTimestamp": "2026-03-01T09:00:00Z",
        },
    })
}

/// An ExactConnection at `generation` with the status the operator writes for a Ready
/// condition (`ok`, `why`, `message`) observed at `observed`.
fn connection(generation: i64, observed: i64, ok: bool, why: &str, message: &str) -> Value {
    let now = now();
    let condition = ready(&[], ok, why, message, Some(observed), now);
    let status = ExactConnectionStatus {
        conditions: vec![condition],
        observed_generation: Some(observed),
        access_token_expires_at: Some(now + SignedDuration::from_secs(600)),
        last_refresh_time: Some(now),
        next_refresh_time: Some(now + SignedDuration::from_secs(575)),
        refresh_token_expires_at: Some(now + SignedDuration::from_hours(720)),
        division: Some(123456),
        consecutive_failures: if ok { 0 } else { 2 },
        secret_name: Some("acme-exact-token".into()),
        message: Some(message.into()),
        ..ExactConnectionStatus::default()
    };
    let mut object = metadata("ExactConnection", generation);
    object["spec"] = json!({ "clientRef": { "name": "exact-app" } });
    object["status"] = serde_json::to_value(status).expect("status serializes");
    object
}

fn client(generation: i64, observed: i64, ok: bool, why: &str, message: &str) -> Value {
    let condition = ready(&[], ok, why, message, Some(observed), now());
    let status = ExactOAuthClientStatus {
        conditions: vec![condition],
        observed_generation: Some(observed),
    };
    let mut object = metadata("ExactOAuthClient", generation);
    object["spec"] = json!({
        "clientId": "00000000-0000-0000-0000-000000000000",
        "clientSecretRef": { "name": "exact-app", "key": "client-secret" },
    });
    object["status"] = serde_json::to_value(status).expect("status serializes");
    object
}

#[test]
fn status_json_is_shaped_like_the_operators() {
    let object = connection(
        3,
        3,
        true,
        reason::TOKEN_PUBLISHED,
        "access token published",
    );
    let condition = &object["status"]["conditions"][0];
    for field in [
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    ] {
        assert!(
            !condition[field].is_null(),
            "condition lacks {field}: {condition}"
        );
    }
    assert_eq!(object["status"]["observedGeneration"], 3);
}

#[test]
fn ready_true_is_healthy() {
    let (status, message) = health(&connection(
        3,
        3,
        true,
        reason::TOKEN_PUBLISHED,
        "access token published",
    ));
    assert_eq!(status, "Healthy");
    assert_eq!(message, "TokenPublished: access token published");
}

#[test]
fn a_failing_refresh_with_a_valid_token_is_still_healthy() {
    // The operator keeps Ready=True while the published token is valid.
    let (status, message) = health(&connection(
        1,
        1,
        true,
        reason::TOKEN_PUBLISHED,
        "token refresh failed 1 time(s) in a row: HTTP 503",
    ));
    assert_eq!(status, "Healthy");
    assert!(message.contains("HTTP 503"), "{message}");
}

#[test]
fn waiting_reasons_are_progressing() {
    for why in [reason::AWAITING_AUTHORIZATION, reason::PENDING] {
        let (status, message) = health(&connection(2, 2, false, why, "waiting"));
        assert_eq!(status, "Progressing", "{why}");
        assert_eq!(message, format!("{why}: waiting"));
    }
}

#[test]
fn reasons_that_need_attention_are_degraded() {
    for why in [
        reason::REAUTHORIZATION_REQUIRED,
        reason::INVALID_CLIENT,
        reason::CLIENT_NOT_READY,
        reason::CLIENT_NOT_ALLOWED,
        reason::TARGET_SECRET_CONFLICT,
        reason::INVALID_SPEC,
        reason::REFRESH_FAILING,
    ] {
        let (status, message) = health(&connection(4, 4, false, why, "details"));
        assert_eq!(status, "Degraded", "{why}");
        assert_eq!(message, format!("{why}: details"));
    }
}

#[test]
fn suspended_is_suspended() {
    let (status, message) = health(&connection(
        5,
        5,
        false,
        reason::SUSPENDED,
        "suspended: only keep-alive refreshes of the refresh token",
    ));
    assert_eq!(status, "Suspended");
    assert!(message.starts_with("Suspended: suspended"), "{message}");
}

#[test]
fn no_status_is_progressing() {
    for kind in ["ExactConnection", "ExactOAuthClient"] {
        let (status, message) = health(&metadata(kind, 1));
        assert_eq!(status, "Progressing", "{kind}");
        assert!(message.contains("exact-operator"), "{message}");
    }
}

#[test]
fn a_status_older_than_the_spec_is_progressing() {
    // Even a Ready=True from generation 2 says nothing about generation 3.
    let (status, message) = health(&connection(
        3,
        2,
        true,
        reason::TOKEN_PUBLISHED,
        "access token published",
    ));
    assert_eq!(status, "Progressing");
    assert_eq!(
        message,
        "Waiting for exact-operator to observe generation 3 (status is for generation 2)"
    );
    let (status, _) = health(&client(7, 6, false, reason::INVALID_SPEC, "bad URL"));
    assert_eq!(status, "Progressing");
}

#[test]
fn the_conditions_observed_generation_counts_without_a_status_one() {
    let mut object = connection(3, 2, true, reason::TOKEN_PUBLISHED, "published");
    object["status"]
        .as_object_mut()
        .expect("status object")
        .remove("observedGeneration");
    assert_eq!(health(&object).0, "Progressing");
}

#[test]
fn a_status_without_a_ready_condition_is_progressing() {
    let mut object = connection(1, 1, true, reason::TOKEN_PUBLISHED, "published");
    object["status"]["conditions"] = json!([]);
    assert_eq!(health(&object).0, "Progressing");
    object["status"]
        .as_object_mut()
        .expect("status object")
        .remove("conditions");
    assert_eq!(health(&object).0, "Progressing");
}

#[test]
fn ready_unknown_is_progressing_and_an_unknown_failure_is_degraded() {
    let mut object = connection(1, 1, false, "SomethingNew", "new failure");
    assert_eq!(health(&object).0, "Degraded");
    object["status"]["conditions"][0]["status"] = json!("Unknown");
    assert_eq!(health(&object).0, "Progressing");
}

#[test]
fn oauth_clients() {
    let (status, message) = health(&client(
        2,
        2,
        true,
        reason::CLIENT_READY,
        "client secret resolves and URLs are valid",
    ));
    assert_eq!(status, "Healthy");
    assert_eq!(
        message,
        "ClientReady: client secret resolves and URLs are valid"
    );
    for why in [reason::SECRET_NOT_FOUND, reason::INVALID_SPEC] {
        let (status, _) = health(&client(2, 2, false, why, "details"));
        assert_eq!(status, "Degraded", "{why}");
    }
}

#[test]
fn the_doc_names_both_customization_keys() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/argocd-health.md"
    ))
    .expect("docs/argocd-health.md exists");
    for key in [
        "resource.customizations.health.exact-operator.io_ExactConnection",
        "resource.customizations.health.exact-operator.io_ExactOAuthClient",
    ] {
        assert!(doc.contains(key), "docs/argocd-health.md lacks {key}");
    }
}
