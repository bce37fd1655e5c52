//! Crash safety: a publisher process is SIGKILLed in the middle of writing an
//! object; the origin then serves the previous version (byte for byte) or
//! 404, never a truncated object. The publisher is this test binary run again
//! with `CRASH_PUBLISHER` set: it writes part of a big object, says so on
//! stdout, and waits to be killed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use common::moto::Moto;
use common::{request, TestOrigin};
use origin::store::ByteStream;
use origin::{LocalStore, ObjectStore, S3Store, ServerLimits};
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
    let pending = client.list_multipart_uploads().bucket("crash").send().await.unwrap();
    assert_eq!(pending.uploads().len(), 2);
    assert_eq!(store.list("titles/").await.unwrap(), [REPUBLISHED]);
    check_served(Arc::new(store)).await;
}
