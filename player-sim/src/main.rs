//! `player-sim sim …` (trace-driven simulation) and `player-sim live …` (real HTTP sessions).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use player_sim::live::{LiveConfig, DEFAULT_REQUEST_TIMEOUT};
use player_sim::load::{load_movie, load_trace, load_traces};
use player_sim::{AbrConfig, AbrKind, SimConfig};
use vod::steering::Format;

#[derive(Parser)]
#[command(about = "ABR simulation over network traces, and live player sessions through steering and edges")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one session per network trace on a virtual clock (Sabre's model).
    Sim {
        /// A trace file, or a directory of `*.json` traces (one session each, sorted by name).
        #[arg(long)]
        network: PathBuf,
        /// Movie description: segment duration, ladder, segment sizes.
        #[arg(long)]
        movie: PathBuf,
        /// ABR rule: throughput or bola.
        #[arg(long, default_value = "bola")]
        abr: AbrKind,
        /// Maximum buffer, seconds.
        #[arg(long, default_value_t = 25.0)]
        max_buffer_s: f64,
        /// Never abandon a download in flight.
        #[arg(long)]
        no_abandon: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Play real sessions through steering and edges, concurrently, and report QoE.
    ///
    /// Failed sessions are reported with their error; the exit status is non-zero only when every session failed.
    Live {
        /// Base URL of the steering service, e.g. http://127.0.0.1:8090.
        #[arg(long)]
        steering: String,
        /// Title to play.
        #[arg(long)]
        title: String,
        /// Number of sessions.
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Shape each session's download rate to this trace (looped).
        #[arg(long)]
        network: Option<PathBuf>,
        /// Client IPs sent as X-Forwarded-For; sessions cycle through them.
        #[arg(long = "client-ip")]
        client_ips: Vec<String>,
        /// Manifest format (only hls is played).
        #[arg(long, default_value = "hls", value_parser = parse_format)]
        format: Format,
        /// ABR rule.
        #[arg(long, default_value = "throughput")]
        abr: AbrKind,
        /// Sessions running at once (default: all).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Maximum buffer, seconds.
        #[arg(long, default_value_t = 25.0)]
        max_buffer_s: f64,
        /// Timeout of each network operation, seconds.
        #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
        timeout_s: f64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "hls" => Ok(Format::Hls),
        "dash" => Ok(Format::Dash),
        other => Err(format!("unknown format {other:?} (hls or dash)")),
    }
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero()).with_context(|| format!("{name} must be > 0, got {s}"))
}

/// Write to stdout without `println!`'s panic when the reader went away (`| head`).
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    emit(&(serde_json::to_string_pretty(value).context("encoding the report")? + "\n"))
}

fn main() -> std::process::ExitCode {
    svc::init_tracing("warn");
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace noise for bad input.
            eprintln!("player-sim: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Sim { network, movie, abr, max_buffer_s, no_abandon, json } => {
            let max_buffer = seconds("--max-buffer-s", max_buffer_s)?;
            let movie = load_movie(&movie).context("loading the movie")?;
            let traces = load_traces(&network).context("loading network traces")?;
            let config = SimConfig {
                abr,
                abr_config: AbrConfig { max_buffer_ms: max_buffer.as_secs_f64() * 1000.0, ..AbrConfig::default() },
                abandon: !no_abandon,
            };
            let report = player_sim::simulate_all(&traces, &movie, &config);
            if json {
                print_json(&report)?;
            } else {
                emit(&report.to_table())?;
            }
        }
        Command::Live {
            steering,
            title,
            sessions,
            network,
            client_ips,
            format,
            abr,
            concurrency,
            max_buffer_s,
            timeout_s,
            json,
        } => {
            let network = match network {
                Some(p) => Some(load_trace(&p).context("loading the network trace")?),
                None => None,
            };
            let config = LiveConfig {
                steering,
                title,
                sessions,
                network,
                client_ips,
                format,
                abr,
                concurrency: concurrency.unwrap_or(sessions),
                max_buffer: seconds("--max-buffer-s", max_buffer_s)?,
                request_timeout: seconds("--timeout-s", timeout_s)?,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let report = runtime.block_on(player_sim::live::run(config)).context("live run")?;
            if json {
                print_json(&report)?;
            } else {
                emit(&report.to_table())?;
            }
            // Some failures are part of a load run's findings; none working at all is an error.
            if report.sessions > 0 && report.failed == report.sessions {
                let first = report.per_session.iter().find_map(|s| s.error.clone()).unwrap_or_default();
                anyhow::bail!("all {} sessions failed; first error: {first}", report.sessions);
            }
        }
    }
    Ok(())
}
