//! `player-sim sim …` (trace-driven simulation) and `player-sim live …` (real HTTP sessions).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use player_sim::live::{LiveConfig, DEFAULT_REQUEST_TIMEOUT};
use player_sim::load::{load_movie_for_codec, load_trace, load_traces, Codec};
use player_sim::report::{SessionQoe, ShareOfOptimum};
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
        /// Video codec whose ladder to play when a catalog.json carries several (h264, hevc, av1, vp9; default h264).
        #[arg(long)]
        codec: Option<Codec>,
        /// ABR rule: throughput, bola, bolae, dynamic, dynamicdash, bba, robustmpc, ours, or optimal (offline optimum).
        #[arg(long, default_value = "bola")]
        abr: AbrKind,
        /// Maximum buffer, seconds.
        #[arg(long, default_value_t = 25.0)]
        max_buffer_s: f64,
        /// Never abandon a download in flight.
        #[arg(long)]
        no_abandon: bool,
        /// Sabre's session model and defaults, stated explicitly: 25 s buffer,
        /// abandonment on, BOLA gamma·p 5, EWMA 3 s/8 s, playback from the first
        /// segment's arrival, the trace looped. This is also the default; the
        /// flag refuses options that would depart from it.
        #[arg(long, conflicts_with_all = ["no_abandon", "max_buffer_s"])]
        sabre_compat: bool,
        /// Buffer cell (ms) of the offline optimum's state merge; smaller is slower and closer to the true optimum.
        #[arg(long, default_value_t = player_sim::optimal::DEFAULT_GRID_MS)]
        optimal_grid_ms: f64,
        /// Also write one CSV row per session to this file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run several rules over the same traces: a table (or JSON) of their means,
    /// and with --svg or --png, CDFs of bitrate, rebuffer ratio and QoE per rule.
    Compare {
        /// A trace file or a directory of traces.
        #[arg(long)]
        network: PathBuf,
        /// Movie description or catalog.json.
        #[arg(long)]
        movie: PathBuf,
        /// Video codec whose ladder to play when a catalog.json carries several (h264, hevc, av1, vp9; default h264).
        #[arg(long)]
        codec: Option<Codec>,
        /// Rules to compare (default: all).
        #[arg(long = "abr")]
        abrs: Vec<AbrKind>,
        /// Write cdf-bitrate.svg, cdf-rebuffer.svg and cdf-qoe.svg into this directory.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Write the same plots as cdf-bitrate.png, cdf-rebuffer.png and cdf-qoe.png into this directory.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Print JSON (one report per rule) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time every rule (or those given) over a trace set, single-threaded, and print JSON.
    Bench {
        /// A trace file or a directory of traces.
        #[arg(long)]
        network: PathBuf,
        /// Movie description.
        #[arg(long)]
        movie: PathBuf,
        /// Video codec whose ladder to play when a catalog.json carries several (h264, hevc, av1, vp9; default h264).
        #[arg(long)]
        codec: Option<Codec>,
        /// Rules to time (default: all).
        #[arg(long = "abr")]
        abrs: Vec<AbrKind>,
        /// Keep repeating whole passes over the traces for at least this long per rule, seconds.
        #[arg(long, default_value_t = 1.0)]
        min_time_s: f64,
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
        /// Shape each session's download rate to this trace (looped); a directory gives session i its i-th trace (cycled).
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
        /// Play this many times faster than real time (the trace is compressed to match); figures are in media time.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
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
        Command::Sim {
            network,
            movie,
            codec,
            abr,
            max_buffer_s,
            no_abandon,
            sabre_compat,
            optimal_grid_ms,
            csv,
            json,
        } => {
            // Sabre's defaults are ours; clap already refused the flags that change them.
            let _ = sabre_compat;
            if !(optimal_grid_ms.is_finite() && optimal_grid_ms > 0.0) {
                anyhow::bail!("--optimal-grid-ms must be > 0, got {optimal_grid_ms}");
            }
            let max_buffer = seconds("--max-buffer-s", max_buffer_s)?;
            let movie = load_movie_for_codec(&movie, codec).context("loading the movie")?;
            let traces = load_traces(&network).context("loading network traces")?;
            let config = SimConfig {
                abr,
                abr_config: AbrConfig { max_buffer_ms: max_buffer.as_secs_f64() * 1000.0, ..AbrConfig::default() },
                abandon: !no_abandon,
                optimal_grid_ms,
            };
            let report = player_sim::simulate_all(&traces, &movie, &config);
            if let Some(path) = csv {
                std::fs::write(&path, report.to_csv()).with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                print_json(&report)?;
            } else {
                emit(&report.to_table())?;
            }
        }
        Command::Compare { network, movie, codec, abrs, svg, png, json } => {
            if svg.is_some() || png.is_some() {
                // Before the simulations, not after them.
                player_sim::plot::load_font().map_err(anyhow::Error::msg)?;
            }
            let movie = load_movie_for_codec(&movie, codec).context("loading the movie")?;
            let traces = load_traces(&network).context("loading network traces")?;
            let kinds = if abrs.is_empty() { AbrKind::ALL.to_vec() } else { abrs };
            let reports: Vec<_> =
                kinds.iter().map(|&k| player_sim::simulate_all(&traces, &movie, &SimConfig::new(k))).collect();
            let outputs = [(svg, "svg"), (png, "png")];
            for (dir, ext) in outputs.iter().filter_map(|(d, ext)| d.as_ref().map(|d| (d, *ext))) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                type Metric = fn(&player_sim::report::SessionQoe) -> f64;
                let plots: [(&str, &str, &str, Metric); 3] = [
                    ("cdf-bitrate", "Average bitrate per session", "kbps", |q| q.avg_bitrate_kbps),
                    ("cdf-rebuffer", "Rebuffer ratio per session", "stall / session time", |q| q.rebuffer_ratio),
                    ("cdf-qoe", "Linear QoE per session", "QoE (Mbit/s − 4.3·stall s − switches)", |q| q.qoe),
                ];
                for (file, title, label, metric) in plots {
                    let series: Vec<(String, Vec<f64>)> = reports
                        .iter()
                        .map(|r| (r.abr.to_string(), r.per_session.iter().map(|s| metric(&s.qoe)).collect()))
                        .collect();
                    let path = dir.join(format!("{file}.{ext}"));
                    let bytes = match ext {
                        "svg" => player_sim::plot::cdf_svg(title, label, &series)?.into_bytes(),
                        _ => player_sim::plot::cdf_png(title, label, &series)?,
                    };
                    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
                }
            }
            if json {
                print_json(&reports)?;
            } else {
                // With the optimum in the run, each rule's share of its QoE (see `ShareOfOptimum`).
                let optimum: Option<Vec<SessionQoe>> = reports
                    .iter()
                    .find(|r| r.abr == AbrKind::Optimal)
                    .map(|r| r.per_session.iter().map(|s| s.qoe.clone()).collect());
                let rows: Vec<Vec<String>> = reports
                    .iter()
                    .map(|r| {
                        let m = &r.means;
                        let mut row = vec![
                            r.abr.to_string(),
                            format!("{:.1}", m.avg_bitrate_kbps),
                            format!("{:.5}", m.rebuffer_ratio),
                            format!("{:.2}", m.rebuffer_events),
                            format!("{:.2}", m.switches),
                            format!("{:.0}", m.startup_ms),
                            format!("{:.1}", m.qoe),
                        ];
                        if let Some(opt) = &optimum {
                            let mine: Vec<SessionQoe> = r.per_session.iter().map(|s| s.qoe.clone()).collect();
                            let share = ShareOfOptimum::of(&mine, opt);
                            row.push(format!("{:.1}%", 100.0 * share.ratio_of_sums));
                            row.push(format!("{:.1}%", 100.0 * share.mean_of_ratios));
                        }
                        row
                    })
                    .collect();
                let mut header =
                    vec!["abr", "avg_kbps", "rebuf_ratio", "rebuf_events", "switches", "startup_ms", "qoe"];
                if optimum.is_some() {
                    header.extend(["qoe_vs_opt_sum", "qoe_vs_opt_mean"]);
                }
                emit(&player_sim::report::table(&header, &rows))?;
            }
        }
        Command::Bench { network, movie, codec, abrs, min_time_s } => {
            let min_time = seconds("--min-time-s", min_time_s)?;
            let movie = load_movie_for_codec(&movie, codec).context("loading the movie")?;
            let traces = load_traces(&network).context("loading network traces")?;
            let kinds = if abrs.is_empty() { AbrKind::ALL.to_vec() } else { abrs };
            let speeds = player_sim::bench::measure(&traces, &movie, &kinds, min_time, 1000);
            print_json(&speeds)?;
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
            speed,
            json,
        } => {
            if abr.is_offline() {
                anyhow::bail!("--abr {abr} needs the whole network trace in advance; it runs in `sim` only");
            }
            // A directory gives each session its own trace (cycled); a file shapes them all.
            let (network, networks) = match network {
                Some(p) if p.is_dir() => {
                    let traces = load_traces(&p).context("loading network traces")?;
                    (None, traces.into_iter().map(|(_, t)| t).collect())
                }
                Some(p) => (Some(load_trace(&p).context("loading the network trace")?), Vec::new()),
                None => (None, Vec::new()),
            };
            let config = LiveConfig {
                steering,
                title,
                sessions,
                network,
                networks,
                client_ips,
                format,
                abr,
                concurrency: concurrency.unwrap_or(sessions),
                max_buffer: seconds("--max-buffer-s", max_buffer_s)?,
                request_timeout: seconds("--timeout-s", timeout_s)?,
                speed,
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
