//! `steering serve --config FILE [--listen ADDR]`,
//! `steering edges add|revoke|list --config FILE ...`,
//! `steering fill-plan --log DAY.csv --edge-bytes N` and
//! `steering fill-plan --history DIR --site S --edges a:BYTES,b:BYTES`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use steering::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print the fill plan (JSON) for an edge from one day's request log, or
    /// (with --history) every edge's plan for a site from its daily history.
    FillPlan(FillPlanArgs),
    /// Enrolled edges: add (prints a one-time enrollment token), revoke, list.
    #[command(subcommand)]
    Edges(EdgesCommand),
    /// Micro-benchmark of coverage lookup + decision: prints per-call latency percentiles (JSON).
    #[command(hide = true)]
    BenchDecide {
        #[arg(long, default_value_t = 1000)]
        edges: usize,
        #[arg(long, default_value_t = 1_000_000)]
        prefixes: usize,
        #[arg(long, default_value_t = 1_000_000)]
        decisions: usize,
    },
}

#[derive(Subcommand)]
enum EdgesCommand {
    /// Create an edge and print its one-time enrollment token (for `edge enroll --token`).
    Add {
        /// Steering's configuration (its `edges_dir` holds the records).
        #[arg(long)]
        config: PathBuf,
        /// The site (ISP location) the edge sits in.
        #[arg(long)]
        site: String,
        /// The edge's unique name.
        #[arg(long)]
        name: String,
        /// How long the token stays valid: 30m, 1h, 2d or seconds.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Cut an edge off: its heartbeats, plan and popularity requests are refused from now on.
    Revoke {
        /// Steering's configuration.
        #[arg(long)]
        config: PathBuf,
        /// The edge's name.
        name: String,
    },
    /// List enrolled edges and their state.
    List {
        /// Steering's configuration.
        #[arg(long)]
        config: PathBuf,
        /// One JSON object per edge (secrets left out).
        #[arg(long)]
        json: bool,
    },
}

fn edges_store(config: &std::path::Path) -> Result<steering::enroll::EnrollStore> {
    let cfg = Config::load(config).with_context(|| format!("config {}", config.display()))?;
    let dir = cfg.edges_dir.with_context(|| format!("{}: set edges_dir to enroll edges", config.display()))?;
    steering::enroll::EnrollStore::open(&dir).with_context(|| format!("edges_dir {}", dir.display()))
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn edges(cmd: EdgesCommand) -> Result<()> {
    match cmd {
        EdgesCommand::Add { config, site, name, ttl } => {
            let ttl_s = steering::enroll::parse_ttl(&ttl)?;
            let (token, rec) = edges_store(&config)?.add(&name, &site, ttl_s, now_s())?;
            println!("edge {} at site {}", rec.name, rec.site);
            println!("token {token}");
            println!("expires_unix_s {} (in {ttl_s} s)", rec.token_expires_unix_s);
            eprintln!("on the edge: edge enroll --steering URL --token {token} --disk-path DIR --listen ADDR");
        }
        EdgesCommand::Revoke { config, name } => {
            let rec = edges_store(&config)?.revoke(&name, now_s())?;
            println!("edge {} revoked at {}", rec.name, rec.revoked_unix_s.unwrap_or_default());
        }
        EdgesCommand::List { config, json } => {
            let now = now_s();
            for r in edges_store(&config)?.list()? {
                if json {
                    let line = serde_json::json!({
                        "name": r.name, "site": r.site, "state": r.state(now),
                        "created_unix_s": r.created_unix_s, "token_expires_unix_s": r.token_expires_unix_s,
                        "enrolled_unix_s": r.enrolled_unix_s, "revoked_unix_s": r.revoked_unix_s,
                        "public_url": r.public_url,
                    });
                    println!("{line}");
                } else {
                    println!("{}\t{}\t{}\t{}", r.name, r.site, r.state(now), r.public_url.as_deref().unwrap_or("-"));
                }
            }
        }
    }
    Ok(())
}

fn bench_decide(edges: usize, prefixes: usize, decisions: usize) -> Result<()> {
    if edges == 0 || prefixes == 0 || decisions == 0 {
        anyhow::bail!("--edges, --prefixes and --decisions must be above 0");
    }
    let built = std::time::Instant::now();
    let world = steering::bench::world(edges, prefixes);
    eprintln!("built {edges} edges and {} prefixes in {:.1?}", world.coverage.len(), built.elapsed());
    // Warm caches and the branch predictor before timing.
    let _ = steering::bench::measure(&world, decisions.min(50_000));
    let report = steering::bench::measure(&world, decisions);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(clap::Args)]
struct FillPlanArgs {
    /// Request log CSV (`ts_ms,client_ip,key,bytes`): plan one edge from that day.
    #[arg(long, required_unless_present = "history", conflicts_with = "history")]
    log: Option<PathBuf>,
    /// The edge's disk capacity in bytes (with --log).
    #[arg(long, required_unless_present = "history")]
    edge_bytes: Option<u64>,
    /// A site's history: request logs (*.csv, split by UTC day) and daily aggregates (*.json).
    #[arg(long, requires = "edges")]
    history: Option<PathBuf>,
    /// The site's name (a subdirectory of --history of that name is used when it exists).
    #[arg(long, default_value = "site")]
    site: String,
    /// The site's edges: NAME:BYTES[@URL], comma separated.
    #[arg(long, value_delimiter = ',')]
    edges: Vec<String>,
    /// Forecast method: last-day, decayed[:HALF_LIFE_DAYS] or profile[:HALF_LIFE_DAYS] (the best in
    /// `cargo xtask bench cache`'s backtests).
    #[arg(long, default_value = "decayed:1")]
    forecast: String,
    /// Launch hints JSON: [{"title", "expected_share", "objects": [{"key", "bytes"}]}].
    #[arg(long)]
    hints: Option<PathBuf>,
    /// Other sites' history directories: titles rising fast there are planned here too.
    #[arg(long, value_delimiter = ',')]
    other_sites: Vec<PathBuf>,
    /// The day to plan (UTC days since the epoch); default the day after the history.
    #[arg(long)]
    day: Option<u32>,
    /// Share of each edge's capacity to plan (the rest is left for misses).
    #[arg(long, default_value_t = 0.95)]
    fill_fraction: f64,
    /// The hottest objects, up to this share of the site's capacity, go on two edges.
    #[arg(long, default_value_t = 0.05)]
    hot_fraction: f64,
}

fn fill_plan(args: FillPlanArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(log) = &args.log {
        let edge_bytes = args.edge_bytes.context("--edge-bytes is required with --log")?;
        let plan = steering::fill::plan_from_log_file(log, edge_bytes)
            .with_context(|| format!("fill plan from {}", log.display()))?;
        serde_json::to_writer_pretty(&mut out, &plan).context("writing the plan")?;
        writeln!(out).context("writing the plan")?;
        return Ok(());
    }
    let dir = args.history.as_deref().context("--log or --history is required")?;
    let site_dir = dir.join(&args.site);
    let dir = if site_dir.is_dir() { site_dir } else { dir.to_owned() };
    let method = steering::forecast::Method::parse(&args.forecast).map_err(anyhow::Error::msg)?;
    let edges = args
        .edges
        .iter()
        .map(|e| steering::fill::EdgeSlot::parse(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if edges.is_empty() {
        anyhow::bail!("--edges names no edge");
    }
    if !(0.0..=1.0).contains(&args.fill_fraction) || !(0.0..=1.0).contains(&args.hot_fraction) {
        anyhow::bail!("--fill-fraction and --hot-fraction must be between 0 and 1");
    }
    let history =
        steering::fill::read_history_dir(&dir).with_context(|| format!("reading history {}", dir.display()))?;
    let Some(last) = history.iter().map(|d| d.day).max() else {
        anyhow::bail!("{}: no request logs (*.csv) or daily aggregates (*.json) with any rows", dir.display());
    };
    let hints = match &args.hints {
        Some(p) => steering::fill::read_hints(p).with_context(|| format!("hints {}", p.display()))?,
        None => Vec::new(),
    };
    let others = args
        .other_sites
        .iter()
        .map(|d| steering::fill::read_history_dir(d).with_context(|| format!("reading history {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let rising = steering::forecast::rising_elsewhere(&others, 2.0);
    let target = args.day.unwrap_or(last + 1);
    let forecast = steering::forecast::forecast_site(&history, target, method, &hints, &rising);
    let placement = steering::fill::Placement {
        fill_fraction: args.fill_fraction,
        hot_fraction: args.hot_fraction,
        ..Default::default()
    };
    let site = steering::fill::plan_site(&args.site, &method.label(), forecast, &edges, placement);
    serde_json::to_writer_pretty(&mut out, &site).context("writing the plan")?;
    writeln!(out).context("writing the plan")?;
    Ok(())
}

/// Re-reads `path` on each SIGHUP and sends the config when it is valid (a
/// bad one is logged and changes nothing); `listen` as given on the command line.
fn reload_on_sighup(
    path: std::path::PathBuf,
    listen: Option<std::net::SocketAddr>,
) -> Result<tokio::sync::watch::Receiver<Option<Config>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let loaded = Config::load(&path).map_err(anyhow::Error::from).and_then(|mut cfg| {
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                cfg.validate()?;
                Ok(cfg)
            });
            match loaded {
                Ok(cfg) => {
                    tracing::info!(config = %path.display(), "SIGHUP: config re-read");
                    if tx.send(Some(cfg)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(config = %path.display(), error = %format!("{e:#}"), "SIGHUP: config not reloaded; keeping the running one")
                }
            }
        }
    });
    Ok(rx)
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
            let reloads = reload_on_sighup(config, listen)?;
            steering::server::run_reloadable(cfg, listener, svc::shutdown_signal(), reloads)
                .await
                .context("steering server")
        }
        Command::FillPlan(args) => fill_plan(args),
        Command::Edges(cmd) => edges(cmd),
        Command::BenchDecide { edges, prefixes, decisions } => bench_decide(edges, prefixes, decisions),
    }
}
