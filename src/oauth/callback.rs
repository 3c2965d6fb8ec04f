//! The OAuth callback: validate state, decode the code exactly once (the strict query parser
//! does that single decoding), check the ticket's grounds against what is stored now, spend
//! the ticket and claim in one conditional write, exchange the code, persist, learn who
//! consented, publish.

use super::guard::query_params;
use super::pages::{failure, success};
use super::{OAuthState, UNAVAILABLE};
use crate::chain::{self, ChainGrant, End, ExchangeEnd, ExchangeJob, StateStore};
use crate::consent::{self, Grounds, StateClaims};
use crate::crd::ExactConnection;
use crate::events::event;
use crate::identity::identify;
use crate::publish::{publish_from_state, Published};
use crate::resolve::dereference;
use crate::state_store::StateHandle;
use crate::token::TokenEndpoint;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use secrecy::SecretString;

pub(super) async fn handle(State(s): State<OAuthState>, RawQuery(raw): RawQuery) -> Response {
    let Some(key) = s.ctx.consent_key.as_ref() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the operator has no signing key",
        );
    };
    let mut q = match query_params(
        raw.as_deref(),
        &["state", "code", "error", "error_description"],
    ) {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(reason = %e, "OAuth callback refused");
            return failure(StatusCode::BAD_REQUEST, None, &e.to_string());
        }
    };
    let claims = match consent::verify_state(
        key,
        q.get("state").map(String::as_str).unwrap_or(""),
        Timestamp::now(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(reason = %e, "OAuth callback refused");
            return failure(StatusCode::BAD_REQUEST, None, &e.to_string());
        }
    };
    let who = Some((claims.ns.as_str(), claims.name.as_str()));
    let api: Api<ExactConnection> = Api::namespaced(s.ctx.client.clone(), &claims.ns);
    let conn = match api.get_opt(&claims.name).await {
        Ok(Some(c)) if c.uid().as_deref() == Some(claims.uid.as_str()) => c,
        Ok(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                who,
                "this authorization link belongs to a connection that no longer exists",
            )
        }
        Err(_) => return failure(StatusCode::SERVICE_UNAVAILABLE, who, UNAVAILABLE),
    };
    let result = if q.contains_key("code") && q.contains_key("error") {
        Err(Refusal::Client(
            "the callback carries both a code and an error; nothing was done".into(),
        ))
    } else if let Some(err) = q.remove("error") {
        let desc = q.remove("error_description").unwrap_or_default();
        let text: String = format!("Exact answered error={err} {desc}")
            .chars()
            .take(300)
            .collect();
        Err(Refusal::Client(text.trim().to_string()))
    } else {
        match q.remove("code").filter(|c| !c.is_empty()) {
            None => Err(Refusal::Client(
                "the callback carries no authorization code".into(),
            )),
            Some(code) => exchange(&s, &conn, &claims, SecretString::from(code)).await,
        }
    };
    // The connection's status and workload Secret follow from the stored state at once: the
    // state Secret triggers no reconcile by itself, and our own publish is filtered out.
    s.ctx
        .caches
        .reconcile_soon(kube::runtime::reflector::ObjectRef::from_obj(&conn));
    match result {
        Ok(()) => {
            let note = "authorized through the operator's OAuth flow".to_string();
            event(&s.ctx, &conn, EventType::Normal, "Authorized", note).await;
            success(&claims.ns, &claims.name)
        }
        Err(Refusal::Unavailable) => failure(StatusCode::SERVICE_UNAVAILABLE, who, UNAVAILABLE),
        Err(Refusal::Gate(refused)) => {
            let what =
                format!("a consent arrived and was refused without using its code: {refused}");
            event(
                &s.ctx,
                &conn,
                EventType::Warning,
                "AuthorizationRefused",
                what,
            )
            .await;
            failure(refused_status(&refused), who, &refused.to_string())
        }
        Err(Refusal::Client(what)) => {
            event(
                &s.ctx,
                &conn,
                EventType::Warning,
                "AuthorizationFailed",
                what.clone(),
            )
            .await;
            failure(StatusCode::BAD_REQUEST, who, &what)
        }
    }
}

