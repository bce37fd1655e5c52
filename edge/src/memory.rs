//! The RAM tier: a byte-weighted moka cache (TinyLFU admission, LRU eviction).
//!
//! The same struct backs the server's RAM tier and both tiers of `edge replay`,
//! so replay measures the policy the server runs. It is moka's *sync* cache:
//! its operations never await, which lets the fill coalescer re-check the cache
//! under its own lock and lets replay run without a runtime. Coalescing of
//! concurrent misses lives in `fill`, not here, so a later disk tier can sit
//! between this tier and the upstream.
//!
//! Bodies of at least `MEMFD_MIN_BYTES` are held in a sealed memfd mapped
//! read-only (`memfd_body`) and registered with `svc::zerocopy`, so a hit
//! is sent with `sendfile` from the memfd's pages instead of being copied
//! into the socket. A memfd is never written again once sealed (a new
//! version of an object is a new memfd), so pages a socket still holds
//! keep their bytes whatever the cache does meanwhile. Smaller bodies, and
//! any body when a memfd cannot be made, stay on the heap. With `ram_dir`
//! set, large bodies go to unlinked files on that tmpfs instead (huge pages
//! when it is mounted with them; see `ram_dir`), and to a memfd only when a
//! file cannot be made there (`BodyStore`).

use std::hash::{BuildHasherDefault, DefaultHasher, Hash};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

/// What a tier needs to know about a value it holds.
pub trait TierValue: Clone + Send + Sync + 'static {
    /// Size charged against the tier's capacity.
    fn weight_bytes(&self) -> u64;
    /// How long the value may be served from the tier; `None` = until evicted.
    fn ttl(&self) -> Option<Duration> {
        None
    }
    /// The value as the tier keeps it (called on insert), large bodies moved to `bodies`.
    fn into_stored(self, _bodies: &BodyStore) -> Self {
        self
    }
}

/// A whole object held by the edge, as the upstream sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedObject {
    /// The complete body (never a truncated one: `fill` checks the length).
    pub body: Bytes,
    /// Strong ETag, quoted: the upstream's, or one derived from the body.
    pub etag: String,
    /// `Some` for manifests and catalogs, which a republish replaces in place.
    pub ttl: Option<Duration>,
}

impl TierValue for CachedObject {
    fn weight_bytes(&self) -> u64 {
        self.body.len() as u64
    }
    fn ttl(&self) -> Option<Duration> {
        self.ttl
    }
    fn into_stored(self, bodies: &BodyStore) -> Self {
        if self.body.len() < MEMFD_MIN_BYTES || svc::zerocopy::file_of(&self.body).is_some() {
            return self;
        }
        match bodies.body(&self.body) {
            Ok(body) => CachedObject { body, ..self },
            Err(e) => {
                tracing::debug!(error = %e, "RAM tier: no memfd for a body; kept on the heap");
                self
            }
        }
    }
}

/// Where the RAM tier puts bodies of at least `MEMFD_MIN_BYTES`: files in
/// `ram_dir` when one is set, else (and whenever that fails) memfds.
#[derive(Debug, Clone, Default)]
pub struct BodyStore {
    ram_dir: Option<Arc<crate::ram_dir::RamDir>>,
}

impl BodyStore {
    /// Bodies in memfds.
    pub fn memfd() -> Self {
        Self::default()
    }

    /// Bodies in files in `dir`, memfds when a file cannot be made there.
    pub fn in_dir(dir: crate::ram_dir::RamDir) -> Self {
        Self { ram_dir: Some(Arc::new(dir)) }
    }

    /// The `ram_dir`, if bodies go there.
    pub fn ram_dir(&self) -> Option<&crate::ram_dir::RamDir> {
        self.ram_dir.as_deref()
    }

    /// A registered read-only copy of `data`: in `ram_dir`, else in a memfd.
    pub fn body(&self, data: &[u8]) -> io::Result<Bytes> {
        if let Some(dir) = &self.ram_dir {
            match dir.body(data) {
                Ok(body) => return Ok(body),
                Err(e) => dir.note_failure(&e),
            }
        }
        memfd_body(data)
    }
}

/// Bodies at least this long live in a memfd (sent with `sendfile`); smaller
/// ones stay on the heap, where a `writev` copy costs less than the syscalls.
pub const MEMFD_MIN_BYTES: usize = 64 * 1024;

