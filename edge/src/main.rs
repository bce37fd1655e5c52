//! `edge serve ...` and `edge replay ...`: parse flags, then call the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edge::{ReplayArgs, ServeArgs};

#[derive(Parser)]
#[command(about = "The edge cache: serves titles from RAM, fills misses from the origin")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve signed (/t/{token}/titles/...) and unsigned (/titles/...) object requests.
    Serve(Box<ServeArgs>),
    /// Replay a request log through the cache policy and print hit figures.
    Replay(ReplayArgs),
    /// Sum a request log per day and send it to steering (POST /v1/popularity).
    ReportPopularity(edge::prefill_report::ReportArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Replay(args) => replay(args),
        Command::ReportPopularity(args) => {
            let days = edge::prefill_report::report_once(&args).await.context("popularity report")?;
            eprintln!("sent {days} day(s) of popularity to {}", args.steering);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let cfg = args.load().context("edge configuration")?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    eprintln!("edge listening on {}", listener.local_addr()?);
    edge::run(cfg, listener, svc::shutdown_signal()).await.context("edge server")
}

fn replay(args: ReplayArgs) -> Result<()> {
    let plan = args.prefill.as_deref().map(edge::replay::read_plan).transpose()?;
    let report =
        edge::replay::replay_file_with(&args.log, args.ram_bytes, args.disk_bytes, plan.as_ref(), args.disk_policy)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
