//! `exact-sim` binary: runs the Exact Online simulator as a standalone process.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use exact_sim::{parse_duration, Faults, Sim, SimClient, SimConfig, SimDivision, SimUser};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Endpoints: GET /api/oauth2/auth[?user=NAME], POST /api/oauth2/auth/approve,
           POST /api/oauth2/token (client credentials in the body or HTTP Basic),
           GET /api/v1/current/Me[?$select=..], GET /api/v1/{division}/hrm/Divisions,
           GET /api/v1/{division}/system/Divisions,
           GET /api/v1/{division}/crm/Accounts[?$select=..&$top=N&$skiptoken=..]
Control:   GET /_sim/health, GET /_sim/stats, GET /_sim/token-valid?access_token=T,
           POST /_sim/seed {client_id,name,division?,refresh_token?,user?},
           GET /_sim/users[?all=true], POST /_sim/users/current-division {user,division},
           GET|PUT /_sim/faults {fault_500_ratio,latency_ms,empty_body_ratio,
           non_json_ratio,lost_response_ratio}, POST /_sim/advance {seconds|ms}
Durations: 500ms, 6s, 600s, 5m, 2h, 30d; a bare number is milliseconds (Exact: 3599999)
Logging:   RUST_LOG (default info) to stderr; token values are never logged.";

/// A faithful Exact Online OAuth 2.0 / REST simulator.
#[derive(Debug, Parser)]
#[command(name = "exact-sim", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8765", env = "EXACT_SIM_LISTEN")]
    listen: SocketAddr,

    /// Register a client as ID:SECRET or ID:SECRET:REDIRECT_URI (repeatable; the
    /// redirect may itself contain ':'). Without a redirect any redirect URI is accepted.
    #[arg(long = "client", value_name = "ID:SECRET[:REDIRECT]", value_parser = parse_client)]
    clients: Vec<SimClient>,

    /// Access-token lifetime (e.g. 600s, 6s, 500ms, 2h, 30d).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    access_token_lifetime: Duration,

    /// Refreshes are refused until at most this much access-token lifetime remains.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    refresh_window: Duration,

    /// Lifetime of an unused refresh token.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    refresh_token_lifetime: Duration,

    /// Lifetime of an authorization code.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    code_lifetime: Duration,

    /// Default CurrentDivision of new connections.
    #[arg(long, default_value_t = 123_456)]
    division: i64,

    /// Skip the consent page: /api/oauth2/auth redirects with a code immediately.
    #[arg(long)]
    auto_consent: bool,

    /// Pre-seed a connection with a KNOWN refresh token: CLIENT_ID:NAME:REFRESH_TOKEN
    /// (repeatable). The connection may be refreshed at once.
    #[arg(long = "seed", value_name = "CLIENT_ID:NAME:REFRESH_TOKEN", value_parser = parse_seed)]
    seeds: Vec<Seed>,

    /// A client with more than this many 4xx token answers in an hour is blocked (403)
    /// for the rest of that hour.
    #[arg(long, default_value_t = 10)]
    error_limit_per_hour: u32,

    /// Probability (0..1) that a token call gets a 500 Apigee fault (nothing consumed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    fault_500_ratio: f64,

    /// Extra delay before each token and Me request (e.g. 200ms).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,

    /// Probability (0..1) that a token call gets 200 with an empty body (nothing consumed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    empty_body_ratio: f64,

    /// Probability (0..1) that a token call gets 200 with an HTML body (nothing consumed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    non_json_ratio: f64,

    /// Probability (0..1) that a token call is processed (refresh token rotated!) but the
    /// connection is closed before any response is sent.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    lost_response_ratio: f64,

    /// REST calls allowed per minute per client and division.
    #[arg(long, default_value_t = 60)]
    rest_limit_per_minute: u32,

    /// REST calls allowed per day per client and division.
    #[arg(long, default_value_t = 5000)]
    rest_limit_per_day: u32,

    /// Serve HTTPS with a freshly generated self-signed certificate (written to
    /// --tls-cert-out, path printed on startup).
    #[arg(long)]
    tls: bool,

    /// Where to write the PEM certificate with --tls (default: a file in the temp dir).
    #[arg(long, value_name = "PATH", requires = "tls")]
    tls_cert_out: Option<PathBuf>,

    /// Register a user who can consent: NAME:DIV[=DESCRIPTION][,DIV...][:CURRENT]
    /// (repeatable), e.g. alice:100=Alice BV,200=Bakery:200. CURRENT defaults to the
    /// first division. Consents pick a user with ?user=NAME or on the consent page.
    #[arg(long = "user", value_name = "NAME:DIVS[:CURRENT]", value_parser = parse_user)]
    users: Vec<SimUser>,

    /// User who consents when the authorization request names none (default: a new
    /// anonymous user per consent).
    #[arg(long, value_name = "NAME")]
    default_user: Option<String>,

    /// A code exchange by a user revokes that user's older chains on the same client.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    revoke_on_reconsent: bool,

    /// Token calls allowed per user and client in a rolling 24 h (0 = no cap, no counting); beyond it
    /// the token endpoint answers 429.
    #[arg(long, default_value_t = 200)]
    token_calls_per_day: u32,

    /// crm/Accounts records in each division.
    #[arg(long, default_value_t = 100)]
    accounts_per_division: u32,

    /// Page size of REST collections (crm/Accounts); the rest follows via __next.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    page_size: u32,

    /// Webhook secret of a client: messages fired for its subscriptions
    /// (`POST /_sim/webhooks/fire`) are signed with it (repeatable).
    #[arg(long = "webhook-secret", value_name = "CLIENT_ID:SECRET", value_parser = parse_webhook_secret)]
    webhook_secrets: Vec<(String, String)>,

    /// Delay of the empty validation POST after a subscription is created (Exact: ~1 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    webhook_validation_delay: std::time::Duration,
}

