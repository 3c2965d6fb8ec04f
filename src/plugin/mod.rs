//! `kubectl exact`: a kubectl plugin to look at and nudge ExactConnections.
//!
//! The binary `kubectl-exact` (src/bin/kubectl-exact.rs) only parses the command line with
//! [`cli::Cli`] and calls [`cli::run`]; each subcommand lives in its own module here.
//! Nothing in this plugin ever prints a Secret value: Secrets are shown by their keys only.

pub mod authorize;
pub mod cli;
pub mod cluster;
pub mod events;
pub mod inspect;
pub mod inspect_report;
pub mod inspect_text;
pub mod progress;
pub mod refresh;
pub mod snippet;
pub mod status;
pub mod table;
pub mod webhooks;

use std::io::Write;
use thiserror::Error;

/// Exit code: success (all listed connections Ready, the wait ended Ready, ...).
pub const EXIT_OK: u8 = 0;
/// Exit code: a connection is not Ready, or ended in a failure reason.
pub const EXIT_NOT_READY: u8 = 1;
/// Exit code: command-line usage error (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the wait timed out before anything conclusive happened.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit code: the command could not do its job (not found, API unreachable, bad kubeconfig).
pub const EXIT_ERROR: u8 = 4;

/// Everything that stops a command from doing its job.
#[derive(Debug, Error)]
pub enum Error {
    /// A named object does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Kind, e.g. ExactConnection.
        kind: &'static str,
        /// Namespace looked in.
        namespace: String,
        /// Name looked for.
        name: String,
    },
    /// The CRDs are not installed in the cluster.
    #[error("the ExactConnection CRD is not installed in this cluster (install it with `kubectl apply --server-side -f crds/`)")]
    CrdMissing,
    /// No usable kubeconfig.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error("{action}: {}", cluster::describe(.source))]
    Kube {
        /// What the plugin was doing, e.g. "listing ExactConnections in team-a".
        action: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// A flag value that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Rendering JSON or YAML failed.
    #[error("cannot render output: {0}")]
    Render(String),
}

impl Error {
    /// Wraps a kube error with what was being done.
    pub fn kube(action: impl Into<String>, source: ::kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}

/// Output format of commands that support `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable table or text.
    #[default]
    #[value(alias = "text")]
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts and people.
    Yaml,
}

/// Serializes `value` as pretty JSON or YAML (for [`Format::Table`] use the command's own
/// rendering instead).
pub fn render_data<T: serde::Serialize>(value: &T, format: Format) -> Result<String, Error> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Render(e.to_string())),
        Format::Yaml | Format::Table => {
            serde_yaml::to_string(value).map_err(|e| Error::Render(e.to_string()))
        }
    }
}

/// Writes to stdout; a closed pipe (`kubectl exact status | head -1`) is not an error.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes a line to stderr (progress, hints, "No ExactConnections found").
pub fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}
