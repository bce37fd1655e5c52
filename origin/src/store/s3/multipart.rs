//! Multipart uploads from a stream. The stream is cut into parts of a fixed
//! size; each part's bytes are kept until S3 acknowledges it, so a part that
//! failed on a transient error (5xx, throttling, a timeout, a reset
//! connection) is sent again with backoff, and only a few parts are ever in
//! memory. A part that keeps failing aborts the whole upload, so nothing
//! becomes visible and no parts are left behind.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Bytes;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use tokio::task::JoinSet;
use vod::ObjectKey;

use super::{remote, HttpStatus, S3Store, MAX_PARTS};
use crate::store::{ByteStream, ObjectStore, StoreError};

/// Retry delays never grow past this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

impl S3Store {
    /// Uploads `body` as a multipart upload; aborts it on any failure.
    pub(super) async fn put_multipart(&self, key: &ObjectKey, body: ByteStream) -> Result<(), StoreError> {
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
        let upload = Arc::new(Upload { store: self.clone(), key: k, s3_key, upload_id: upload_id.to_owned() });
        let result = match upload.send_parts(body).await {
            Ok(parts) => upload.complete(key, &parts).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            upload.abort().await;
        }
        result
    }
}

/// One multipart upload under way.
struct Upload {
    store: S3Store,
    key: String,
    s3_key: String,
    upload_id: String,
}

/// A part S3 has acknowledged.
struct SentPart {
    number: i32,
    etag: String,
    len: u64,
}

