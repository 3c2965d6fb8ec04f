//! Exact's webhooks: `WebhookSubscriptions` per division (list, create, delete by guid)
//! behind the same bearer check as the other REST endpoints; the empty validation POST to a
//! new subscription's CallbackURL shortly after creation; and firing signed (or deliberately
//! badly signed) messages for `/_sim` and tests.
//!
//! A message is `{"Content":{...},"HashCode":"..."}` where HashCode is the uppercase hex
//! HMAC-SHA256 of the Content JSON text exactly as sent, keyed with the app's webhook
//! secret. The Content text is written by hand with Exact-like spacing so that a receiver
//! that re-serializes instead of using the raw bytes computes a different HashCode.

use crate::rest::{admit, Division};
use crate::state::{lock, Shared};
pub use crate::webhook_registry::{Registry, WebhookSubscription};
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

/// The collection's path segment.
const COLLECTION: &str = "WebhookSubscriptions";

fn entity(s: &WebhookSubscription) -> serde_json::Value {
    json!({
        "ID": s.id,
        "CallbackURL": s.callback_url,
        "ClientID": s.client_id,
        "Division": s.division,
        "Topic": s.topic,
        "Description": null,
    })
}

fn odata_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": "", "message": {"lang": "", "value": msg}}})),
    )
        .into_response()
}

/// The admitted caller's client id and division, or the refusal.
fn caller(
    shared: &Shared,
    headers: &HeaderMap,
    division: String,
) -> Result<(String, i64), Box<Response>> {
    let mut st = lock(shared);
    let a = admit(&mut st, headers, Division::Path(division))?;
    let client = st
        .chains
        .iter()
        .rev()
        .find(|c| c.name == a.name)
        .map(|c| c.client_id.clone())
        .ok_or_else(|| Box::new(StatusCode::INTERNAL_SERVER_ERROR.into_response()))?;
    Ok((client, a.division))
}

/// `GET /api/v1/{division}/webhooks/WebhookSubscriptions`: the caller's app's
/// subscriptions in that division (always JSON: the operator asks for it).
pub async fn list(
    AxState(shared): AxState<Shared>,
    Path((division, item)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if item != COLLECTION {
        return StatusCode::NOT_FOUND.into_response();
    }
    let (client, division) = match caller(&shared, &headers, division) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let st = lock(&shared);
    let results: Vec<_> = st
        .webhooks
        .subs
        .iter()
        .filter(|s| s.client_id == client && s.division == division)
        .map(entity)
        .collect();
    Json(json!({"d": {"results": results}})).into_response()
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "CallbackURL")]
    callback_url: String,
    #[serde(rename = "Topic")]
    topic: String,
}

/// `POST /api/v1/{division}/webhooks/WebhookSubscriptions` `{CallbackURL, Topic}` -> 201
/// with the new ID; the validation POST follows after the configured delay.
pub async fn create(
    AxState(shared): AxState<Shared>,
    Path((division, item)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if item != COLLECTION {
        return StatusCode::NOT_FOUND.into_response();
    }
    let (client, division) = match caller(&shared, &headers, division) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Ok(req) = serde_json::from_slice::<CreateBody>(&body) else {
        return odata_error(
            StatusCode::BAD_REQUEST,
            "CallbackURL and Topic are required.",
        );
    };
    if url::Url::parse(&req.callback_url).is_err() || req.topic.trim().is_empty() {
        return odata_error(StatusCode::BAD_REQUEST, "Invalid CallbackURL or Topic.");
    }
    let (sub, delay) = {
        let mut st = lock(&shared);
        // Exact refuses a second subscription of an app on the same topic and URL.
        if st.webhooks.subs.iter().any(|s| {
            s.client_id == client
                && s.division == division
                && s.topic == req.topic
                && s.callback_url == req.callback_url
        }) {
            return odata_error(StatusCode::BAD_REQUEST, "Duplicate subscription.");
        }
        let sub = WebhookSubscription {
            id: crate::state::random_guid(),
            client_id: client,
            division,
            callback_url: req.callback_url,
            topic: req.topic,
            validation_status: None,
        };
        st.webhooks.subs.push(sub.clone());
        (sub, st.cfg.webhook_validation_delay)
    };
    tracing::info!(topic = %sub.topic, division, "webhook subscription created");
    let validate = (shared.clone(), sub.id.clone(), sub.callback_url.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let status = post(&validate.2, Bytes::new()).await.ok();
        let mut st = lock(&validate.0);
        if let Some(s) = st.webhooks.subs.iter_mut().find(|s| s.id == validate.1) {
            s.validation_status = status;
        }
    });
    (StatusCode::CREATED, Json(json!({"d": entity(&sub)}))).into_response()
}