fn parse_webhook_secret(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((c, k)) if !c.is_empty() && !k.is_empty() => Ok((c.to_string(), k.to_string())),
        _ => Err("expected CLIENT_ID:SECRET".to_string()),
    }
}

#[derive(Debug, Clone)]
struct Seed {
    client_id: String,
    name: String,
    token: String,
}

fn parse_client(s: &str) -> Result<SimClient, String> {
    let mut parts = s.splitn(3, ':');
    let id = parts.next().unwrap_or_default();
    let secret = parts.next().unwrap_or_default();
    if id.is_empty() || secret.is_empty() {
        return Err("expected ID:SECRET or ID:SECRET:REDIRECT_URI".to_string());
    }
    let mut c = SimClient::new(id, secret);
    if let Some(r) = parts.next().filter(|r| !r.is_empty()) {
        c = c.with_redirect(r);
    }
    Ok(c)
}

fn parse_seed(s: &str) -> Result<Seed, String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(n), Some(t)) if !c.is_empty() && !n.is_empty() && !t.is_empty() => {
            Ok(Seed {
                client_id: c.to_string(),
                name: n.to_string(),
                token: t.to_string(),
            })
        }
        _ => Err("expected CLIENT_ID:NAME:REFRESH_TOKEN".to_string()),
    }
}

fn parse_user(s: &str) -> Result<SimUser, String> {
    let mut parts = s.splitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let divs = parts.next().unwrap_or_default();
    if name.is_empty() || divs.is_empty() {
        return Err("expected NAME:DIV[=DESCRIPTION][,DIV...][:CURRENT]".to_string());
    }
    let mut user = SimUser::new(name);
    for item in divs.split(',') {
        let (code, description) = match item.split_once('=') {
            Some((c, d)) => (c, Some(d)),
            None => (item, None),
        };
        let code: i64 = code
            .trim()
            .parse()
            .map_err(|e| format!("division {code:?}: {e}"))?;
        let mut d = SimDivision::new(code);
        if let Some(desc) = description.filter(|d| !d.is_empty()) {
            d = d.with_description(desc);
        }
        user = user.with_division(d);
    }
    if let Some(current) = parts.next() {
        let current: i64 = current
            .trim()
            .parse()
            .map_err(|e| format!("current division {current:?}: {e}"))?;
        if !user.divisions.iter().any(|d| d.code == current) {
            return Err(format!(
                "current division {current} is not among the user's"
            ));
        }
        user = user.with_current_division(current);
    }
    Ok(user)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 1".to_string())
    }
}

