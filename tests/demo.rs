//! README's first command, `scripts/demo`, run for a bounded time exactly as a new user runs
//! it (own control plane, exact-sim, the operator, examples/demo): both connections publish
//! tokens, they are refreshed without an old-token use, and the webhook event the demo fires
//! in the simulator reaches the demo's receiver. Uses the binaries `cargo test` built
//! (`DEMO_NO_BUILD=1`: a nested cargo would wait on this run's build lock).

use std::process::Command;

#[test]
fn the_demo_publishes_refreshes_and_delivers_a_webhook() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("timeout")
        .arg("300")
        .arg(format!("{root}/scripts/demo"))
        .env("DEMO_SECONDS", "50")
        .env("DEMO_NO_BUILD", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("scripts/demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/demo failed: {all}");
    for name in ["acme-exact-token", "globex-exact-api"] {
        assert!(
            stdout.contains(name),
            "workload Secret {name} never listed: {all}"
        );
    }
    assert!(
        stdout.contains("fired a signed Accounts event"),
        "no webhook fired: {all}"
    );
    assert!(
        stdout.contains("webhook messages delivered to the receiver: 1"),
        "the webhook message never reached the receiver: {all}"
    );
    let stats = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("exact-sim: "))
        .unwrap_or_else(|| panic!("no simulator stats: {all}"));
    let figure = |key: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing in {stats}"))
    };
    assert!(figure("refreshes") >= 2, "no refreshes: {stats}");
    assert_eq!(figure("too_early"), 0, "{stats}");
    assert_eq!(figure("old_token_used"), 0, "{stats}");
}
