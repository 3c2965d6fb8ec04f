//! Progress while waiting, on stderr: a spinner on a terminal, plain lines otherwise (CI
//! logs, pipes), so stdout stays clean for the result.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// How often a plain (non-terminal) progress repeats an unchanged state.
pub const PLAIN_REPEAT: Duration = Duration::from_secs(30);

/// Shows what a wait is waiting for.
pub struct Progress {
    tty: bool,
    frame: usize,
    started: Instant,
    state: String,
    last_plain: Option<(String, Duration)>,
    drawn: bool,
}

impl Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        Progress::with_tty(std::io::stderr().is_terminal())
    }

    /// Forces spinner (`true`) or plain lines (`false`).
    pub fn with_tty(tty: bool) -> Progress {
        Progress {
            tty,
            frame: 0,
            started: Instant::now(),
            state: String::new(),
            last_plain: None,
            drawn: false,
        }
    }

    /// Time since the wait started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sets what is being waited for (e.g. "waiting for team-a/acme: AwaitingAuthorization")
    /// and redraws.
    pub fn set(&mut self, state: &str) {
        self.state = state.to_string();
        self.tick();
    }

    /// Advances the spinner (terminal) or prints a line when due (plain).
    pub fn tick(&mut self) {
        let elapsed = self.elapsed();
        if self.tty {
            self.frame = (self.frame + 1) % FRAMES.len();
            let line = format!(
                "\r\x1b[2K{} {} ({})",
                FRAMES[self.frame],
                self.state,
                super::table::compact(elapsed.as_secs() as i64)
            );
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
            self.drawn = true;
        } else if let Some(line) = self.plain_line(elapsed) {
            super::note(&line);
        }
    }

    /// The line a plain progress prints now, if any: when the state changed, or every
    /// [`PLAIN_REPEAT`] while it stays the same.
    pub fn plain_line(&mut self, elapsed: Duration) -> Option<String> {
        if self.state.is_empty() {
            return None;
        }
        let due = match &self.last_plain {
            Some((state, at)) => *state != self.state || elapsed >= *at + PLAIN_REPEAT,
            None => true,
        };
        if !due {
            return None;
        }
        self.last_plain = Some((self.state.clone(), elapsed));
        let secs = elapsed.as_secs() as i64;
        Some(if secs == 0 {
            format!("... {}", self.state)
        } else {
            format!("... {} ({})", self.state, super::table::compact(secs))
        })
    }

    /// Clears the spinner line so the result starts on a clean line.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    /// Sleeps `total`, keeping the spinner moving.
    pub async fn sleep(&mut self, total: Duration) {
        let step = Duration::from_millis(if self.tty { 100 } else { 500 });
        let deadline = Instant::now() + total;
        while Instant::now() < deadline {
            tokio::time::sleep(step.min(deadline.saturating_duration_since(Instant::now()))).await;
            self.tick();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_progress_prints_changes_and_repeats_slowly() {
        let mut p = Progress::with_tty(false);
        assert_eq!(p.plain_line(Duration::ZERO), None, "nothing to say yet");
        p.state = "waiting: AwaitingAuthorization".into();
        assert_eq!(
            p.plain_line(Duration::ZERO).as_deref(),
            Some("... waiting: AwaitingAuthorization")
        );
        assert_eq!(p.plain_line(Duration::from_secs(5)), None, "unchanged");
        p.state = "waiting: Pending".into();
        assert_eq!(
            p.plain_line(Duration::from_secs(6)).as_deref(),
            Some("... waiting: Pending (6s)")
        );
        assert_eq!(p.plain_line(Duration::from_secs(35)), None);
        assert_eq!(
            p.plain_line(Duration::from_secs(36)).as_deref(),
            Some("... waiting: Pending (36s)")
        );
    }
}
