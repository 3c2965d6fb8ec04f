//! The command line of `kubectl exact` and the dispatch to each command.

use super::cluster::{Session, Target};
use super::{authorize, inspect, note, refresh, snippet, status, Error, Format, EXIT_ERROR};
use crate::duration::parse_duration;
use clap::{Parser, Subcommand};
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for status: every listed connection is Ready, or there are none)
  1  a connection is not Ready, or ended in a failure reason
  2  command-line usage error
  3  timed out waiting
  4  error: not found, no access, cluster unreachable, bad kubeconfig";

/// kubectl plugin for exact-operator: see, authorize and nudge ExactConnections.
///
/// Install `kubectl-exact` on your PATH (e.g. `cargo install --path .`) and run it as
/// `kubectl exact ...`. It uses your kubeconfig like kubectl does and never shows a Secret value.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-exact",
    bin_name = "kubectl exact",
    version,
    after_help = EXIT_CODES,
)]
pub struct Cli {
    /// Connection and namespace flags, shared by every command.
    #[command(flatten)]
    pub target: Target,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List ExactConnections with their Ready state and token timing.
    #[command(after_help = "\
Examples:
  # Connections of the current namespace
  kubectl exact status

  # All namespaces, as JSON
  kubectl exact status -A -o json

  # Fail a script when any connection is not Ready
  kubectl exact status -n finance || alert 'Exact connection down'

Exits 1 when any listed connection is not Ready, 0 otherwise (also when there are none).")]
    Status {
        /// List connections of every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show where to authorize a connection, then wait until it is Ready.
    #[command(after_help = "\
Prints status.authorizationUrl, the operator-served page where a person signs in to Exact Online
and consents. When there is none, it says why (already Ready, bootstrapped from a refresh-token
Secret, or the operator has no public URL configured). Then it waits until the connection is Ready
(exit 0), fails with ReauthorizationRequired, InvalidClient, ClientNotReady, ClientNotAllowed,
TargetSecretConflict or InvalidSpec (exit 1), or the timeout passes (exit 3).

Examples:
  # Print the URL and wait up to 10 minutes
  kubectl exact authorize acme -n finance

  # Open it in the browser too, wait up to 30 minutes
  kubectl exact authorize acme --open --timeout 30m

  # Replace the consent of a connection that works (e.g. hand it to another Exact user)
  kubectl exact authorize acme --force

The link carries a single-use ticket that expires within 30 minutes; it is shown only to
those allowed to read the connection, so share it only with the person who consents.")]
    Authorize {
        /// Name of the ExactConnection.
        connection: String,
        /// Open the URL with xdg-open (Linux) or open (macOS).
        #[arg(long)]
        open: bool,
        /// Ask for a link although the connection works (replace its consent, e.g. by
        /// another Exact user): sets the exact-operator.io/reauthorize-requested-at
        /// annotation, which needs `patch` rights on the connection.
        #[arg(long)]
        force: bool,
        /// How long to wait for the connection to become Ready ("90s", "10m", "1h").
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        timeout: Duration,
    },
    /// Show a connection's spec, client, status, conditions, Events and Secret keys.
    #[command(after_help = "\
Secrets are shown by their keys only; values (tokens) are never read into the output.

Examples:
  kubectl exact inspect acme -n finance
  kubectl exact inspect acme -o yaml")]
    Inspect {
        /// Name of the ExactConnection.
        connection: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: ReportFormat,
    },
    /// Ask the operator to look at a connection now, and report what it did.
    #[command(after_help = "\
Sets the annotation exact-operator.io/refresh-requested-at to the current time. The operator then
re-reads the bootstrap Secret (importing it only if its value changed), restores the managed
Secrets, and refreshes the token if one is due. It never forces a token call: Exact accepts a
refresh only in the last 30 seconds of a token's life, and the operator alone decides when to
call. This command never talks to Exact itself. Once the operator echoes the request in
status.handledRefreshRequest, it prints Ready, the refresh times and whether the token changed.

Examples:
  kubectl exact refresh acme -n finance
  kubectl exact refresh acme --wait 0s     # just set the annotation")]
    Refresh {
        /// Name of the ExactConnection.
        connection: String,
        /// How long to wait for the operator to handle the request ("0s": do not wait).
        #[arg(long, default_value = "30s", value_parser = parse_wait)]
        wait: Duration,
    },
    /// Print YAML for a workload that reads the connection's token via the agent sidecar.
    #[command(after_help = "\
Prints a ServiceAccount, a Role that may get/list/watch only the connection's token Secret, its
RoleBinding, and a Deployment whose native sidecar (an initContainer with restartPolicy: Always,
Kubernetes 1.29+) runs `exact-operator agent --secret <secret> --dir /var/run/exact` and shares
the token files with the app container through an in-memory emptyDir.

With --mount it prints instead a Deployment that mounts the token Secret as a volume, its pods
labelled exact-operator.io/refresh-mounts=<secret> so an operator running with
--nudge-mounting-pods (chart value nudgeMountingPods) refreshes the volume right after each
token publish; without that the kubelet delivers the new token only at its next resync,
60-90 s later, while Exact keeps the old one only 25 s.

Examples:
  kubectl exact snippet acme -n finance > acme-app.yaml
  kubectl exact snippet acme --image registry.local/exact-operator:v0.1.0 --app invoicing
  kubectl exact snippet acme --mount")]
    Snippet {
        /// Name of the ExactConnection.
        connection: String,
        /// Image of the agent sidecar.
        #[arg(long, value_name = "IMAGE", default_value = snippet::DEFAULT_IMAGE)]
        image: String,
        /// Name of the Deployment and ServiceAccount (default: <connection>-app).
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        /// Mount the token Secret as a volume (with the pod-nudge opt-in label) instead of
        /// running the agent sidecar.
        #[arg(long)]
        mount: bool,
    },
}

/// Output format of `inspect`: like [`Format`], with "text" instead of "table".
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Human-readable text.
    Text,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts and people.
    Yaml,
}

