//! `cargo xtask bench NAME`: each benchmark runs our code and its named
//! baseline side by side in one run, prints the ratio, and writes
//! `target/bench/NAME.json` as `{"name", "unit", "ours", "baseline",
//! "baseline_name", "ratio", "details"}` (ratio > 1 means we are better).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::env;

mod abr;
mod cache;
mod cpucap;
mod edge;
mod encode;
mod encode_fleet;
mod origin;
mod procstat;
mod steering;

/// One benchmark's result.
pub struct BenchResult {
    pub name: &'static str,
    pub unit: &'static str,
    pub ours: f64,
    pub baseline: f64,
    pub baseline_name: String,
    /// > 1 means we are better, whichever way the unit points.
    pub ratio: f64,
    pub details: Value,
}

/// Benchmarks by name.
const BENCHES: &[&str] = &["abr", "cache", "edge", "encode", "origin", "steering"];

/// Runs the benchmark `name` and writes its JSON.
pub fn run(name: Option<&str>) -> Result<()> {
    let Some(name) = name else {
        bail!("usage: cargo xtask bench NAME (one of: {})", BENCHES.join(", "));
    };
    let result = match name {
        "abr" => abr::run()?,
        "cache" => cache::run()?,
        "edge" => edge::run()?,
        "encode" => encode::run()?,
        "origin" => origin::run()?,
        "steering" => steering::run()?,
        _ => bail!("unknown benchmark {name:?} (known: {})", BENCHES.join(", ")),
    };
    write(&result)
}

/// Writes `target/bench/NAME.json` and prints the headline.
pub fn write(r: &BenchResult) -> Result<()> {
    let dir = env::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let v = json!({
        "name": r.name, "unit": r.unit, "ours": r.ours, "baseline": r.baseline,
        "baseline_name": r.baseline_name, "ratio": r.ratio, "details": r.details,
    });
    let path = dir.join(format!("{}.json", r.name));
    std::fs::write(&path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "bench {}: ours {:.3} {} vs {} {:.3} {} → ratio {:.3} ({})",
        r.name,
        r.ours,
        r.unit,
        r.baseline_name,
        r.baseline,
        r.unit,
        r.ratio,
        path.display()
    );
    Ok(())
}
