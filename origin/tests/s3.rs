//! The S3 store against a real S3-compatible server (moto, started by the
//! test): put/get/range/head/list/delete, multipart uploads, and the origin
//! serving from it. Skipped, with a message, only when moto is missing.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::moto::Moto;
use common::{request, TestOrigin};
use origin::store::{collect, S3Store};
use origin::{ObjectStore, ServerLimits, StoreError};
use vod::{ByteRange, ObjectKey};

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) % 253) as u8).collect()
}

#[tokio::test]
async fn s3_store_put_get_range_list_delete_and_multipart() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket("lib").await;
    // Small multipart settings so the test moves little data (5 MiB is S3's minimum part).
    let store = S3Store::new(client.clone(), "lib", "prod/").with_multipart(6 << 20, 5 << 20);

    let cat = key("titles/a/catalog.json");
    assert!(matches!(store.head(&cat).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.open(&cat).await, Err(StoreError::NotFound(_))));
    store.put(&cat, Bytes::from_static(b"{\"v\":1}")).await.unwrap();
    let (body, meta) = store.get(&cat).await.unwrap();
    assert_eq!((&body[..], meta.len), (&b"{\"v\":1}"[..], 7));
    assert!(meta.etag.starts_with('"') && meta.last_modified.is_some());
    // Objects live under the prefix, with their Content-Type.
    let raw = client.head_object().bucket("lib").key("prod/titles/a/catalog.json").send().await.unwrap();
    assert_eq!(raw.content_type(), Some("application/json"));

    // 12 MiB goes up as a multipart upload (S3's multipart ETags end in -N) and reads back whole and ranged.
    let big = pattern(12 << 20);
    let seg = key("titles/a/v1/1.m4s");
    store.put(&seg, Bytes::from(big.clone())).await.unwrap();
    let meta = store.head(&seg).await.unwrap();
    assert_eq!(meta.len, big.len() as u64);
    assert!(meta.etag.trim_matches('"').ends_with("-3"), "multipart ETag, got {}", meta.etag);
    let reader = store.open(&seg).await.unwrap();
    let part =
        collect(&seg, reader.read(Some(ByteRange { start: 5_000_000, end: 5_999_999 })).await.unwrap()).await.unwrap();
    assert_eq!(&part[..], &big[5_000_000..6_000_000]);
    assert_eq!(&store.get(&seg).await.unwrap().0[..], &big[..]);

    // put_stream: multipart from a stream of odd-sized chunks.
    let streamed = key("titles/a/v1/2.m4s");
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        big.chunks(777_777).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    store.put_stream(&streamed, Box::pin(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(&store.get(&streamed).await.unwrap().0[..], &big[..]);
    // A stream that fails mid-way publishes nothing.
    let failing = key("titles/a/v1/3.m4s");
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(pattern(7 << 20))),
        Ok(Bytes::from(pattern(3 << 20))),
        Err(std::io::Error::other("publisher died")),
    ];
    assert!(store.put_stream(&failing, Box::pin(futures::stream::iter(chunks))).await.is_err());
    assert!(matches!(store.head(&failing).await, Err(StoreError::NotFound(_))));

    store.put(&key("titles/ab/catalog.json"), Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(
        store.list("titles/a/").await.unwrap(),
        ["titles/a/catalog.json", "titles/a/v1/1.m4s", "titles/a/v1/2.m4s"]
    );
    assert_eq!(store.delete_prefix("titles/a/").await.unwrap(), 3);
    assert_eq!(store.list("titles/").await.unwrap(), ["titles/ab/catalog.json"]);
    // Another prefix in the same bucket is another store.
    let other = S3Store::new(client, "lib", "staging/");
    assert!(other.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn origin_serves_ranges_and_validators_from_s3() {
    let Some(moto) = Moto::start().await else { return };
    let client = moto.bucket("served").await;
    let store = S3Store::new(client, "served", "");
    let body = pattern(100_000);
    store.put(&key("titles/t/v1/1.m4s"), Bytes::from(body.clone())).await.unwrap();
    let o = TestOrigin::start(Arc::new(store), ServerLimits::default()).await;
    let seg = "/titles/t/v1/1.m4s";
    let full = request(o.addr, "GET", seg, &[]).await;
    assert_eq!((full.status, full.body.len()), (200, body.len()));
    assert_eq!(full.header("content-type"), Some("video/iso.segment"));
    let etag = full.header("etag").unwrap().to_owned();
    let r = request(o.addr, "GET", seg, &[("Range", "bytes=-100")]).await;
    assert_eq!((r.status, r.body.as_slice()), (206, &body[99_900..]));
    assert_eq!(r.header("content-range"), Some("bytes 99900-99999/100000"));
    assert_eq!(request(o.addr, "GET", seg, &[("If-None-Match", &etag)]).await.status, 304);
    let lm = full.header("last-modified").unwrap().to_owned();
    assert_eq!(request(o.addr, "GET", seg, &[("If-Modified-Since", &lm)]).await.status, 304);
    assert_eq!(request(o.addr, "GET", seg, &[("Range", "bytes=100000-")]).await.status, 416);
    assert_eq!(request(o.addr, "HEAD", seg, &[]).await.header("content-length"), Some("100000"));
    assert_eq!(request(o.addr, "GET", "/titles/t/v1/2.m4s", &[]).await.status, 404);
    o.stop().await;
}
