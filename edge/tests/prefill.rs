//! Prefill against real servers on loopback: the off-peak window, the rate
//! cap, filling from a peer edge instead of the origin, and a SIGKILL in the
//! middle of a fill.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edge::disk::{DiskConfig, DiskTier};
use edge::fill::{Filler, Upstream, UpstreamSet};
use edge::memory::MemoryTier;
use edge::metrics::EdgeMetrics;
use edge::prefill::{PrefillProgress, PrefillSettings, PrefillState, PrefillWindow};
use vod::plan::{EdgeFillPlan, FillPlan, PeerEdge, PlannedObject};

fn segments(title: &str, n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
    (1..=n).map(|i| (format!("titles/{title}/v1/{i}.m4s"), body(i as u8, len))).collect()
}

fn as_refs(objs: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    objs.iter().map(|(k, b)| (k.as_str(), b.clone())).collect()
}

fn plan_of(objs: &[(String, Vec<u8>)]) -> EdgeFillPlan {
    let objects: Vec<PlannedObject> = objs
        .iter()
        .map(|(k, b)| PlannedObject { key: k.clone(), bytes: b.len() as u64, expected_requests: 1.0 })
        .collect();
    let total_bytes = objects.iter().map(|o| o.bytes).sum();
    EdgeFillPlan::standalone(FillPlan { edge_bytes: 64 << 20, total_bytes, objects })
}

fn filler(upstream: &str, dir: &Path) -> Filler {
    let up = UpstreamSet::new(vec![Upstream::new(upstream, DEADLINE).unwrap()], 3, Duration::from_secs(1));
    let disk = Arc::new(DiskTier::open(&DiskConfig::new(dir, 64 << 20)).unwrap());
    Filler::new(up, Arc::new(MemoryTier::new(1 << 20)), Some(disk), Arc::new(EdgeMetrics::default()), DEADLINE)
}

#[tokio::test]
async fn nothing_is_fetched_outside_the_window_and_everything_inside_it() {
    let objs = segments("w", 5, 10_000);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let proxy = GatedProxy::start(&origin.url()).await;
    proxy.open();
    let dir = tempfile::tempdir().unwrap();
    let filler = filler(&proxy.url(), dir.path());
    // 01:00 local: outside 02:00-10:00 until the test moves the clock.
    let now = Arc::new(AtomicU32::new(3600));
    let clock_now = Arc::clone(&now);
    // Counts the window's looks at the clock, so the test can wait for several of them.
    let looks = Arc::new(AtomicU32::new(0));
    let clock_looks = Arc::clone(&looks);
    let settings = PrefillSettings {
        window: Some(PrefillWindow::parse("02:00-10:00").unwrap()),
        clock: Arc::new(move || {
            clock_looks.fetch_add(1, Ordering::SeqCst);
            clock_now.load(Ordering::SeqCst)
        }),
        window_poll: Duration::from_millis(20),
        ..Default::default()
    };
    let progress = Arc::new(PrefillProgress::default());
    let task = tokio::spawn(edge::prefill::run(filler.clone(), plan_of(&objs), settings, Arc::clone(&progress)));
    assert!(eventually(|| async { progress.state() == PrefillState::WaitingWindow }).await);
    // Ten more looks at the clock outside the window pass with no fill traffic.
    let seen = looks.load(Ordering::SeqCst);
    assert!(eventually(|| async { looks.load(Ordering::SeqCst) >= seen + 10 }).await);
    assert_eq!(proxy.hits(), 0, "fill traffic outside the window");
    assert_eq!(progress.held_objects.load(Ordering::SeqCst), 0);
    now.store(2 * 3600 + 60, Ordering::SeqCst);
    let report = tokio::time::timeout(DEADLINE, task).await.expect("prefill did not finish").unwrap();
    assert_eq!((report.fetched, report.failed), (5, 0));
    assert_eq!(proxy.hits(), 5);
    assert_eq!(progress.state(), PrefillState::Done);
    origin.stop().await;
}