/// Mappings left for everything but the RAM tier's bodies (heap, stacks,
/// libraries, the disk tier's store files).
const OTHER_MAPPINGS: u64 = 4096;

/// Mappings a RAM tier of `ram_bytes` takes when full of the smallest bodies
/// that get one (`MEMFD_MIN_BYTES`), plus the process's others.
pub fn mappings_needed(ram_bytes: u64) -> u64 {
    ram_bytes / MEMFD_MIN_BYTES as u64 + OTHER_MAPPINGS
}

/// The kernel's per-process limit on mappings (`vm.max_map_count`).
pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?.trim().parse().ok()
}

/// A copy of `data` in a sealed memfd mapped read-only, registered for
/// zero-copy sends. Fails (and the caller keeps the heap copy) when the
/// process is out of descriptors or mappings.
pub fn memfd_body(data: &[u8]) -> io::Result<Bytes> {
    RAISE_NOFILE.call_once(raise_nofile_limit);
    if data.is_empty() {
        return Ok(Bytes::new());
    }
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: a valid C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"edge-object".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an open descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    mapped_body(file, data.len())
}

/// `len` bytes of `file` from offset 0, mapped read-only and registered for
/// zero-copy sends. The caller promises that nothing writes to `file` again
/// (a sealed memfd; an unlinked file only a read-only descriptor reaches).
pub(crate) fn mapped_body(file: std::fs::File, len: usize) -> io::Result<Bytes> {
    RAISE_NOFILE.call_once(raise_nofile_limit);
    // SAFETY: a new read-only shared mapping of the whole (never again written) file.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the range is a read-only shared mapping of `file` from offset 0,
    // nothing writes the file again (the caller's promise), and `MemfdBody`
    // drops the registration before it unmaps the range and closes the file.
    let registration = unsafe { svc::zerocopy::register(ptr as *const u8, len, file.as_raw_fd(), 0) };
    Ok(Bytes::from_owner(MemfdBody { ptr, len, registration: Some(registration), _file: file }))
}

/// A never-again-written file's read-only mapping (a sealed memfd or a
/// `ram_dir` file); unregistered, unmapped and closed on drop.
struct MemfdBody {
    ptr: *mut libc::c_void,
    len: usize,
    registration: Option<svc::zerocopy::Registration>,
    _file: std::fs::File,
}

// SAFETY: the mapping is read-only and lives until drop; nothing else aliases it mutably.
unsafe impl Send for MemfdBody {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for MemfdBody {}

impl AsRef<[u8]> for MemfdBody {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped readable until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for MemfdBody {
    fn drop(&mut self) {
        // No lookup may find the range once it is unmapped.
        drop(self.registration.take());
        // SAFETY: the mapping was made with this address and length and is unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

static RAISE_NOFILE: Once = Once::new();

/// Each RAM tier object above `MEMFD_MIN_BYTES` holds a descriptor: raise the
/// soft `RLIMIT_NOFILE` to the hard limit (once per process).
fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!(error = %io::Error::last_os_error(), "cannot raise RLIMIT_NOFILE");
            }
        }
    }
}

/// Per-entry expiry from `TierValue::ttl`; an update restarts the clock.
struct ValueTtl;

impl<K, V: TierValue> Expiry<K, V> for ValueTtl {
    fn expire_after_create(&self, _key: &K, value: &V, _created_at: Instant) -> Option<Duration> {
        value.ttl()
    }
    fn expire_after_update(&self, _key: &K, value: &V, _at: Instant, _left: Option<Duration>) -> Option<Duration> {
        value.ttl()
    }
}

// A fixed-key SipHash rather than a random seed: replay of one log gives the
// same figures on every run. Flooding one hash bucket would need many distinct
// keys that exist upstream, since only fetched objects are ever inserted.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// A byte-weighted cache tier of `capacity_bytes`.
pub struct MemoryTier<K, V> {
    cache: Cache<K, V, FixedHasher>,
    capacity_bytes: u64,
    bodies: BodyStore,
}

