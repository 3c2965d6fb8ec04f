//! `kubectl-exact`: the kubectl plugin (`kubectl exact status|authorize|inspect|refresh|snippet`).
//! Thin entry point; the logic lives in `exact_operator::plugin`.

use clap::Parser;
use exact_operator::plugin::cli::{run, Cli};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(cli).await)
}
