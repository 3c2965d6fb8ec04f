//! Dereference and validate: everything a connection needs from its client, its Secrets
//! and its own spec, or the condition that says why it can't have it.

use crate::conditions::reason;
use crate::context::Context;
use crate::crd::{ExactConnection, ExactOAuthClient};
use crate::duration::parse_or;
use crate::endpoints::{namespace_allowed, resolve, ClientSettings};
use crate::schedule::{refresh_before_fits, RefreshPolicy};
use crate::secrets::RefError;
use crate::state::digest;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// Default `refreshBefore`: 5 s inside Exact's 30 s window, room for clock skew and latency.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(25);

/// How long a client secret read from the API server is reused while its own watch has not
/// listed yet. Once listed, the watch serves every read (an edit is seen at once); before
/// that, reading afresh on every reconcile made a restart over 10,000 connections of one
/// client cost 10,000 GETs of the same Secret (measured), since a by-name watch among
/// 50,000 Secrets can take seconds to list.
const CLIENT_SECRET_REUSE: Duration = Duration::from_secs(5);

/// A connection that can't proceed, and why (becomes Ready=False).
#[derive(Debug)]
pub struct Blocked {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message (never a secret).
    pub message: String,
}

impl Blocked {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Blocked {
            reason,
            message: message.into(),
        }
    }
}

/// The resolved inputs of a connection.
pub struct Resolved {
    /// The client object.
    pub client: ExactOAuthClient,
    /// Its validated settings.
    pub settings: ClientSettings,
    /// Its client secret.
    pub client_secret: SecretString,
    /// Timing rules.
    pub policy: RefreshPolicy,
    /// HTTP client with the client's trust roots.
    pub http: reqwest::Client,
    /// Name of the workload Secret.
    pub target_name: String,
    /// Digest of the inputs that decide whether a dead chain may be retried.
    pub fingerprint: String,
}

/// Name of the workload Secret of a connection.
pub fn target_name(conn: &ExactConnection) -> String {
    conn.spec
        .target
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-exact-token", conn.name_any()))
}

/// Resolves client, client secret and timing for `conn`.
pub async fn dereference(
    conn: &ExactConnection,
    ctx: &Context,
) -> Result<Result<Resolved, Blocked>, kube::Error> {
    let ns = conn.namespace().unwrap_or_default();
    let client_ns = conn
        .spec
        .client_ref
        .namespace
        .clone()
        .unwrap_or_else(|| ns.clone());
    let client_name = &conn.spec.client_ref.name;
    let cached = ctx
        .caches
        .client(&client_ns, client_name)
        .map(|c| (*c).clone());
    let client = match cached {
        Some(c) => Some(c),
        None => {
            let clients: Api<ExactOAuthClient> = Api::namespaced(ctx.client.clone(), &client_ns);
            clients.get_opt(client_name).await?
        }
    };
    let Some(client) = client else {
        return Ok(Err(Blocked::new(
            reason::CLIENT_NOT_READY,
            format!("ExactOAuthClient {client_ns}/{client_name} not found"),
        )));
    };
    if !namespace_allowed(&client.spec, &client_ns, &ns) {
        return Ok(Err(Blocked::new(
            reason::CLIENT_NOT_ALLOWED,
            format!("ExactOAuthClient {client_ns}/{client_name} does not list namespace {ns} in allowedNamespaces"),
        )));
    }
    let settings = match resolve(&client.spec) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(Blocked::new(
                reason::CLIENT_NOT_READY,
                format!("ExactOAuthClient {client_ns}/{client_name} is invalid: {e}"),
            )))
        }
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &client_ns);
    let r = &client.spec.client_secret_ref;
    let client_secret = match ctx
        .caches
        .secret_key(&secrets, &client_ns, &r.name, &r.key, CLIENT_SECRET_REUSE)
        .await
    {
        Ok(s) => s,
        Err(RefError::Api { source, .. }) => return Err(source),
        Err(e) => {
            return Ok(Err(Blocked::new(
                reason::CLIENT_NOT_READY,
                format!("client secret of ExactOAuthClient {client_ns}/{client_name}: {e}"),
            )))
        }
    };
    let refresh_before = match parse_or(conn.spec.refresh_before.as_deref(), DEFAULT_REFRESH_BEFORE)
    {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            return Ok(Err(Blocked::new(
                reason::INVALID_SPEC,
                "refreshBefore must be greater than zero",
            )))
        }
        Err(e) => {
            return Ok(Err(Blocked::new(
                reason::INVALID_SPEC,
                format!("refreshBefore: {e}"),
            )))
        }
    };
    let policy = RefreshPolicy {
        refresh_before,
        refresh_window: settings.refresh_window,
        access_token_lifetime: settings.access_token_lifetime,
        refresh_token_lifetime: settings.refresh_token_lifetime,
        max_errors_per_hour: ctx.settings.max_errors_per_hour,
    };
    if !refresh_before_fits(&policy) {
        return Ok(Err(Blocked::new(
            reason::INVALID_SPEC,
            format!(
                "refreshBefore {:?} exceeds the client's refresh window {:?}: Exact would refuse every refresh as too early",
                refresh_before, settings.refresh_window
            ),
        )));
    }
    let http = match ctx.http_client(client.spec.ca_bundle.as_deref()) {
        Ok(h) => h,
        Err(e) => return Ok(Err(Blocked::new(reason::CLIENT_NOT_READY, e))),
    };
    let fingerprint = digest(&format!(
        "{}\n{}\n{}\n{}\n{}",
        client.spec.client_id,
        digest(client_secret.expose_secret()),
        settings.token_url,
        client.metadata.generation.unwrap_or_default(),
        conn.metadata.generation.unwrap_or_default(),
    ));
    Ok(Ok(Resolved {
        target_name: target_name(conn),
        client,
        settings,
        client_secret,
        policy,
        http,
        fingerprint,
    }))
}
