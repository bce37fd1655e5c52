//! A store in an S3 bucket (AWS, MinIO, Ceph, moto) under a key prefix.
//! Writes are atomic by S3's own rule: an object appears when its PUT or its
//! multipart upload completes, never in parts. Reads pin the version they
//! opened with `If-Match`, so a republish mid-stream fails the read instead
//! of splicing two versions, and a body that ends short or stalls is an
//! error, never a short object.

mod gc;
mod multipart;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Bytes;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use vod::range::ByteRange;
use vod::ObjectKey;

pub use gc::{collect_stale_uploads, PendingUpload, StaleUploadReport, PUBLISHER_GC_AGE};

use super::{collect, ByteStream, ObjectBody, ObjectMeta, ObjectReader, ObjectStore, StoreError};

/// Objects up to this size go up in one PUT; bigger ones as a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// S3 numbers parts 1 to 10 000.
pub const MAX_PARTS: i32 = 10_000;

/// How objects are cut into parts and how a failed part is retried.
///
/// A part's bytes are kept until S3 has acknowledged it, so a part read from
/// a stream can be sent again; memory is about `part_bytes` times
/// (`parts_in_flight` + 1), whatever the object's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTuning {
    /// Objects up to this size go up in one PUT.
    pub multipart_threshold: usize,
    /// Bytes per part (S3 wants at least 5 MiB for every part but the last).
    pub part_bytes: usize,
    /// Parts uploading at once.
    pub parts_in_flight: usize,
    /// Attempts per part before the upload is aborted.
    pub part_attempts: u32,
    /// First retry delay; doubles per attempt (with jitter), capped at 8 s.
    pub retry_base: Duration,
    /// One attempt of one part (or of a single PUT) may take this long.
    pub part_timeout: Duration,
}

impl Default for UploadTuning {
    fn default() -> Self {
        Self {
            multipart_threshold: MULTIPART_THRESHOLD,
            part_bytes: PART_BYTES,
            parts_in_flight: 4,
            part_attempts: 5,
            retry_base: Duration::from_millis(250),
            part_timeout: Duration::from_secs(120),
        }
    }
}

/// Attempts of every request but the parts (which `UploadTuning` retries itself).
pub const REQUEST_ATTEMPTS: u32 = 5;
/// A read whose body sends nothing for this long fails.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 bucket and key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    upload: UploadTuning,
    read_idle_timeout: Duration,
}