#[tokio::test]
async fn a_capped_fill_of_n_bytes_takes_at_least_n_times_8_over_r() {
    // 4 x 25 kB = 800 kbit at 400 kbit/s: at least 2 s.
    let objs = segments("r", 4, 25_000);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let dir = tempfile::tempdir().unwrap();
    let filler = filler(&origin.url(), dir.path());
    let settings = PrefillSettings { rate_bps: Some(400_000), ..Default::default() };
    let started = Instant::now();
    let report = tokio::time::timeout(
        DEADLINE,
        edge::prefill::run(filler, plan_of(&objs), settings, Arc::new(PrefillProgress::default())),
    )
    .await
    .expect("prefill did not finish");
    let took = started.elapsed();
    assert_eq!(report.bytes, 100_000);
    assert!(took >= Duration::from_secs(2), "100 kB at 400 kbit/s took only {took:?}");
}

#[tokio::test]
async fn an_edge_fills_from_the_peer_that_holds_an_object_and_the_origin_sees_no_request_for_it() {
    let objs = segments("p", 4, 20_000);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    // Each edge reaches the origin through its own counting proxy.
    let (to_origin_a, to_origin_b) = (GatedProxy::start(&origin.url()).await, GatedProxy::start(&origin.url()).await);
    to_origin_a.open();
    to_origin_b.open();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let disk_cfg = |cfg: edge::EdgeConfig, dir: &Path| edge::EdgeConfig {
        disk_path: Some(dir.to_owned()),
        disk_bytes: Some(16 << 20),
        ..cfg
    };
    let a = start_edge(disk_cfg(edge_config(&to_origin_a.url()), dir_a.path())).await;
    // Edge a holds the first three objects (filled by ordinary misses).
    for (k, b) in &objs[..3] {
        let got = client().get(format!("{}/{k}", a.url())).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], &b[..]);
    }
    assert_eq!(to_origin_a.hits(), 3);
    // Edge b's plan names a as a holder of all four objects; a lacks the last.
    let mut plan = plan_of(&objs);
    plan.edge = "b".into();
    plan.peers = vec![PeerEdge { name: "a".into(), url: Some(a.url()) }];
    for (k, _) in &objs {
        plan.holders.insert(k.clone(), vec!["a".into()]);
    }
    let plan_path = dir_b.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let b = start_edge(edge::EdgeConfig {
        prefill_plan: Some(plan_path),
        name: "b".into(),
        ..disk_cfg(edge_config(&to_origin_b.url()), dir_b.path())
    })
    .await;
    assert!(
        eventually(|| async { metric(b.addr, "edge_prefill_held_objects").await == 4.0 }).await,
        "b did not hold its plan"
    );
    let text = client().get(format!("{}/metrics", b.url())).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("edge_prefill_fetched_bytes_total{edge=\"b\",source=\"peer\"} 60000"), "{text}");
    assert!(text.contains("edge_prefill_state{edge=\"b\",state=\"done\"} 1"), "{text}");
    // Only the object a lacked went to the origin, from b; a was asked but did not fill it.
    assert_eq!(to_origin_b.hits(), 1, "b fetched from the origin what a holds");
    assert_eq!(to_origin_a.hits(), 3, "a filled an object for a peer's only-if-cached request");
    // b now serves the planned objects from disk, byte for byte.
    for (k, body) in &objs {
        let resp = client().get(format!("{}/{k}", b.url())).send().await.unwrap();
        assert_eq!(resp.headers()["x-cache"], "HIT-DISK", "{k}");
        assert_eq!(&resp.bytes().await.unwrap()[..], &body[..]);
    }
    b.stop().await;
    a.stop().await;
    origin.stop().await;
}

