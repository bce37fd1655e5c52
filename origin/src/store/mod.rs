//! Object stores keyed by `ObjectKey`: a local directory (default) and S3.
//!
//! Reads are two steps so a server can decide what to send from the
//! object's metadata before touching its bytes: `open` pins one version of
//! the object and returns its `ObjectMeta`; `ObjectReader::read` then streams
//! the whole object or one range of *that* version, never a mix of two.

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use vod::range::ByteRange;
use vod::ObjectKey;

pub mod blocking;
mod local;
pub mod location;
mod mapped;
pub mod s3;

pub use blocking::{BlockingStore, PublishTarget};
pub use local::LocalStore;
pub use s3::S3Store;

/// What went wrong in a store. `NotFound` is the only expected one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("store I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote store (S3) refused or failed a request.
    #[error("store request for {key} failed: {reason}")]
    Remote { key: String, reason: String },
    /// The store location or its configuration is unusable.
    #[error("store configuration: {0}")]
    Config(String),
}

/// Size and validators of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub len: u64,
    /// Strong ETag, quoted.
    pub etag: String,
    /// When this version was written, if the store knows.
    pub last_modified: Option<SystemTime>,
}

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// One version of one object, opened for reading.
#[async_trait]
pub trait ObjectBody: Send {
    /// Streams `range` (or the whole object) of the opened version.
    async fn read(self: Box<Self>, range: Option<ByteRange>) -> Result<ByteStream, StoreError>;
}

/// An opened object: its metadata now, its bytes when asked.
pub struct ObjectReader {
    pub meta: ObjectMeta,
    pub body: Box<dyn ObjectBody>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").field("meta", &self.meta).finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// Streams `range` (or everything) of the opened version.
    pub async fn read(self, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        self.body.read(range).await
    }
}

/// A place objects are written to and read from.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Reads a whole object into memory (manifests, catalogs; not for big media).
    async fn get(&self, key: &ObjectKey) -> Result<(Bytes, ObjectMeta), StoreError>;
    /// Opens one version of an object for streaming reads.
    async fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError>;
    /// Size and validators without the body.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError>;
    /// Writes an object atomically: readers see the old state or the whole new object.
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError>;
    /// Writes an object from a stream, atomically, without holding it all in memory.
    async fn put_stream(&self, key: &ObjectKey, body: ByteStream) -> Result<(), StoreError>;
    /// Every stored key (as a relative path) that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes every object under `prefix`; returns how many were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;
}

/// Collects a stream into memory (for stores whose small objects are sent in one request).
pub async fn collect(key: &ObjectKey, mut body: ByteStream) -> Result<Bytes, StoreError> {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| StoreError::Io { key: key.to_string(), source })?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
