//! A store in an S3 bucket (AWS, MinIO, Ceph, moto) under a key prefix.
//! Writes are atomic by S3's own rule: an object appears when its PUT or its
//! multipart upload completes, never in parts. Reads pin the version they
//! opened with `If-Match`, so a republish mid-stream fails the read instead
//! of splicing two versions.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Bytes;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use vod::range::ByteRange;
use vod::ObjectKey;

use super::{collect, ByteStream, ObjectBody, ObjectMeta, ObjectReader, ObjectStore, StoreError};

/// Objects up to this size go up in one PUT; bigger ones as a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// An S3 bucket and key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: usize,
    part_bytes: usize,
}

impl S3Store {
    /// A store over an existing client; `prefix` is "" or ends with `/`.
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            multipart_threshold: MULTIPART_THRESHOLD,
            part_bytes: PART_BYTES,
        }
    }

    /// Sets when uploads switch to multipart and the part size (at least 5 MiB for real S3).
    pub fn with_multipart(mut self, threshold: usize, part_bytes: usize) -> Self {
        self.multipart_threshold = threshold;
        self.part_bytes = part_bytes.max(1);
        self
    }

    /// A client configured from the usual AWS environment: credentials,
    /// `AWS_REGION` (default us-east-1), `AWS_ENDPOINT_URL` (MinIO, Ceph,
    /// moto), and path-style addressing when `AWS_S3_FORCE_PATH_STYLE` is
    /// true or an endpoint URL is set (virtual-host buckets rarely resolve there).
    pub async fn from_env(bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        // The loader's own region and credential chains get the HTTP client
        // (IMDS needs one); a chain built apart from it would not.
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
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

    /// The S3 client (for reads outside the key layout, such as encoder inputs).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
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
            .send()
            .await
            .map_err(|e| remote(&key.to_string(), e))?;
        Ok(())
    }

    /// Uploads `first` and then the rest of `body` as parts; aborts the
    /// upload on any error so no part lingers (and nothing becomes visible).
    async fn put_multipart(&self, key: &ObjectKey, first: Bytes, body: ByteStream) -> Result<(), StoreError> {
        let k = key.to_string();
        let s3_key = self.s3_key(&k);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&s3_key)
            .content_type(key.content_kind().mime())
            .send()
            .await
            .map_err(|e| remote(&k, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Remote { key: k.clone(), reason: "S3 returned no upload id".into() })?;
        let result = self.upload_parts(&k, &s3_key, upload_id, first, body).await;
        match result {
            Ok((parts, total)) => {
                let n = parts.len();
                let done = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&s3_key)
                    .upload_id(upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await;
                match done {
                    Ok(_) => Ok(()),
                    // A 200 whose body the SDK cannot read (moto 5.2 names the
                    // root element differently; S3 documents 200s that carry
                    // errors): the upload may or may not be complete, so ask.
                    Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 200 => {
                        let meta = self.head(key).await?;
                        let suffix = format!("-{n}\"");
                        if meta.len == total && meta.etag.ends_with(&suffix) {
                            Ok(())
                        } else {
                            Err(StoreError::Remote {
                                key: k,
                                reason: format!("multipart completion unconfirmed: {}", DisplayErrorContext(se.err())),
                            })
                        }
                    }
                    Err(e) => Err(remote(&k, e)),
                }
            }
            Err(e) => {
                let abort = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&s3_key)
                    .upload_id(upload_id)
                    .send()
                    .await;
                if let Err(a) = abort {
                    tracing::warn!(key = %k, error = %DisplayErrorContext(&a), "aborting a failed multipart upload failed");
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        k: &str,
        s3_key: &str,
        upload_id: &str,
        first: Bytes,
        mut body: ByteStream,
    ) -> Result<(Vec<CompletedPart>, u64), StoreError> {
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut pending = Some(first);
        let mut buf = BytesMut::new();
        loop {
            let part = match pending.take() {
                Some(p) => p,
                None => {
                    while buf.len() < self.part_bytes {
                        match body.next().await {
                            Some(chunk) => buf.extend_from_slice(
                                &chunk.map_err(|source| StoreError::Io { key: k.to_owned(), source })?,
                            ),
                            None => break,
                        }
                    }
                    if buf.is_empty() {
                        break;
                    }
                    let n = buf.len().min(self.part_bytes);
                    buf.split_to(n).freeze()
                }
            };
            let number = parts.len() as i32 + 1;
            total += part.len() as u64;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(s3_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(S3Bytes::from(part))
                .send()
                .await
                .map_err(|e| remote(k, e))?;
            parts.push(CompletedPart::builder().set_e_tag(out.e_tag().map(str::to_owned)).part_number(number).build());
        }
        Ok((parts, total))
    }
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
}

#[async_trait]
impl ObjectBody for S3Body {
    async fn read(self: Box<Self>, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        if self.len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let mut req = self.client.get_object().bucket(&self.bucket).key(&self.s3_key).if_match(&self.etag);
        if let Some(r) = range {
            req = req.range(format!("bytes={}-{}", r.start, r.end));
        }
        let out = req.send().await.map_err(|e| remote(&self.key, e))?;
        let stream = futures::stream::try_unfold(out.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
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
        if body.len() <= self.multipart_threshold {
            return self.put_small(key, body).await;
        }
        let first = body.slice(..self.part_bytes.min(body.len()));
        let rest = body.slice(first.len()..);
        let rest: ByteStream = Box::pin(futures::stream::iter(
            (0..rest.len())
                .step_by(self.part_bytes)
                .map(move |i| Ok(rest.slice(i..(i + self.part_bytes).min(rest.len()))))
                .collect::<Vec<_>>(),
        ));
        self.put_multipart(key, first, rest).await
    }

    async fn put_stream(&self, key: &ObjectKey, mut body: ByteStream) -> Result<(), StoreError> {
        // Buffer up to the threshold: small objects go up in one PUT.
        let mut buf = BytesMut::new();
        while buf.len() <= self.multipart_threshold {
            match body.next().await {
                Some(chunk) => {
                    buf.extend_from_slice(&chunk.map_err(|source| StoreError::Io { key: key.to_string(), source })?)
                }
                None => return self.put_small(key, buf.freeze()).await,
            }
        }
        let mut all = buf.freeze();
        let first = all.split_to(self.part_bytes.min(all.len()));
        let rest: ByteStream = Box::pin(futures::stream::iter([Ok(all)]).chain(body));
        self.put_multipart(key, first, rest).await
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
