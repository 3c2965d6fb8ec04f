//! Talking to Exact's token endpoint and classifying every answer it gives. The classifier
//! is pure (status, headers, body in; outcome out) and unit-tested against Exact's real
//! bodies; the HTTP part is a thin wrapper.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// Upper bound for one token call. A claim on the state Secret outlives it by far.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Token bodies are tiny; anything larger is not a token response.
const MAX_BODY: usize = 64 * 1024;
/// Plausible access-token lifetimes; outside this range `expires_in` is not trusted.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);

/// What to send.
pub enum Grant<'a> {
    /// Rotate a refresh token.
    RefreshToken(&'a SecretString),
    /// Exchange an authorization code (already percent-decoded exactly once).
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
    },
}

/// How the `expires_in` of a successful answer looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpiresIn {
    /// A usable lifetime (Exact sends the string "600").
    Given(Duration),
    /// Absent: the client's configured lifetime applies.
    Missing,
    /// Present but unusable ("0", negative, huge, not a number): the configured lifetime applies
    /// and the connection reports it. Holds the offending value (lifetimes are not secret).
    Unusable(String),
}

/// A successful token answer.
pub struct TokenGrant {
    /// The new access token.
    pub access_token: SecretString,
    /// The rotated refresh token (Exact always sends one).
    pub refresh_token: Option<SecretString>,
    /// Lifetime of the access token.
    pub expires_in: ExpiresIn,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Every way a token call can end.
#[derive(Debug)]
pub enum TokenOutcome {
    /// New tokens.
    Granted(TokenGrant),
    /// 400 access_denied "access_token not expired": nothing consumed, try later.
    TooEarly,
    /// 401 unauthorized_client "Old refresh token used.": the chain is dead unless a newer token exists.
    OldRefreshTokenUsed,
    /// The refresh token expired unused.
    RefreshTokenExpired,
    /// invalid_grant: unknown refresh token, or a code that is used, expired or mismatched.
    InvalidGrant(String),
    /// invalid_client: wrong client id or secret.
    InvalidClient(String),
    /// The app is blocked for too many errors.
    Blocked(Option<Duration>),
    /// 5xx, 429, timeouts, lost connections, empty or non-JSON bodies: retry with backoff.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    fault: Option<serde_json::Value>,
}

fn parse_expires_in(v: Option<&serde_json::Value>) -> ExpiresIn {
    let text = match v {
        None | Some(serde_json::Value::Null) => return ExpiresIn::Missing,
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        Some(other) => other.to_string(),
    };
    match text.parse::<u64>() {
        Ok(secs) if secs > 0 && Duration::from_secs(secs) <= MAX_EXPIRES_IN => {
            ExpiresIn::Given(Duration::from_secs(secs))
        }
        _ => ExpiresIn::Unusable(text.chars().take(40).collect()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Classifies a token-endpoint answer. Never copies token material into the outcome's text.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> TokenOutcome {
    if status == 200 {
        let parsed: Result<SuccessBody, _> = serde_json::from_slice(body);
        return match parsed {
            Ok(SuccessBody {
                access_token: Some(at),
                refresh_token,
                expires_in,
            }) if !at.is_empty() => TokenOutcome::Granted(TokenGrant {
                access_token: SecretString::from(at),
                refresh_token: refresh_token
                    .filter(|r| !r.is_empty())
                    .map(SecretString::from),
                expires_in: parse_expires_in(expires_in.as_ref()),
            }),
            Ok(_) => TokenOutcome::Transient {
                reason: "200 answer without an access_token".into(),
                retry_after,
            },
            Err(_) if body.is_empty() => TokenOutcome::Transient {
                reason: "200 answer with an empty body".into(),
                retry_after,
            },
            Err(_) => TokenOutcome::Transient {
                reason: "200 answer that is not token JSON".into(),
                retry_after,
            },
        };
    }
    let err: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let code = err
        .as_ref()
        .and_then(|e| e.error.clone())
        .unwrap_or_default();
    let desc = err
        .as_ref()
        .and_then(|e| e.error_description.clone())
        .unwrap_or_default();
    let lower = desc.to_ascii_lowercase();
    match (status, code.as_str()) {
        (400, "access_denied") if lower.contains("not expired") => TokenOutcome::TooEarly,
        (400 | 401, "unauthorized_client") if lower.contains("old refresh token") => {
            TokenOutcome::OldRefreshTokenUsed
        }
        (400 | 401, _) if lower.contains("refresh token expired") => {
            TokenOutcome::RefreshTokenExpired
        }
        (400 | 401, "invalid_grant") => TokenOutcome::InvalidGrant(short(&desc)),
        (400 | 401, "invalid_client") => TokenOutcome::InvalidClient(short(&desc)),
        (400 | 401, "unauthorized_client") => TokenOutcome::InvalidClient(short(&desc)),
        (403, _) => TokenOutcome::Blocked(retry_after),
        (429, _) => TokenOutcome::Transient {
            reason: "429 rate limited".into(),
            retry_after,
        },
        (s, _) if s >= 500 => {
            let what = if err.as_ref().is_some_and(|e| e.fault.is_some()) {
                "fault"
            } else if body.is_empty() {
                "empty body"
            } else {
                "error"
            };
            TokenOutcome::Transient {
                reason: format!("{s} {what} from token endpoint"),
                retry_after,
            }
        }
        (s, c) => TokenOutcome::Transient {
            reason: format!(
                "unexpected {s} {} from token endpoint",
                if c.is_empty() { "answer" } else { c }
            ),
            retry_after,
        },
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// One Exact app's token endpoint.
pub struct TokenEndpoint<'a> {
    /// HTTP client (trust roots already configured).
    pub http: &'a reqwest::Client,
    /// The token URL.
    pub url: &'a Url,
    /// The app's client id.
    pub client_id: &'a str,
    /// The app's client secret.
    pub client_secret: &'a SecretString,
}

impl crate::chain::TokenCaller for TokenEndpoint<'_> {
    async fn call(&self, grant: Grant<'_>) -> TokenOutcome {
        TokenEndpoint::call(self, grant).await
    }
}

impl TokenEndpoint<'_> {
    /// Sends one token request; client credentials travel in the form body, as Exact wants.
    pub async fn call(&self, grant: Grant<'_>) -> TokenOutcome {
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        match &grant {
            Grant::RefreshToken(rt) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", rt.expose_secret()));
            }
            Grant::AuthorizationCode { code, redirect_uri } => {
                form.push(("grant_type", "authorization_code"));
                form.push(("code", code.expose_secret()));
                form.push(("redirect_uri", redirect_uri));
            }
        }
        let resp = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_failure(&e),
        };
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        match read_limited(resp).await {
            Ok(body) => classify(status, ra, &body),
            Err(reason) => TokenOutcome::Transient {
                reason,
                retry_after: ra,
            },
        }
    }
}

