//! The document `kubectl exact inspect` produces (JSON/YAML as is, or rendered as text by
//! `inspect_text`): data only, so collecting and rendering do not depend on each other.

use super::events::EventRow;
use super::webhooks::WebhookRow;
use crate::crd::{Condition, ExactConnectionStatus, SecretKeyRef};
use jiff::Timestamp;
use serde::Serialize;

/// How many recent Events `inspect` shows.
pub const EVENT_LIMIT: usize = 10;

/// The inspected connection (the JSON/YAML document of `inspect`).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Namespace of the connection.
    pub namespace: String,
    /// Name of the connection.
    pub name: String,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// What the spec asks for.
    pub spec: SpecSummary,
    /// The referenced ExactOAuthClient.
    pub client: ClientSummary,
    /// The connection's status as the operator wrote it (it never holds a token).
    pub status: Option<ExactConnectionStatus>,
    /// The managed Secrets, keys only.
    pub secrets: Vec<SecretKeys>,
    /// The ExactWebhookSubscriptions that use this connection.
    pub webhook_subscriptions: Vec<WebhookRow>,
    /// Recent Events about the connection, oldest first.
    pub events: Vec<EventRow>,
    /// Things that could not be read (e.g. Events forbidden by RBAC).
    pub notes: Vec<String>,
}

/// The interesting part of the spec.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SpecSummary {
    /// `namespace/name` of the ExactOAuthClient.
    pub client: String,
    /// The bootstrap refresh-token Secret key, if any.
    pub bootstrap_secret: Option<SecretKeyRef>,
    /// Fixed division, or None (discovered via /current/Me).
    pub division: Option<i64>,
    /// Name of the workload Secret.
    pub target_secret: String,
    /// spec.refreshBefore as written (default 25s).
    pub refresh_before: Option<String>,
    /// spec.suspend.
    pub suspend: bool,
}

/// The referenced client's identity and state (never its secret).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClientSummary {
    /// Namespace of the client.
    pub namespace: String,
    /// Name of the client.
    pub name: String,
    /// Whether it exists.
    pub found: bool,
    /// Its Client ID (public).
    pub client_id: Option<String>,
    /// Its conditions.
    pub conditions: Vec<Condition>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// A managed Secret's keys.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// "workload" (the token Secret workloads read) or "state" (the operator's own).
    pub role: String,
    /// Secret name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Whether the connection is its controlling owner.
    pub owned_by_connection: bool,
    /// Its data keys, sorted. Values are never read into the report.
    pub keys: Vec<String>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}