/// Merges repeated `--client` flags for the same id (several redirect URIs).
fn merge_clients(list: Vec<SimClient>) -> Vec<SimClient> {
    let mut out: Vec<SimClient> = Vec::new();
    for c in list {
        match out.iter_mut().find(|o| o.id == c.id) {
            Some(o) => o.redirect_uris.extend(c.redirect_uris),
            None => out.push(c),
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let clients = merge_clients(cli.clients);
    for s in &cli.seeds {
        if !clients.iter().any(|c| c.id == s.client_id) {
            anyhow::bail!("--seed names unknown client {:?}", s.client_id);
        }
    }
    if let Some(d) = &cli.default_user {
        if !cli.users.iter().any(|u| &u.user_name == d) {
            anyhow::bail!("--default-user {d:?} is not defined by any --user");
        }
    }
    let cfg = SimConfig {
        access_token_lifetime: cli.access_token_lifetime,
        refresh_window: cli.refresh_window,
        refresh_token_lifetime: cli.refresh_token_lifetime,
        code_lifetime: cli.code_lifetime,
        clients,
        division: cli.division,
        auto_consent: cli.auto_consent,
        error_limit_per_hour: cli.error_limit_per_hour,
        faults: Faults {
            fault_500_ratio: cli.fault_500_ratio,
            latency: cli.latency,
            empty_body_ratio: cli.empty_body_ratio,
            non_json_ratio: cli.non_json_ratio,
            lost_response_ratio: cli.lost_response_ratio,
        },
        rest_limit_per_minute: cli.rest_limit_per_minute,
        rest_limit_per_day: cli.rest_limit_per_day,
        tls: cli.tls,
        users: cli.users,
        default_user: cli.default_user,
        revoke_on_reconsent: cli.revoke_on_reconsent,
        token_calls_per_day: cli.token_calls_per_day,
        accounts_per_division: cli.accounts_per_division,
        page_size: cli.page_size,
        webhook_secrets: cli.webhook_secrets,
        webhook_validation_delay: cli.webhook_validation_delay,
    };
    let sim = Sim::start(cfg, cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    for s in &cli.seeds {
        sim.seed_connection_with_token(&s.client_id, &s.name, &s.token, None);
    }
    let mut out = std::io::stdout().lock();
    if let Some(pem) = sim.cert_pem() {
        let path = cli.tls_cert_out.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("exact-sim-{}.pem", sim.addr().port()))
        });
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "exact-sim certificate: {}", path.display())?;
    }
    writeln!(out, "exact-sim listening on {}", sim.base_url())?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clients_seeds_and_ratios() {
        let c = parse_client("id:sec").unwrap();
        assert_eq!((c.id.as_str(), c.secret.as_str()), ("id", "sec"));
        assert!(c.redirect_uris.is_empty());
        let c = parse_client("id:sec:http://localhost:9/cb").unwrap();
        assert_eq!(c.redirect_uris, vec!["http://localhost:9/cb".to_string()]);
        assert!(parse_client("id").is_err());
        assert!(parse_client(":sec").is_err());
        let s = parse_seed("id:acme:tok").unwrap();
        assert_eq!(
            (s.client_id, s.name, s.token),
            ("id".into(), "acme".into(), "tok".into())
        );
        assert!(parse_seed("id:acme").is_err());
        let u = parse_user("alice:100=Alice BV,200:200").unwrap();
        assert_eq!(u.user_name, "alice");
        assert_eq!(u.divisions.len(), 2);
        assert_eq!(u.divisions[0].description, "Alice BV");
        assert_eq!(u.current_division, Some(200));
        assert!(parse_user("alice").is_err());
        assert!(parse_user("alice:x").is_err());
        assert!(
            parse_user("alice:1:2").is_err(),
            "current must be one of them"
        );
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("x").is_err());
    }

    #[test]
    fn merges_redirects_of_repeated_clients() {
        let merged = merge_clients(vec![
            parse_client("a:s:http://x/1").unwrap(),
            parse_client("a:s:http://x/2").unwrap(),
            parse_client("b:t").unwrap(),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].redirect_uris.len(), 2);
    }

    #[test]
    fn cli_definition_is_valid_and_parses_durations() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "exact-sim",
            "--listen",
            "127.0.0.1:0",
            "--client",
            "a:b",
            "--access-token-lifetime",
            "6s",
            "--refresh-token-lifetime",
            "30d",
            "--latency",
            "500ms",
        ])
        .unwrap();
        assert_eq!(cli.access_token_lifetime, Duration::from_secs(6));
        assert_eq!(cli.refresh_token_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(cli.latency, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["exact-sim", "--refresh-window", "5y"]).is_err());
    }
}
