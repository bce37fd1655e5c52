//! Crash safety: a publisher process is SIGKILLed in the middle of writing an
//! object; the origin then serves the previous version (byte for byte) or
//! 404, never a truncated object. The publisher is this test binary run again
//! with `CRASH_PUBLISHER` set: it writes part of a big object, says so on
//! stdout, and waits to be killed. On S3 the killed upload stays behind as
//! an incomplete multipart upload until `origin s3-gc` aborts it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::moto::Moto;
use common::{request, TestOrigin};
use origin::store::ByteStream;
use origin::{LocalStore, ObjectStore, S3Store, ServerLimits, StoreLocation};
use vod::ObjectKey;

const REPUBLISHED: &str = "titles/t/v1/1.m4s";
const NEW: &str = "titles/t/v1/2.m4s";

fn old_version() -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i % 241) as u8).collect()
}

/// 6 MiB of the new version, then a stream that never ends: the publisher
/// is stuck mid-upload until it is killed. When the store asks for more
/// than the 6 MiB (so it has written them, or sent S3 a whole 5 MiB part)
/// it prints `STALLED`.
fn endless_upload() -> ByteStream {
    let head = futures::stream::iter((0..6).map(|_| Ok(Bytes::from(vec![0xEEu8; 1 << 20]))));
    let stall = futures::stream::once(async {
        println!("STALLED");
        futures::future::pending::<Result<Bytes, std::io::Error>>().await
    });
    Box::pin(futures::StreamExt::chain(head, stall))
}

/// The publisher side; a no-op unless started by `kill_publisher`.
#[tokio::test]
async fn crash_publisher() {
    let Ok(target) = std::env::var("CRASH_PUBLISHER") else { return };
    let store: Arc<dyn ObjectStore> = match target.strip_prefix("s3:") {
        Some(endpoint) => {
            let moto = common::moto::client_for(endpoint);
            Arc::new(S3Store::new(moto, "crash", "").with_multipart(5 << 20, 5 << 20))
        }
        None => Arc::new(LocalStore::new(target)),
    };
    let mut uploads = Vec::new();
    for key in [REPUBLISHED, NEW] {
        let store = store.clone();
        let key = ObjectKey::parse(key).unwrap();
        uploads.push(tokio::spawn(async move { store.put_stream(&key, endless_upload()).await }));
    }
    for u in uploads {
        let _ = u.await;
    }
    unreachable!("endless uploads ended");
}

/// The cleanup a publisher runs at start, in a process of its own because
/// it reads the AWS environment; a no-op unless started by
/// `killed_s3_publisher_leaves_old_version_or_nothing`.
#[tokio::test]
async fn stale_upload_collector() {
    let Ok(store) = std::env::var("COLLECT_STALE") else { return };
    let location = StoreLocation::parse(&store).unwrap();
    let report = origin::store::s3::collect_stale_uploads(&location, origin::store::s3::PUBLISHER_GC_AGE)
        .await
        .expect("the store is reachable");
    println!("COLLECTED {} KEPT {}", report.aborted.len(), report.kept.len());
}

