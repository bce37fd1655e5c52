//! Object stores keyed by `ObjectKey`.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use vod::ObjectKey;

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
}

/// Size and validator of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub len: u64,
    /// Strong ETag, quoted.
    pub etag: String,
}

/// A place objects are written to and read from.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Reads a whole object.
    async fn get(&self, key: &ObjectKey) -> Result<(Bytes, ObjectMeta), StoreError>;
    /// Size and ETag without the body.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError>;
    /// Writes an object atomically: readers see the old state or the whole new object.
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError>;
}

/// A store in a local directory; the key is the relative path.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory objects live under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of a key. Keys are validated by `ObjectKey::parse`, so the
    /// path never leaves `root`.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.to_string())
    }

    fn io(key: &ObjectKey, source: std::io::Error) -> StoreError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound(key.to_string())
        } else {
            StoreError::Io { key: key.to_string(), source }
        }
    }

    fn meta_of(m: &std::fs::Metadata) -> ObjectMeta {
        // Size plus modification time in nanoseconds, as nginx does: every
        // rewrite goes through a rename, so a changed object gets a new mtime.
        let mtime =
            m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        ObjectMeta { len: m.len(), etag: format!("\"{:x}-{:x}\"", mtime, m.len()) }
    }

    /// Synchronous atomic write, for callers outside a runtime.
    pub fn put_blocking(&self, key: &ObjectKey, body: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| Self::io(key, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Self::io(key, e))?;
        tmp.write_all(body).map_err(|e| Self::io(key, e))?;
        tmp.as_file().sync_data().map_err(|e| Self::io(key, e))?;
        tmp.persist(&path).map_err(|e| Self::io(key, e.error))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &ObjectKey) -> Result<(Bytes, ObjectMeta), StoreError> {
        let path = self.path_of(key);
        let file = tokio::fs::File::open(&path).await.map_err(|e| Self::io(key, e))?;
        let m = file.metadata().await.map_err(|e| Self::io(key, e))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        let meta = Self::meta_of(&m);
        let mut buf = Vec::with_capacity(m.len() as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::BufReader::new(file), &mut buf)
            .await
            .map_err(|e| Self::io(key, e))?;
        Ok((Bytes::from(buf), meta))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError> {
        let m = tokio::fs::metadata(self.path_of(key)).await.map_err(|e| Self::io(key, e))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        Ok(Self::meta_of(&m))
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        let this = self.clone();
        let key2 = key.clone();
        tokio::task::spawn_blocking(move || this.put_blocking(&key2, &body))
            .await
            .map_err(|e| StoreError::Io { key: key.to_string(), source: std::io::Error::other(e) })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_head_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let k = ObjectKey::parse("titles/t/v1/1.m4s").unwrap();
        assert!(matches!(s.get(&k).await, Err(StoreError::NotFound(_))));
        s.put(&k, Bytes::from_static(b"hello")).await.unwrap();
        let (b, m) = s.get(&k).await.unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(m.len, 5);
        assert_eq!(s.head(&k).await.unwrap(), m);
        // No temporary files are left beside the object.
        let n = std::fs::read_dir(dir.path().join("titles/t/v1")).unwrap().count();
        assert_eq!(n, 1);
    }
}
