//! Figures and their markdown rendering.

use crate::cluster::Requests;
use crate::operator_process::percentile;
use crate::sim::Stats;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Resources the operator touches; everything else is the API server's own traffic.
pub const RESOURCES: [&str; 4] = ["exactconnections", "exactoauthclients", "secrets", "events"];

/// Everything the bench measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Run parameters.
    pub params: Params,
    /// Creating the N connections (before the operator starts).
    pub setup_seconds: f64,
    /// Operator start to every connection Ready.
    pub cold_start: Option<Phase>,
    /// Steady refreshing.
    pub steady: Option<Steady>,
    /// Burst of new connections.
    pub burst: Option<Burst>,
    /// Peak resident memory of the operator (VmHWM).
    pub rss_peak_mib: f64,
    /// A restart of the operator over healthy connections (`--restart-at`).
    pub restart: Option<Restart>,
}

/// What a restart over healthy connections cost: from SIGTERM of the old process until the
/// new one has reconciled (scheduled the next refresh of) every connection.
#[derive(Debug, Default, Serialize)]
pub struct Restart {
    /// API requests in the window, per connection.
    pub phase: Phase,
    /// SIGTERM -> old process gone (s).
    pub stop_seconds: f64,
    /// New process start -> every connection reconciled once (s).
    pub resync_seconds: f64,
    /// Token calls in the window.
    pub token_calls: u64,
    /// Token calls the schedule alone explains in a window that long (steady rate).
    pub scheduled_calls: f64,
    /// Calls in the window that were not due: too-early refusals plus reuses of an old
    /// refresh token (a call the schedule explains is neither).
    pub unscheduled_calls: u64,
    /// API writes in the window.
    pub writes: f64,
    /// Writes the scheduled calls explain (steady writes per refresh).
    pub scheduled_writes: f64,
    /// RSS of the new process once resynced (MiB).
    pub rss_mib: f64,
}

/// Run parameters.
#[derive(Debug, Default, Serialize)]
pub struct Params {
    /// Existing connections.
    pub connections: usize,
    /// Access-token lifetime (s).
    pub token_lifetime_s: f64,
    /// Refresh window (s).
    pub window_s: f64,
    /// refreshBefore of each connection (s).
    pub refresh_before_s: f64,
    /// Steady phase length (s).
    pub duration_s: f64,
    /// New connections in the burst.
    pub burst: usize,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Memory of the machine (GiB).
    pub mem_gib: f64,
    /// `git describe --always --dirty` of the tree the bench was built from.
    pub revision: String,
    /// Unrelated Secrets created in the namespace before the run.
    pub foreign_secrets: usize,
    /// Restart of the operator this far into the steady phase (s), if any.
    pub restart_at_s: Option<f64>,
    /// Operator processes side by side.
    pub replicas: usize,
    /// Extra operator arguments.
    pub operator_args: Vec<String>,
}

/// API and CPU use of one phase.
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    /// Wall time (s).
    pub seconds: f64,
    /// What the figures are divided by (refreshes, connections).
    pub units: f64,
    /// Operator-relevant API requests by verb/resource/subresource, per unit.
    pub api: Vec<ApiRow>,
    /// Writes (CREATE, UPDATE, PATCH, APPLY, DELETE) per unit.
    pub writes_per_unit: f64,
    /// GETs and LISTs per unit.
    pub reads_per_unit: f64,
    /// WATCH requests that completed in the phase.
    pub watches: f64,
    /// LIST requests in the phase.
    pub lists: f64,
    /// Requests on other resources (the API server's own loops), in total.
    pub other_requests: f64,
    /// Operator-resource requests answered 409 Conflict (optimistic-lock losses).
    pub conflicts: f64,
    /// Operator-resource requests answered 429 or 5xx.
    pub overload_errors: f64,
    /// Operator CPU per unit (ms).
    pub cpu_ms_per_unit: f64,
    /// kube-apiserver CPU per unit (ms), when the bench started it.
    pub apiserver_cpu_ms_per_unit: Option<f64>,
    /// etcd CPU per unit (ms), when the bench started it.
    pub etcd_cpu_ms_per_unit: Option<f64>,
    /// Operator reconciles per unit.
    pub reconciles_per_unit: Option<f64>,
}

