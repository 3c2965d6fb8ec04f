//! The `exact-sim` binary: prints its address, honours --seed and flags.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_address_and_serves_seeded_connection() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_exact-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--client",
                "cid:csecret",
                "--seed",
                "cid:demo:known-refresh-token",
                "--access-token-lifetime",
                "6s",
                "--division",
                "31337",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exact-sim"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("exact-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"));

    let c = reqwest::Client::new();
    let body: serde_json::Value = c
        .post(format!("{base}/api/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "known-refresh-token"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], "6");
    let access = body["access_token"].as_str().unwrap();
    let me: serde_json::Value = c
        .get(format!("{base}/api/v1/current/Me"))
        .bearer_auth(access)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 31337);

    // Token values never appear in the logs.
    let _ = child.0.kill();
    let out = child.0.wait_with_output_stderr();
    assert!(out.contains("demo"), "logs name the connection: {out}");
    assert!(!out.contains("known-refresh-token") && !out.contains(access));
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_exact-sim"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--client",
        "--access-token-lifetime",
        "--refresh-window",
        "--refresh-token-lifetime",
        "--code-lifetime",
        "--division",
        "--auto-consent",
        "--seed",
        "--error-limit-per-hour",
        "--fault-500-ratio",
        "--latency",
        "--empty-body-ratio",
        "--non-json-ratio",
        "--lost-response-ratio",
        "--rest-limit-per-minute",
        "--rest-limit-per-day",
        "--tls",
        "--user",
        "--default-user",
        "--revoke-on-reconsent",
        "--token-calls-per-day",
        "--accounts-per-division",
        "--page-size",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn binary_users_auto_consent_and_divisions() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_exact-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--client",
                "cid:csecret",
                "--auto-consent",
                "--user",
                "dana:5=Dana BV,6:6",
                "--default-user",
                "dana",
                "--accounts-per-division",
                "3",
                "--page-size",
                "2",
                "--revoke-on-reconsent",
                "false",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exact-sim"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("exact-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let resp = c
            .get(format!("{base}/api/oauth2/auth"))
            .query(&[
                ("client_id", "cid"),
                ("redirect_uri", "http://localhost/cb"),
                ("response_type", "code"),
            ])
            .send()
            .await
            .unwrap();
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let code = url::Url::parse(&loc)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let body: serde_json::Value = c
            .post(format!("{base}/api/oauth2/token"))
            .basic_auth("cid", Some("csecret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", "http://localhost/cb"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_string());
    }
    // Two consents of dana, revocation switched off: both access tokens still work.
    for t in &tokens {
        let me: serde_json::Value = c
            .get(format!("{base}/api/v1/current/Me"))
            .bearer_auth(t)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["d"]["results"][0]["CurrentDivision"], 6);
    }
    let page: serde_json::Value = c
        .get(format!("{base}/api/v1/5/crm/Accounts"))
        .bearer_auth(&tokens[0])
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["d"]["results"].as_array().unwrap().len(), 2);
    assert!(page["d"]["__next"].is_string());
    let users: serde_json::Value = c
        .get(format!("{base}/_sim/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"][0]["divisions"][0]["description"], "Dana BV");
    assert_eq!(users["users"][0]["clients"]["cid"]["token_calls_24h"], 2);
}

#[test]
fn unknown_default_user_is_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_exact-sim"))
        .args(["--listen", "127.0.0.1:0", "--default-user", "ghost"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
}

#[test]
fn bad_flags_are_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_exact-sim"))
        .args(["--refresh-window", "soon"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}

trait StderrOutput {
    fn wait_with_output_stderr(&mut self) -> String;
}

impl StderrOutput for std::process::Child {
    fn wait_with_output_stderr(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}
