//! Helpers of the chaos suite (`tests/chaos.rs`): the operator as a process, the outside
//! observer of the workload and state Secrets, the per-scenario bench, and the report.
#![allow(dead_code)] // the suite and the secrecy test use different subsets

pub mod bench;
pub mod observe;
pub mod operator;
pub mod report;
pub mod shards;

use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Env var selecting the full size of the issue (50 connections, 30 kills, ...).
pub const FULL_ENV: &str = "EXACT_CHAOS_FULL";
/// Env var selecting scenarios by letter, e.g. `a,c` (default: all).
pub const SCENARIOS_ENV: &str = "EXACT_CHAOS_SCENARIOS";

/// How big each scenario is.
#[derive(Clone, Debug)]
pub struct Size {
    /// Full size of the issue (`EXACT_CHAOS_FULL=1`) rather than the CI size.
    pub full: bool,
    /// Connections per scenario.
    pub connections: usize,
    /// (a) SIGKILLs, the journal kept.
    pub sigkills: usize,
    /// (g) SIGKILLs, the journal deleted with the process.
    pub journal_lost_kills: usize,
    /// (b) SIGTERM restarts.
    pub sigterms: usize,
    /// (c) leader SIGKILLs.
    pub leader_kills: usize,
    /// (d) how long the API server stays down.
    pub outage: Duration,
    /// (e) how long the token-endpoint faults last.
    pub fault_period: Duration,
    /// (f) lost responses to inject before the fault is switched off.
    pub lost_responses: u64,
}

impl Size {
    /// CI size unless `EXACT_CHAOS_FULL=1`.
    pub fn from_env() -> Size {
        let full = std::env::var(FULL_ENV).is_ok_and(|v| v == "1" || v == "true");
        if full {
            Size {
                full,
                connections: 50,
                sigkills: 30,
                journal_lost_kills: 30,
                sigterms: 30,
                leader_kills: 10,
                outage: Duration::from_secs(20),
                fault_period: Duration::from_secs(60),
                lost_responses: 3,
            }
        } else {
            Size {
                full,
                connections: 20,
                sigkills: 12,
                journal_lost_kills: 8,
                sigterms: 8,
                leader_kills: 3,
                outage: Duration::from_secs(10),
                fault_period: Duration::from_secs(30),
                lost_responses: 2,
            }
        }
    }

    /// Whether scenario `letter` is selected by `EXACT_CHAOS_SCENARIOS` (default: all).
    pub fn selected(letter: char) -> bool {
        match std::env::var(SCENARIOS_ENV) {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .any(|s| s.trim().eq_ignore_ascii_case(&letter.to_string())),
            _ => true,
        }
    }
}

/// The test's own output: printed, and kept (the secrecy test searches it too).
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    /// Prints a line and keeps it.
    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Everything said so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A random duration in `lo..hi` (milliseconds).
pub fn random_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(lo..hi))
}

/// A random alphanumeric string (client secrets of the scenarios).
pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `12.3 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
