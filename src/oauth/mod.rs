//! Operator-served authorization-code flow. `/oauth2/start/{ns}/{connection}?ticket=...`
//! sends a person to Exact with a signed `state`, but only with a valid start ticket (see
//! `crate::consent`); without one it explains how to get a link and touches nothing. The
//! callback (default `/oauth2/callback`, or the path of the client's redirectUri) checks the
//! state and the ticket's grounds, exchanges the code once, stores the tokens and publishes
//! the workload Secret.

mod callback;
pub mod guard;
pub mod key;
pub mod pages;

use crate::consent::{self, SignedError, TICKET_PARAM};
use crate::context::Context;
use crate::crd::ExactConnection;
use crate::resolve::dereference;
use crate::secrets::{load_state, state_secret_name};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use guard::{query_params, valid_name, Limiter, RateLimit};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use pages::failure;
use std::net::SocketAddr;
use std::sync::Arc;

/// Default callback path.
pub const CALLBACK_PATH: &str = "/oauth2/callback";

/// Shared state of the OAuth routes.
#[derive(Clone)]
pub struct OAuthState {
    /// Operator context (client, recorder, settings, signing key).
    pub ctx: Arc<Context>,
    limiter: Arc<Limiter>,
}

impl OAuthState {
    /// The routes' state; `ctx.consent_key` must be set, or every request answers 503.
    pub fn new(ctx: Arc<Context>, limit: &RateLimit) -> Self {
        OAuthState {
            ctx,
            limiter: Arc::new(Limiter::new(limit)),
        }
    }
}

/// Serves the routes on `listener` (with the peer address known to the rate limit) until
/// the server fails.
pub async fn serve(listener: tokio::net::TcpListener, state: OAuthState) -> std::io::Result<()> {
    // The webhook route shares the public address but has its own guard (it takes POST).
    let webhooks = crate::webhook::receiver::router(crate::webhook::receiver::ReceiverState::new(
        state.ctx.clone(),
        Default::default(),
    ));
    axum::serve(
        listener,
        router(state)
            .merge(webhooks)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Routes of the flow. Any other GET path carrying `state` is treated as a callback too, so
/// a client's redirectUri may use its own path.
pub fn router(state: OAuthState) -> Router {
    Router::new()
        .route("/oauth2/start/{namespace}/{connection}", get(start))
        .route(CALLBACK_PATH, get(callback::handle))
        .fallback(callback::handle)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::map_response(guard::security_headers))
        .with_state(state)
}

const UNAVAILABLE: &str = "the Kubernetes API is unavailable; try again in a moment";

fn needs_ticket(ns: &str, name: &str, why: &str) -> Response {
    failure(
        StatusCode::FORBIDDEN,
        Some((ns, name)),
        &format!(
            "{why}. Start links are issued to people allowed to see the connection: run \
             `kubectl exact authorize {name} -n {ns}` for a current link \
             (add --force to replace a working authorization)."
        ),
    )
}

async fn start(
    State(s): State<OAuthState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path((ns, name))) = path else {
        return failure(
            StatusCode::BAD_REQUEST,
            None,
            "the link's path is not valid",
        );
    };
    if !valid_name(&ns, 63) || !valid_name(&name, 253) {
        return failure(StatusCode::NOT_FOUND, None, "no such connection");
    }
    let Some(key) = s.ctx.consent_key.as_ref() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the operator has no signing key",
        );
    };
    // Everything up to here, and the ticket check, happens without any API call: a request
    // without a valid ticket learns nothing and changes nothing.
    let params = match query_params(query.as_deref(), &[TICKET_PARAM]) {
        Ok(p) => p,
        Err(e) => return failure(StatusCode::BAD_REQUEST, Some((&ns, &name)), &e.to_string()),
    };
    let Some(ticket) = params.get(TICKET_PARAM) else {
        return needs_ticket(&ns, &name, "This link carries no start ticket");
    };
    let now = jiff::Timestamp::now();
    let claims = match consent::verify_ticket(key, ticket, now) {
        Ok(c) if c.ns == ns && c.name == name => c,
        Ok(_) => return needs_ticket(&ns, &name, "This ticket is for another connection"),
        Err(SignedError::Expired) => {
            return needs_ticket(&ns, &name, "This authorization link expired")
        }
        Err(e) => return needs_ticket(&ns, &name, &capitalized(&e.to_string())),
    };
    let api: Api<ExactConnection> = Api::namespaced(s.ctx.client.clone(), &ns);
    let conn = match api.get_opt(&name).await {
        Ok(Some(c)) if c.uid().as_deref() == Some(claims.uid.as_str()) => c,
        Ok(_) => {
            return needs_ticket(
                &ns,
                &name,
                "This link belongs to a connection that no longer exists (it was deleted or re-created)",
            )
        }
        Err(_) => return failure(StatusCode::SERVICE_UNAVAILABLE, Some((&ns, &name)), UNAVAILABLE),
    };
    let secrets: Api<Secret> = Api::namespaced(s.ctx.client.clone(), &ns);
    let stored = match load_state(&secrets, &state_secret_name(&name)).await {
        Ok(st) => st.state,
        Err(_) => {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Some((&ns, &name)),
                UNAVAILABLE,
            )
        }
    };
    let annotation = conn
        .annotations()
        .get(consent::REAUTHORIZE_ANNOTATION)
        .map(String::as_str);
    if let Err(refused) = consent::may_consent(&claims.grounds, &claims.nonce, &stored, annotation)
    {
        return failure(
            callback::refused_status(&refused),
            Some((&ns, &name)),
            &refused.to_string(),
        );
    }
    let resolved = match dereference(&conn, &s.ctx).await {
        Ok(Ok(r)) => r,
        Ok(Err(b)) => return failure(StatusCode::CONFLICT, Some((&ns, &name)), &b.message),
        Err(_) => {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Some((&ns, &name)),
                UNAVAILABLE,
            )
        }
    };
    let Some(redirect_uri) = resolved.client.spec.redirect_uri.clone() else {
        return failure(
            StatusCode::CONFLICT,
            Some((&ns, &name)),
            "the ExactOAuthClient has no redirectUri; set it to this operator's callback URL",
        );
    };
    let state = consent::state_for(key, &claims, now, s.ctx.settings.oauth_state_ttl);
    let mut url = resolved.settings.authorization_url.clone();
    url.query_pairs_mut()
        .append_pair("client_id", &resolved.client.spec.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("state", &state);
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
