//! The lookahead rules' decisions, locked: every rung `ours` and `robustmpc`
//! pick on all 3G traces of `../shared/traces` with `bbb.json` must equal the
//! saved run in `tests/data/decisions-3g.txt`. Speed work on their searches
//! (pruning, precomputation) must not change a single choice.
//!
//! After a deliberate change of a rule's design, rewrite the file with
//! `PLAYER_SIM_BLESS=1 cargo test -p player-sim --release --test decisions`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use player_sim::{simulate, AbrKind, SimConfig};

const RULES: [AbrKind; 2] = [AbrKind::Robustmpc, AbrKind::Ours];

fn shared_traces() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    dir.join("movies/bbb.json").exists().then_some(dir)
}

/// One line per (rule, trace): `rule trace rungs stall_ms`, rungs as one character each (the ladder has 10
/// rungs); the stall time also catches a change in abandonment.
fn decisions(dir: &Path) -> String {
    let movie = player_sim::load::load_movie(&dir.join("movies/bbb.json")).unwrap();
    assert!(movie.bitrates_kbps.len() <= 36, "one character per rung");
    let traces = player_sim::load::load_traces(&dir.join("sabre-3g")).unwrap();
    assert_eq!(traces.len(), 86);
    let mut out = String::new();
    for abr in RULES {
        for (name, trace) in &traces {
            let outcome = simulate(trace, &movie, &SimConfig::new(abr));
            let digits: String = outcome.rungs.iter().map(|&r| char::from_digit(r as u32, 36).unwrap()).collect();
            writeln!(out, "{abr} {name} {digits} {:.3}", outcome.qoe.stall_ms).unwrap();
        }
    }
    out
}

#[test]
fn lookahead_rules_decide_as_the_saved_run() {
    let Some(dir) = shared_traces() else {
        eprintln!("shared/traces not found next to the checkout; skipping");
        return;
    };
    let saved_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/decisions-3g.txt");
    let now = decisions(&dir);
    if std::env::var_os("PLAYER_SIM_BLESS").is_some() {
        std::fs::write(&saved_path, &now).unwrap();
        return;
    }
    let saved = std::fs::read_to_string(&saved_path).unwrap();
    let mut differ = Vec::new();
    for (a, b) in saved.lines().zip(now.lines()) {
        if a != b {
            let (rule, rest) = a.split_once(' ').unwrap_or((a, ""));
            let trace = rest.split_once(' ').map_or(rest, |(t, _)| t);
            let at = a.chars().zip(b.chars()).position(|(x, y)| x != y).unwrap_or(0);
            differ.push(format!("{rule} on {trace} (from column {at})"));
        }
    }
    assert_eq!(saved.lines().count(), now.lines().count(), "sessions in the saved run");
    assert!(differ.is_empty(), "{} sessions decide differently: {differ:?}", differ.len());
}
