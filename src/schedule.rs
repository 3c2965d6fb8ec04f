//! When to call the token endpoint. Every decision here is a pure function of the
//! connection's recorded state and the clock, so it is unit-tested without a cluster.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// The timing rules of one connection, derived from its client and its own spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Refresh when this much of the access token is left (the connection's `refreshBefore`).
    pub refresh_before: Duration,
    /// Exact refuses refreshes while more than this remains (30 s).
    pub refresh_window: Duration,
    /// Lifetime of an access token (600 s).
    pub access_token_lifetime: Duration,
    /// Lifetime of an unused refresh token (~30 days).
    pub refresh_token_lifetime: Duration,
    /// Errors allowed per rolling hour before token calls pause (Exact blocks an app at ~10).
    pub max_errors_per_hour: u32,
}

/// What the connection's state says about its tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenTimes {
    /// Expiry of the current access token, measured from when its request was sent; None when
    /// unknown (a freshly imported refresh token).
    pub access_token_expires_at: Option<Timestamp>,
    /// When the current refresh token was obtained.
    pub refresh_token_issued_at: Option<Timestamp>,
    /// Earliest moment Exact can accept the next refresh: the answer's arrival plus the
    /// lifetime minus the window. Exact dates the token from when it processed the call,
    /// somewhere between sending and receiving, so only the arrival time is safe here.
    pub refresh_allowed_from: Option<Timestamp>,
    /// Token calls in a row that failed with a retryable error.
    pub consecutive_failures: u32,
    /// Too-early refusals in a row.
    pub too_early_refusals: u32,
    /// Times of recent failed token calls (only the last hour matters).
    pub recent_errors: Vec<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// When the next token call is due, before any failure handling.
///
/// Active connections refresh when `refresh_before` of the access token remains; a suspended
/// one only keeps its refresh token alive, halfway through the refresh token's life, which is
/// well before Exact forgets an unused one. An unknown expiry means "now": the first refresh
/// after an import tells us the real state (a too-early answer consumes nothing).
pub fn next_refresh(
    policy: &RefreshPolicy,
    times: &TokenTimes,
    suspended: bool,
    now: Timestamp,
) -> Timestamp {
    if suspended {
        return match times.refresh_token_issued_at {
            Some(issued) => add(issued, policy.refresh_token_lifetime / 2),
            None => now,
        };
    }
    match times.access_token_expires_at {
        Some(expires) => {
            let planned = sub(expires, policy.refresh_before);
            times
                .refresh_allowed_from
                .map_or(planned, |a| planned.max(a))
        }
        None => now,
    }
}

/// The two ends of a granted token call, and what they imply: validity is counted from
/// `sent_at` (never longer than Exact's), refreshing is allowed only from
/// `received_at + lifetime - window` (never earlier than Exact accepts).
pub fn grant_times(
    policy: &RefreshPolicy,
    sent_at: Timestamp,
    received_at: Timestamp,
    lifetime: Duration,
) -> (Timestamp, Timestamp) {
    let expires = access_token_expires_at(sent_at, lifetime);
    let allowed = sub(add(received_at, lifetime), policy.refresh_window);
    (expires, allowed)
}

/// When the refresh token expires if nobody uses it.
pub fn refresh_token_expires_at(policy: &RefreshPolicy, issued: Timestamp) -> Timestamp {
    add(issued, policy.refresh_token_lifetime)
}

/// Expiry of an access token granted with `expires_in`, measured from `sent_at` (the moment
/// the request left, never the moment the answer came back) so we never think a token lives
/// longer than Exact does. (Too-early refusals are avoided by [`grant_times`].)
pub fn access_token_expires_at(sent_at: Timestamp, expires_in: Duration) -> Timestamp {
    add(sent_at, expires_in)
}

/// After a too-early refusal: our idea of the expiry was wrong (an imported token that
/// someone else refreshed recently). Wait half a window, then double, but never longer than a
/// whole token lifetime: at most a handful of refused calls, each of which consumes nothing.
pub fn after_too_early(policy: &RefreshPolicy, refusals: u32, now: Timestamp) -> Timestamp {
    let first = (policy.refresh_window / 2).max(Duration::from_millis(500));
    let cap = policy
        .access_token_lifetime
        .saturating_sub(policy.refresh_window)
        .max(first);
    let factor = 2u32.saturating_pow(refusals.saturating_sub(1).min(20));
    add(now, first.saturating_mul(factor).min(cap))
}

