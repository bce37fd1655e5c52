//! Live mode against a tiny HTTP/1.1 server on 127.0.0.1:0 that plays steering
//! and an edge: a play JSON, HLS playlists, and segments of known sizes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use player_sim::live::{run, LiveConfig, LiveReport};
use player_sim::AbrKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vod::steering::{Format, PlayResponse, PlayUrl};
use vod::trace::{NetworkPeriod, NetworkTrace};

const TOKEN_PATH: &str = "/t/TOKEN/titles/t1";

/// A request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    forwarded_for: Option<String>,
}

/// Serves fixed bodies by path; 404 for anything else. Aborted when dropped.
struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Bind first, so the routes can name the server's own address.
    async fn bind() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    fn serve(listener: TcpListener, routes: HashMap<String, Vec<u8>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    conns.spawn(handle(stream, Arc::clone(&routes), Arc::clone(&seen)));
                }
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(mut stream: TcpStream, routes: Arc<HashMap<String, Vec<u8>>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Duration::from_secs(5);
    // One request per connection; bounded in size and time.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match tokio::time::timeout(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/").to_owned();
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let forwarded_for = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().unwrap().push(Seen { path: path.clone(), forwarded_for });
    let (status, body) = match routes.get(&path) {
        Some(b) => ("200 OK", b.clone()),
        None => ("404 Not Found", b"not found".to_vec()),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// Video rungs (id, BANDWIDTH), listed out of order in the master on purpose.
const VIDEO: [(&str, u64); 3] = [("v3", 1_000_000), ("v1", 200_000), ("v2", 500_000)];

fn segment_bytes(rendition: &str, n: usize) -> usize {
    let base = match rendition {
        // The first segment is fetched at the lowest rung; big enough to measure a loopback rate.
        "v1" => 40_000,
        "v2" => 50_000,
        "v3" => 60_000,
        _ => 3_000,
    };
    base + n
}

fn init_bytes(rendition: &str) -> usize {
    700 + rendition.len() + rendition.as_bytes()[1] as usize
}

struct Title {
    routes: HashMap<String, Vec<u8>>,
    segments: usize,
}

/// The title's playlists and segments under `/t/TOKEN/titles/t1/`.
fn title(segments: usize, seconds: f64) -> Title {
    let mut routes = HashMap::new();
    let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    master.push_str(
        "#EXT-X-MEDIA:TYPE=AUDIO,URI=\"a1.m3u8\",GROUP-ID=\"aud\",LANGUAGE=\"und\",NAME=\"a1\",DEFAULT=YES,AUTOSELECT=YES\n",
    );
    for (id, bw) in VIDEO {
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bw},CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\"\n{id}.m3u8\n"
        ));
    }
    routes.insert(format!("{TOKEN_PATH}/hls/master.m3u8"), master.into_bytes());
    for id in ["v1", "v2", "v3", "a1"] {
        let mut pl = format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"../{id}/init.mp4\"\n",
            seconds.ceil()
        );
        for n in 1..=segments {
            pl.push_str(&format!("#EXTINF:{seconds:.3},\n../{id}/{n}.m4s\n"));
            routes.insert(format!("{TOKEN_PATH}/{id}/{n}.m4s"), vec![b'x'; segment_bytes(id, n)]);
        }
        pl.push_str("#EXT-X-ENDLIST\n");
        routes.insert(format!("{TOKEN_PATH}/hls/{id}.m3u8"), pl.into_bytes());
        routes.insert(format!("{TOKEN_PATH}/{id}/init.mp4"), vec![b'i'; init_bytes(id)]);
    }
    Title { routes, segments }
}

fn play_json(urls: &[(String, &str)]) -> Vec<u8> {
    let resp = PlayResponse {
        title: "t1".into(),
        format: Format::Hls,
        ttl_s: 60,
        urls: urls
            .iter()
            .map(|(url, edge)| PlayUrl {
                url: url.clone(),
                edge: (*edge).to_owned(),
                site: "site-a".into(),
                reasons: vec!["test".into()],
            })
            .collect(),
    };
    serde_json::to_vec(&resp).unwrap()
}

fn master_url(addr: SocketAddr) -> String {
    format!("http://{addr}{TOKEN_PATH}/hls/master.m3u8")
}

/// One server acting as steering and as edge `edge-a`.
async fn stack(title: Title) -> (FakeServer, Title) {
    let (listener, addr) = FakeServer::bind().await;
    let mut routes = title.routes.clone();
    routes.insert("/v1/play/t1".into(), play_json(&[(master_url(addr), "edge-a")]));
    (FakeServer::serve(listener, routes), title)
}