/// One row of the API table.
#[derive(Debug, Serialize)]
pub struct ApiRow {
    /// Verb (GET, LIST, WATCH, CREATE, UPDATE, PATCH, APPLY, ...).
    pub verb: String,
    /// Resource.
    pub resource: String,
    /// Subresource ("status") or "".
    pub subresource: String,
    /// Requests in the phase.
    pub count: f64,
    /// Requests per unit.
    pub per_unit: f64,
}

/// Raw readings of a phase.
pub struct PhaseInput<'a> {
    /// Wall time.
    pub elapsed: Duration,
    /// Divisor.
    pub units: f64,
    /// apiserver_request_total delta.
    pub requests: &'a Requests,
    /// Operator CPU seconds.
    pub cpu_s: f64,
    /// kube-apiserver CPU seconds.
    pub apiserver_cpu_s: Option<f64>,
    /// etcd CPU seconds.
    pub etcd_cpu_s: Option<f64>,
    /// Operator reconciles.
    pub reconciles: Option<f64>,
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "CREATE" | "UPDATE" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" | "POST" | "PUT"
    )
}

impl Phase {
    /// Folds the readings of a phase.
    pub fn new(i: PhaseInput<'_>) -> Phase {
        let u = i.units.max(1.0);
        let mut p = Phase {
            seconds: i.elapsed.as_secs_f64(),
            units: i.units,
            cpu_ms_per_unit: i.cpu_s * 1000.0 / u,
            apiserver_cpu_ms_per_unit: i.apiserver_cpu_s.map(|s| s * 1000.0 / u),
            etcd_cpu_ms_per_unit: i.etcd_cpu_s.map(|s| s * 1000.0 / u),
            reconciles_per_unit: i.reconciles.map(|r| r / u),
            ..Default::default()
        };
        let mut rows = std::collections::BTreeMap::<(&str, &str, &str), f64>::new();
        for ((verb, resource, sub, code), count) in i.requests {
            if !RESOURCES.contains(&resource.as_str()) {
                p.other_requests += count;
                continue;
            }
            match code.as_str() {
                "409" => p.conflicts += count,
                "429" => p.overload_errors += count,
                c if c.starts_with('5') => p.overload_errors += count,
                _ => {}
            }
            *rows.entry((verb, resource, sub)).or_default() += count;
        }
        for ((verb, resource, sub), count) in rows {
            match verb {
                "WATCH" => p.watches += count,
                "LIST" => p.lists += count,
                _ => {}
            }
            if is_write(verb) {
                p.writes_per_unit += count / u;
            } else if verb == "GET" || verb == "LIST" {
                p.reads_per_unit += count / u;
            }
            p.api.push(ApiRow {
                verb: verb.into(),
                resource: resource.into(),
                subresource: sub.into(),
                count,
                per_unit: count / u,
            });
        }
        p
    }
}