impl From<ReportFormat> for Format {
    fn from(f: ReportFormat) -> Format {
        match f {
            ReportFormat::Text => Format::Table,
            ReportFormat::Json => Format::Json,
            ReportFormat::Yaml => Format::Yaml,
        }
    }
}

/// Parses a wait/timeout flag ("30s", "10m", "1h30m", "0s").
pub fn parse_wait(input: &str) -> Result<Duration, String> {
    parse_duration(input).map_err(|e| e.to_string())
}

/// Runs the parsed command; returns the process exit code. Errors are printed here.
pub async fn run(cli: Cli) -> u8 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            note(&format!("error: {e}"));
            EXIT_ERROR
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Error> {
    let session = Session::connect(&cli.target).await?;
    match cli.command {
        Command::Status {
            all_namespaces,
            output,
        } => status::run(&session, all_namespaces, output).await,
        Command::Authorize {
            connection,
            open,
            force,
            timeout,
        } => {
            if force {
                authorize::run_forced(&session, &connection, open, timeout).await
            } else {
                authorize::run(&session, &connection, open, timeout).await
            }
        }
        Command::Inspect { connection, output } => {
            inspect::run(&session, &connection, output.into()).await
        }
        Command::Refresh { connection, wait } => refresh::run(&session, &connection, wait).await,
        Command::Snippet {
            connection,
            image,
            app,
            mount,
        } => snippet::run(&session, &connection, image, app, mount).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli =
            Cli::try_parse_from(["kubectl-exact", "status", "-A", "-o", "json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Status {
                all_namespaces: true,
                output: Format::Json
            }
        ));
        let cli = Cli::try_parse_from([
            "kubectl-exact",
            "-n",
            "x",
            "authorize",
            "acme",
            "--timeout",
            "90s",
        ])
        .expect("parses");
        assert_eq!(cli.target.namespace.as_deref(), Some("x"));
        assert!(
            matches!(cli.command, Command::Authorize { timeout, .. } if timeout == Duration::from_secs(90))
        );
        let cli = Cli::try_parse_from([
            "kubectl-exact",
            "refresh",
            "acme",
            "--wait",
            "0s",
            "--namespace",
            "y",
        ])
        .expect("global flags after the subcommand");
        assert_eq!(cli.target.namespace.as_deref(), Some("y"));
        assert!(matches!(cli.command, Command::Refresh { wait, .. } if wait.is_zero()));
        let cli = Cli::try_parse_from(["kubectl-exact", "inspect", "acme", "-o", "text"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Inspect {
                output: ReportFormat::Text,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["kubectl-exact", "status", "-A", "-n", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["kubectl-exact", "refresh", "acme", "--wait", "soon"]).is_err()
        );
    }
}
