//! The S3 store under network faults: a proxy written in the test sits
//! between the SDK and a real S3-compatible server (moto) and resets
//! connections, answers 503 SlowDown, loses answers, cuts bodies and stalls.
//! Uploads must survive transient faults with the right bytes, a part that
//! keeps failing must abort its upload (nothing left behind, the old version
//! untouched), and a read cut short must be an error, never a short object.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use common::fault_proxy::{Fault, FaultProxy, S3Op};
use common::moto::Moto;
use common::{request, TestOrigin};
use origin::store::s3::UploadTuning;
use origin::store::{collect, ByteStream, S3Store};
use origin::{ObjectStore, ServerLimits, StoreError};
use vod::{ByteRange, ObjectKey};

const BUCKET: &str = "faults";
const SEG: &str = "titles/t/v1/1.m4s";

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) % 251) as u8 ^ seed).collect()
}

fn chunked(body: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures::stream::iter(chunks))
}

/// A store that reaches moto through `proxy`, with the store's standard
/// client settings, 5 MiB parts (S3's minimum) and short retry delays.
fn store_via(proxy: &FaultProxy) -> S3Store {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&proxy.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .force_path_style(true);
    let client = aws_sdk_s3::Client::from_conf(S3Store::standard_config(conf).build());
    S3Store::new(client, BUCKET, "")
        .with_upload_tuning(UploadTuning {
            multipart_threshold: 6 << 20,
            part_bytes: 5 << 20,
            parts_in_flight: 2,
            part_attempts: 4,
            retry_base: Duration::from_millis(20),
            part_timeout: Duration::from_secs(5),
        })
        .with_read_idle_timeout(Duration::from_secs(3))
}

async fn pending_uploads(client: &aws_sdk_s3::Client) -> usize {
    client.list_multipart_uploads().bucket(BUCKET).send().await.unwrap().uploads().len()
}

/// Reads `key` straight from moto (at least once) until told to stop; every read must be
/// exactly `old` or exactly `new`. Returns how many reads saw each.
fn watch_versions(
    direct: S3Store,
    key: ObjectKey,
    old: Arc<Vec<u8>>,
    new: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut saw_old, mut saw_new) = (0, 0);
        loop {
            let body = match direct.get(&key).await {
                Ok((body, _)) => body,
                // The version changed between the read's HEAD and its GET
                // (pinned by If-Match): refused, never spliced. Read again.
                Err(e) if e.to_string().contains("PreconditionFailed") => continue,
                Err(e) => panic!("the object stays readable during the upload: {e}"),
            };
            if body[..] == old[..] {
                saw_old += 1;
            } else if body[..] == new[..] {
                saw_new += 1;
            } else {
                panic!("read {} bytes that are neither the old nor the new version", body.len());
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (saw_old, saw_new)
    })
}

