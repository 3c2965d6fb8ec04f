//! The token journal against the real binary, a real kube-apiserver and exact-sim: a
//! process killed after Exact rotated its refresh token but before the state Secret was
//! written loses nothing when its successor starts with the same journal directory (a
//! container restart in the same pod); without the journal (pod deleted) the chain is lost,
//! as before.

mod harness;
mod support;

use exact_operator::journal::{read_record, Entitlement, Entry, Intent, Record};
use exact_operator::state::{digest, ConnectionState};
use exact_sim::Faults;
use harness::*;
use secrecy::SecretString;
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
    // The file holds the call's intent until the answer replaces it.
    let entry = journal.join(format!("{ns}_acme.json"));
    let journalled = support::wait_for(Duration::from_secs(10), || async {
        matches!(read_record(&entry), Ok(Record::Answer(_))).then_some(())
    })
    .await
    .is_some();
    let _ = op.kill();
    let _ = op.wait();
    sim.set_faults(Faults::default());
    drop(down); // the API server is back
    journalled
}

/// The API server this binary's tests share: the scenarios that stop it hold it alone, the
/// other tests hold it together (they would fail on a stopped API server in between).
static API_SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Both scenarios stop this binary's one API server, so they run one after the other.
#[tokio::test]
async fn a_sigkill_between_answer_and_persist_with_and_without_the_journal() {
    let _alone = API_SERVER.write().await;
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

/// An entry as the operator would journal it, for `connection` in `namespace`.
fn planted_entry(
    namespace: &str,
    connection: &str,
    refresh_token: &str,
    entitlement: Entitlement,
) -> Entry {
    let state = ConnectionState {
        refresh_token: Some(SecretString::from(refresh_token)),
        access_token: Some(SecretString::from(format!("{refresh_token}-access"))),
        ..ConnectionState::default()
    };
    Entry::new(namespace, connection, &state, entitlement)
}

fn write_json(path: &Path, entry: &Entry) -> Vec<u8> {
    let bytes = Record::Answer(entry.clone())
        .to_bytes()
        .expect("entry json");
    std::fs::write(path, &bytes).expect("plant entry");
    bytes
}

/// A journal left with every kind of entry that cannot or must not be replayed: the operator
/// starts, reports each (the unreadable ones set aside as `.bad`, never their content), and
/// leaves the stored chains alone.
#[tokio::test]
async fn the_operator_starts_past_corrupt_foreign_expired_and_superseded_entries() {
    let _shared = API_SERVER.read().await;
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    for name in ["acme", "beta"] {
        bootstrap_connection(&admin, &ns, &sim, name, serde_json::json!({})).await;
    }
    let work = support::repo_path("target/tmp/journal").join(&ns);
    let journal = work.join("journal");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut op = spawn_operator(&ns, "op-a", &journal, &work.join("a.log"));
    for name in ["acme", "beta"] {
        wait_reason(&admin, &ns, name, "TokenPublished", Duration::from_secs(60)).await;
    }
    // A graceful stop settles everything in flight: the journal is empty after it.
    let _ = Command::new("kill")
        .args(["-TERM", &op.id().to_string()])
        .status();
    let _ = op.wait();
    let stored = |name: &'static str| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            secret_data(&admin, &ns, &format!("{name}-exact-state"))
                .await
                .and_then(|d| d.get("refresh_token").cloned())
                .expect("stored refresh token")
        }
    };
    let (acme_rt, beta_rt) = (stored("acme").await, stored("beta").await);
    let secret = |what: &str| format!("PLANTED-SECRET-{what}-0123456789abcdef");

    // Cut short: the first half of a real entry.
    let truncated = Record::Answer(planted_entry(
        &ns,
        "trunc",
        &secret("truncated"),
        Entitlement::Consent { supersede: true },
    ))
    .to_bytes()
    .expect("json");
    std::fs::write(
        journal.join(format!("{ns}_trunc.json")),
        &truncated[..truncated.len() / 2],
    )
    .expect("plant");
    // Not JSON at all.
    let mut garbage = vec![0xff, 0x00, 0x13];
    garbage.extend(secret("garbage").bytes());
    std::fs::write(journal.join(format!("{ns}_garbage.json")), garbage).expect("plant");
    // JSON of the wrong shape: serde's own message would quote the value.
    std::fs::write(
        journal.join(format!("{ns}_shape.json")),
        format!("{{\"v\": \"{}\"}}", secret("shape")),
    )
    .expect("plant");
    // Another version of the format.
    let mut future = planted_entry(
        &ns,
        "future",
        &secret("future"),
        Entitlement::Consent { supersede: true },
    );
    future.v = exact_operator::journal::VERSION + 1;
    write_json(&journal.join(format!("{ns}_future.json")), &future);
    // Foreign: a file named for one connection holding another namespace's entry.
    write_json(
        &journal.join(format!("{ns}_gamma.json")),
        &planted_entry(
            "elsewhere",
            "gamma",
            &secret("foreign"),
            Entitlement::Consent { supersede: true },
        ),
    );
    // A connection that does not exist (any more).
    write_json(
        &journal.join(format!("{ns}_ghost.json")),
        &planted_entry(
            &ns,
            "ghost",
            &secret("ghost"),
            Entitlement::Consent { supersede: true },
        ),
    );
    // Expired: would replace acme's chain (it consumed the stored token), but is older
    // than the refresh-token lifetime.
    let mut expired = planted_entry(
        &ns,
        "acme",
        &secret("expired"),
        Entitlement::SameChain {
            consumed: digest(&acme_rt),
        },
    );
    expired.received_at = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(31 * 24))
        .expect("a month ago");
    write_json(&journal.join(format!("{ns}_acme.json")), &expired);
    // Superseded: the answer of a call that consumed a token beta no longer stores.
    write_json(
        &journal.join(format!("{ns}_beta.json")),
        &planted_entry(
            &ns,
            "beta",
            &secret("superseded"),
            Entitlement::SameChain {
                consumed: digest("a token beta stored long ago"),
            },
        ),
    );
    // A write that never completed.
    std::fs::write(journal.join(format!("{ns}_torn.json.tmp")), b"{\"v\":1,").expect("plant");

    let before = sim.stats();
    let mut op = spawn_operator(&ns, "op-b", &journal, &work.join("b.log"));
    let refreshed = support::wait_for(Duration::from_secs(60), || async {
        let now = sim.stats();
        ["acme", "beta"]
            .iter()
            .all(|n| {
                let ok = |s: &exact_sim::Stats| {
                    s.connections.get(*n).map_or(0, |c| c.counters.refresh_ok)
                };
                ok(&now) >= ok(&before) + 2
            })
            .then_some(())
    })
    .await;
    let still_running = matches!(op.try_wait(), Ok(None));
    let _ = op.kill();
    let _ = op.wait();
    let log = std::fs::read_to_string(work.join("b.log")).unwrap_or_default();
    assert!(still_running, "the operator kept running:\n{log}");
    assert!(
        refreshed.is_some(),
        "both chains go on past the planted entries:\n{log}"
    );
    assert_eq!(sim.stats().totals.old_refresh_token_used, 0, "{log}");
    for name in ["acme", "beta"] {
        let (status, reason, _) = ready_of(&admin, &ns, name).await.expect("ready");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "TokenPublished")
        );
        let rt = stored(name).await;
        assert!(
            !rt.starts_with("PLANTED"),
            "{name}'s chain was not replaced"
        );
    }
    assert_ne!(
        stored("acme").await,
        acme_rt,
        "acme refreshed on its own chain"
    );
    assert_ne!(
        stored("beta").await,
        beta_rt,
        "beta refreshed on its own chain"
    );

    // serde's messages quote unexpected values: the reports must not.
    assert!(
        !log.contains("PLANTED-SECRET"),
        "no journal content in the log:\n{log}"
    );
    // Each unreadable or foreign file reported once and set aside; nothing left to replay.
    let set_aside = log.matches("unreadable entry set aside").count();
    assert_eq!(
        set_aside, 5,
        "truncated, garbage, wrong shape, version, foreign:\n{log}"
    );
    for name in ["trunc", "garbage", "shape", "future", "gamma"] {
        assert!(
            journal.join(format!("{ns}_{name}.bad")).exists(),
            "{name} set aside"
        );
    }
    for why in [
        "cut short (truncated)",
        "not JSON",
        "JSON, but not a journal entry",
        "another version or for another file name",
        "older than the refresh-token lifetime",
        "superseded",
    ] {
        assert!(log.contains(why), "reported: {why}\n{log}");
    }
    assert!(
        log.contains("the connection is gone; entry dropped"),
        "ghost reported:\n{log}"
    );
    // The real chains keep refreshing, and each refresh holds an entry for a few
    // milliseconds: what must hold is that the listing is empty between refreshes.
    let listing = || -> Vec<String> {
        std::fs::read_dir(&journal)
            .expect("journal dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".bad"))
            .collect()
    };
    let mut left = listing();
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = listing();
    }
    assert!(left.is_empty(), "nothing left to replay: {left:?}");
}

