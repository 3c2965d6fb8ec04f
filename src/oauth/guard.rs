//! What stands in front of the OAuth routes, the operator's one door to the Internet:
//! response headers that keep codes and states out of Referers, frames and caches; a bound on
//! URI length; GET only (a HEAD from a link checker must not spend a code); a per-client-IP
//! rate limit; and a strict query parser (duplicates and invalid UTF-8 are refused, never
//! guessed at).

use super::pages::failure;
use super::OAuthState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use thiserror::Error;

/// Longest request URI accepted (a real callback is well under 2 KiB).
pub const MAX_URI_BYTES: usize = 4096;

/// Per-client-IP limits of the OAuth routes.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// Requests per minute per client IP, sustained.
    pub per_minute: NonZeroU32,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
    /// A header naming the client IP, set by a trusted proxy in front (e.g.
    /// `X-Forwarded-For`: its last entry is used, the one the proxy added). Without it, the
    /// peer address counts, which behind an Ingress is the Ingress.
    pub client_ip_header: Option<HeaderName>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_minute: NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            client_ip_header: None,
        }
    }
}

/// The rate limiter and its settings.
pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    client_ip_header: Option<HeaderName>,
}

impl Limiter {
    /// Builds a limiter.
    pub fn new(limit: &RateLimit) -> Self {
        Limiter {
            limiter: RateLimiter::keyed(
                Quota::per_minute(limit.per_minute).allow_burst(limit.burst),
            ),
            client_ip_header: limit.client_ip_header.clone(),
        }
    }

    fn client_ip(&self, req: &Request) -> Option<IpAddr> {
        if let Some(h) = &self.client_ip_header {
            let forwarded = req
                .headers()
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|ip| ip.trim().parse().ok())
                .next_back();
            if forwarded.is_some() {
                return forwarded;
            }
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    }

    fn allow(&self, ip: IpAddr) -> bool {
        // Forget idle clients now and then so the map stays as small as the active set.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).is_ok()
    }
}

/// Adds the headers every OAuth response carries.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    );
    resp
}

/// Refuses over-long URIs, methods other than GET and clients over their rate, before any
/// handler runs.
pub async fn guard(State(s): State<OAuthState>, req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return failure(
            StatusCode::URI_TOO_LONG,
            None,
            "the link is too long to be an authorization link",
        );
    }
    if req.method() != Method::GET {
        let mut resp = failure(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "only GET is served here: open the link in a browser",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let route = if req.uri().path().starts_with("/oauth2/start/") {
        "start"
    } else {
        "callback"
    };
    if let Some(ip) = s.limiter.client_ip(&req) {
        if !s.limiter.allow(ip) {
            s.ctx
                .metrics
                .oauth_rate_limited
                .get_or_create(&crate::metrics::RouteLabel {
                    route: route.to_string(),
                })
                .inc();
            let mut resp = failure(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "too many requests from your address; wait a minute and try again",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return resp;
        }
    }
    next.run(req).await
}

/// Why a query string is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    /// A parameter that must appear once appeared more often.
    #[error("the parameter `{0}` appears more than once")]
    Duplicate(&'static str),
    /// Percent-decoding gave bytes that are not UTF-8.
    #[error("the link's parameters are not valid UTF-8")]
    InvalidUtf8,
}

/// Parses `raw` (`application/x-www-form-urlencoded`, decoded exactly once) keeping only the
/// `wanted` keys; every wanted key may appear once. Other keys are ignored.
pub fn query_params(
    raw: Option<&str>,
    wanted: &[&'static str],
) -> Result<HashMap<&'static str, String>, QueryError> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        let Some(wanted_key) = wanted.iter().find(|w| **w == key) else {
            continue;
        };
        if out.insert(*wanted_key, decode(v)?).is_some() {
            return Err(QueryError::Duplicate(wanted_key));
        }
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueryError::InvalidUtf8)
}

/// Whether `s` is a valid Kubernetes object name (DNS subdomain) of at most `max` bytes.
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && s.as_bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded_once_and_strictly() {
        let q = query_params(
            Some("code=stamp12%21abc&state=s.t&other=x&other=y"),
            &["code", "state"],
        )
        .expect("ok");
        assert_eq!(q.get("code").map(String::as_str), Some("stamp12!abc"));
        assert_eq!(q.get("state").map(String::as_str), Some("s.t"));
        assert_eq!(q.len(), 2, "unknown keys are ignored, also when repeated");
        assert_eq!(
            query_params(Some("code=a&code=b"), &["code"]),
            Err(QueryError::Duplicate("code"))
        );
        assert_eq!(
            query_params(Some("code=%FF%FE"), &["code"]),
            Err(QueryError::InvalidUtf8)
        );
        assert_eq!(
            query_params(Some("co%64e=1+2"), &["code"])
                .expect("ok")
                .get("code")
                .map(String::as_str),
            Some("1 2")
        );
        assert_eq!(
            query_params(Some("code=%2521"), &["code"])
                .expect("ok")
                .get("code")
                .map(String::as_str),
            Some("%21"),
            "decoded exactly once"
        );
        assert!(query_params(None, &["code"]).expect("ok").is_empty());
    }

    #[test]
    fn names_are_kubernetes_names() {
        assert!(valid_name("acme-1.prod", 253));
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "ä"] {
            assert!(!valid_name(bad, 253), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(64), 63));
    }
}