fn spawn_publisher(target: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_publisher", "--nocapture", "--test-threads=1"])
        .env("CRASH_PUBLISHER", target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until both uploads report they are stalled (every byte so far
/// handed to the store), then kills the publisher by PID.
fn kill_mid_upload(mut child: Child) {
    let out = child.stdout.take().unwrap();
    let stalled = BufReader::new(out).lines().map_while(Result::ok).filter(|l| l.contains("STALLED")).take(2).count();
    assert_eq!(stalled, 2, "publisher exited before stalling both uploads");
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn check_served(store: Arc<dyn ObjectStore>) {
    let o = TestOrigin::start(store, ServerLimits::default()).await;
    let r = request(o.addr, "GET", &format!("/{REPUBLISHED}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), old_version().len(), "a different length means a partial new version");
    assert!(r.body == old_version(), "the previous version must be served byte for byte");
    assert_eq!(request(o.addr, "GET", &format!("/{NEW}"), &[]).await.status, 404);
    o.stop().await;
}

#[tokio::test]
async fn killed_local_publisher_leaves_old_version_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LocalStore::new(&root);
    store.put_blocking(&ObjectKey::parse(REPUBLISHED).unwrap(), &old_version()).unwrap();
    let child = spawn_publisher(root.to_str().unwrap());
    tokio::task::spawn_blocking(move || kill_mid_upload(child)).await.unwrap();
    // The killed writer left a partial temporary file, which is never an object.
    let partial = std::fs::read_dir(root.join("titles/t/v1"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with('.') && e.metadata().is_ok_and(|m| m.len() == 6 << 20));
    assert!(partial, "the publisher was killed before writing anything");
    assert_eq!(store.list("titles/").await.unwrap(), [REPUBLISHED]);
    check_served(Arc::new(store)).await;
}

#[tokio::test]
async fn killed_s3_publisher_leaves_old_version_or_nothing() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket("crash").await;
    let store = S3Store::new(client.clone(), "crash", "");
    store.put(&ObjectKey::parse(REPUBLISHED).unwrap(), Bytes::from(old_version())).await.unwrap();
    let child = spawn_publisher(&format!("s3:{}", moto.endpoint));
    tokio::task::spawn_blocking(move || kill_mid_upload(child)).await.unwrap();
    // Two multipart uploads were under way when the publisher died.
    let pending = || async { client.list_multipart_uploads().bucket("crash").send().await.unwrap().uploads().len() };
    assert_eq!(pending().await, 2);
    assert_eq!(store.list("titles/").await.unwrap(), [REPUBLISHED]);
    check_served(Arc::new(store.clone())).await;

    // The age bound, with the clock injected: moto reports every upload as
    // started at one fixed time in 2010, so "now" is set relative to it.
    let listed = store.pending_uploads().await.unwrap();
    let mut keys: Vec<&str> = listed.iter().map(|u| u.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, [REPUBLISHED, NEW]);
    let started = listed[0].initiated.expect("S3 reports when an upload started");
    let hour = Duration::from_secs(3600);
    let young = store.abort_stale_uploads(hour, started + hour / 2, false).await.unwrap();
    assert_eq!((young.aborted.len(), young.kept.len()), (0, 2), "uploads younger than the bound are left alone");
    assert_eq!(pending().await, 2);

    // `origin s3-gc`: a dry run lists without aborting, then a run aborts.
    let out = s3_gc(&moto, &["--store", "s3://crash/", "--older-than", "1h", "--dry-run"]);
    assert!(out.contains("would abort 2, kept 0"), "{out}");
    assert!(out.contains(&format!("would abort s3://crash/{NEW} upload")), "{out}");
    assert_eq!(pending().await, 2);
    let out = s3_gc(&moto, &["--store", "s3://crash", "--older-than", "1h"]);
    assert!(out.contains(&format!("aborted s3://crash/{REPUBLISHED} upload")), "{out}");
    assert!(out.contains("aborted 2, kept 0"), "{out}");
    assert_eq!(pending().await, 0, "the killed publisher's uploads are gone");
    check_served(Arc::new(store.clone())).await;

    // The same cleanup runs when a publisher (an encoder worker) starts.
    let child = spawn_publisher(&format!("s3:{}", moto.endpoint));
    tokio::task::spawn_blocking(move || kill_mid_upload(child)).await.unwrap();
    assert_eq!(pending().await, 2);
    let collector = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stale_upload_collector", "--nocapture", "--test-threads=1"])
        .env("COLLECT_STALE", "s3://crash")
        .envs(moto.env())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&collector.stdout);
    assert!(out.contains("COLLECTED 2 KEPT 0"), "{out}");
    assert_eq!(pending().await, 0);
    check_served(Arc::new(store)).await;

    // A prefix only sees its own uploads; a directory store has none to collect.
    let out = s3_gc(&moto, &["--store", "s3://crash/other", "--older-than", "0s"]);
    assert!(out.contains("aborted 0, kept 0"), "{out}");
    let refused = Command::new(env!("CARGO_BIN_EXE_origin"))
        .args(["s3-gc", "--store", "/srv/store", "--older-than", "1h"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must be s3://"), "{refused:?}");
    let refused = Command::new(env!("CARGO_BIN_EXE_origin"))
        .args(["s3-gc", "--store", "s3://crash", "--older-than", "1w"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown unit"), "{refused:?}");
}

/// Runs `origin s3-gc ARGS` against moto; returns its stdout (it must succeed).
fn s3_gc(moto: &Moto, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_origin")).arg("s3-gc").args(args).envs(moto.env()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "s3-gc {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}
