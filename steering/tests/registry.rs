//! Steering on loopback: heartbeats, content-steering manifests, the origin
//! fallback, a reloadable coverage file and trusted proxies.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use serde_json::Value;
use steering::{Config, EdgeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vod::steering::{Heartbeat, PlayResponse};

const HB: &str = "hb-token";

/// A server answering 200 on `/health`, stopped on drop of the test's runtime.
async fn fake_edge() -> String {
    let app = Router::new().route("/health", get(|| async { "ok" })).route(
        "/titles/bbb/hls/master.m3u8",
        get(|| async { "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001e\"\nv360.m3u8\n" }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
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

fn config(extra: &str, edges: Vec<EdgeConfig>) -> Config {
    let mut cfg = Config::from_toml_str(&format!(
        "token_secret = \"s\"\ntrust_forwarded_for = true\nprobe_interval_ms = 50\nprobe_timeout_ms = 500\n\
         heartbeat_token = \"{HB}\"\n{extra}\n"
    ))
    .unwrap();
    cfg.edges = edges;
    cfg.validate().unwrap();
    cfg
}

struct Steering {
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), steering::Error>>,
}

async fn start(cfg: Config) -> Steering {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Steering { base, stop, task }
}

impl Steering {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn send_hb(c: &reqwest::Client, base: &str, token: Option<&str>, hb: &Heartbeat) -> reqwest::Response {
    let mut req = c.post(format!("{base}/v1/heartbeat")).json(hb);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn play(c: &reqwest::Client, base: &str, title: &str, xff: &str) -> PlayResponse {
    let resp = c.get(format!("{base}/v1/play/{title}")).header("x-forwarded-for", xff).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn edges_of(p: &PlayResponse) -> Vec<&str> {
    p.urls.iter().map(|u| u.edge.as_str()).collect()
}

/// Polls `cond` until it holds, failing after `limit`; returns how long it took.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeats_are_authenticated_and_feed_the_decision() {
    let (u1, u2, u3) = (fake_edge().await, fake_edge().await, fake_edge().await);
    let s =
        start(config("", vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("a2", &u2, "lab-a", "10.1.0.0/16")])).await;
    let c = client();

    assert_eq!(send_hb(&c, &s.base, None, &Heartbeat::new("a1")).await.status(), 401);
    let wrong = send_hb(&c, &s.base, Some("nope"), &Heartbeat::new("a1")).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    assert_eq!(send_hb(&c, &s.base, Some(HB), &Heartbeat::new("zz")).await.status(), 404);
    let bad = c.post(format!("{}/v1/heartbeat", s.base)).bearer_auth(HB).body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // The edge that is not the title's hash owner reports holding it: it goes first.
    let first = play(&c, &s.base, "bbb", "10.1.0.1").await;
    assert_eq!(first.urls[0].reasons[..2], ["site-match", "hash-owner"]);
    let other = first.urls[1].edge.clone();
    let mut hb = Heartbeat::new(other.clone());
    hb.titles = vec!["bbb".into()];
    hb.load_bps = 1_000;
    hb.connections = 3;
    let ack: Value = send_hb(&c, &s.base, Some(HB), &hb).await.json().await.unwrap();
    assert_eq!((ack["available"].as_bool(), ack["interval_ms"].as_u64()), (Some(true), Some(833)));
    let p = play(&c, &s.base, "bbb", "10.1.0.1").await;
    assert_eq!(p.urls[0].edge, other);
    assert_eq!(p.urls[0].reasons[..3], ["site-match", "holds-title", "hash-rank-2"]);

    let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
    let e = v["edges"].as_array().unwrap().iter().find(|e| e["name"] == other.as_str()).unwrap().clone();
    assert_eq!((e["heartbeat"]["connections"].as_u64(), e["heartbeat"]["titles"].as_u64()), (Some(3), Some(1)));

    // Drained by its own heartbeat: no players.
    hb.drained = true;
    let ack: Value = send_hb(&c, &s.base, Some(HB), &hb).await.json().await.unwrap();
    assert_eq!(ack["out_reason"], "drained");
    assert!(!edges_of(&play(&c, &s.base, "bbb", "10.1.0.1").await).contains(&other.as_str()));

    // An edge steering never heard of registers by heartbeat and gets players.
    let mut reg = Heartbeat::new("c1");
    reg.url = Some(u3.clone());
    reg.site = Some("lab-c".into());
    assert_eq!(send_hb(&c, &s.base, Some(HB), &reg).await.status(), 200);
    let p = play(&c, &s.base, "bbb", "10.1.0.1").await;
    assert!(edges_of(&p).contains(&"c1"), "{:?}", edges_of(&p));
    s.shut_down().await;
}

#[tokio::test]
async fn heartbeats_are_refused_when_not_configured() {
    let u1 = fake_edge().await;
    let mut cfg = config("", vec![edge("a1", &u1, "lab-a", "10.1.0.0/16")]);
    cfg.heartbeat_token = None;
    let s = start(cfg).await;
    assert_eq!(send_hb(&client(), &s.base, Some(HB), &Heartbeat::new("a1")).await.status(), 403);
    s.shut_down().await;
}

#[tokio::test]
async fn a_silent_edge_is_out_within_the_timeout_and_back_on_its_next_heartbeat() {
    let (u1, u2) = (fake_edge().await, fake_edge().await);
    let s = start(config(
        "heartbeat_timeout_ms = 300",
        vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("b1", &u2, "lab-b", "10.2.0.0/16")],
    ))
    .await;
    let c = client();
    assert_eq!(send_hb(&c, &s.base, Some(HB), &Heartbeat::new("a1")).await.status(), 200);
    assert_eq!(play(&c, &s.base, "bbb", "10.1.0.1").await.urls[0].edge, "a1");
    // It stops heartbeating (its probes still pass): out once the timeout passes, well within 3 s.
    let took = wait_until(Duration::from_secs(3), "a1 out", || async {
        !edges_of(&play(&c, &s.base, "bbb", "10.1.0.1").await).contains(&"a1")
    })
    .await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["edges"][0]["out_reason"], "heartbeat-missed");
    // A first failure has no breaker hold-out: the next heartbeat brings it back.
    let ack: Value = send_hb(&c, &s.base, Some(HB), &Heartbeat::new("a1")).await.json().await.unwrap();
    assert_eq!(ack["available"], true);
    assert_eq!(play(&c, &s.base, "bbb", "10.1.0.1").await.urls[0].edge, "a1");
    s.shut_down().await;
}

#[tokio::test]
async fn content_steering_manifests_are_redecided_on_every_poll() {
    let (u1, u2, u3) = (fake_edge().await, fake_edge().await, fake_edge().await);
    let s = start(config(
        "steering_ttl_s = 7",
        vec![
            edge("a1", &u1, "lab-a", "10.1.0.0/16"),
            edge("a2", &u2, "lab-a", "10.1.0.0/16"),
            edge("b1", &u3, "lab-b", "10.2.0.0/16"),
        ],
    ))
    .await;
    let c = client();
    let poll = |format: &str| {
        c.get(format!("{}/v1/steering/bbb?format={format}&_HLS_pathway=a1&_HLS_throughput=5000000", s.base))
            .header("x-forwarded-for", "10.1.0.1")
            .send()
    };
    let resp = poll("hls").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let m: Value = resp.json().await.unwrap();
    assert_eq!((m["VERSION"].as_u64(), m["TTL"].as_u64()), (Some(1), Some(7)));
    assert_eq!(m["RELOAD-URI"], "/v1/steering/bbb?format=hls");
    let order: Vec<String> =
        m["PATHWAY-PRIORITY"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let play_order: Vec<String> = play(&c, &s.base, "bbb", "10.1.0.1").await.urls.into_iter().map(|u| u.edge).collect();
    assert_eq!(order, play_order, "pathways follow the play ranking");
    assert_eq!(order[2], "b1");
    let clone_b1 = m["PATHWAY-CLONES"].as_array().unwrap().iter().find(|c| c["ID"] == "b1").unwrap().clone();
    assert_eq!(clone_b1["BASE-ID"], "base");
    // The host name alone (players cannot change a port through it), and the whole signed
    // variant URI on b1 by the variant's stable id.
    assert_eq!(clone_b1["URI-REPLACEMENT"]["HOST"], "127.0.0.1");
    let v360 = clone_b1["URI-REPLACEMENT"]["PER-VARIANT-URIS"]["v360"].as_str().unwrap();
    assert!(v360.starts_with(&format!("{u3}/t/")) && v360.ends_with("/titles/bbb/hls/v360.m3u8"), "{v360}");

    // The best pathway reports itself unhealthy: the next poll drops it.
    let mut hb = Heartbeat::new(order[0].clone());
    hb.ok = false;
    send_hb(&c, &s.base, Some(HB), &hb).await;
    let m: Value = poll("hls").await.unwrap().json().await.unwrap();
    let now: Vec<&str> = m["PATHWAY-PRIORITY"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(now, vec![order[1].as_str(), "b1"]);

    let m: Value = poll("dash").await.unwrap().json().await.unwrap();
    assert_eq!(m["SERVICE-LOCATION-PRIORITY"], serde_json::json!([order[1], "b1"]));
    assert_eq!(m["RELOAD-URI"], "/v1/steering/bbb?format=dash");
    assert!(m.get("PATHWAY-CLONES").is_none());

    let bad = c.get(format!("{}/v1/steering/BBB", s.base)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    s.shut_down().await;
}

#[tokio::test]
async fn the_origin_is_the_unsigned_last_resort() {
    let u1 = fake_edge().await;
    let s = start(config("origin_url = \"http://127.0.0.1:9/\"", vec![edge("a1", &u1, "lab-a", "10.1.0.0/16")])).await;
    let c = client();
    let p = play(&c, &s.base, "bbb", "10.1.0.1").await;
    assert_eq!(edges_of(&p), vec!["a1", "origin"]);
    assert_eq!(p.urls[1].url, "http://127.0.0.1:9/titles/bbb/hls/master.m3u8");
    assert_eq!(p.urls[1].reasons, vec!["fallback-origin"]);

    let mut hb = Heartbeat::new("a1");
    hb.drained = true;
    send_hb(&c, &s.base, Some(HB), &hb).await;
    assert_eq!(edges_of(&play(&c, &s.base, "bbb", "10.1.0.1").await), vec!["origin"]);
    let r = c.get(format!("{}/v1/redirect/bbb/v720/1.m4s", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "http://127.0.0.1:9/titles/bbb/v720/1.m4s");
    // Content steering offers edges only: origin URLs carry no token path to clone.
    let r = c.get(format!("{}/v1/steering/bbb", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    s.shut_down().await;
}

#[tokio::test]
async fn the_coverage_file_is_merged_and_reloaded_without_restart() {
    let (u1, u2) = (fake_edge().await, fake_edge().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coverage.csv");
    std::fs::write(&file, "prefix,site\n10.7.0.0/16,lab-b\n").unwrap();
    let mut cfg = config(
        "coverage_reload_ms = 30",
        vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("b1", &u2, "lab-b", "10.2.0.0/16")],
    );
    cfg.coverage_file = Some(file.clone());
    let s = start(cfg).await;
    let c = client();
    assert_eq!(play(&c, &s.base, "bbb", "10.7.1.1").await.urls[0].edge, "b1");
    assert_eq!(play(&c, &s.base, "bbb", "10.1.1.1").await.urls[0].edge, "a1", "edge prefixes still count");

    // Rewrite as Traffic Control JSON moving 10.7/16 to lab-a; bump the mtime so the change is seen.
    std::fs::write(&file, r#"{"coverageZones": {"lab-a": {"network": ["10.7.0.0/16"], "network6": []}}}"#).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
    wait_until(Duration::from_secs(5), "coverage reload", || async {
        play(&c, &s.base, "bbb", "10.7.1.1").await.urls[0].edge == "a1"
    })
    .await;

    // A broken file keeps the last good table.
    std::fs::write(&file, "garbage without a comma\n").unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(later + Duration::from_secs(5)).unwrap();
    let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["coverage_prefixes"], 3);
    assert_eq!(play(&c, &s.base, "bbb", "10.7.1.1").await.urls[0].edge, "a1");
    s.shut_down().await;

    // A broken file at start is a clear start-up error.
    let mut cfg = config("", vec![edge("a1", &u1, "lab-a", "10.1.0.0/16")]);
    cfg.coverage_file = Some(file);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = steering::run(cfg, listener, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[tokio::test]
async fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let (u1, u2) = (fake_edge().await, fake_edge().await);
    let edges = || vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("b1", &u2, "lab-b", "10.2.0.0/16")];
    let mut cfg = config("trusted_proxies = [\"127.0.0.1/32\"]", edges());
    cfg.trust_forwarded_for = false;
    let s = start(cfg).await;
    let c = client();
    // Loopback is a trusted proxy: the right-most untrusted address is the client.
    assert_eq!(play(&c, &s.base, "bbb", "10.1.0.1, 10.2.0.1").await.urls[0].edge, "b1");
    s.shut_down().await;

    let mut cfg = config("trusted_proxies = [\"192.0.2.0/24\"]", edges());
    cfg.trust_forwarded_for = false;
    let s = start(cfg).await;
    let p = play(&c, &s.base, "bbb", "10.2.0.1").await;
    assert_eq!(p.urls[0].reasons[0], "no-coverage", "loopback is not trusted here");
    s.shut_down().await;
}

#[tokio::test]
async fn default_settings_take_a_dead_edge_out_within_3_s() {
    let u2 = fake_edge().await;
    // a1 is an edge we can kill.
    let app = Router::new().route("/health", get(|| async { "ok" })).route(
        "/titles/bbb/hls/master.m3u8",
        get(|| async { "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001e\"\nv360.m3u8\n" }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let u1 = format!("http://{}", listener.local_addr().unwrap());
    let (kill, killed) = oneshot::channel::<()>();
    let a1 = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = killed.await;
            })
            .await
            .unwrap()
    });
    // Every timing setting at its default.
    let mut cfg: Config = toml::from_str("token_secret = \"s\"\ntrust_forwarded_for = true\n").unwrap();
    cfg.edges = vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("b1", &u2, "lab-b", "10.2.0.0/16")];
    cfg.validate().unwrap();
    assert_eq!((cfg.probe_interval_ms, cfg.probe_timeout_ms, cfg.probe_failures_to_down), (1000, 500, 2));
    let s = start(cfg).await;
    let c = client();
    wait_until(Duration::from_secs(5), "a1 probed up", || async {
        let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
        v["edges"][0]["state"] == "up"
    })
    .await;
    let _ = kill.send(());
    a1.await.unwrap();
    let took = wait_until(Duration::from_secs(3), "a1 out with default settings", || async {
        play(&c, &s.base, "bbb", "10.1.0.1").await.urls[0].edge == "b1"
    })
    .await;
    eprintln!("dead edge out after {took:?}");
    s.shut_down().await;
}

#[tokio::test]
async fn a_flapping_edge_is_held_out_by_the_breaker() {
    let (u1, u2) = (fake_edge().await, fake_edge().await);
    let s = start(config(
        "breaker_backoff_ms = 60000",
        vec![edge("a1", &u1, "lab-a", "10.1.0.0/16"), edge("b1", &u2, "lab-b", "10.2.0.0/16")],
    ))
    .await;
    let c = client();
    let mut hb = Heartbeat::new("a1");
    let mut beat = |ok: bool| {
        hb.ok = ok;
        let hb = hb.clone();
        let (c, base) = (c.clone(), s.base.clone());
        async move { send_hb(&c, &base, Some(HB), &hb).await.json::<Value>().await.unwrap() }
    };
    assert_eq!(beat(true).await["available"], true);
    assert_eq!(beat(false).await["out_reason"], "reports-unhealthy");
    assert_eq!(beat(true).await["available"], true, "a first failure is forgiven at once");
    assert_eq!(beat(false).await["out_reason"], "reports-unhealthy");
    // Failed again right after recovering: held out although it says it is fine.
    assert_eq!(beat(true).await["out_reason"], "breaker-open");
    assert_eq!(play(&c, &s.base, "bbb", "10.1.0.1").await.urls[0].edge, "b1");
    let v: Value = c.get(format!("{}/v1/edges", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["edges"][0]["breaker_backoff_ms"], 60000);
    s.shut_down().await;
}