fn transport_failure(e: &reqwest::Error) -> TokenOutcome {
    // reqwest errors carry the URL, never the form body; still, say only the kind.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "connection lost before an answer"
    };
    TokenOutcome::Transient {
        reason: format!("token endpoint {kind}"),
        retry_after: None,
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err("oversized answer from token endpoint".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => {
                return Err("token endpoint timed out while answering".into())
            }
            Err(_) => return Err("connection lost while reading the answer".into()),
        }
    }
}

/// Who a token belongs to, from `/api/v1/current/Me`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeInfo {
    /// `UserID` (a GUID): the Exact user whose consent the chain is.
    pub user_id: Option<String>,
    /// `UserName`.
    pub user_name: Option<String>,
    /// `CurrentDivision`: the company the user had open.
    pub current_division: i64,
}

/// Reads `/api/v1/current/Me` with an access token (a REST call, not a token call).
pub async fn who_am_i(
    http: &reqwest::Client,
    api_base_url: &str,
    access_token: &SecretString,
) -> Result<MeInfo, String> {
    let url = format!("{api_base_url}/v1/current/Me?$select=UserID,UserName,CurrentDivision");
    let resp = http
        .get(url)
        .bearer_auth(access_token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "Me request timed out".to_string()
            } else {
                "Me request failed".to_string()
            }
        })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("Me request answered {}", status.as_u16()));
    }
    let body = read_limited(resp).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "Me answer is not JSON".to_string())?;
    me_info(&v)
}

