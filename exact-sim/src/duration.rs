//! Human-friendly durations (`600s`, `500ms`, `30d`, `2h`) and timestamp formatting.

use std::time::Duration;

/// Error returned by [`parse_duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The input was empty.
    #[error("empty duration")]
    Empty,
    /// The numeric part was missing or not a non-negative integer.
    #[error("invalid number in duration {0:?}")]
    BadNumber(String),
    /// The unit was not one of `ms`, `s`, `m`, `h`, `d`.
    #[error("unknown unit in duration {0:?} (use ms, s, m, h or d)")]
    BadUnit(String),
    /// The value does not fit in a [`Duration`].
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses durations such as `600s`, `6s`, `500ms`, `5m`, `2h`, `30d`.
///
/// A bare number is read as milliseconds: that is how Exact writes lifetimes (`3599999`),
/// and the operator's parser (`exact_operator::duration`) reads it the same way, so one
/// value means the same lifetime on both sides.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::BadNumber(input.to_string()))?;
    let millis_per_unit: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError::BadUnit(input.to_string())),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(input.to_string()))
}

/// Formats epoch milliseconds as an RFC 3339 UTC timestamp (`2024-05-01T12:00:00Z`).
pub fn format_epoch_ms(epoch_ms: u64) -> String {
    let secs = epoch_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Serde helper: a [`Duration`] as whole milliseconds.
pub mod as_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes a duration as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserializes a duration from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_units() {
        assert_eq!(parse_duration("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("42s"), Ok(Duration::from_secs(42)));
        assert_eq!(parse_duration(" 7s "), Ok(Duration::from_secs(7)));
    }

    /// Pins what a bare number means: integer milliseconds, as Exact writes lifetimes and as
    /// the operator's parser reads them (tests/durations.rs compares both parsers).
    #[test]
    fn duration_bare_number_is_milliseconds() {
        assert_eq!(
            parse_duration("3599999"),
            Ok(Duration::from_millis(3_599_999))
        );
        assert_eq!(parse_duration("42"), Ok(Duration::from_millis(42)));
        assert_eq!(parse_duration(" 600000 "), Ok(Duration::from_secs(600)));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("5y"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("1.5s"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(format_epoch_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_epoch_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_epoch_ms(1_718_454_645_999), "2024-06-15T12:30:45Z");
    }
}
