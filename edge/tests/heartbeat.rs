//! Heartbeats against the real steering service: the edge registers itself,
//! reports the titles it holds, drains through the admin API, says drained
//! when it stops; master playlists on signed paths carry content steering.

mod common;

use common::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SEG: &str = "titles/t1/v1/1.m4s";
const MASTER: &str = "titles/t1/hls/master.m3u8";
const MASTER_TEXT: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n../v1/media.m3u8\n";

async fn start_steering() -> Running<steering::Error> {
    let cfg = steering::Config::from_toml_str(&format!(
        "token_secret = \"{SECRET}\"\nheartbeat_token = \"hb\"\nprobe_interval_ms = 100\n"
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running::new(addr, tx, task)
}

/// Steering's view of the edge named `edge`, if it knows it.
async fn seen(steering: &str, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = client().get(format!("{steering}/v1/edges")).send().await.ok()?.json().await.ok()?;
    v["edges"].as_array()?.iter().find(|e| e["name"] == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_registers_reports_titles_drains_and_says_goodbye() {
    let (origin, _dir) = start_origin(&[(SEG, body(1, 50_000)), (MASTER, MASTER_TEXT.as_bytes().to_vec())]).await;
    let steering = start_steering().await;
    let s_url = steering.url();
    let cfg = edge::EdgeConfig {
        name: "edge-x".into(),
        steering: Some(s_url.clone()),
        heartbeat_token: Some("hb".into()),
        heartbeat_interval_ms: 100,
        site: Some("site-a".into()),
        admin_token: Some("adm".into()),
        max_load_bps: Some(1_000_000_000),
        ..edge_config(&origin.url())
    };
    let edge = start_edge(cfg).await;
    assert!(
        eventually(|| async { seen(&s_url, "edge-x").await.is_some_and(|e| e["available"] == true) }).await,
        "the edge did not register by heartbeat"
    );
    let e = seen(&s_url, "edge-x").await.unwrap();
    assert_eq!((e["site"].as_str(), e["url"].as_str()), (Some("site-a"), Some(edge.url().as_str())), "{e}");
    assert_eq!(e["heartbeat"]["max_load_bps"], 1_000_000_000u64, "{e}");
    assert_eq!(e["heartbeat"]["titles"], 0, "{e}");

    // After serving a title, the edge reports holding it and the load it served.
    let c = client();
    let r = c.get(format!("{}/t/{}/{SEG}", edge.url(), token("t1"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(|| async { seen(&s_url, "edge-x").await.is_some_and(|e| e["heartbeat"]["titles"] == 1) }).await,
        "held titles not reported"
    );
    let play: serde_json::Value = c.get(format!("{s_url}/v1/play/t1")).send().await.unwrap().json().await.unwrap();
    let reasons = play["urls"][0]["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r == "holds-title"), "{play}");

    // A master playlist on a signed path points its content steering at steering; unsigned fill
    // traffic gets the object as stored.
    let signed = c.get(format!("{}/t/{}/{MASTER}", edge.url(), token("t1"))).send().await.unwrap();
    assert_eq!(signed.status(), 200);
    let etag = signed.headers()["etag"].to_str().unwrap().to_owned();
    let text = signed.text().await.unwrap();
    let tag = format!("#EXT-X-CONTENT-STEERING:SERVER-URI=\"{s_url}/v1/steering/t1?format=hls\",PATHWAY-ID=\"base\"");
    assert!(text.contains(&tag), "{text}");
    assert!(text.contains("BANDWIDTH=800000,PATHWAY-ID=\"base\""), "{text}");
    let plain = c.get(format!("{}/{MASTER}", edge.url())).send().await.unwrap();
    assert_ne!(plain.headers()["etag"].to_str().unwrap(), etag, "a different body needs another ETag");
    assert_eq!(plain.text().await.unwrap(), MASTER_TEXT);

    // Drain through the admin API: steering stops offering it; undrain brings it back.
    let admin = |p: &str| c.post(format!("{}/admin/{p}", edge.url())).bearer_auth("adm").send();
    assert_eq!(c.post(format!("{}/admin/drain", edge.url())).send().await.unwrap().status(), 401);
    assert_eq!(admin("drain").await.unwrap().status(), 200);
    assert!(
        eventually(|| async { seen(&s_url, "edge-x").await.is_some_and(|e| e["out_reason"] == "drained") }).await,
        "drain not reported"
    );
    assert_eq!(c.get(format!("{s_url}/v1/play/t1")).send().await.unwrap().status(), 503);
    assert_eq!(admin("undrain").await.unwrap().status(), 200);
    assert!(
        eventually(|| async { seen(&s_url, "edge-x").await.is_some_and(|e| e["available"] == true) }).await,
        "undrain not reported"
    );

    // A graceful stop sends a last heartbeat saying drained: no wait for the timeout.
    edge.stop().await;
    let e = seen(&s_url, "edge-x").await.unwrap();
    assert_eq!(e["out_reason"], "drained", "{e}");
    steering.stop().await;
    origin.stop().await;
}

/// A steering stand-in that records every heartbeat and answers with the
/// digest of the last prefix set it was given, until it is told to forget.
#[derive(Default)]
struct Recorder {
    beats: std::sync::Mutex<Vec<vod::steering::Heartbeat>>,
    holds: std::sync::Mutex<Option<String>>,
}

async fn record(
    axum::extract::State(r): axum::extract::State<std::sync::Arc<Recorder>>,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    let hb: vod::steering::Heartbeat = serde_json::from_slice(&body).unwrap();
    let mut holds = r.holds.lock().unwrap();
    let empty = vod::steering::prefixes_digest(&[]);
    if !hb.prefixes.is_empty() || hb.prefixes_sha256.as_deref() == Some(empty.as_str()) {
        *holds = Some(vod::steering::prefixes_digest(&hb.prefixes));
    }
    let answer = serde_json::json!({ "edge": hb.edge, "prefixes_sha256": *holds });
    r.beats.lock().unwrap().push(hb);
    axum::Json(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_travel_only_when_steering_does_not_hold_them() {
    let recorder = std::sync::Arc::new(Recorder::default());
    let app = axum::Router::new().route("/v1/heartbeat", axum::routing::post(record)).with_state(recorder.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let steering = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (origin, _dir) = start_origin(&[(SEG, body(1, 1000))]).await;
    let prefixes = vec!["10.1.0.0/16".to_owned(), "2001:db8::/32".to_owned()];
    let cfg = edge::EdgeConfig {
        name: "edge-p".into(),
        steering: Some(steering),
        heartbeat_token: Some("hb".into()),
        heartbeat_interval_ms: 50,
        site: Some("site-a".into()),
        static_prefixes: prefixes.clone(),
        ..edge_config(&origin.url())
    };
    let edge = start_edge(cfg).await;
    let count = || recorder.beats.lock().unwrap().len();
    assert!(eventually(|| async { count() >= 4 }).await, "no heartbeats");
    let digest = vod::steering::prefixes_digest(&prefixes);
    {
        let beats = recorder.beats.lock().unwrap();
        assert_eq!(beats[0].prefixes, prefixes, "the first heartbeat carries the set");
        for (n, hb) in beats.iter().enumerate() {
            assert_eq!(hb.prefixes_sha256.as_deref(), Some(digest.as_str()), "beat {n}");
            assert_eq!(hb.prefixes.is_empty(), n > 0, "beat {n}: only the first carries the list");
        }
    }

    // Steering forgets (a restart, another replica): the set goes again at once, and only once.
    // (Locks taken in the stand-in's order: what it holds, then the record.)
    let before = {
        let mut holds = recorder.holds.lock().unwrap();
        *holds = None;
        recorder.beats.lock().unwrap().len()
    };
    assert!(eventually(|| async { count() >= before + 4 }).await, "heartbeats stopped");
    {
        let holds = recorder.holds.lock().unwrap().clone();
        let beats = recorder.beats.lock().unwrap();
        let full: Vec<usize> = (before..beats.len()).filter(|&n| !beats[n].prefixes.is_empty()).collect();
        assert_eq!(full.len(), 1, "{full:?} of {before}..{}", beats.len());
        assert_eq!(beats[full[0]].prefixes, prefixes);
        // It follows the slim heartbeat the stand-in could not place, without waiting a tick.
        assert!(beats[full[0] - 1].prefixes.is_empty());
        assert_eq!(holds, Some(digest));
    }
    edge.stop().await;
    server.abort();
}
