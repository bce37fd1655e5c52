//! The disk tier: one preallocated store file mapped with memmap2, laid out
//! and evicted by `disk_log`, with a journal that makes the index survive
//! restarts and a CRC-32 per object that is checked on the first read after
//! a start.
//!
//! Files under the tier's directory:
//!
//! - `store.bin` — `capacity` bytes (set with `set_len`, so sparse until
//!   written); objects sit at the offsets `disk_log` picks.
//! - `index.journal` — text lines, each ending in the CRC-32 of the line:
//!   `layout` (capacity, region size) first, then `add` (key, offset, length,
//!   CRC of the body, ETag, seq, pinned) and `del` records. A torn last line
//!   fails its CRC and is ignored. The journal is rewritten compactly on
//!   every start and whenever it grows past a few times the live entries.
//!
//! Crash safety: bodies are written before their `add` record and `del`
//! records are written before a region is overwritten, so after a SIGKILL
//! the journal never names bytes that were not written. After a power loss
//! either could be missing or stale; the body CRC, checked on the first read
//! after a start, turns that into a miss (dropped, refetched), never into a
//! wrong byte on the wire. Nothing is fsynced: a lost tail costs refetches.
//!
//! Hits are `Bytes` slices of the map (no copy). Each slice holds a lease on
//! its region, and a region with leases out is never reclaimed, so a slow
//! client never sees its bytes change under it.
//!
//! The map is registered with `svc::zerocopy`, so the serve loop sends hits
//! with `sendfile` from the store file's pages. A socket then references
//! those pages after the slice (and its lease) is gone: in its send queue,
//! and on loopback in the peer's receive queue until the peer reads, where
//! no `SIOCOUTQ` can see it. So the store never overwrites bytes that may
//! have been sent in place: when a region is reclaimed, its kept objects
//! are read out, the region is punched (`FALLOC_FL_PUNCH_HOLE`: the old
//! pages leave the file but live on, unchanged, as long as a socket holds
//! them) and the kept objects are written back to fresh pages. Appends
//! between reclaims only write bytes that no object has used since the
//! punch. Without hole punching (or with regions that are not whole pages)
//! the map is not registered and hits are copied as before.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use memmap2::Mmap;
use vod::ObjectKey;

use crate::disk_journal::{read_journal, write_snapshot, Record, JOURNAL_FILE};
use crate::disk_log::{region_bytes_for, DiskPolicy, LogIndex, LogStats, Refusal};
use crate::error::EdgeError;

const STORE_FILE: &str = "store.bin";

fn now_unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Settings of one disk tier.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Directory holding the store file and its journal.
    pub dir: PathBuf,
    /// Size of the store file.
    pub capacity_bytes: u64,
    /// Region size; `None` picks `disk_log::region_bytes_for(capacity)`.
    pub region_bytes: Option<u64>,
    /// Admission and eviction policy.
    pub policy: DiskPolicy,
}

impl DiskConfig {
    /// A tier in `dir` of `capacity_bytes` with the default region size and the frequency policy.
    pub fn new(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Self {
        Self { dir: dir.into(), capacity_bytes, region_bytes: None, policy: DiskPolicy::Frequency }
    }
}

/// An object read from the disk tier.
#[derive(Debug, Clone)]
pub struct DiskObject {
    /// The body: a slice of the map, not a copy.
    pub body: Bytes,
    /// Strong ETag, quoted.
    pub etag: String,
}

/// What became of an offered object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written (or already held with the same bytes).
    Yes,
    /// The policy turned it away.
    Refused(Refusal),
}

/// Counters of one disk tier.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub hits: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub refused: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt_dropped: AtomicU64,
}

pub(crate) struct Meta {
    pub(crate) crc: u32,
    pub(crate) etag: String,
    /// False for entries loaded from the journal until their first read checks the CRC.
    pub(crate) verified: bool,
    /// When the object's pin lapses (Unix seconds), for pins that come with a plan's end.
    pub(crate) pin_until: Option<u64>,
}

struct DiskState {
    index: LogIndex<ObjectKey>,
    meta: HashMap<ObjectKey, Meta>,
    /// One per region; a clone is held by every slice handed out of that region.
    leases: Vec<Arc<()>>,
    journal: File,
    journal_records: u64,
    /// The earliest `pin_until` of any pinned object, so inserts check expiry in O(1).
    next_pin_expiry: Option<u64>,
    /// Where the last object placed ends (`None` until the first insert after a
    /// start): an insert placed elsewhere, or at a region's start, reclaimed regions.
    head_end: Option<u64>,
}

/// The store's mapping, with the descriptor `sendfile` reads it through.
/// Fields drop in order: the registration goes before the map and the file.
struct StoreMap {
    registration: Option<svc::zerocopy::Registration>,
    map: Mmap,
    _file: File,
}

impl std::ops::Deref for StoreMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl StoreMap {
    /// Whether hits may be sent with `sendfile` (and reclaims must punch).
    fn zero_copy(&self) -> bool {
        self.registration.is_some()
    }
}