#[tokio::test]
async fn uploads_survive_transient_faults_and_readers_see_old_or_new() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket(BUCKET).await;
    let direct = S3Store::new(client.clone(), BUCKET, "");
    let old = Arc::new(pattern(3_000_000, 0));
    direct.put(&key(SEG), Bytes::from(old.to_vec())).await.unwrap();

    let proxy = FaultProxy::start(&moto.endpoint).await;
    // Every kind of fault once, on a different request of one 17 MiB upload (4 parts).
    proxy.set_rule(|op, n| match (op, n) {
        (S3Op::CreateMultipart, 0) => Fault::Reset,
        (S3Op::UploadPart(1), 0) => Fault::SLOW_DOWN,
        (S3Op::UploadPart(2), 0) => Fault::Stall,
        (S3Op::UploadPart(3), 0) => Fault::Reset,
        (S3Op::UploadPart(3), 1) => Fault::LoseAnswer,
        (S3Op::UploadPart(4), 0) => Fault::Error { status: 500, code: "InternalError" },
        // The upload completes but its answer is lost: the retry finds no
        // upload, and the store must recognise its own object by its ETag.
        (S3Op::Complete, 0) => Fault::LoseAnswer,
        (S3Op::Put, 0) => Fault::Reset,
        _ => Fault::Pass,
    });
    let store = store_via(&proxy);
    let new = Arc::new(pattern((17 << 20) + 12_345, 0x5A));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_versions(direct.clone(), key(SEG), old.clone(), new.clone(), stop.clone());

    let started = Instant::now();
    store.put_stream(&key(SEG), chunked(&new, 777_777)).await.expect("the upload survives transient faults");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (saw_old, _) = tokio::time::timeout(Duration::from_secs(30), watcher).await.unwrap().unwrap();
    assert!(saw_old > 0, "the old version was readable while the new one was uploading");

    let (body, meta) = direct.get(&key(SEG)).await.unwrap();
    assert!(body[..] == new[..], "the stored object is the uploaded stream, byte for byte");
    assert!(meta.etag.ends_with("-4\""), "{}", meta.etag);
    assert_eq!(pending_uploads(&client).await, 0, "no incomplete upload is left");
    assert_eq!(proxy.count(S3Op::CreateMultipart), 2);
    assert_eq!(proxy.count(S3Op::UploadPart(1)), 2);
    assert_eq!(proxy.count(S3Op::UploadPart(2)), 2);
    assert_eq!(proxy.count(S3Op::UploadPart(3)), 3);
    assert_eq!(proxy.count(S3Op::UploadPart(4)), 2);
    assert_eq!(proxy.count(S3Op::Complete), 2);
    assert_eq!(proxy.count(S3Op::Abort), 0);
    // The stalled part was given up on after its 5 s attempt timeout, not waited for.
    assert!(took < Duration::from_secs(40), "upload took {took:?}");
    eprintln!("17 MiB through 8 injected faults in {took:?}");

    // A single PUT whose first connection is reset goes through on the SDK's retry.
    let small = key("titles/t/catalog.json");
    store.put(&small, Bytes::from_static(b"{\"v\":2}")).await.unwrap();
    assert_eq!(&direct.get(&small).await.unwrap().0[..], b"{\"v\":2}");
    assert_eq!(proxy.count(S3Op::Put), 2);
}

#[tokio::test]
async fn a_part_that_keeps_failing_aborts_the_upload() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket(BUCKET).await;
    let direct = S3Store::new(client.clone(), BUCKET, "");
    let old = Arc::new(pattern(3_000_000, 0));
    direct.put(&key(SEG), Bytes::from(old.to_vec())).await.unwrap();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let store = store_via(&proxy);
    let new = Arc::new(pattern(17 << 20, 0x33));

    // Throttled for good: four attempts (the tuning's limit), then the upload is aborted.
    proxy.set_rule(|op, _| if op == S3Op::UploadPart(2) { Fault::SLOW_DOWN } else { Fault::Pass });
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_versions(direct.clone(), key(SEG), old.clone(), new.clone(), stop.clone());
    let err = store.put_stream(&key(SEG), chunked(&new, 1 << 20)).await.expect_err("part 2 never goes up");
    stop.store(true, Ordering::Relaxed);
    let (saw_old, saw_new) = tokio::time::timeout(Duration::from_secs(30), watcher).await.unwrap().unwrap();
    assert!(saw_old > 0 && saw_new == 0, "old {saw_old}, new {saw_new}");
    let msg = err.to_string();
    assert!(msg.contains("part 2 failed after 4 attempt(s)") && msg.contains("SlowDown"), "{msg}");
    assert!(matches!(err, StoreError::Remote { .. }));
    assert_eq!(proxy.count(S3Op::UploadPart(2)), 4);
    assert_eq!(proxy.count(S3Op::Complete), 0);
    assert_eq!(proxy.count(S3Op::Abort), 1);
    assert_eq!(pending_uploads(&client).await, 0, "the failed upload was aborted");
    assert!(direct.get(&key(SEG)).await.unwrap().0[..] == old[..], "the old version is untouched");

    // A part refused outright (403) is not retried at all.
    proxy.set_rule(|op, _| {
        if op == S3Op::UploadPart(1) {
            Fault::Error { status: 403, code: "AccessDenied" }
        } else {
            Fault::Pass
        }
    });
    let err = store.put(&key(SEG), Bytes::from(new.to_vec())).await.expect_err("part 1 is refused");
    assert!(err.to_string().contains("part 1 failed after 1 attempt(s)"), "{err}");
    assert_eq!(proxy.count(S3Op::UploadPart(1)), 2, "one attempt in each of the two uploads");
    assert_eq!(pending_uploads(&client).await, 0);

    // A part that stalls on every attempt times out each time, then aborts.
    proxy.set_rule(|op, _| if op == S3Op::UploadPart(3) { Fault::Stall } else { Fault::Pass });
    let twice = store.clone().with_upload_tuning(UploadTuning { part_attempts: 2, ..store.upload_tuning().clone() });
    let (started, before) = (Instant::now(), proxy.count(S3Op::UploadPart(3)));
    let err = twice.put(&key(SEG), Bytes::from(new.to_vec())).await.expect_err("part 3 never answers");
    assert!(err.to_string().contains("part 3 failed after 2 attempt(s)"), "{err}");
    assert_eq!(proxy.count(S3Op::UploadPart(3)) - before, 2);
    assert!(started.elapsed() < Duration::from_secs(30), "2 attempts of 5 s took {:?}", started.elapsed());
    assert_eq!(pending_uploads(&client).await, 0);
    assert!(direct.get(&key(SEG)).await.unwrap().0[..] == old[..]);
}

