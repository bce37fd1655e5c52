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
    /// Exchange a one-time enrollment token with steering and write a complete config file.
    Enroll(edge::enroll::EnrollArgs),
    /// Sum a request log per day and send it to steering (POST /v1/popularity).
    ReportPopularity(edge::prefill_report::ReportArgs),
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this machine against the config: cache path, space, write speed, port, upstreams,
    /// steering, clock skew, memory. One `PASS|WARN|FAIL  check  detail` line each; exits 1 on a FAIL.
    Doctor(edge::doctor::DoctorArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: prints `ok: FILE`, or each problem as `FILE:LINE: key ...` and exits 1.
    Check {
        /// The TOML file `edge serve --config` would read.
        file: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Replay(args) => replay(args),
        Command::Enroll(args) => {
            let out = edge::enroll::enroll(&args).await.context("edge enroll")?;
            eprintln!("enrolled; config written to {} (run: edge serve --config {})", out.display(), out.display());
            Ok(())
        }
        Command::ReportPopularity(args) => {
            let days = edge::prefill_report::report_once(&args).await.context("popularity report")?;
            eprintln!("sent {days} day(s) of popularity to {}", args.steering);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => match edge::config_check::check_file(&file) {
            Ok(_) => {
                println!("ok: {}", file.display());
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                std::process::exit(1);
            }
        },
        Command::Doctor(args) => {
            let results = edge::doctor::run_checks(&args).await;
            for r in &results {
                println!("{}", r.line());
            }
            if results.iter().any(|r| r.verdict == edge::doctor::Verdict::Fail) {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let cfg = args.load().context("edge configuration")?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    eprintln!("edge listening on {}", listener.local_addr()?);
    // Signal handlers first: systemd may stop the service as soon as it is ready.
    let shutdown = svc::shutdown_signal();
    svc::sd_notify("READY=1");
    edge::run(cfg, listener, shutdown).await.context("edge server")
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
