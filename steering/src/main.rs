//! `steering serve --config FILE [--listen ADDR]` and
//! `steering fill-plan --log DAY.csv --edge-bytes N`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use steering::Config;

#[derive(Parser)]
#[command(about = "Steering: sends players to healthy edges near them; computes edge fill plans")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /v1/play and /v1/redirect.
    Serve {
        /// TOML configuration (edges, token key, probes).
        #[arg(long)]
        config: PathBuf,
        /// Address to listen on, overriding the config (port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the fill plan (JSON) for an edge from one day's request log.
    FillPlan {
        /// Request log CSV (`ts_ms,client_ip,key,bytes`).
        #[arg(long)]
        log: PathBuf,
        /// The edge's disk capacity in bytes.
        #[arg(long)]
        edge_bytes: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    match Cli::parse().command {
        Command::Serve { config, listen } => {
            let mut cfg = Config::load(&config).with_context(|| format!("config {}", config.display()))?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let listener =
                tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
            eprintln!("steering listening on {}", listener.local_addr()?);
            steering::run(cfg, listener, svc::shutdown_signal()).await.context("steering server")
        }
        Command::FillPlan { log, edge_bytes } => {
            let plan = steering::fill::plan_from_log_file(&log, edge_bytes)
                .with_context(|| format!("fill plan from {}", log.display()))?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &plan).context("writing the plan")?;
            writeln!(out).context("writing the plan")?;
            Ok(())
        }
    }
}