#[tokio::test]
async fn a_cut_or_stalled_read_is_an_error_never_a_short_body() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket(BUCKET).await;
    let direct = S3Store::new(client, BUCKET, "");
    let body = pattern(1_000_000, 7);
    direct.put(&key(SEG), Bytes::from(body.clone())).await.unwrap();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let store = store_via(&proxy);

    proxy.set_rule(|op, _| if op == S3Op::Get { Fault::CutBody { after: 100_000 } } else { Fault::Pass });
    let err = store.get(&key(SEG)).await.expect_err("a cut body is not an object");
    assert!(err.to_string().contains(SEG), "the error names the object: {err}");
    let range = ByteRange { start: 200_000, end: 699_999 };
    let reader = store.open(&key(SEG)).await.unwrap();
    let err = collect(&key(SEG), reader.read(Some(range)).await.unwrap()).await.expect_err("a cut range is an error");
    assert!(err.to_string().contains("reading titles/t/v1/1.m4s from S3"), "{err}");

    // Through the origin: the answer promises the whole length and the
    // connection ends before it, so no client can take it for the object.
    let o = TestOrigin::start(Arc::new(store.clone()), ServerLimits::default()).await;
    let r = request(o.addr, "GET", &format!("/{SEG}"), &[]).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000000")));
    assert!(r.body.len() < body.len(), "the cut shows as a short body against Content-Length");
    let r = request(o.addr, "GET", &format!("/{SEG}"), &[("Range", "bytes=200000-699999")]).await;
    assert_eq!((r.status, r.header("content-length")), (206, Some("500000")));
    assert!(r.body.len() < 500_000);
    o.stop().await;

    // A body that stops mid-way fails after the read idle timeout (3 s here).
    proxy.set_rule(|op, _| if op == S3Op::Get { Fault::StallBody { after: 1000 } } else { Fault::Pass });
    let started = Instant::now();
    let err = store.get(&key(SEG)).await.expect_err("a stalled body is an error");
    assert!(err.to_string().contains("no data for"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // Transient failures before the body starts are retried by the SDK.
    proxy.set_rule(|op, n| match (op, n) {
        (S3Op::Get, 0) => Fault::Reset,
        (S3Op::Get, 1) => Fault::SLOW_DOWN,
        _ => Fault::Pass,
    });
    let before = proxy.count(S3Op::Get);
    let reader = store.open(&key(SEG)).await.unwrap();
    let got = collect(&key(SEG), reader.read(Some(range)).await.unwrap()).await.unwrap();
    assert!(got[..] == body[200_000..700_000]);
    assert_eq!(proxy.count(S3Op::Get) - before, 3);
}
