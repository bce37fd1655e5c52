//! The zero-copy send path: RAM hits (memfd bodies) and disk-tier hits (store
//! file slices) go out with sendfile, and what a client receives is byte for
//! byte the origin's object, whatever the protocol, range or reading pace,
//! and even when the store reuses the space of bytes still queued.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG: &str = "titles/t1/v1/1.m4s";
const MID: &str = "titles/t1/v1/2.m4s";
const SMALL: &str = "titles/t1/v1/3.m4s";

fn objects() -> Vec<(&'static str, Vec<u8>)> {
    vec![(BIG, body(1, 1_500_000)), (MID, body(2, 300_000)), (SMALL, body(3, 5000))]
}

fn disk_edge(upstream: &str, dir: &Path, disk_bytes: u64) -> edge::EdgeConfig {
    edge::EdgeConfig { disk_path: Some(dir.to_owned()), disk_bytes: Some(disk_bytes), ..edge_config(upstream) }
}

/// A response read off a raw HTTP/1.1 connection.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A raw HTTP/1.1 keep-alive connection: requests one at a time, responses
/// parsed by Content-Length.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, method: &str, path: &str, extra: &str) {
        let req = format!("{method} /{path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
    }

    async fn fill_to(&mut self, n: usize) {
        let mut chunk = vec![0u8; 256 * 1024];
        while self.buf.len() < n {
            let got = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await.expect("read timed out");
            let got = got.unwrap();
            assert!(got > 0, "connection closed after {} of {n} bytes", self.buf.len());
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    async fn answer(&mut self, head_only: bool) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let want = self.buf.len() + 1;
            self.fill_to(want).await;
        };
        let (status, headers) = parse_head(&self.buf[..end]);
        let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
        let body_len = if head_only { 0 } else { len };
        self.fill_to(end + body_len).await;
        let body = self.buf[end..end + body_len].to_vec();
        self.buf.drain(..end + body_len);
        Answer { status, headers, body }
    }

    async fn get(&mut self, method: &str, path: &str, extra: &str) -> Answer {
        self.send(method, path, extra).await;
        self.answer(method == "HEAD").await
    }
}

fn parse_head(head: &[u8]) -> (u16, HashMap<String, String>) {
    let text = std::str::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Warms `edge` with every object (the first GET a miss, the second a hit of `tier`).
async fn warm(edge: SocketAddr, tier: &str) {
    let c = client();
    for (key, _) in objects() {
        for _ in 0..2 {
            c.get(format!("http://{edge}/{key}")).send().await.unwrap().bytes().await.unwrap();
        }
        let r = c.get(format!("http://{edge}/{key}")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], tier, "{key}");
    }
}

