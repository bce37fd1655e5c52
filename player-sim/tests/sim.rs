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
const SABRE: [(&str, AbrKind, f64, f64); 4] = [
    ("sabre-3g", AbrKind::Bola, 1107.9, 0.0843),
    ("sabre-3g", AbrKind::Throughput, 812.4, 0.0779),
    ("sabre-4g", AbrKind::Bola, 5882.7, 0.00028),
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
    let (ok, table, _) = cli(&["sim", "--network", traces.to_str().unwrap(), "--movie", &movie, "--abr", "throughput"]);
    assert!(ok);
    assert!(table.contains("mean of 3 (throughput)"), "{table}");
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