/// The disk tier.
pub struct DiskTier {
    dir: PathBuf,
    map: Arc<StoreMap>,
    store: File,
    state: Mutex<DiskState>,
    counters: DiskCounters,
    loaded_entries: u64,
}

/// A region of the map kept alive (and its region un-reclaimable) while a body is out.
struct MapSlice {
    map: Arc<StoreMap>,
    _lease: Arc<()>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

impl DiskTier {
    /// Opens (or creates) the tier in `cfg.dir`, reloading its journal.
    pub fn open(cfg: &DiskConfig) -> Result<Self, EdgeError> {
        let capacity = cfg.capacity_bytes;
        if capacity == 0 {
            return Err(EdgeError::Config("disk_bytes must be above 0".into()));
        }
        let region_bytes = cfg.region_bytes.unwrap_or_else(|| region_bytes_for(capacity)).clamp(1, capacity);
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| EdgeError::io(format!("creating disk tier directory {}", cfg.dir.display()), e))?;
        let store_path = cfg.dir.join(STORE_FILE);
        let io = |what: &str, e| EdgeError::io(format!("{what} {}", store_path.display()), e);
        let store = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&store_path)
            .map_err(|e| io("opening", e))?;
        let len = store.metadata().map_err(|e| io("reading the size of", e))?.len();
        if len != capacity {
            // A truncated store grows back with zeros; the CRCs reject what was lost.
            store.set_len(capacity).map_err(|e| io("sizing", e))?;
        }
        // SAFETY: the file is private to this tier. Regions are only rewritten
        // when no slice of them is out (leases), so handed-out bytes never
        // change. Another process truncating the file would still fault the
        // map (SIGBUS); the store directory is the edge's own.
        let map = unsafe { Mmap::map(&store) }.map_err(|e| io("mapping", e))?;
        let mut index = LogIndex::new(capacity, region_bytes, cfg.policy);
        let mut meta = HashMap::new();
        let journal_path = cfg.dir.join(JOURNAL_FILE);
        for rec in read_journal(&journal_path, capacity, region_bytes)? {
            if index.restore(rec.key.clone(), rec.offset, rec.len, rec.pinned, rec.seq) {
                let pin_until = rec.pin_until.filter(|_| rec.pinned);
                meta.insert(rec.key, Meta { crc: rec.crc, etag: rec.etag, verified: false, pin_until });
            }
        }
        let regions = (index.usable_bytes() / region_bytes) as usize;
        let map = StoreMap::new(map, &store, &cfg.dir, region_bytes).map_err(|e| io("reopening", e))?;
        let journal = write_snapshot(&cfg.dir, &index, &meta, capacity, region_bytes)?;
        let loaded_entries = index.stats().entries;
        let mut state = DiskState {
            index,
            meta,
            leases: (0..regions.max(1)).map(|_| Arc::new(())).collect(),
            journal,
            journal_records: loaded_entries + 1,
            next_pin_expiry: None,
            head_end: None,
        };
        state.next_pin_expiry = state.meta.values().filter_map(|m| m.pin_until).min();
        Ok(Self {
            dir: cfg.dir.clone(),
            map: Arc::new(map),
            store,
            state: Mutex::new(state),
            counters: DiskCounters::default(),
            loaded_entries,
        })
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // Every critical section leaves the index and the journal consistent
        // before anything that could panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Objects reloaded from the journal when the tier was opened.
    pub fn loaded_entries(&self) -> u64 {
        self.loaded_entries
    }

    /// The tier's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The object under `key`, if held and intact. Counts an access for the
    /// policy. The first read after a start checks the CRC; a mismatch drops
    /// the object and reads as a miss.
    pub fn get(&self, key: &ObjectKey) -> Option<DiskObject> {
        let (slot, lease, etag, crc, verified) = {
            let mut st = self.lock();
            let slot = st.index.access(key)?;
            let region = st.index.region_of(slot.offset) as usize;
            let lease = Arc::clone(&st.leases[region]);
            let m = st.meta.get(key)?;
            (slot, lease, m.etag.clone(), m.crc, m.verified)
        };
        let slice = MapSlice {
            map: Arc::clone(&self.map),
            _lease: lease,
            start: slot.offset as usize,
            end: (slot.offset + slot.len) as usize,
        };
        if !verified {
            let ok = crc32fast::hash(slice.as_ref()) == crc;
            let mut st = self.lock();
            if st.index.slot(key).map(|s| s.seq) != Some(slot.seq) {
                return None; // replaced or evicted meanwhile
            }
            if !ok {
                self.counters.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, offset = slot.offset, len = slot.len, "disk tier: checksum mismatch, object dropped");
                Self::forget(&mut st, key);
                return None;
            }
            if let Some(m) = st.meta.get_mut(key) {
                m.verified = true;
            }
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(DiskObject { body: Bytes::from_owner(slice), etag })
    }