/// Every kind of hit on one keep-alive connection, then over h2; checks the
/// bytes and that the large bodies went out with sendfile.
async fn check_hits(edge: SocketAddr, tier: &str) {
    let big = body(1, 1_500_000);
    let mid = body(2, 300_000);
    let before = svc::zerocopy::sent_bytes().0;
    let mut conn = Conn::open(edge).await;
    for round in 0..2 {
        let a = conn.get("GET", BIG, "").await;
        assert_eq!((a.status, a.headers["x-cache"].as_str()), (200, tier), "round {round}");
        assert!(a.body == big, "full body differs (round {round})");
        let a = conn.get("GET", BIG, "Range: bytes=1000-700000\r\n").await;
        assert_eq!(a.status, 206);
        assert_eq!(a.headers["content-range"], "bytes 1000-700000/1500000");
        assert!(a.body[..] == big[1000..=700_000], "range differs");
        let a = conn.get("HEAD", BIG, "").await;
        assert_eq!((a.status, a.headers["content-length"].as_str(), a.body.len()), (200, "1500000", 0));
        let a = conn.get("GET", SMALL, "").await;
        assert_eq!((a.status, &a.body[..]), (200, &body(3, 5000)[..]));
        let a = conn.get("GET", MID, "Range: bytes=-5000\r\n").await;
        assert_eq!((a.status, &a.body[..]), (206, &mid[300_000 - 5000..]));
        let a = conn.get("GET", MID, "").await;
        assert!(a.status == 200 && a.body == mid, "mid body differs (round {round})");
    }
    let large = 2 * (1_500_000 + 699_001 + 300_000);
    // After a short send, a remainder under MIN_SENDFILE_BYTES is copied
    // instead: up to that much per large response may leave with sendmsg.
    let least = large - 6 * svc::zerocopy::MIN_SENDFILE_BYTES as u64;
    // The server counts a send after the syscall returns, which may be after
    // this client has read the last bytes: give the count a moment to settle.
    let settle = Instant::now() + Duration::from_secs(2);
    let mut sent = svc::zerocopy::sent_bytes().0 - before;
    while sent < least && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
        sent = svc::zerocopy::sent_bytes().0 - before;
    }
    assert!(sent >= least, "only {sent} of {large} bytes of large bodies went out with sendfile");

    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let answers = futures::future::join_all((0..3).map(|_| h2.get(format!("http://{edge}/{BIG}")).send())).await;
    for r in answers {
        let r = r.unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
        assert!(r.bytes().await.unwrap()[..] == big[..], "h2 body differs");
    }
    let r = h2.get(format!("http://{edge}/{BIG}")).header("range", "bytes=100000-1299999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == big[100_000..1_300_000], "h2 range differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_hits_are_sent_from_memfds_byte_for_byte() {
    let (origin, _store) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    warm(edge.addr, "HIT").await;
    check_hits(edge.addr, "HIT").await;
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_hits_are_sent_from_the_store_file_byte_for_byte() {
    let (origin, _store) = start_origin(&objects()).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(edge::EdgeConfig { ram_bytes: 1000, ..disk_edge(&origin.url(), dir.path(), 64 << 20) }).await;
    warm(edge.addr, "HIT-DISK").await;
    check_hits(edge.addr, "HIT-DISK").await;
    edge.stop().await;
    origin.stop().await;
}

/// A client that reads a large RAM hit slowly gets every byte, in order,
/// while the partial sendfile writes wait on its window; others are served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_and_others_are_served_meanwhile() {
    let (origin, _store) = start_origin(&objects()).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    warm(edge.addr, "HIT").await;
    let mut slow = TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(format!("GET /{BIG} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let slow_read = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "the slow read took too long");
            let n = tokio::time::timeout(DEADLINE, slow.read(&mut chunk)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            // A slow client: 16 KiB every 2 ms.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out
    });
    let c = client();
    let started = Instant::now();
    for _ in 0..5 {
        let got = c.get(format!("{}/{BIG}", edge.url())).send().await.unwrap().bytes().await.unwrap();
        assert!(got[..] == body(1, 1_500_000)[..]);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "other clients waited {:?}", started.elapsed());
    let raw = slow_read.await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(parse_head(&raw[..end]).0, 200);
    assert!(raw[end..] == body(1, 1_500_000)[..], "the slow reader's body differs");
    edge.stop().await;
    origin.stop().await;
}

/// Bytes of `len` queued in `stream`'s receive queue, read without consuming them.
fn peek_len(stream: &TcpStream) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: recv into a buffer we own, non-blocking.
    let n = unsafe {
        libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n.max(0) as usize
}

/// A disk hit sent with sendfile leaves the store file's pages in the socket
/// queues (on loopback, in the client's receive queue) after the response,
/// and its lease on the region, are done. Reusing that region must not
/// change what the client then reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_bytes_survive_the_reuse_of_their_disk_region() {
    let victim = body(9, 32 * 1024);
    let victim_key = "titles/t1/v1/1.m4s";
    let fillers: Vec<(String, Vec<u8>)> =
        (10..16).map(|n| (format!("titles/t1/v1/{n}.m4s"), body(n as u8, 900 * 1024))).collect();
    let mut objs: Vec<(&str, Vec<u8>)> = vec![(victim_key, victim.clone())];
    objs.extend(fillers.iter().map(|(k, b)| (k.as_str(), b.clone())));
    let (origin, _store) = start_origin(&objs).await;
    let dir = tempfile::tempdir().unwrap();
    // Four regions of 1 MiB, plain FIFO: the fifth filler reclaims region 0.
    let cfg = edge::EdgeConfig {
        ram_bytes: 1000,
        disk_region_bytes: Some(1 << 20),
        disk_policy: edge::config::DiskPolicyName::Fifo,
        ..disk_edge(&origin.url(), dir.path(), 4 << 20)
    };
    let edge = start_edge(cfg).await;
    let c = client();
    for _ in 0..2 {
        c.get(format!("{}/{victim_key}", edge.url())).send().await.unwrap().bytes().await.unwrap();
    }
    // The client asks for the victim and does not read: the whole response sits in its receive queue.
    let mut queued = Conn::open(edge.addr).await;
    queued.send("GET", victim_key, "").await;
    let deadline = Instant::now() + DEADLINE;
    while peek_len(&queued.stream) < victim.len() + 100 {
        assert!(Instant::now() < deadline, "the response never reached the client's receive queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (key, want) in &fillers {
        let got = c.get(format!("{}/{key}", edge.url())).send().await.unwrap().bytes().await.unwrap();
        assert!(got[..] == want[..], "{key}");
    }
    let r = c.get(format!("{}/{}", edge.url(), fillers[4].0)).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT-DISK", "the filler that reclaims region 0 should be on disk");
    assert!(metric(edge.addr, "edge_disk_evictions_total").await >= 1.0, "nothing was evicted: region 0 not reused");
    let a = queued.answer(false).await;
    assert_eq!((a.status, a.headers["x-cache"].as_str()), (200, "HIT-DISK"));
    assert!(a.body == victim, "a queued byte changed when its disk region was reused");
    edge.stop().await;
    origin.stop().await;
}

/// While a disk hit is still being sent (a client that does not read), its
/// body holds the lease on its region: a fill that needs that region is
/// refused instead of reclaiming it, and the client later reads the
/// original bytes. Once the body is out, the region can be reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_being_sent_from_is_not_reclaimed() {
    let victim = body(7, 3_500_000);
    let victim_key = "titles/t1/v1/1.m4s";
    let fillers: Vec<(String, Vec<u8>)> =
        (20..22).map(|n| (format!("titles/t1/v1/{n}.m4s"), body(n as u8, 3_500_000))).collect();
    let mut objs: Vec<(&str, Vec<u8>)> = vec![(victim_key, victim.clone())];
    objs.extend(fillers.iter().map(|(k, b)| (k.as_str(), b.clone())));
    let (origin, _store) = start_origin(&objs).await;
    let dir = tempfile::tempdir().unwrap();
    // Two regions of 4 MiB: the victim fills most of region 0, the first filler
    // takes region 1, the second needs region 0 back.
    let cfg = edge::EdgeConfig {
        ram_bytes: 1000,
        disk_region_bytes: Some(4 << 20),
        disk_policy: edge::config::DiskPolicyName::Fifo,
        ..disk_edge(&origin.url(), dir.path(), 8 << 20)
    };
    let edge = start_edge(cfg).await;
    let c = client();
    for _ in 0..2 {
        c.get(format!("{}/{victim_key}", edge.url())).send().await.unwrap().bytes().await.unwrap();
    }
    // A tiny receive window keeps most of the body in the edge's hands.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(edge.addr).await.unwrap();
    let mut stalled = Conn { stream, buf: Vec::new() };
    stalled.send("GET", victim_key, "").await;
    let deadline = Instant::now() + DEADLINE;
    while peek_len(&stalled.stream) == 0 {
        assert!(Instant::now() < deadline, "the response never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (key, want) in &fillers {
        let got = c.get(format!("{}/{key}", edge.url())).send().await.unwrap().bytes().await.unwrap();
        assert!(got[..] == want[..], "{key}");
    }
    assert!(metric(edge.addr, "edge_disk_refused_total").await >= 1.0, "the busy region was not refused");
    assert_eq!(metric(edge.addr, "edge_disk_evictions_total").await, 0.0, "the region being sent from was reclaimed");
    let a = stalled.answer(false).await;
    assert_eq!((a.status, a.headers["x-cache"].as_str()), (200, "HIT-DISK"));
    assert!(a.body == victim, "the stalled client's body differs");
    drop(stalled);
    // The body is out: the second filler may now take region 0.
    let reused = eventually(|| {
        let url = format!("{}/{}", edge.url(), fillers[1].0);
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            let hit = r.headers()["x-cache"] == "HIT-DISK";
            r.bytes().await.unwrap();
            hit
        }
    })
    .await;
    assert!(reused, "the region was never reused after the body went out");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_hits_are_sent_from_ram_dir_files_byte_for_byte() {
    let ram = RamDirFixture::new("huge=always");
    if ram.mounted {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let canonical = ram.path().canonicalize().unwrap();
        let (fstype, options) = edge::ram_dir::mount_options(&mountinfo, &canonical).unwrap();
        assert_eq!((fstype.as_str(), options.contains("huge=always")), ("tmpfs", true), "{options}");
        use edge::ram_dir::HugePages;
        // (A host whose shmem_enabled is deny or force overrides every mount's option.)
        let huge = HugePages::of(ram.path());
        assert!(
            matches!(&huge, HugePages::Mount(m) if m == "always")
                || matches!(huge, HugePages::Denied | HugePages::Forced)
        );
    }
    let (origin, _store) = start_origin(&objects()).await;
    let cfg = edge::EdgeConfig { ram_dir: Some(ram.path().to_owned()), ..edge_config(&origin.url()) };
    let edge = start_edge(cfg).await;
    warm(edge.addr, "HIT").await;
    // BIG and MID (each >= 64 KiB) live in files there; SMALL stays on the heap.
    assert!(ram.open_files() >= 2, "{} ram_dir files open", ram.open_files());
    assert_eq!(std::fs::read_dir(ram.path()).unwrap().count(), 0, "bodies are unlinked files");
    check_hits(edge.addr, "HIT").await;
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ram_dir_that_is_not_a_tmpfs_is_refused_at_start() {
    // The crate's directory is on the build machine's disk.
    let disk_dir = env!("CARGO_MANIFEST_DIR");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--ram-bytes", "1000000"])
        .args(["--ram-dir", disk_dir])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the edge did not refuse a disk ram_dir");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("ram_dir") && err.contains("is not a tmpfs"), "{err}");
}
