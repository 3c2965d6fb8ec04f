//! The figures of a scenario, the summary table, and the checks every scenario shares.

use super::bench::Finished;
use super::secs;
use crate::harness::process::percentile;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// One line of the summary table, plus notes and failed checks.
#[derive(Clone, Debug)]
pub struct Row {
    /// "a. SIGKILL ×30".
    pub label: String,
    /// Connections.
    pub connections: usize,
    /// Successful refreshes (exact-sim).
    pub refreshes: u64,
    /// "Old refresh token used." answers (exact-sim).
    pub old_used: u64,
    /// Too-early refusals (exact-sim).
    pub too_early: u64,
    /// Connections Ready=True at the end.
    pub ready_end: usize,
    /// Time without a valid token in the workload Secret, summed over connections.
    pub invalid_total: Duration,
    /// The same, of the worst connection.
    pub invalid_max: Duration,
    /// Longest uninterrupted stretch without a valid token of any connection.
    pub longest_gap: Duration,
    /// Scenario run time.
    pub wall: Duration,
    /// Details printed under the table.
    pub notes: Vec<String>,
    /// Failed pass criteria.
    pub failures: Vec<String>,
}

impl Row {
    /// The figures every scenario has.
    pub fn new(label: impl Into<String>, f: &Finished) -> Row {
        let views = f.observed.conns.values();
        Row {
            label: label.into(),
            connections: f.names.len(),
            refreshes: f.stats.totals.refresh_ok,
            old_used: f.stats.totals.old_refresh_token_used,
            too_early: f.stats.totals.too_early,
            ready_end: f.ready.values().filter(|(s, _, _)| s == "True").count(),
            invalid_total: views.clone().map(|v| v.invalid).sum(),
            invalid_max: views.clone().map(|v| v.invalid).max().unwrap_or_default(),
            longest_gap: views.map(|v| v.longest_gap).max().unwrap_or_default(),
            wall: f.wall,
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Records a failed criterion unless `ok`.
    pub fn check(&mut self, ok: bool, failure: impl Into<String>) {
        if !ok {
            self.failures.push(failure.into());
        }
    }

    /// No too-early refusal (every scenario).
    pub fn check_no_too_early(&mut self) {
        let n = self.too_early;
        self.check(n == 0, format!("{n} too-early refusal(s)"));
    }

    /// No old-token use at all.
    pub fn check_no_old_token(&mut self) {
        let n = self.old_used;
        self.check(
            n == 0,
            format!("{n} \"Old refresh token used\" answer(s): a refresh-token chain broke"),
        );
    }

    /// Every connection settled; those in `dead` ended in ReauthorizationRequired, every other
    /// one in TokenPublished. Notes the time without a token of the others alone.
    pub fn check_final_states(&mut self, f: &Finished, dead: &BTreeSet<String>) {
        if !dead.is_empty() {
            let alive: Vec<Duration> = f
                .observed
                .conns
                .iter()
                .filter(|(n, _)| !dead.contains(*n))
                .map(|(_, v)| v.invalid)
                .collect();
            self.note(format!(
                "without the {} lost chain(s), no valid token: total {}, max per connection {}",
                dead.len(),
                secs(alive.iter().sum()),
                secs(alive.iter().max().copied().unwrap_or_default())
            ));
        }
        self.check(f.settled, "not every connection settled in time");
        self.check(
            f.ready.len() == f.names.len(),
            format!(
                "the final status of {} connection(s) is unknown",
                f.names.len() - f.ready.len().min(f.names.len())
            ),
        );
        // Unexpected end states, grouped by reason: (connections, one message).
        let mut wrong: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
        for (name, (_, reason, message)) in &f.ready {
            let ok = if dead.contains(name) {
                reason == "ReauthorizationRequired" && message.contains("Old refresh token used")
            } else {
                reason == "TokenPublished"
            };
            if !ok {
                let entry = wrong.entry(reason.clone()).or_default();
                entry.0.push(name.clone());
                entry.1 = message.clone();
            }
        }
        for (reason, (names, message)) in wrong {
            self.failures.push(format!(
                "{} connection(s) ended {reason} ({}), e.g. \"{message}\"",
                names.len(),
                names.join(", ")
            ));
        }
    }

    /// Every old-token use is explained by a kill that lost that connection's rotated token:
    /// `allowed` gives, per such connection, how many processes ran after that kill. Each
    /// may spend the lost token once (it records the dead chain next; a kill that catches
    /// that write too lets the next process spend it again).
    pub fn check_losses_explained(&mut self, f: &Finished, allowed: &BTreeMap<String, u64>) {
        for name in &f.names {
            let used = f.counters(name).old_refresh_token_used;
            let may = allowed.get(name).copied().unwrap_or(0);
            let failure = if may == 0 {
                format!(
                    "{name}: {used} old-token use(s) although no kill fell between Exact's \
                     answer and the persisted write (operator bug: a chain broke that should not)"
                )
            } else {
                format!(
                    "{name}: {used} old-token uses, more than the {may} processes that ran after \
                     the kill that lost its token"
                )
            };
            self.check(used <= may, failure);
        }
    }
}

/// The summary table (markdown) and the notes under it.
pub fn render(title: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "\n### {title}\n\n\
         | scenario | conns | refreshes | old_refresh_token_used | too_early | Ready at end | \
         no valid token: total | max per conn | longest gap | run time | result |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.connections,
            r.refreshes,
            r.old_used,
            r.too_early,
            r.ready_end,
            r.connections,
            secs(r.invalid_total),
            secs(r.invalid_max),
            secs(r.longest_gap),
            secs(r.wall),
            if r.failures.is_empty() {
                "pass"
            } else {
                "FAIL"
            },
        ));
    }
    s.push('\n');
    for r in rows {
        for n in &r.notes {
            s.push_str(&format!("- {}: {n}\n", r.label));
        }
        for n in &r.failures {
            s.push_str(&format!("- {}: FAILED: {n}\n", r.label));
        }
    }
    s
}

