//! `GET /api/oauth2/auth` (consent page or auto-consent) and the consent form's POST.

use crate::state::{lock, random_token, CodeRecord, Shared, State};
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use rand::Rng;
use std::collections::HashMap;
use url::Url;

/// Path the consent form posts to.
pub const APPROVE_PATH: &str = "/api/oauth2/auth/approve";

/// A validated authorization request.
struct AuthRequest {
    client_id: String,
    redirect: Url,
    redirect_raw: String,
    state: Option<String>,
    /// Named user who consents (index into `State::users`); `None`: anonymous.
    user: Option<usize>,
}

fn bad_request(msg: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Bad request</title></head>\
<body><h1>Bad request</h1><p>{}</p></body></html>",
        escape(msg)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// Escapes text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Validates an authorization request; the error is the message for a 400 page.
fn validate(st: &State, p: &HashMap<String, String>) -> Result<AuthRequest, &'static str> {
    let client_id = p.get("client_id").map(String::as_str).unwrap_or_default();
    let Some(client) = st.clients.get(client_id) else {
        return Err("Unknown client_id.");
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err("response_type must be 'code'.");
    }
    let redirect_raw = p
        .get("redirect_uri")
        .map(String::as_str)
        .unwrap_or_default();
    let Ok(redirect) = Url::parse(redirect_raw) else {
        return Err("redirect_uri is missing or not a valid URL.");
    };
    if !client.redirect_allowed(redirect_raw) {
        return Err("redirect_uri is not registered for this client.");
    }
    // `user` is a simulator extension standing in for Exact's login: it names the
    // configured user who consents. An empty value asks for an anonymous user.
    let user = match p.get("user").map(String::as_str) {
        Some("") => None,
        Some(name) => match st.user_index.get(name) {
            Some(i) => Some(*i),
            None => return Err("Unknown user."),
        },
        None => st
            .cfg
            .default_user
            .as_ref()
            .and_then(|n| st.user_index.get(n).copied()),
    };
    Ok(AuthRequest {
        client_id: client_id.to_string(),
        redirect,
        redirect_raw: redirect_raw.to_string(),
        state: p.get("state").cloned(),
        user,
    })
}

fn redirect_to(mut url: Url, pairs: &[(&str, &str)]) -> Response {
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

/// Issues a single-use code for a new connection and redirects to the client.
fn consent(st: &mut State, req: AuthRequest) -> Response {
    let stamp: u8 = rand::thread_rng().gen_range(10..100);
    let code = format!("stamp{stamp}!{}", random_token(40));
    let name = st.next_consent_name(&req.client_id);
    let user = match req.user {
        Some(u) => u,
        None => st.anonymous_user(&name, None),
    };
    let user_name = st.users.get(user).map(|u| u.user_name.clone());
    tracing::info!(connection = %name, client_id = %req.client_id, user = user_name.as_deref().unwrap_or("-"), "consent given");
    let issued = st.now();
    st.codes.insert(
        code.clone(),
        CodeRecord {
            client_id: req.client_id,
            redirect_uri: req.redirect_raw,
            name,
            user,
            issued,
            used: false,
        },
    );
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = req.state.as_deref() {
        pairs.push(("state", s));
    }
    redirect_to(req.redirect, &pairs)
}

/// The "who is signed in" part of the consent page: a choice among the configured
/// users (the requested or default one preselected), or a note that a new anonymous
/// user consents.
fn user_choice(st: &State, req: &AuthRequest) -> String {
    let named: Vec<_> = st
        .users
        .iter()
        .enumerate()
        .filter(|(_, u)| !u.anonymous)
        .collect();
    if named.is_empty() {
        return "<p>Signed in as a new simulated user.</p>".to_string();
    }
    let mut options = String::new();
    for (i, u) in named {
        let selected = if req.user == Some(i) { " selected" } else { "" };
        let divisions: Vec<String> = u.divisions.iter().map(|d| d.code.to_string()).collect();
        options.push_str(&format!(
            "<option value=\"{}\"{selected}>{} ({}; divisions {})</option>",
            escape(&u.user_name),
            escape(&u.full_name),
            escape(&u.user_name),
            divisions.join(", ")
        ));
    }
    let anon_selected = if req.user.is_none() { " selected" } else { "" };
    format!(
        "<p><label>Signed in as <select name=\"user\">{options}\
<option value=\"\"{anon_selected}>a new anonymous user</option></select></label></p>"
    )
}

fn consent_page(st: &State, req: &AuthRequest) -> Response {
    let hidden = |k: &str, v: &str| {
        format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(k),
            escape(v)
        )
    };
    let state = req
        .state
        .as_deref()
        .map(|s| hidden("state", s))
        .unwrap_or_default();
    let body = format!(
        "<!DOCTYPE html><html><head><title>Exact Online - Authorize</title></head><body>\
<h1>Authorize application</h1>\
<p>The application <strong>{client}</strong> requests access to your Exact Online data.</p>\
<form method=\"post\" action=\"{APPROVE_PATH}\">{}{}{}{state}{users}\
<button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> \
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
</form></body></html>",
        hidden("client_id", &req.client_id),
        hidden("redirect_uri", &req.redirect_raw),
        hidden("response_type", "code"),
        client = escape(&req.client_id),
        users = user_choice(st, req),
    );
    Html(body).into_response()
}

/// `GET /api/oauth2/auth`.
pub async fn authorize(AxState(shared): AxState<Shared>, RawQuery(q): RawQuery) -> Response {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut st = lock(&shared);
    let req = match validate(&st, &params) {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    if st.cfg.auto_consent {
        consent(&mut st, req)
    } else {
        consent_page(&st, &req)
    }
}

/// `POST /api/oauth2/auth/approve`: the consent form's answer.
pub async fn approve(AxState(shared): AxState<Shared>, body: Bytes) -> Response {
    let params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut st = lock(&shared);
    let req = match validate(&st, &params) {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    if params.get("decision").map(String::as_str) == Some("deny") {
        let mut pairs = vec![("error", "access_denied")];
        if let Some(s) = req.state.as_deref() {
            pairs.push(("state", s));
        }
        tracing::info!(client_id = %req.client_id, "consent denied");
        return redirect_to(req.redirect, &pairs);
    }
    consent(&mut st, req)
}
