//! Client prefixes edges report in heartbeats (learned over BGP) fold into
//! steering's live coverage table: a client inside one is sent to that edge's
//! site; a new set replaces the old; an edge that goes silent loses them; the
//! configured prefixes and the coverage file keep working alongside.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use serde_json::Value;
use steering::{Config, EdgeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vod::steering::{Heartbeat, PlayResponse};

const HB: &str = "hb-token";

async fn fake_edge() -> String {
    let app = Router::new().route("/health", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn edge(name: &str, url: &str, site: &str, prefixes: &[&str]) -> EdgeConfig {
    EdgeConfig {
        name: name.into(),
        url: url.into(),
        site: site.into(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        drained: false,
        max_load_bps: None,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn heartbeat(c: &reqwest::Client, base: &str, name: &str, prefixes: &[&str]) -> reqwest::StatusCode {
    let mut hb = Heartbeat::new(name);
    hb.prefixes = prefixes.iter().map(|p| (*p).to_owned()).collect();
    c.post(format!("{base}/v1/heartbeat")).bearer_auth(HB).json(&hb).send().await.unwrap().status()
}

async fn first(c: &reqwest::Client, base: &str, client_ip: &str) -> (String, Vec<String>) {
    let resp = c.get(format!("{base}/v1/play/bbb")).header("x-forwarded-for", client_ip).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let p: PlayResponse = resp.json().await.unwrap();
    (p.urls[0].edge.clone(), p.urls[0].reasons.clone())
}

/// Polls until `client_ip`'s first edge is `edge` with `site-match` (or, for `None`, without it).
async fn wait_first(c: &reqwest::Client, base: &str, client_ip: &str, edge: Option<&str>) -> Duration {
    let start = Instant::now();
    loop {
        let (first, reasons) = first(c, base, client_ip).await;
        let site_match = reasons.iter().any(|r| r == "site-match");
        let ok = match edge {
            Some(e) => first == e && site_match,
            None => !site_match,
        };
        if ok {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{client_ip}: first is {first} {reasons:?}, want {edge:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reported_prefixes_steer_clients_live() {
    let (ua, ub) = (fake_edge().await, fake_edge().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coverage.csv");
    std::fs::write(&file, "10.50.0.0/16,isp-b\n").unwrap();
    let mut cfg = Config::from_toml_str(&format!(
        "token_secret = \"s\"\ntrust_forwarded_for = true\nprobe_interval_ms = 100\nheartbeat_token = \"{HB}\"\n\
         heartbeat_timeout_ms = 60000\nreported_prefix_hold_ms = 1500\ncoverage_reload_ms = 100\n\
         coverage_file = \"{}\"\n",
        file.display()
    ))
    .unwrap();
    cfg.edges = vec![edge("a1", &ua, "isp-a", &["10.1.0.0/16"]), edge("b1", &ub, "isp-b", &["10.2.0.0/16"])];
    cfg.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    let c = client();

    // Nothing reported yet: 100.64.1.1 is covered by no one; configured prefixes and the file work.
    wait_first(&c, &base, "100.64.1.1", None).await;
    wait_first(&c, &base, "10.1.0.9", Some("a1")).await;
    wait_first(&c, &base, "10.50.0.9", Some("b1")).await;

    // a1 reports what its router announced: its clients go to a1.
    assert_eq!(heartbeat(&c, &base, "a1", &["100.64.0.0/16", "2001:db8:a::/48"]).await, 200);
    let took = wait_first(&c, &base, "100.64.1.1", Some("a1")).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    wait_first(&c, &base, "2001:db8:a::7", Some("a1")).await;
    let edges: Value = c.get(format!("{base}/v1/edges")).send().await.unwrap().json().await.unwrap();
    let a1 = edges["edges"].as_array().unwrap().iter().find(|e| e["name"] == "a1").unwrap().clone();
    assert_eq!(a1["reported_prefixes"], serde_json::json!(["100.64.0.0/16", "2001:db8:a::/48"]));

    // A longer prefix reported by b1 wins inside a1's; the configured and file prefixes are untouched.
    assert_eq!(heartbeat(&c, &base, "b1", &["100.64.9.0/24"]).await, 200);
    wait_first(&c, &base, "100.64.9.1", Some("b1")).await;
    wait_first(&c, &base, "100.64.1.1", Some("a1")).await;
    wait_first(&c, &base, "10.50.0.9", Some("b1")).await;

    // A new set replaces the old one (the router withdrew 100.64.0.0/16).
    assert_eq!(heartbeat(&c, &base, "a1", &["2001:db8:a::/48"]).await, 200);
    wait_first(&c, &base, "100.64.1.1", None).await;
    wait_first(&c, &base, "2001:db8:a::7", Some("a1")).await;

    // A bad prefix is refused with a clear error and changes nothing.
    let status = heartbeat(&c, &base, "a1", &["2001:db8:a::/48", "100.64.0.0/33"]).await;
    assert_eq!(status, 400);
    wait_first(&c, &base, "2001:db8:a::7", Some("a1")).await;

    // b1 goes silent: after reported_prefix_hold_ms its reported prefixes lapse (its configured ones stay).
    let silent = Instant::now();
    wait_first(&c, &base, "100.64.9.1", None).await;
    assert!(silent.elapsed() >= Duration::from_millis(1000), "lapsed after {:?}", silent.elapsed());
    wait_first(&c, &base, "10.2.0.9", Some("b1")).await;

    // An empty report withdraws everything a1 reported.
    assert_eq!(heartbeat(&c, &base, "a1", &[]).await, 200);
    wait_first(&c, &base, "2001:db8:a::7", None).await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}
