//! Memory stays bounded while a big object streams up to S3 (moto, started
//! by the test): 200 MiB in 8 MiB parts, four in flight, must cost a few
//! parts of resident memory, not the object. Alone in its binary so no other
//! test's allocations move the peak.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::moto::Moto;
use futures::StreamExt;
use origin::store::s3::UploadTuning;
use origin::{ObjectStore, S3Store};
use vod::ObjectKey;

const MIB: usize = 1 << 20;
const OBJECT: usize = 200 * MIB;

fn byte_at(i: usize) -> u8 {
    ((i >> 12) as u8).wrapping_mul(31) ^ (i as u8)
}

/// Peak resident set of this process since the last reset, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

fn current_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

#[tokio::test]
async fn a_200_mib_stream_uploads_in_a_few_parts_of_memory() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket("big").await;
    let store = S3Store::new(client, "big", "");
    let tuning = store.upload_tuning().clone();
    assert_eq!(tuning, UploadTuning::default());
    let key = ObjectKey::parse("titles/big/v1/1.m4s").unwrap();

    // 1 MiB chunks made as they are asked for, as a publisher's stream would be.
    let body = futures::stream::iter(0..OBJECT / MIB).map(|c| {
        let chunk: Vec<u8> = (c * MIB..(c + 1) * MIB).map(byte_at).collect();
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    });
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = current_rss();
    let started = Instant::now();
    store.put_stream(&key, Box::pin(body)).await.unwrap();
    let took = started.elapsed();
    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "200 MiB streamed to moto in {took:?} ({:.0} MiB/s); peak RSS grew {:.1} MiB \
         (part {} MiB, {} in flight, threshold {} MiB)",
        200.0 / took.as_secs_f64(),
        growth as f64 / MIB as f64,
        tuning.part_bytes / MIB,
        tuning.parts_in_flight,
        tuning.multipart_threshold / MIB
    );
    // Parts in flight, the one being filled and the chunks held below the
    // threshold: ~56 MiB; the object would be 200.
    let bound = tuning.part_bytes * (tuning.parts_in_flight + 2) + tuning.multipart_threshold + 16 * MIB;
    assert!(growth < bound, "peak RSS grew {growth} bytes, bound {bound}");

    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.len, OBJECT as u64);
    assert!(meta.etag.ends_with("-25\""), "{}", meta.etag);
    // Read it back as a stream and compare every byte where it belongs.
    let mut back = store.open(&key).await.unwrap().read(None).await.unwrap();
    let mut at = 0usize;
    while let Some(chunk) = back.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().enumerate().all(|(j, &b)| b == byte_at(at + j)), "bytes differ near offset {at}");
        at += chunk.len();
    }
    assert_eq!(at, OBJECT);
}