impl Upload {
    /// Cuts `body` into parts and sends up to `parts_in_flight` at once,
    /// each in a task of its own so parts go on while the stream is read.
    /// On a failure the other parts are cancelled, and waited for, before
    /// the caller aborts the upload.
    async fn send_parts(self: &Arc<Self>, body: ByteStream) -> Result<Vec<SentPart>, StoreError> {
        let tuning = &self.store.upload;
        let mut splitter =
            PartSplitter { body, carry: Bytes::new(), part_bytes: tuning.part_bytes, next: 1, key: self.key.clone() };
        let mut running = JoinSet::new();
        let mut out = Vec::new();
        let sent = async {
            loop {
                if running.len() >= tuning.parts_in_flight.max(1) {
                    if let Some(done) = running.join_next().await {
                        out.push(self.joined(done)?);
                    }
                    continue;
                }
                match splitter.next_part().await? {
                    Some((number, bytes)) => {
                        let upload = Arc::clone(self);
                        running.spawn(async move { upload.send_part(number, bytes).await });
                    }
                    None => break,
                }
            }
            while let Some(done) = running.join_next().await {
                out.push(self.joined(done)?);
            }
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = sent {
            running.shutdown().await;
            return Err(e);
        }
        out.sort_by_key(|p| p.number);
        if out.is_empty() {
            return Err(StoreError::Remote {
                key: self.key.clone(),
                reason: "a multipart upload with no parts".into(),
            });
        }
        Ok(out)
    }

    fn joined(
        &self,
        done: Result<Result<SentPart, StoreError>, tokio::task::JoinError>,
    ) -> Result<SentPart, StoreError> {
        done.map_err(|e| StoreError::Remote { key: self.key.clone(), reason: format!("part upload task: {e}") })?
    }

    /// Sends one part, again after each transient failure, up to `part_attempts` times.
    async fn send_part(&self, number: i32, bytes: Bytes) -> Result<SentPart, StoreError> {
        let tuning = &self.store.upload;
        let mut attempt = 1;
        loop {
            let out = self
                .store
                .client
                .upload_part()
                .bucket(&self.store.bucket)
                .key(&self.s3_key)
                .upload_id(&self.upload_id)
                .part_number(number)
                .body(S3Bytes::from(bytes.clone()))
                .customize()
                // The SDK's own retries are off for parts: these attempts are the only ones.
                .config_override(self.store.attempt_timeout(tuning.part_timeout).retry_config(RetryConfig::disabled()))
                .send()
                .await;
            let error = match out {
                Ok(o) => match o.e_tag() {
                    Some(etag) => return Ok(SentPart { number, etag: etag.to_owned(), len: bytes.len() as u64 }),
                    None => {
                        return Err(StoreError::Remote {
                            key: self.key.clone(),
                            reason: format!("S3 returned no ETag for part {number}"),
                        })
                    }
                },
                Err(e) => e,
            };
            if attempt >= tuning.part_attempts || !is_transient(&error) {
                return Err(StoreError::Remote {
                    key: self.key.clone(),
                    reason: format!("part {number} failed after {attempt} attempt(s): {}", DisplayErrorContext(&error)),
                });
            }
            let delay = backoff(tuning.retry_base, attempt);
            tracing::warn!(
                key = %self.key,
                part = number,
                attempt,
                ?delay,
                error = %DisplayErrorContext(&error),
                "part upload failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn complete(&self, key: &ObjectKey, parts: &[SentPart]) -> Result<(), StoreError> {
        let completed = parts
            .iter()
            .map(|p| CompletedPart::builder().e_tag(&p.etag).part_number(p.number).build())
            .collect::<Vec<_>>();
        let done = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.s3_key)
            .upload_id(&self.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await;
        let error = match done {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // The upload may be complete although the answer says otherwise: a
        // retry after a lost answer finds no upload (404), moto 5.2 answers
        // 200 with a body the SDK cannot read, and S3 documents 200s that
        // carry errors. Ask S3 what is stored now.
        let ambiguous = match &error {
            SdkError::ServiceError(se) => matches!(se.raw().status_code(), 200 | 404),
            SdkError::ResponseError(_) | SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            _ => false,
        };
        if ambiguous {
            match self.is_stored(key, parts).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(key = %self.key, error = %e, "checking an unconfirmed completion failed"),
            }
        }
        Err(StoreError::Remote {
            key: self.key.clone(),
            reason: format!("completing the multipart upload: {}", DisplayErrorContext(&error)),
        })
    }

    /// True if the object now stored under the key is this upload: same
    /// length and the ETag S3 gives a multipart object (MD5 of the parts'
    /// MD5s, then `-N`). Parts whose ETags are not MD5s (SSE-KMS) leave
    /// only the length and the part count to compare.
    async fn is_stored(&self, key: &ObjectKey, parts: &[SentPart]) -> Result<bool, StoreError> {
        let meta = match self.store.head(key).await {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let total: u64 = parts.iter().map(|p| p.len).sum();
        let etag_matches = match multipart_etag(parts) {
            Some(expected) => meta.etag == expected,
            None => meta.etag.ends_with(&format!("-{}\"", parts.len())),
        };
        Ok(meta.len == total && etag_matches)
    }

    async fn abort(&self) {
        let aborted = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.s3_key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(
                key = %self.key,
                upload_id = %self.upload_id,
                error = %DisplayErrorContext(&e),
                "aborting a failed multipart upload failed; `origin s3-gc` removes it later"
            );
        }
    }
}

/// Cuts a stream into parts of `part_bytes` (the last one shorter). A chunk
/// at least a part long is sliced, not copied.
struct PartSplitter {
    body: ByteStream,
    /// What is left of the last chunk read.
    carry: Bytes,
    part_bytes: usize,
    next: i32,
    key: String,
}

impl PartSplitter {
    async fn next_part(&mut self) -> Result<Option<(i32, Bytes)>, StoreError> {
        let mut part = BytesMut::new();
        loop {
            if self.carry.is_empty() {
                match self.body.next().await {
                    Some(chunk) => {
                        self.carry = chunk.map_err(|source| StoreError::Io { key: self.key.clone(), source })?;
                        continue;
                    }
                    None => break,
                }
            }
            let need = self.part_bytes - part.len();
            if part.is_empty() && self.carry.len() >= need {
                let whole = self.carry.split_to(need);
                return self.numbered(whole).map(Some);
            }
            if part.capacity() == 0 {
                part.reserve(self.part_bytes);
            }
            let take = need.min(self.carry.len());
            part.extend_from_slice(&self.carry.split_to(take));
            if part.len() == self.part_bytes {
                break;
            }
        }
        if part.is_empty() {
            return Ok(None);
        }
        self.numbered(part.freeze()).map(Some)
    }

    fn numbered(&mut self, part: Bytes) -> Result<(i32, Bytes), StoreError> {
        if self.next > MAX_PARTS {
            return Err(StoreError::Remote {
                key: self.key.clone(),
                reason: format!("more than {MAX_PARTS} parts of {} bytes; use bigger parts", self.part_bytes),
            });
        }
        let number = self.next;
        self.next += 1;
        Ok((number, part))
    }
}

/// True for failures a later attempt may not see: 5xx, throttling, request
/// timeouts, and requests that got no readable answer at all.
fn is_transient<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
    R: HttpStatus,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(d) => !d.is_user(),
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            status >= 500
                || status == 429
                || matches!(
                    se.err().code(),
                    Some(
                        "SlowDown"
                            | "RequestTimeout"
                            | "RequestTimeoutException"
                            | "InternalError"
                            | "ServiceUnavailable"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestLimitExceeded"
                    )
                )
        }
        _ => false,
    }
}

