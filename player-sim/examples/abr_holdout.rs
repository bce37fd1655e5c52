//! The hold-out report of `ours` (see `player_sim::abr::ours`): every rule on
//! one half of a trace set (even or odd positions by sorted file name, or
//! all), with the share of the offline optimum's QoE; `key=value` arguments
//! change `ours`' tuning, for experiments on the design half.
//!
//! `cargo run --release -p player-sim --example abr_holdout -- ../shared/traces/sabre-3g ../shared/traces/movies/bbb.json even`

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use player_sim::abr::{Ours, OursParams, Predictor};
use player_sim::load::{load_movie, load_traces};
use player_sim::report::{table, QoeMeans, SessionQoe, ShareOfOptimum};
use player_sim::{simulate, simulate_with, AbrConfig, AbrKind, SimConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: abr_holdout TRACES MOVIE even|odd|all [key=value ...]");
    }
    let traces = load_traces(&PathBuf::from(&args[0]))?;
    let movie = load_movie(&PathBuf::from(&args[1]))?;
    let keep: fn(usize) -> bool = match args[2].as_str() {
        "even" => |i| i % 2 == 0,
        "odd" => |i| i % 2 == 1,
        "all" => |_| true,
        other => bail!("half must be even, odd or all, not {other:?}"),
    };
    let mut p = OursParams::default();
    for kv in &args[3..] {
        let (k, v) = kv.split_once('=').with_context(|| format!("{kv}: expected key=value"))?;
        let num = || v.parse::<f64>().with_context(|| format!("{k}: not a number: {v}"));
        match k {
            "safety" => p.safety = num()?,
            "penalty" => p.penalty = num()?,
            "horizon" => p.horizon = num()? as usize,
            "reserve" => p.reserve_ms = num()?,
            "switch" => p.switch_weight = num()?,
            "target" => p.target_ms = num()?,
            "shortfall" => p.shortfall_weight = num()?,
            "history" => p.history = num()? as usize,
            "predictor" => {
                p.predictor = match v {
                    "ewma" => Predictor::Ewma,
                    "harmonic" => Predictor::Harmonic,
                    "lower" => Predictor::Lower,
                    "last" => Predictor::LastDrop,
                    _ => bail!("predictor: ewma, harmonic, lower or last"),
                }
            }
            _ => bail!("unknown key {k}"),
        }
    }
    let selected: Vec<_> = traces.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, t)| &t.1).collect();
    let run = |kind: AbrKind| -> Vec<SessionQoe> {
        selected
            .iter()
            .map(|t| {
                let config = SimConfig::new(kind);
                if kind == AbrKind::Ours {
                    simulate_with(t, &movie, &config, Box::new(Ours::with_params(&AbrConfig::default(), p))).qoe
                } else {
                    simulate(t, &movie, &config).qoe
                }
            })
            .collect()
    };
    let optimum = run(AbrKind::Optimal);
    let mut rows = Vec::new();
    for kind in AbrKind::ALL {
        let q = if kind == AbrKind::Optimal { optimum.clone() } else { run(kind) };
        let m = QoeMeans::of(&q);
        let share = ShareOfOptimum::of(&q, &optimum);
        rows.push(vec![
            kind.to_string(),
            format!("{:.1}", m.avg_bitrate_kbps),
            format!("{:.4}", m.rebuffer_ratio),
            format!("{:.1}", m.switches),
            format!("{:.1}", m.qoe),
            format!("{:.1}%", 100.0 * share.ratio_of_sums),
            format!("{:.1}%", 100.0 * share.mean_of_ratios),
        ]);
    }
    println!(
        "{} sessions ({} half); share of the optimum over the sessions where its QoE is positive",
        selected.len(),
        args[2]
    );
    print!("{}", table(&["abr", "kbps", "rebuffer", "switches", "qoe", "share_sum", "share_mean"], &rows));
    Ok(())
}