impl S3Store {
    /// A store over an existing client; `prefix` is "" or ends with `/`.
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            upload: UploadTuning::default(),
            read_idle_timeout: READ_IDLE_TIMEOUT,
        }
    }

    /// Sets when uploads switch to multipart and the part size (at least 5 MiB for real S3).
    pub fn with_multipart(mut self, threshold: usize, part_bytes: usize) -> Self {
        self.upload.multipart_threshold = threshold;
        self.upload.part_bytes = part_bytes.max(1);
        self
    }

    /// Sets every upload setting at once.
    pub fn with_upload_tuning(mut self, tuning: UploadTuning) -> Self {
        self.upload = UploadTuning {
            part_bytes: tuning.part_bytes.max(1),
            parts_in_flight: tuning.parts_in_flight.max(1),
            part_attempts: tuning.part_attempts.max(1),
            ..tuning
        };
        self
    }

    /// How uploads are cut and retried.
    pub fn upload_tuning(&self) -> &UploadTuning {
        &self.upload
    }

    /// Sets how long a read's body may send nothing before the read fails.
    pub fn with_read_idle_timeout(mut self, timeout: Duration) -> Self {
        self.read_idle_timeout = timeout;
        self
    }

    /// A client configured from the usual AWS environment: credentials,
    /// `AWS_REGION` (default us-east-1), `AWS_ENDPOINT_URL` (MinIO, Ceph,
    /// moto), and path-style addressing when `AWS_S3_FORCE_PATH_STYLE` is
    /// true or an endpoint URL is set (virtual-host buckets rarely resolve there).
    pub async fn from_env(bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        // The loader's own region and credential chains get the HTTP client
        // (IMDS needs one); a chain built apart from it would not.
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(request_retries())
            .timeout_config(request_timeouts())
            .load()
            .await;
        let env_true =
            |name: &str| std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
        let path_style = env_true("AWS_S3_FORCE_PATH_STYLE")
            || (std::env::var_os("AWS_ENDPOINT_URL").is_some() && !env_true("AWS_S3_VIRTUAL_HOST_STYLE"));
        let mut conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style);
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        let conf = conf.build();
        Ok(Self::new(Client::from_conf(conf), bucket, prefix))
    }

    /// Applies the store's HTTP client, retries and timeouts to a client
    /// configuration built by hand (the same ones `from_env` uses).
    pub fn standard_config(builder: aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder {
        builder.http_client(http_client()).retry_config(request_retries()).timeout_config(request_timeouts())
    }

    /// The S3 client (for reads outside the key layout, such as encoder inputs).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix ("" or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn s3_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    async fn put_small(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.s3_key(&key.to_string()))
            .content_type(key.content_kind().mime())
            .body(S3Bytes::from(body))
            .customize()
            .config_override(self.attempt_timeout(self.upload.part_timeout))
            .send()
            .await
            .map_err(|e| remote(&key.to_string(), e))?;
        Ok(())
    }

    /// A configuration override for requests that carry a body: each attempt
    /// may take `timeout` in all (the client's read timeout would count the
    /// upload itself against the wait for the answer).
    fn attempt_timeout(&self, timeout: Duration) -> aws_sdk_s3::config::Builder {
        let base = self.client.config().timeout_config().cloned().unwrap_or_else(request_timeouts);
        let timeouts = base.to_builder().disable_read_timeout().operation_attempt_timeout(timeout).build();
        aws_sdk_s3::config::Builder::new().timeout_config(timeouts)
    }
}

/// HTTPS with rustls on ring (no aws-lc C build).
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

fn request_retries() -> aws_sdk_s3::config::retry::RetryConfig {
    aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(REQUEST_ATTEMPTS)
}

/// Connecting may take 3.1 s (the SDK's default); a response must start
/// within 60 s of its request (completing a big multipart upload is the
/// slow one, and S3 keeps that connection alive with whitespace).
fn request_timeouts() -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(3100))
        .read_timeout(Duration::from_secs(60))
        .build()
}

fn remote<E, R>(key: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let not_found = match &e {
        SdkError::ServiceError(se) => se.raw().status_code() == 404,
        _ => false,
    };
    if not_found {
        StoreError::NotFound(key.to_owned())
    } else {
        StoreError::Remote { key: key.to_owned(), reason: DisplayErrorContext(&e).to_string() }
    }
}

/// The HTTP status of a raw SDK response.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn meta_of(len: Option<i64>, etag: Option<&str>, modified: Option<&aws_sdk_s3::primitives::DateTime>) -> ObjectMeta {
    ObjectMeta {
        len: len.map_or(0, |l| l.max(0) as u64),
        etag: etag.map_or_else(|| "\"\"".to_owned(), str::to_owned),
        last_modified: modified.and_then(|d| SystemTime::try_from(*d).ok()),
    }
}

/// One version of an S3 object, pinned by its ETag.
struct S3Body {
    client: Client,
    bucket: String,
    s3_key: String,
    key: String,
    etag: String,
    len: u64,
    idle_timeout: Duration,
}

/// What a read still expects: the bytes left, and how long the body may idle.
struct BodyState {
    body: S3Bytes,
    key: String,
    left: u64,
    idle_timeout: Duration,
}