/// `DELETE /api/v1/{division}/webhooks/WebhookSubscriptions(guid'ID')` -> 204, 404 when
/// the caller's app has no such subscription there.
pub async fn delete(
    AxState(shared): AxState<Shared>,
    Path((division, item)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = item
        .strip_prefix("WebhookSubscriptions(guid'")
        .and_then(|r| r.strip_suffix("')"))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (client, division) = match caller(&shared, &headers, division) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut st = lock(&shared);
    let ours = st
        .webhooks
        .get(id)
        .is_some_and(|s| s.client_id == client && s.division == division);
    if !ours {
        return odata_error(StatusCode::NOT_FOUND, "Not found.");
    }
    st.webhooks.remove(id);
    StatusCode::NO_CONTENT.into_response()
}

/// How a fired message is signed.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// Signed like Exact.
    #[default]
    Valid,
    /// A well-formed HashCode of other bytes.
    Wrong,
    /// No HashCode member.
    Missing,
}

/// What to fire.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FireOptions {
    /// `Action`: Create, Update or Delete (default Update).
    #[serde(default)]
    pub action: Option<String>,
    /// `Key` of the record (default a random GUID).
    #[serde(default)]
    pub key: Option<String>,
    /// How to sign it.
    #[serde(default)]
    pub signature: Signature,
    /// Pad the Content to at least this many bytes (to test size limits).
    #[serde(default)]
    pub pad_to: usize,
}

/// The message fired and how the CallbackURL answered.
#[derive(Clone, Debug, Serialize)]
pub struct Fired {
    /// The exact body sent.
    pub body: String,
    /// The answer's status; None when there was no answer (connect error, timeout).
    pub status: Option<u16>,
}

/// Why a message could not be fired.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// No such subscription.
    #[error("no webhook subscription {0}")]
    UnknownSubscription(String),
    /// The subscription's app has no webhook secret configured.
    #[error("client {0} has no webhook secret configured")]
    NoSecret(String),
}

/// Builds, signs and POSTs one message for subscription `id`.
pub async fn fire(shared: &Shared, id: &str, opts: &FireOptions) -> Result<Fired, FireError> {
    let (sub, secret, now) = {
        let st = lock(shared);
        let sub = st
            .webhooks
            .get(id)
            .cloned()
            .ok_or_else(|| FireError::UnknownSubscription(id.to_string()))?;
        let secret = st
            .cfg
            .webhook_secrets
            .iter()
            .find(|(c, _)| *c == sub.client_id)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| FireError::NoSecret(sub.client_id.clone()))?;
        (sub, secret, st.clock.epoch_ms(st.now()))
    };
    let key = opts.key.clone().unwrap_or_else(crate::state::random_guid);
    let action = opts.action.clone().unwrap_or_else(|| "Update".into());
    let endpoint = format!(
        "https://start.exactonline.nl/api/v1/{}/crm/{}(guid'{key}')",
        sub.division, sub.topic
    );
    let mut content = format!(
        "{{\"Topic\": {}, \"ClientId\": {}, \"Division\": {}, \"Action\": {}, \"Key\": {}, \
         \"ExactOnlineEndpoint\": {}, \"EventCreatedOn\": \"/Date({now})/\"",
        json!(sub.topic),
        json!(sub.client_id),
        sub.division,
        json!(action),
        json!(key),
        json!(endpoint),
    );
    if content.len() < opts.pad_to {
        let pad = "x".repeat(opts.pad_to - content.len());
        content.push_str(&format!(", \"Padding\": \"{pad}\""));
    }
    content.push('}');
    let hash = match opts.signature {
        Signature::Valid => Some(sign(&secret, content.as_bytes())),
        Signature::Wrong => Some(sign(&secret, format!("{content} ").as_bytes())),
        Signature::Missing => None,
    };
    let body = match hash {
        Some(h) => format!("{{\"Content\": {content}, \"HashCode\": \"{h}\"}}"),
        None => format!("{{\"Content\": {content}}}"),
    };
    let status = post(&sub.callback_url, Bytes::from(body.clone()))
        .await
        .ok();
    tracing::info!(topic = %sub.topic, status = ?status, "webhook message fired");
    Ok(Fired { body, status })
}

/// Uppercase hex HMAC-SHA256 of `content` keyed with `secret`, as Exact computes HashCode.
pub fn sign(secret: &str, content: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(content);
    hex::encode_upper(mac.finalize().into_bytes())
}

async fn post(url: &str, body: Bytes) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut req = client.post(url);
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    Ok(req.body(body).send().await?.status().as_u16())
}
