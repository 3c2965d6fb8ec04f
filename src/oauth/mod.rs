//! Operator-served authorization-code flow: `/oauth2/start/{ns}/{connection}` sends a person
//! to Exact with a signed `state`; the callback (default `/oauth2/callback`, or the path of
//! the client's redirectUri) exchanges the code once, stores the tokens and publishes the
//! workload Secret.

mod callback;
pub mod key;
pub mod pages;
pub mod state_token;

use crate::context::Context;
use crate::controller::deref::dereference;
use crate::crd::ExactConnection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kube::api::Api;
use kube::ResourceExt;
use rand::RngCore;
use state_token::{sign, StateClaims};
use std::sync::Arc;

/// Default callback path.
pub const CALLBACK_PATH: &str = "/oauth2/callback";

/// Shared state of the OAuth routes.
#[derive(Clone)]
pub struct OAuthState {
    /// Operator context (client, recorder, settings).
    pub ctx: Arc<Context>,
    /// HMAC key for `state`.
    pub key: Arc<Vec<u8>>,
}

/// The operator's start URL of a connection, given its public base URL.
pub fn start_url(public_url: &str, ns: &str, name: &str) -> String {
    format!(
        "{}/oauth2/start/{ns}/{name}",
        public_url.trim_end_matches('/')
    )
}

/// Routes of the flow. Any other GET path carrying `state` is treated as a callback too, so
/// a client's redirectUri may use its own path.
pub fn router(state: OAuthState) -> Router {
    Router::new()
        .route("/oauth2/start/{namespace}/{connection}", get(start))
        .route(CALLBACK_PATH, get(callback::handle))
        .fallback(get(callback::handle))
        .with_state(state)
}

async fn start(State(s): State<OAuthState>, Path((ns, name)): Path<(String, String)>) -> Response {
    let api: Api<ExactConnection> = Api::namespaced(s.ctx.client.clone(), &ns);
    let conn = match api.get_opt(&name).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return pages::failure(
                StatusCode::NOT_FOUND,
                None,
                &format!("ExactConnection {ns}/{name} not found"),
            )
        }
        Err(_) => {
            return pages::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Some((&ns, &name)),
                "the Kubernetes API is unavailable; try again",
            )
        }
    };
    let resolved = match dereference(&conn, &s.ctx).await {
        Ok(Ok(r)) => r,
        Ok(Err(b)) => return pages::failure(StatusCode::CONFLICT, Some((&ns, &name)), &b.message),
        Err(_) => {
            return pages::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Some((&ns, &name)),
                "the Kubernetes API is unavailable; try again",
            )
        }
    };
    let Some(redirect_uri) = resolved.client.spec.redirect_uri.clone() else {
        return pages::failure(
            StatusCode::CONFLICT,
            Some((&ns, &name)),
            "the ExactOAuthClient has no redirectUri; set it to this operator's callback URL",
        );
    };
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    let claims = StateClaims {
        ns: ns.clone(),
        name: name.clone(),
        uid: conn.uid().unwrap_or_default(),
        exp: jiff::Timestamp::now().as_second() + s.ctx.settings.oauth_state_ttl.as_secs() as i64,
        nonce: hex::encode(nonce),
    };
    let mut url = resolved.settings.authorization_url.clone();
    url.query_pairs_mut()
        .append_pair("client_id", &resolved.client.spec.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("state", &sign(&s.key, &claims));
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}