fn config(addr: SocketAddr, sessions: usize) -> LiveConfig {
    let mut c = LiveConfig::new(format!("http://{addr}"), "t1");
    c.sessions = sessions;
    c.concurrency = sessions;
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn run_bounded(c: LiveConfig) -> LiveReport {
    tokio::time::timeout(Duration::from_secs(60), run(c)).await.expect("live run finished in time").unwrap()
}

fn route_len(t: &Title, path: &str) -> u64 {
    t.routes[&format!("{TOKEN_PATH}/{path}")].len() as u64
}

#[tokio::test]
async fn plays_sessions_and_counts_bytes_segments_and_switches() {
    let (server, t) = stack(title(4, 1.0)).await;
    let mut c = config(server.addr, 3);
    c.client_ips = vec!["10.1.0.7".into(), "10.2.0.9".into()];
    let report = run_bounded(c).await;

    assert_eq!(report.sessions, 3);
    assert_eq!(report.failed, 0, "{:#?}", report.per_session);
    // The first segment is at the lowest rung; loopback is fast, so the
    // throughput rule jumps to the top rung (v3) and stays: one switch.
    let expected = route_len(&t, "hls/master.m3u8")
        + route_len(&t, "hls/a1.m3u8")
        + route_len(&t, "hls/v1.m3u8")
        + route_len(&t, "hls/v3.m3u8")
        + route_len(&t, "a1/init.mp4")
        + route_len(&t, "v1/init.mp4")
        + route_len(&t, "v3/init.mp4")
        + (1..=t.segments).map(|n| segment_bytes("a1", n) as u64).sum::<u64>()
        + segment_bytes("v1", 1) as u64
        + (2..=t.segments).map(|n| segment_bytes("v3", n) as u64).sum::<u64>();
    for s in &report.per_session {
        assert_eq!(s.error, None);
        assert_eq!(s.edge.as_deref(), Some("edge-a"));
        assert_eq!(s.qoe.segments, 4);
        assert_eq!(s.audio_segments, 4);
        assert_eq!(s.qoe.switches, 1, "{s:#?}");
        assert_eq!(s.bytes, expected, "{s:#?}");
        assert_eq!(s.qoe.content_ms, 4000.0);
        assert!(s.qoe.startup_ms > 0.0);
        // Avg bitrate counts 200 kbps once and 1000 kbps three times over T ≥ 4 s.
        assert!(s.qoe.avg_bitrate_kbps > 0.0 && s.qoe.avg_bitrate_kbps <= 800.0, "{s:#?}");
    }
    assert_eq!(report.total_bytes, 3 * expected);
    assert_eq!(report.bytes_by_edge.get("edge-a"), Some(&(3 * expected)));
    assert_eq!(report.bytes_by_edge.len(), 1);
    let ips: Vec<Option<String>> = report.per_session.iter().map(|s| s.client_ip.clone()).collect();
    assert_eq!(ips, [Some("10.1.0.7".into()), Some("10.2.0.9".into()), Some("10.1.0.7".into())]);

    // Steering saw each session's client IP; relative URIs resolved under the token path.
    let seen = server.seen();
    let mut steering_ips: Vec<String> =
        seen.iter().filter(|s| s.path == "/v1/play/t1").filter_map(|s| s.forwarded_for.clone()).collect();
    steering_ips.sort();
    assert_eq!(steering_ips, ["10.1.0.7", "10.1.0.7", "10.2.0.9"]);
    assert!(seen.iter().all(|s| s.path == "/v1/play/t1" || s.path.starts_with(TOKEN_PATH)), "{seen:#?}");
    assert_eq!(seen.iter().filter(|s| s.path.ends_with("/v3/init.mp4")).count(), 3, "init once per switch");

    // The JSON has the contract's keys.
    let v = serde_json::to_value(&report).unwrap();
    for key in ["sessions", "failed", "avg_bitrate_kbps", "rebuffer_ratio", "rebuffer_events", "switches", "startup_ms"]
    {
        assert!(v[key].is_number(), "{key}: {v}");
    }
    assert_eq!(v["bytes_by_edge"]["edge-a"], 3 * expected);
    assert_eq!(v["per_session"][0]["segments"], 4);
}

#[tokio::test]
async fn falls_back_to_the_next_url_when_the_first_edge_is_down() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = title(2, 1.0);
    let (listener, addr) = FakeServer::bind().await;
    let mut routes = t.routes.clone();
    routes.insert("/v1/play/t1".into(), play_json(&[(master_url(dead), "edge-dead"), (master_url(addr), "edge-b")]));
    let server = FakeServer::serve(listener, routes);
    let report = run_bounded(config(server.addr, 1)).await;
    let s = &report.per_session[0];
    assert_eq!(s.error, None, "{s:#?}");
    assert_eq!(s.edge.as_deref(), Some("edge-b"));
    assert_eq!(s.qoe.segments, 2);
    assert_eq!(report.bytes_by_edge.keys().collect::<Vec<_>>(), ["edge-b"]);
}

#[tokio::test]
async fn failed_sessions_are_recorded_and_the_run_goes_on() {
    let (server, _t) = stack(title(2, 1.0)).await;
    let mut c = config(server.addr, 2);
    c.title = "missing".into();
    let report = run_bounded(c).await;
    assert_eq!(report.sessions, 2);
    assert_eq!(report.failed, 2);
    for s in &report.per_session {
        let e = s.error.as_deref().unwrap_or_default();
        assert!(e.contains("404") && e.contains("/v1/play/missing"), "{e}");
    }
    assert_eq!(report.means.avg_bitrate_kbps, 0.0);
}

