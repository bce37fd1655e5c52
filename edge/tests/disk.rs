//! The disk tier under a real edge: warm restarts, corruption, SIGKILL.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn key(n: usize) -> String {
    format!("titles/t{}/v1/{}.m4s", n % 3 + 1, n + 1)
}

/// `count` segments of 20–60 KB of pseudo-random bytes (no two alike anywhere).
fn segments(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count).map(|n| (key(n), noise(n as u64, 20_000 + (n * 7919) % 40_000))).collect()
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn as_refs(objs: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    objs.iter().map(|(k, b)| (k.as_str(), b.clone())).collect()
}

/// An edge whose RAM tier is too small for any segment, so every hit is a disk hit.
fn disk_edge(upstream: &str, dir: &Path) -> edge::EdgeConfig {
    edge::EdgeConfig {
        disk_path: Some(dir.to_owned()),
        disk_bytes: Some(64 << 20),
        upstream_timeout_ms: 1000,
        ..edge::EdgeConfig::new(upstream, 1000)
    }
}

async fn get(url: String) -> (u16, String, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let cache = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (r.status().as_u16(), cache, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_disk_tier_warm_and_flipped_bytes_are_refetched() {
    let objs = segments(12);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(disk_edge(&origin.url(), dir.path())).await;
    for (k, b) in &objs {
        let (status, cache, got) = get(format!("{}/{k}", edge.url())).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        assert_eq!(&got, b);
    }
    let (status, cache, _) = get(format!("{}/{}", edge.url(), objs[0].0)).await;
    assert_eq!((status, cache.as_str()), (200, "HIT-DISK"));
    edge.stop().await;

    // Restart with the origin unreachable: everything still comes off the disk.
    let dead = "http://127.0.0.1:9";
    let edge = start_edge(disk_edge(dead, dir.path())).await;
    for (k, b) in &objs {
        let (status, cache, got) = get(format!("{}/{k}", edge.url())).await;
        assert_eq!((status, cache.as_str()), (200, "HIT-DISK"), "{k}");
        assert_eq!(&got, b, "{k}");
    }
    edge.stop().await;

    // Flip one byte inside each of three objects; they must be refetched, never served.
    let store = dir.path().join("store.bin");
    let mut bytes = std::fs::read(&store).unwrap();
    for (_, b) in objs.iter().take(3) {
        let at = bytes.windows(64).position(|w| w == &b[1000..1064]).expect("object not found in the store");
        bytes[at + 10] ^= 0x55;
    }
    std::fs::write(&store, &bytes).unwrap();
    let edge = start_edge(disk_edge(&origin.url(), dir.path())).await;
    for (k, b) in &objs {
        let (status, _, got) = get(format!("{}/{k}", edge.url())).await;
        assert_eq!(status, 200);
        assert_eq!(&got, b, "{k} served with flipped bytes");
    }
    assert_eq!(metric(edge.addr, "edge_disk_corrupt_total").await, 3.0);
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 3.0, "only the corrupt objects are refetched");
    assert_eq!(metric(edge.addr, "edge_requests_total").await, 12.0);
    edge.stop().await;
    origin.stop().await;
}

/// The real `edge` binary in front of `upstream`, with an 8 MB disk tier in `dir`.
fn start_edge_process(upstream: &str, dir: &Path) -> EdgeProcess {
    let dir = dir.display().to_string();
    EdgeProcess::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--ram-bytes",
        "1000",
        "--disk-path",
        &dir,
        "--disk-bytes",
        "8000000",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_filling_then_restart_serves_only_the_origins_bytes() {
    // 8 MB of disk (two regions) for 200 objects of ~40 KB, 8 MB in all: the
    // log wraps, so the kill can land during writes, moves and evictions.
    let objs = segments(200);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut edge = start_edge_process(&origin.url(), dir.path());
    let url = format!("http://{}", edge.addr);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = objs
        .iter()
        .map(|(k, _)| {
            let (url, tx) = (format!("{url}/{k}"), done_tx.clone());
            tokio::spawn(async move {
                let ok = match client().get(url).send().await {
                    Ok(r) => r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let _ = tx.send(ok);
            })
        })
        .collect();
    // Kill it once a third of the fills have been answered, with the rest in flight.
    let mut answered = 0;
    while answered < objs.len() / 3 {
        let ok = tokio::time::timeout(DEADLINE, done_rx.recv()).await.expect("fills stalled").unwrap();
        answered += usize::from(ok);
    }
    edge.kill();
    for t in tasks {
        t.await.unwrap();
    }

    let edge = start_edge_process(&origin.url(), dir.path());
    let url = format!("http://{}", edge.addr);
    let started = Instant::now();
    assert!(sample(edge.addr, "edge_cache_objects{tier=\"disk\"}").await > 0.0, "nothing survived the kill");
    for (k, b) in &objs {
        let (status, _, got) = get(format!("{url}/{k}")).await;
        assert_eq!(status, 200, "{k}");
        assert!(&got == b, "{k}: {} bytes differ from the origin's", got.len());
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        sample(edge.addr, "edge_requests_total{result=\"disk_hit\"}").await > 0.0,
        "the restart did not serve from the disk tier"
    );
    // Read everything again: now from the disk tier, still byte for byte.
    for (k, b) in objs.iter().rev().take(50) {
        let (status, _, got) = get(format!("{url}/{k}")).await;
        assert!(status == 200 && &got == b, "{k}");
    }
    drop(edge);
    origin.stop().await;
}

/// One labelled sample of the edge's `/metrics` (0 if absent).
async fn sample(edge: SocketAddr, series: &str) -> f64 {
    let text = client().get(format!("http://{edge}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_pins_the_plan_on_disk_and_a_restart_does_not_refetch_it() {
    let objs = segments(6);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let dir = tempfile::tempdir().unwrap();
    let plan_dir = tempfile::tempdir().unwrap();
    let plan = vod::plan::FillPlan {
        edge_bytes: 1 << 30,
        total_bytes: objs[..4].iter().map(|(_, b)| b.len() as u64).sum(),
        objects: objs[..4]
            .iter()
            .map(|(k, b)| vod::plan::PlannedObject { key: k.clone(), bytes: b.len() as u64, expected_requests: 1.0 })
            .collect(),
    };
    let plan_path = plan_dir.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_string(&plan).unwrap()).unwrap();
    let cfg =
        |upstream: &str| edge::EdgeConfig { prefill_plan: Some(plan_path.clone()), ..disk_edge(upstream, dir.path()) };
    let edge = start_edge(cfg(&origin.url())).await;
    let pinned =
        eventually(|| async { sample(edge.addr, "edge_disk_pinned_bytes").await == plan.total_bytes as f64 }).await;
    assert!(pinned, "the plan was not pinned on disk");
    for (k, b) in &objs[..4] {
        let (status, cache, got) = get(format!("{}/{k}", edge.url())).await;
        assert_eq!((status, cache.as_str()), (200, "HIT-DISK"), "{k}");
        assert_eq!(&got, b);
    }
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 4.0);
    edge.stop().await;

    let edge = start_edge(cfg(&origin.url())).await;
    let pinned =
        eventually(|| async { sample(edge.addr, "edge_disk_pinned_bytes").await == plan.total_bytes as f64 }).await;
    assert!(pinned);
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 0.0, "a restart refetched the plan");
    edge.stop().await;
    origin.stop().await;
}
