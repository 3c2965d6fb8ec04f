//! `POST /api/oauth2/token`: code exchange and refresh with Exact's rules.

use crate::duration::format_epoch_ms;
use crate::faults::{lose_response, roll, roll_pre, ConnKill};
use crate::state::{lock, Shared, State, TokenPair};
use crate::stats::Outcome;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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

/// Client credentials from `Authorization: Basic`, RFC 6749 2.3.1: base64 of
/// `form-urlencode(id) ":" form-urlencode(secret)`.
#[derive(Debug, PartialEq, Eq)]
enum BasicAuth {
    /// No `Authorization: Basic` header.
    Absent,
    /// A Basic header that does not decode to `id:secret`.
    Malformed,
    /// Decoded credentials.
    Credentials { id: String, secret: String },
}

fn basic_auth(headers: &HeaderMap) -> BasicAuth {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return BasicAuth::Absent;
    };
    let Ok(value) = value.to_str() else {
        return BasicAuth::Malformed;
    };
    let Some((scheme, payload)) = value.trim().split_once(' ') else {
        return BasicAuth::Absent;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return BasicAuth::Absent; // some other scheme: not a client authentication
    }
    let Some(decoded) = base64_decode(payload.trim()) else {
        return BasicAuth::Malformed;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return BasicAuth::Malformed;
    };
    // The id is form-encoded, so the first ':' separates it from the secret.
    let Some((id, secret)) = decoded.split_once(':') else {
        return BasicAuth::Malformed;
    };
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) if !id.is_empty() => BasicAuth::Credentials { id, secret },
        _ => BasicAuth::Malformed,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, `%XX` a
/// byte). Unlike `form_urlencoded::parse` it keeps a literal `&` or `=`; a broken
/// percent escape makes the credentials malformed rather than silently different.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Standard base64 (with or without padding). Written here to keep the dependency set
/// (and the workspace lock file) unchanged.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The client a token call authenticates as, after reconciling Basic and form body.
enum ClientAuth {
    /// Credentials to check: (client id, presented secret, sent by Basic).
    Presented(String, Option<String>, bool),
    /// No usable client id at all.
    Missing,
    /// A Basic header that cannot be decoded.
    Malformed,
    /// Basic and body name different credentials (RFC 6749 2.3: one method per request).
    Conflict(String),
}

fn client_auth(headers: &HeaderMap, form: &Form) -> ClientAuth {
    let form_id = form.get("client_id").filter(|c| !c.is_empty());
    let form_secret = form.get("client_secret");
    match basic_auth(headers) {
        BasicAuth::Malformed => ClientAuth::Malformed,
        BasicAuth::Credentials { id, secret } => {
            // A body that repeats the same id (and secret) is tolerated, as most servers
            // do; a body that contradicts the header is refused as ambiguous.
            let id_differs = form_id.is_some_and(|f| *f != id);
            let secret_differs = form_secret.is_some_and(|f| *f != secret);
            if id_differs || secret_differs {
                ClientAuth::Conflict(id)
            } else {
                ClientAuth::Presented(id, Some(secret), true)
            }
        }
        BasicAuth::Absent => match form_id {
            Some(id) => ClientAuth::Presented(id.clone(), form_secret.cloned(), false),
            None => ClientAuth::Missing,
        },
    }
}

/// Handles a token call.
pub async fn token_handler(
    AxState(shared): AxState<Shared>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
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
        let reply = process(&mut st, &headers, &form);
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

/// Applies blocking, client authentication, the daily cap and the grant, and charges
/// 4xx answers to the client's error budget.
fn process(st: &mut State, headers: &HeaderMap, form: &Form) -> Reply {
    let now = st.now();
    let (client_id, secret, by_basic) = match client_auth(headers, form) {
        ClientAuth::Presented(id, secret, basic) => (id, secret, basic),
        ClientAuth::Missing => {
            return error(
                Outcome::InvalidClient,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_id is required.",
            )
        }
        ClientAuth::Malformed => {
            // Nobody to charge: the header names no readable client id.
            return with_basic_challenge(error(
                Outcome::InvalidClient,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Malformed Basic authorization header.",
            ));
        }
        ClientAuth::Conflict(id) => {
            // A blocked client stays blocked whatever it sends; otherwise the ambiguous
            // request is an error charged to the client named by the header.
            let limit = st.cfg.error_limit_per_hour;
            if st.errors.is_blocked(&id, now, limit) {
                return blocked();
            }
            st.errors.record_error(&id, now);
            return error(
                Outcome::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Client credentials in the Authorization header and the body differ.",
            );
        }
    };
    let client_id = client_id.as_str();
    let limit = st.cfg.error_limit_per_hour;
    if st.errors.is_blocked(client_id, now, limit) {
        return blocked();
    }
    let authenticated = st
        .clients
        .get(client_id)
        .is_some_and(|c| secret.as_deref() == Some(c.secret.as_str()));
    let reply = if !authenticated {
        let r = error(
            Outcome::InvalidClient,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client id or client secret.",
        );
        // RFC 6749 5.2: a failed Basic authentication carries a challenge.
        if by_basic {
            with_basic_challenge(r)
        } else {
            r
        }
    } else if let Some(r) = daily_cap(st, client_id, form) {
        r
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
    // Exact's error budget counts 400/401/403/404; a 429 (daily cap) is not an error
    // of the client's request, so it is not charged.
    let status = reply.response.status();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        st.errors.record_error(client_id, now);
    }
    reply
}

fn blocked() -> Reply {
    error(
        Outcome::Blocked,
        StatusCode::FORBIDDEN,
        "access_denied",
        "Too many errors. Application blocked.",
    )
}

fn with_basic_challenge(mut r: Reply) -> Reply {
    r.response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Exact Online\""),
    );
    r
}

