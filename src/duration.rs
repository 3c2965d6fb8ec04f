//! Lifetimes as users write them: Kubernetes-style durations ("600s", "720h", "1h30m",
//! "500ms") or plain integer milliseconds, the way Exact and Alteryx show app settings
//! ("3599999").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;
use thiserror::Error;

/// A lifetime string that is neither a duration nor integer milliseconds.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "{value:?} is not a duration: use e.g. \"600s\", \"720h\", \"1h30m\" or integer milliseconds"
)]
pub struct DurationError {
    /// The offending input (lifetimes are not secret).
    pub value: String,
}

/// Parses "600s", "10m", "720h", "1h30m", "250ms", "2d" or a plain integer of milliseconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let err = || DurationError {
        value: input.to_string(),
    };
    if s.is_empty() {
        return Err(err());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if digits == 0 {
            return Err(err());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            "d" => number * 86400.0,
            _ => return Err(err()),
        };
        if !secs.is_finite() || secs > 1e10 {
            return Err(err());
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Parses an optional field, falling back to `default` when absent.
pub fn parse_or(input: Option<&str>, default: Duration) -> Result<Duration, DurationError> {
    input.map_or(Ok(default), parse_duration)
}

/// A lifetime field of a spec as written in YAML: a bare integer of milliseconds
/// (`accessTokenExpiresIn: 3599999`, the way Exact and the seed write it) or a string
/// (`"600s"`, `"3599999"`). The CRD schema says `x-kubernetes-int-or-string`, so the API
/// server accepts both; [`parse_duration`] decides what the value means.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Lifetime {
    /// A bare YAML/JSON integer: milliseconds. Signed so that a negative number still
    /// deserializes and is then reported as invalid instead of breaking the watch.
    Millis(i64),
    /// A duration string such as "600s" or "720h", or digits meaning milliseconds.
    Text(String),
}

impl Lifetime {
    /// The value in the string form [`parse_duration`] reads.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Lifetime::Millis(ms) => Cow::Owned(ms.to_string()),
            Lifetime::Text(s) => Cow::Borrowed(s),
        }
    }
}

impl From<&str> for Lifetime {
    fn from(s: &str) -> Self {
        Lifetime::Text(s.to_string())
    }
}

impl JsonSchema for Lifetime {
    fn schema_name() -> Cow<'static, str> {
        "Lifetime".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_durations() {
        assert_eq!(parse_duration("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    /// Pins what a bare number means: integer milliseconds, as Exact writes lifetimes and as
    /// exact-sim's parser reads them (tests/durations.rs compares both parsers).
    #[test]
    fn duration_bare_number_is_milliseconds() {
        assert_eq!(
            parse_duration("3599999"),
            Ok(Duration::from_millis(3_599_999))
        );
        assert_eq!(parse_duration(" 600000 "), Ok(Duration::from_secs(600)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "10x",
            "ten minutes",
            "-5s",
            "1e400s",
            "99999999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_or(None, Duration::from_secs(7)),
            Ok(Duration::from_secs(7))
        );
    }

    #[test]
    fn lifetime_reads_a_bare_integer_or_a_string() {
        let int: Lifetime = serde_json::from_str("3599999").expect("integer");
        assert_eq!(int, Lifetime::Millis(3_599_999));
        assert_eq!(
            parse_duration(&int.to_text()),
            Ok(Duration::from_millis(3_599_999))
        );
        let text: Lifetime = serde_json::from_str("\"600s\"").expect("string");
        assert_eq!(
            parse_duration(&text.to_text()),
            Ok(Duration::from_secs(600))
        );
        let negative: Lifetime = serde_json::from_str("-5").expect("still deserializes");
        assert!(parse_duration(&negative.to_text()).is_err());
        assert_eq!(serde_json::to_string(&int).expect("ser"), "3599999");
    }
}
