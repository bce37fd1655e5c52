//! Popularity reports and per-edge fill plans over real HTTP on loopback.

use std::time::Duration;

use serde_json::{json, Value};
use steering::{Config, EdgeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vod::plan::EdgeFillPlan;

const TOKEN: &str = "hb-token";

struct Steering {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), steering::Error>>,
}

impl Steering {
    async fn start(cfg: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(steering::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        Self { base, stop: Some(stop), task }
    }

    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let res = tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("run returns after shutdown");
        res.unwrap().unwrap();
    }
}

fn edge(name: &str, site: &str, port: u16) -> EdgeConfig {
    EdgeConfig {
        name: name.into(),
        url: format!("http://127.0.0.1:{port}"),
        site: site.into(),
        prefixes: vec![],
        drained: false,
        max_load_bps: None,
    }
}

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::from_toml_str(&format!(
        "token_secret = \"s\"\nheartbeat_token = \"{TOKEN}\"\nprobe_interval_ms = 60000\n\
         [[edges]]\nname = \"x\"\nurl = \"http://127.0.0.1:1\"\nsite = \"s\"\n"
    ))
    .unwrap();
    cfg.edges = vec![edge("a", "s1", 1), edge("b", "s1", 2), edge("c", "s2", 3)];
    cfg.popularity_dir = Some(dir.to_owned());
    cfg
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A day at one edge: titles t0..t9, 4 segments of 1000 bytes each; t0 hottest, segment 1 most watched.
fn report(edge: &str, day: u32) -> Value {
    let mut objects = Vec::new();
    for t in 0..10u64 {
        for n in 1..=4u64 {
            objects.push(json!({"key": format!("titles/t{t}/v1/{n}.m4s"), "requests": 400 / ((t + 1) * n), "bytes": 1000, "clients": 3}));
        }
    }
    json!({"edge": edge, "day": day, "objects": objects})
}

#[tokio::test]
async fn edges_report_popularity_and_get_site_plans_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Steering::start(config(dir.path())).await;
    let c = client();
    let post = |body: Value, token: Option<&str>| {
        let mut req = c.post(format!("{}/v1/popularity", s.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(post(report("a", 100), None).await.unwrap().status(), 401);
    assert_eq!(post(report("a", 100), Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(post(report("nobody", 100), Some(TOKEN)).await.unwrap().status(), 404);
    assert_eq!(post(json!({"edge": "a"}), Some(TOKEN)).await.unwrap().status(), 400);
    let ok = post(report("a", 100), Some(TOKEN)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["site"], "s1");
    assert_eq!(post(report("b", 100), Some(TOKEN)).await.unwrap().status(), 200);

    // No heartbeat has told steering the capacities: the edge must say its own.
    let r = c.get(format!("{}/v1/fill-plan/a", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(c.get(format!("{}/v1/fill-plan/zz?edge_bytes=1", s.base)).send().await.unwrap().status(), 404);
    assert_eq!(c.get(format!("{}/v1/fill-plan/c?edge_bytes=10000", s.base)).send().await.unwrap().status(), 404);
    let r = c.get(format!("{}/v1/fill-plan/a?edge_bytes=11200&forecast=last-day", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let plan: EdgeFillPlan = r.json().await.unwrap();
    assert_eq!((plan.edge.as_str(), plan.site.as_str()), ("a", "s1"));
    assert!(plan.plan.total_bytes <= 11_200 * 9 / 10, "a tenth of the disk stays free");
    assert_eq!(plan.plan.objects.len(), 10, "10 objects of 1000 bytes fill 90% of 11200");
    // Both edges' reports add up: the hottest object is t0's first segment, 800 requests.
    assert_eq!(plan.plan.objects[0].key, "titles/t0/v1/1.m4s");
    assert_eq!(plan.plan.objects[0].expected_requests, 800.0);
    let e: Vec<f64> = plan.plan.objects.iter().map(|o| o.expected_requests).collect();
    assert!(e.windows(2).all(|w| w[0] >= w[1]), "priority order: {e:?}");
    assert_eq!(plan.peers.len(), 1);
    assert_eq!(plan.peers[0].url.as_deref(), Some("http://127.0.0.1:2"));
    assert_eq!(c.get(format!("{}/v1/fill-plan/a?forecast=mean", s.base)).send().await.unwrap().status(), 400);
    s.shut_down().await;

    // A restart keeps the history.
    let s = Steering::start(config(dir.path())).await;
    let v: Value = c.get(format!("{}/v1/popularity/s1", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["days"][0]["day"], 100);
    assert_eq!(v["days"][0]["objects"], 40);
    let r = c.get(format!("{}/v1/fill-plan/b?edge_bytes=5000", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.shut_down().await;
}