/// The (named or anonymous) user a token call is about: the chain's user for a refresh
/// token, the consenting user for a code.
fn call_user(st: &State, client_id: &str, form: &Form) -> Option<usize> {
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => form
            .get("refresh_token")
            .and_then(|t| st.refresh_tokens.get(t))
            .and_then(|r| st.chains.get(r.chain))
            .filter(|c| c.client_id == client_id)
            .map(|c| c.user),
        Some("authorization_code") => form
            .get("code")
            .and_then(|c| st.codes.get(c))
            .filter(|c| c.client_id == client_id)
            .map(|c| c.user),
        _ => None,
    }
}

/// Enforces the rolling 24 h token-call cap per (user, client): a refused call is not
/// counted (else a client retrying on a 429 would never get out), every other call
/// that reaches the grant logic is, whatever its outcome.
fn daily_cap(st: &mut State, client_id: &str, form: &Form) -> Option<Reply> {
    let cap = st.cfg.token_calls_per_day;
    if cap == 0 {
        // Off: nothing is counted either, so that a soak run without the cap does not
        // keep a day of call times per user (with a cap the log is at most `cap` long).
        return None;
    }
    let user = call_user(st, client_id, form)?;
    if st.token_calls_24h(user, client_id) >= cap {
        let wait = st.token_cap_frees_in(user, client_id);
        let mut r = error(
            Outcome::TokenCapExceeded,
            StatusCode::TOO_MANY_REQUESTS,
            "access_denied",
            "Rate limit exceeded: too many token requests for this user and app in 24 hours",
        );
        // Whole seconds, rounded up, so a client waiting exactly this long gets in.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Some(r);
    }
    st.count_token_call(user, client_id);
    None
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
    if st
        .chains
        .get(rec.chain)
        .is_some_and(|c| c.revoked.is_some())
    {
        // The grant was replaced by a newer consent of the same user: the server no
        // longer knows this chain, so it answers like for an unknown refresh token.
        return error(
            Outcome::RevokedChainUsed,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid refresh token.",
        );
    }
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
    let user = rec.user;
    let chain = st.new_chain(client_id, &name, user);
    if st.cfg.revoke_on_reconsent {
        st.revoke_user_chains(user, client_id, chain);
    }
    let pair = st.issue_tokens(chain);
    success(st, Outcome::CodeOk, &pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("YTpi").as_deref(), Some(&b"a:b"[..]));
        assert_eq!(base64_decode("YTpiYw==").as_deref(), Some(&b"a:bc"[..]));
        assert_eq!(base64_decode("YTpiYw").as_deref(), Some(&b"a:bc"[..]));
        assert_eq!(base64_decode("Y"), None);
        assert_eq!(base64_decode("a!b="), None);
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // base64("id%3Ax:s+%2B%25") -> id "id:x", secret "s +%"
        assert_eq!(
            basic_auth(&headers("Basic aWQlM0F4OnMrJTJCJTI1")),
            BasicAuth::Credentials {
                id: "id:x".into(),
                secret: "s +%".into()
            }
        );
        assert_eq!(basic_auth(&HeaderMap::new()), BasicAuth::Absent);
        assert_eq!(basic_auth(&headers("Bearer abc")), BasicAuth::Absent);
        assert_eq!(
            basic_auth(&headers("Basic bm9jb2xvbg==")),
            BasicAuth::Malformed
        );
        // "%zz" is not a valid escape.
        assert_eq!(basic_auth(&headers("Basic YTolenp6")), BasicAuth::Malformed);
    }
}
