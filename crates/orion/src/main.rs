//! `orion`: one binary that is both the cluster agent and its command-line client.
//!
//! With no subcommand it runs an agent (`orion --id node1 --bootstrap`, or plain `orion` for a
//! single-node cluster). This is the only crate that uses `anyhow`: errors become one clear
//! line on stderr and a non-zero exit.

mod agent;
mod capacity;
mod client;
mod config;
mod discovery;
mod https;
mod join;
mod mesh;
mod metrics;
mod pki;
mod sealed;
mod security;
mod ui;

// The controller's driver lives in its own crate, shared with the simulator.
use orion_controller_driver as controller;

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
    // Answered without a runtime or a network: they only print.
    match &cli.cmd {
        Some(client::ClientCmd::Version { json }) => {
            print_version(*json);
            return;
        }
        Some(client::ClientCmd::Completion { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "orion", &mut std::io::stdout());
            return;
        }
        _ => {}
    }
    // reqwest's rustls (the CLI's HTTPS) asks every client it builds for the process's
    // provider; the CLI hands its own config, the agent's plain-HTTP clients use this one.
    orion_security::tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from);
    let result = match cli.cmd {
        Some(cmd) => runtime.and_then(|rt| rt.block_on(client::run(cmd))),
        None => {
            init_tracing(cli.agent.log_format);
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

fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORION_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        config::LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).compact().init();
        }
        // One JSON object per line: timestamp, level, message and the event's fields at top
        // level, as log shippers (Loki, Vector, journald's JSON export) expect.
        config::LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// `orion version`: the binary's version and what it was built for.
fn print_version(json: bool) {
    let version = env!("CARGO_PKG_VERSION");
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    if json {
        println!(
            "{}",
            serde_json::json!({"version": version, "target": target})
        );
    } else {
        println!("orion {version} ({target})");
    }
}