async fn events_on(admin: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
        .collect()
}

/// A journal left with the intent of a refresh whose process died during the token call
/// (planted, as a SIGKILL in flight leaves it): the successor drops it, tells it in a
/// `RefreshInterrupted` Event, and the chain goes on where Exact never saw the call (acme),
/// or, where Exact had rotated it (beta), the dead chain's status names the lost response.
#[tokio::test]
async fn an_intent_left_by_a_death_in_flight_is_told_and_explains_a_lost_chain() {
    let _shared = API_SERVER.read().await;
    let TestEnv { admin, ns, sim } = test_env(fast_sim(), serde_json::json!({})).await;
    for name in ["acme", "beta", "gone"] {
        bootstrap_connection(&admin, &ns, &sim, name, serde_json::json!({})).await;
    }
    let work = support::repo_path("target/tmp/journal").join(&ns);
    let journal = work.join("journal");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut op = spawn_operator(&ns, "op-a", &journal, &work.join("a.log"));
    for name in ["acme", "beta", "gone"] {
        wait_reason(&admin, &ns, name, "TokenPublished", Duration::from_secs(60)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &op.id().to_string()])
        .status();
    let _ = op.wait();
    let stored = |name: &'static str| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            secret_data(&admin, &ns, &format!("{name}-exact-state"))
                .await
                .and_then(|d| d.get("refresh_token").cloned())
                .expect("stored refresh token")
        }
    };
    let dead_holder = "op-a-deadbeef";
    let plant = |name: &str, chain: &str| {
        let intent = Intent::new(&ns, name, &digest(chain), dead_holder);
        let bytes = Record::Intent(intent).to_bytes().expect("json");
        std::fs::write(journal.join(format!("{ns}_{name}.json")), bytes).expect("plant");
    };
    let (acme_rt, beta_rt) = (stored("acme").await, stored("beta").await);
    plant("acme", &acme_rt);
    plant("beta", &beta_rt);
    // Superseded: an intent for a token "gone" no longer stores.
    plant("gone", "a refresh token gone stored long ago");
    // Exact processed beta's interrupted call: its chain rotated, the answer died. (Once
    // Exact's refresh window is open: an early call would be refused.)
    let allowed = secret_data(&admin, &ns, "beta-exact-state")
        .await
        .and_then(|d| {
            d.get("refresh_allowed_from")?
                .parse::<jiff::Timestamp>()
                .ok()
        })
        .expect("refresh_allowed_from");
    let wait = jiff::Timestamp::now().duration_until(allowed);
    if wait.is_positive() {
        tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    }
    rotate_out_of_band(&sim, &beta_rt).await;

    let before = sim.stats();
    let mut op = spawn_operator(&ns, "op-b", &journal, &work.join("b.log"));
    let (_, _, beta_message) = wait_reason(
        &admin,
        &ns,
        "beta",
        "ReauthorizationRequired",
        Duration::from_secs(60),
    )
    .await;
    let acme_on = support::wait_for(Duration::from_secs(60), || async {
        let ok = |s: &exact_sim::Stats| {
            s.connections
                .get("acme")
                .map_or(0, |c| c.counters.refresh_ok)
        };
        (ok(&sim.stats()) > ok(&before)).then_some(())
    })
    .await;
    let acme_events = events_on(&admin, &ns, "acme").await;
    let beta_events = events_on(&admin, &ns, "beta").await;
    let gone_events = events_on(&admin, &ns, "gone").await;
    let _ = op.kill();
    let _ = op.wait();
    let log = std::fs::read_to_string(work.join("b.log")).unwrap_or_default();

    assert!(acme_on.is_some(), "acme's chain goes on:\n{log}");
    assert_eq!(
        ready_of(&admin, &ns, "acme").await.map(|r| r.1).as_deref(),
        Some("TokenPublished")
    );
    assert_ne!(
        stored("acme").await,
        acme_rt,
        "acme refreshed on its own chain"
    );
    assert!(
        beta_message.contains("lost to a process death during the token call")
            && beta_message.contains(dead_holder),
        "beta's status names the lost response: {beta_message}"
    );
    for (name, events) in [("acme", &acme_events), ("beta", &beta_events)] {
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "RefreshInterrupted" && n.contains(dead_holder)),
            "{name}: RefreshInterrupted event: {events:?}"
        );
    }
    assert!(
        !gone_events.iter().any(|(r, _)| r == "RefreshInterrupted"),
        "a superseded intent is no interruption: {gone_events:?}"
    );
    assert_eq!(
        log.matches("refresh interrupted: the previous process died")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("superseded: the stored chain is not the one the interrupted call spent"),
        "{log}"
    );
    assert_eq!(sim.stats().totals.old_refresh_token_used, 1, "only beta's");
    for secret in [&acme_rt, &beta_rt] {
        assert!(!log.contains(secret.as_str()), "no token in the log");
    }
    let left: Vec<String> = std::fs::read_dir(&journal)
        .expect("journal dir")
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            matches!(read_record(&path), Ok(Record::Intent(i)) if i.holder == dead_holder)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    assert!(left.is_empty(), "planted intents dropped: {left:?}");
}
