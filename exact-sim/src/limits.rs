//! Per-client error budget (blocking) and per-division REST rate limits.

use crate::clock::SimTime;
use std::collections::HashMap;
use std::time::Duration;

/// Length of the error-budget window.
pub const ERROR_WINDOW: Duration = Duration::from_secs(3600);
const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Copy)]
struct ErrWindow {
    start: SimTime,
    count: u32,
}

/// Counts 4xx token answers per client id in hourly windows.
#[derive(Debug, Default)]
pub struct ErrorBudget {
    windows: HashMap<String, ErrWindow>,
}

impl ErrorBudget {
    fn current(&mut self, client: &str, now: SimTime) -> Option<&mut ErrWindow> {
        let expired = self
            .windows
            .get(client)
            .is_some_and(|w| now >= w.start + ERROR_WINDOW);
        if expired {
            self.windows.remove(client);
        }
        self.windows.get_mut(client)
    }

    /// Whether `client` has had more than `limit` errors in its current window.
    pub fn is_blocked(&mut self, client: &str, now: SimTime, limit: u32) -> bool {
        self.current(client, now).is_some_and(|w| w.count > limit)
    }

    /// Records one error answer for `client`.
    pub fn record_error(&mut self, client: &str, now: SimTime) {
        match self.current(client, now) {
            Some(w) => w.count = w.count.saturating_add(1),
            None => {
                self.windows.insert(
                    client.to_string(),
                    ErrWindow {
                        start: now,
                        count: 1,
                    },
                );
            }
        }
    }
}

/// Values for the `X-RateLimit-*` headers, plus whether the call is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// The call is within both limits (and was counted).
    pub allowed: bool,
    /// Daily limit.
    pub day_limit: u32,
    /// Calls left today.
    pub day_remaining: u32,
    /// Epoch ms when the daily window resets.
    pub day_reset_ms: u64,
    /// Minutely limit.
    pub minute_limit: u32,
    /// Calls left this minute.
    pub minute_remaining: u32,
    /// Epoch ms when the minutely window resets.
    pub minute_reset_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
    minute: u64,
    minute_count: u32,
    day: u64,
    day_count: u32,
}

/// Fixed-window REST rate limits keyed by (client id, division).
#[derive(Debug, Default)]
pub struct RateLimits {
    windows: HashMap<(String, i64), RateWindow>,
}

impl RateLimits {
    /// Checks and, when allowed, counts one call at wall-clock time `epoch_ms`.
    pub fn check(
        &mut self,
        client: &str,
        division: i64,
        epoch_ms: u64,
        per_minute: u32,
        per_day: u32,
    ) -> RateDecision {
        let minute = epoch_ms / MINUTE_MS;
        let day = epoch_ms / DAY_MS;
        let w = self
            .windows
            .entry((client.to_string(), division))
            .or_default();
        if w.minute != minute {
            w.minute = minute;
            w.minute_count = 0;
        }
        if w.day != day {
            w.day = day;
            w.day_count = 0;
        }
        let allowed = w.day_count < per_day && w.minute_count < per_minute;
        if allowed {
            w.day_count += 1;
            w.minute_count += 1;
        }
        RateDecision {
            allowed,
            day_limit: per_day,
            day_remaining: per_day.saturating_sub(w.day_count),
            day_reset_ms: (day + 1) * DAY_MS,
            minute_limit: per_minute,
            minute_remaining: per_minute.saturating_sub(w.minute_count),
            minute_reset_ms: (minute + 1) * MINUTE_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_more_than_limit_errors_and_unblocks_next_window() {
        let mut b = ErrorBudget::default();
        let t0 = Duration::from_secs(10);
        for _ in 0..3 {
            b.record_error("c", t0);
        }
        assert!(!b.is_blocked("c", t0, 3));
        b.record_error("c", t0);
        assert!(b.is_blocked("c", t0, 3));
        assert!(!b.is_blocked("other", t0, 3));
        assert!(!b.is_blocked("c", t0 + ERROR_WINDOW, 3));
    }

    #[test]
    fn rate_limits_count_and_reset() {
        let mut r = RateLimits::default();
        let t = 5 * MINUTE_MS + 1;
        let d1 = r.check("c", 1, t, 2, 100);
        assert!(d1.allowed);
        assert_eq!(d1.minute_remaining, 1);
        assert_eq!(d1.minute_reset_ms, 6 * MINUTE_MS);
        assert_eq!(d1.day_reset_ms, DAY_MS);
        assert!(r.check("c", 1, t, 2, 100).allowed);
        let d3 = r.check("c", 1, t, 2, 100);
        assert!(!d3.allowed);
        assert_eq!(d3.minute_remaining, 0);
        assert_eq!(d3.day_remaining, 98);
        assert!(r.check("c", 2, t, 2, 100).allowed, "other division");
        assert!(
            r.check("c", 1, t + MINUTE_MS, 2, 100).allowed,
            "next minute"
        );
    }
}
