//! Synchronous access to any store, for callers that are not async (the
//! encoder publishes from worker threads).

use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::{Handle, Runtime};
use vod::ObjectKey;

use super::location::StoreLocation;
use super::{LocalStore, ObjectStore, StoreError};

/// Where a publisher writes: whole objects, atomically, from plain threads.
pub trait PublishTarget: Send + Sync {
    /// Writes `body` under `key` atomically.
    fn put_blocking(&self, key: &ObjectKey, body: &[u8]) -> Result<(), StoreError>;
    /// True if `key` exists.
    fn exists_blocking(&self, key: &ObjectKey) -> Result<bool, StoreError>;
    /// Deletes every object whose key starts with `prefix`; returns how many.
    fn delete_prefix_blocking(&self, prefix: &str) -> Result<u64, StoreError>;
}

impl PublishTarget for LocalStore {
    fn put_blocking(&self, key: &ObjectKey, body: &[u8]) -> Result<(), StoreError> {
        LocalStore::put_blocking(self, key, body)
    }

    fn exists_blocking(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        match std::fs::metadata(self.path_of(key)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { key: key.to_string(), source }),
        }
    }

    fn delete_prefix_blocking(&self, prefix: &str) -> Result<u64, StoreError> {
        let keys = self.list_blocking(prefix)?;
        for k in &keys {
            match std::fs::remove_file(self.root().join(k)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { key: k.clone(), source }),
            }
        }
        Ok(keys.len() as u64)
    }
}

/// An async store driven from synchronous code on a runtime of its own (or a
/// borrowed one). Must not be used from inside that runtime's tasks.
pub struct BlockingStore {
    store: Arc<dyn ObjectStore>,
    handle: Handle,
    _runtime: Option<Runtime>,
}

impl std::fmt::Debug for BlockingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingStore").finish_non_exhaustive()
    }
}

impl BlockingStore {
    /// Opens `location` on a new runtime owned by the returned value.
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("starting a runtime: {e}")))?;
        let store = runtime.block_on(location.open())?;
        Ok(Self { store, handle: runtime.handle().clone(), _runtime: Some(runtime) })
    }

    /// Wraps `store`, driving it on the runtime behind `handle`.
    pub fn with_handle(store: Arc<dyn ObjectStore>, handle: Handle) -> Self {
        Self { store, handle, _runtime: None }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

impl PublishTarget for BlockingStore {
    fn put_blocking(&self, key: &ObjectKey, body: &[u8]) -> Result<(), StoreError> {
        self.handle.block_on(self.store.put(key, Bytes::copy_from_slice(body)))
    }

    fn exists_blocking(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        match self.handle.block_on(self.store.head(key)) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn delete_prefix_blocking(&self, prefix: &str) -> Result<u64, StoreError> {
        self.handle.block_on(self.store.delete_prefix(prefix))
    }
}
