//! Simulator configuration: clients, lifetimes, limits and faults.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An OAuth client (an "app" registered in the Exact Online app center).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimClient {
    /// The client id (a GUID in real Exact; any string here).
    pub id: String,
    /// The client secret.
    pub secret: String,
    /// Registered redirect URIs; empty means any redirect URI is accepted.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

impl SimClient {
    /// A client that accepts any redirect URI.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
            redirect_uris: Vec::new(),
        }
    }

    /// Adds a registered redirect URI (once any is registered, only those are accepted).
    pub fn with_redirect(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Whether `uri` may be used as redirect for this client.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.is_empty() || self.redirect_uris.iter().any(|r| r == uri)
    }
}

/// A division (company, "administratie") a simulated user may open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDivision {
    /// The division code used in REST paths (`/api/v1/{code}/...`).
    pub code: i64,
    /// `Description` in `hrm/Divisions` / `system/Divisions`.
    pub description: String,
    /// `CustomerName`: the licence holder the division belongs to.
    pub customer_name: String,
    /// Number of `crm/Accounts` records in this division; `None` uses
    /// [`SimConfig::accounts_per_division`].
    #[serde(default)]
    pub accounts: Option<u32>,
}

impl SimDivision {
    /// A division with a generated description and customer name.
    pub fn new(code: i64) -> Self {
        Self {
            code,
            description: format!("Division {code}"),
            customer_name: "Simulated Customer B.V.".to_string(),
            accounts: None,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// Sets the number of accounts in this division.
    pub fn with_accounts(mut self, n: u32) -> Self {
        self.accounts = Some(n);
        self
    }
}

/// A named Exact Online user who can give consent and may open several divisions.
///
/// Consents that name no user (see README) are given by a fresh anonymous user each
/// time, so that unrelated connections never share a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimUser {
    /// Login name (`UserName` in `Me`); also how a consent picks the user.
    pub user_name: String,
    /// `FullName` in `Me`.
    pub full_name: String,
    /// Divisions the user may open (`hrm/Divisions`); never empty once started.
    pub divisions: Vec<SimDivision>,
    /// `CurrentDivision` in `Me` (the division the user last opened); must be one of
    /// `divisions`, else the first division is used.
    pub current_division: Option<i64>,
}

impl SimUser {
    /// A user without divisions yet (one is added at start if none is given:
    /// [`SimConfig::division`]).
    pub fn new(user_name: impl Into<String>) -> Self {
        let user_name = user_name.into();
        Self {
            full_name: format!("Simulated User ({user_name})"),
            user_name,
            divisions: Vec::new(),
            current_division: None,
        }
    }

    /// Adds an accessible division.
    pub fn with_division(mut self, d: SimDivision) -> Self {
        self.divisions.push(d);
        self
    }

    /// Sets the current division.
    pub fn with_current_division(mut self, code: i64) -> Self {
        self.current_division = Some(code);
        self
    }
}

/// Injected failures. Ratios are probabilities in `0.0..=1.0` per token call.
///
/// JSON form (for `PUT /_sim/faults`): all fields optional, latency in milliseconds as
/// `latency_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Token calls answered with a 500 Apigee fault body; nothing is consumed.
    pub fault_500_ratio: f64,
    /// Extra delay before each token and REST request is handled.
    #[serde(rename = "latency_ms", with = "crate::duration::as_millis")]
    pub latency: Duration,
    /// Token calls answered `200` with an empty body; nothing is consumed.
    pub empty_body_ratio: f64,
    /// Token calls answered `200` with an HTML (non-JSON) body; nothing is consumed.
    pub non_json_ratio: f64,
    /// Token calls that are processed (a refresh token IS rotated) but whose connection
    /// is closed before any response byte is sent.
    pub lost_response_ratio: f64,
}

/// Configuration of a simulator instance. Use [`SimConfig::default`] and adjust.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Lifetime of access tokens (Exact: 600 s). `expires_in` reports its whole seconds.
    pub access_token_lifetime: Duration,
    /// A refresh is refused while more than this much access-token lifetime remains
    /// (Exact: 30 s).
    pub refresh_window: Duration,
    /// Lifetime of an unused refresh token (Exact: about 30 days).
    pub refresh_token_lifetime: Duration,
    /// Lifetime of an authorization code (Exact: 180 s).
    pub code_lifetime: Duration,
    /// Registered OAuth clients.
    pub clients: Vec<SimClient>,
    /// Default division (`CurrentDivision`) for new connections.
    pub division: i64,
    /// Skip the consent page: `/api/oauth2/auth` redirects with a code at once.
    pub auto_consent: bool,
    /// A client with more than this many 4xx token answers within an hour is blocked
    /// (403) for the rest of that hour.
    pub error_limit_per_hour: u32,
    /// Initial fault injection settings.
    pub faults: Faults,
    /// REST calls allowed per minute per client and division (Exact: 60 per app per
    /// company), shared by all REST endpoints.
    pub rest_limit_per_minute: u32,
    /// REST calls allowed per day per client and division (Exact: 5000).
    pub rest_limit_per_day: u32,
    /// Serve HTTPS with a freshly generated self-signed certificate.
    pub tls: bool,
    /// Named users (see [`SimUser`]).
    pub users: Vec<SimUser>,
    /// User who consents when the authorization request names none (`user=`
    /// parameter); `None`: a fresh anonymous user per consent.
    pub default_user: Option<String>,
    /// A code exchange by a user revokes that user's older chains on the same client
    /// (Exact keeps one grant per user per app). Default on.
    pub revoke_on_reconsent: bool,
    /// Token calls allowed per (user, client) in a rolling 24 h (Exact: about 200);
    /// 0 disables the cap (and the counting).
    pub token_calls_per_day: u32,
    /// `crm/Accounts` records per division unless the division says otherwise.
    pub accounts_per_division: u32,
    /// Server-driven page size of REST collections (Exact: 60).
    pub page_size: u32,
    /// Webhook secret per client id: messages fired for that client's subscriptions are
    /// signed with it (Exact shows one per app under "Manage my apps").
    pub webhook_secrets: Vec<(String, String)>,
    /// How long after a subscription is created the empty validation POST is sent to its
    /// CallbackURL (Exact: about 1 s).
    pub webhook_validation_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            access_token_lifetime: Duration::from_secs(600),
            refresh_window: Duration::from_secs(30),
            refresh_token_lifetime: Duration::from_secs(30 * 86_400),
            code_lifetime: Duration::from_secs(180),
            clients: Vec::new(),
            division: 123_456,
            auto_consent: false,
            error_limit_per_hour: 10,
            faults: Faults::default(),
            rest_limit_per_minute: 60,
            rest_limit_per_day: 5000,
            tls: false,
            users: Vec::new(),
            default_user: None,
            revoke_on_reconsent: true,
            token_calls_per_day: 200,
            accounts_per_division: 100,
            page_size: 60,
            webhook_secrets: Vec::new(),
            webhook_validation_delay: Duration::from_secs(1),
        }
    }
}

impl SimConfig {
    /// Adds a client that accepts any redirect URI.
    pub fn with_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.clients.push(SimClient::new(id, secret));
        self
    }

    /// Sets the webhook secret of client `id`.
    pub fn with_webhook_secret(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.webhook_secrets.push((id.into(), secret.into()));
        self
    }

    /// Adds a named user.
    pub fn with_user(mut self, user: SimUser) -> Self {
        self.users.push(user);
        self
    }
}
