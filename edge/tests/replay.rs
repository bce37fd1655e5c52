//! `edge replay` on generated logs: the library and the binary.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use edge::replay::{replay_file, replay_reader};
use vod::log::HEADER;
use vod::plan::{FillPlan, PlannedObject};

const OBJECTS: u64 = 200;
const OBJECT_BYTES: u64 = 1000;

/// A day of `rows` requests over `OBJECTS` segments with a skewed popularity:
/// object i is picked with weight ~ 1/(i+1). Deterministic (an LCG).
fn log_text(rows: usize) -> String {
    let weights: Vec<f64> = (0..OBJECTS).map(|i| 1.0 / (i + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = format!("{HEADER}\n");
    for r in 0..rows {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut u = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut i = 0;
        while i + 1 < weights.len() && u >= weights[i] {
            u -= weights[i];
            i += 1;
        }
        out.push_str(&format!(
            "{},10.1.0.{},{},{}\n",
            1_760_000_000_000u64 + r as u64 * 100,
            r % 250,
            key(i as u64),
            OBJECT_BYTES
        ));
    }
    out
}

fn key(i: u64) -> String {
    format!("titles/t{}/v1/{}.m4s", i / 50, i % 50 + 1)
}

fn plan(objects: u64) -> FillPlan {
    let objects: Vec<_> = (0..objects)
        .map(|i| PlannedObject { key: key(i), bytes: OBJECT_BYTES, expected_requests: 100.0 / (i + 1) as f64 })
        .collect();
    let total_bytes = objects.iter().map(|o| o.bytes).sum();
    FillPlan { edge_bytes: total_bytes, total_bytes, objects }
}

#[test]
fn totals_cover_the_log_and_hits_are_sane() {
    let text = log_text(5000);
    let distinct = text.lines().skip(1).map(|l| l.split(',').nth(2).unwrap()).collect::<HashSet<_>>().len() as u64;
    let r = replay_reader(text.as_bytes(), "day.csv", 20 * OBJECT_BYTES, 0, None).unwrap();
    assert_eq!(r.requests, 5000);
    assert_eq!(r.bytes, 5000 * OBJECT_BYTES);
    assert_eq!(r.hit_bytes + r.origin_bytes, r.bytes);
    assert_eq!(r.hit_requests, r.ram_hit_requests + r.disk_hit_requests);
    assert_eq!(r.disk_hit_requests, 0, "a zero-byte disk tier holds nothing");
    assert!(r.hit_requests > 1000 && r.hit_requests < 5000 - distinct, "{r:?}");
    assert!((r.byte_hit_ratio - r.hit_bytes as f64 / r.bytes as f64).abs() < 1e-12);
    assert_eq!(r.disk_tier, "disk_log");

    // Room for everything: only the first request of each object misses.
    let all = replay_reader(text.as_bytes(), "day.csv", OBJECTS * OBJECT_BYTES, 0, None).unwrap();
    assert_eq!(all.requests - all.hit_requests, distinct);
    assert_eq!(all.origin_bytes, distinct * OBJECT_BYTES);

    // A disk tier behind the same RAM adds hits, and they are counted as disk hits.
    let tiered = replay_reader(text.as_bytes(), "day.csv", 20 * OBJECT_BYTES, 100 * OBJECT_BYTES, None).unwrap();
    assert!(tiered.hit_requests > r.hit_requests, "{} <= {}", tiered.hit_requests, r.hit_requests);
    assert!(tiered.disk_hit_requests > 0);

    // Same log, same figures: the replay is repeatable.
    assert_eq!(replay_reader(text.as_bytes(), "day.csv", 20 * OBJECT_BYTES, 0, None).unwrap(), r);
}

#[test]
fn prefill_raises_hits() {
    let text = log_text(3000);
    let disk = 60 * OBJECT_BYTES;
    let cold = replay_reader(text.as_bytes(), "day.csv", 5 * OBJECT_BYTES, disk, None).unwrap();
    let warm = replay_reader(text.as_bytes(), "day.csv", 5 * OBJECT_BYTES, disk, Some(&plan(60))).unwrap();
    assert!(warm.hit_requests > cold.hit_requests, "{} <= {}", warm.hit_requests, cold.hit_requests);
    assert!(warm.origin_bytes < cold.origin_bytes);
    assert_eq!((warm.prefill_objects, warm.prefill_bytes, warm.prefill_held_bytes), (60, disk, disk));
    assert_eq!(warm.requests, cold.requests);

    // Everything prefilled into a disk that holds it all: no request misses.
    let full = replay_reader(text.as_bytes(), "day.csv", 0, OBJECTS * OBJECT_BYTES, Some(&plan(OBJECTS))).unwrap();
    assert_eq!((full.hit_requests, full.origin_bytes), (full.requests, 0));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

#[test]
fn the_binary_prints_the_contract_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "day.csv", &log_text(2000));
    let plan_path = write(dir.path(), "plan.json", &serde_json::to_string(&plan(30)).unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["replay", "--log"])
        .arg(&log)
        .args(["--ram-bytes", "10000", "--disk-bytes", "50000", "--prefill"])
        .arg(&plan_path)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["requests", "hit_requests", "bytes", "hit_bytes", "byte_hit_ratio", "origin_bytes"] {
        assert!(v.get(field).is_some_and(|f| f.is_number()), "{field} missing in {v}");
    }
    assert_eq!(v["requests"], 2000);
    assert_eq!(v["bytes"], 2000 * OBJECT_BYTES);
    assert_eq!(v["disk_tier"], "disk_log");
    let lib = replay_file(&log, 10_000, 50_000, Some(&plan(30))).unwrap();
    assert_eq!(v["hit_requests"], lib.hit_requests, "binary and library disagree");
}

#[test]
fn the_binary_rejects_a_bad_log_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "bad.csv", &format!("{HEADER}\n1,10.0.0.1,titles/t/v1/1.m4s,5\n2,nope,k,5\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["replay", "--log"])
        .arg(&log)
        .args(["--ram-bytes", "1000", "--disk-bytes", "0", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("bad.csv"), "{err}");
    assert!(out.stdout.is_empty(), "no half report on stdout");
}

/// Hot objects re-requested between bursts of one-hit wonders (a scan): the
/// frequency-aware disk log keeps the hot set where FIFO and LRU flush it.
#[test]
fn the_frequency_log_resists_scans_better_than_fifo_and_lru() {
    use edge::replay::{replay_reader_with, ReplayPolicy};
    let mut text = format!("{HEADER}\n");
    let mut row = 0u64;
    let mut push = |key: String| {
        text.push_str(&format!("{},10.0.0.1,{key},{OBJECT_BYTES}\n", 1_760_000_000_000u64 + row));
        row += 1;
    };
    for round in 0..40u64 {
        for hot in 0..30 {
            push(key(hot));
        }
        for cold in 0..60 {
            push(format!("titles/scan{round}/v1/{}.m4s", cold + 1));
        }
    }
    let disk = 50 * OBJECT_BYTES;
    let ratio = |p| replay_reader_with(text.as_bytes(), "scan.csv", 0, disk, None, p).unwrap().byte_hit_ratio;
    let (freq, fifo, lru) = (ratio(ReplayPolicy::Frequency), ratio(ReplayPolicy::Fifo), ratio(ReplayPolicy::Lru));
    assert!(freq > fifo + 0.1 && freq > lru + 0.1, "frequency {freq:.3}, fifo {fifo:.3}, lru {lru:.3}");
}
