//! The edge's serve loop: HTTP/2 beside HTTP/1.1, per-connection timeouts,
//! and graceful shutdown across its per-core accept loops.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEG: &str = "titles/t1/v1/1.m4s";

/// Reads until the server closes the connection; returns what it sent and how long that took.
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await.expect("the edge kept a silent connection open") {
            Ok(0) | Err(_) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let (origin, _dir) = start_origin(&[(SEG, body(1, 1000))]).await;
    let edge = start_edge(edge::EdgeConfig { header_read_timeout_ms: 300, ..edge_config(&origin.url()) }).await;

    // Connected, sends nothing.
    let mut silent = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let (sent, took) = read_until_closed(&mut silent).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}, before the timeout");
    assert!(sent.is_empty() || String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 408"), "{sent:?}");

    // Half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(b"GET /titles/t1/v1/1.m4s HTT").await.unwrap();
    let (_, took) = read_until_closed(&mut slow).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");

    // The start of the HTTP/2 preface, then nothing: the protocol is never known.
    let mut partial = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0").await.unwrap();
    let (_, took) = read_until_closed(&mut partial).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");

    // A kept-alive connection that goes quiet after one answer is closed too.
    let mut idle = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    idle.write_all(format!("GET /{SEG} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    let (sent, took) = read_until_closed(&mut idle).await;
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(sent.ends_with(&body(1, 1000)), "the whole body came before the close");
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");

    // A client that keeps talking is served every time.
    let c = client();
    for _ in 0..3 {
        let r = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &body(1, 1000)[..]);
    }
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_response_in_flight_and_refuses_new_connections() {
    // Big enough that it is still being written when shutdown starts.
    let big = body(3, 8 << 20);
    let (origin, _dir) = start_origin(&[(SEG, big.clone())]).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let addr = edge.addr;
    let c = client();
    // Warm the cache so the answer starts at once.
    let warm = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), big.len());

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /{SEG} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    // Wait for the first bytes, so the request is in flight, then stop the edge.
    let mut first = [0u8; 16];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut first)).await.unwrap().unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    let stopping = tokio::spawn(edge.stop());
    let (rest, _) = read_until_closed(&mut s).await;
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block") + 4;
    assert_eq!(all.len() - split, big.len(), "the whole body arrived");
    assert!(all[split..] == big[..]);
    tokio::time::timeout(DEADLINE, stopping).await.expect("the edge stopped").unwrap();
    // Every accept loop has stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served_like_http1() {
    let seg = body(5, 300_000);
    let (origin, _dir) = start_origin(&[(SEG, seg.clone())]).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let url = format!("{}/t/{}/{SEG}", edge.url(), token("t1"));
    // Concurrent streams on one connection, the first of them a miss the others join or hit.
    let answers = futures::future::join_all((0..4).map(|_| h2.get(&url).send())).await;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(&r.bytes().await.unwrap()[..], &seg[..]);
    }
    let r = h2.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 206));
    assert_eq!(&r.bytes().await.unwrap()[..], &seg[10..20]);
    let forged = h2.get(format!("{}/t/forged/{SEG}", edge.url())).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    // HTTP/1.1 on the same port as before.
    let r = client().get(&url).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_11, 200));
    assert_eq!(r.headers()["x-cache"], "HIT");
    edge.stop().await;
    origin.stop().await;
}
