//! The two custom resources: `ExactOAuthClient` (one Exact Online app) and `ExactConnection`
//! (one authorized user/company on that app). Every field carries a `///` comment because
//! these become `kubectl explain` text.

use crate::duration::Lifetime;
use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::webhook::crd::{
    ExactWebhookSubscription, ExactWebhookSubscriptionSpec, ExactWebhookSubscriptionStatus,
};

/// API group of both kinds.
pub const GROUP: &str = "exact-operator.io";

/// Annotation asking the operator to look at a connection now: re-read its bootstrap Secret
/// (importing it only if its value changed), restore its Secrets, refresh if due. It never
/// forces a token call Exact would refuse. The value (e.g. a timestamp) is echoed in
/// `status.handledRefreshRequest` once acted on.
pub const REFRESH_REQUEST_ANNOTATION: &str = "exact-operator.io/refresh-requested-at";

/// Exact Online region: selects the `start.exactonline.<tld>` host.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Netherlands, start.exactonline.nl
    #[default]
    Nl,
    /// Belgium, start.exactonline.be
    Be,
    /// Germany, start.exactonline.de
    De,
    /// France, start.exactonline.fr
    Fr,
    /// Spain, start.exactonline.es
    Es,
    /// United Kingdom, start.exactonline.co.uk
    Uk,
    /// United States, start.exactonline.com
    Us,
}

/// A reference to one key of a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret's data.
    pub key: String,
}

/// One Exact Online app, as registered under "Manage my apps".
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "exact-operator.io",
    version = "v1alpha1",
    kind = "ExactOAuthClient",
    namespaced,
    status = "ExactOAuthClientStatus",
    shortname = "exactclient",
    shortname = "eoc",
    doc = "An Exact Online app (OAuth 2.0 client) whose connections the operator keeps alive.",
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".spec.clientId"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExactOAuthClientSpec {
    /// Human-readable name of the app (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Exact Online region of the app: nl, be, de, fr, es, uk or us. Selects the default
    /// authorization, token and API URLs. Default nl.
    #[serde(default)]
    pub region: Region,
    /// Override of the authorization endpoint (default https://start.exactonline.<region>/api/oauth2/auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// Override of the token endpoint (default https://start.exactonline.<region>/api/oauth2/token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Override of the REST API base (default https://start.exactonline.<region>/api).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// PEM bundle of extra CA certificates trusted for the URLs above (private CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Allow plain http URLs. Only for a local simulator such as exact-sim; never for Exact itself.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The app's Client ID (a GUID for real Exact apps).
    pub client_id: String,
    /// Secret key holding the app's Client Secret.
    pub client_secret_ref: SecretKeyRef,
    /// Redirect URI registered for the app; needed for the authorization-code flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// Secret key holding the app's webhook secret (used to verify webhook HashCodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
    /// Access-token lifetime used when a token response omits `expires_in`: a Kubernetes-style
    /// duration ("600s", "10m") or integer milliseconds as Exact writes them, bare
    /// (3599999) or quoted ("600000"). Default 600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_in: Option<Lifetime>,
    /// Refresh-token lifetime, used to compute when an unused refresh token expires and when a
    /// suspended connection needs a keep-alive refresh: "720h" or integer milliseconds, bare
    /// or quoted. Default 720h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in: Option<Lifetime>,
    /// How long before expiry the token endpoint starts accepting refreshes. Exact's is 30s;
    /// change it only for a simulator with compressed time. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_window: Option<String>,
    /// Namespaces whose ExactConnections may use this client. Default: only the client's own.
    /// "*" allows every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Exact's daily cap on token calls per user of this app (rolling 24 h). Retries after
    /// failures stop before a user's calls would reach it, keeping room for the regular
    /// refreshes. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_calls_per_day: Option<u32>,
}

/// Observed state of an ExactOAuthClient.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExactOAuthClientStatus {
    /// Ready: the client secret resolves and the URLs and lifetimes are valid.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A reference to an ExactOAuthClient.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ClientRef {
    /// Name of the ExactOAuthClient.
    pub name: String,
    /// Namespace of the ExactOAuthClient; default: the connection's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where and how to publish the workload-facing token Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSecret {
    /// Name of the Secret workloads read. Default `<connection>-exact-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Extra labels put on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations put on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra keys rendered from the token on every publish, key -> template, e.g.
    /// `Authorization: "Bearer {{ access_token }}"`. Placeholders `{{ variable }}` or
    /// `{{ variable | json }}` (also `| base64`); variables: access_token, token_type,
    /// expires_at, division, api_base_url, connection_name, connection_namespace (never the
    /// refresh token). A key may not replace a standard key. A bad template sets Ready=False
    /// (InvalidTemplate) and leaves the Secret as it was.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template: BTreeMap<String, String>,
}

