//! The origin's zero-copy send path: objects served from the store's kept
//! file maps leave with `sendfile` (`svc::zerocopy`), and what the client
//! reads is byte for byte what the store holds: whole bodies, ranges, HEAD,
//! several requests on one connection, and a republish while a response is
//! still being read (the client gets the version it asked for, whole).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestOrigin;
use origin::{LocalStore, ServerLimits};
use svc::zerocopy::{sent_bytes, MIN_SENDFILE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vod::ObjectKey;

/// The send counters are per process: tests that read them run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BIG: &str = "/titles/t/v1/1.m4s";
const SMALL: &str = "/titles/t/v1/init.mp4";
const HUGE: &str = "/titles/t/v1/2.m4s";

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

fn key(target: &str) -> ObjectKey {
    ObjectKey::parse(&target[1..]).unwrap()
}

/// One response read off a keep-alive connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A persistent HTTP/1.1 connection that reads responses by Content-Length.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self { s: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.s.write_all(req.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = vec![0u8; 256 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
            .await
            .expect("no response bytes within 20 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection mid-response");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads the head of the next response.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await;
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        (status, headers)
    }

    /// Reads the next response; `head_only` for HEAD (a length, no body).
    async fn response(&mut self, head_only: bool) -> Resp {
        let (status, headers) = self.head().await;
        let mut r = Resp { status, headers, body: Vec::new() };
        let len: usize = r.header("content-length").expect("content-length").parse().unwrap();
        if !head_only {
            while self.buf.len() < len {
                self.fill().await;
            }
            r.body = self.buf.drain(..len).collect();
        }
        r
    }

    async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", target, headers).await;
        self.response(false).await
    }
}

#[tokio::test]
async fn bodies_are_byte_identical_on_one_connection_and_big_ones_go_by_sendfile() {
    bodies_on_one_connection(true).await;
}

#[tokio::test]
async fn with_sendfile_off_the_same_bodies_are_copied() {
    bodies_on_one_connection(false).await;
}

async fn bodies_on_one_connection(sendfile: bool) {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let big = pattern(3_000_017, 1);
    let small = pattern(10_000, 2);
    store.put_blocking(&key(BIG), &big).unwrap();
    store.put_blocking(&key(SMALL), &small).unwrap();
    let o = TestOrigin::start(Arc::new(store), ServerLimits { sendfile, ..ServerLimits::default() }).await;

    let (sf0, cp0) = sent_bytes();
    let mut c = Conn::open(o.addr).await;
    // (request, expected status, expected body); all on one keep-alive connection.
    let n = big.len();
    let cases: Vec<(&str, Option<&str>, u16, &[u8])> = vec![
        (BIG, None, 200, &big),
        (BIG, Some("bytes=1000-2000999"), 206, &big[1000..2_001_000]),
        (SMALL, None, 200, &small),
        (BIG, Some("bytes=-100"), 206, &big[n - 100..]),
        (BIG, Some("bytes=2500000-"), 206, &big[2_500_000..]),
        (BIG, Some("bytes=0-0"), 206, &big[..1]),
        (BIG, None, 200, &big),
        (BIG, Some("bytes=2999000-99999999"), 206, &big[2_999_000..]),
    ];
    let mut by_sendfile = 0u64;
    let mut big_bodies = 0u64;
    for (i, (target, range, status, want)) in cases.iter().enumerate() {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
        let r = c.get(target, &headers).await;
        assert_eq!(r.status, *status, "request {i} ({target} {range:?})");
        assert_eq!(r.body.len(), want.len(), "request {i}: length");
        assert!(r.body == *want, "request {i} ({target} {range:?}): body differs from the store's bytes");
        if *target == BIG && want.len() >= MIN_SENDFILE_BYTES {
            by_sendfile += want.len() as u64;
            big_bodies += 1;
        }
        // HEAD in between: a length and no body bytes leaking into the next response.
        c.send("HEAD", target, &headers).await;
        let h = c.response(true).await;
        assert_eq!(h.status, *status, "HEAD {i}");
        assert_eq!(h.header("content-length").unwrap(), want.len().to_string(), "HEAD {i}");
    }
    // And a pipelined pair: both answers arrive whole and in order.
    c.send("GET", BIG, &[("Range", "bytes=100-300099")]).await;
    c.send("GET", SMALL, &[]).await;
    let a = c.response(false).await;
    let b = c.response(false).await;
    assert!(a.status == 206 && a.body == big[100..300_100], "first pipelined response");
    assert!(b.status == 200 && b.body == small, "second pipelined response");
    by_sendfile += 300_000;
    big_bodies += 1;

    // A short sendfile can leave a tail under MIN_SENDFILE_BYTES, which is copied.
    let slack = big_bodies * MIN_SENDFILE_BYTES as u64;
    // The server counts a send after the syscall returns, which may be after
    // this client has read the last bytes: give the count a moment to settle.
    let settle = Instant::now() + Duration::from_secs(2);
    let (mut sf1, mut cp1) = sent_bytes();
    while sendfile && sf1 - sf0 + slack < by_sendfile && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
        (sf1, cp1) = sent_bytes();
    }
    let sent = sf1 - sf0;
    if !sendfile {
        assert_eq!(sent, 0, "sendfile was used although it is off");
        drop(c);
        o.stop().await;
        return;
    }
    assert!(
        sent <= by_sendfile && sent + slack >= by_sendfile,
        "{sent} B went by sendfile; expected the {by_sendfile} B of big bodies (less at most {slack} B of tails)"
    );
    // Heads, small bodies and short ranges were copied.
    assert!(cp1 - cp0 >= small.len() as u64 * 2, "small bodies were not written at all?");
    drop(c);
    o.stop().await;
}

