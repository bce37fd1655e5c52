//! Upstream lists, circuit breakers and stale-if-error.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SEG: &str = "titles/t1/v1/1.m4s";
const SEG2: &str = "titles/t1/v1/2.m4s";
const SEG3: &str = "titles/t1/v1/3.m4s";
const MASTER: &str = "titles/t1/hls/master.m3u8";

fn objects() -> Vec<(&'static str, Vec<u8>)> {
    vec![(SEG, body(1, 5000)), (SEG2, body(2, 3000)), (SEG3, body(3, 4000)), (MASTER, b"#EXTM3U\n".to_vec())]
}

async fn get(edge: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let r = client().get(format!("http://{edge}/{path}")).send().await.unwrap();
    let cache = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (r.status().as_u16(), cache, r.bytes().await.unwrap().to_vec())
}

/// True if a GET of `path` got a head promising a body that then broke off
/// (what a client sees of a fill whose upstream cut it mid-body).
async fn get_breaks_off(edge: SocketAddr, path: &str) -> bool {
    let r = client().get(format!("http://{edge}/{path}")).send().await.unwrap();
    r.status() == 200 && r.bytes().await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_upstream_opens_its_breaker_and_the_next_one_serves() {
    let (origin, _dir) = start_origin(&objects()).await;
    let (bad, conns, _task) = truncating_upstream(100, 10).await;
    let cfg = edge::EdgeConfig {
        upstreams: vec![origin.url()],
        breaker_failures: 3,
        breaker_cooldown_ms: 60_000,
        ..edge_config(&format!("http://{bad}"))
    };
    let edge = start_edge(cfg).await;
    // A miss streams as it arrives, so a body cut mid-way reaches its
    // clients as an aborted response; each one counts against the breaker.
    for attempt in 0..3 {
        assert!(get_breaks_off(edge.addr, SEG).await, "attempt {attempt}: not an aborted body");
    }
    for (key, bytes) in objects() {
        let (status, cache, got) = get(edge.addr, key).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"), "{key}");
        assert_eq!(got, bytes, "{key}");
    }
    let tried = conns.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tried, 3, "the broken upstream is skipped once its breaker is open");
    assert_eq!(metric(edge.addr, "edge_upstream_errors_total").await, 3.0);
    edge.stop().await;
    origin.stop().await;
}

/// An origin over `root` on exactly `addr` (to bring one back where it was).
async fn origin_at(addr: SocketAddr, root: &std::path::Path) -> Running<std::io::Error> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = origin::OriginConfig { listen: addr, root: root.to_owned() };
    let task = tokio::spawn(origin::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running::new(addr, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_serves_what_is_cached_fails_fast_otherwise_and_recovers() {
    let (origin, dir) = start_origin(&objects()).await;
    let origin_addr = origin.addr;
    let cfg = edge::EdgeConfig { manifest_ttl_ms: 0, upstream_timeout_ms: 500, ..edge_config(&origin.url()) };
    let edge = start_edge(cfg).await;
    assert_eq!(get(edge.addr, MASTER).await.0, 200);
    assert_eq!(get(edge.addr, SEG).await.0, 200);
    origin.stop().await;

    // The manifest has expired (TTL 0) but its last copy is served; the segment is cached.
    let (status, cache, got) = get(edge.addr, MASTER).await;
    assert_eq!((status, cache.as_str(), got.as_slice()), (200, "STALE", &b"#EXTM3U\n"[..]));
    let (status, cache, got) = get(edge.addr, SEG).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(got, body(1, 5000));
    // Nothing cached: a 502 well within the upstream timeout (the port refuses).
    let started = Instant::now();
    assert_eq!(get(edge.addr, SEG2).await.0, 502);
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());

    // The origin comes back on the same address: fills work again.
    let origin = origin_at(origin_addr, dir.path()).await;
    let (status, cache, got) = get(edge.addr, SEG2).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(got, body(2, 3000));
    let (status, cache, _) = get(edge.addr, MASTER).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "fresh again once the origin answers");
    assert_eq!(metric(edge.addr, "edge_requests_total").await, 7.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_breaker_open_requests_fail_at_once() {
    let (bad, conns, _task) = truncating_upstream(100, 10).await;
    let cfg =
        edge::EdgeConfig { breaker_failures: 1, breaker_cooldown_ms: 60_000, ..edge_config(&format!("http://{bad}")) };
    let edge = start_edge(cfg).await;
    assert!(get_breaks_off(edge.addr, SEG).await);
    for path in [SEG, SEG2, SEG3] {
        let started = Instant::now();
        assert_eq!(get(edge.addr, path).await.0, 502);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    edge.stop().await;
}
