//! `origin serve --root DIR --listen ADDR [--config FILE]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use origin::OriginConfig;

#[derive(Parser)]
#[command(about = "The origin: serves published titles from an object store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a local object store over HTTP.
    Serve {
        /// TOML file with the same settings; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Root directory of the store.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    let Command::Serve { config, root, listen } = Cli::parse().command;
    let mut cfg = match config {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<OriginConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => OriginConfig {
            root: root.clone().context("--root DIR (or --config FILE) is required")?,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        },
    };
    if let Some(r) = root {
        cfg.root = r;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    eprintln!("origin listening on {}", listener.local_addr()?);
    origin::run(cfg, listener, svc::shutdown_signal()).await.context("origin server")
}
