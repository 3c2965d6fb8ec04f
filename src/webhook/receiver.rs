//! The webhook route on the operator's public server: `POST /webhooks/exact/{ns}/{name}`.
//! It answers Exact's empty validation POST with 200, verifies each message's HashCode (HMAC-
//! SHA256 of the raw Content bytes, keyed with the app's webhook secret) in constant time,
//! and forwards verified bodies byte for byte to the subscription's target. Exact gets a 2xx
//! only after the target answered 2xx, so a failed delivery is retried by Exact.

use super::crd::ExactWebhookSubscription;
use super::link::link;
use crate::context::Context;
use crate::metrics::OutcomeLabel;
use crate::oauth::guard::{security_headers, valid_name, MAX_URI_BYTES};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use kube::api::Api;
use kube::Resource;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest message accepted (Exact's messages are well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub use crate::metrics::WEBHOOK_OUTCOMES as OUTCOMES;

/// Tunables of the route.
#[derive(Clone, Debug)]
pub struct ReceiverSettings {
    /// Timeout of one delivery to a target (also the longest wait for a delivery slot).
    pub forward_timeout: Duration,
    /// Deliveries in flight per subscription.
    pub max_in_flight: usize,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        ReceiverSettings {
            forward_timeout: Duration::from_secs(10),
            max_in_flight: 8,
        }
    }
}

/// Delivery slots per subscription (namespace, name). Only subscriptions that exist get an
/// entry (the lookup comes first), so the map is as large as the set of subscriptions.
type Slots = Mutex<HashMap<(String, String), Arc<Semaphore>>>;

/// Shared state of the route.
#[derive(Clone)]
pub struct ReceiverState {
    ctx: Arc<Context>,
    settings: ReceiverSettings,
    http: reqwest::Client,
    slots: Arc<Slots>,
}

impl ReceiverState {
    /// The route's state.
    pub fn new(ctx: Arc<Context>, settings: ReceiverSettings) -> Self {
        // Targets are in-cluster services: no redirects (a target must not bounce a
        // message elsewhere), no proxy from the environment.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        ReceiverState {
            ctx,
            settings,
            http,
            slots: Arc::default(),
        }
    }

    fn count(&self, outcome: &str) {
        self.ctx
            .metrics
            .webhook_messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    fn slots_for(&self, ns: &str, name: &str) -> Arc<Semaphore> {
        let key = (ns.to_string(), name.to_string());
        match self.slots.lock() {
            Ok(mut m) => m
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_in_flight)))
                .clone(),
            // A poisoned map only loses sharing of the limit, never a message.
            Err(_) => Arc::new(Semaphore::new(self.settings.max_in_flight)),
        }
    }
}

/// The route, with its own guard: POST only, bounded URI, the OAuth routes' security
/// headers. Merge it into the public server's router.
pub fn router(state: ReceiverState) -> Router {
    Router::new()
        .route("/webhooks/exact/{namespace}/{name}", post(receive))
        .layer(middleware::from_fn(guard))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

async fn guard(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return StatusCode::URI_TOO_LONG.into_response();
    }
    next.run(req).await
}

fn answer(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "Content", borrow)]
    content: &'a RawValue,
    #[serde(rename = "HashCode", default)]
    hash_code: Option<String>,
}

