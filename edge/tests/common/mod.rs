//! Test harness: a real origin over a temp store, the real edge in front of
//! it, and small fake upstreams (counting/gated proxy, truncating server).
//! Everything binds 127.0.0.1:0 before it starts serving.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response};
use edge::EdgeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vod::token::TokenKey;
use vod::{ObjectKey, TitleId};

/// The token secret every test edge shares with the tests.
pub const SECRET: &str = "test-secret";

/// How long any test condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server started with `run(config, listener, shutdown)`.
pub struct Running<E> {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: std::fmt::Debug> Running<E> {
    /// Wraps a server task started by a test: `stop` is its shutdown signal.
    pub fn new(addr: SocketAddr, stop: oneshot::Sender<()>, task: JoinHandle<Result<(), E>>) -> Self {
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and checks that `run` returned Ok.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|tx| tx.send(()));
        let task = self.task.take().expect("stopped twice");
        let result = tokio::time::timeout(DEADLINE, task).await.expect("server did not stop in time");
        result.expect("server task panicked").expect("server returned an error");
    }
}

impl<E> Drop for Running<E> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A task aborted when the value is dropped (fake upstreams).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deterministic bytes for an object.
pub fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A real origin over a temp store holding `objects`.
pub async fn start_origin(objects: &[(&str, Vec<u8>)]) -> (Running<std::io::Error>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = origin::LocalStore::new(dir.path());
    for (key, bytes) in objects {
        store.put_blocking(&ObjectKey::parse(key).unwrap(), bytes).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = origin::OriginConfig { listen: addr, root: dir.path().to_owned() };
    let task = tokio::spawn(origin::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    (Running { addr, stop: Some(tx), task: Some(task) }, dir)
}

/// A test edge config in front of `upstream` with the test secret.
pub fn edge_config(upstream: &str) -> EdgeConfig {
    EdgeConfig { token_secret: Some(SECRET.into()), ..EdgeConfig::new(upstream, 10_000_000) }
}

/// The real edge with `cfg`.
pub async fn start_edge(mut cfg: EdgeConfig) -> Running<edge::EdgeError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    cfg.listen = addr;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(edge::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running { addr, stop: Some(tx), task: Some(task) }
}

/// A valid token for `title`, signed with the test secret.
pub fn token(title: &str) -> String {
    TokenKey::new("k1", SECRET.as_bytes().to_vec()).sign(&TitleId::new(title).unwrap(), now_s() + 600)
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An HTTP client that never goes through an environment proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends `target` byte for byte (no URL normalisation) and returns the status and body.
pub async fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra_headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await.expect("raw request timed out").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The sum of a metric's samples in the edge's `/metrics` text.
pub async fn metric(edge: SocketAddr, name: &str) -> f64 {
    let text = client().get(format!("http://{edge}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` until it holds or `DEADLINE` passes; returns whether it held.
pub async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

struct ProxyState {
    target: String,
    hits: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    client: reqwest::Client,
}

/// A proxy to the origin that counts requests and holds each one until its gate opens.
pub struct GatedProxy {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    _task: AbortOnDrop,
}

impl GatedProxy {
    /// Starts a proxy to `target` with the gate closed.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, rx) = watch::channel(false);
        let hits = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(ProxyState { target: target.to_owned(), hits: hits.clone(), gate: rx, client: client() });
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, gate, _task: AbortOnDrop(task) }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets held and future requests through.
    pub fn open(&self) {
        let _ = self.gate.send(true);
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn forward(State(p): State<Arc<ProxyState>>, req: Request<Body>) -> Response<Body> {
    p.hits.fetch_add(1, Ordering::SeqCst);
    let mut gate = p.gate.clone();
    let _ = gate.wait_for(|open| *open).await;
    let up = p.client.get(format!("{}{}", p.target, req.uri().path())).send().await.unwrap();
    let mut b = Response::builder().status(up.status().as_u16());
    if let Some(etag) = up.headers().get("etag") {
        b = b.header("etag", etag.as_bytes());
    }
    b.body(Body::from(up.bytes().await.unwrap())).unwrap()
}

/// Reads a request head (through its blank line) off `s`; `None` if the
/// connection closed or failed first.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some(req)
}

/// An upstream that promises `declared` bytes, sends `sent`, and hangs up.
/// Returns its address, a connection counter and its task.
pub async fn truncating_upstream(declared: usize, sent: usize) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Some(_) = read_head(&mut s).await else { return };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nETag: \"t\"\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&vec![b'x'; sent]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, conns, AbortOnDrop(task))
}

/// Starts `n` concurrent GETs of `key` on `edge`; each task yields (status, body).
pub fn cold_burst(
    c: &reqwest::Client,
    edge: SocketAddr,
    key: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, bytes::Bytes)>> {
    (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), format!("http://{edge}/{key}"));
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            })
        })
        .collect()
}

/// The real `edge` binary started with `edge serve ARGS`; SIGKILLed on drop if still running.
pub struct EdgeProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl EdgeProcess {
    /// Starts `edge` with `args` (logs at `warn`) and waits for its "edge listening on" line.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting edge");
        let stderr = child.stderr.take().expect("edge stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("edge listening on ") {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(DEADLINE).expect("edge did not announce its address").parse().unwrap();
        Self { child, addr }
    }

    /// SIGKILL (std's kill on Unix): no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory for `ram_dir`: a tmpfs mounted with `huge` (`huge=always`,
/// `huge=never`) on a temp dir when this runs as root and the mount works,
/// else a temp dir in /dev/shm (a tmpfs with the host's settings). Unmounted on drop.
pub struct RamDirFixture {
    dir: tempfile::TempDir,
    pub mounted: bool,
}

impl RamDirFixture {
    pub fn new(huge: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{huge},size=64m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Self { dir, mounted: true };
        }
        eprintln!("cannot mount a tmpfs here; using /dev/shm");
        Self { dir: tempfile::tempdir_in("/dev/shm").expect("a temp dir in /dev/shm"), mounted: false }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Descriptors of this process open on unlinked files in the directory.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t.starts_with(self.path()) && t.to_string_lossy().ends_with("(deleted)"))
            .count()
    }
}

impl Drop for RamDirFixture {
    fn drop(&mut self) {
        if self.mounted {
            let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2 with a valid C string; a lazy detach, so a body still open cannot block it.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!("umount {}: {}", self.path().display(), std::io::Error::last_os_error());
            }
        }
    }
}
