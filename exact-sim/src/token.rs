//! `POST /api/oauth2/token`: code exchange and refresh with Exact's rules.

use crate::duration::format_epoch_ms;
use crate::faults::{lose_response, roll, roll_pre, ConnKill};
use crate::state::{lock, Shared, State, TokenPair};
use crate::stats::Outcome;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use std::collections::HashMap;

type Form = HashMap<String, String>;

/// The success body, field order and types exactly as Exact sends them.
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: String,
    refresh_token: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// The answer of the token logic, before faults.
struct Reply {
    outcome: Outcome,
    response: Response,
}

fn error(outcome: Outcome, status: StatusCode, error: &str, description: &str) -> Reply {
    let body = ErrorBody {
        error,
        error_description: description,
    };
    Reply {
        outcome,
        response: (status, Json(body)).into_response(),
    }
}

fn success(st: &State, outcome: Outcome, pair: &TokenPair) -> Reply {
    let body = TokenBody {
        access_token: &pair.access,
        token_type: "bearer",
        expires_in: st.cfg.access_token_lifetime.as_secs().to_string(),
        refresh_token: &pair.refresh,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Reply { outcome, response }
}

/// The connection a token call is about, if it names a known refresh token or code.
fn attribute(st: &State, form: &Form) -> Option<String> {
    if let Some(rec) = form
        .get("refresh_token")
        .and_then(|t| st.refresh_tokens.get(t))
    {
        return st.chain_name(rec.chain);
    }
    form.get("code")
        .and_then(|c| st.codes.get(c))
        .map(|c| c.name.clone())
}

/// Handles a token call.
pub async fn token_handler(
    AxState(shared): AxState<Shared>,
    kill: Option<Extension<ConnKill>>,
    body: Bytes,
) -> Response {
    let faults = lock(&shared).faults.clone();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let form: Form = url::form_urlencoded::parse(&body).into_owned().collect();
    let pre = roll_pre(&faults);
    let lost = roll(faults.lost_response_ratio);
    let (name, response) = {
        let mut st = lock(&shared);
        let name = attribute(&st, &form);
        st.stats.token_call(name.as_deref());
        if let Some(p) = pre {
            st.stats.record(name.as_deref(), p.outcome());
            tracing::info!(connection = name.as_deref().unwrap_or("-"), outcome = ?p.outcome(), "token call (injected fault)");
            return p.response();
        }
        let reply = process(&mut st, &form);
        let name = attribute(&st, &form).or(name);
        st.stats.record(name.as_deref(), reply.outcome);
        tracing::info!(connection = name.as_deref().unwrap_or("-"), outcome = ?reply.outcome, "token call");
        if lost {
            st.stats.record(name.as_deref(), Outcome::LostResponse);
        }
        (name, reply.response)
    };
    if lost {
        tracing::info!(
            connection = name.as_deref().unwrap_or("-"),
            "dropping connection (lost-response fault)"
        );
        return lose_response(kill.map(|Extension(k)| k)).await;
    }
    response
}

/// Applies blocking, client authentication and the grant, and charges 4xx answers to
/// the client's error budget.
fn process(st: &mut State, form: &Form) -> Reply {
    let now = st.now();
    let Some(client_id) = form.get("client_id").filter(|c| !c.is_empty()) else {
        return error(
            Outcome::InvalidClient,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id is required.",
        );
    };
    let limit = st.cfg.error_limit_per_hour;
    if st.errors.is_blocked(client_id, now, limit) {
        return error(
            Outcome::Blocked,
            StatusCode::FORBIDDEN,
            "access_denied",
            "Too many errors. Application blocked.",
        );
    }
    let authenticated = st
        .clients
        .get(client_id)
        .is_some_and(|c| form.get("client_secret") == Some(&c.secret));
    let reply = if !authenticated {
        error(
            Outcome::InvalidClient,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client id or client secret.",
        )
    } else {
        match form.get("grant_type").map(String::as_str) {
            Some("refresh_token") => refresh(st, client_id, form),
            Some("authorization_code") => exchange_code(st, client_id, form),
            Some(_) => error(
                Outcome::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The grant type is not supported.",
            ),
            None => error(
                Outcome::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required.",
            ),
        }
    };
    if reply.response.status().is_client_error() {
        st.errors.record_error(client_id, now);
    }
    reply
}

fn refresh(st: &mut State, client_id: &str, form: &Form) -> Reply {
    let now = st.now();
    let Some(token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return error(
            Outcome::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required.",
        );
    };
    let rec = st.refresh_tokens.get(token).cloned().filter(|r| {
        st.chains
            .get(r.chain)
            .is_some_and(|c| c.client_id == client_id)
    });
    let Some(rec) = rec else {
        return error(
            Outcome::InvalidGrant,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid refresh token.",
        );
    };
    if rec.old {
        return error(
            Outcome::OldRefreshTokenUsed,
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Old refresh token used.",
        );
    }
    let expires = rec.issued + st.cfg.refresh_token_lifetime;
    if now >= expires {
        let msg = format!(
            "The refresh token expired at {}",
            format_epoch_ms(st.clock.epoch_ms(expires))
        );
        return error(
            Outcome::RefreshTokenExpired,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &msg,
        );
    }
    let access_expiry = st.chains.get(rec.chain).and_then(|c| c.access_expiry);
    if let Some(exp) = access_expiry {
        if exp > now && exp - now > st.cfg.refresh_window {
            let mut r = error(
                Outcome::TooEarly,
                StatusCode::BAD_REQUEST,
                "access_denied",
                "Rate limit exceeded: access_token not expired",
            );
            r.response.headers_mut().insert(
                "Reason",
                HeaderValue::from_static("TooEarlyToRefreshTokens"),
            );
            return r;
        }
    }
    if let Some(r) = st.refresh_tokens.get_mut(token) {
        r.old = true;
    }
    let pair = st.issue_tokens(rec.chain);
    if let (Some(exp), Some(name)) = (access_expiry, st.chain_name(rec.chain)) {
        let remaining_ms = exp.as_millis() as i64 - now.as_millis() as i64;
        st.stats
            .connections
            .entry(name)
            .or_default()
            .record_refresh_timing(remaining_ms);
    }
    success(st, Outcome::RefreshOk, &pair)
}

fn exchange_code(st: &mut State, client_id: &str, form: &Form) -> Reply {
    let now = st.now();
    let (Some(code), Some(redirect)) = (form.get("code"), form.get("redirect_uri")) else {
        return error(
            Outcome::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and redirect_uri are required.",
        );
    };
    let lifetime = st.cfg.code_lifetime;
    let problem = match st.codes.get(code) {
        None => Some("Invalid authorization code."),
        Some(c) if c.client_id != client_id => Some("Invalid authorization code."),
        Some(c) if c.used => Some("Authorization code has already been used."),
        Some(c) if now >= c.issued + lifetime => Some("Authorization code expired."),
        Some(c) if &c.redirect_uri != redirect => Some("Redirect URI mismatch."),
        Some(_) => None,
    };
    if let Some(p) = problem {
        return error(
            Outcome::InvalidGrant,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            p,
        );
    }
    let Some(rec) = st.codes.get_mut(code) else {
        return error(
            Outcome::InvalidGrant,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid authorization code.",
        );
    };
    rec.used = true;
    let name = rec.name.clone();
    let chain = st.new_chain(client_id, &name, None);
    let pair = st.issue_tokens(chain);
    success(st, Outcome::CodeOk, &pair)
}
