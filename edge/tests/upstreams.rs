//! Upstream lists, circuit breakers and stale-if-error.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

/// A relay to `target` that passes Range and If-Range on, records the Range
/// of each request, and hangs up after `cut_after` body bytes when set.
async fn relay(target: String, cut_after: Option<usize>) -> (String, Arc<Mutex<Vec<String>>>, AbortOnDrop) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (target, seen) = (target.clone(), seen.clone());
            tokio::spawn(async move {
                let Some(req) = read_head(&mut s).await else { return };
                let head = String::from_utf8_lossy(&req).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.trim().to_owned())
                };
                seen.lock().unwrap().push(header("range").unwrap_or_default());
                let mut up = client().get(format!("{target}{path}"));
                for name in ["range", "if-range"] {
                    if let Some(v) = header(name) {
                        up = up.header(name, v);
                    }
                }
                let Ok(up) = up.send().await else { return };
                let mut out = format!("HTTP/1.1 {}\r\n", up.status());
                for name in ["content-length", "etag", "content-range"] {
                    if let Some(v) = up.headers().get(name) {
                        out.push_str(&format!("{name}: {}\r\n", v.to_str().unwrap()));
                    }
                }
                out.push_str("\r\n");
                let body = up.bytes().await.unwrap();
                let n = cut_after.unwrap_or(body.len()).min(body.len());
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.write_all(&body[..n]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, ranges, AbortOnDrop(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_mid_way_goes_on_from_the_next_upstream_in_the_same_response() {
    const LEN: usize = 400_000;
    let seg = body(4, LEN);
    let (origin, _dir) = start_origin(&[(SEG, seg.clone())]).await;
    let (cutting, cut_ranges, _t1) = relay(origin.url(), Some(LEN / 2)).await;
    let (next, next_ranges, _t2) = relay(origin.url(), None).await;
    let cfg = edge::EdgeConfig { upstreams: vec![next], ..edge_config(&cutting) };
    let edge = start_edge(cfg).await;

    // One response, complete and right, although the first upstream hung up half way.
    let (status, cache, got) = get(edge.addr, SEG).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert!(got == seg, "the resumed body differs from the object ({} of {LEN} bytes)", got.len());
    assert_eq!(*cut_ranges.lock().unwrap(), [""], "the first upstream is asked once, for the whole object");
    let asked = next_ranges.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "one request for the rest: {asked:?}");
    let from: usize = asked[0].strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).unwrap().parse().unwrap();
    assert!(from > 0 && from <= LEN / 2, "resumed at byte {from}, the cut was at {}", LEN / 2);
    // Stored whole: the next request is a hit, the cut counted against the first upstream.
    let (status, cache, got) = get(edge.addr, SEG).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert!(got == seg);
    assert_eq!(metric(edge.addr, "edge_upstream_errors_total").await, 1.0);
    edge.stop().await;
    origin.stop().await;
}