/// The windows in which a kill can lose a rotated refresh token, per granted call, from the
/// operators' logs (`RUST_LOG=info,kube_client=debug,exact_operator::journal=debug`): from
/// the answer in hand to its journal entry fsync'd (`journal`, the journal's own
/// measurement), and from that entry to the start of the state Secret's PUT (`sent`) and
/// to its answer (`done`) — the window only the journal covers.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// The token call: the claim's state write answered to the answer in hand (a kill in
    /// it loses the chain whatever the journal: Exact rotates a request it has received).
    pub call: Vec<Duration>,
    /// Answer in hand to journal entry durable.
    pub journal: Vec<Duration>,
    /// Journal entry durable to persisting PUT sent.
    pub sent: Vec<Duration>,
    /// Journal entry durable to persisting PUT answered.
    pub done: Vec<Duration>,
    /// Writing a refresh's intent (temp file, fsync, rename, directory fsync).
    pub intent: Vec<Duration>,
    /// Intent durable to answer durable: the call in flight as the journal sees it (a kill
    /// in it leaves the intent, never the answer).
    pub in_flight: Vec<Duration>,
}

/// Reads the windows out of the log files (one process each, lines in time order).
pub fn persist_windows(logs: &[PathBuf]) -> Windows {
    let mut w = Windows::default();
    for path in logs {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        // Connection -> (time of the granted call, PUT already sent).
        let mut open: HashMap<String, (Timestamp, bool)> = HashMap::new();
        // Connection -> when its last state write (the claim) was answered.
        let mut claimed: HashMap<String, Timestamp> = HashMap::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(at) = v["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let fields = &v["fields"];
            if fields["message"] == "token journal: intent written" {
                if let Some(micros) = fields["micros"].as_u64() {
                    w.intent.push(Duration::from_micros(micros));
                }
                continue;
            }
            if fields["message"] == "token journal: entry written" {
                if let Some(micros) = fields["in_flight_micros"].as_u64() {
                    w.in_flight.push(Duration::from_micros(micros));
                }
                if let (Some(conn), Some(micros)) =
                    (fields["connection"].as_str(), fields["micros"].as_u64())
                {
                    let durable = Duration::from_micros(micros);
                    w.journal.push(durable);
                    if let Some(claim) = claimed.remove(conn) {
                        let call = Duration::try_from(at.duration_since(claim)).unwrap_or_default();
                        w.call.push(call.saturating_sub(durable));
                    }
                    open.insert(conn.to_string(), (at, false));
                }
                continue;
            }
            let span = &v["span"];
            let url = span["http.url"].as_str().unwrap_or_default();
            let Some(conn) = url
                .split("/secrets/")
                .nth(1)
                .and_then(|rest| rest.split("-exact-state").next())
                .filter(|_| span["http.method"] == "PUT" && url.contains("-exact-state"))
            else {
                continue;
            };
            let Some((granted, sent)) = open.get_mut(conn) else {
                if fields["message"] == "stream closed" {
                    claimed.insert(conn.to_string(), at);
                }
                continue;
            };
            let since = Duration::try_from(at.duration_since(*granted)).unwrap_or_default();
            match fields["message"].as_str() {
                Some("requesting") if !*sent => {
                    *sent = true;
                    w.sent.push(since);
                }
                Some("stream closed") if *sent => {
                    w.done.push(since);
                    open.remove(conn);
                }
                _ => {}
            }
        }
    }
    w.call.sort();
    w.journal.sort();
    w.sent.sort();
    w.done.sort();
    w.intent.sort();
    w.in_flight.sort();
    w
}

/// "median 80 µs, p95 200 µs, max 1500 µs (n=420)".
pub fn spread_us(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let us = |d: Duration| format!("{} µs", d.as_micros());
    format!(
        "median {}, p95 {}, p99 {}, max {} (n={})",
        us(percentile(sorted, 0.5)),
        us(percentile(sorted, 0.95)),
        us(percentile(sorted, 0.99)),
        us(sorted[sorted.len() - 1]),
        sorted.len()
    )
}

/// "median 12 ms, p95 30 ms, max 80 ms (n=420)".
pub fn spread(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let at = |q: f64| percentile(sorted, q);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    format!(
        "median {}, p95 {}, max {} (n={})",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(sorted[sorted.len() - 1]),
        sorted.len()
    )
}

/// Mean of durations.
pub fn mean(d: &[Duration]) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.iter().sum::<Duration>() / d.len() as u32
}
