//! The token journal against the real binary, a real kube-apiserver and exact-sim: a
//! process killed after Exact rotated its refresh token but before the state Secret was
//! written loses nothing when its successor starts with the same journal directory (a
//! container restart in the same pod); without the journal (pod deleted) the chain is lost,
//! as before.

mod harness;
mod support;

use exact_sim::Faults;
use harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn_operator(ns: &str, pod: &str, journal: &Path, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_exact-operator"))
        .env("KUBECONFIG", support::operator_kubeconfig_path())
        .env("POD_NAME", pod)
        .env("RUST_LOG", "exact_operator=info")
        .args(["--namespace", ns, "--operator-namespace", ns])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-errors-per-hour",
            "1000",
        ])
        .arg("--journal-dir")
        .arg(journal)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn exact-operator")
}

fn testenv(cmd: &str, dir: &Path) {
    let status = Command::new(support::repo_path("scripts/testenv"))
        .arg(cmd)
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .expect("scripts/testenv");
    assert!(status.success(), "scripts/testenv {cmd} failed");
}

/// Restarts the API server even when the test fails half-way.
struct ApiServerDown(Option<PathBuf>);
impl Drop for ApiServerDown {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            testenv("apiserver-start", &dir);
        }
    }
}

/// Kills the operator while the rotated token exists only in its memory (and journal):
/// the claim is written, the API server goes away, Exact answers, the persist cannot
/// happen, SIGKILL. Returns the journal file that held the answer at the kill.
async fn kill_between_answer_and_persist(
    admin: &kube::Client,
    ns: &str,
    sim: &exact_sim::Sim,
    journal: &Path,
    log: &Path,
) -> bool {
    let dir = support::testenv_dir().expect("own control plane");
    let mut op = spawn_operator(ns, "op-a", journal, log);
    wait_reason(admin, ns, "acme", "TokenPublished", Duration::from_secs(60)).await;
    // Slow answers: the next refresh is in flight long enough to take the API server away.
    sim.set_faults(Faults {
        latency: Duration::from_secs(5),
        ..Faults::default()
    });
    let answered = sim.stats().totals.refresh_ok;
    support::wait_for(Duration::from_secs(30), || async {
        secret_data(admin, ns, "acme-exact-state")
            .await?
            .get("claim_holder")
            .map(|_| ())
    })
    .await
    .expect("a refresh claim is written");
    testenv("apiserver-stop", &dir);
    let down = ApiServerDown(Some(dir));
    support::wait_for(Duration::from_secs(30), || async {
        (sim.stats().totals.refresh_ok > answered).then_some(())
    })
    .await
    .expect("Exact rotated the token while the API server was down");
    let entry = journal.join(format!("{ns}_acme.json"));
    let journalled = support::wait_for(Duration::from_secs(10), || async {
        entry.exists().then_some(())
    })
    .await
    .is_some();
    let _ = op.kill();
    let _ = op.wait();
    sim.set_faults(Faults::default());
    drop(down); // the API server is back
    journalled
}

/// Both scenarios stop this binary's one API server, so they run one after the other.
#[tokio::test]
async fn a_sigkill_between_answer_and_persist_with_and_without_the_journal() {
    a_killed_process_loses_no_chain_when_its_successor_keeps_the_journal().await;
    without_the_journal_the_same_kill_loses_the_chain().await;
}

async fn a_killed_process_loses_no_chain_when_its_successor_keeps_the_journal() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let work = support::repo_path("target/tmp/journal").join(&ns);
    let journal = work.join("journal");
    std::fs::create_dir_all(&work).expect("work dir");
    let journalled =
        kill_between_answer_and_persist(&admin, &ns, &sim, &journal, &work.join("a.log")).await;
    assert!(journalled, "the answer was journalled before the kill");

    // The container restarts with the same journal directory.
    let mut op = spawn_operator(&ns, "op-b", &journal, &work.join("b.log"));
    let before = sim.stats().totals.refresh_ok;
    let refreshed = support::wait_for(Duration::from_secs(60), || async {
        (sim.stats().totals.refresh_ok >= before + 2).then_some(())
    })
    .await;
    let _ = op.kill();
    let _ = op.wait();
    let log = std::fs::read_to_string(work.join("b.log")).unwrap_or_default();
    assert!(
        refreshed.is_some(),
        "the chain goes on after the restart:\n{log}"
    );
    assert_eq!(
        sim.stats().totals.old_refresh_token_used,
        0,
        "no chain lost:\n{log}"
    );
    assert!(log.contains("persisted an answer"), "{log}");
    assert!(
        !journal.join(format!("{ns}_acme.json")).exists(),
        "the replayed entry is dropped"
    );
    let data = secret_data(&admin, &ns, "acme-exact-token")
        .await
        .expect("workload secret");
    assert!(sim.access_token_valid(&data["access_token"]));
    // The journal never leaks into logs.
    let state = secret_data(&admin, &ns, "acme-exact-state")
        .await
        .expect("state");
    let a_log = std::fs::read_to_string(work.join("a.log")).unwrap_or_default();
    for secret in [&state["refresh_token"], &data["access_token"]] {
        assert!(!log.contains(secret.as_str()) && !a_log.contains(secret.as_str()));
    }
}

async fn without_the_journal_the_same_kill_loses_the_chain() {
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    bootstrap_connection(&admin, &ns, &sim, "acme", serde_json::json!({})).await;
    let work = support::repo_path("target/tmp/journal").join(&ns);
    let journal = work.join("journal");
    std::fs::create_dir_all(&work).expect("work dir");
    kill_between_answer_and_persist(&admin, &ns, &sim, &journal, &work.join("a.log")).await;

    // The pod was deleted: its memory emptyDir, and the journal with it, are gone.
    std::fs::remove_dir_all(&journal).expect("journal removed");
    let mut op = spawn_operator(&ns, "op-b", &journal, &work.join("b.log"));
    wait_reason(
        &admin,
        &ns,
        "acme",
        "ReauthorizationRequired",
        Duration::from_secs(60),
    )
    .await;
    let _ = op.kill();
    let _ = op.wait();
    assert_eq!(sim.stats().totals.old_refresh_token_used, 1);
}
