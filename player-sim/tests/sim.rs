//! The simulator end to end: invariants a user would notice, determinism,
//! agreement with Sabre's published figures, and the CLI's handling of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use player_sim::{simulate, simulate_all, AbrKind, SimConfig};
use vod::trace::{Movie, NetworkPeriod, NetworkTrace};

/// A 60 s title of 2 s segments on a 300–4000 kbps ladder, sizes varying ±20% around nominal.
fn movie() -> Movie {
    let bitrates = vec![300.0, 750.0, 1500.0, 4000.0];
    let segment_sizes_bits = (0..30)
        .map(|i| {
            let wobble = 1.0 + 0.2 * ((i as f64) * 1.7).sin();
            bitrates.iter().map(|b| (b * 2000.0 * wobble) as u64).collect()
        })
        .collect();
    Movie { segment_duration_ms: 2000, bitrates_kbps: bitrates, segment_sizes_bits }
}

fn constant(kbps: f64, latency_ms: f64) -> NetworkTrace {
    NetworkTrace::new(vec![NetworkPeriod { duration_ms: 10_000, bandwidth_kbps: kbps, latency_ms }]).unwrap()
}

fn varying() -> Vec<(String, NetworkTrace)> {
    (0..5)
        .map(|k| {
            let periods = (0..40)
                .map(|i| NetworkPeriod {
                    duration_ms: 700 + 97 * ((i * 7 + k) % 11),
                    bandwidth_kbps: 200.0 + 600.0 * (((i * 13 + k * 5) % 17) as f64),
                    latency_ms: 40.0 + 10.0 * (k as f64),
                })
                .collect();
            (format!("trace-{k}"), NetworkTrace::new(periods).unwrap())
        })
        .collect()
}

#[test]
fn ample_bandwidth_ends_at_the_top_rung_without_stalls() {
    let movie = movie();
    for abr in AbrKind::ALL {
        let out = simulate(&constant(100_000.0, 20.0), &movie, &SimConfig::new(abr));
        assert_eq!(out.rungs.len(), 30);
        assert_eq!(*out.rungs.last().unwrap(), 3, "{abr}: {:?}", out.rungs);
        assert_eq!(out.qoe.stall_ms, 0.0, "{abr}");
        assert_eq!(out.qoe.rebuffer_events, 0, "{abr}");
        assert_eq!(out.qoe.rebuffer_ratio, 0.0, "{abr}");
        assert!(out.qoe.avg_bitrate_kbps > 3000.0 && out.qoe.avg_bitrate_kbps <= 4000.0, "{abr}: {:?}", out.qoe);
    }
}

#[test]
fn bandwidth_below_the_bottom_rung_rebuffers_at_the_bottom_rung() {
    let movie = movie();
    for abr in AbrKind::ALL {
        let out = simulate(&constant(150.0, 50.0), &movie, &SimConfig::new(abr));
        assert!(out.rungs.iter().all(|&r| r == 0), "{abr}: {:?}", out.rungs);
        assert!(out.qoe.rebuffer_events > 0, "{abr}");
        // Half the needed rate: roughly as much stall as content.
        assert!(out.qoe.rebuffer_ratio > 0.3, "{abr}: {:?}", out.qoe);
        assert!(out.qoe.avg_bitrate_kbps < 300.0);
    }
}

#[test]
fn session_time_adds_up() {
    let movie = movie();
    for (_, trace) in varying() {
        for abr in AbrKind::ALL {
            let q = simulate(&trace, &movie, &SimConfig::new(abr)).qoe;
            assert_eq!(q.content_ms, 60_000.0);
            assert_eq!(q.segments, 30);
            let t = q.startup_ms + q.content_ms + q.stall_ms;
            assert!((q.rebuffer_ratio - q.stall_ms / t).abs() < 1e-12);
            assert!(q.avg_bitrate_kbps >= 300.0 * q.content_ms / t - 1e-9 && q.avg_bitrate_kbps <= 4000.0);
            assert!(q.switches <= 29);
        }
    }
}