/// Refresh timing and cost in the steady phase.
#[derive(Debug, Default, Serialize)]
pub struct Steady {
    /// API, CPU per refresh.
    pub phase: Phase,
    /// Successful refreshes in the phase (sim).
    pub refreshes: u64,
    /// Refreshes with a timing (the replaced token still existed in the sim).
    pub timed_refreshes: usize,
    /// Share of timed refreshes with 0 < remaining <= window (%).
    pub in_window_pct: f64,
    /// Refreshes that came after the access token expired (remaining <= 0).
    pub after_expiry: usize,
    /// Lateness = refreshBefore - remaining (ms): p50, p99, max.
    pub lateness_ms: [f64; 3],
    /// Remaining life at refresh (ms): min.
    pub min_remaining_ms: f64,
    /// Too-early refusals.
    pub too_early: u64,
    /// Token calls.
    pub token_calls: u64,
    /// Token calls per connection per token cycle (lifetime - refreshBefore); ideal 1.00.
    pub calls_per_connection_per_cycle: f64,
    /// Token calls per successful refresh; ideal 1.00.
    pub calls_per_refresh: f64,
    /// Connections that refreshed at least once in the phase.
    pub connections_refreshed: usize,
    /// Fewest refreshes of any connection in the phase.
    pub min_refreshes_per_connection: u64,
    /// Largest VmRSS sampled in the phase (MiB).
    pub rss_max_mib: f64,
    /// Mean VmRSS in the phase (MiB).
    pub rss_mean_mib: f64,
    /// Each operator process's part (with `--replicas` > 1).
    pub replicas: Vec<ReplicaShare>,
}

/// One replica's part of the steady phase.
#[derive(Debug, Default, Serialize)]
pub struct ReplicaShare {
    /// Token calls it made that Exact granted.
    pub granted_calls: f64,
    /// Its share of all granted calls (%).
    pub share_pct: f64,
    /// Its CPU per refresh it made (ms).
    pub cpu_ms_per_refresh: f64,
    /// Its VmRSS in the phase (MiB): mean, max.
    pub rss_mean_mib: f64,
    pub rss_max_mib: f64,
}

/// Inputs of the steady figures.
pub struct SteadyInput<'a> {
    /// Connection names.
    pub names: &'a [String],
    /// Sim stats at the start.
    pub before: &'a Stats,
    /// Sim stats at the end.
    pub after: &'a Stats,
    /// refreshBefore.
    pub refresh_before: Duration,
    /// Refresh window.
    pub window: Duration,
    /// Token lifetime.
    pub lifetime: Duration,
    /// RSS samples (KiB), per operator process.
    pub rss_kib: &'a [Vec<u64>],
    /// Granted token calls in the phase, per operator process.
    pub granted: &'a [f64],
    /// CPU seconds in the phase, per operator process.
    pub cpu_s: &'a [f64],
}

