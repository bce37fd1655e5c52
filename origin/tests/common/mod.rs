//! Helpers shared by the origin's integration tests: an in-process origin on
//! port 0 and a raw HTTP/1.1 client, so requests go on the wire exactly as
//! written (no client library normalising paths or headers).

#![allow(dead_code)]

pub mod fault_proxy;
pub mod moto;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use origin::{ObjectStore, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin running in this process.
pub struct TestOrigin {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestOrigin {
    /// Serves `store` on 127.0.0.1, port 0.
    pub async fn start(store: Arc<dyn ObjectStore>, limits: ServerLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(origin::serve(store, limits, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), task }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.unwrap().unwrap().unwrap();
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `method target` with `headers` and `Connection: close`; reads the
/// whole response (bounded by a 20 s deadline).
pub async fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send_raw(addr, req.as_bytes()).await
}

/// Sends raw bytes and reads until the server closes.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        // A reset after a complete answer still counts as the answer.
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(20), fut).await.expect("response within 20 s");
    parse(&buf).unwrap_or_else(|| panic!("unparsable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// Parses one response (head plus everything after it as the body).
pub fn parse(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawResponse { status, headers, body: buf[end + 4..].to_vec() })
}
