//! `origin serve (--root DIR | --store DIR|s3://bucket/prefix) --listen ADDR [--config FILE]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use origin::{ServeConfig, ServerLimits, StoreLocation};

#[derive(Parser)]
#[command(about = "The origin: serves published titles from an object store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an object store (a local directory or S3) over HTTP.
    Serve {
        /// TOML file with the same settings (and `[limits]`); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Root directory of a local store.
        #[arg(long, conflicts_with = "store")]
        root: Option<PathBuf>,
        /// Store location: a directory or s3://bucket/prefix (AWS_ENDPOINT_URL,
        /// AWS_REGION, credentials and AWS_S3_FORCE_PATH_STYLE from the environment).
        #[arg(long)]
        store: Option<String>,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Open connections at most.
        #[arg(long)]
        max_connections: Option<usize>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    let Command::Serve { config, root, store, listen, max_connections } = Cli::parse().command;
    let mut cfg = match config {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<ServeConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            root: None,
            store: None,
            limits: ServerLimits::default(),
        },
    };
    if let Some(r) = root {
        cfg.root = Some(r);
        cfg.store = None;
    }
    if let Some(s) = store {
        cfg.store = Some(s);
        cfg.root = None;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(n) = max_connections {
        cfg.limits.max_connections = n;
    }
    let location = match (&cfg.store, &cfg.root) {
        (Some(s), _) => StoreLocation::parse(s).context("--store")?,
        (None, Some(r)) => StoreLocation::Local(r.clone()),
        (None, None) => anyhow::bail!("--root DIR or --store DIR|s3://bucket/prefix (or --config FILE) is required"),
    };
    let store = location.open().await.with_context(|| format!("opening store {location}"))?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    eprintln!("origin listening on {}", listener.local_addr()?);
    origin::serve(store, cfg.limits, listener, svc::shutdown_signal()).await.context("origin server")
}
