//! Incomplete multipart uploads. A publisher killed mid-upload leaves its
//! parts in the bucket: invisible to readers, but stored (and billed) until
//! the upload is aborted. These find them under the store's prefix and abort
//! the ones older than a bound, so uploads still under way are left alone.

use std::time::{Duration, SystemTime};

use super::{remote, S3Store};
use crate::store::location::StoreLocation;
use crate::store::StoreError;

/// An incomplete multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The object key, relative to the store's prefix.
    pub key: String,
    pub upload_id: String,
    /// When the upload was started, as S3 reports it.
    pub initiated: Option<SystemTime>,
}

/// What `abort_stale_uploads` did.
#[derive(Debug, Default)]
pub struct StaleUploadReport {
    /// Uploads aborted (or, in a dry run, that would be).
    pub aborted: Vec<PendingUpload>,
    /// Uploads left alone because they are younger than the bound (or of unknown age).
    pub kept: Vec<PendingUpload>,
    /// Uploads whose abort failed, with the reason.
    pub failed: Vec<(PendingUpload, String)>,
}

impl S3Store {
    /// Every incomplete multipart upload under the store's prefix.
    pub async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| remote(&format!("s3://{}/{}", self.bucket, self.prefix), e))?;
            for u in page.uploads() {
                let (Some(key), Some(upload_id)) = (u.key(), u.upload_id()) else { continue };
                let Some(key) = key.strip_prefix(&self.prefix) else { continue };
                out.push(PendingUpload {
                    key: key.to_owned(),
                    upload_id: upload_id.to_owned(),
                    initiated: u.initiated().and_then(|d| SystemTime::try_from(*d).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Aborts one incomplete upload; one already gone counts as aborted.
    pub async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.s3_key(&upload.key))
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match aborted {
            Ok(_) => Ok(()),
            Err(e) => match remote(&upload.key, e) {
                StoreError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Aborts the incomplete uploads under the prefix started more than
    /// `older_than` before `now` (only lists them when `dry_run`).
    pub async fn abort_stale_uploads(
        &self,
        older_than: Duration,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<StaleUploadReport, StoreError> {
        let mut report = StaleUploadReport::default();
        for upload in self.pending_uploads().await? {
            // A start time ahead of `now` (clock skew) counts as age zero.
            let stale = upload.initiated.is_some_and(|t| now.duration_since(t).unwrap_or(Duration::ZERO) >= older_than);
            if !stale {
                report.kept.push(upload);
                continue;
            }
            if dry_run {
                report.aborted.push(upload);
                continue;
            }
            match self.abort_upload(&upload).await {
                Ok(()) => report.aborted.push(upload),
                Err(e) => {
                    tracing::warn!(key = %upload.key, upload_id = %upload.upload_id, error = %e, "abort failed");
                    report.failed.push((upload, e.to_string()));
                }
            }
        }
        Ok(report)
    }
}

/// Incomplete uploads older than this are aborted when a publisher starts:
/// far longer than any one object takes to upload, so a publisher still
/// running elsewhere is never cut off.
pub const PUBLISHER_GC_AGE: Duration = Duration::from_secs(24 * 3600);

/// For a publisher's start: aborts the incomplete uploads older than
/// `older_than` that killed publishers left under `location` (a directory
/// store has none) and logs what it did. Never fails: cleanup must not keep
/// a publisher from starting, so errors are logged and `None` returned.
pub async fn collect_stale_uploads(location: &StoreLocation, older_than: Duration) -> Option<StaleUploadReport> {
    let StoreLocation::S3 { bucket, prefix } = location else { return None };
    let store = match S3Store::from_env(bucket, prefix).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(store = %location, error = %e, "cannot open the store to collect stale uploads");
            return None;
        }
    };
    match store.abort_stale_uploads(older_than, SystemTime::now(), false).await {
        Ok(report) => {
            for u in &report.aborted {
                tracing::info!(store = %location, key = %u.key, upload_id = %u.upload_id, "aborted a stale multipart upload");
            }
            Some(report)
        }
        Err(e) => {
            tracing::warn!(store = %location, error = %e, "listing stale multipart uploads failed");
            None
        }
    }
}