impl<K, V> MemoryTier<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: TierValue,
{
    /// An empty tier holding at most `capacity_bytes` of values (large bodies in memfds).
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_bodies(capacity_bytes, BodyStore::memfd())
    }

    /// An empty tier that keeps large bodies in `bodies`.
    pub fn with_bodies(capacity_bytes: u64, bodies: BodyStore) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            // moka weighs in u32; objects here are far below 4 GiB, and a larger
            // one saturates, which still keeps it out of any realistic tier.
            .weigher(|_k: &K, v: &V| u32::try_from(v.weight_bytes()).unwrap_or(u32::MAX))
            .expire_after(ValueTtl)
            .build_with_hasher(FixedHasher::default());
        Self { cache, capacity_bytes, bodies }
    }

    /// Where this tier keeps large bodies.
    pub fn bodies(&self) -> &BodyStore {
        &self.bodies
    }

    /// The value under `key`, if held and fresh. Counts as an access for admission.
    pub fn get(&self, key: &K) -> Option<V> {
        self.cache.get(key)
    }

    /// Offers `value` to the tier. The admission policy may still turn it away
    /// when the tier is full and the key is colder than what it would evict.
    pub fn insert(&self, key: K, value: V) {
        self.cache.insert(key, value.into_stored(&self.bodies));
    }

    /// Drops `key` from the tier.
    pub fn remove(&self, key: &K) {
        self.cache.invalidate(key);
    }

    /// Drops every key for which `pred` holds; returns how many.
    pub fn remove_where(&self, pred: impl Fn(&K) -> bool) -> u64 {
        let doomed: Vec<K> = self.cache.iter().filter(|(k, _)| pred(k)).map(|(k, _)| K::clone(&k)).collect();
        for k in &doomed {
            self.cache.invalidate(k);
        }
        doomed.len() as u64
    }

    /// Every key held (a snapshot; O(entries)).
    pub fn keys(&self) -> Vec<K> {
        self.cache.iter().map(|(k, _)| K::clone(&k)).collect()
    }

    /// Applies pending admissions and evictions now, so sizes and the next
    /// lookups are exact (moka otherwise batches this work).
    pub fn settle(&self) {
        self.cache.run_pending_tasks();
    }

    /// Bytes held (exact after `settle`).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Objects held (exact after `settle`).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The configured capacity.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(n: usize) -> CachedObject {
        CachedObject { body: Bytes::from(vec![7u8; n]), etag: "\"e\"".into(), ttl: None }
    }

    #[test]
    fn holds_objects_and_stays_within_its_byte_capacity() {
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(1000);
        for i in 0..50 {
            tier.insert(format!("k{i}"), obj(100));
            tier.settle();
        }
        assert!(tier.weighted_bytes() <= 1000, "{} bytes held", tier.weighted_bytes());
        assert!(tier.entries() <= 10);
        // A model check: whatever the tier returns is what was inserted under that key.
        for i in 0..50 {
            if let Some(v) = tier.get(&format!("k{i}")) {
                assert_eq!(v, obj(100));
            }
        }
    }

    #[test]
    fn an_object_larger_than_the_tier_is_not_kept() {
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(10);
        tier.insert("big".into(), obj(11));
        tier.settle();
        assert!(tier.get(&"big".to_string()).is_none());
        assert_eq!(tier.weighted_bytes(), 0);
    }

    #[test]
    fn values_with_a_zero_ttl_are_never_served() {
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(1000);
        tier.insert("m".into(), CachedObject { ttl: Some(Duration::ZERO), ..obj(5) });
        tier.insert("s".into(), obj(5));
        assert!(tier.get(&"m".to_string()).is_none());
        assert!(tier.get(&"s".to_string()).is_some());
    }

    #[test]
    fn large_bodies_move_to_a_registered_memfd_and_small_ones_stay_on_the_heap() {
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(10 << 20);
        let big: Vec<u8> = (0..MEMFD_MIN_BYTES * 3).map(|i| (i % 241) as u8).collect();
        tier.insert("big".into(), CachedObject { body: Bytes::from(big.clone()), ..obj(0) });
        tier.insert("small".into(), obj(MEMFD_MIN_BYTES - 1));
        let got = tier.get(&"big".to_string()).unwrap();
        assert_eq!(&got.body[..], &big[..]);
        let span = svc::zerocopy::file_of(&got.body).expect("a large body is a view of a memfd");
        assert_eq!(span.offset, 0);
        let slice = got.body.slice(1000..5000);
        assert_eq!(svc::zerocopy::file_of(&slice).map(|s| (s.fd, s.offset)), Some((span.fd, 1000)));
        let link = std::fs::read_link(format!("/proc/self/fd/{}", span.fd)).unwrap();
        assert!(link.to_string_lossy().starts_with("/memfd:edge-object"), "{}", link.display());
        // Sealed: nobody can change the bytes a socket may still reference.
        let seals = unsafe { libc::fcntl(span.fd, libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        assert!(svc::zerocopy::file_of(&tier.get(&"small".to_string()).unwrap().body).is_none());
        // Gone from the tier and from every clone: unregistered, unmapped, closed.
        let addr = got.body.as_ptr() as usize;
        tier.remove(&"big".to_string());
        tier.settle();
        drop((got, slice));
        // (Another test may map something new at the same address; not this memfd at offset 0.)
        assert_ne!(svc::zerocopy::file_at(addr, 1), Some(span), "still registered after the last clone went");
    }

    /// Out of descriptors (as out of mappings past `vm.max_map_count`), large
    /// bodies stay whole on the heap. Runs in a child process of this test
    /// binary, since the limit applies to the whole process.
    #[test]
    fn out_of_descriptors_large_bodies_stay_whole_on_the_heap() {
        const CHILD: &str = "EDGE_TEST_LOW_NOFILE_CHILD";
        let name = "memory::tests::out_of_descriptors_large_bodies_stay_whole_on_the_heap";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            assert!(text.contains("in memfds: 0 < n < 100"), "{text}");
            return;
        }
        // Hard limit: the tier cannot raise it again. Leave a few above what is open now.
        let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let lim = libc::rlimit { rlim_cur: open_now + 20, rlim_max: open_now + 20 };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(100 << 20);
        let body = |n: usize| -> Vec<u8> { (0..MEMFD_MIN_BYTES + n).map(|i| ((i + n) % 251) as u8).collect() };
        for n in 0..100 {
            tier.insert(format!("k{n}"), CachedObject { body: Bytes::from(body(n)), ..obj(0) });
        }
        let mut in_memfds = 0;
        for n in 0..100 {
            let got = tier.get(&format!("k{n}")).expect("every insert is held");
            assert!(got.body[..] == body(n)[..], "body {n} differs");
            in_memfds += usize::from(svc::zerocopy::file_of(&got.body).is_some());
        }
        assert!(in_memfds > 0 && in_memfds < 100, "{in_memfds} of 100 in memfds");
        eprintln!("in memfds: 0 < n < 100 ({in_memfds})");
    }

    #[test]
    fn bodies_go_to_ram_dir_files_and_to_memfds_once_the_directory_is_gone() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm here; skipped");
            return;
        };
        let ram_dir = crate::ram_dir::RamDir::open(dir.path()).unwrap();
        let tier: MemoryTier<String, CachedObject> = MemoryTier::with_bodies(10 << 20, BodyStore::in_dir(ram_dir));
        let big: Vec<u8> = (0..MEMFD_MIN_BYTES * 2).map(|i| (i % 239) as u8).collect();
        let target = |v: &CachedObject| {
            let span = svc::zerocopy::file_of(&v.body).expect("a large body is registered");
            std::fs::read_link(format!("/proc/self/fd/{}", span.fd)).unwrap()
        };
        tier.insert("a".into(), CachedObject { body: Bytes::from(big.clone()), ..obj(0) });
        let a = tier.get(&"a".to_string()).unwrap();
        assert!(a.body[..] == big[..]);
        assert!(target(&a).starts_with(dir.path()), "{}", target(&a).display());
        let path = dir.path().to_owned();
        dir.close().unwrap();
        tier.insert("b".into(), CachedObject { body: Bytes::from(big.clone()), ..obj(0) });
        let b = tier.get(&"b".to_string()).unwrap();
        assert!(b.body[..] == big[..]);
        assert!(target(&b).to_string_lossy().starts_with("/memfd:"), "{}", target(&b).display());
        // The body made before the directory went is still whole.
        assert!(a.body[..] == big[..] && !path.exists());
    }

    #[test]
    fn remove_drops_the_key() {
        let tier: MemoryTier<String, CachedObject> = MemoryTier::new(1000);
        tier.insert("k".into(), obj(5));
        tier.remove(&"k".to_string());
        assert!(tier.get(&"k".to_string()).is_none());
        tier.insert("a1".into(), obj(5));
        tier.insert("a2".into(), obj(5));
        tier.insert("b1".into(), obj(5));
        assert_eq!(tier.remove_where(|k| k.starts_with('a')), 2);
        assert!(tier.get(&"a1".to_string()).is_none() && tier.get(&"b1".to_string()).is_some());
    }
}
