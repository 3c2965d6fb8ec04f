//! `GET /api/v1/current/Me` with bearer check and Exact's rate-limit headers.

use crate::limits::RateDecision;
use crate::state::{lock, Chain, Shared};
use crate::stats::Outcome;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Extracts the token from `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"))
}

fn add_rate_headers(resp: &mut Response, d: &RateDecision) {
    let h = resp.headers_mut();
    let pairs = [
        ("X-RateLimit-Limit", u64::from(d.day_limit)),
        ("X-RateLimit-Remaining", u64::from(d.day_remaining)),
        ("X-RateLimit-Reset", d.day_reset_ms),
        ("X-RateLimit-Minutely-Limit", u64::from(d.minute_limit)),
        (
            "X-RateLimit-Minutely-Remaining",
            u64::from(d.minute_remaining),
        ),
        ("X-RateLimit-Minutely-Reset", d.minute_reset_ms),
    ];
    for (k, v) in pairs {
        h.insert(k, HeaderValue::from(v));
    }
}

fn full_name(chain: &Chain) -> String {
    format!("Simulated User ({})", chain.name)
}

fn json_body(chain: &Chain, base: &str) -> Response {
    let body = json!({"d": {"results": [{
        "__metadata": {
            "uri": format!("{base}/api/v1/current/Me(guid'{}')", chain.user_id),
            "type": "Exact.Web.Api.System.Me"
        },
        "CurrentDivision": chain.division,
        "FullName": full_name(chain),
        "UserID": chain.user_id,
        "UserName": format!("{}@example.invalid", chain.name),
    }]}});
    axum::Json(body).into_response()
}

fn xml_body(chain: &Chain, base: &str) -> Response {
    let base = xml_escape(base);
    let xml = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><feed xml:base="{base}/api/v1/current/" xmlns="http://www.w3.org/2005/Atom" xmlns:d="http://schemas.microsoft.com/ado/2007/08/dataservices" xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"><title type="text">Me</title><id>{base}/api/v1/current/Me</id><link rel="self" title="Me" href="Me" /><entry><id>{base}/api/v1/current/Me(guid'{uid}')</id><title type="text"></title><author><name /></author><category term="Exact.Web.Api.System.Me" scheme="http://schemas.microsoft.com/ado/2007/08/dataservices/scheme" /><content type="application/xml"><m:properties><d:CurrentDivision m:type="Edm.Int32">{div}</d:CurrentDivision><d:FullName>{name}</d:FullName><d:UserID m:type="Edm.Guid">{uid}</d:UserID></m:properties></content></entry></feed>"#,
        uid = chain.user_id,
        div = chain.division,
        name = xml_escape(&full_name(chain)),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/atom+xml;type=feed;charset=utf-8",
        )],
        xml,
    )
        .into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /api/v1/current/Me`.
pub async fn me(AxState(shared): AxState<Shared>, headers: HeaderMap) -> Response {
    let latency = lock(&shared).faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut st = lock(&shared);
    let token = bearer(&headers);
    let Some(idx) = token.and_then(|t| st.access_chain(t)) else {
        let name = token
            .and_then(|t| st.access_tokens.get(t))
            .and_then(|a| st.chain_name(a.chain));
        st.stats.record(name.as_deref(), Outcome::MeUnauthorized);
        tracing::info!(
            connection = name.as_deref().unwrap_or("-"),
            "Me: unauthorized"
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    };
    let Some(chain) = st.chains.get(idx).cloned() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let epoch_ms = st.clock.epoch_ms(st.now());
    let (per_min, per_day) = (st.cfg.rest_limit_per_minute, st.cfg.rest_limit_per_day);
    let decision = st
        .rate
        .check(&chain.client_id, chain.division, epoch_ms, per_min, per_day);
    let scheme = if st.cfg.tls { "https" } else { "http" };
    let outcome = if decision.allowed {
        Outcome::MeOk
    } else {
        Outcome::RateLimited
    };
    st.stats.record(Some(&chain.name), outcome);
    drop(st);
    tracing::info!(connection = %chain.name, ?outcome, "Me");
    let mut resp = if !decision.allowed {
        StatusCode::TOO_MANY_REQUESTS.into_response()
    } else if wants_json(&headers) {
        json_body(&chain, &format!("{scheme}://{host}"))
    } else {
        xml_body(&chain, &format!("{scheme}://{host}"))
    };
    add_rate_headers(&mut resp, &decision);
    resp
}