#[tokio::test]
async fn a_republish_under_a_reader_that_stopped_reading_leaves_it_the_old_version_whole() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    // Far more than the loopback socket buffers hold, so the rest is sent after the republish.
    let old = pattern(24 << 20, 3);
    let new = pattern(24 << 20, 4);
    assert!(old != new);
    store.put_blocking(&key(HUGE), &old).unwrap();
    let publisher = LocalStore::new(dir.path());
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let (sf0, _) = sent_bytes();

    let mut reader = Conn::open(o.addr).await;
    reader.send("GET", HUGE, &[]).await;
    let (status, headers) = reader.head().await;
    assert_eq!(status, 200);
    let etag = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("etag")).unwrap().1.clone();
    // Let the server fill both socket buffers, then publish a new version over the object.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let k = key(HUGE);
    let fresh = new.clone();
    tokio::task::spawn_blocking(move || publisher.put_blocking(&k, &fresh)).await.unwrap().unwrap();

    // A new request sees the new version...
    let mut other = Conn::open(o.addr).await;
    let r = other.get(HUGE, &[]).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag").unwrap(), etag, "the republished object kept its ETag");
    assert!(r.body == new, "a request after the republish did not get the new version");
    drop(other);

    // ...and the reader that stalled still gets the old one, whole.
    let len = old.len();
    while reader.buf.len() < len {
        reader.fill().await;
    }
    let got: Vec<u8> = reader.buf.drain(..len).collect();
    if let Some(at) = got.iter().zip(&old).position(|(a, b)| a != b) {
        let from_new = got[at..].iter().zip(&new[at..]).take(4096).all(|(a, b)| a == b);
        panic!("the old response differs from the old version at byte {at} (bytes of the new version: {from_new})");
    }
    let (sf1, _) = sent_bytes();
    assert!(sf1 - sf0 >= (2 * len - 2 * MIN_SENDFILE_BYTES) as u64, "the bodies did not go by sendfile");
    drop(reader);
    o.stop().await;
}

#[tokio::test]
async fn a_file_cut_short_in_place_mid_send_ends_that_connection_not_the_server() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let body = pattern(24 << 20, 5);
    store.put_blocking(&key(HUGE), &body).unwrap();
    store.put_blocking(&key(SMALL), &body[..10_000]).unwrap();
    let path = store.path_of(&key(HUGE));
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;

    let mut reader = Conn::open(o.addr).await;
    reader.send("GET", HUGE, &[]).await;
    let (status, _) = reader.head().await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not what the store does: cut the published file short in place.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap();

    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reader.s.read_to_end(&mut rest)).await;
    let got = reader.buf.len() + rest.len();
    assert!(read.is_ok(), "the connection was not ended within 20 s ({got} B read)");
    assert!(got < body.len(), "the client got a whole body from a file cut short");

    // The server lives on and serves the file as it is now.
    let mut c = Conn::open(o.addr).await;
    let r = c.get(SMALL, &[]).await;
    assert!(r.status == 200 && r.body == body[..10_000]);
    let r = c.get(HUGE, &[]).await;
    assert!(r.status == 200 && r.body == body[..1 << 20], "the cut file is served as it is now");
    drop(c);
    o.stop().await;
}
