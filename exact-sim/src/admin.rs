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
    let token = st.seed(
        &req.client_id,
        &req.name,
        req.refresh_token.as_deref(),
        req.division,
    );
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

/// The `/_sim/*` routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/_sim/health", get(|| async { "ok" }))
        .route("/_sim/stats", get(stats))
        .route("/_sim/token-valid", get(token_valid))
        .route("/_sim/seed", post(seed))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/advance", post(advance))
}
