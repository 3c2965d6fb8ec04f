//! What a webhook subscription needs from its connection: the connection itself, its app
//! (for the REST base, trust roots and webhook secret), and — only for calls to Exact — the
//! connection's current access token, read from its workload Secret. Reading never refreshes:
//! webhook traffic must not cause token calls (bursts of them break rotating chains).

use super::crd::ExactWebhookSubscription;
use crate::context::Context;
use crate::crd::ExactConnection;
use crate::resolve::{dereference, target_name, Resolved};
use crate::secrets::{owned_by, RefError};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use secrecy::SecretString;
use std::time::Duration;

/// Condition reasons of ExactWebhookSubscription's Ready condition.
pub mod reason {
    /// Every topic has a subscription at Exact.
    pub const SUBSCRIPTIONS_ACTIVE: &str = "SubscriptionsActive";
    /// The referenced ExactConnection does not exist.
    pub const CONNECTION_NOT_FOUND: &str = "ConnectionNotFound";
    /// The connection has no usable access token (not Ready, client invalid, ...).
    pub const CONNECTION_NOT_READY: &str = "ConnectionNotReady";
    /// The connection's ExactOAuthClient has no usable webhookSecretRef.
    pub const WEBHOOK_SECRET_MISSING: &str = "WebhookSecretMissing";
    /// The operator has no public URL, so Exact cannot reach it.
    pub const NO_PUBLIC_URL: &str = "NoPublicUrl";
    /// The subscription's own spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Exact refused the access token or the request.
    pub const EXACT_REFUSED: &str = "ExactRefused";
    /// Exact could not be reached or failed.
    pub const EXACT_UNAVAILABLE: &str = "ExactUnavailable";
}

/// Why a subscription can't proceed (becomes Ready=False).
#[derive(Debug, Clone)]
pub struct NotReady {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message (never a secret).
    pub message: String,
}

impl NotReady {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        NotReady {
            reason,
            message: message.into(),
        }
    }
}

/// A subscription's connection and app, resolved.
pub struct Linked {
    /// The connection.
    pub conn: ExactConnection,
    /// Its client, settings and HTTP client.
    pub resolved: Resolved,
    /// The app's webhook secret (verifies HashCodes).
    pub webhook_secret: SecretString,
}

/// The connection's access token as published.
pub struct Token {
    /// The access token.
    pub access_token: SecretString,
    /// The division it is published for.
    pub division: Option<i64>,
}

/// Resolves `sub`'s connection, app and webhook secret.
pub async fn link(
    ctx: &Context,
    sub: &ExactWebhookSubscription,
) -> Result<Result<Linked, NotReady>, kube::Error> {
    let ns = sub.namespace().unwrap_or_default();
    let name = &sub.spec.connection_ref.name;
    let conns: Api<ExactConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(conn) = conns.get_opt(name).await? else {
        return Ok(Err(NotReady::new(
            reason::CONNECTION_NOT_FOUND,
            format!("ExactConnection {ns}/{name} not found"),
        )));
    };
    let resolved = match dereference(&conn, ctx).await? {
        Ok(r) => r,
        Err(b) => {
            return Ok(Err(NotReady::new(
                reason::CONNECTION_NOT_READY,
                format!("ExactConnection {ns}/{name}: {}", b.message),
            )))
        }
    };
    let client_ns = resolved.client.namespace().unwrap_or_default();
    let client_name = resolved.client.name_any();
    let Some(r) = resolved.client.spec.webhook_secret_ref.clone() else {
        return Ok(Err(NotReady::new(
            reason::WEBHOOK_SECRET_MISSING,
            format!("ExactOAuthClient {client_ns}/{client_name} has no webhookSecretRef: messages could not be verified"),
        )));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &client_ns);
    let webhook_secret = match ctx
        .caches
        .secret_key(
            &secrets,
            &client_ns,
            &r.name,
            &r.key,
            std::time::Duration::ZERO,
        )
        .await
    {
        Ok(s) => s,
        Err(RefError::Api { source, .. }) => return Err(source),
        Err(e) => {
            return Ok(Err(NotReady::new(
                reason::WEBHOOK_SECRET_MISSING,
                format!("webhookSecretRef of ExactOAuthClient {client_ns}/{client_name}: {e}"),
            )))
        }
    };
    Ok(Ok(Linked {
        conn,
        resolved,
        webhook_secret,
    }))
}

/// A token must have at least this much life left to be used for a call.
const MIN_TOKEN_LIFE: Duration = Duration::from_secs(5);

/// Reads the connection's current access token from its workload Secret (never a token
/// call). Only a Ready connection's Secret, owned by it and unexpired, counts.
pub async fn current_token(
    ctx: &Context,
    linked: &Linked,
) -> Result<Result<Token, NotReady>, kube::Error> {
    let conn = &linked.conn;
    let ns = conn.namespace().unwrap_or_default();
    let name = conn.name_any();
    let ready = conn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Ok(Err(NotReady::new(
                reason::CONNECTION_NOT_READY,
                format!("ExactConnection {ns}/{name} is not Ready ({})", c.reason),
            )))
        }
        None => {
            return Ok(Err(NotReady::new(
                reason::CONNECTION_NOT_READY,
                format!("ExactConnection {ns}/{name} has no status yet"),
            )))
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = target_name(conn);
    let not_ready = |why: &str| {
        Ok(Err(NotReady::new(
            reason::CONNECTION_NOT_READY,
            format!("workload Secret {ns}/{secret_name} of ExactConnection {name} {why}"),
        )))
    };
    let Some(secret) = secrets.get_opt(&secret_name).await? else {
        return not_ready("does not exist");
    };
    if !conn.uid().is_some_and(|uid| owned_by(&secret, &uid)) {
        return not_ready("is not owned by the connection");
    }
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|s| s.trim().to_string())
    };
    let Some(token) = text("access_token").filter(|t| !t.is_empty()) else {
        return not_ready("holds no access_token");
    };
    let expires = text("expires_at").and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let fresh_until = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(MIN_TOKEN_LIFE).unwrap_or_default());
    match (expires, fresh_until) {
        (Some(e), Ok(min)) if e > min => {}
        _ => return not_ready("holds an expired token; waiting for the connection's refresh"),
    }
    Ok(Ok(Token {
        access_token: SecretString::from(token),
        division: text("division").and_then(|d| d.parse().ok()),
    }))
}
