//! Misses stream: the first client gets the first bytes while the rest is
//! still coming from upstream, later clients join the same fetch, Ranges
//! are served from what has arrived, a broken upstream body aborts the
//! clients and caches nothing, and a stopping edge finishes what it sends.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

const SEG: &str = "titles/t1/v1/1.m4s";
const LEN: usize = 400_000;

/// An upstream that sends the head and the first half of the body at once,
/// then holds the second half until released (or after `delay`), then sends
/// it or, when `cut` is set, hangs up instead.
struct SlowUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    cut: Arc<AtomicBool>,
    _task: AbortOnDrop,
}

impl SlowUpstream {
    async fn start(body: Vec<u8>, delay: Option<Duration>) -> Self {
        Self::with_etag(body, delay, "\"slow-1\"").await
    }

    async fn with_etag(body: Vec<u8>, delay: Option<Duration>, etag: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (release, gate) = watch::channel(false);
        let (h, c, body, etag) = (hits.clone(), cut.clone(), Arc::new(body), etag.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (h, c, body, mut gate, etag) = (h.clone(), c.clone(), body.clone(), gate.clone(), etag.clone());
                tokio::spawn(async move {
                    let Some(_) = read_head(&mut s).await else { return };
                    h.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n", body.len());
                    let half = body.len() / 2;
                    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&body[..half]).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                    match delay {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                    }
                    if !c.load(Ordering::SeqCst) {
                        let _ = s.write_all(&body[half..]).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { addr, hits, release, cut, _task: AbortOnDrop(task) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn open(&self) {
        let _ = self.release.send(true);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Reads `resp`'s body until at least `n` bytes arrived (or the deadline passes).
async fn read_at_least(resp: &mut reqwest::Response, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let end = Instant::now() + DEADLINE;
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => got.extend_from_slice(&c),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("body failed after {} bytes: {e}", got.len()),
            Err(_) => panic!("only {} of {n} bytes arrived in time", got.len()),
        }
    }
    got
}

/// Reads the rest of `resp`'s body; Err if the connection broke before its end.
async fn read_rest(resp: &mut reqwest::Response, mut got: Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        match tokio::time::timeout(DEADLINE, resp.chunk()).await {
            Ok(Ok(Some(c))) => got.extend_from_slice(&c),
            Ok(Ok(None)) => return Ok(got),
            Ok(Err(e)) => return Err(format!("after {} bytes: {e}", got.len())),
            Err(_) => panic!("the body stalled after {} bytes", got.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_bytes_arrive_before_the_upstream_finishes_and_a_joiner_shares_the_fetch() {
    let seg = body(3, LEN);
    let up = SlowUpstream::start(seg.clone(), None).await;
    let edge = start_edge(edge_config(&up.url())).await;
    let c = client();
    let url = format!("{}/{SEG}", edge.url());

    let mut first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-length"], LEN.to_string().as_str(), "the length is known up front");
    assert_eq!(first.headers()["etag"], "\"slow-1\"");
    assert_eq!(first.headers()["x-cache"], "MISS");
    // The upstream holds the second half until released: these bytes can only have been streamed.
    let head = read_at_least(&mut first, LEN / 4).await;
    assert_eq!(&head[..], &seg[..head.len()]);

    // A second client joins mid-fill and gets the bytes so far at once.
    let mut second = c.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let joined = read_at_least(&mut second, LEN / 2).await;
    assert_eq!(&joined[..], &seg[..joined.len()]);
    assert_eq!(up.hits(), 1, "the joiner made its own upstream request");
    assert_eq!(metric(edge.addr, "edge_coalesced_requests_total").await, 1.0);

    up.open();
    assert!(read_rest(&mut first, head).await.unwrap() == seg, "first body differs");
    assert!(read_rest(&mut second, joined).await.unwrap() == seg, "joined body differs");
    assert_eq!(up.hits(), 1);
    assert!(metric(edge.addr, "edge_streamed_misses_total").await >= 2.0);

    // Complete and verified: cached.
    let hit = c.get(&url).send().await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert!(hit.bytes().await.unwrap()[..] == seg[..]);
    assert_eq!(up.hits(), 1);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_an_object_being_filled_are_served_as_their_bytes_arrive() {
    let seg = body(5, LEN);
    let up = SlowUpstream::start(seg.clone(), None).await;
    let edge = start_edge(edge_config(&up.url())).await;
    let c = client();
    let url = format!("{}/{SEG}", edge.url());
    let mut filling = c.get(&url).send().await.unwrap();
    let _ = read_at_least(&mut filling, 1).await;

    // Within the first half: answered while the upstream still holds the rest.
    let early = tokio::time::timeout(DEADLINE, c.get(&url).header("range", "bytes=100-1099").send())
        .await
        .expect("an arrived range was not served")
        .unwrap();
    assert_eq!(early.status(), 206);
    assert_eq!(early.headers()["content-range"], format!("bytes 100-1099/{LEN}").as_str());
    let early = tokio::time::timeout(DEADLINE, early.bytes()).await.expect("range body stalled").unwrap();
    assert_eq!(&early[..], &seg[100..1100]);

    // In the second half: the head comes at once, the bytes once they arrive.
    let mut late = c.get(&url).header("range", format!("bytes={}-", LEN - 1000)).send().await.unwrap();
    assert_eq!(late.status(), 206);
    assert_eq!(late.headers()["content-length"], "1000");
    up.open();
    let late = read_rest(&mut late, Vec::new()).await.unwrap();
    assert_eq!(&late[..], &seg[LEN - 1000..]);
    assert_eq!(up.hits(), 1, "ranges while filling must not fetch again");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cut_mid_body_aborts_the_clients_caches_nothing_and_the_next_request_refetches() {
    let seg = body(7, LEN);
    let up = SlowUpstream::start(seg.clone(), None).await;
    up.cut.store(true, Ordering::SeqCst);
    let edge = start_edge(edge_config(&up.url())).await;
    let c = client();
    let url = format!("{}/{SEG}", edge.url());

    let mut first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let head = read_at_least(&mut first, 1).await;
    up.open();
    let broken = read_rest(&mut first, head).await;
    assert!(broken.is_err(), "a cut upstream body reached the client as a complete {} bytes", LEN);
    assert!(eventually(|| async { metric(edge.addr, "edge_upstream_errors_total").await == 1.0 }).await);
    assert_eq!(metric(edge.addr, "edge_cache_objects").await, 0.0, "a broken body was cached");

    up.cut.store(false, Ordering::SeqCst);
    let again = c.get(&url).send().await.unwrap();
    assert_eq!(again.headers()["x-cache"], "MISS");
    assert!(again.bytes().await.unwrap()[..] == seg[..]);
    assert_eq!(up.hits(), 2, "the next request must refetch");
    assert_eq!(c.get(&url).send().await.unwrap().headers()["x-cache"], "HIT");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_match_its_md5_etag_is_aborted_and_not_cached() {
    use md5::Digest;
    let seg = body(8, LEN);
    let mut wrong = seg.clone();
    wrong[LEN - 1] ^= 1;
    for (etag_of, cached) in [(&wrong, false), (&seg, true)] {
        let etag = format!("\"{:x}\"", md5::Md5::digest(etag_of));
        let up = SlowUpstream::with_etag(seg.clone(), None, &etag).await;
        up.open();
        let edge = start_edge(edge_config(&up.url())).await;
        let c = client();
        let mut r = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
        assert_eq!(r.headers()["etag"], etag.as_str());
        let got = read_rest(&mut r, Vec::new()).await;
        assert_eq!(got.is_ok(), cached, "digest match {cached}: {:?}", got.as_ref().err());
        let again = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
        let want = if cached { "HIT" } else { "MISS" };
        assert_eq!(again.headers()["x-cache"], want, "digest match {cached}");
        assert_eq!(up.hits(), if cached { 1 } else { 2 });
        edge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_larger_than_the_ram_tier_still_streams() {
    let seg = body(9, LEN);
    let up = SlowUpstream::start(seg.clone(), None).await;
    up.open();
    let edge = start_edge(edge::EdgeConfig { ram_bytes: 100_000, ..edge_config(&up.url()) }).await;
    let c = client();
    for n in 1..=2 {
        let r = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap()), (200, "MISS"));
        assert!(r.bytes().await.unwrap()[..] == seg[..]);
        assert_eq!(up.hits(), n);
    }
    assert_eq!(metric(edge.addr, "edge_cache_objects").await, 0.0);
    edge.stop().await;
}

/// Time to first byte and to the whole body of a miss whose upstream sends
/// half the body, pauses 600 ms, then the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_byte_of_a_miss_does_not_wait_for_the_whole_body() {
    let pause = Duration::from_millis(600);
    let seg = body(11, LEN);
    let up = SlowUpstream::start(seg.clone(), Some(pause)).await;
    let edge = start_edge(edge_config(&up.url())).await;
    let c = client();
    let started = Instant::now();
    let mut r = c.get(format!("{}/{SEG}", edge.url())).send().await.unwrap();
    let head = read_at_least(&mut r, 1).await;
    let ttfb = started.elapsed();
    let all = read_rest(&mut r, head).await.unwrap();
    let total = started.elapsed();
    assert!(all == seg);
    eprintln!("miss: time to first byte {ttfb:?}, whole body {total:?}");
    assert!(total >= pause);
    assert!(ttfb < pause / 3, "first byte after {ttfb:?} of {total:?}");
    edge.stop().await;
}

/// The real `edge` binary in front of `upstream`.
fn start_edge_process(upstream: &str) -> EdgeProcess {
    EdgeProcess::spawn(&["serve", "--listen", "127.0.0.1:0", "--upstream", upstream, "--ram-bytes", "10000000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_streaming_response_finishes_it_and_refuses_new_connections() {
    let seg = body(13, LEN);
    let up = SlowUpstream::start(seg.clone(), None).await;
    let mut edge = start_edge_process(&up.url());
    let c = client();
    let mut r = c.get(format!("http://{}/{SEG}", edge.addr)).send().await.unwrap();
    let head = read_at_least(&mut r, 1).await;

    let pid = i32::try_from(edge.child.id()).unwrap();
    // SAFETY: signalling a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let refused = eventually(|| async { tokio::net::TcpStream::connect(edge.addr).await.is_err() }).await;
    assert!(refused, "the stopping edge still accepts connections");
    assert!(edge.child.try_wait().unwrap().is_none(), "the edge exited with a response in flight");

    up.open();
    let all = read_rest(&mut r, head).await.expect("the in-flight response was cut by the shutdown");
    assert!(all == seg, "the in-flight body differs");
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = edge.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the edge did not exit after its last response");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "edge exited with {status}");
}
