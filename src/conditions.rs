//! Status conditions following Kubernetes API conventions, so kstatus, Flux and Argo CD
//! compute health from them.

use crate::crd::Condition;
use jiff::Timestamp;

/// Condition reasons of ExactConnection's Ready condition.
pub mod reason {
    /// A valid token is in the workload Secret.
    pub const TOKEN_PUBLISHED: &str = "TokenPublished";
    /// No refresh token yet: a person must consent.
    pub const AWAITING_AUTHORIZATION: &str = "AwaitingAuthorization";
    /// The refresh-token chain is dead; only a new consent helps.
    pub const REAUTHORIZATION_REQUIRED: &str = "ReauthorizationRequired";
    /// Exact refused the app's credentials.
    pub const INVALID_CLIENT: &str = "InvalidClient";
    /// The referenced ExactOAuthClient is missing or invalid.
    pub const CLIENT_NOT_READY: &str = "ClientNotReady";
    /// The client does not allow this namespace.
    pub const CLIENT_NOT_ALLOWED: &str = "ClientNotAllowed";
    /// The target Secret belongs to someone else.
    pub const TARGET_SECRET_CONFLICT: &str = "TargetSecretConflict";
    /// Token calls fail; retrying with backoff.
    pub const REFRESH_FAILING: &str = "RefreshFailing";
    /// Suspended by spec.
    pub const SUSPENDED: &str = "Suspended";
    /// The connection's own spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Waiting for the first token.
    pub const PENDING: &str = "Pending";
    /// ExactOAuthClient is usable.
    pub const CLIENT_READY: &str = "ClientReady";
    /// A referenced Secret is missing or unusable.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
}

/// Builds the Ready condition, keeping lastTransitionTime when status did not change.
pub fn ready(
    previous: &[Condition],
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time)
        .unwrap_or(now);
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// The current Ready condition, if any.
pub fn find_ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("valid");
        let t1 = Timestamp::from_second(1_800_000_100).expect("valid");
        let first = ready(&[], false, reason::PENDING, "waiting", Some(1), t0);
        assert_eq!(first.last_transition_time, t0);
        let same = ready(
            std::slice::from_ref(&first),
            false,
            reason::REFRESH_FAILING,
            "x",
            Some(1),
            t1,
        );
        assert_eq!(same.last_transition_time, t0);
        let flipped = ready(&[same], true, reason::TOKEN_PUBLISHED, "ok", Some(2), t1);
        assert_eq!(flipped.last_transition_time, t1);
        assert_eq!(flipped.status, "True");
        assert_eq!(flipped.observed_generation, Some(2));
    }
}
