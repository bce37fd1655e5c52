//! A fault-injecting HTTP proxy between the S3 client and moto, on
//! 127.0.0.1 port 0. Each client connection carries one request: the proxy
//! reads it, asks the test's rule what to do with it (by S3 operation and
//! how many times that operation was seen before), then forwards it on a
//! fresh upstream connection or fails it: a reset, an S3 error status, a
//! lost answer, a body cut short, or silence. Every answer it forwards says
//! `Connection: close`, so no client connection is reused behind its back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The S3 operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Op {
    CreateMultipart,
    UploadPart(u32),
    Complete,
    Abort,
    ListUploads,
    Put,
    Get,
    Head,
    Other,
}

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and its answer.
    Pass,
    /// Reset the connection without forwarding (the server never sees it).
    Reset,
    /// Answer with an S3 error and this status, without forwarding.
    Error { status: u16, code: &'static str },
    /// Forward it, then reset the connection instead of answering (the server did the work).
    LoseAnswer,
    /// Forward it; pass the answer's head and this many body bytes, then close.
    CutBody { after: usize },
    /// Forward it; pass the head and this many body bytes, then send nothing more.
    StallBody { after: usize },
    /// Do not forward and do not answer; hold the connection until the client gives up.
    Stall,
}

impl Fault {
    /// S3's throttling answer.
    pub const SLOW_DOWN: Fault = Fault::Error { status: 503, code: "SlowDown" };
}

type Rule = Box<dyn Fn(S3Op, u32) -> Fault + Send + Sync>;

struct Shared {
    rule: Mutex<Rule>,
    seen: Mutex<HashMap<S3Op, u32>>,
    log: Mutex<Vec<(S3Op, Fault)>>,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, an endpoint URL for the S3 client.
    pub endpoint: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) that passes everything until `set_rule`.
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.strip_prefix("http://").expect("an http:// upstream").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            rule: Mutex::new(Box::new(|_, _| Fault::Pass)),
            seen: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let (s, upstream) = (s.clone(), upstream.clone());
                conns.spawn(async move { handle(client, &upstream, &s).await });
                while conns.try_join_next().is_some() {}
            }
        });
        FaultProxy { endpoint, shared, task }
    }

    /// Decides each request's fate from its operation and how many of that
    /// operation came before it under this rule (counts restart here).
    pub fn set_rule(&self, rule: impl Fn(S3Op, u32) -> Fault + Send + Sync + 'static) {
        let mut seen = self.shared.seen.lock().unwrap();
        *self.shared.rule.lock().unwrap() = Box::new(rule);
        seen.clear();
    }

    /// Every request seen so far and what was done with it.
    pub fn log(&self) -> Vec<(S3Op, Fault)> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests of `op` arrived.
    pub fn count(&self, op: S3Op) -> usize {
        self.log().iter().filter(|(o, _)| *o == op).count()
    }
}

async fn handle(mut client: TcpStream, upstream: &str, shared: &Shared) {
    let Some((head, body)) = read_request(&mut client).await else { return };
    let op = classify(&head);
    let fault = {
        let mut seen = shared.seen.lock().unwrap();
        let n = seen.entry(op).or_insert(0);
        let fault = (shared.rule.lock().unwrap())(op, *n);
        *n += 1;
        fault
    };
    shared.log.lock().unwrap().push((op, fault));
    match fault {
        Fault::Reset => reset(client),
        Fault::Error { status, code } => {
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>");
            let answer = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        Fault::Stall => hold(client).await,
        Fault::Pass | Fault::LoseAnswer | Fault::CutBody { .. } | Fault::StallBody { .. } => {
            let Some(answer) = forward(upstream, &head, &body).await else { return reset(client) };
            let (answer_head, answer_body) = answer;
            match fault {
                Fault::LoseAnswer => reset(client),
                Fault::CutBody { after } => {
                    let _ = client.write_all(&answer_head).await;
                    let _ = client.write_all(&answer_body[..after.min(answer_body.len())]).await;
                    let _ = client.shutdown().await;
                }
                Fault::StallBody { after } => {
                    let _ = client.write_all(&answer_head).await;
                    let _ = client.write_all(&answer_body[..after.min(answer_body.len())]).await;
                    hold(client).await;
                }
                _ => {
                    let _ = client.write_all(&answer_head).await;
                    let _ = client.write_all(&answer_body).await;
                    let _ = client.shutdown().await;
                }
            }
        }
    }
}

/// Closes with a TCP reset (linger 0), as a crashed server or a middlebox would.
fn reset(stream: TcpStream) {
    // Deprecated because a non-zero linger blocks on drop; zero does not.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Says nothing until the client closes (bounded, so a test cannot hang here).
async fn hold(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(300), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Reads one request: its head (as text) and its Content-Length body.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    assert!(header(&head, "transfer-encoding").is_none(), "the proxy handles Content-Length bodies only; got:\n{head}");
    let len: usize = header(&head, "content-length").map_or(Some(0), |v| v.parse().ok())?;
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// The operation, from the method and the query parameters.
fn classify(head: &str) -> S3Op {
    let mut line = head.split(' ');
    let method = line.next().unwrap_or("");
    let target = line.next().unwrap_or("");
    let query: HashMap<&str, &str> = target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let upload = query.contains_key("uploadId");
    match method {
        "POST" if query.contains_key("uploads") => S3Op::CreateMultipart,
        "POST" if upload => S3Op::Complete,
        "GET" if query.contains_key("uploads") => S3Op::ListUploads,
        "PUT" if upload => S3Op::UploadPart(query.get("partNumber").and_then(|n| n.parse().ok()).unwrap_or(0)),
        "DELETE" if upload => S3Op::Abort,
        "PUT" => S3Op::Put,
        "GET" => S3Op::Get,
        "HEAD" => S3Op::Head,
        _ => S3Op::Other,
    }
}

/// Sends the request upstream on a new connection it asks to close, and
/// reads the whole answer: its head (rewritten to say `Connection: close`)
/// and its body.
async fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).await.ok()?;
    up.write_all(close_connection(head).as_bytes()).await.ok()?;
    up.write_all(body).await.ok()?;
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head_end = None;
    let is_head = head.starts_with("HEAD ");
    loop {
        if head_end.is_none() {
            head_end = find_head_end(&answer);
        }
        if let Some(end) = head_end {
            let text = std::str::from_utf8(&answer[..end]).ok()?;
            let len = header(text, "content-length").and_then(|v| v.parse::<usize>().ok());
            if is_head || len.is_some_and(|len| answer.len() >= end + len) {
                break;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(60), up.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let end = head_end?;
    let text = std::str::from_utf8(&answer[..end]).ok()?;
    let out_head = close_connection(text).into_bytes();
    let mut out_body = answer[end..].to_vec();
    // A HEAD answer's Content-Length describes the object, not a body.
    if is_head {
        out_body.clear();
    }
    Some((out_head, out_body))
}

/// The head with its `Connection` (and `Expect`) headers replaced by `Connection: close`.
fn close_connection(head: &str) -> String {
    let mut out = String::with_capacity(head.len() + 19);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("expect") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}
