//! Validated view of an ExactOAuthClient spec: URLs defaulted from the region and checked,
//! lifetimes parsed. Pure: no cluster access, so every rule is unit-tested.

use crate::crd::{ExactOAuthClientSpec, Region};
use crate::duration::{parse_or, DurationError, Lifetime};
use std::time::Duration;
use thiserror::Error;
use url::Url;

/// Exact's access-token lifetime when the response omits `expires_in`.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// Exact's (approximate) lifetime of an unused refresh token.
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Exact refuses refreshes while more than this much of the access token remains.
pub const DEFAULT_REFRESH_WINDOW: Duration = Duration::from_secs(30);

/// Why an ExactOAuthClient spec is unusable. Messages are shown in status conditions.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// A URL that does not parse.
    #[error("{field} {value:?} is not a valid URL: {reason}")]
    BadUrl {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// http where https is required.
    #[error("{field} must use https (set allowInsecureHttp: true only for a local simulator)")]
    InsecureUrl { field: &'static str },
    /// A lifetime that does not parse.
    #[error("{field}: {source}")]
    BadDuration {
        field: &'static str,
        source: DurationError,
    },
    /// A lifetime of zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration { field: &'static str },
    /// Empty client id.
    #[error("clientId must not be empty")]
    EmptyClientId,
}

/// The endpoints and lifetimes of one Exact app, ready to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Where users consent.
    pub authorization_url: Url,
    /// Where tokens are obtained and refreshed.
    pub token_url: Url,
    /// REST base, e.g. https://start.exactonline.nl/api (no trailing slash).
    pub api_base_url: String,
    /// Access-token lifetime when a response omits it.
    pub access_token_lifetime: Duration,
    /// Lifetime of an unused refresh token.
    pub refresh_token_lifetime: Duration,
    /// How long before expiry refreshes are accepted.
    pub refresh_window: Duration,
}

/// The host of a region.
pub fn region_host(region: Region) -> &'static str {
    match region {
        Region::Nl => "start.exactonline.nl",
        Region::Be => "start.exactonline.be",
        Region::De => "start.exactonline.de",
        Region::Fr => "start.exactonline.fr",
        Region::Es => "start.exactonline.es",
        Region::Uk => "start.exactonline.co.uk",
        Region::Us => "start.exactonline.com",
    }
}

