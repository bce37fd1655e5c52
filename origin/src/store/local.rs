//! A store in a local directory: the key is the relative path. Writes go to a
//! temporary file beside the object and are renamed over it, so a reader
//! (or a crash) sees the old object or the new one, never a part.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use vod::range::ByteRange;
use vod::ObjectKey;

use super::mapped::{FileId, MapCache, MAP_AT_LEAST, MAP_WHOLE_MAX};
use super::{ByteStream, ObjectBody, ObjectMeta, ObjectReader, ObjectStore, StoreError};

/// Bytes read from disk per step of a streamed body. A 2 MB segment then
/// takes one blocking step (each hop to the blocking pool costs more than
/// the copy; `cargo xtask bench origin` measured 512 KiB/1 MiB/2 MiB at
/// 0.87/0.75/0.88 of nginx). Memory per connection stays bounded by one
/// chunk plus hyper's buffer; a client that stops reading is dropped after
/// the write stall timeout.
const READ_CHUNK: u64 = 2 * 1024 * 1024;

/// A store in a local directory; the key is the relative path.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    maps: Arc<MapCache>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").field("root", &self.root).finish_non_exhaustive()
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), maps: Arc::default() }
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
        io_err(&key.to_string(), source)
    }

    fn meta_of(m: &std::fs::Metadata) -> ObjectMeta {
        // Size plus modification time in nanoseconds, like nginx's ETag but
        // finer: every rewrite goes through a rename, so a changed object
        // gets a new mtime, and the ETag survives restarts.
        let modified = m.modified().ok();
        let mtime = modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        ObjectMeta { len: m.len(), etag: format!("\"{:x}-{:x}\"", mtime, m.len()), last_modified: modified }
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

    fn open_blocking(&self, key: &ObjectKey) -> Result<(std::fs::File, ObjectMeta), StoreError> {
        let (file, meta, _) = self.open_version(key)?;
        Ok((file, meta))
    }

    /// Opens an object's file: its metadata and the identity of this version.
    fn open_version(&self, key: &ObjectKey) -> Result<(std::fs::File, ObjectMeta, FileId), StoreError> {
        let file = std::fs::File::open(self.path_of(key)).map_err(|e| Self::io(key, e))?;
        let m = file.metadata().map_err(|e| Self::io(key, e))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        Ok((file, Self::meta_of(&m), FileId::of(&m)))
    }

    /// Every regular file under `prefix`, as sorted relative paths. Temporary
    /// files (dot names) of unfinished writes are not objects and are skipped.
    pub(crate) fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        let base = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join(base), base.to_owned())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&rel, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&rel, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let ty = entry.file_type().map_err(|e| io_err(&path, e))?;
                if ty.is_dir() {
                    if prefix.starts_with(&format!("{path}/")) || path.starts_with(prefix) {
                        stack.push((entry.path(), path));
                    }
                } else if ty.is_file() && path.starts_with(prefix) {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Refuses prefixes that could name something outside the store.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let hostile =
        prefix.starts_with('/') || prefix.contains(['\\', '\0']) || prefix.split('/').any(|s| s == ".." || s == ".");
    if hostile {
        return Err(StoreError::Config(format!("bad prefix {prefix:?}")));
    }
    Ok(())
}

fn io_err(key: &str, source: std::io::Error) -> StoreError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(key.to_owned())
    } else {
        StoreError::Io { key: key.to_owned(), source }
    }
}

async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io { key: key.to_owned(), source: std::io::Error::other(e) })?
}

/// An open file: the version that was current when it was opened, even if a
/// publish renames a new one over its path meanwhile.
struct LocalBody {
    key: ObjectKey,
    file: Arc<std::fs::File>,
    len: u64,
    id: FileId,
    maps: Arc<MapCache>,
}

