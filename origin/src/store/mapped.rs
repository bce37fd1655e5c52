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
//!
//! Each kept map is registered with `svc::zerocopy` (with a descriptor of
//! its file, held as long as the map), so the server's connections send
//! slices of it with `sendfile`: the socket then holds the file's page-cache
//! pages, not a copy, until the peer has read them. That is safe because
//! the store publishes by rename: a published file's bytes never change, a
//! republish is a new inode, and the old inode's pages live on while a
//! socket or a map holds them. The one hazard is a file rewritten in place
//! under the store's root by something other than the store: bytes already
//! queued on a socket (in the peer's receive queue too, on loopback) would
//! then change under it, and a client could get a body mixing two versions
//! under one ETag. nginx with `sendfile on` has the same hazard; the
//! store's publisher never writes in place. Copying with `writev` instead
//! (`[limits] sendfile = false`) narrows the window to bytes not yet
//! written: they come from this map either way. A file cut short in place
//! while it is being sent makes `sendfile` come up short, which ends that
//! connection with an error.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
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

/// A whole-file map, registered for `sendfile` with its own descriptor of
/// the file. Fields drop in order: the registration goes before the map is
/// unmapped and the descriptor closed.
struct FileMap {
    _sendfile: svc::zerocopy::Registration,
    map: memmap2::Mmap,
    _file: std::fs::File,
}

impl FileMap {
    /// Maps `file` whole, read-only, and registers the map.
    ///
    /// # Safety
    ///
    /// The file's bytes must never change in place while the map or any
    /// socket may hold its pages (the store only renames whole files over
    /// objects; see the module doc).
    unsafe fn new(file: &std::fs::File, len: u64) -> std::io::Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "object too big to map"))?;
        let file = file.try_clone()?;
        // SAFETY: read-only; the caller promises the bytes never change in place.
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(&file)? };
        // SAFETY: `map` is a shared read-only map of `file` from offset 0, and
        // both outlive the registration (dropped first, see the field order).
        let reg = unsafe { svc::zerocopy::register(map.as_ptr(), map.len(), file.as_raw_fd(), 0) };
        Ok(Self { _sendfile: reg, map, _file: file })
    }
}

/// A whole-file map shared by the responses that slice it.
struct SharedMap(Arc<FileMap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

/// Hot whole-file maps by file identity.
#[derive(Default)]
pub(crate) struct MapCache {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    maps: HashMap<FileId, Arc<FileMap>>,
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
        // its bytes stay as they are while mapped or queued on a socket by
        // sendfile; the length check below refuses a file that was cut short
        // behind the store's back rather than fault on the pages past its end.
        let map = unsafe { FileMap::new(file, id.len)? };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_kept_map_is_registered_for_sendfile_until_its_last_user_drops_it() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        file.write_all(&data).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        let cache = MapCache::default();
        let whole = cache.map(&file, id).unwrap();
        assert!(whole == data);
        let span = svc::zerocopy::file_of(&whole[1000..]).expect("the kept map is not registered");
        assert_eq!(span.offset, 1000);
        assert_ne!(span.fd, file.as_raw_fd(), "the registration must hold its own descriptor");
        // The map's own descriptor survives the caller closing theirs.
        drop(file);
        // SAFETY: `span.fd` is open while `whole` holds the map.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(span.fd) };
        let dup = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        let mut back = vec![0u8; 10];
        std::os::unix::fs::FileExt::read_exact_at(&dup, &mut back, 1000).unwrap();
        assert_eq!(back, data[1000..1010]);
        // Evicted but still in use: still registered; once the last slice goes, no more.
        let part = whole.slice(5000..);
        drop(whole);
        drop(cache);
        assert!(svc::zerocopy::file_of(&part).is_some(), "a slice in use lost its registration");
        let addr = (part.as_ptr() as usize, part.len());
        drop(part);
        assert_eq!(svc::zerocopy::file_at(addr.0, addr.1), None, "the registration outlived the map");
    }
}
