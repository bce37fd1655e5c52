//! Read-only maps of object files, kept while they are hot, so a segment
//! served again and again is mapped once and each response is a slice of
//! the map: no read into a buffer, no map and unmap per request. Reading a
//! 2 MB segment into a fresh buffer (zeroing, page faults, the copy) was
//! ~40% of the origin's CPU; mapping it per request still spent a quarter
//! on mapping and unmapping.
//!
//! A map is found by the identity of the open file (device, inode, size,
//! modification time): a republished object is a new file, so it never
//! matches the old map, and a live map keeps its inode from being reused.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Files at most this big are mapped whole and kept; bigger ones are read
/// chunk by chunk and not kept.
pub(crate) const MAP_WHOLE_MAX: u64 = 64 * 1024 * 1024;

/// Files smaller than this are read into memory: a map costs more than the copy.
pub(crate) const MAP_AT_LEAST: u64 = 128 * 1024;

/// Mapped bytes kept at most (address space; the pages are the page cache's).
const KEEP_BYTES: u64 = 512 * 1024 * 1024;

/// Which file version a map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

impl FileId {
    /// The identity of an open file's current version.
    pub(crate) fn of(m: &std::fs::Metadata) -> Self {
        Self { dev: m.dev(), ino: m.ino(), len: m.len(), mtime_s: m.mtime(), mtime_ns: m.mtime_nsec() }
    }
}

/// A whole-file map shared by the responses that slice it.
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Hot whole-file maps by file identity.
#[derive(Default)]
pub(crate) struct MapCache {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    maps: HashMap<FileId, Arc<memmap2::Mmap>>,
    bytes: u64,
}

impl MapCache {
    /// The whole file as `Bytes`, if it is mapped already.
    pub(crate) fn get(&self, id: &FileId) -> Option<Bytes> {
        let kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        kept.maps.get(id).map(|m| Bytes::from_owner(SharedMap(Arc::clone(m))))
    }

    /// Maps `file` whole (blocking: the pages are read in now), keeps the map
    /// and returns it as `Bytes`.
    pub(crate) fn map(&self, file: &std::fs::File, id: FileId) -> std::io::Result<Bytes> {
        // SAFETY: the map is read-only and the store never changes a file in
        // place (writes go to a temporary file renamed over the object), so
        // its bytes stay as they are while mapped; the length check below
        // refuses a file that was cut short behind the store's back rather
        // than fault on the pages past its end.
        let map = unsafe { memmap2::MmapOptions::new().len(id.len as usize).populate().map(file)? };
        let now = file.metadata()?;
        if FileId::of(&now) != id {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "object file changed while open"));
        }
        let map = Arc::new(map);
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.maps.contains_key(&id) {
            // Any entry makes room: a map still in use stays alive in its responses.
            while kept.bytes + id.len > KEEP_BYTES {
                let Some(victim) = kept.maps.keys().next().copied() else { break };
                kept.maps.remove(&victim);
                kept.bytes -= victim.len;
            }
            kept.bytes += id.len;
            kept.maps.insert(id, Arc::clone(&map));
        }
        Ok(Bytes::from_owner(SharedMap(map)))
    }

    /// How many maps are kept (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).maps.len()
    }
}