    /// Stores a complete, verified object. `pinned` objects (prefill) are never evicted.
    pub fn insert(&self, key: &ObjectKey, body: &[u8], etag: &str, pinned: bool) -> Result<Stored, EdgeError> {
        if etag.contains(['\t', '\n', '\r']) {
            return Ok(Stored::Refused(Refusal::NotAdmitted));
        }
        let crc = crc32fast::hash(body);
        let mut st = self.lock();
        if st.next_pin_expiry.is_some_and(|t| t <= now_unix_s()) {
            self.expire_pins_locked(&mut st, now_unix_s())?;
        }
        if let (Some(slot), Some(m)) = (st.index.slot(key), st.meta.get(key)) {
            if slot.len == body.len() as u64 && m.crc == crc && m.etag == etag {
                if pinned && !slot.pinned {
                    st.index.set_pinned(key, true);
                    let rec = Record::add(key, &slot, crc, etag, true);
                    self.journal(&mut st, &rec)?;
                }
                return Ok(Stored::Yes);
            }
            Self::forget(&mut st, key);
        }
        let placement = {
            let DiskState { index, leases, .. } = &mut *st;
            index.insert(key.clone(), body.len() as u64, pinned, |r| Arc::strong_count(&leases[r as usize]) > 1)
        };
        let placement = match placement {
            Ok(p) => p,
            Err(refusal) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Ok(Stored::Refused(refusal));
            }
        };
        for k in &placement.evicted {
            st.meta.remove(k);
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            self.journal(&mut st, &Record::del(k))?;
        }
        if self.map.zero_copy() {
            let reclaimed = !placement.evicted.is_empty() || !placement.moved.is_empty();
            let (region_bytes, regions) = (st.index.region_bytes(), st.leases.len() as u64);
            for r in reclaimed_regions(st.head_end, placement.offset, reclaimed, region_bytes, regions) {
                self.rewrite_region(&mut st, r, key, &placement.moved)?;
            }
        }
        st.head_end = Some(placement.offset + body.len() as u64);
        // Moves go to lower offsets of the same region, in offset order, so a
        // copy never overwrites a body that still has to move.
        let moves = if self.map.zero_copy() { &[][..] } else { &placement.moved[..] };
        for m in moves {
            self.journal(&mut st, &Record::del(&m.key))?;
            let bytes = self.map[m.from as usize..(m.from + m.len) as usize].to_vec();
            self.write_at(&bytes, m.to)?;
            let slot = st.index.slot(&m.key).ok_or_else(|| EdgeError::Internal("moved object vanished".into()))?;
            let (crc, etag, until) =
                st.meta.get(&m.key).map(|x| (x.crc, x.etag.clone(), x.pin_until)).unwrap_or_default();
            self.journal(&mut st, &Record::add(&m.key, &slot, crc, &etag, slot.pinned).with_pin_until(until))?;
        }
        if let Err(e) = self.write_at(body, placement.offset) {
            st.index.remove(key);
            return Err(e);
        }
        let slot = st.index.slot(key).ok_or_else(|| EdgeError::Internal("placed object vanished".into()))?;
        self.journal(&mut st, &Record::add(key, &slot, crc, etag, pinned))?;
        st.meta.insert(key.clone(), Meta { crc, etag: etag.to_owned(), verified: true, pin_until: None });
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if st.journal_records > 4 * st.index.stats().entries + 1024 {
            let DiskState { index, meta, .. } = &*st;
            let capacity = self.map.len() as u64;
            let journal = write_snapshot(&self.dir, index, meta, capacity, index.region_bytes())?;
            st.journal_records = st.index.stats().entries + 1;
            st.journal = journal;
        }
        Ok(Stored::Yes)
    }

    /// Pins `key` (prefill) if held; returns whether it was held.
    pub fn pin(&self, key: &ObjectKey) -> Result<bool, EdgeError> {
        let mut st = self.lock();
        let (Some(slot), Some(m)) = (st.index.slot(key), st.meta.get(key)) else { return Ok(false) };
        if !slot.pinned {
            let rec = Record::add(key, &slot, m.crc, &m.etag, true);
            st.index.set_pinned(key, true);
            self.journal(&mut st, &rec)?;
        }
        Ok(true)
    }

    /// Pins `key` (if held) until `until` (Unix seconds): once that passes,
    /// the next insert unpins it and eviction may take it like any other
    /// object. Returns whether it was held.
    pub fn pin_until(&self, key: &ObjectKey, until: u64) -> Result<bool, EdgeError> {
        let mut st = self.lock();
        let (Some(slot), Some(m)) = (st.index.slot(key), st.meta.get(key)) else { return Ok(false) };
        if slot.pinned && m.pin_until == Some(until) {
            return Ok(true);
        }
        let rec = Record::add(key, &slot, m.crc, &m.etag, true).with_pin_until(Some(until));
        st.index.set_pinned(key, true);
        if let Some(m) = st.meta.get_mut(key) {
            m.pin_until = Some(until);
        }
        st.next_pin_expiry = Some(st.next_pin_expiry.map_or(until, |t| t.min(until)));
        self.journal(&mut st, &rec)?;
        Ok(true)
    }

    /// Unpins every object whose pin lapsed at or before `now` (Unix
    /// seconds); returns how many. Inserts do this on their own.
    pub fn expire_pins(&self, now: u64) -> Result<u64, EdgeError> {
        let mut st = self.lock();
        self.expire_pins_locked(&mut st, now)
    }

    fn expire_pins_locked(&self, st: &mut DiskState, now: u64) -> Result<u64, EdgeError> {
        let lapsed: Vec<ObjectKey> =
            st.meta.iter().filter(|(_, m)| m.pin_until.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
        for key in &lapsed {
            if let Some(m) = st.meta.get_mut(key) {
                m.pin_until = None;
            }
            let (Some(slot), Some(m)) = (st.index.slot(key), st.meta.get(key)) else { continue };
            let rec = Record::add(key, &slot, m.crc, &m.etag, false);
            st.index.set_pinned(key, false);
            self.journal(st, &rec)?;
        }
        st.next_pin_expiry = st.meta.values().filter_map(|m| m.pin_until).min();
        if !lapsed.is_empty() {
            tracing::info!(objects = lapsed.len(), "disk tier: pins lapsed with their plan");
        }
        Ok(lapsed.len() as u64)
    }

    /// Unpins every pinned object for which `unplanned` is true (a new fill
    /// plan no longer lists it): it stays cached, but eviction may now take it
    /// when space is needed. Returns how many were unpinned.
    pub fn unpin_where(&self, mut unplanned: impl FnMut(&ObjectKey) -> bool) -> Result<u64, EdgeError> {
        let mut st = self.lock();
        let keys: Vec<ObjectKey> =
            st.index.iter().filter(|(k, slot)| slot.pinned && unplanned(k)).map(|(k, _)| k.clone()).collect();
        for key in &keys {
            let (Some(slot), Some(m)) = (st.index.slot(key), st.meta.get(key)) else { continue };
            let rec = Record::add(key, &slot, m.crc, &m.etag, false);
            st.index.set_pinned(key, false);
            if let Some(m) = st.meta.get_mut(key) {
                m.pin_until = None;
            }
            self.journal(&mut st, &rec)?;
        }
        Ok(keys.len() as u64)
    }

    /// Whether `key` is held (no read, no CRC check, no counters).
    pub fn holds(&self, key: &ObjectKey) -> bool {
        self.lock().index.slot(key).is_some()
    }

    /// Drops `key`; returns whether it was held.
    pub fn remove(&self, key: &ObjectKey) -> bool {
        let mut st = self.lock();
        let held = st.index.slot(key).is_some();
        if held {
            Self::forget(&mut st, key);
        }
        held
    }

    /// Titles with at least one object on the tier.
    pub fn titles(&self) -> std::collections::BTreeSet<vod::TitleId> {
        self.lock().index.iter().map(|(k, _)| k.title().clone()).collect()
    }

    /// Drops every object of `title`; returns how many.
    pub fn remove_title(&self, title: &vod::TitleId) -> u64 {
        let mut st = self.lock();
        let keys: Vec<ObjectKey> =
            st.index.iter().filter(|(k, _)| k.title() == title).map(|(k, _)| k.clone()).collect();
        for k in &keys {
            Self::forget(&mut st, k);
        }
        keys.len() as u64
    }

    /// Carries out a reclaim of region `r` without writing over any byte a
    /// socket may still hold: the objects left in the region (moved ones at
    /// their new offsets) are read out from the first page that changes,
    /// that page and the rest of the region are punched out of the file, and
    /// the bytes are written back to fresh pages. `incoming` (being placed)
    /// is written by the caller afterwards.
    fn rewrite_region(
        &self,
        st: &mut DiskState,
        r: u64,
        incoming: &ObjectKey,
        moved: &[crate::disk_log::Move<ObjectKey>],
    ) -> Result<(), EdgeError> {
        let region_bytes = st.index.region_bytes();
        let (start, end) = (r * region_bytes, (r + 1) * region_bytes);
        let from_of = |k: &ObjectKey| moved.iter().find(|m| &m.key == k).map(|m| m.from);
        let mut held: Vec<(ObjectKey, crate::disk_log::Slot, u64)> = st
            .index
            .iter()
            .filter(|(k, s)| *k != incoming && s.offset >= start && s.offset < end)
            .map(|(k, s)| (k.clone(), *s, from_of(k).unwrap_or(s.offset)))
            .collect();
        held.sort_by_key(|(_, s, _)| s.offset);
        // Bytes up to the first moved object stay as they are; the page holding
        // that boundary is rewritten whole, since its tail may have been sent.
        let unchanged_end = held
            .iter()
            .find(|(_, s, from)| *from != s.offset)
            .map_or_else(|| held.iter().map(|(_, s, _)| s.offset + s.len).max().unwrap_or(start), |(_, s, _)| s.offset);
        let first = start + (unchanged_end - start) / PAGE_BYTES * PAGE_BYTES;
        let last = held.iter().map(|(_, s, _)| s.offset + s.len).max().unwrap_or(first).max(first);
        let mut bytes = vec![0u8; (last - first) as usize];
        let affected: Vec<_> = held.into_iter().filter(|(_, s, _)| s.offset + s.len > first).collect();
        for (_, s, from) in &affected {
            // Sources are read from the map before anything is punched; moves go
            // to lower offsets of the same region, so no source is overwritten.
            let skip = first.saturating_sub(s.offset);
            let dst = (s.offset + skip - first) as usize;
            let src = (from + skip) as usize..(from + s.len) as usize;
            bytes[dst..dst + src.len()].copy_from_slice(&self.map[src]);
        }
        for (k, _, _) in &affected {
            self.journal(st, &Record::del(k))?;
        }
        let rewritten = punch_hole(&self.store, first, end - first)
            .map_err(|e| EdgeError::io(format!("punching {}", self.dir.join(STORE_FILE).display()), e))
            .and_then(|()| self.write_at(&bytes, first));
        if let Err(e) = rewritten {
            // Their bytes may be gone from the file: never serve them.
            for (k, _, _) in &affected {
                Self::forget(st, k);
            }
            return Err(e);
        }
        for (k, s, _) in &affected {
            let (crc, etag, until) = st.meta.get(k).map(|x| (x.crc, x.etag.clone(), x.pin_until)).unwrap_or_default();
            self.journal(st, &Record::add(k, s, crc, &etag, s.pinned).with_pin_until(until))?;
        }
        Ok(())
    }

    fn forget(st: &mut DiskState, key: &ObjectKey) {
        st.index.remove(key);
        st.meta.remove(key);
        let line = Record::del(key).to_line();
        // A lost `del` only costs a CRC check after the next start.
        if let Err(e) = st.journal.write_all(line.as_bytes()) {
            tracing::warn!(%key, error = %e, "disk tier: journal write failed");
        }
        st.journal_records += 1;
    }

    fn journal(&self, st: &mut DiskState, rec: &Record) -> Result<(), EdgeError> {
        st.journal_records += 1;
        st.journal
            .write_all(rec.to_line().as_bytes())
            .map_err(|e| EdgeError::io(format!("writing {}", self.dir.join(JOURNAL_FILE).display()), e))
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), EdgeError> {
        self.store
            .write_all_at(bytes, offset)
            .map_err(|e| EdgeError::io(format!("writing {}", self.dir.join(STORE_FILE).display()), e))
    }

    /// Sizes of the log.
    pub fn stats(&self) -> LogStats {
        self.lock().index.stats()
    }

    /// The tier's counters.
    pub fn counters(&self) -> &DiskCounters {
        &self.counters
    }
}