fn check_url(field: &'static str, value: &str, allow_http: bool) -> Result<Url, SpecError> {
    let url = Url::parse(value).map_err(|e| SpecError::BadUrl {
        field,
        value: value.to_string(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http => Ok(url),
        "http" => Err(SpecError::InsecureUrl { field }),
        other => Err(SpecError::BadUrl {
            field,
            value: value.to_string(),
            reason: format!("scheme {other:?} is not http(s)"),
        }),
    }
}

fn positive(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, SpecError> {
    let d = parse_or(value, default).map_err(|source| SpecError::BadDuration { field, source })?;
    if d.is_zero() {
        return Err(SpecError::ZeroDuration { field });
    }
    Ok(d)
}

/// Validates a client spec and fills in region defaults.
pub fn resolve(spec: &ExactOAuthClientSpec) -> Result<ClientSettings, SpecError> {
    if spec.client_id.trim().is_empty() {
        return Err(SpecError::EmptyClientId);
    }
    let host = region_host(spec.region);
    let insecure = spec.allow_insecure_http;
    let auth = spec
        .authorization_url
        .clone()
        .unwrap_or_else(|| format!("https://{host}/api/oauth2/auth"));
    let token = spec
        .token_url
        .clone()
        .unwrap_or_else(|| format!("https://{host}/api/oauth2/token"));
    let api = spec
        .api_base_url
        .clone()
        .unwrap_or_else(|| format!("https://{host}/api"));
    let authorization_url = check_url("authorizationUrl", &auth, insecure)?;
    let token_url = check_url("tokenUrl", &token, insecure)?;
    check_url("apiBaseUrl", &api, insecure)?;
    Ok(ClientSettings {
        authorization_url,
        token_url,
        api_base_url: api.trim_end_matches('/').to_string(),
        access_token_lifetime: positive(
            "accessTokenExpiresIn",
            spec.access_token_expires_in
                .as_ref()
                .map(Lifetime::to_text)
                .as_deref(),
            DEFAULT_ACCESS_TOKEN_LIFETIME,
        )?,
        refresh_token_lifetime: positive(
            "refreshTokenExpiresIn",
            spec.refresh_token_expires_in
                .as_ref()
                .map(Lifetime::to_text)
                .as_deref(),
            DEFAULT_REFRESH_TOKEN_LIFETIME,
        )?,
        refresh_window: positive(
            "refreshWindow",
            spec.refresh_window.as_deref(),
            DEFAULT_REFRESH_WINDOW,
        )?,
    })
}

/// Whether a connection in `namespace` may use a client living in `client_namespace`.
pub fn namespace_allowed(
    spec: &ExactOAuthClientSpec,
    client_namespace: &str,
    namespace: &str,
) -> bool {
    namespace == client_namespace
        || spec
            .allowed_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;

    fn spec() -> ExactOAuthClientSpec {
        ExactOAuthClientSpec {
            display_name: None,
            region: Region::Nl,
            authorization_url: None,
            token_url: None,
            api_base_url: None,
            ca_bundle: None,
            allow_insecure_http: false,
            client_id: "abc".into(),
            client_secret_ref: SecretKeyRef {
                name: "s".into(),
                key: "k".into(),
            },
            redirect_uri: None,
            webhook_secret_ref: None,
            access_token_expires_in: None,
            refresh_token_expires_in: None,
            refresh_window: None,
            allowed_namespaces: vec![],
            token_calls_per_day: None,
        }
    }

    #[test]
    fn region_defaults() {
        let s = resolve(&spec()).expect("valid");
        assert_eq!(
            s.token_url.as_str(),
            "https://start.exactonline.nl/api/oauth2/token"
        );
        assert_eq!(
            s.authorization_url.as_str(),
            "https://start.exactonline.nl/api/oauth2/auth"
        );
        assert_eq!(s.api_base_url, "https://start.exactonline.nl/api");
        assert_eq!(s.access_token_lifetime, Duration::from_secs(600));
        assert_eq!(s.refresh_window, Duration::from_secs(30));
        let uk = resolve(&ExactOAuthClientSpec {
            region: Region::Uk,
            ..spec()
        })
        .expect("valid");
        assert_eq!(uk.api_base_url, "https://start.exactonline.co.uk/api");
        let us = resolve(&ExactOAuthClientSpec {
            region: Region::Us,
            ..spec()
        })
        .expect("valid");
        assert_eq!(us.token_url.host_str(), Some("start.exactonline.com"));
    }

    #[test]
    fn overrides_and_integer_millisecond_lifetimes() {
        let s = resolve(&ExactOAuthClientSpec {
            token_url: Some("http://127.0.0.1:9/api/oauth2/token".into()),
            api_base_url: Some("http://127.0.0.1:9/api/".into()),
            allow_insecure_http: true,
            access_token_expires_in: Some("3599999".into()),
            refresh_token_expires_in: Some("720h".into()),
            ..spec()
        })
        .expect("valid");
        assert_eq!(s.token_url.as_str(), "http://127.0.0.1:9/api/oauth2/token");
        assert_eq!(s.api_base_url, "http://127.0.0.1:9/api");
        assert_eq!(s.access_token_lifetime, Duration::from_millis(3_599_999));
        assert_eq!(s.refresh_token_lifetime, Duration::from_secs(720 * 3600));
    }

    #[test]
    fn rejects_insecure_bad_urls_and_lifetimes() {
        let http = ExactOAuthClientSpec {
            token_url: Some("http://x/t".into()),
            ..spec()
        };
        assert_eq!(
            resolve(&http),
            Err(SpecError::InsecureUrl { field: "tokenUrl" })
        );
        let ftp = ExactOAuthClientSpec {
            token_url: Some("ftp://x/t".into()),
            ..spec()
        };
        assert!(matches!(
            resolve(&ftp),
            Err(SpecError::BadUrl {
                field: "tokenUrl",
                ..
            })
        ));
        let junk = ExactOAuthClientSpec {
            authorization_url: Some("not a url".into()),
            ..spec()
        };
        assert!(matches!(
            resolve(&junk),
            Err(SpecError::BadUrl {
                field: "authorizationUrl",
                ..
            })
        ));
        let life = ExactOAuthClientSpec {
            access_token_expires_in: Some("soon".into()),
            ..spec()
        };
        assert!(matches!(
            resolve(&life),
            Err(SpecError::BadDuration {
                field: "accessTokenExpiresIn",
                ..
            })
        ));
        let zero = ExactOAuthClientSpec {
            refresh_window: Some("0s".into()),
            ..spec()
        };
        assert_eq!(
            resolve(&zero),
            Err(SpecError::ZeroDuration {
                field: "refreshWindow"
            })
        );
        let empty = ExactOAuthClientSpec {
            client_id: " ".into(),
            ..spec()
        };
        assert_eq!(resolve(&empty), Err(SpecError::EmptyClientId));
    }

    #[test]
    fn namespace_rules() {
        let s = spec();
        assert!(namespace_allowed(&s, "a", "a"));
        assert!(!namespace_allowed(&s, "a", "b"));
        let listed = ExactOAuthClientSpec {
            allowed_namespaces: vec!["b".into()],
            ..spec()
        };
        assert!(namespace_allowed(&listed, "a", "b"));
        assert!(!namespace_allowed(&listed, "a", "c"));
        let all = ExactOAuthClientSpec {
            allowed_namespaces: vec!["*".into()],
            ..spec()
        };
        assert!(namespace_allowed(&all, "a", "zzz"));
    }
}
