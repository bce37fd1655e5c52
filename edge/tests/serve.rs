//! The edge in front of a real origin (or a fake upstream), over loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vod::token::TokenKey;
use vod::TitleId;

const SEG: &str = "titles/t1/v1/1.m4s";
const SEG2: &str = "titles/t1/v1/2.m4s";
const MASTER: &str = "titles/t1/hls/master.m3u8";

fn objects() -> Vec<(&'static str, Vec<u8>)> {
    vec![(SEG, body(1, 5000)), (SEG2, body(2, 3000)), (MASTER, b"#EXTM3U\n".to_vec())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_origins_bytes_then_hits_from_cache() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let c = client();
    let from_origin = c.get(format!("{}/{SEG}", origin.url())).send().await.unwrap();
    let origin_etag = from_origin.headers()["etag"].clone();

    let first = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(first.headers()["etag"], origin_etag, "the edge keeps the origin's validator");
    assert_eq!(first.headers()["cache-control"], origin::http_object::IMMUTABLE);
    assert_eq!(first.headers()["access-control-allow-origin"], "*");
    assert_eq!(&first.bytes().await.unwrap()[..], &body(1, 5000)[..]);

    let second = c.get(format!("{}/t/{}/{SEG}", edge.url(), token("t1"))).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(&second.bytes().await.unwrap()[..], &body(1, 5000)[..]);

    // HEAD and If-None-Match are answered from cache too.
    let head = c.head(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["content-length"].to_str().unwrap()), (200, "5000"));
    assert_eq!(head.headers()["x-cache"], "HIT");
    let not_modified =
        c.get(format!("{}/{SEG}", edge.url())).header("if-none-match", origin_etag).send().await.unwrap();
    assert_eq!(not_modified.status(), 304);

    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 1.0);
    assert_eq!(metric(edge.addr, "edge_upstream_bytes_total").await, 5000.0);
    assert_eq!(metric(edge.addr, "edge_cache_bytes").await, 5000.0);
    assert_eq!(metric(edge.addr, "edge_bytes_served_total").await, 10000.0, "two full GETs; HEAD and 304 send no body");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_upstream_fetch() {
    let (origin, _dir) = start_origin(&objects()).await;
    let proxy = GatedProxy::start(&origin.url()).await;
    let edge = start_edge(edge_config(&proxy.url())).await;
    let c = client();
    let tasks = cold_burst(&c, edge.addr, SEG, 20);
    // Hold the one upstream fetch until the other 19 requests are waiting on it.
    let all_waiting = eventually(|| async { metric(edge.addr, "edge_coalesced_requests_total").await >= 19.0 }).await;
    proxy.open();
    assert!(all_waiting, "19 requests never joined the fetch in flight");
    for t in tasks {
        let (status, bytes) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&bytes[..], &body(1, 5000)[..]);
    }
    assert_eq!(proxy.hits(), 1, "upstream saw more than one request");
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 1.0);
    assert_eq!(metric(edge.addr, "edge_requests_total").await, 20.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_paths_need_a_valid_token_for_the_title() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let good = token("t1");
    assert_eq!(raw_get(edge.addr, &format!("/t/{good}/{SEG}"), "").await.0, 200);

    let title = TitleId::new("t1").unwrap();
    let key = TokenKey::new("k1", SECRET.as_bytes().to_vec());
    let mut forged = good.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let wrong_secret = TokenKey::new("k1", b"other".to_vec()).sign(&title, now_s() + 600);
    let expired = key.sign(&title, now_s() - 1);
    let other_title = key.sign(&TitleId::new("t2").unwrap(), now_s() + 600);
    // SEG2 is cold: a refused request must not fill it.
    for tok in [forged.as_str(), &wrong_secret, &expired, &other_title, "garbage", ""] {
        let (status, text) = raw_get(edge.addr, &format!("/t/{tok}/{SEG2}"), "").await;
        assert_eq!(status, 403, "token {tok:?}: {text}");
        assert!(text.contains("token"), "{text}");
    }
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 1.0, "refused requests touched upstream");
    // A missing token segment leaves no valid key behind it.
    assert_eq!(raw_get(edge.addr, &format!("/t/{SEG}"), "").await.0, 400);
    assert_eq!(raw_get(edge.addr, &format!("/t/{good}"), "").await.0, 400);
    edge.stop().await;

    // Without a secret the edge refuses every signed path.
    let unkeyed = start_edge(edge::EdgeConfig::new(origin.url(), 1_000_000)).await;
    assert_eq!(raw_get(unkeyed.addr, &format!("/t/{good}/{SEG}"), "").await.0, 403);
    unkeyed.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_before_any_fill() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let good = token("t1");
    for target in [
        "/titles/../../etc/passwd",
        "/titles/t1/v1/../../../etc/passwd",
        "/titles/%2e%2e/%2e%2e/etc/passwd",
        "/titles/t1/v1/%2e%2e%2fcatalog.json",
        "/titles/t1/v1/%31.m4s",
        "/titles//v1/1.m4s",
        "/titles/t1/v1/1.m4s/",
        "/etc/passwd",
    ] {
        assert_eq!(raw_get(edge.addr, target, "").await.0, 400, "edge {target}");
        assert_eq!(raw_get(edge.addr, &format!("/t/{good}{target}"), "").await.0, 400, "signed {target}");
    }
    // hyper refuses a raw backslash itself; either way it is a 400.
    assert_eq!(raw_get(edge.addr, "/titles/t1\\v1/1.m4s", "").await.0, 400);
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 0.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_from_cache() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let c = client();
    let url = format!("{}/t/{}/{SEG}", edge.url(), token("t1"));
    // A cold Range request fills the whole object and answers the range.
    let r = c.get(&url).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.headers()["content-range"], "bytes 100-199/5000");
    assert_eq!(&r.bytes().await.unwrap()[..], &body(1, 5000)[100..200]);
    // The range streamed out of the fill, which may still be storing the object.
    assert!(eventually(|| async { metric(edge.addr, "edge_cache_objects").await == 1.0 }).await);
    let r = c.get(&url).header("range", "bytes=4990-").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap()), (206, "HIT"));
    assert_eq!(&r.bytes().await.unwrap()[..], &body(1, 5000)[4990..]);
    let r = c.get(&url).header("range", "bytes=5000-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */5000");
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 1.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_is_a_quick_502_and_nothing_is_cached() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let edge = start_edge(edge_config(&format!("http://{dead_addr}"))).await;
    for _ in 0..2 {
        let started = Instant::now();
        let (status, text) = raw_get(edge.addr, &format!("/{SEG}"), "").await;
        assert_eq!(status, 502, "{text}");
        assert!(text.contains("unreachable"), "{text}");
        assert!(!text.contains(&dead_addr.to_string()), "the upstream's address leaked to the client: {text}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 2.0);
    assert_eq!(metric(edge.addr, "edge_upstream_errors_total").await, 2.0);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_is_a_504() {
    let (origin, _dir) = start_origin(&objects()).await;
    let proxy = GatedProxy::start(&origin.url()).await; // never opened
    let edge = start_edge(fast_timeout(&proxy.url())).await;
    let started = Instant::now();
    let (status, text) = raw_get(edge.addr, &format!("/{SEG}"), "").await;
    assert_eq!(status, 504, "{text}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    edge.stop().await;
    origin.stop().await;

    fn fast_timeout(upstream: &str) -> edge::EdgeConfig {
        edge::EdgeConfig { upstream_timeout_ms: 300, ..edge_config(upstream) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_is_a_404_and_not_cached() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    for _ in 0..2 {
        assert_eq!(raw_get(edge.addr, "/titles/t1/v1/99.m4s", "").await.0, 404);
    }
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, 2.0);
    assert_eq!(metric(edge.addr, "edge_upstream_errors_total").await, 0.0, "a 404 is not an upstream failure");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_body_is_never_cached() {
    let (addr, conns, _task) = truncating_upstream(100, 50).await;
    let edge = start_edge(edge_config(&format!("http://{addr}"))).await;
    for _ in 0..2 {
        // The head went out as the fill started; the cut aborts the body.
        let r = client().get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
        assert_eq!(r.headers()["content-length"], "100");
        assert!(r.bytes().await.is_err(), "50 of 100 bytes reached the client as a complete body");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "the second request must refetch");
    assert_eq!(metric(edge.addr, "edge_cache_objects").await, 0.0);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_follow_their_ttl_segments_stay() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge::EdgeConfig { manifest_ttl_ms: 0, ..edge_config(&origin.url()) }).await;
    let c = client();
    let mut seen = Vec::new();
    for path in [MASTER, MASTER, SEG, SEG] {
        let r = c.get(format!("{}/{path}", edge.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        seen.push(r.headers()["x-cache"].to_str().unwrap().to_owned());
        // Whole body read: a streamed miss is stored by then.
        r.bytes().await.unwrap();
    }
    assert_eq!(seen, ["MISS", "MISS", "MISS", "HIT"]);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_cors_and_methods() {
    let (origin, _dir) = start_origin(&objects()).await;
    let edge = start_edge(edge::EdgeConfig { name: "edge-x".into(), ..edge_config(&origin.url()) }).await;
    let c = client();
    let r = c.get(format!("{}/health", edge.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
    let r = c.request(reqwest::Method::OPTIONS, format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = c.post(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = c.get(format!("{}/metrics", edge.url())).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let text = r.text().await.unwrap();
    for name in ["edge_requests_total{result=\"hit\"}", "edge_bytes_served_total", "edge_info{name=\"edge-x\"}"] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let r = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(r.headers()["x-served-by"], "edge-x");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_has_a_row_per_object_request() {
    let (origin, _dir) = start_origin(&objects()).await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("requests.csv");
    let edge = start_edge(edge::EdgeConfig { request_log: Some(path.clone()), ..edge_config(&origin.url()) }).await;
    let good = token("t1");
    assert_eq!(raw_get(edge.addr, &format!("/t/{good}/{SEG}"), "").await.0, 200);
    // A range request logs the object's full size; the forwarded address wins over the peer.
    let xff = "Range: bytes=0-9\r\nX-Forwarded-For: 10.1.2.3, 192.0.2.1\r\n";
    assert_eq!(raw_get(edge.addr, &format!("/t/{good}/{SEG2}"), xff).await.0, 206);
    // Refused and failed requests are not demand for an object.
    assert_eq!(raw_get(edge.addr, &format!("/t/garbage/{SEG}"), "").await.0, 403);
    assert_eq!(raw_get(edge.addr, "/titles/t1/v1/99.m4s", "").await.0, 404);
    edge.stop().await; // flushes the log
    let rows = vod::log::parse_log(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let got: Vec<_> = rows.iter().map(|r| (r.client_ip.to_string(), r.key.as_str(), r.bytes)).collect();
    assert_eq!(got, [("127.0.0.1".to_owned(), SEG, 5000), ("10.1.2.3".to_owned(), SEG2, 3000)]);
    assert!(rows[0].ts_ms > 1_600_000_000_000 && rows[0].ts_ms <= rows[1].ts_ms);

    // A restart appends to the same file without a second header.
    let edge = start_edge(edge::EdgeConfig { request_log: Some(path.clone()), ..edge_config(&origin.url()) }).await;
    assert_eq!(raw_get(edge.addr, &format!("/{SEG}"), "").await.0, 200);
    edge.stop().await;
    assert_eq!(vod::log::parse_log(&std::fs::read_to_string(&path).unwrap()).unwrap().len(), 3);
    origin.stop().await;
}