/// One authorized Exact Online user/company on an ExactOAuthClient.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "exact-operator.io",
    version = "v1alpha1",
    kind = "ExactConnection",
    namespaced,
    status = "ExactConnectionStatus",
    shortname = "exactconn",
    shortname = "ec",
    doc = "One authorized Exact Online user/company whose access token the operator keeps fresh in a Secret.",
    printcolumn = r#"{"name":"Client","type":"string","jsonPath":".spec.clientRef.name"}"#,
    printcolumn = r#"{"name":"Division","type":"integer","jsonPath":".status.division"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.accessTokenExpiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExactConnectionSpec {
    /// The ExactOAuthClient (Exact app) this connection authorizes.
    pub client_ref: ClientRef,
    /// Bootstrap from an existing refresh token kept in this Secret key. Imported once; a
    /// changed value is imported again (re-authorization), the same value never (it was consumed).
    /// When absent the connection waits for the authorization-code flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_secret_ref: Option<SecretKeyRef>,
    /// Exact division (company) code. When absent it is discovered once via /api/v1/current/Me.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<i64>,
    /// The workload-facing Secret that receives the access token.
    #[serde(default)]
    pub target: TargetSecret,
    /// Refresh when this little of the access token's life is left (default 25s). Must not
    /// exceed the client's refresh window (Exact: 30s), or Exact refuses the refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_before: Option<String>,
    /// Stop renewing access tokens; the refresh token is still kept alive by a keep-alive
    /// refresh well before it would expire unused.
    #[serde(default)]
    pub suspend: bool,
    /// More divisions (companies) the one consent serves: their codes. The user's access
    /// token works for every division the user may open; the workload Secret then gains a
    /// `divisions` key (JSON array of {division, name, api_base_url}). Codes the user may
    /// not open are reported in the DivisionsAvailable condition and left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divisions: Vec<i64>,
    /// Serve every division the user may open (discovered via hrm/Divisions with the
    /// connection's access token, hourly and on `kubectl exact refresh`), in the
    /// `divisions` key. `spec.divisions` is then ignored.
    #[serde(default)]
    pub all_divisions: bool,
}

/// Observed state of an ExactConnection. Never contains a token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExactConnectionStatus {
    /// Ready and its reason: TokenPublished, AwaitingAuthorization, ReauthorizationRequired,
    /// ClientNotReady, ClientNotAllowed, TargetSecretConflict, RefreshFailing, Suspended,
    /// InvalidSpec, InvalidTemplate. DuplicateUser=True (SameExactUser) when another
    /// connection on the same client holds the same Exact user's consent;
    /// DivisionsAvailable=False (DivisionNotAccessible) when a listed division is not open to
    /// the user.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the published access token expires (measured from when its request was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub access_token_expires_at: Option<Timestamp>,
    /// When the last successful token call was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_refresh_time: Option<Timestamp>,
    /// When the operator plans the next token call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub next_refresh_time: Option<Timestamp>,
    /// When the current refresh token expires if unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub refresh_token_expires_at: Option<Timestamp>,
    /// The Exact division (company) the token is used with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<i64>,
    /// Failed token calls since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// SHA-256 digest (hex) of the last imported bootstrap refresh token: the same value is never
    /// imported twice, because it was consumed by the first refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_bootstrap_digest: Option<String>,
    /// The Exact user whose consent this connection holds (`UserID` from
    /// `/api/v1/current/Me`). One consent serves every division that user may open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_user_id: Option<String>,
    /// That user's `UserName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_user_name: Option<String>,
    /// Set when the last consent was given by a different Exact user than the one before (a
    /// different person or company took the connection over): that previous `UserID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_exact_user_id: Option<String>,
    /// Where a person authorizes this connection: the operator's start URL with a single-use,
    /// short-lived ticket. Shown only while the connection waits for consent or a
    /// re-authorization was requested (`kubectl exact authorize --force`); whoever can read
    /// this status can authorize the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// Value of the `exact-operator.io/refresh-requested-at` annotation last acted on
    /// (set by `kubectl exact refresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_refresh_request: Option<String>,
    /// Name of the workload Secret holding the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A short human-readable account of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The divisions published in the workload Secret's `divisions` key (spec.divisions or
    /// spec.allDivisions), as discovered with the user's token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divisions: Vec<DivisionInfo>,
    /// When the user's divisions were last discovered (hrm/Divisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub divisions_discovered_at: Option<Timestamp>,
    /// Token calls this connection made in the rolling 24 h (hourly buckets, so up to one
    /// hour more than 24 h may be counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_calls24h: Option<u32>,
    /// Token calls of this connection's Exact user on this client in the rolling 24 h,
    /// across all its connections: what Exact's daily cap counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_user_token_calls24h: Option<u32>,
}

/// One division (company) a connection serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DivisionInfo {
    /// Division code (the path segment of REST URLs).
    pub division: i64,
    /// Its Description in Exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A status condition following Kubernetes API conventions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// CamelCase machine-readable reason.
    pub reason: String,
    /// Human-readable detail; never contains a secret.
    pub message: String,
    /// When the status last changed.
    #[schemars(with = "String")]
    pub last_transition_time: Timestamp,
    /// The metadata.generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// (namespace, name) of the ExactOAuthClient a connection uses.
pub fn client_key(conn: &ExactConnection) -> (String, String) {
    let ns = conn
        .spec
        .client_ref
        .namespace
        .clone()
        .unwrap_or_else(|| conn.metadata.namespace.clone().unwrap_or_default());
    (ns, conn.spec.client_ref.name.clone())
}