#[test]
fn simulation_is_deterministic() {
    let movie = movie();
    let traces = varying();
    for abr in AbrKind::ALL {
        let a = simulate_all(&traces, &movie, &SimConfig::new(abr));
        let b = simulate_all(&traces, &movie, &SimConfig::new(abr));
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert_eq!(a.sessions, 5);
        // Different traces give different sessions: the trace really drives the result.
        assert!(a.per_session.windows(2).any(|w| w[0].qoe != w[1].qoe));
    }
}

fn shared_traces() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    dir.join("movies/bbb.json").exists().then_some(dir)
}

/// Sabre's own figures for `bbb.json` (shared/traces/README.md): (set, abr, kbps, rebuffer ratio).
const SABRE: [(&str, AbrKind, f64, f64); 7] = [
    ("sabre-3g", AbrKind::Bola, 1107.9, 0.0843),
    ("sabre-3g", AbrKind::Bolae, 1111.3, 0.0871),
    ("sabre-3g", AbrKind::Dynamic, 1095.6, 0.0845),
    ("sabre-3g", AbrKind::Throughput, 812.4, 0.0779),
    ("sabre-4g", AbrKind::Bola, 5882.7, 0.00028),
    ("sabre-4g", AbrKind::Dynamic, 5905.2, 0.00072),
    ("sabre-4g", AbrKind::Throughput, 5899.7, 0.00075),
];

#[test]
fn reproduces_sabre_reference_figures() {
    let Some(dir) = shared_traces() else {
        eprintln!("shared/traces not found next to the checkout; skipping");
        return;
    };
    let movie = player_sim::load::load_movie(&dir.join("movies/bbb.json")).unwrap();
    for (set, abr, kbps, ratio) in SABRE {
        let traces = player_sim::load::load_traces(&dir.join(set)).unwrap();
        let r = simulate_all(&traces, &movie, &SimConfig::new(abr));
        let rel = |ours: f64, theirs: f64| (ours - theirs).abs() / theirs;
        assert!(rel(r.means.avg_bitrate_kbps, kbps) < 0.01, "{set} {abr}: {} vs {kbps}", r.means.avg_bitrate_kbps);
        assert!(rel(r.means.rebuffer_ratio, ratio) < 0.02, "{set} {abr}: {} vs {ratio}", r.means.rebuffer_ratio);
    }
}

#[test]
fn ours_beats_the_best_sabre_rules_on_the_3g_set() {
    let Some(dir) = shared_traces() else {
        eprintln!("shared/traces not found next to the checkout; skipping");
        return;
    };
    let movie = player_sim::load::load_movie(&dir.join("movies/bbb.json")).unwrap();
    let traces = player_sim::load::load_traces(&dir.join("sabre-3g")).unwrap();
    let ours = simulate_all(&traces, &movie, &SimConfig::new(AbrKind::Ours)).means;
    // More bitrate than every Sabre row; no more rebuffering than BOLA and
    // BOLA-E, the rows with the most bitrate (throughput stalls less by
    // fetching 300 kbps less).
    for (set, abr, kbps, ratio) in SABRE.into_iter().filter(|r| r.0 == "sabre-3g") {
        assert!(ours.avg_bitrate_kbps > kbps, "{set} {abr}: {} kbps vs {kbps}", ours.avg_bitrate_kbps);
        if matches!(abr, AbrKind::Bola | AbrKind::Bolae) {
            assert!(ours.rebuffer_ratio <= ratio, "{set} {abr}: rebuffer {} vs {ratio}", ours.rebuffer_ratio);
        }
    }
    // And the best mean linear QoE of every online rule, ours included in the
    // same simulator (the offline optimum is slow in a debug build;
    // `examples/abr_holdout` reports each rule's share of it).
    for abr in AbrKind::ALL.into_iter().filter(|&k| !k.is_offline() && k != AbrKind::Ours) {
        let other = simulate_all(&traces, &movie, &SimConfig::new(abr)).means;
        assert!(ours.qoe > other.qoe, "{abr}: QoE {} vs ours {}", other.qoe, ours.qoe);
    }
}

