//! The whole path through S3: the encoder publishes a title into a bucket
//! (moto, started by the test) and `origin serve --store s3://…` — the real
//! binary, configured from the AWS environment — serves it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::moto::Moto;
use common::request;
use encoder::{encode_and_publish, EncodeSettings};
use origin::{BlockingStore, ObjectStore, S3Store};
use vod::{ObjectKey, TitleId};

#[test]
fn encoder_publishes_to_s3_and_origin_serves_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(moto) = rt.block_on(Moto::start()) else { return };
    let client = rt.block_on(moto.bucket("vod"));
    let s3: Arc<dyn ObjectStore> = Arc::new(S3Store::new(client, "vod", "library/"));

    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    stack::generate_clip(&clip, 2, 320, 180).unwrap();
    let title = TitleId::new("s3title").unwrap();
    let settings = EncodeSettings { segment_ms: 1000, preset: "ultrafast".into(), progress: false };
    let publisher = BlockingStore::with_handle(s3.clone(), rt.handle().clone());
    let cat = encode_and_publish(&clip, &title, &publisher, &settings).unwrap();
    // Publishing twice is refused: the catalog in S3 says the title exists.
    assert!(encode_and_publish(&clip, &title, &publisher, &settings).is_err());

    let mut origin = Command::new(env!("CARGO_BIN_EXE_origin"))
        .args(["serve", "--store", "s3://vod/library", "--listen", "127.0.0.1:0"])
        .envs(moto.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(origin.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else { panic!("origin exited before listening:\n{}", seen.join("\n")) };
        if let Some(a) = line.strip_prefix("origin listening on ") {
            break a.trim().parse().unwrap();
        }
        seen.push(line);
    };
    std::thread::spawn(move || lines.for_each(drop));

    rt.block_on(async {
        let catalog = request(addr, "GET", "/titles/s3title/catalog.json", &[]).await;
        assert_eq!(catalog.status, 200);
        let served: vod::Catalog = serde_json::from_slice(&catalog.body).unwrap();
        assert_eq!(served, cat);
        let master = request(addr, "GET", "/titles/s3title/hls/master.m3u8", &[]).await;
        assert_eq!((master.status, master.header("content-type")), (200, Some("application/vnd.apple.mpegurl")));
        for (key, len) in cat.media_keys() {
            let (stored, _) = s3.get(&key).await.unwrap();
            let r = request(addr, "GET", &format!("/{key}"), &[("Range", "bytes=1-")]).await;
            assert_eq!(r.status, 206, "{key}");
            assert_eq!(r.body, &stored[1..], "{key}");
            assert_eq!(stored.len() as u64, len, "{key}");
        }
        let missing = ObjectKey::parse("titles/s3title/hls/nope.m3u8").unwrap();
        assert_eq!(request(addr, "GET", &format!("/{missing}"), &[]).await.status, 404);
    });
    origin.kill().unwrap();
    origin.wait().unwrap();
}