impl Steady {
    /// Folds sim timings and the phase figures.
    pub fn new(i: SteadyInput<'_>, phase: Phase) -> Steady {
        let window_ms = i.window.as_millis() as i64;
        let before_ms = i.refresh_before.as_millis() as f64;
        let mut timings = Vec::new();
        let (mut refreshes, mut calls, mut early) = (0u64, 0u64, 0u64);
        let (mut refreshed, mut min_refreshes) = (0usize, u64::MAX);
        for name in i.names {
            let a = i.after.connections.get(name).cloned().unwrap_or_default();
            let b = i.before.connections.get(name).cloned().unwrap_or_default();
            let r = a.counters.refresh_ok - b.counters.refresh_ok;
            refreshes += r;
            calls += a.counters.token_calls - b.counters.token_calls;
            early += a.counters.too_early - b.counters.too_early;
            refreshed += usize::from(r > 0);
            min_refreshes = min_refreshes.min(r);
            let from = b.remaining_at_refresh_ms.len();
            timings.extend(a.remaining_at_refresh_ms.iter().skip(from).copied());
        }
        let in_window = timings
            .iter()
            .filter(|r| **r > 0 && **r <= window_ms)
            .count();
        let mut lateness: Vec<f64> = timings.iter().map(|r| before_ms - *r as f64).collect();
        lateness.sort_by(f64::total_cmp);
        let cycle = i.lifetime.saturating_sub(i.refresh_before).as_secs_f64();
        let n = i.names.len().max(1) as f64;
        let cycles = phase.seconds / cycle.max(0.001);
        let mean_max = |kib: &[u64]| {
            (
                kib.iter().sum::<u64>() as f64 / kib.len().max(1) as f64 / 1024.0,
                kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
            )
        };
        let all_granted: f64 = i.granted.iter().sum();
        let replicas: Vec<ReplicaShare> = if i.rss_kib.len() < 2 {
            Vec::new()
        } else {
            i.rss_kib
                .iter()
                .zip(i.granted)
                .zip(i.cpu_s)
                .map(|((kib, granted), cpu)| {
                    let (rss_mean_mib, rss_max_mib) = mean_max(kib);
                    ReplicaShare {
                        granted_calls: *granted,
                        share_pct: 100.0 * granted / all_granted.max(1.0),
                        cpu_ms_per_refresh: cpu * 1000.0 / granted.max(1.0),
                        rss_mean_mib,
                        rss_max_mib,
                    }
                })
                .collect()
        };
        // The heaviest replica's memory: each replica must fit its own limit.
        let (rss_mean_mib, rss_max_mib) = i
            .rss_kib
            .iter()
            .map(|kib| mean_max(kib))
            .fold((0.0, 0.0), |(m, x), (a, b)| {
                (f64::max(m, a), f64::max(x, b))
            });
        Steady {
            refreshes,
            timed_refreshes: timings.len(),
            in_window_pct: pct(in_window, timings.len()),
            after_expiry: timings.iter().filter(|r| **r <= 0).count(),
            lateness_ms: [
                percentile(&lateness, 0.5),
                percentile(&lateness, 0.99),
                lateness.last().copied().unwrap_or(0.0),
            ],
            min_remaining_ms: timings.iter().min().copied().unwrap_or(0) as f64,
            too_early: early,
            token_calls: calls,
            calls_per_connection_per_cycle: calls as f64 / n / cycles.max(f64::MIN_POSITIVE),
            calls_per_refresh: calls as f64 / (refreshes.max(1)) as f64,
            connections_refreshed: refreshed,
            min_refreshes_per_connection: if i.names.is_empty() { 0 } else { min_refreshes },
            rss_max_mib,
            rss_mean_mib,
            replicas,
            phase,
        }
    }
}

/// New connections applied at once.
#[derive(Debug, Default, Serialize)]
pub struct Burst {
    /// API and CPU per new connection.
    pub phase: Phase,
    /// New connections.
    pub connections: usize,
    /// Time to send all applies (s).
    pub apply_seconds: f64,
    /// Connections whose workload Secret appeared.
    pub ready: usize,
    /// Apply -> workload Secret latency (ms): p50, p99, max.
    pub latency_ms: [f64; 3],
    /// Apply -> Ready in status latency (ms): p50, p99, max.
    pub ready_latency_ms: [f64; 3],
}

/// p50, p99 and max of `values`.
fn spread(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    [
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(0.0),
    ]
}

impl Burst {
    /// Folds the latencies.
    pub fn new(
        phase: Phase,
        connections: usize,
        apply: Duration,
        latencies: Vec<f64>,
        ready_latencies: Vec<f64>,
    ) -> Burst {
        Burst {
            connections,
            apply_seconds: apply.as_secs_f64(),
            ready: latencies.len(),
            latency_ms: spread(latencies),
            ready_latency_ms: spread(ready_latencies),
            phase,
        }
    }
}

