//! Fault injection: Apigee 500s, empty and non-JSON bodies, lost responses.

use crate::config::Faults;
use crate::stats::Outcome;
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use std::sync::Arc;
use tokio::sync::Notify;

/// The Apigee fault body Exact's gateway sends with a 500.
pub const APIGEE_FAULT: &str = r#"{"fault":{"faultstring":"Failed to execute the ExtractVariables: ExtractAccessToken","detail":{"errorcode":"steps.extractvariables.ExecutionFailed"}}}"#;

const NON_JSON_BODY: &str = "<!DOCTYPE html><html><head><title>Exact Online</title></head>\
<body><h1>Service temporarily unavailable</h1><p>Please try again later.</p></body></html>";

/// Per-connection handle that lets a handler close its HTTP connection without answering.
#[derive(Debug, Clone, Default)]
pub struct ConnKill(Arc<Notify>);

impl ConnKill {
    /// Asks the connection task to drop the connection.
    pub fn trigger(&self) {
        self.0.notify_one();
    }

    /// Resolves once [`ConnKill::trigger`] was called.
    pub async fn triggered(&self) {
        self.0.notified().await;
    }
}

/// A fault decided before the request is processed (nothing is consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreFault {
    /// 500 with the Apigee fault body.
    Fault500,
    /// 200 with an empty body.
    EmptyBody,
    /// 200 with an HTML body.
    NonJson,
}

impl PreFault {
    /// The stats outcome for this fault.
    pub fn outcome(self) -> Outcome {
        match self {
            PreFault::Fault500 => Outcome::Fault500,
            PreFault::EmptyBody => Outcome::EmptyBody,
            PreFault::NonJson => Outcome::NonJson,
        }
    }

    /// The response sent for this fault.
    pub fn response(self) -> Response {
        match self {
            PreFault::Fault500 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                APIGEE_FAULT,
            )
                .into_response(),
            PreFault::EmptyBody => (StatusCode::OK, Body::empty()).into_response(),
            PreFault::NonJson => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NON_JSON_BODY,
            )
                .into_response(),
        }
    }
}

/// True with probability `ratio` (clamped to `0..=1`; NaN counts as 0).
pub fn roll(ratio: f64) -> bool {
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    ratio >= 1.0 || rand::thread_rng().gen::<f64>() < ratio
}

/// Decides whether a token call hits a pre-processing fault.
pub fn roll_pre(f: &Faults) -> Option<PreFault> {
    if roll(f.fault_500_ratio) {
        Some(PreFault::Fault500)
    } else if roll(f.empty_body_ratio) {
        Some(PreFault::EmptyBody)
    } else if roll(f.non_json_ratio) {
        Some(PreFault::NonJson)
    } else {
        None
    }
}

/// Drops the connection without a response. With a [`ConnKill`] (always present when
/// served by [`crate::Sim`]) this never returns: the handler future is dropped together
/// with the connection. Without one it degrades to an empty 502.
pub async fn lose_response(kill: Option<ConnKill>) -> Response {
    if let Some(k) = kill {
        k.trigger();
        std::future::pending::<()>().await;
    }
    tracing::warn!("lost-response fault without connection handle; answering 502");
    StatusCode::BAD_GATEWAY.into_response()
}
