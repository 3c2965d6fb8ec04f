//! The chain core: everything about keeping one rotating refresh-token chain intact, with no
//! Kubernetes client in it, so the invariant is tested in memory (`tests.rs`).
//!
//! - [`decide`]: what to do now, a pure function of (state, policy, spec, now);
//! - [`on_outcome`]: the state after a token answer, pure (clock and jitter passed in);
//! - [`exchange`]: the one transaction behind both grants, over a [`StateStore`]:
//!   claim (a conditional write) -> one token call -> persist the answer first.
//!
//! The Kubernetes [`StateStore`] is the connection's state Secret with resourceVersion
//! preconditions (`crate::state_store::StateHandle`).

mod decide;
mod exchange;
mod outcome;
#[cfg(test)]
mod tests;

pub use decide::{decide, next_due, ChainSpec, Decision, WaitWhy};
pub use exchange::{
    exchange, ChainGrant, Entitlement, ExchangeEnd, ExchangeJob, StateStore, Stored, TokenCaller,
    WriteError,
};
pub use outcome::{
    apply_grant, import_bootstrap, on_outcome, outcome_label, AccessIgnored, BootstrapAccess, End,
    OutcomeInputs,
};
