//! Where a store lives, as operators write it: a directory path, or
//! `s3://bucket/prefix` (endpoint, region, credentials and path-style from
//! the usual AWS environment).

use std::path::PathBuf;
use std::sync::Arc;

use super::{LocalStore, ObjectStore, StoreError};

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket and a key prefix ("" or ending in `/`).
    S3 { bucket: String, prefix: String },
}

impl StoreLocation {
    /// Parses `s3://bucket[/prefix]` or a directory path.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let Some(rest) = s.strip_prefix("s3://") else {
            if s.is_empty() {
                return Err(StoreError::Config("empty store location".into()));
            }
            return Ok(Self::Local(PathBuf::from(s)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(StoreError::Config(format!("bad S3 bucket name {bucket:?} in {s:?}")));
        }
        let prefix = prefix.trim_matches('/');
        super::local::check_prefix(prefix)?;
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(Self::S3 { bucket: bucket.to_owned(), prefix })
    }

    /// Opens the store (for S3: loads the AWS configuration from the environment).
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        match self {
            Self::Local(dir) => Ok(Arc::new(LocalStore::new(dir))),
            Self::S3 { bucket, prefix } => Ok(Arc::new(super::S3Store::from_env(bucket, prefix).await?)),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dirs_and_s3_urls() {
        assert_eq!(StoreLocation::parse("/srv/store").unwrap(), StoreLocation::Local("/srv/store".into()));
        assert_eq!(
            StoreLocation::parse("s3://vod-lib/prod/").unwrap(),
            StoreLocation::S3 { bucket: "vod-lib".into(), prefix: "prod/".into() }
        );
        assert_eq!(
            StoreLocation::parse("s3://vod-lib").unwrap(),
            StoreLocation::S3 { bucket: "vod-lib".into(), prefix: String::new() }
        );
        assert!(StoreLocation::parse("s3://Bad_Bucket/x").is_err());
        assert!(StoreLocation::parse("s3://bucket/../x").is_err());
        assert!(StoreLocation::parse("").is_err());
    }
}