/// Page size assumed for hole punching; regions must be whole multiples of it.
const PAGE_BYTES: u64 = 4096;

/// The regions an insert placed at `offset` reclaimed, given where the
/// previous placement ended (`None`: unknown, right after a start). An
/// object appended right behind the previous one, inside a region, reclaimed
/// nothing; one at a region's start, or anywhere else, came after the log
/// reclaimed every region from the one after the previous head up to its
/// own (`evicted_or_moved` also says so). Over-reporting is safe (a
/// rewrite keeps every object in place).
fn reclaimed_regions(
    head_end: Option<u64>,
    offset: u64,
    evicted_or_moved: bool,
    region_bytes: u64,
    regions: u64,
) -> Vec<u64> {
    let target = offset / region_bytes;
    let Some(head_end) = head_end else { return vec![target] };
    if offset == head_end && !offset.is_multiple_of(region_bytes) && !evicted_or_moved {
        return Vec::new();
    }
    let regions = regions.max(1);
    let mut r = (head_end.saturating_sub(1) / region_bytes + 1) % regions;
    let mut out = vec![r];
    while r != target && out.len() < regions as usize {
        r = (r + 1) % regions;
        out.push(r);
    }
    out
}

/// Deallocates `[offset, offset + len)` of `file`: its pages leave the page
/// cache (any a socket still holds live on, unchanged), the range reads as zeros.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "range out of bounds"));
    };
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an open descriptor with checked bounds.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl StoreMap {
    /// Wraps `map` (of `store`), registered for zero-copy sends when the
    /// store's filesystem can punch holes and regions are whole pages.
    fn new(map: Mmap, store: &File, dir: &Path, region_bytes: u64) -> std::io::Result<Self> {
        let file = store.try_clone()?;
        let supported = region_bytes.is_multiple_of(PAGE_BYTES) && punch_supported(dir);
        if !supported {
            tracing::info!(dir = %dir.display(), region_bytes, "disk tier: no hole punching here; hits are copied, not sent with sendfile");
        }
        // SAFETY: `map` is a read-only shared mapping of `file` from offset 0;
        // the fields' drop order removes the registration before the map and
        // the descriptor go; and bytes that were handed out are never written
        // over in place (reclaims punch, see the module doc).
        let registration =
            supported.then(|| unsafe { svc::zerocopy::register(map.as_ptr(), map.len(), file.as_raw_fd(), 0) });
        Ok(Self { registration, map, _file: file })
    }
}

