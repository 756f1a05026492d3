//! `orion`: one binary that is both the cluster agent and its command-line client.
//!
//! With no subcommand it runs an agent (`orion --id node1 --bootstrap`, or plain `orion` for a
//! single-node cluster). This is the only crate that uses `anyhow`: errors become one clear
//! line on stderr and a non-zero exit.

mod agent;
mod capacity;
mod client;
mod config;
mod controller;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "orion",
    version,
    about = "A self-healing container orchestrator in one binary",
    long_about = "A self-healing container orchestrator in one binary.\n\nWithout a subcommand, runs an agent: \
                  `orion --id node1 --bootstrap`, or plain `orion` for a single-node cluster.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    agent: config::AgentArgs,
    #[command(subcommand)]
    cmd: Option<client::ClientCmd>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from);
    let result = match cli.cmd {
        Some(cmd) => runtime.and_then(|rt| rt.block_on(client::run(cmd))),
        None => {
            init_tracing();
            runtime.and_then(|rt| rt.block_on(async { agent::run(cli.agent.resolve()?).await }))
        }
    };
    if let Err(e) = result {
        eprintln!("orion: {e:#}");
        std::process::exit(1);
    }
}

/// openraft logs every failed heartbeat to an unreachable peer (five lines every 200 ms while
/// a node is down); Orion logs the events that matter itself, so openraft is silenced unless
/// `ORION_LOG` asks for it.
const DEFAULT_LOG_FILTER: &str = "info,openraft=off,foca=warn";

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORION_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .compact()
        .init();
}
