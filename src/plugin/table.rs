//! Pure formatting used by every `kubectl exact` command: relative times ("in 4m12s",
//! "expired 3s ago"), kubectl-style ages ("5m", "2d3h") and column-aligned tables.
//!
//! Everything here takes `now` as a parameter, so it is deterministic and unit-tested.

use jiff::Timestamp;

/// Shown for a value that is not set, as kubectl's custom columns do.
pub const NONE: &str = "<none>";

/// Whole seconds from `now` to `t`: positive in the future, negative in the past
/// (truncated toward zero).
fn seconds_between(t: Timestamp, now: Timestamp) -> i64 {
    t.duration_since(now).as_secs()
}

/// A duration in whole seconds as at most two units, largest first: `45s`, `4m12s`, `2h`,
/// `1h5m`, `29d23h`. Negative input is treated as its absolute value.
pub fn compact(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let parts = [(d, "d"), (h, "h"), (m, "m"), (sec, "s")];
    let Some(first) = parts.iter().position(|(v, _)| *v > 0) else {
        return "0s".into();
    };
    let mut out = format!("{}{}", parts[first].0, parts[first].1);
    if let Some((v, unit)) = parts.get(first + 1) {
        if *v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

/// `t` relative to `now`: "in 4m12s", "3s ago", or "now" within a second.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = seconds_between(t, now);
    match secs {
        0 => "now".into(),
        s if s > 0 => format!("in {}", compact(s)),
        s => format!("{} ago", compact(s)),
    }
}

/// An expiry relative to `now`: "in 4m12s" while valid, "expired 3s ago" after.
pub fn expiry(t: Timestamp, now: Timestamp) -> String {
    if t > now {
        match seconds_between(t, now) {
            0 => "in <1s".into(),
            s => format!("in {}", compact(s)),
        }
    } else {
        format!("expired {} ago", compact(seconds_between(t, now)))
    }
}

/// A timestamp for people: RFC 3339 in UTC, to the second (`2027-01-15T08:00:00Z`).
pub fn instant(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An optional timestamp as [`instant`] followed by `f` in parentheses
/// (`2027-01-15T08:04:12Z (in 4m12s)`), or [`NONE`].
pub fn instant_and(
    t: Option<Timestamp>,
    now: Timestamp,
    f: fn(Timestamp, Timestamp) -> String,
) -> String {
    t.map_or_else(
        || NONE.into(),
        |t| format!("{} ({})", instant(t), f(t, now)),
    )
}

/// An optional timestamp formatted with `f`, or [`NONE`].
pub fn or_none(
    t: Option<Timestamp>,
    now: Timestamp,
    f: fn(Timestamp, Timestamp) -> String,
) -> String {
    t.map_or_else(|| NONE.to_string(), |t| f(t, now))
}

/// The age of something created at `created`, the way kubectl prints AGE: "45s", "4m12s"
/// (under 10 minutes), "25m", "3h20m" (under 8 hours), "30h", "3d4h" (under 8 days), "20d",
/// "2y45d".
pub fn age(created: Timestamp, now: Timestamp) -> String {
    let s = seconds_between(now, created).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format_pair(m, "m", s % 60, "s"),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format_pair(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format_pair(d, "d", h % 24, "h"),
        _ if d < 730 => format!("{d}d"),
        _ => format_pair(d / 365, "y", d % 365, "d"),
    }
}

fn format_pair(a: i64, ua: &str, b: i64, ub: &str) -> String {
    if b == 0 {
        format!("{a}{ua}")
    } else {
        format!("{a}{ua}{b}{ub}")
    }
}

/// Renders rows under headers in columns separated by three spaces, like `kubectl get`.
/// Trailing spaces are trimmed; every line ends with a newline. Rows shorter than the
/// header get empty cells.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain(std::iter::once(headers[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            line.push_str(cell);
            if i + 1 < widths.len() {
                let pad = w.saturating_sub(cell.chars().count()) + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Label/value lines with the values aligned, each prefixed by `indent` spaces:
/// `  Client:          team-a/app`.
pub fn fields(indent: usize, pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (label, value) in pairs {
        let key = format!("{label}:");
        out.push_str(&format!(
            "{:indent$}{key:<w$}  {value}\n",
            "",
            w = width,
            indent = indent
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid timestamp")
    }

    #[test]
    fn compact_uses_the_two_largest_units() {
        assert_eq!(compact(0), "0s");
        assert_eq!(compact(45), "45s");
        assert_eq!(compact(252), "4m12s");
        assert_eq!(compact(120), "2m");
        assert_eq!(compact(3600 + 5 * 60 + 7), "1h5m");
        assert_eq!(compact(7200), "2h");
        assert_eq!(compact(29 * 86_400 + 23 * 3600 + 59), "29d23h");
        assert_eq!(compact(-3), "3s");
    }

    #[test]
    fn relative_and_expiry_say_which_side_of_now() {
        let now = at(0);
        assert_eq!(relative(at(252), now), "in 4m12s");
        assert_eq!(relative(at(-3), now), "3s ago");
        assert_eq!(relative(now, now), "now");
        assert_eq!(expiry(at(252), now), "in 4m12s");
        assert_eq!(expiry(at(-3), now), "expired 3s ago");
        assert_eq!(expiry(now, now), "expired 0s ago");
        let half = now
            .checked_add(jiff::SignedDuration::from_millis(500))
            .expect("in range");
        assert_eq!(expiry(half, now), "in <1s");
    }

    #[test]
    fn sub_second_parts_truncate_toward_zero() {
        let now = at(0);
        let t = at(10)
            .checked_add(jiff::SignedDuration::from_millis(900))
            .expect("in range");
        assert_eq!(relative(t, now), "in 10s");
        let t = at(-10)
            .checked_sub(jiff::SignedDuration::from_millis(900))
            .expect("in range");
        assert_eq!(relative(t, now), "10s ago");
        let now = at(0)
            .checked_add(jiff::SignedDuration::from_millis(700))
            .expect("in range");
        assert_eq!(relative(at(5), now), "in 4s");
    }

    #[test]
    fn missing_values_show_none() {
        assert_eq!(or_none(None, at(0), expiry), "<none>");
        assert_eq!(or_none(Some(at(60)), at(0), expiry), "in 1m");
        assert_eq!(instant_and(None, at(0), relative), "<none>");
    }

    #[test]
    fn instants_are_shown_to_the_second() {
        let t = at(252)
            .checked_add(jiff::SignedDuration::from_nanos(947_801_827))
            .expect("in range");
        assert_eq!(instant(t), "2027-01-15T08:04:12Z");
        assert_eq!(
            instant_and(Some(t), at(0), expiry),
            "2027-01-15T08:04:12Z (in 4m12s)"
        );
    }

    #[test]
    fn age_follows_kubectl() {
        let now = at(0);
        assert_eq!(age(at(-45), now), "45s");
        assert_eq!(age(at(-252), now), "4m12s");
        assert_eq!(age(at(-25 * 60), now), "25m");
        assert_eq!(age(at(-(3 * 3600 + 20 * 60)), now), "3h20m");
        assert_eq!(age(at(-30 * 3600), now), "30h");
        assert_eq!(age(at(-(3 * 86_400 + 4 * 3600)), now), "3d4h");
        assert_eq!(age(at(-20 * 86_400), now), "20d");
        assert_eq!(age(at(-(800 * 86_400)), now), "2y70d");
        assert_eq!(
            age(at(10), now),
            "0s",
            "clock skew never shows a negative age"
        );
    }

    #[test]
    fn table_columns_align_and_lines_are_trimmed() {
        let rows = vec![
            vec![
                "acme".to_string(),
                "True".to_string(),
                "TokenPublished".into(),
            ],
            vec![
                "globex-long".to_string(),
                "False".to_string(),
                String::new(),
            ],
        ];
        let out = render(&["NAME", "READY", "REASON"], &rows);
        let expected = "\
NAME          READY   REASON
acme          True    TokenPublished
globex-long   False
";
        assert_eq!(out, expected);
    }

    #[test]
    fn table_with_only_headers_and_short_rows() {
        assert_eq!(render(&["A", "B"], &[]), "A   B\n");
        let out = render(&["A", "B"], &[vec!["xyz".into()]]);
        assert_eq!(out, "A     B\nxyz\n");
    }

    #[test]
    fn fields_align_values() {
        let out = fields(
            2,
            &[("Client", "a/b".into()), ("Refresh before", "1s".into())],
        );
        assert_eq!(out, "  Client:          a/b\n  Refresh before:  1s\n");
    }
}