/// Whether `hash_code` (hex, any case) is the HMAC-SHA256 of `content` under `secret`,
/// compared in constant time.
pub fn signature_valid(secret: &[u8], content: &[u8], hash_code: &str) -> bool {
    let Ok(expected) = hex::decode(hash_code.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(content);
    mac.verify_slice(&expected).is_ok()
}

async fn receive(
    State(s): State<ReceiverState>,
    Path((ns, name)): Path<(String, String)>,
    body: Body,
) -> Response {
    if !valid_name(&ns, 63) || !valid_name(&name, 253) {
        s.count("unknown_subscription");
        return answer(StatusCode::NOT_FOUND, "no such subscription");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        s.count("too_large");
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "message too large");
    };
    let api: Api<ExactWebhookSubscription> = Api::namespaced(s.ctx.client.clone(), &ns);
    let sub = match api.get_opt(&name).await {
        Ok(Some(sub)) if sub.meta().deletion_timestamp.is_none() => sub,
        Ok(_) => {
            s.count("unknown_subscription");
            return answer(StatusCode::NOT_FOUND, "no such subscription");
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook: cannot read the subscription");
            s.count("unavailable");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "try again later");
        }
    };
    if bytes.is_empty() {
        // Exact's validation call right after a subscription is created.
        s.count("validation");
        tracing::info!(namespace = %ns, name = %name, "webhook validation call answered");
        return answer(StatusCode::OK, "ok");
    }
    let Ok(msg) = serde_json::from_slice::<Message<'_>>(&bytes) else {
        s.count("malformed");
        return answer(StatusCode::BAD_REQUEST, "not an Exact webhook message");
    };
    let linked = match link(&s.ctx, &sub).await {
        Ok(Ok(l)) => l,
        Ok(Err(n)) => {
            tracing::warn!(namespace = %ns, name = %name, reason = n.reason, "webhook: cannot verify: {}", n.message);
            s.count("unavailable");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot verify messages now",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook: cannot resolve the subscription");
            s.count("unavailable");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "try again later");
        }
    };
    let verified = msg.hash_code.as_deref().is_some_and(|h| {
        signature_valid(
            linked.webhook_secret.expose_secret().as_bytes(),
            msg.content.get().as_bytes(),
            h,
        )
    });
    if !verified {
        s.count("bad_signature");
        tracing::warn!(namespace = %ns, name = %name, "webhook message with a bad or missing HashCode refused");
        return answer(StatusCode::UNAUTHORIZED, "bad signature");
    }
    let Ok(target) = sub.spec.target.resolve(&ns) else {
        s.count("target_failed");
        return answer(StatusCode::SERVICE_UNAVAILABLE, "no valid target");
    };
    forward(&s, &ns, &name, target, bytes).await
}

async fn forward(
    s: &ReceiverState,
    ns: &str,
    name: &str,
    target: url::Url,
    body: Bytes,
) -> Response {
    let slots = s.slots_for(ns, name);
    let timeout = s.settings.forward_timeout;
    let Ok(Ok(_permit)) = tokio::time::timeout(timeout, slots.acquire_owned()).await else {
        s.count("target_failed");
        return answer(StatusCode::SERVICE_UNAVAILABLE, "target busy");
    };
    let started = Instant::now();
    let sent = s
        .http
        .post(target)
        .timeout(timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    s.ctx
        .metrics
        .webhook_forward_duration
        .observe(started.elapsed().as_secs_f64());
    match sent {
        Ok(r) if r.status().is_success() => {
            s.count("forwarded");
            answer(StatusCode::OK, "delivered")
        }
        Ok(r) => {
            tracing::warn!(namespace = %ns, name = %name, status = r.status().as_u16(), "webhook target refused a message");
            s.count("target_failed");
            answer(StatusCode::BAD_GATEWAY, "target refused the message")
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "webhook target unreachable");
            s.count("target_failed");
            answer(StatusCode::SERVICE_UNAVAILABLE, "target unreachable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_raw_bytes() {
        let secret = b"whsec";
        let content = br#"{"Topic": "Accounts", "Key": "k"}"#;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("key");
        mac.update(content);
        let good = hex::encode_upper(mac.finalize().into_bytes());
        assert!(signature_valid(secret, content, &good));
        assert!(!signature_valid(
            secret,
            br#"{"Topic":"Accounts","Key":"k"}"#,
            &good
        ));
        assert!(!signature_valid(b"other", content, &good));
        assert!(!signature_valid(secret, content, "zz"));
        assert!(!signature_valid(secret, content, ""));
        let body = format!(
            r#"{{"Content": {}, "HashCode": "{good}"}}"#,
            std::str::from_utf8(content).expect("utf8")
        );
        let msg: Message<'_> = serde_json::from_str(&body).expect("parse");
        assert_eq!(
            msg.content.get().as_bytes(),
            content,
            "the raw Content text, untouched"
        );
    }
}
