//! Many clients at once: one upstream fetch for 500 cold requests; a slow
//! reader does not hold up anyone else.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEG: &str = "titles/t1/v1/1.m4s";
const SEG2: &str = "titles/t1/v1/2.m4s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_cold_requests_make_one_upstream_fetch() {
    let seg = body(9, 200_000);
    let (origin, _dir) = start_origin(&[(SEG, seg.clone())]).await;
    let proxy = GatedProxy::start(&origin.url()).await;
    let edge = start_edge(edge_config(&proxy.url())).await;
    let c = client();
    let tasks = cold_burst(&c, edge.addr, SEG, 500);
    let all_waiting = eventually(|| async { metric(edge.addr, "edge_coalesced_requests_total").await >= 499.0 }).await;
    proxy.open();
    assert!(all_waiting, "499 requests never joined the fetch in flight");
    for t in tasks {
        let (status, bytes) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(bytes[..] == seg[..], "a body differs");
    }
    assert_eq!(proxy.hits(), 1, "upstream saw more than one request");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_slow_other_clients() {
    let big = body(4, 8 << 20);
    let (origin, _dir) = start_origin(&[(SEG, big.clone()), (SEG2, body(5, 100_000))]).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let c = client();
    assert_eq!(c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap().bytes().await.unwrap().len(), big.len());
    // A client asks for 8 MB and reads one byte of it.
    let mut slow = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(format!("GET /{SEG} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut one = [0u8; 1];
    slow.read_exact(&mut one).await.unwrap();
    // Meanwhile others are served promptly, the same object included.
    let started = Instant::now();
    for path in [SEG2, SEG, SEG2] {
        let r = c.get(format!("{}/{path}", edge.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    drop(slow);
    edge.stop().await;
    origin.stop().await;
}

/// Sends one keep-alive request on `s` and reads its status line and headers.
async fn request_on(s: &mut tokio::net::TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (origin, _dir) = start_origin(&[(SEG, body(1, 10))]).await;
    let edge = start_edge(edge::EdgeConfig { max_connections: 2, ..edge_config(&origin.url()) }).await;
    let mut a = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    assert!(request_on(&mut a, "/health").await.starts_with("HTTP/1.1 200"));
    assert!(request_on(&mut b, "/health").await.starts_with("HTTP/1.1 200"));
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap(); // in the backlog
    let third = tokio::spawn(async move { request_on(&mut c, "/health").await });
    // A bounded negative check: the third connection is not served while two are open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served over the cap");
    drop(a);
    let head = tokio::time::timeout(DEADLINE, third).await.expect("never served after a slot freed").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(b);
    edge.stop().await;
    origin.stop().await;
}