fn restart_rows(row: &mut impl FnMut(String, String), x: &Restart) {
    row(
        "restart: SIGTERM -> old process gone".into(),
        format!("{:.1} s", x.stop_seconds),
    );
    row(
        "**restart: new process -> every connection's next refresh scheduled**".into(),
        format!("**{:.1} s**", x.resync_seconds),
    );
    row(
        "**restart: token calls in the window (the schedule alone: ~n)**".into(),
        format!("**{} (~{:.0})**", x.token_calls, x.scheduled_calls),
    );
    row(
        "**restart: calls in the window that were not due (too early + old token)**".into(),
        format!("**{}**", x.unscheduled_calls),
    );
    row(
        "**restart: API writes in the window (the schedule alone: ~n)**".into(),
        format!("**{:.0} (~{:.0})**", x.writes, x.scheduled_writes),
    );
    row(
        "restart: API reads (GET+LIST) per connection".into(),
        format!("{:.3}", x.phase.reads_per_unit),
    );
    row(
        "restart: RSS of the new process once resynced".into(),
        format!("{:.1} MiB", x.rss_mib),
    );
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

impl Report {
    /// The figures as (label, value) rows; bold labels are the targets.
    fn rows(&self) -> Vec<(String, String)> {
        let p = &self.params;
        let mut r: Vec<(String, String)> = Vec::new();
        let mut row = |label: String, value: String| r.push((label, value));
        row(
            format!(
                "setup: create {} connections + bootstrap Secrets",
                p.connections
            ),
            format!("{:.1} s", self.setup_seconds),
        );
        if let Some(c) = &self.cold_start {
            row(
                format!("cold start: operator start -> all {} Ready", p.connections),
                format!("{:.1} s", c.seconds),
            );
            row(
                "cold start: API writes / reads per connection".into(),
                format!("{:.2} / {:.2}", c.writes_per_unit, c.reads_per_unit),
            );
            row(
                "cold start: operator CPU per connection".into(),
                format!("{:.2} ms", c.cpu_ms_per_unit),
            );
        }
        if let Some(st) = &self.steady {
            let f = &st.phase;
            let [p50, p99, max] = st.lateness_ms;
            row(
                format!("steady: refreshes (timed) in {:.0} s", f.seconds),
                format!("{} ({})", st.refreshes, st.timed_refreshes),
            );
            row(
                "**refreshes inside the window** (0 < remaining <= window)".into(),
                format!("**{:.2} %**", st.in_window_pct),
            );
            row("refreshes after expiry".into(), st.after_expiry.to_string());
            row(
                "lateness vs plan (refreshBefore - remaining) p50 / p99 / max".into(),
                format!("{p50:.0} / {p99:.0} / {max:.0} ms"),
            );
            row(
                "least access-token life left at a refresh".into(),
                format!("{:.0} ms", st.min_remaining_ms),
            );
            row(
                "**too-early calls**".into(),
                format!("**{}**", st.too_early),
            );
            row(
                "token calls per connection per token lifetime (per new token; ideal 1.00)".into(),
                format!("{:.3}", st.calls_per_refresh),
            );
            row(
                "connections refreshed (fewest refreshes of one)".into(),
                format!(
                    "{} / {} ({})",
                    st.connections_refreshed, p.connections, st.min_refreshes_per_connection
                ),
            );
            row(
                "**API writes per refresh**".into(),
                format!("**{:.2}**", f.writes_per_unit),
            );
            row(
                "API reads (GET+LIST) per refresh".into(),
                format!("{:.2}", f.reads_per_unit),
            );
            row(
                "WATCH / LIST requests in the phase".into(),
                format!("{:.0} / {:.0}", f.watches, f.lists),
            );
            row(
                "409 conflicts / 429+5xx answers in the phase".into(),
                format!("{:.0} / {:.0}", f.conflicts, f.overload_errors),
            );
            row(
                "reconciles per refresh".into(),
                opt(f.reconciles_per_unit, 2),
            );
            row(
                "**operator CPU per refresh**".into(),
                format!("**{:.3} ms**", f.cpu_ms_per_unit),
            );
            row(
                "kube-apiserver / etcd CPU per refresh".into(),
                format!(
                    "{} / {} ms",
                    opt(f.apiserver_cpu_ms_per_unit, 2),
                    opt(f.etcd_cpu_ms_per_unit, 2)
                ),
            );
            row(
                "operator RSS steady (mean / max; the largest replica)".into(),
                format!("{:.1} / {:.1} MiB", st.rss_mean_mib, st.rss_max_mib),
            );
            for (n, r) in st.replicas.iter().enumerate() {
                row(
                    format!("**replica {n}: share of granted refreshes**, CPU per own refresh, RSS mean / max"),
                    format!(
                        "**{:.1} %** ({:.0}), {:.3} ms, {:.1} / {:.1} MiB",
                        r.share_pct, r.granted_calls, r.cpu_ms_per_refresh, r.rss_mean_mib, r.rss_max_mib
                    ),
                );
            }
        }
        row(
            "**operator RSS peak (VmHWM)**".into(),
            format!("**{:.1} MiB**", self.rss_peak_mib),
        );
        if let Some(b) = &self.burst {
            let [p50, p99, max] = b.latency_ms;
            row(
                format!("burst: {} new connections applied in", b.connections),
                format!("{:.2} s", b.apply_seconds),
            );
            row(
                "burst: workload Secrets ready".into(),
                format!("{} / {}", b.ready, b.connections),
            );
            row(
                "**burst: apply -> workload Secret p50 / p99 / max**".into(),
                format!("**{p50:.0} / {p99:.0} / {max:.0} ms**"),
            );
            let [p50, p99, max] = b.ready_latency_ms;
            row(
                "burst: apply -> Ready in status p50 / p99 / max".into(),
                format!("{p50:.0} / {p99:.0} / {max:.0} ms"),
            );
            row(
                "burst: API writes / reads per new connection".into(),
                format!(
                    "{:.2} / {:.2}",
                    b.phase.writes_per_unit, b.phase.reads_per_unit
                ),
            );
            row(
                "burst: operator CPU per new connection".into(),
                format!("{:.2} ms", b.phase.cpu_ms_per_unit),
            );
            row(
                "burst: 409 conflicts / 429+5xx answers".into(),
                format!("{:.0} / {:.0}", b.phase.conflicts, b.phase.overload_errors),
            );
        }
        if let Some(x) = &self.restart {
            restart_rows(&mut row, x);
        }
        r
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut s = format!(
            "## exact-bench: {} connections, {} s tokens, {} s window, refreshBefore {:.2} s, \
             {} s steady, burst {}, {} foreign Secrets{}, {} operator replica(s){}\n\nMachine: {} CPUs, {:.0} GiB; kube-apiserver, etcd, \
             exact-sim and the operator share them; tree {}.\n\n| figure | value |\n| --- | --- |\n",
            p.connections,
            p.token_lifetime_s,
            p.window_s,
            p.refresh_before_s,
            p.duration_s,
            p.burst,
            p.foreign_secrets,
            p.restart_at_s
                .map(|s| format!(", restart at {s:.0} s"))
                .unwrap_or_default(),
            p.replicas,
            if p.operator_args.is_empty() {
                String::new()
            } else {
                format!(" with `{}`", p.operator_args.join(" "))
            },
            p.cpus,
            p.mem_gib,
            p.revision
        );
        for (label, value) in self.rows() {
            let _ = writeln!(s, "| {label} | {value} |");
        }
        let phases = [
            (
                "steady, per refresh",
                self.steady.as_ref().map(|s| &s.phase),
            ),
            ("cold start, per connection", self.cold_start.as_ref()),
            (
                "burst, per new connection",
                self.burst.as_ref().map(|b| &b.phase),
            ),
            (
                "restart window, per connection",
                self.restart.as_ref().map(|x| &x.phase),
            ),
        ];
        for (title, phase) in phases {
            let Some(f) = phase else { continue };
            let _ = write!(
                s,
                "\nAPI requests ({title}; apiserver_request_total):\n\n\
                 | verb | resource | count | per unit |\n| --- | --- | ---: | ---: |\n"
            );
            for r in &f.api {
                let res = match r.subresource.as_str() {
                    "" => r.resource.clone(),
                    sub => format!("{}/{sub}", r.resource),
                };
                let _ = writeln!(
                    s,
                    "| {} | {res} | {:.0} | {:.3} |",
                    r.verb, r.count, r.per_unit
                );
            }
            let _ = writeln!(
                s,
                "| (other resources: the API server's own loops) | | {:.0} | |",
                f.other_requests
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile::<f64>(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