/// The real `edge` binary in front of `upstream`, prefilling `plan` onto a disk tier in `dir`.
fn start_edge_process(upstream: &str, dir: &Path, plan: &Path, rate_bps: Option<u64>) -> EdgeProcess {
    let (dir, plan) = (dir.display().to_string(), plan.display().to_string());
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--ram-bytes",
        "1000",
        "--disk-path",
        &dir,
        "--disk-bytes",
        "16000000",
        "--name",
        "e",
        "--prefill",
        &plan,
    ];
    let rate = rate_bps.map(|r| r.to_string());
    if let Some(r) = &rate {
        args.extend(["--prefill-rate-bps", r.as_str()]);
    }
    EdgeProcess::spawn(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_prefill_then_restart_resumes_and_serves_only_whole_objects() {
    // 20 x 50 kB at 2 Mbit/s: 0.2 s an object, 4 s for the plan; the kill lands a few objects in.
    let objs = segments("k", 20, 50_000);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let proxy = GatedProxy::start(&origin.url()).await;
    proxy.open();
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan_of(&objs)).unwrap()).unwrap();
    let disk_dir = dir.path().join("disk");
    let mut first = start_edge_process(&proxy.url(), &disk_dir, &plan_path, Some(2_000_000));
    assert!(
        eventually(|| async { metric(first.addr, "edge_prefill_held_objects").await >= 3.0 }).await,
        "prefill did not start"
    );
    first.kill();
    let fetched_before = proxy.hits();
    assert!(fetched_before < 20, "the kill came after the whole plan: {fetched_before}");
    let second = start_edge_process(&proxy.url(), &disk_dir, &plan_path, None);
    assert!(
        eventually(|| async { metric(second.addr, "edge_prefill_held_objects").await == 20.0 }).await,
        "the restarted edge did not complete the plan"
    );
    // Resumed: what the first run stored is not fetched again (the object in flight at the kill may be).
    let refetched = proxy.hits() - fetched_before;
    assert!(refetched <= 20 - (fetched_before - 1), "{fetched_before} fetched, then {refetched} more");
    for (k, body) in &objs {
        let resp = client().get(format!("http://{}/{k}", second.addr)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{k}");
        assert_eq!(resp.headers()["x-cache"], "HIT-DISK", "{k}");
        assert_eq!(&resp.bytes().await.unwrap()[..], &body[..], "{k} differs from the origin's");
    }
    assert_eq!(proxy.hits() - fetched_before, refetched, "serving needed no upstream fetch");
    drop(second);
    origin.stop().await;
}

#[tokio::test]
async fn an_edge_reports_popularity_to_steering_and_prefills_the_plan_steering_computes() {
    let objs = segments("pop", 6, 10_000);
    let (origin, _store) = start_origin(&as_refs(&objs)).await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = steering::Config::from_toml_str(
        "token_secret = \"s\"\nheartbeat_token = \"hb\"\nprobe_interval_ms = 60000\n\
         [[edges]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nsite = \"s1\"\n",
    )
    .unwrap();
    cfg.popularity_dir = Some(state.path().to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let steering_url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let steering_task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    // Yesterday at edge a: segment n asked 10 - n times; objects 5 and 6 never.
    let log = state.path().join("a.csv");
    let mut text = String::from("ts_ms,client_ip,key,bytes\n");
    for (n, (k, b)) in objs.iter().enumerate().take(4) {
        for i in 0..(10 - n) {
            text.push_str(&format!("{},10.0.0.{i},{k},{}\n", 1_700_000_000_000u64 + i as u64, b.len()));
        }
    }
    std::fs::write(&log, text).unwrap();
    let args = edge::prefill_report::ReportArgs {
        log,
        steering: steering_url.clone(),
        edge: "a".into(),
        site: None,
        token: Some("hb".into()),
    };
    assert_eq!(edge::prefill_report::report_once(&args).await.unwrap(), 1);
    let wrong = edge::prefill_report::ReportArgs { token: Some("nope".into()), ..args.clone() };
    assert!(edge::prefill_report::report_once(&wrong).await.unwrap_err().to_string().contains("401"));
    // Room for three of the four demanded objects (90% of 34000 bytes): the three most asked for.
    let dir = tempfile::tempdir().unwrap();
    let plan_url = format!("{steering_url}/v1/fill-plan/a?edge_bytes=34000");
    let a = start_edge(edge::EdgeConfig {
        prefill_plan: Some(plan_url.into()),
        name: "a".into(),
        disk_path: Some(dir.path().to_owned()),
        disk_bytes: Some(16 << 20),
        ..edge_config(&origin.url())
    })
    .await;
    assert!(eventually(|| async { metric(a.addr, "edge_prefill_held_objects").await == 3.0 }).await, "plan not held");
    let text = client().get(format!("{}/metrics", a.url())).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("edge_prefill_state{edge=\"a\",state=\"done\"} 1"), "{text}");
    for (k, _) in &objs[..3] {
        let resp = client().get(format!("{}/{k}", a.url())).send().await.unwrap();
        assert_eq!(resp.headers()["x-cache"], "HIT-DISK", "{k} was planned");
    }
    let resp = client().get(format!("{}/{}", a.url(), objs[3].0)).send().await.unwrap();
    assert_eq!(resp.headers()["x-cache"], "MISS", "the least asked-for object did not fit the plan");
    a.stop().await;
    let _ = stop.send(());
    steering_task.await.unwrap().unwrap();
    origin.stop().await;
}
