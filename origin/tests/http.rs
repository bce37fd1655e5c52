//! The origin over real sockets: conditionals, ranges, hostile paths,
//! streaming of big objects, and the limits that protect it from clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{request, send_raw, TestOrigin};
use origin::{LocalStore, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vod::ObjectKey;

const SEG: &str = "/titles/t/v1/1.m4s";

fn store_with_segment(dir: &std::path::Path) -> (LocalStore, Vec<u8>) {
    let store = LocalStore::new(dir);
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    store.put_blocking(&ObjectKey::parse(&SEG[1..]).unwrap(), &body).unwrap();
    (store, body)
}

#[tokio::test]
async fn conditionals_and_if_range() {
    let dir = tempfile::tempdir().unwrap();
    let (store, body) = store_with_segment(dir.path());
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let full = request(o.addr, "GET", SEG, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, body);
    let etag = full.header("etag").unwrap().to_owned();
    let lm = full.header("last-modified").expect("Last-Modified").to_owned();
    assert_eq!(full.header("cache-control"), Some(origin::http_object::IMMUTABLE));

    assert_eq!(request(o.addr, "GET", SEG, &[("If-None-Match", &etag)]).await.status, 304);
    assert_eq!(request(o.addr, "GET", SEG, &[("If-Modified-Since", &lm)]).await.status, 304);
    let old = "Thu, 01 Jan 1998 00:00:00 GMT";
    assert_eq!(request(o.addr, "GET", SEG, &[("If-Modified-Since", old)]).await.status, 200);
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        request(o.addr, "GET", SEG, &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)]).await.status,
        200
    );
    assert_eq!(request(o.addr, "GET", SEG, &[("If-Match", "\"other\"")]).await.status, 412);
    assert_eq!(request(o.addr, "GET", SEG, &[("If-Unmodified-Since", old)]).await.status, 412);

    // If-Range with the current validator: the range; with a stale one: the whole object.
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=100-199"), ("If-Range", &etag)]).await;
    assert_eq!((r.status, r.body.as_slice()), (206, &body[100..200]));
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=100-199"), ("If-Range", &lm)]).await;
    assert_eq!(r.status, 206);
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=100-199"), ("If-Range", "\"stale\"")]).await;
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=100-199"), ("If-Range", old)]).await;
    assert_eq!(r.status, 200);
    o.stop().await;
}

#[tokio::test]
async fn ranges_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let (store, body) = store_with_segment(dir.path());
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=-10")]).await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 9990-9999/10000")));
    assert_eq!(r.body, &body[9990..]);
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=9000-")]).await;
    assert_eq!((r.status, r.body.len()), (206, 1000));
    let r = request(o.addr, "GET", SEG, &[("Range", "bytes=10000-")]).await;
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */10000")));
    // A thousand ranges get the whole object, not a crash or a multipart bomb.
    let many: Vec<String> = (0..1000).map(|i| format!("{i}-{i}")).collect();
    let many = format!("bytes={}", many.join(","));
    let r = request(o.addr, "GET", SEG, &[("Range", &many)]).await;
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    let r = request(o.addr, "HEAD", SEG, &[]).await;
    assert_eq!((r.status, r.header("content-length"), r.body.len()), (200, Some("10000"), 0));
    let r = request(o.addr, "OPTIONS", SEG, &[]).await;
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some("*")));
    assert_eq!(request(o.addr, "POST", SEG, &[]).await.status, 405);
    o.stop().await;
}

#[tokio::test]
async fn hostile_and_unknown_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_segment(dir.path());
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let root = dir.path().to_string_lossy().to_string();
    for p in [
        "/titles/../secret.txt",
        "/titles/t/%2e%2e/%2e%2e/secret.txt",
        "/titles/t/v1/..%2f..%2f..%2fsecret.txt",
        "/titles/t/v1\\..\\..\\secret.txt",
        "/titles//t/v1/1.m4s",
    ] {
        let r = request(o.addr, "GET", p, &[]).await;
        assert_eq!(r.status, 400, "{p}");
        assert!(!String::from_utf8_lossy(&r.body).contains("secret"), "{p}");
    }
    for p in ["/titles/t/v1/2.m4s", "/titles/nope/catalog.json", "/secret.txt", "/titles/t/v1/1.txt"] {
        let r = request(o.addr, "GET", p, &[]).await;
        assert_eq!(r.status, 404, "{p}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&root), "404 leaks the store path: {p}");
    }
    let long = format!("/titles/t/{}/1.m4s", "a".repeat(5000));
    assert_eq!(request(o.addr, "GET", &long, &[]).await.status, 414);
    o.stop().await;
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_1gib_object_streams_without_being_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let key = ObjectKey::parse("titles/big/v1/1.m4s").unwrap();
    let path = store.path_of(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Sparse: 1 GiB long, no disk used.
    std::fs::File::create(&path).unwrap().set_len(1 << 30).unwrap();
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let before = rss_bytes();
    let mut s = TcpStream::connect(o.addr).await.unwrap();
    s.write_all(b"GET /titles/big/v1/1.m4s HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < 64 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed early");
        if got == 0 {
            assert!(String::from_utf8_lossy(&buf[..n]).contains("content-length: 1073741824"));
        }
        got += n;
    }
    // 64 MiB sent and the rest waiting on the client: memory grew by buffers, not by the object.
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 256 << 20, "RSS grew by {grown} bytes while streaming");
    drop(s);
    let r = request(o.addr, "GET", "/titles/big/v1/1.m4s", &[("Range", "bytes=-5")]).await;
    assert_eq!((r.status, r.body.as_slice()), (206, &[0u8; 5][..]));
    o.stop().await;
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_segment(dir.path());
    let limits = ServerLimits { header_read_timeout_ms: 200, ..ServerLimits::default() };
    let o = TestOrigin::start(Arc::new(store), limits).await;
    let mut s = TcpStream::connect(o.addr).await.unwrap();
    s.write_all(b"GET /titles/t/v1/1.m4s HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    // The server hangs up (with or without a 408) well before this deadline.
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "server kept a half-sent request open");
    o.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_stalled_readers_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let big = ObjectKey::parse("titles/t/v1/2.m4s").unwrap();
    store.put_blocking(&big, &vec![7u8; 32 << 20]).unwrap();
    let limits = ServerLimits { max_connections: 1, write_stall_timeout_ms: 300, ..ServerLimits::default() };
    let o = TestOrigin::start(Arc::new(store), limits).await;
    // The only slot: a client that asks for 32 MiB and reads nothing.
    let mut stalled = TcpStream::connect(o.addr).await.unwrap();
    stalled.write_all(b"GET /titles/t/v1/2.m4s HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let r = request(o.addr, "GET", "/health", &[]).await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    // Once the stalled client is dropped its slot frees up; poll for that with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = request(o.addr, "GET", "/health", &[]).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(tokio::time::Instant::now() < deadline, "stalled client still holds its slot");
        tokio::task::yield_now().await;
    }
    // The stalled client got a cut-off body, never the whole object.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.len() < 32 << 20);
    let _ = send_raw; // shared helper, used by the conformance test
    o.stop().await;
}
