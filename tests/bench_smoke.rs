//! A tiny run of the scale benchmark (`exact-bench`, see BENCHMARKS.md) against the real
//! control plane: 20 connections, 10 s tokens with a 3 s window, one minute of steady
//! refreshing, then a burst of 10 new connections. Asserts the key figures are sane.

mod support;

use exact_sim::{Sim, SimConfig};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const CONNECTIONS: u64 = 20;
const BURST: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_benchmark_refreshes_every_connection_inside_the_window() {
    let kubeconfig = support::kubeconfig_path();
    let cfg = SimConfig {
        access_token_lifetime: Duration::from_secs(10),
        refresh_window: Duration::from_secs(3),
        ..SimConfig::default()
    }
    .with_client("bench", "bench-secret");
    let sim = Sim::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start sim");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let json = dir.join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_exact-bench"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--sim-url", &sim.base_url()])
        .args(["--operator", env!("CARGO_BIN_EXE_exact-operator")])
        .args(["--connections", &CONNECTIONS.to_string()])
        .args([
            "--token-lifetime",
            "10s",
            "--window",
            "3s",
            "--duration",
            "60s",
        ])
        .args(["--burst", &BURST.to_string(), "--burst-timeout", "60s"])
        .args(["--cold-start-timeout", "120s"])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .expect("run exact-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exact-bench failed: {}", out.status);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("report"))
        .expect("report JSON");
    let steady = &r["steady"];
    assert_eq!(steady["in_window_pct"].as_f64(), Some(100.0), "{steady:#}");
    assert_eq!(steady["after_expiry"].as_u64(), Some(0), "{steady:#}");
    assert_eq!(steady["too_early"].as_u64(), Some(0), "{steady:#}");
    assert_eq!(steady["connections_refreshed"].as_u64(), Some(CONNECTIONS));
    // 60 s of 7.5 s cycles: every connection refreshes several times.
    assert!(
        steady["min_refreshes_per_connection"].as_u64() >= Some(5),
        "{steady:#}"
    );
    assert_eq!(
        steady["calls_per_refresh"].as_f64(),
        Some(1.0),
        "{steady:#}"
    );
    assert!(steady["phase"]["writes_per_unit"].as_f64() > Some(0.0));
    assert!(r["cold_start"]["seconds"].as_f64() > Some(0.0));
    assert_eq!(
        r["burst"]["ready"].as_u64(),
        Some(BURST),
        "{:#}",
        r["burst"]
    );
    assert!(r["rss_peak_mib"].as_f64() > Some(0.0));
    assert!(stdout.contains("refreshes inside the window"));
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