#[async_trait]
impl ObjectBody for S3Body {
    async fn read(self: Box<Self>, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        if self.len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let mut req = self.client.get_object().bucket(&self.bucket).key(&self.s3_key).if_match(&self.etag);
        let expected = match range {
            Some(r) => {
                req = req.range(format!("bytes={}-{}", r.start, r.end));
                r.end.saturating_sub(r.start) + 1
            }
            None => self.len,
        };
        let out = req.send().await.map_err(|e| remote(&self.key, e))?;
        let state = BodyState { body: out.body, key: self.key, left: expected, idle_timeout: self.idle_timeout };
        // The HTTP layer already fails a body cut short of its Content-Length;
        // counting here also catches a response that had none, or the wrong one.
        let stream = futures::stream::try_unfold(state, |mut s| async move {
            let next = tokio::time::timeout(s.idle_timeout, s.body.try_next()).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("reading {} from S3: no data for {:?} with {} bytes to go", s.key, s.idle_timeout, s.left),
                )
            })?;
            match next {
                Ok(Some(chunk)) => match s.left.checked_sub(chunk.len() as u64) {
                    Some(left) => {
                        s.left = left;
                        Ok(Some((chunk, s)))
                    }
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("reading {} from S3: the body is longer than expected", s.key),
                    )),
                },
                Ok(None) if s.left == 0 => Ok(None),
                Ok(None) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("reading {} from S3: the body ended {} bytes short", s.key, s.left),
                )),
                Err(e) => Err(std::io::Error::other(format!(
                    "reading {} from S3 ({} bytes to go): {}",
                    s.key,
                    s.left,
                    DisplayErrorContext(&e)
                ))),
            }
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &ObjectKey) -> Result<(Bytes, ObjectMeta), StoreError> {
        let reader = self.open(key).await?;
        let meta = reader.meta.clone();
        let body = collect(key, reader.read(None).await?).await?;
        Ok((body, meta))
    }

    async fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let meta = self.head(key).await?;
        let body = S3Body {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            s3_key: self.s3_key(&key.to_string()),
            key: key.to_string(),
            etag: meta.etag.clone(),
            len: meta.len,
            idle_timeout: self.read_idle_timeout,
        };
        Ok(ObjectReader { meta, body: Box::new(body) })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError> {
        let k = key.to_string();
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.s3_key(&k))
            .send()
            .await
            .map_err(|e| remote(&k, e))?;
        Ok(meta_of(out.content_length(), out.e_tag(), out.last_modified()))
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        if body.len() <= self.upload.multipart_threshold {
            return self.put_small(key, body).await;
        }
        // One chunk: the parts are slices of it, not copies.
        self.put_multipart(key, Box::pin(futures::stream::iter([Ok(body)]))).await
    }

    async fn put_stream(&self, key: &ObjectKey, mut body: ByteStream) -> Result<(), StoreError> {
        // Hold chunks up to the threshold: small objects go up in one PUT.
        // Chunks are kept as they came, not copied into one growing buffer.
        let mut head = Vec::new();
        let mut held = 0usize;
        while held <= self.upload.multipart_threshold {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|source| StoreError::Io { key: key.to_string(), source })?;
                    held += chunk.len();
                    head.push(Ok(chunk));
                }
                None => {
                    let mut all = BytesMut::with_capacity(held);
                    for chunk in head.into_iter().flatten() {
                        all.extend_from_slice(&chunk);
                    }
                    return self.put_small(key, all.freeze()).await;
                }
            }
        }
        let rest: ByteStream = Box::pin(futures::stream::iter(head).chain(body));
        self.put_multipart(key, rest).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        super::local::check_prefix(prefix)?;
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(self.s3_key(prefix)).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| remote(prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(k.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let keys = self.list(prefix).await?;
        // DeleteObjects takes at most 1000 keys per request.
        for batch in keys.chunks(1000) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.s3_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Remote { key: prefix.to_owned(), reason: e.to_string() })?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Remote { key: prefix.to_owned(), reason: e.to_string() })?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| remote(prefix, e))?;
            if let Some(err) = out.errors().first() {
                return Err(StoreError::Remote {
                    key: err.key().unwrap_or(prefix).to_owned(),
                    reason: err.message().unwrap_or("delete failed").to_owned(),
                });
            }
        }
        Ok(keys.len() as u64)
    }
}
