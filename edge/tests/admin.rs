//! The operator API: bearer token, status, purge; `/healthz`; latency histogram.

mod common;

use common::*;

const SEG: &str = "titles/t1/v1/1.m4s";
const SEG2: &str = "titles/t1/v1/2.m4s";
const OTHER: &str = "titles/t2/v1/1.m4s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_purge_need_the_token_and_purge_every_tier() {
    let objs = vec![(SEG, body(1, 5000)), (SEG2, body(2, 3000)), (OTHER, body(3, 2000))];
    let (origin, _dir) = start_origin(&objs).await;
    let disk = tempfile::tempdir().unwrap();
    let cfg = edge::EdgeConfig {
        admin_token: Some("s3cret".into()),
        disk_path: Some(disk.path().to_owned()),
        disk_bytes: Some(8 << 20),
        ..edge_config(&origin.url())
    };
    let edge = start_edge(cfg).await;
    let c = client();
    for (k, bytes) in &objs {
        let r = c.get(format!("{}/{k}", edge.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // A miss streams: its head comes before the fill is stored, its whole body after.
        assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..]);
    }
    let url = |p: &str| format!("{}/admin/{p}", edge.url());
    assert_eq!(c.get(url("status")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(url("status")).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let st: serde_json::Value = c.get(url("status")).bearer_auth("s3cret").send().await.unwrap().json().await.unwrap();
    assert_eq!(st["disk"]["objects"], 3, "{st}");
    assert_eq!(st["ram"]["objects"], 3, "{st}");
    assert_eq!(st["requests"]["miss"], 3, "{st}");
    assert_eq!(st["upstreams"][0]["breaker"], "closed", "{st}");

    let r = c.post(url("purge?key=titles/t1/v1/1.m4s")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(url("purge?title=t2")).bearer_auth("s3cret").send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["purged"], 2, "RAM and disk copies: {v}");
    assert_eq!(c.post(url("purge?key=../x")).bearer_auth("s3cret").send().await.unwrap().status(), 400);
    assert_eq!(c.get(url("purge?title=t1")).bearer_auth("s3cret").send().await.unwrap().status(), 405);

    // Purged objects are fetched again; the one left is still a hit.
    let fetches = metric(edge.addr, "edge_upstream_fetches_total").await;
    for (k, cache) in [(SEG, "MISS"), (OTHER, "MISS"), (SEG2, "HIT")] {
        let r = c.get(format!("{}/{k}", edge.url())).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], cache, "{k}");
    }
    assert_eq!(metric(edge.addr, "edge_upstream_fetches_total").await, fetches + 2.0);
    assert_eq!(c.get(format!("{}/healthz", edge.url())).send().await.unwrap().status(), 200);
    assert_eq!(metric(edge.addr, "edge_request_duration_seconds_count").await, 6.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_there_is_no_admin_api() {
    let (origin, _dir) = start_origin(&[(SEG, body(1, 10))]).await;
    let edge = start_edge(edge_config(&origin.url())).await;
    let r = client().get(format!("{}/admin/status", edge.url())).bearer_auth("").send().await.unwrap();
    assert_eq!(r.status(), 404);
    edge.stop().await;
    origin.stop().await;
}