/// `n` bytes of `file` at `pos`: small chunks copied, big ones mapped.
fn read_chunk(file: &std::fs::File, pos: u64, n: usize) -> std::io::Result<Bytes> {
    if n as u64 >= MAP_AT_LEAST {
        // SAFETY: the map is read-only and the store never changes a file in
        // place (writes go to a temporary file renamed over the object), so
        // its bytes stay as they are while mapped; the length check below
        // refuses a file that was cut short behind the store's back rather
        // than fault on the pages past its end.
        let map = unsafe { memmap2::MmapOptions::new().offset(pos).len(n).populate().map(file)? };
        if file.metadata()?.len() < pos + n as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "object file shrank while open"));
        }
        return Ok(Bytes::from_owner(map));
    }
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}

#[async_trait]
impl ObjectBody for LocalBody {
    async fn read(self: Box<Self>, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        let (start, end) = match range {
            Some(r) => (r.start, (r.end + 1).min(self.len)),
            None => (0, self.len),
        };
        if (MAP_AT_LEAST..=MAP_WHOLE_MAX).contains(&self.len) {
            // Sent as one slice of the file's kept map: hyper writes it out
            // from the page cache with no copy in between.
            let whole = match self.maps.get(&self.id) {
                Some(whole) => whole,
                None => {
                    let (maps, file, id, key) = (self.maps, self.file, self.id, self.key);
                    let name = key.to_string();
                    blocking(&name, move || maps.map(&file, id).map_err(|e| LocalStore::io(&key, e))).await?
                }
            };
            let part = whole.slice(start.min(end) as usize..end as usize);
            return Ok(Box::pin(futures::stream::once(async move { Ok(part) })));
        }
        let file = self.file;
        let stream = futures::stream::try_unfold(start, move |pos| {
            let file = file.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let n = READ_CHUNK.min(end - pos) as usize;
                let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, pos, n))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok(Some((chunk, pos + n as u64)))
            }
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &ObjectKey) -> Result<(Bytes, ObjectMeta), StoreError> {
        let this = self.clone();
        let k = key.clone();
        blocking(&key.to_string(), move || {
            let (file, meta) = this.open_blocking(&k)?;
            let mut buf = vec![0u8; meta.len as usize];
            file.read_exact_at(&mut buf, 0).map_err(|e| Self::io(&k, e))?;
            Ok((Bytes::from(buf), meta))
        })
        .await
    }

    async fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let this = self.clone();
        let k = key.clone();
        let (file, meta, id) = blocking(&key.to_string(), move || this.open_version(&k)).await?;
        let body =
            LocalBody { key: key.clone(), file: Arc::new(file), len: meta.len, id, maps: Arc::clone(&self.maps) };
        Ok(ObjectReader { meta, body: Box::new(body) })
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
        let k = key.clone();
        blocking(&key.to_string(), move || this.put_blocking(&k, &body)).await
    }

    async fn put_stream(&self, key: &ObjectKey, mut body: ByteStream) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        let path = self.path_of(key);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Self::io(key, e))?;
        let tmp = blocking(&key.to_string(), {
            let k = key.clone();
            move || tempfile::NamedTempFile::new_in(&dir).map_err(|e| Self::io(&k, e))
        })
        .await?;
        // The temporary path is removed on drop, so an error (or a dropped
        // future) leaves nothing behind but the old object.
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Self::io(key, e))?;
            file.write_all(&chunk).await.map_err(|e| Self::io(key, e))?;
        }
        file.sync_data().await.map_err(|e| Self::io(key, e))?;
        drop(file);
        tmp_path.persist(&path).map_err(|e| Self::io(key, e.error))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let this = self.clone();
        let p = prefix.to_owned();
        blocking(prefix, move || this.list_blocking(&p)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let this = self.clone();
        let p = prefix.to_owned();
        blocking(prefix, move || {
            let keys = this.list_blocking(&p)?;
            for k in &keys {
                match std::fs::remove_file(this.root.join(k)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(k, e)),
                }
            }
            Ok(keys.len() as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::collect;

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

    #[tokio::test]
    async fn ranged_stream_reads_the_version_that_was_opened() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let k = ObjectKey::parse("titles/t/hls/master.m3u8").unwrap();
        let old: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.put(&k, Bytes::from(old.clone())).await.unwrap();
        let reader = s.open(&k).await.unwrap();
        assert_eq!(reader.meta.len, old.len() as u64);
        // A republish while the reader is open does not change what it reads.
        s.put(&k, Bytes::from_static(b"new")).await.unwrap();
        let body = reader.read(Some(ByteRange { start: 1_000_000, end: 2_600_000 })).await.unwrap();
        assert_eq!(&collect(&k, body).await.unwrap()[..], &old[1_000_000..=2_600_000]);
        let (now, _) = s.get(&k).await.unwrap();
        assert_eq!(&now[..], b"new");
    }

    #[tokio::test]
    async fn a_file_cut_short_in_place_fails_the_read_instead_of_crashing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let k = ObjectKey::parse("titles/t/v1/1.m4s").unwrap();
        s.put(&k, Bytes::from(vec![7u8; 1_000_000])).await.unwrap();
        let reader = s.open(&k).await.unwrap();
        // Not how the store writes, but someone else may truncate the file.
        std::fs::OpenOptions::new().write(true).open(s.path_of(&k)).unwrap().set_len(10).unwrap();
        // The read fails, before the first byte or in the stream, and never faults.
        let err = match reader.read(None).await {
            Err(e) => e.to_string(),
            Ok(body) => collect(&k, body).await.unwrap_err().to_string(),
        };
        assert!(err.contains("changed while open"), "{err}");
        // Past the size that is mapped whole, chunks are mapped one by one, with the same check.
        let file = std::fs::File::open(s.path_of(&k)).unwrap();
        let err = read_chunk(&file, 0, MAP_AT_LEAST as usize).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[tokio::test]
    async fn a_hot_object_is_mapped_once_and_a_republished_one_anew() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let k = ObjectKey::parse("titles/t/v1/1.m4s").unwrap();
        let old: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        s.put(&k, Bytes::from(old.clone())).await.unwrap();
        for range in [None, Some(ByteRange { start: 10, end: 499_999 }), None] {
            let body = s.open(&k).await.unwrap().read(range).await.unwrap();
            let want = range.map_or(&old[..], |r| &old[r.start as usize..=r.end as usize]);
            assert_eq!(&collect(&k, body).await.unwrap()[..], want);
        }
        assert_eq!(s.maps.len(), 1);
        let new: Vec<u8> = old.iter().map(|b| b.wrapping_add(1)).collect();
        s.put(&k, Bytes::from(new.clone())).await.unwrap();
        let body = s.open(&k).await.unwrap().read(None).await.unwrap();
        assert_eq!(&collect(&k, body).await.unwrap()[..], &new[..]);
        assert_eq!(s.maps.len(), 2);
    }

    #[tokio::test]
    async fn put_stream_list_and_delete_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        for key in ["titles/a/v1/1.m4s", "titles/a/v1/2.m4s", "titles/a/catalog.json", "titles/ab/catalog.json"] {
            let k = ObjectKey::parse(key).unwrap();
            let chunks = futures::stream::iter(vec![Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cd"))]);
            s.put_stream(&k, Box::pin(chunks)).await.unwrap();
            assert_eq!(&s.get(&k).await.unwrap().0[..], b"abcd");
        }
        // A failed stream leaves no object and no temporary file.
        let k = ObjectKey::parse("titles/a/v1/3.m4s").unwrap();
        let failing = futures::stream::iter(vec![Ok(Bytes::from_static(b"x")), Err(std::io::Error::other("cut"))]);
        assert!(s.put_stream(&k, Box::pin(failing)).await.is_err());
        assert!(matches!(s.head(&k).await, Err(StoreError::NotFound(_))));
        assert_eq!(
            s.list("titles/a/").await.unwrap(),
            ["titles/a/catalog.json", "titles/a/v1/1.m4s", "titles/a/v1/2.m4s"]
        );
        assert_eq!(s.list("titles/a").await.unwrap().len(), 4);
        assert!(s.list("titles/../x").await.is_err());
        assert_eq!(s.delete_prefix("titles/a/").await.unwrap(), 3);
        assert_eq!(s.list("titles/").await.unwrap(), ["titles/ab/catalog.json"]);
    }
}
