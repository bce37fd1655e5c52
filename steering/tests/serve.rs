//! Steering served on loopback against tiny fake edges whose health we control.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use reqwest::header::HeaderMap;
use serde_json::Value;
use steering::{Config, EdgeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vod::steering::{Format, PlayResponse};
use vod::token::{verify, TokenKey};
use vod::TitleId;

const SECRET: &str = "test-secret";

/// An edge that only answers `/health`, with a status we can switch, and that we can stop.
struct FakeEdge {
    url: String,
    status: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeEdge {
    async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let app = Router::new()
            .route(
                "/health",
                get(|State(s): State<Arc<AtomicU16>>| async move {
                    StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }),
            )
            .with_state(status.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self { url, status, stop: Some(stop), task: Some(task) }
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    async fn shut_down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

struct Steering {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), steering::Error>>,
}

fn edge(name: &str, url: &str, site: &str, prefix: &str) -> EdgeConfig {
    EdgeConfig {
        name: name.into(),
        url: url.into(),
        site: site.into(),
        prefixes: vec![prefix.into()],
        drained: false,
        max_load_bps: None,
    }
}

fn config(edges: Vec<EdgeConfig>, trust_forwarded_for: bool) -> Config {
    let mut cfg = Config::from_toml_str(&format!(
        "token_secret = \"{SECRET}\"\nprobe_interval_ms = 40\nprobe_timeout_ms = 1000\n\
         [[edges]]\nname = \"x\"\nurl = \"http://127.0.0.1:1\"\nsite = \"s\"\n"
    ))
    .unwrap();
    cfg.edges = edges;
    cfg.trust_forwarded_for = trust_forwarded_for;
    cfg
}

async fn start_steering(cfg: Config) -> Steering {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Steering { base, stop: Some(stop), task }
}

impl Steering {
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let res = tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("run returns after shutdown");
        res.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn assert_cors(h: &HeaderMap) {
    for (k, v) in vod::cors::CORS_HEADERS {
        assert_eq!(h.get(*k).and_then(|x| x.to_str().ok()), Some(*v), "missing CORS header {k}");
    }
}

async fn play(c: &reqwest::Client, base: &str, path: &str, xff: Option<&str>) -> reqwest::Response {
    let mut req = c.get(format!("{base}{path}"));
    if let Some(ip) = xff {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

async fn play_ok(c: &reqwest::Client, base: &str, title: &str, xff: &str) -> PlayResponse {
    let resp = play(c, base, &format!("/v1/play/{title}"), Some(xff)).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Polls `/v1/edges` until `edge` reports `state`, failing after a deadline.
async fn wait_for_state(c: &reqwest::Client, base: &str, edge: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = c.get(format!("{base}/v1/edges")).send().await.unwrap().json().await.unwrap();
        let found = v["edges"].as_array().unwrap().iter().find(|e| e["name"] == edge).unwrap()["state"].clone();
        if found == state {
            return;
        }
        assert!(Instant::now() < deadline, "edge {edge} never became {state} (last {found})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a raw request line so that `..` reaches the server un-normalized.
async fn raw_status(base: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.to_ascii_lowercase().contains("access-control-allow-origin: *"), "no CORS on {path}: {out}");
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

fn check_signed(url: &str, edge_url: &str, title: &str, suffix: &str) {
    let rest = url.strip_prefix(&format!("{edge_url}/t/")).unwrap_or_else(|| panic!("{url} not on {edge_url}"));
    let (token, path) = rest.split_once('/').unwrap();
    assert_eq!(path, format!("titles/{title}/{suffix}"));
    let key = TokenKey::new("k1", SECRET.as_bytes().to_vec());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = verify(&[key], token, &TitleId::new(title).unwrap(), now).unwrap();
    assert!(claims.expiry_unix_s > now + 3500 && claims.expiry_unix_s <= now + 3601, "ttl not applied");
}

#[tokio::test]
async fn play_ranks_the_client_site_first_with_signed_urls() {
    let (a1, a2, b1) = (FakeEdge::start().await, FakeEdge::start().await, FakeEdge::start().await);
    let s = start_steering(config(
        vec![
            edge("a1", &a1.url, "lab-a", "10.1.0.0/16"),
            edge("a2", &a2.url, "lab-a", "10.1.0.0/16"),
            edge("b1", &b1.url, "lab-b", "10.2.0.0/16"),
        ],
        true,
    ))
    .await;
    let c = client();

    let resp = play(&c, &s.base, "/v1/play/bbb", Some("10.1.7.7")).await;
    assert_eq!(resp.status(), 200);
    assert_cors(resp.headers());
    let p: PlayResponse = resp.json().await.unwrap();
    assert_eq!((p.title.as_str(), p.format, p.ttl_s), ("bbb", Format::Hls, 3600));
    let sites: Vec<&str> = p.urls.iter().map(|u| u.site.as_str()).collect();
    assert_eq!(sites, vec!["lab-a", "lab-a", "lab-b"]);
    assert_eq!(p.urls[0].reasons[..2], ["site-match", "hash-owner"]);
    assert_eq!(p.urls[1].reasons[..2], ["site-match", "hash-rank-2"]);
    assert_eq!(p.urls[2].reasons[..2], ["other-site", "hash-owner"]);
    for u in &p.urls {
        let edge_url =
            [(&"a1", &a1.url), (&"a2", &a2.url), (&"b1", &b1.url)].into_iter().find(|(n, _)| **n == u.edge).unwrap().1;
        check_signed(&u.url, edge_url, "bbb", "hls/master.m3u8");
    }
    // The same title lands on the same edge every time.
    let again = play_ok(&c, &s.base, "bbb", "10.1.200.1").await;
    assert_eq!(again.urls[0].edge, p.urls[0].edge);

    let p = play_ok(&c, &s.base, "bbb", "10.2.0.9").await;
    assert_eq!(p.urls[0].edge, "b1");
    check_signed(&p.urls[0].url, &b1.url, "bbb", "hls/master.m3u8");

    let resp = play(&c, &s.base, "/v1/play/bbb?format=dash", Some("10.2.0.9")).await;
    let p: PlayResponse = resp.json().await.unwrap();
    assert_eq!(p.format, Format::Dash);
    check_signed(&p.urls[0].url, &b1.url, "bbb", "dash/manifest.mpd");

    let p = play_ok(&c, &s.base, "bbb", "192.0.2.1").await;
    assert_eq!(p.urls.len(), 3);
    assert!(p.urls.iter().all(|u| u.reasons[0] == "no-coverage"));

    for bad in ["/v1/play/BBB", "/v1/play/bbb?format=flv", "/v1/play/a%2Fb"] {
        let resp = play(&c, &s.base, bad, None).await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_cors(resp.headers());
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    s.shut_down().await;
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let a1 = FakeEdge::start().await;
    let s = start_steering(config(vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16")], false)).await;
    let p = play_ok(&client(), &s.base, "bbb", "10.1.2.3").await;
    assert_eq!(p.urls[0].reasons[0], "no-coverage");
    s.shut_down().await;
}

#[tokio::test]
async fn redirect_is_a_302_with_cors_and_bad_paths_are_400() {
    let (a1, b1) = (FakeEdge::start().await, FakeEdge::start().await);
    let s = start_steering(config(
        vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16"), edge("b1", &b1.url, "lab-b", "10.2.0.0/16")],
        true,
    ))
    .await;
    let c = client();
    let resp = play(&c, &s.base, "/v1/redirect/bbb/v720/3.m4s", Some("10.2.1.1")).await;
    assert_eq!(resp.status(), 302);
    assert_cors(resp.headers());
    let loc = resp.headers()["location"].to_str().unwrap();
    check_signed(loc, &b1.url, "bbb", "v720/3.m4s");
    let resp = play(&c, &s.base, "/v1/redirect/bbb/hls/master.m3u8", Some("10.1.1.1")).await;
    check_signed(resp.headers()["location"].to_str().unwrap(), &a1.url, "bbb", "hls/master.m3u8");

    let resp = play(&c, &s.base, "/v1/redirect/BBB/hls/master.m3u8", None).await;
    assert_eq!(resp.status(), 400);
    assert_cors(resp.headers());
    for path in [
        "/v1/redirect/bbb/../../etc/passwd",
        "/v1/redirect/bbb/%2e%2e/x/1.m4s",
        "/v1/redirect/bbb/hls/..",
        "/v1/redirect/bbb/v720/1.mp3",
        "/v1/redirect/bbb//1.m4s",
    ] {
        assert_eq!(raw_status(&s.base, path).await, 400, "{path}");
    }
    s.shut_down().await;
}

#[tokio::test]
async fn every_response_carries_cors_and_preflights_are_204() {
    let a1 = FakeEdge::start().await;
    let s = start_steering(config(vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16")], true)).await;
    let c = client();
    for path in ["/v1/play/bbb", "/v1/redirect/bbb/hls/master.m3u8", "/whatever"] {
        let resp = c.request(reqwest::Method::OPTIONS, format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(resp.status(), 204, "{path}");
        assert_cors(resp.headers());
    }
    let resp = c.get(format!("{}/nope", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_cors(resp.headers());
    let resp = c.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_cors(resp.headers());
    assert_eq!(resp.text().await.unwrap(), "ok");
    let resp = c.post(format!("{}/v1/play/bbb", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_cors(resp.headers());
    s.shut_down().await;
}

#[tokio::test]
async fn unhealthy_edges_are_skipped_and_return_after_recovery() {
    let (a1, mut b1) = (FakeEdge::start().await, FakeEdge::start().await);
    let s = start_steering(config(
        vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16"), edge("b1", &b1.url, "lab-b", "10.2.0.0/16")],
        true,
    ))
    .await;
    let c = client();
    wait_for_state(&c, &s.base, "a1", "up").await;
    wait_for_state(&c, &s.base, "b1", "up").await;

    a1.set_status(500);
    wait_for_state(&c, &s.base, "a1", "down").await;
    let p = play_ok(&c, &s.base, "bbb", "10.1.0.5").await;
    let edges: Vec<&str> = p.urls.iter().map(|u| u.edge.as_str()).collect();
    assert_eq!(edges, vec!["b1"], "a down edge must not be offered");
    assert_eq!(p.urls[0].reasons[0], "other-site");

    // An edge whose health endpoint stops answering at all.
    b1.shut_down().await;
    wait_for_state(&c, &s.base, "b1", "down").await;
    let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
    let b = v["edges"].as_array().unwrap().iter().find(|e| e["name"] == "b1").unwrap();
    assert!(b["consecutive_failures"].as_u64().unwrap() >= 2 && b["last_error"].is_string(), "{b}");
    for path in ["/v1/play/bbb", "/v1/redirect/bbb/hls/master.m3u8"] {
        let resp = play(&c, &s.base, path, Some("10.1.0.5")).await;
        assert_eq!(resp.status(), 503, "{path}");
        assert_cors(resp.headers());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "no healthy edge available");
    }

    a1.set_status(200);
    wait_for_state(&c, &s.base, "a1", "up").await;
    let p = play_ok(&c, &s.base, "bbb", "10.1.0.5").await;
    assert_eq!(p.urls.len(), 1);
    assert_eq!(p.urls[0].edge, "a1");
    assert_eq!(p.urls[0].reasons[2], "healthy");
    s.shut_down().await;
}

#[tokio::test]
async fn drained_edges_get_no_players_and_bad_config_is_refused() {
    let (a1, a2) = (FakeEdge::start().await, FakeEdge::start().await);
    let mut drained = edge("a2", &a2.url, "lab-a", "10.1.0.0/16");
    drained.drained = true;
    let s = start_steering(config(vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16"), drained], true)).await;
    for i in 0..20 {
        let p = play_ok(&client(), &s.base, &format!("t{i}"), "10.1.0.1").await;
        assert_eq!(p.urls.iter().map(|u| u.edge.as_str()).collect::<Vec<_>>(), vec!["a1"]);
    }
    s.shut_down().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(vec![edge("a1", &a1.url, "lab-a", "10.1.0.0/16")], true);
    cfg.token_secret.clear();
    let err = steering::run(cfg, listener, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("token_secret"), "{err}");
}
