//! The agent's HTTP endpoints: `GET /token` (loopback only) and `GET /healthz` / `/readyz`.

use super::state::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use std::net::SocketAddr;
use std::sync::Arc;

/// Whether `addr` is a loopback address (127.0.0.0/8, `::1`, or `::ffff:127.x.y.z`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// `/token` and `/healthz`: for the token endpoint's loopback listener.
pub fn token_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/token", get(token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(shared)
}

/// `/healthz` and `/readyz` only: safe on any address (no token values).
pub fn health_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(shared)
}

/// 200 with the token as JSON while it is present and unexpired, else 503 with
/// `{"error": reason}`. Never cached. (Stale files do not make the in-memory token wrong, so
/// a file error alone does not stop this endpoint.)
async fn token(State(shared): State<Arc<Shared>>) -> Response {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    let now = Timestamp::now();
    let status = shared.lock();
    let verdict = match &status.token {
        Some(t) => match t.expires_at() {
            Ok(e) if e > now => Ok(t),
            Ok(e) => Err(format!("token expired at {e}")),
            Err(reason) => Err(reason),
        },
        None => Err(super::state::health(&status, &shared.secret, now)
            .err()
            .unwrap_or_else(|| "no token".to_string())),
    };
    match verdict {
        Ok(t) => (StatusCode::OK, no_store, Json(t.view())).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            no_store,
            Json(serde_json::json!({ "error": reason })),
        )
            .into_response(),
    }
}

/// 200 "ok: ..." when the last good token is present and unexpired and the files are
/// current, else 503 with the reason.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.health(Timestamp::now()) {
        Ok(msg) => (StatusCode::OK, msg).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_count_as_loopback() {
        for a in [
            "127.0.0.1:8099",
            "127.1.2.3:1",
            "[::1]:8099",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback(&a.parse().expect("addr")), "{a}");
        }
        for a in [
            "0.0.0.0:8099",
            "[::]:8099",
            "10.0.0.5:8099",
            "[::ffff:10.0.0.1]:80",
        ] {
            assert!(!is_loopback(&a.parse().expect("addr")), "{a}");
        }
    }
}
