//! Exact's daily token-call cap (about 200 per user per app in a rolling 24 h), pure.
//!
//! Each connection counts its token calls in hourly buckets kept in its state (written on
//! every token call anyway, so this costs no extra write and survives a restart). A user's
//! use is the sum over the connections holding that user's consent on one client. The
//! regular refreshes need `ceil(24 h / access-token lifetime)` calls a day per connection
//! (144 at 600 s); retries after failures may only use what the cap leaves beyond that.
//! When they have used it, a failing connection tries again only at the regular cadence
//! (once per token lifetime), the rate its regular refreshes would have had.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Exact's cap when the client sets none.
pub const DEFAULT_CALLS_PER_DAY: u32 = 200;
/// Buckets kept: the hour now plus 24 before it, so a bucket is kept as long as any of its
/// calls may be inside the last 24 h (the count errs on the high side by up to an hour).
const KEPT_HOURS: i64 = 25;

/// Token calls of one connection in one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Start of the hour, in seconds since the epoch / 3600.
    pub hour: i64,
    /// Every token call.
    pub calls: u32,
    /// Of those, the retries (calls after a failed one).
    pub retries: u32,
}

/// Calls in the rolling 24 h.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every token call.
    pub calls: u32,
    /// Retries.
    pub retries: u32,
}

fn hour_of(t: Timestamp) -> i64 {
    t.as_second().div_euclid(3600)
}

/// Buckets after one more call at `at` (`retry`: the call follows a failed one); buckets
/// too old to matter are dropped.
pub fn record(buckets: &[Bucket], at: Timestamp, retry: bool) -> Vec<Bucket> {
    let hour = hour_of(at);
    let mut out: Vec<Bucket> = buckets
        .iter()
        .copied()
        .filter(|b| b.hour > hour - KEPT_HOURS)
        .collect();
    match out.iter_mut().find(|b| b.hour == hour) {
        Some(b) => {
            b.calls = b.calls.saturating_add(1);
            b.retries = b.retries.saturating_add(u32::from(retry));
        }
        None => out.push(Bucket {
            hour,
            calls: 1,
            retries: u32::from(retry),
        }),
    }
    out.sort_by_key(|b| b.hour);
    out
}

/// Calls in the last 24 h at `now` (whole hours: up to an hour too many, never too few).
pub fn counts(buckets: &[Bucket], now: Timestamp) -> Counts {
    let hour = hour_of(now);
    buckets
        .iter()
        .filter(|b| b.hour > hour - KEPT_HOURS && b.hour <= hour)
        .fold(Counts::default(), |acc, b| Counts {
            calls: acc.calls.saturating_add(b.calls),
            retries: acc.retries.saturating_add(b.retries),
        })
}

/// Regular refreshes one connection makes in 24 h with tokens of `lifetime`.
pub fn regular_per_day(lifetime: Duration) -> u32 {
    let secs = lifetime.as_secs().max(1);
    u32::try_from(86_400_u64.div_ceil(secs)).unwrap_or(u32::MAX)
}

/// The facts the retry gate weighs for one Exact user on one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserBudget {
    /// The cap (0: no cap).
    pub cap: u32,
    /// All the user's token calls in the last 24 h.
    pub calls: u32,
    /// The user's retries in the last 24 h.
    pub retries: u32,
    /// Regular refreshes the user's connections need per 24 h.
    pub reserve: u32,
}

impl UserBudget {
    /// Retries the cap allows beyond the regular refreshes.
    pub fn retry_allowance(&self) -> u32 {
        self.cap.saturating_sub(self.reserve)
    }

    /// Whether one more retry fits: retries stay within the allowance and the cap is never
    /// reached (the last call below it is kept for a regular refresh).
    pub fn retry_fits(&self) -> bool {
        self.cap == 0
            || (self.retries < self.retry_allowance() && self.calls.saturating_add(1) < self.cap)
    }

    /// Human-readable account for status (no secrets).
    pub fn describe(&self) -> String {
        format!(
            "the Exact user's token calls in 24 h: {} of Exact's cap {} ({} retries; {} reserved for regular refreshes)",
            self.calls, self.cap, self.retries, self.reserve
        )
    }
}

