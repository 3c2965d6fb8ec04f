//! Introspection and control routes under `/_sim` (for scripts and the demo).

use crate::config::Faults;
use crate::state::{lock, Shared};
use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Deserialize)]
struct SeedRequest {
    client_id: String,
    name: String,
    #[serde(default)]
    division: Option<i64>,
    /// Known refresh token to use (random when absent).
    #[serde(default)]
    refresh_token: Option<String>,
    /// Configured user the connection belongs to (a fresh anonymous user when absent;
    /// `division` is then that user's only division).
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct CurrentDivisionRequest {
    user: String,
    division: i64,
}

#[derive(Deserialize)]
struct AdvanceRequest {
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    seconds: u64,
}

fn json_error(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        ))
    })
}

async fn stats(AxState(s): AxState<Shared>) -> Response {
    Json(lock(&s).stats.clone()).into_response()
}

async fn token_valid(
    AxState(s): AxState<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let valid = q
        .get("access_token")
        .is_some_and(|t| lock(&s).access_chain(t).is_some());
    Json(json!({ "valid": valid })).into_response()
}

async fn seed(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let req: SeedRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let mut st = lock(&s);
    if !st.clients.contains_key(&req.client_id) {
        return json_error(StatusCode::BAD_REQUEST, "unknown client_id".to_string());
    }
    if req.name.is_empty() || req.refresh_token.as_deref() == Some("") {
        return json_error(StatusCode::BAD_REQUEST, "empty name or token".to_string());
    }
    let token = match req.user.as_deref() {
        Some(u) => match st.user_index.get(u).copied() {
            Some(i) => st.seed_for(&req.client_id, &req.name, req.refresh_token.as_deref(), i),
            None => return json_error(StatusCode::BAD_REQUEST, "unknown user".to_string()),
        },
        None => st.seed(
            &req.client_id,
            &req.name,
            req.refresh_token.as_deref(),
            req.division,
        ),
    };
    Json(json!({ "refresh_token": token })).into_response()
}

async fn get_faults(AxState(s): AxState<Shared>) -> Response {
    Json(lock(&s).faults.clone()).into_response()
}

async fn put_faults(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let f: Faults = match parse(&body) {
        Ok(f) => f,
        Err(e) => return *e,
    };
    tracing::info!(?f, "faults changed");
    lock(&s).faults = f.clone();
    Json(f).into_response()
}

async fn advance(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let req: AdvanceRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let by = Duration::from_millis(req.ms) + Duration::from_secs(req.seconds);
    lock(&s).clock.advance(by);
    Json(json!({ "advanced_ms": by.as_millis() as u64 })).into_response()
}

/// `GET /_sim/users[?all=true]`: users (anonymous ones only with `all`), their
/// divisions, and per client their chains (revoked or not) and token calls in the
/// rolling 24 h of the daily cap. Never shows tokens.
async fn users(AxState(s): AxState<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    let mut st = lock(&s);
    let cap = st.cfg.token_calls_per_day;
    let mut out = Vec::new();
    for ui in 0..st.users.len() {
        if st.users[ui].anonymous && !all {
            continue;
        }
        let mut per_client: std::collections::BTreeMap<String, serde_json::Value> =
            Default::default();
        let chains: Vec<(String, String, bool)> = st
            .chains
            .iter()
            .filter(|c| c.user == ui)
            .map(|c| (c.client_id.clone(), c.name.clone(), c.revoked.is_some()))
            .collect();
        let mut client_ids: Vec<String> = chains.iter().map(|c| c.0.clone()).collect();
        client_ids.extend(
            st.token_calls
                .keys()
                .filter(|(u, _)| *u == ui)
                .map(|(_, c)| c.clone()),
        );
        client_ids.sort();
        client_ids.dedup();
        for cid in client_ids {
            let calls = st.token_calls_24h(ui, &cid);
            let list: Vec<_> = chains
                .iter()
                .filter(|c| c.0 == cid)
                .map(|c| json!({"name": c.1, "revoked": c.2}))
                .collect();
            per_client.insert(
                cid,
                json!({"token_calls_24h": calls, "token_calls_cap": cap, "chains": list}),
            );
        }
        let u = &st.users[ui];
        let divisions: Vec<_> = u
            .divisions
            .iter()
            .map(|d| json!({"code": d.code, "description": d.description, "customer_name": d.customer_name}))
            .collect();
        out.push(json!({
            "user_name": u.user_name,
            "full_name": u.full_name,
            "user_id": u.user_id,
            "anonymous": u.anonymous,
            "current_division": u.current_division,
            "divisions": divisions,
            "clients": per_client,
        }));
    }
    Json(json!({ "users": out })).into_response()
}

/// `POST /_sim/users/current-division {user, division}`: what opening another division
/// in the browser does in Exact.
async fn current_division(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let req: CurrentDivisionRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let mut st = lock(&s);
    let Some(i) = st.user_index.get(&req.user).copied() else {
        return json_error(StatusCode::BAD_REQUEST, "unknown user".to_string());
    };
    match st.users.get_mut(i) {
        Some(u) if u.division(req.division).is_some() => {
            u.current_division = req.division;
            Json(json!({"user": req.user, "current_division": req.division})).into_response()
        }
        _ => json_error(
            StatusCode::BAD_REQUEST,
            "the user cannot open that division".to_string(),
        ),
    }
}

/// The `/_sim/*` routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/_sim/health", get(|| async { "ok" }))
        .route("/_sim/stats", get(stats))
        .route("/_sim/token-valid", get(token_valid))
        .route("/_sim/seed", post(seed))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/advance", post(advance))
        .route("/_sim/users", get(users))
        .route("/_sim/users/current-division", post(current_division))
        .route("/_sim/webhooks", get(webhook_list))
        .route("/_sim/webhooks/fire", post(webhook_fire))
        .route("/_sim/webhooks/delete", post(webhook_delete))
}

async fn webhook_list(AxState(s): AxState<Shared>) -> Response {
    Json(lock(&s).webhooks.all()).into_response()
}

#[derive(Deserialize)]
struct FireRequest {
    id: String,
    #[serde(flatten)]
    opts: crate::webhooks::FireOptions,
}

/// Fires one message: `{"id": ..., "signature": "valid"|"wrong"|"missing", "action",
/// "key", "pad_to"}` -> `{"body", "status"}`.
async fn webhook_fire(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let req: FireRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    match crate::webhooks::fire(&s, &req.id, &req.opts).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => json_error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

#[derive(Deserialize)]
struct DeleteRequest {
    id: String,
}

/// Deletes a subscription behind the app's back: `{"id": ...}`.
async fn webhook_delete(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let req: DeleteRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if lock(&s).webhooks.remove(&req.id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_error(StatusCode::NOT_FOUND, "no such subscription".to_string())
    }
}
