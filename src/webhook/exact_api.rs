//! Exact's `webhooks/WebhookSubscriptions` REST collection: list, create, delete. Called
//! with the connection's current access token as read from its workload Secret; a 401 is
//! reported, never answered with a token call (the connection's own refresh replaces the
//! token, and the next reconcile uses the new one).

use axum::body::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;

/// Timeout of one REST call.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call failed. Never holds the token.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Exact refused the access token (expired or revoked).
    #[error("Exact refused the access token (401)")]
    Unauthorized,
    /// Any other non-success answer.
    #[error("Exact answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Exact's error message, if any (truncated).
        message: String,
    },
    /// No answer (connect error, timeout).
    #[error("calling Exact: {0}")]
    Transport(#[source] reqwest::Error),
    /// An answer that is not the expected JSON.
    #[error("Exact's answer is not the expected JSON: {0}")]
    BadBody(String),
}

/// A subscription as Exact lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Remote {
    /// ID (GUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// CallbackURL.
    #[serde(rename = "CallbackURL", default)]
    pub callback_url: String,
    /// Topic.
    #[serde(rename = "Topic", default)]
    pub topic: String,
}

/// A client for one app's subscriptions.
pub struct ExactApi<'a> {
    /// HTTP client with the app's trust roots.
    pub http: &'a reqwest::Client,
    /// REST base, e.g. `https://start.exactonline.nl/api`.
    pub api_base_url: &'a str,
    /// The connection's current access token.
    pub token: &'a SecretString,
}

#[derive(Deserialize)]
struct Results<T> {
    d: ResultsInner<T>,
}
#[derive(Deserialize)]
struct ResultsInner<T> {
    results: Vec<T>,
}
#[derive(Deserialize)]
struct Single<T> {
    d: T,
}

impl ExactApi<'_> {
    fn collection(&self, division: i64) -> String {
        format!(
            "{}/v1/{division}/webhooks/WebhookSubscriptions",
            self.api_base_url.trim_end_matches('/')
        )
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .timeout(TIMEOUT)
            .bearer_auth(self.token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// The app's subscriptions in `division`.
    pub async fn list(&self, division: i64) -> Result<Vec<Remote>, ApiError> {
        let resp = self
            .request(reqwest::Method::GET, &self.collection(division))
            .send()
            .await
            .map_err(ApiError::Transport)?;
        let body = checked(resp).await?;
        let parsed: Results<Remote> =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
        Ok(parsed.d.results)
    }

    /// Creates a subscription and returns its ID.
    pub async fn create(
        &self,
        division: i64,
        callback_url: &str,
        topic: &str,
    ) -> Result<String, ApiError> {
        let resp = self
            .request(reqwest::Method::POST, &self.collection(division))
            .json(&serde_json::json!({"CallbackURL": callback_url, "Topic": topic}))
            .send()
            .await
            .map_err(ApiError::Transport)?;
        let body = checked(resp).await?;
        let parsed: Single<Remote> =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
        Ok(parsed.d.id)
    }

    /// Deletes a subscription; one that is already gone counts as deleted.
    pub async fn delete(&self, division: i64, id: &str) -> Result<(), ApiError> {
        // IDs come from Exact, but they end up in a URL: accept GUID characters only.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(ApiError::BadBody(format!("{id:?} is not a GUID")));
        }
        let url = format!("{}(guid'{id}')", self.collection(division));
        let resp = self
            .request(reqwest::Method::DELETE, &url)
            .send()
            .await
            .map_err(ApiError::Transport)?;
        if resp.status().as_u16() == 404 {
            return Ok(());
        }
        checked(resp).await.map(|_| ())
    }
}

async fn checked(resp: reqwest::Response) -> Result<Bytes, ApiError> {
    let status = resp.status();
    if status.as_u16() == 401 {
        return Err(ApiError::Unauthorized);
    }
    let body = resp.bytes().await.map_err(ApiError::Transport)?;
    if !status.is_success() {
        let mut message: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        if message.is_empty() {
            message = status.canonical_reason().unwrap_or("").to_string();
        }
        return Err(ApiError::Status {
            status: status.as_u16(),
            message,
        });
    }
    Ok(body)
}