#[tokio::test]
async fn all_edges_down_is_a_session_error() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (listener, addr) = FakeServer::bind().await;
    let routes = HashMap::from([("/v1/play/t1".to_owned(), play_json(&[(master_url(dead), "edge-dead")]))]);
    let server = FakeServer::serve(listener, routes);
    let report = run_bounded(config(addr, 1)).await;
    assert_eq!(report.failed, 1);
    let e = report.per_session[0].error.clone().unwrap_or_default();
    assert!(e.contains("every edge URL failed"), "{e}");
    drop(server);
}

#[tokio::test]
async fn a_full_buffer_makes_the_player_wait_in_real_time() {
    // 4 × 0.5 s of content with a 1 s buffer: the last segments can only be
    // fetched as playback frees room, so the session lasts about a second.
    let (server, _t) = stack(title(4, 0.5)).await;
    let mut c = config(server.addr, 1);
    c.max_buffer = Duration::from_secs(1);
    let started = Instant::now();
    let report = run_bounded(c).await;
    let elapsed = started.elapsed();
    assert_eq!(report.failed, 0, "{:#?}", report.per_session);
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(report.per_session[0].qoe.rebuffer_events, 0);
}

#[tokio::test]
async fn lookahead_rules_learn_from_live_downloads() {
    // RobustMPC and ours only see throughput through download reports: on
    // loopback they must leave the lowest rung after the first segment.
    let (server, _t) = stack(title(4, 1.0)).await;
    for abr in [AbrKind::Robustmpc, AbrKind::Ours, AbrKind::Bolae] {
        let mut c = config(server.addr, 1);
        c.abr = abr;
        let report = run_bounded(c).await;
        let s = &report.per_session[0];
        assert_eq!(s.error, None, "{abr}: {s:#?}");
        assert!(s.qoe.switches >= 1, "{abr} never left the lowest rung: {s:#?}");
    }
}

#[tokio::test]
async fn each_session_gets_its_own_trace() {
    // Session 0 on a fast link climbs to the top rung; session 1 at 300 kbit/s
    // stays at the lowest (played 4× faster, the figures are unchanged).
    let (server, _t) = stack(title(3, 1.0)).await;
    let mut c = config(server.addr, 2);
    let link = |kbps| {
        NetworkTrace::new(vec![NetworkPeriod { duration_ms: 1000, bandwidth_kbps: kbps, latency_ms: 5.0 }]).unwrap()
    };
    c.networks = vec![link(50_000.0), link(300.0)];
    c.speed = 4.0;
    let report = run_bounded(c).await;
    assert_eq!(report.failed, 0, "{:#?}", report.per_session);
    let (fast, slow) = (&report.per_session[0].qoe, &report.per_session[1].qoe);
    assert_eq!(fast.switches, 1, "{fast:?}");
    assert_eq!(slow.switches, 0, "{slow:?}");
    assert!(fast.avg_bitrate_kbps > slow.avg_bitrate_kbps);
}

#[tokio::test]
async fn speed_compresses_the_wait_and_reports_startup_percentiles() {
    // Eight 1 s segments, a 2 s buffer: in real time the session takes ~6 s;
    // at speed 4 about 1.5 s, and the figures stay in media time.
    let (server, _t) = stack(title(8, 1.0)).await;
    let mut c = config(server.addr, 2);
    c.max_buffer = Duration::from_secs(2);
    c.speed = 4.0;
    let started = Instant::now();
    let report = run_bounded(c).await;
    let elapsed = started.elapsed();
    assert_eq!(report.failed, 0, "{:#?}", report.per_session);
    assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(5500), "{elapsed:?}: not sped up");
    assert_eq!(report.speed, 4.0);
    assert!(report.startup_ms_p50 > 0.0 && report.startup_ms_p50 <= report.startup_ms_p90);
    assert!(report.startup_ms_p90 <= report.startup_ms_p99);
    let mut bad = config(server.addr, 1);
    bad.speed = 0.0;
    assert!(run(bad).await.unwrap_err().to_string().contains("--speed"));
}

#[tokio::test]
async fn shaping_holds_downloads_to_the_trace_rate() {
    let (server, _t) = stack(title(3, 1.0)).await;
    let mut c = config(server.addr, 1);
    // 4 Mbit/s: every byte of the session costs 2 µs; latency 5 ms per request.
    c.network = Some(
        NetworkTrace::new(vec![NetworkPeriod { duration_ms: 1000, bandwidth_kbps: 4000.0, latency_ms: 5.0 }]).unwrap(),
    );
    let started = Instant::now();
    let report = run_bounded(c).await;
    let elapsed = started.elapsed().as_secs_f64();
    let s = &report.per_session[0];
    assert_eq!(s.error, None, "{s:#?}");
    let floor = s.bytes as f64 * 8.0 / 4_000_000.0;
    assert!(elapsed >= floor, "{elapsed} s for {} bytes at 4 Mbit/s", s.bytes);
    // The estimate never sees more than the trace allows, so the top rung (1 Mbit/s) is fine but slower pacing shows.
    assert!(s.qoe.startup_ms >= 5.0);
}
