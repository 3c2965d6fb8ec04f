//! Token agent: a sidecar that mirrors one managed Secret into files (and optionally a
//! loopback HTTP endpoint) within a second of each change.

/// Flags of `exact-operator agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Name of the managed workload Secret to mirror.
    #[arg(long, env = "EXACT_AGENT_SECRET")]
    pub secret: String,
}

/// Runs the agent until SIGTERM.
pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("the agent is not implemented yet")
}