/// Base of the exponential backoff after a retryable failure: an eighth of the refresh
/// window, so several attempts fit inside it (Exact: 3.75 s).
fn backoff_base(policy: &RefreshPolicy) -> Duration {
    (policy.refresh_window / 8).clamp(Duration::from_millis(250), Duration::from_secs(10))
}

/// Longest wait between retries: long enough to stay under Exact's hourly error limit.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// After a retryable failure (5xx, timeout, bad body, 429): exponential backoff with jitter
/// (`jitter` in 0..=1 picks a point in the upper half of the interval), at least Retry-After,
/// pulled in to one last attempt just before the access token expires, and paused when the
/// hourly error budget is spent.
pub fn after_failure(
    policy: &RefreshPolicy,
    times: &TokenTimes,
    retry_after: Option<Duration>,
    jitter: f64,
    now: Timestamp,
) -> Timestamp {
    let base = backoff_base(policy);
    let exp = times.consecutive_failures.saturating_sub(1).min(20);
    let full = base
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF);
    let jitter = jitter.clamp(0.0, 1.0);
    let mut delay = full.mul_f64(0.5 + 0.5 * jitter);
    if let Some(ra) = retry_after {
        delay = delay.max(ra.min(Duration::from_secs(3600)));
    }
    let mut at = add(now, delay);
    if let Some(expires) = times.access_token_expires_at {
        let last_chance = sub(expires, base);
        if retry_after.is_none() && at > last_chance && last_chance > add(now, base) {
            at = last_chance;
        }
    }
    match error_budget_reopens(policy, &times.recent_errors, now) {
        Some(reopen) if reopen > at => reopen,
        _ => at,
    }
}

/// When the hourly error budget has room again, or None when it has room now.
pub fn error_budget_reopens(
    policy: &RefreshPolicy,
    recent: &[Timestamp],
    now: Timestamp,
) -> Option<Timestamp> {
    let hour = Duration::from_secs(3600);
    let mut in_window: Vec<Timestamp> = recent
        .iter()
        .copied()
        .filter(|t| add(*t, hour) > now)
        .collect();
    if (in_window.len() as u32) < policy.max_errors_per_hour.max(1) {
        return None;
    }
    in_window.sort();
    let excess = in_window.len() - policy.max_errors_per_hour.max(1) as usize;
    in_window.get(excess).map(|t| add(*t, hour))
}

/// Keeps only the errors of the last hour plus `now`, bounded in size.
pub fn record_error(recent: &[Timestamp], now: Timestamp) -> Vec<Timestamp> {
    let hour = Duration::from_secs(3600);
    let mut v: Vec<Timestamp> = recent
        .iter()
        .copied()
        .filter(|t| add(*t, hour) > now)
        .collect();
    v.push(now);
    let skip = v.len().saturating_sub(32);
    v.split_off(skip)
}

