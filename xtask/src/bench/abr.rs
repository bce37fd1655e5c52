//! `cargo xtask bench abr`: every ABR rule of `player-sim` over all 3G traces
//! of `../shared/traces` on one core, in sessions per second, against the
//! Sabre simulator's documented speed (~5–10 sessions/s/core on these traces).
//!
//! The headline is the slowest online rule (the offline optimum is reported
//! in the details but not counted: it needs the whole trace and is not a player).
//! Each rule repeats whole passes over the 86 traces for 2 s; its speed is
//! that of its fastest pass (other work on the machine only slows passes
//! down), the mean over passes is in the details too.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::BenchResult;
use crate::env;

/// Sabre's documented speed on these traces, sessions per second per core (the upper end).
const SABRE_SESSIONS_PER_S: f64 = 10.0;

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    let traces = env::root().join("../shared/traces");
    let network = traces.join("sabre-3g");
    let movie = traces.join("movies/bbb.json");
    if !network.is_dir() || !movie.is_file() {
        bail!(
            "the abr benchmark needs the shared traces: {} and {} are missing (expected ../shared/traces next to the workspace)",
            network.display(),
            movie.display()
        );
    }
    env::cargo(&["build", "--release", "-p", "player-sim"])?;
    let bin = env::target_dir().join("release/player-sim");
    let out = Command::new(&bin)
        .arg("bench")
        .arg("--network")
        .arg(&network)
        .arg("--movie")
        .arg(&movie)
        .args(["--min-time-s", "2"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("player-sim bench failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let rules: Vec<Value> = serde_json::from_slice(&out.stdout).context("reading player-sim bench output")?;
    let mut details = serde_json::Map::new();
    let mut slowest: Option<(f64, String)> = None;
    for r in &rules {
        let name = r["abr"].as_str().unwrap_or("?").to_owned();
        let speed = r["sessions_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "  {name:<12} {speed:>9.1} sessions/s  {:>7.1} kbps  rebuffer {:.5}  qoe {:>8.1}",
            r["avg_bitrate_kbps"].as_f64().unwrap_or(f64::NAN),
            r["rebuffer_ratio"].as_f64().unwrap_or(f64::NAN),
            r["qoe"].as_f64().unwrap_or(f64::NAN),
        );
        if name != "optimal" && slowest.as_ref().is_none_or(|(s, _)| speed < *s) {
            slowest = Some((speed, name.clone()));
        }
        details.insert(
            name,
            json!({
                "sessions_per_s": speed,
                "mean_sessions_per_s": r["mean_sessions_per_s"],
                "sessions": r["sessions"],
                "avg_bitrate_kbps": r["avg_bitrate_kbps"],
                "rebuffer_ratio": r["rebuffer_ratio"],
                "rebuffer_events": r["rebuffer_events"],
                "switches": r["switches"],
                "qoe": r["qoe"],
            }),
        );
    }
    let Some((ours, slowest_name)) = slowest else { bail!("player-sim bench timed no online rule") };
    details.insert("slowest_online_rule".into(), json!(slowest_name));
    details.insert("traces".into(), json!(network.display().to_string()));
    Ok(BenchResult {
        name: "abr",
        unit: "sessions/s/core",
        ours,
        baseline: SABRE_SESSIONS_PER_S,
        baseline_name: "Sabre (documented ~5-10 sessions/s/core)".into(),
        ratio: ours / SABRE_SESSIONS_PER_S,
        details: Value::Object(details),
    })
}