/// Parses a Me answer (OData v2 `d.results[0]` or `d`).
fn me_info(v: &serde_json::Value) -> Result<MeInfo, String> {
    let me = v
        .pointer("/d/results/0")
        .or_else(|| v.pointer("/d"))
        .ok_or_else(|| "Me answer has no d.results".to_string())?;
    let text = |k: &str| {
        me.get(k)
            .and_then(|x| x.as_str())
            .map(|s| s.chars().take(200).collect::<String>())
            .filter(|s| !s.is_empty())
    };
    Ok(MeInfo {
        user_id: text("UserID"),
        user_name: text("UserName"),
        current_division: me
            .get("CurrentDivision")
            .and_then(|d| d.as_i64())
            .ok_or_else(|| "Me answer has no CurrentDivision".to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_answers_in_both_odata_shapes() {
        let v = serde_json::json!({"d": {"results": [{"UserID": "u-1", "UserName": "jan", "CurrentDivision": 42}]}});
        assert_eq!(
            me_info(&v),
            Ok(MeInfo {
                user_id: Some("u-1".into()),
                user_name: Some("jan".into()),
                current_division: 42
            })
        );
        let bare = serde_json::json!({"d": {"CurrentDivision": 7}});
        assert_eq!(
            me_info(&bare).map(|m| (m.user_id, m.current_division)),
            Ok((None, 7))
        );
        assert!(me_info(&serde_json::json!({"d": {"results": [{}]}})).is_err());
        assert!(me_info(&serde_json::json!([])).is_err());
    }

    fn granted(o: TokenOutcome) -> TokenGrant {
        match o {
            TokenOutcome::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn exact_success_body_with_string_expires_in() {
        let body = br#"{"access_token":"AAA","token_type":"bearer","expires_in":"600","refresh_token":"RRR"}"#;
        let g = granted(classify(200, None, body));
        assert_eq!(g.access_token.expose_secret(), "AAA");
        assert_eq!(
            g.refresh_token
                .as_ref()
                .map(|r| r.expose_secret().to_string()),
            Some("RRR".into())
        );
        assert_eq!(g.expires_in, ExpiresIn::Given(Duration::from_secs(600)));
        let numeric = granted(classify(
            200,
            None,
            br#"{"access_token":"A","expires_in":600}"#,
        ));
        assert_eq!(
            numeric.expires_in,
            ExpiresIn::Given(Duration::from_secs(600))
        );
        assert!(numeric.refresh_token.is_none());
    }

    #[test]
    fn unusable_expires_in_is_reported_not_trusted() {
        for (raw, shown) in [
            ("\"0\"", "0"),
            ("\"-5\"", "-5"),
            ("\"99999999\"", "99999999"),
            ("\"soon\"", "soon"),
        ] {
            let body = format!(r#"{{"access_token":"A","refresh_token":"R","expires_in":{raw}}}"#);
            assert_eq!(
                granted(classify(200, None, body.as_bytes())).expires_in,
                ExpiresIn::Unusable(shown.into())
            );
        }
        assert_eq!(
            granted(classify(200, None, br#"{"access_token":"A"}"#)).expires_in,
            ExpiresIn::Missing
        );
    }

    #[test]
    fn exact_refusals() {
        let too_early = br#"{"error":"access_denied","error_description":"Rate limit exceeded: access_token not expired"}"#;
        assert!(matches!(
            classify(400, None, too_early),
            TokenOutcome::TooEarly
        ));
        let old =
            br#"{"error":"unauthorized_client","error_description":"Old refresh token used."}"#;
        assert!(matches!(
            classify(401, None, old),
            TokenOutcome::OldRefreshTokenUsed
        ));
        assert!(matches!(
            classify(400, None, old),
            TokenOutcome::OldRefreshTokenUsed
        ));
        let expired = br#"{"error":"invalid_request","error_description":"The refresh token expired at 2026-01-01"}"#;
        assert!(matches!(
            classify(400, None, expired),
            TokenOutcome::RefreshTokenExpired
        ));
        let client =
            br#"{"error":"invalid_client","error_description":"Invalid client credentials"}"#;
        assert!(matches!(
            classify(401, None, client),
            TokenOutcome::InvalidClient(_)
        ));
        let grant = br#"{"error":"invalid_grant","error_description":"Invalid refresh token."}"#;
        assert!(matches!(
            classify(400, None, grant),
            TokenOutcome::InvalidGrant(_)
        ));
        assert!(matches!(
            classify(403, Some(Duration::from_secs(60)), b""),
            TokenOutcome::Blocked(Some(_))
        ));
    }

    #[test]
    fn faults_and_garbage_are_transient() {
        let fault = br#"{"fault":{"faultstring":"Failed to execute the ExtractVariables: ExtractAccessToken"}}"#;
        match classify(500, None, fault) {
            TokenOutcome::Transient { reason, .. } => {
                assert_eq!(reason, "500 fault from token endpoint")
            }
            other => panic!("{other:?}"),
        }
        for (status, body) in [
            (200u16, &b""[..]),
            (200, b"<html>oops</html>"),
            (200, b"{\"access_tok"),
            (502, b""),
            (429, b""),
        ] {
            assert!(
                matches!(classify(status, None, body), TokenOutcome::Transient { .. }),
                "{status}"
            );
        }
        match classify(429, Some(Duration::from_secs(9)), b"") {
            TokenOutcome::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(9)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let g = granted(classify(
            200,
            None,
            br#"{"access_token":"SECRET-A","refresh_token":"SECRET-R","expires_in":"600"}"#,
        ));
        let shown = format!("{g:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