enum Refusal {
    Unavailable,
    Client(String),
    /// The ticket's grounds do not hold any more (decided before Exact is called).
    Gate(consent::Refused),
}

/// A replayed link is a bad request; a link whose grounds went away meanwhile conflicts with
/// the connection's current state.
pub(super) fn refused_status(r: &consent::Refused) -> StatusCode {
    match r {
        consent::Refused::AlreadyUsed => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    }
}

impl From<kube::Error> for Refusal {
    fn from(_: kube::Error) -> Self {
        Refusal::Unavailable
    }
}

async fn exchange(
    s: &OAuthState,
    conn: &ExactConnection,
    claims: &StateClaims,
    code: SecretString,
) -> Result<(), Refusal> {
    let ctx = &s.ctx;
    let r = match dereference(conn, ctx).await? {
        Ok(r) => r,
        Err(b) => return Err(Refusal::Client(b.message)),
    };
    let Some(redirect_uri) = r.client.spec.redirect_uri.clone() else {
        return Err(Refusal::Client(
            "the ExactOAuthClient has no redirectUri".into(),
        ));
    };
    let handle = StateHandle::for_connection(ctx, conn).ok_or(Refusal::Unavailable)?;
    // Check the ticket's grounds against what is stored now; the exchange's claim write then
    // spends the ticket too, conditional on that same version.
    let mut stored = handle.load().await?;
    let annotation = conn
        .annotations()
        .get(consent::REAUTHORIZE_ANNOTATION)
        .map(String::as_str);
    consent::may_consent(&claims.grounds, &claims.nonce, &stored.state, annotation)
        .map_err(Refusal::Gate)?;
    if stored
        .state
        .claimed_by_other(&ctx.identity, Timestamp::now())
        .is_some()
    {
        return Err(Refusal::Client(
            "a token call for this connection is in progress; start again in a minute".into(),
        ));
    }
    let nonces = &mut stored.state.used_auth_nonces;
    nonces.push(claims.nonce.clone());
    nonces.drain(..nonces.len().saturating_sub(8));
    let supersede = matches!(claims.grounds, Grounds::Reauthorize { .. });
    if let Grounds::Reauthorize { requested_at } = &claims.grounds {
        stored.state.handled_reauthorize = Some(requested_at.clone());
    }
    let endpoint = TokenEndpoint {
        http: &r.http,
        url: &r.settings.token_url,
        client_id: &r.client.spec.client_id,
        client_secret: &r.client_secret,
    };
    let job = ExchangeJob {
        holder: &ctx.identity,
        claim_ttl: ctx.settings.claim_ttl,
        policy: &r.policy,
        fingerprint: &r.fingerprint,
        jitter: 0.0,
    };
    let grant = ChainGrant::Code {
        code: &code,
        redirect_uri: &redirect_uri,
        supersede,
    };
    match chain::exchange(&handle, &endpoint, stored, grant, &job).await? {
        ExchangeEnd::Contended => Err(Refusal::Client(
            "the connection changed meanwhile; nothing was done, start again".into(),
        )),
        ExchangeEnd::Done {
            end: End::CodeRefused { what },
            label,
            call_seconds,
            ..
        } => {
            ctx.metrics.token_call(label, call_seconds);
            Err(Refusal::Client(what))
        }
        ExchangeEnd::Done {
            mut state,
            version,
            label,
            call_seconds,
            ..
        } => {
            ctx.metrics.token_call(label, call_seconds);
            identify(ctx, conn, &r, &handle, &mut state, version, true).await;
            match publish_from_state(ctx, conn, &r, &state).await {
                Ok(Published::Conflict) => Err(Refusal::Client(format!(
                    "authorized, but Secret {} belongs to something else; the token was not published",
                    r.target_name
                ))),
                Ok(_) => Ok(()),
                Err(_) => Ok(()), // the reconcile publishes from state shortly
            }
        }
        ExchangeEnd::ConsentLost { label } | ExchangeEnd::NewerChainStored { label } => {
            ctx.metrics.token_call(label, 0.0);
            Err(Refusal::Client(
                "the connection got a working authorization by another way while this consent was completing; that one was kept".into(),
            ))
        }
    }
}
