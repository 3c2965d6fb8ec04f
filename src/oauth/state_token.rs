//! The OAuth `state` parameter: signed (HMAC-SHA256), bound to one connection's UID,
//! expiring, and carrying a nonce so it can be used once. Pure: no I/O.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// What a state vouches for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StateClaims {
    /// Namespace of the connection.
    pub ns: String,
    /// Name of the connection.
    pub name: String,
    /// UID of the connection when the flow started (a recreated connection is foreign).
    pub uid: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Random single-use nonce.
    pub nonce: String,
}

/// Why a state is refused. Shown to the person in the browser and in an Event.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// No state parameter.
    #[error("the callback carries no state parameter")]
    Missing,
    /// Not produced by this operator, or altered.
    #[error("the state parameter is invalid or was tampered with")]
    Tampered,
    /// Older than its lifetime.
    #[error("the authorization link expired; start again")]
    Expired,
}

/// Signs claims into a state string `<payload>.<signature>`.
pub fn sign(key: &[u8], claims: &StateClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &payload));
    format!("{payload}.{sig}")
}

fn mac(key: &[u8], payload: &str) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Verifies signature and expiry (`now` in unix seconds).
pub fn verify(key: &[u8], state: &str, now: i64) -> Result<StateClaims, StateError> {
    if state.is_empty() {
        return Err(StateError::Missing);
    }
    let (payload, sig) = state.split_once('.').ok_or(StateError::Tampered)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| StateError::Tampered)?;
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| StateError::Tampered)?;
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| StateError::Tampered)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Tampered)?;
    let claims: StateClaims = serde_json::from_slice(&bytes).map_err(|_| StateError::Tampered)?;
    if claims.exp <= now {
        return Err(StateError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> StateClaims {
        StateClaims {
            ns: "a".into(),
            name: "b".into(),
            uid: "u".into(),
            exp: 1000,
            nonce: "n".into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sign(b"key", &claims());
        assert_eq!(verify(b"key", &s, 999), Ok(claims()));
    }

    #[test]
    fn rejects_tampering_other_keys_expiry_and_garbage() {
        let s = sign(b"key", &claims());
        assert_eq!(verify(b"other", &s, 0), Err(StateError::Tampered));
        let forged = StateClaims {
            name: "victim".into(),
            ..claims()
        };
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap_or_default());
        let (_, sig) = s.split_once('.').unwrap_or_default();
        assert_eq!(
            verify(b"key", &format!("{forged_payload}.{sig}"), 0),
            Err(StateError::Tampered)
        );
        assert_eq!(verify(b"key", &s, 1000), Err(StateError::Expired));
        assert_eq!(verify(b"key", "", 0), Err(StateError::Missing));
        assert_eq!(verify(b"key", "no-dot", 0), Err(StateError::Tampered));
        assert_eq!(verify(b"key", "!!.??", 0), Err(StateError::Tampered));
    }
}