/// `base` doubled per failed attempt, capped, times a jitter in [0.5, 1) so
/// parts that failed together do not come back together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
    exp.mul_f64(jitter)
}

/// The ETag S3 gives a completed multipart object, if every part's ETag is an MD5.
fn multipart_etag(parts: &[SentPart]) -> Option<String> {
    let mut md5s = Md5::new();
    for p in parts {
        let hex = p.etag.trim_matches('"');
        if hex.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            md5s.update([u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()?]);
        }
    }
    let digest = md5s.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("\"{hex}-{}\"", parts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[usize], part_bytes: usize) -> Vec<(i32, usize)> {
        let mut n = 0u8;
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|&len| {
                n = n.wrapping_add(1);
                Ok(Bytes::from(vec![n; len]))
            })
            .collect();
        let mut s = PartSplitter {
            body: Box::pin(futures::stream::iter(chunks)),
            carry: Bytes::new(),
            part_bytes,
            next: 1,
            key: "k".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            while let Some((number, part)) = s.next_part().await.unwrap() {
                out.push((number, part.len()));
            }
            out
        })
    }

    #[test]
    fn splits_any_chunking_into_fixed_parts() {
        assert_eq!(split(&[3, 3, 3, 3], 5), [(1, 5), (2, 5), (3, 2)]);
        assert_eq!(split(&[12], 5), [(1, 5), (2, 5), (3, 2)]);
        assert_eq!(split(&[5, 5], 5), [(1, 5), (2, 5)]);
        assert_eq!(split(&[1, 0, 9, 0], 5), [(1, 5), (2, 5)]);
        assert!(split(&[], 5).is_empty());
    }

    #[test]
    fn too_many_parts_is_an_error() {
        let mut s = PartSplitter {
            body: Box::pin(futures::stream::iter([Ok(Bytes::from(vec![0u8; 10_001]))])),
            carry: Bytes::new(),
            part_bytes: 1,
            next: 1,
            key: "k".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(async {
            loop {
                match s.next_part().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("10 001 one-byte parts were accepted"),
                    Err(e) => break e,
                }
            }
        });
        assert!(err.to_string().contains("more than 10000 parts"), "{err}");
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        // Two parts "a" and "b": MD5("a") = 0cc175b9c0f1b6a831c399e269772661, MD5("b") = 92eb5ffee6ae2fec3ad71c777531578f.
        let parts = [
            SentPart { number: 1, etag: "\"0cc175b9c0f1b6a831c399e269772661\"".into(), len: 1 },
            SentPart { number: 2, etag: "\"92eb5ffee6ae2fec3ad71c777531578f\"".into(), len: 1 },
        ];
        let mut h = Md5::new();
        h.update(Md5::digest(b"a"));
        h.update(Md5::digest(b"b"));
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(multipart_etag(&parts), Some(format!("\"{want}-2\"")));
        let kms = [SentPart { number: 1, etag: "\"not-an-md5\"".into(), len: 1 }];
        assert_eq!(multipart_etag(&kms), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=3u32 {
            let d = backoff(base, attempt);
            let full = base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d < full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, 30) <= MAX_RETRY_DELAY);
    }
}