/// Whether the filesystem under `dir` punches holes (ext4, xfs, btrfs, tmpfs do).
fn punch_supported(dir: &Path) -> bool {
    let probe = dir.join(".punch-probe");
    let result = (|| -> std::io::Result<()> {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&probe)?;
        f.write_all_at(&[1u8; 2 * PAGE_BYTES as usize], 0)?;
        punch_hole(&f, 0, PAGE_BYTES)
    })();
    let _ = std::fs::remove_file(&probe);
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> ObjectKey {
        ObjectKey::parse(&format!("titles/t1/v1/{}.m4s", n + 1)).unwrap()
    }

    fn body(n: u32, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(7).wrapping_add(n) as u8).collect()
    }

    fn cfg(dir: &Path) -> DiskConfig {
        DiskConfig { region_bytes: Some(4096), ..DiskConfig::new(dir, 16384) }
    }

    /// Sends `len` bytes of `fd` from `offset` with `sendfile` into a loopback
    /// connection whose reader does not read yet; returns the reader (and the
    /// sender, to keep open) and how many bytes the kernel took.
    fn send_unread(
        fd: std::os::fd::RawFd,
        offset: u64,
        len: usize,
    ) -> (std::net::TcpStream, std::net::TcpStream, usize) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut off = offset as libc::off_t;
        let mut sent = 0;
        while sent < len {
            let n = unsafe { libc::sendfile(sender.as_raw_fd(), fd, &mut off, len - sent) };
            if n <= 0 {
                break;
            }
            sent += n as usize;
        }
        (reader, sender, sent)
    }

    fn read_n(mut reader: std::net::TcpStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        reader.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; n];
        reader.read_exact(&mut got).unwrap();
        got
    }

    /// `sendfile` leaves page-cache pages in the socket queues (on loopback,
    /// in the reader's receive queue too) after the call, and the slice's
    /// lease, are gone. The control shows that writing over such a range in
    /// place changes what the reader then gets; the tier, which reclaims
    /// regions by punching them, must deliver the original bytes.
    #[test]
    fn bytes_sent_with_sendfile_survive_the_reclaim_of_their_region() {
        let len = 60_000;
        let dir = tempfile::tempdir().unwrap();
        // Control: a plain file rewritten in place.
        let plain = dir.path().join("plain.bin");
        std::fs::write(&plain, body(0, len)).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&plain).unwrap();
        let (reader, _sender, sent) = send_unread(file.as_raw_fd(), 0, len);
        assert!(sent >= 16 * 1024, "the kernel took only {sent} bytes");
        file.write_all_at(&body(4, len), 0).unwrap();
        assert_ne!(read_n(reader, sent), &body(0, len)[..sent], "in-place writes no longer reach queued pages here");

        let cfg = DiskConfig {
            region_bytes: Some(65536),
            policy: DiskPolicy::Fifo,
            ..DiskConfig::new(dir.path().join("tier"), 4 * 65536)
        };
        let disk = DiskTier::open(&cfg).unwrap();
        assert!(disk.map.zero_copy(), "ext4/tmpfs punch holes: the map should be registered");
        disk.insert(&key(0), &body(0, len), "\"e\"", false).unwrap();
        let held = disk.get(&key(0)).unwrap().body;
        let span = svc::zerocopy::file_of(&held).expect("a disk hit is a view of the store file");
        let (reader, _sender, sent) = send_unread(span.fd, span.offset, held.len());
        assert!(sent >= 16 * 1024, "the kernel took only {sent} bytes");
        drop(held); // the lease goes; the pages are still queued
        for n in 1..=4 {
            assert_eq!(disk.insert(&key(n), &body(n, len), "\"e\"", false).unwrap(), Stored::Yes);
        }
        assert!(disk.get(&key(0)).is_none(), "region 0 was not reclaimed");
        let reused = disk.get(&key(4)).unwrap().body;
        assert_eq!(svc::zerocopy::file_of(&reused).map(|s| s.offset), Some(0), "key 4 should reuse region 0");
        assert_eq!(&reused[..], &body(4, len)[..]);
        assert!(read_n(reader, sent) == body(0, len)[..sent], "a queued byte changed when its region was reused");
    }

    #[test]
    fn reclaimed_regions_follow_the_head() {
        // Appended right behind the last object: nothing reclaimed.
        assert!(reclaimed_regions(Some(100), 100, false, 1000, 4).is_empty());
        // Unknown head (after a start): the target region.
        assert_eq!(reclaimed_regions(None, 2100, false, 1000, 4), vec![2]);
        // Next region, at its start or after kept objects; two regions at once; a wrap.
        assert_eq!(reclaimed_regions(Some(1000), 1000, false, 1000, 4), vec![1]);
        assert_eq!(reclaimed_regions(Some(950), 1200, true, 1000, 4), vec![1]);
        assert_eq!(reclaimed_regions(Some(950), 2300, true, 1000, 4), vec![1, 2]);
        assert_eq!(reclaimed_regions(Some(3990), 10, true, 1000, 4), vec![0]);
        // One region: every reclaim is of region 0, even when the offset matches.
        assert_eq!(reclaimed_regions(Some(300), 300, true, 1000, 1), vec![0]);
    }

    #[test]
    fn objects_survive_a_reopen_and_are_served_from_the_map() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskTier::open(&cfg(dir.path())).unwrap();
            for n in 0..5 {
                assert_eq!(disk.insert(&key(n), &body(n, 1000), "\"e\"", false).unwrap(), Stored::Yes);
            }
            let got = disk.get(&key(3)).unwrap();
            assert_eq!(&got.body[..], &body(3, 1000)[..]);
            let base = disk.map.as_ptr() as usize;
            let at = got.body.as_ptr() as usize;
            assert!(at >= base && at < base + disk.map.len(), "the body is a slice of the map");
        }
        let disk = DiskTier::open(&cfg(dir.path())).unwrap();
        assert_eq!(disk.loaded_entries(), 5);
        for n in 0..5 {
            let got = disk.get(&key(n)).unwrap();
            assert_eq!((&got.body[..], got.etag.as_str()), (&body(n, 1000)[..], "\"e\""));
        }
        assert_eq!(disk.counters().corrupt_dropped.load(Ordering::Relaxed), 0);
        // Writes after a reopen continue the log without overwriting what was loaded.
        disk.insert(&key(9), &body(9, 1000), "\"e\"", false).unwrap();
        for n in 0..5 {
            assert_eq!(&disk.get(&key(n)).unwrap().body[..], &body(n, 1000)[..]);
        }
    }

    #[test]
    fn flipped_bytes_and_truncation_are_caught_on_first_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskTier::open(&cfg(dir.path())).unwrap();
            for n in 0..6 {
                disk.insert(&key(n), &body(n, 1500), "\"e\"", false).unwrap();
            }
        }
        let store = dir.path().join(STORE_FILE);
        let mut bytes = std::fs::read(&store).unwrap();
        bytes[10] ^= 0xff; // inside key 0
        std::fs::write(&store, &bytes[..8192 + 100]).unwrap(); // and cut inside key 4 (region 2)
        let disk = DiskTier::open(&cfg(dir.path())).unwrap();
        assert!(disk.get(&key(0)).is_none(), "flipped byte served");
        assert!(disk.get(&key(4)).is_none(), "truncated object served");
        assert_eq!(&disk.get(&key(1)).unwrap().body[..], &body(1, 1500)[..]);
        assert_eq!(disk.counters().corrupt_dropped.load(Ordering::Relaxed), 2);
        // Dropped means gone, not re-checked: the next reads are plain misses.
        assert!(disk.get(&key(0)).is_none());
        assert_eq!(disk.counters().corrupt_dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_torn_journal_tail_and_a_new_layout_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskTier::open(&cfg(dir.path())).unwrap();
            disk.insert(&key(1), &body(1, 100), "\"a\"", false).unwrap();
            disk.insert(&key(2), &body(2, 100), "\"b\"", false).unwrap();
        }
        let journal = dir.path().join(JOURNAL_FILE);
        let text = std::fs::read_to_string(&journal).unwrap();
        std::fs::write(&journal, &text[..text.len() - 5]).unwrap();
        let disk = DiskTier::open(&cfg(dir.path())).unwrap();
        assert_eq!(disk.loaded_entries(), 1);
        assert!(disk.get(&key(1)).is_some());
        drop(disk);
        let other = DiskConfig { region_bytes: Some(8192), ..cfg(dir.path()) };
        assert_eq!(DiskTier::open(&other).unwrap().loaded_entries(), 0);
    }

    #[test]
    fn a_region_with_a_body_out_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskTier::open(&DiskConfig { policy: DiskPolicy::Fifo, ..cfg(dir.path()) }).unwrap();
        for n in 0..4 {
            disk.insert(&key(n), &body(n, 4096), "\"e\"", false).unwrap();
        }
        let held = disk.get(&key(0)).unwrap();
        assert_eq!(disk.insert(&key(7), &body(7, 100), "\"e\"", false).unwrap(), Stored::Refused(Refusal::Busy));
        assert_eq!(&held.body[..], &body(0, 4096)[..]);
        drop(held);
        assert_eq!(disk.insert(&key(7), &body(7, 100), "\"e\"", false).unwrap(), Stored::Yes);
        assert!(disk.get(&key(0)).is_none());
        assert_eq!(&disk.get(&key(7)).unwrap().body[..], &body(7, 100)[..]);
    }

    #[test]
    fn purge_by_key_and_title_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskTier::open(&cfg(dir.path())).unwrap();
            disk.insert(&key(1), &body(1, 10), "\"e\"", false).unwrap();
            disk.insert(&key(2), &body(2, 10), "\"e\"", false).unwrap();
            let other = ObjectKey::parse("titles/t2/v1/1.m4s").unwrap();
            disk.insert(&other, &body(3, 10), "\"e\"", false).unwrap();
            assert!(disk.remove(&key(1)));
            assert_eq!(disk.remove_title(&vod::TitleId::new("t2").unwrap()), 1);
        }
        let disk = DiskTier::open(&cfg(dir.path())).unwrap();
        assert_eq!(disk.loaded_entries(), 1);
        assert!(disk.get(&key(2)).is_some());
    }

    #[test]
    fn pins_hold_until_their_plan_ends_across_a_reopen_then_eviction_may_take_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskConfig { policy: DiskPolicy::Fifo, ..cfg(dir.path()) };
        let end = now_unix_s() + 3600;
        {
            let disk = DiskTier::open(&cfg).unwrap();
            disk.insert(&key(0), &body(0, 4000), "\"p\"", true).unwrap();
            assert!(disk.pin_until(&key(0), end).unwrap());
            assert!(!disk.pin_until(&key(99), end).unwrap(), "not held: nothing to pin");
        }
        let disk = DiskTier::open(&cfg).unwrap();
        for n in 1..12 {
            disk.insert(&key(n), &body(n, 4000), "\"e\"", false).unwrap();
        }
        assert!(disk.holds(&key(0)), "a pinned object was evicted before its plan ended");
        assert_eq!(disk.stats().pinned_bytes, 4000);
        assert_eq!(disk.expire_pins(end - 1).unwrap(), 0);
        assert_eq!(disk.expire_pins(end).unwrap(), 1);
        assert_eq!(disk.stats().pinned_bytes, 0);
        for n in 12..24 {
            disk.insert(&key(n), &body(n, 4000), "\"e\"", false).unwrap();
        }
        assert!(!disk.holds(&key(0)), "an object whose pin lapsed is never evicted");
    }

    #[test]
    fn an_insert_unpins_objects_whose_plan_has_ended() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskTier::open(&cfg(dir.path())).unwrap();
        disk.insert(&key(0), &body(0, 100), "\"p\"", true).unwrap();
        disk.insert(&key(1), &body(1, 100), "\"p\"", true).unwrap();
        disk.pin_until(&key(0), 1).unwrap(); // long past
        assert_eq!(disk.stats().pinned_bytes, 200);
        disk.insert(&key(2), &body(2, 100), "\"e\"", false).unwrap();
        assert_eq!(disk.stats().pinned_bytes, 100, "only the pin without an end stays");
        drop(disk);
        assert_eq!(DiskTier::open(&cfg(dir.path())).unwrap().stats().pinned_bytes, 100, "the unpin was journaled");
    }

    /// Model check: random inserts, reads, purges and reopens against a
    /// `HashMap` of what was last written. Whatever the tier returns is exactly
    /// the model's bytes for that key, bodies handed out never change while
    /// held, and the tier never holds more than its capacity.
    #[test]
    fn random_operations_agree_with_a_map_model() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskConfig { region_bytes: Some(8192), ..DiskConfig::new(dir.path(), 65536) };
        let mut disk = DiskTier::open(&cfg).unwrap();
        let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut held: Vec<(Bytes, Vec<u8>)> = Vec::new();
        let mut hits = 0;
        let mut state: u64 = 7;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        for step in 0..3000u64 {
            let k = (next() % 40) as u32;
            match next() % 10 {
                0..=3 => {
                    let b = body(k.wrapping_add(step as u32), (next() % 6000) as usize + 1);
                    match disk.insert(&key(k), &b, "\"v\"", next() % 50 == 0).unwrap() {
                        Stored::Yes => {
                            model.insert(k, b);
                        }
                        Stored::Refused(_) => {
                            model.remove(&k);
                        }
                    }
                }
                4..=7 => {
                    if let Some(got) = disk.get(&key(k)) {
                        hits += 1;
                        let want = model.get(&k).expect("the tier returned a key the model never stored");
                        assert_eq!(&got.body[..], &want[..], "step {step}: key {k}");
                        if held.len() < 3 && next() % 4 == 0 {
                            held.push((got.body, want.clone()));
                        }
                    }
                }
                8 => {
                    disk.remove(&key(k));
                    model.remove(&k);
                }
                _ => {
                    if next() % 20 == 0 {
                        for (b, want) in held.drain(..) {
                            assert_eq!(&b[..], &want[..], "a held body changed");
                        }
                        drop(disk);
                        disk = DiskTier::open(&cfg).unwrap();
                    } else if let Some((b, want)) = held.pop() {
                        assert_eq!(&b[..], &want[..], "a held body changed");
                    }
                }
            }
            let st = disk.stats();
            assert!(st.live_bytes + st.gap_bytes <= st.capacity_bytes, "step {step}: {st:?}");
        }
        assert_eq!(disk.counters().corrupt_dropped.load(Ordering::Relaxed), 0, "clean restarts never look corrupt");
        assert!(hits > 200, "only {hits} hits: the test exercises too little");
    }
}