#[test]
fn offline_optimum_beats_every_online_rule_on_qoe() {
    let movie = movie();
    for (name, trace) in varying() {
        let best = simulate(&trace, &movie, &SimConfig::new(AbrKind::Optimal)).qoe.qoe;
        for abr in AbrKind::ALL.into_iter().filter(|k| !k.is_offline()) {
            let q = simulate(&trace, &movie, &SimConfig::new(abr)).qoe.qoe;
            assert!(best >= q - 1e-6, "{name}: optimal {best} < {abr} {q}");
        }
    }
}

#[test]
fn linear_qoe_is_bitrate_minus_stall_and_switch_costs() {
    let movie = movie();
    let out = simulate(&constant(100_000.0, 20.0), &movie, &SimConfig::new(AbrKind::Bola));
    let mbps: Vec<f64> = out.rungs.iter().map(|&r| movie.bitrates_kbps[r] / 1000.0).collect();
    let switches: f64 = mbps.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    let want = mbps.iter().sum::<f64>() - 4.3 * (out.qoe.startup_ms + out.qoe.stall_ms) / 1000.0 - switches;
    assert!((out.qoe.qoe - want).abs() < 1e-9, "{} vs {want}", out.qoe.qoe);
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_player-sim")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn cli_prints_the_contract_json() {
    let dir = tempfile::tempdir().unwrap();
    let movie = write(dir.path(), "movie.json", &serde_json::to_string(&movie()).unwrap());
    let traces = dir.path().join("traces");
    std::fs::create_dir(&traces).unwrap();
    for (name, t) in varying().iter().take(3) {
        write(&traces, &format!("{name}.json"), &serde_json::to_string(t).unwrap());
    }
    write(&traces, "README.md", "not a trace");
    let (ok, stdout, stderr) = cli(&["sim", "--network", traces.to_str().unwrap(), "--movie", &movie, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["sessions"], 3);
    for key in ["avg_bitrate_kbps", "rebuffer_ratio", "rebuffer_events", "switches", "startup_ms"] {
        assert!(v[key].is_number(), "{key} missing: {stdout}");
    }
    assert_eq!(v["per_session"][0]["trace"], "trace-0.json");
    assert!(v["qoe"].is_number(), "{stdout}");
    let (ok, table, _) = cli(&["sim", "--network", traces.to_str().unwrap(), "--movie", &movie, "--abr", "throughput"]);
    assert!(ok);
    assert!(table.contains("mean of 3 (throughput)"), "{table}");
    let csv = dir.path().join("out.csv");
    let (ok, _, stderr) = cli(&[
        "sim",
        "--network",
        traces.to_str().unwrap(),
        "--movie",
        &movie,
        "--abr",
        "robustmpc",
        "--sabre-compat",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("trace,abr,avg_bitrate_kbps,rebuffer_ratio"), "{text}");
    assert!(lines[1].starts_with("\"trace-0.json\",robustmpc,"), "{text}");
    let (ok, _, stderr) =
        cli(&["sim", "--network", traces.to_str().unwrap(), "--movie", &movie, "--sabre-compat", "--no-abandon"]);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn cli_compare_writes_cdf_plots_and_a_row_per_rule() {
    let dir = tempfile::tempdir().unwrap();
    let movie = write(dir.path(), "movie.json", &serde_json::to_string(&movie()).unwrap());
    let traces = dir.path().join("traces");
    std::fs::create_dir(&traces).unwrap();
    for (name, t) in varying().iter().take(3) {
        write(&traces, &format!("{name}.json"), &serde_json::to_string(t).unwrap());
    }
    let svg = dir.path().join("plots");
    let (ok, table, stderr) = cli(&[
        "compare",
        "--network",
        traces.to_str().unwrap(),
        "--movie",
        &movie,
        "--abr",
        "bola",
        "--abr",
        "ours",
        "--abr",
        "optimal",
        "--svg",
        svg.to_str().unwrap(),
        "--png",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().nth(2).unwrap().starts_with("ours"), "{table}");
    // With the optimum in the run, each rule's share of its QoE; the optimum's own is 100%.
    assert!(table.lines().next().unwrap().contains("qoe_vs_opt_sum"), "{table}");
    let optimal: Vec<&str> = table.lines().nth(3).unwrap().split_whitespace().collect();
    assert_eq!(optimal[0], "optimal", "{table}");
    assert_eq!(optimal[optimal.len() - 2..], ["100.0%", "100.0%"], "{table}");
    for f in ["cdf-bitrate.svg", "cdf-rebuffer.svg", "cdf-qoe.svg"] {
        let text = std::fs::read_to_string(svg.join(f)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{f}");
        for rule in ["bola", "ours", "optimal"] {
            assert!(text.lines().any(|l| l.trim() == rule), "{f}: no legend entry for {rule}");
        }
    }
    for f in ["cdf-bitrate.png", "cdf-rebuffer.png", "cdf-qoe.png"] {
        let bytes = std::fs::read(svg.join(f)).unwrap();
        let mut reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!((info.width, info.height), player_sim::plot::SIZE, "{f}");
        rgb.truncate(info.buffer_size());
        // Three rules: at least three colours besides white, grey and black.
        let mut colours: Vec<&[u8]> =
            rgb.chunks_exact(3).filter(|p| !(p[0] == p[1] && p[1] == p[2])).collect::<Vec<_>>();
        colours.sort();
        colours.dedup();
        assert!(colours.len() >= 3, "{f}: {} colours", colours.len());
    }
}

#[test]
fn cli_compare_names_the_missing_font_before_simulating() {
    let dir = tempfile::tempdir().unwrap();
    let movie = write(dir.path(), "movie.json", &serde_json::to_string(&movie()).unwrap());
    let trace = write(dir.path(), "net.json", r#"[{"duration_ms": 1000, "bandwidth_kbps": 1000, "latency_ms": 50}]"#);
    let plots = dir.path().join("plots");
    let missing = dir.path().join("no-such-font.ttf");
    let out = Command::new(env!("CARGO_BIN_EXE_player-sim"))
        .args(["compare", "--network", &trace, "--movie", &movie, "--png", plots.to_str().unwrap()])
        .env("PLAYER_SIM_FONT", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no table without the plots");
    assert!(stderr.contains("no-such-font.ttf") && stderr.contains("fonts-dejavu-core"), "{stderr}");
    assert!(!plots.join("cdf-bitrate.png").exists());
}

#[test]
fn cli_refuses_bad_input_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good_movie = write(d, "movie.json", &serde_json::to_string(&movie()).unwrap());
    let good_trace = write(d, "net.json", r#"[{"duration_ms": 1000, "bandwidth_kbps": 1000, "latency_ms": 50}]"#);
    let unsorted = write(
        d,
        "unsorted.json",
        r#"{"segment_duration_ms": 2000, "bitrates_kbps": [500, 300], "segment_sizes_bits": [[1000, 600]]}"#,
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![d.join("missing.json").to_string_lossy().into(), good_movie.clone()], "missing.json"),
        (vec![write(d, "bad.json", "[{"), good_movie.clone()], "invalid JSON"),
        (vec![write(d, "empty.json", "[]"), good_movie.clone()], "no periods"),
        (
            vec![
                write(d, "zero.json", r#"[{"duration_ms": 0, "bandwidth_kbps": 1000, "latency_ms": 50}]"#),
                good_movie.clone(),
            ],
            "duration_ms must be > 0",
        ),
        (vec![good_trace.clone(), unsorted], "ascending"),
        (vec![good_trace.clone(), d.join("nomovie.json").to_string_lossy().into()], "nomovie.json"),
    ];
    for (paths, want) in cases {
        let (ok, stdout, stderr) = cli(&["sim", "--network", &paths[0], "--movie", &paths[1], "--json"]);
        assert!(!ok, "{paths:?} should fail");
        assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
        assert!(stderr.contains(want), "{paths:?}: want {want:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (ok, _, stderr) = cli(&["sim", "--network", &good_trace, "--movie", &good_movie, "--abr", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("unknown ABR"), "{stderr}");
}