/// Whether a too-early refusal is possible for a token expiring at `expires`: used to check
/// that `refreshBefore` fits in the window.
pub fn refresh_before_fits(policy: &RefreshPolicy) -> bool {
    policy.refresh_before <= policy.refresh_window
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> RefreshPolicy {
        RefreshPolicy {
            refresh_before: Duration::from_secs(25),
            refresh_window: Duration::from_secs(30),
            access_token_lifetime: Duration::from_secs(600),
            refresh_token_lifetime: Duration::from_secs(30 * 86400),
            max_errors_per_hour: 8,
        }
    }
    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn refreshes_inside_the_window_measured_from_send_time() {
        let p = exact();
        let expires = access_token_expires_at(t(0), Duration::from_secs(600));
        assert_eq!(expires, t(600));
        let times = TokenTimes {
            access_token_expires_at: Some(expires),
            ..Default::default()
        };
        let at = next_refresh(&p, &times, false, t(1));
        assert_eq!(at, t(575));
        // Inside Exact's window: at most 30 s left, so never a too-early refusal.
        assert!(expires.duration_since(at) <= SignedDuration::from_secs(30));
    }

    #[test]
    fn slow_answers_never_lead_to_a_too_early_refresh() {
        let p = exact();
        // The call took 8 s: Exact may have dated the token up to 8 s after we sent.
        let (expires, allowed) = grant_times(&p, t(0), t(8), Duration::from_secs(600));
        assert_eq!(expires, t(600), "validity counted from the send time");
        assert_eq!(allowed, t(578));
        let times = TokenTimes {
            access_token_expires_at: Some(expires),
            refresh_allowed_from: Some(allowed),
            ..Default::default()
        };
        let at = next_refresh(&p, &times, false, t(10));
        assert_eq!(at, t(578), "waits until Exact's window surely opened");
        // Worst case Exact processed the call just before answering: 30 s remain, allowed.
        assert!(t(608).duration_since(at) <= SignedDuration::from_secs(30));
        // A fast answer changes nothing.
        let (e, a) = grant_times(&p, t(0), t(0), Duration::from_secs(600));
        let fast = TokenTimes {
            access_token_expires_at: Some(e),
            refresh_allowed_from: Some(a),
            ..Default::default()
        };
        assert_eq!(next_refresh(&p, &fast, false, t(1)), t(575));
    }

    #[test]
    fn unknown_expiry_refreshes_now() {
        assert_eq!(
            next_refresh(&exact(), &TokenTimes::default(), false, t(5)),
            t(5)
        );
    }

    #[test]
    fn suspended_connections_only_keep_the_refresh_token_alive() {
        let p = exact();
        let times = TokenTimes {
            access_token_expires_at: Some(t(600)),
            refresh_token_issued_at: Some(t(0)),
            ..Default::default()
        };
        let at = next_refresh(&p, &times, true, t(10));
        assert_eq!(at, t(15 * 86400));
        assert!(at < refresh_token_expires_at(&p, t(0)));
    }

    #[test]
    fn too_early_backs_off_doubling_up_to_one_lifetime() {
        let p = exact();
        let waits: Vec<i64> = (1..=7)
            .map(|n| after_too_early(&p, n, t(0)).duration_since(t(0)).as_secs())
            .collect();
        assert_eq!(waits, vec![15, 30, 60, 120, 240, 480, 570]);
    }

    #[test]
    fn failure_backoff_grows_with_jitter_and_respects_retry_after() {
        let p = exact();
        let mut times = TokenTimes {
            consecutive_failures: 1,
            ..Default::default()
        };
        let first = after_failure(&p, &times, None, 1.0, t(0));
        assert_eq!(first.duration_since(t(0)).as_millis(), 3750);
        let low = after_failure(&p, &times, None, 0.0, t(0));
        assert_eq!(low.duration_since(t(0)).as_millis(), 1875);
        times.consecutive_failures = 4;
        assert_eq!(
            after_failure(&p, &times, None, 1.0, t(0))
                .duration_since(t(0))
                .as_secs(),
            30
        );
        times.consecutive_failures = 30;
        assert_eq!(
            after_failure(&p, &times, None, 1.0, t(0))
                .duration_since(t(0))
                .as_secs(),
            300
        );
        times.consecutive_failures = 1;
        let ra = after_failure(&p, &times, Some(Duration::from_secs(42)), 0.5, t(0));
        assert_eq!(ra.duration_since(t(0)).as_secs(), 42);
    }

    #[test]
    fn failure_backoff_lands_one_last_attempt_before_expiry() {
        let p = exact();
        let times = TokenTimes {
            access_token_expires_at: Some(t(20)),
            consecutive_failures: 4,
            ..Default::default()
        };
        let at = after_failure(&p, &times, None, 1.0, t(0));
        assert!(at < t(20), "retry must land before the token expires");
        assert_eq!(at.duration_since(t(0)).as_millis(), 16_250);
    }

    #[test]
    fn error_budget_pauses_calls_until_the_hour_rolls_over() {
        let p = exact();
        let mut recent = vec![];
        for i in 0..8 {
            recent = record_error(&recent, t(i * 10));
        }
        assert_eq!(error_budget_reopens(&p, &recent, t(100)), Some(t(3600)));
        let times = TokenTimes {
            recent_errors: recent.clone(),
            consecutive_failures: 8,
            ..Default::default()
        };
        assert_eq!(after_failure(&p, &times, None, 1.0, t(100)), t(3600));
        assert_eq!(error_budget_reopens(&p, &recent[1..], t(100)), None);
        // Old errors drop out of the window.
        assert!(record_error(&recent, t(7200)).len() == 1);
    }

    #[test]
    fn refresh_before_must_fit_the_window() {
        assert!(refresh_before_fits(&exact()));
        let wide = RefreshPolicy {
            refresh_before: Duration::from_secs(31),
            ..exact()
        };
        assert!(!refresh_before_fits(&wide));
    }
}