/// The user's budget from this connection's counts and the other connections' call counts
/// (their retries are estimated as what they used beyond their regular refreshes). When
/// one connection's regular refreshes alone exceed the cap, the lifetimes are compressed
/// (a simulator, not Exact's 600 s) and the cap says nothing about them: no cap then.
pub fn user_budget(cap: u32, own: Counts, others: &[u32], lifetime: Duration) -> UserBudget {
    let regular = regular_per_day(lifetime);
    let cap = if regular >= cap { 0 } else { cap };
    let connections = u32::try_from(others.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    UserBudget {
        cap,
        calls: others.iter().fold(own.calls, |a, c| a.saturating_add(*c)),
        retries: others.iter().fold(own.retries, |a, c| {
            a.saturating_add(c.saturating_sub(regular))
        }),
        reserve: regular.saturating_mul(connections),
    }
}

/// When a retry that does not fit may be made instead: one token lifetime after the last
/// failed call (the regular cadence), never before `due`.
pub fn held_until(last_failure: Timestamp, lifetime: Duration, due: Timestamp) -> Timestamp {
    let step = SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::MAX);
    last_failure
        .saturating_add(step)
        .unwrap_or(last_failure)
        .max(due)
}

/// Buckets as state text: `hour:calls:retries,...`.
pub fn to_text(buckets: &[Bucket]) -> String {
    buckets
        .iter()
        .map(|b| format!("{}:{}:{}", b.hour, b.calls, b.retries))
        .collect::<Vec<_>>()
        .join(",")
}

/// Buckets from state text; unreadable entries are skipped.
pub fn from_text(text: &str) -> Vec<Bucket> {
    text.split(',')
        .filter_map(|e| {
            let mut p = e.split(':');
            let b = Bucket {
                hour: p.next()?.parse().ok()?,
                calls: p.next()?.parse().ok()?,
                retries: p.next()?.parse().ok()?,
            };
            p.next().is_none().then_some(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(hours: i64, secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 / 3600 * 3600 + hours * 3600 + secs).expect("valid")
    }

    #[test]
    fn calls_are_counted_per_hour_for_a_rolling_day() {
        let mut b = Vec::new();
        b = record(&b, t(0, 10), false);
        b = record(&b, t(0, 20), true);
        b = record(&b, t(3, 0), false);
        assert_eq!(
            counts(&b, t(3, 1)),
            Counts {
                calls: 3,
                retries: 1
            }
        );
        // Hour 0 still counts 24 h later (erring high), not 25 h later.
        assert_eq!(counts(&b, t(24, 3599)).calls, 3);
        assert_eq!(counts(&b, t(25, 0)).calls, 1);
        // Old buckets are dropped by the next record.
        let later = record(&b, t(26, 0), false);
        assert_eq!(later.len(), 2);
        assert_eq!(from_text(&to_text(&later)), later);
        assert_eq!(
            from_text("x,1:2,3:4:5:6,7:8:9"),
            vec![Bucket {
                hour: 7,
                calls: 8,
                retries: 9
            }]
        );
    }

    #[test]
    fn the_reserve_follows_the_token_lifetime() {
        assert_eq!(regular_per_day(Duration::from_secs(600)), 144);
        assert_eq!(regular_per_day(Duration::from_secs(3600)), 24);
        assert_eq!(regular_per_day(Duration::from_secs(7)), 12_343);
        let b = user_budget(
            200,
            Counts {
                calls: 150,
                retries: 10,
            },
            &[],
            Duration::from_secs(600),
        );
        assert_eq!((b.reserve, b.retry_allowance()), (144, 56));
        assert!(b.retry_fits());
        let spent = UserBudget { retries: 56, ..b };
        assert!(
            !spent.retry_fits(),
            "56 retries at 600 s tokens: the rest is for refreshes"
        );
        let near_cap = UserBudget {
            calls: 199,
            retries: 0,
            ..b
        };
        assert!(!near_cap.retry_fits(), "never the last call below the cap");
        assert!(UserBudget { cap: 0, ..spent }.retry_fits(), "no cap");
        let compressed = user_budget(
            200,
            Counts {
                calls: 900,
                retries: 300,
            },
            &[],
            Duration::from_secs(6),
        );
        assert_eq!(
            compressed.cap, 0,
            "6 s tokens: 14400 refreshes a day, the cap cannot be Exact's"
        );
        assert!(compressed.retry_fits());
    }

    #[test]
    fn other_connections_of_the_user_count_and_reserve() {
        let lifetime = Duration::from_secs(600);
        // A peer in steady state (144 calls) uses no retries; one with 160 used 16.
        let b = user_budget(
            400,
            Counts {
                calls: 5,
                retries: 5,
            },
            &[144, 160],
            lifetime,
        );
        assert_eq!(b.calls, 309);
        assert_eq!(b.retries, 21);
        assert_eq!(b.reserve, 432);
        assert!(
            !b.retry_fits(),
            "three connections' refreshes alone exceed 400"
        );
    }

    #[test]
    fn a_held_retry_waits_for_the_regular_cadence() {
        let last = t(0, 0);
        let lifetime = Duration::from_secs(600);
        assert_eq!(held_until(last, lifetime, t(0, 5)), t(0, 600));
        assert_eq!(held_until(last, lifetime, t(0, 900)), t(0, 900));
    }
}
