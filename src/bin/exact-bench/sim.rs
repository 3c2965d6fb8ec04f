//! exact-sim as a separate process (or one already running at `--sim-url`): seeding
//! connections and reading its per-connection refresh timings.

use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// OAuth client registered in the simulator.
pub const CLIENT_ID: &str = "bench";
/// Its secret.
pub const CLIENT_SECRET: &str = "bench-secret";
/// Division of every seeded connection (set in each spec: no `Me` discovery calls).
pub const DIVISION: i64 = 123_456;

/// Counters the bench reads (a subset of exact-sim's `Counters`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Token endpoint calls.
    pub token_calls: u64,
    /// Successful refreshes.
    pub refresh_ok: u64,
    /// Too-early refusals.
    pub too_early: u64,
    /// Other refusals.
    pub old_refresh_token_used: u64,
    /// Requests refused because the app was blocked.
    pub blocked: u64,
}

/// One connection's counters and refresh timings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Chain {
    /// Counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Access-token life left (ms) at each successful refresh, oldest first.
    pub remaining_at_refresh_ms: Vec<i64>,
}

/// `GET /_sim/stats`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Over all calls.
    pub totals: Counters,
    /// Per connection name.
    pub connections: BTreeMap<String, Chain>,
}

/// A simulator the bench talks to over HTTP; kills the process on drop when it started it.
pub struct SimHandle {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    http: reqwest::Client,
    child: Option<Child>,
}

impl SimHandle {
    /// Spawns `binary` with the given token lifetime and window.
    pub fn spawn(
        binary: &Path,
        lifetime: Duration,
        window: Duration,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--client", &format!("{CLIENT_ID}:{CLIENT_SECRET}")])
            .args(["--access-token-lifetime", &ms(lifetime)])
            .args(["--refresh-window", &ms(window)])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stdout = child.stdout.take().context("sim stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("exact-sim listening on ") else {
            let _ = child.kill();
            bail!("unexpected exact-sim output {line:?}");
        };
        Ok(SimHandle {
            url: url.to_string(),
            http: reqwest::Client::new(),
            child: Some(child),
        })
    }

    /// Uses a simulator that is already running (its client must be `bench:bench-secret`).
    pub fn attach(url: &str) -> Self {
        SimHandle {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            child: None,
        }
    }

    /// Creates connection `name` in the simulator; returns its first refresh token.
    pub async fn seed(&self, name: &str) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Seeded {
            refresh_token: String,
        }
        let body = serde_json::json!({"client_id": CLIENT_ID, "name": name, "division": DIVISION});
        let r: Seeded = self
            .http
            .post(format!("{}/_sim/seed", self.url))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(r.refresh_token)
    }

    /// A snapshot of the counters.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self
            .http
            .get(format!("{}/_sim/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A duration as exact-sim and the CRDs accept it ("1500ms").
pub fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
