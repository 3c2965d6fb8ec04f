//! Simulated time.

use std::time::Duration;

/// Simulated time: elapsed since the simulator started, plus any manual advance.
pub type SimTime = Duration;
