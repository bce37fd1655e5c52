//! Where objects live in the disk tier, and which ones stay: the pure policy
//! half of `disk`, with no I/O, so `edge replay` runs exactly this code.
//!
//! The store is a circular log of fixed-size regions. New objects are
//! appended at the head; when the head region is full, the next region is
//! reclaimed. Reclaiming keeps (moves to the front of that same region) its
//! pinned objects and, under `DiskPolicy::Frequency`, the objects read since
//! they were written (a CLOCK-style second chance, the counter drops by one
//! per pass); the rest are evicted. Under `Frequency`, a new object that
//! would evict others is admitted only if a count-min sketch has seen it at
//! least `ADMIT_MIN_FREQUENCY` times (TinyLFU's doorkeeper idea: one-hit
//! wonders never push out objects with a history).
//!
//! Space is byte-exact inside a region; the tail of a region that a next
//! object did not fit in is lost until the region comes round again, and
//! `LogStats::gap_bytes` reports it honestly.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};

/// Objects seen fewer times than this are not admitted when admitting them evicts others.
pub const ADMIT_MIN_FREQUENCY: u8 = 2;
/// Largest per-object "read since written" counter (reinsertion credits).
const MAX_HITS: u8 = 3;

/// How the log chooses what to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskPolicy {
    /// Plain FIFO log: admit everything, evict whole regions oldest first.
    Fifo,
    /// Frequency-aware: sketch admission plus reinsertion of objects read since written.
    Frequency,
}

impl DiskPolicy {
    /// Label for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskPolicy::Fifo => "fifo-log",
            DiskPolicy::Frequency => "frequency-log (count-min admission, CLOCK reinsertion)",
        }
    }
}

/// Where one object sits in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Byte offset in the store.
    pub offset: u64,
    /// Object length in bytes.
    pub len: u64,
    /// Pinned objects (prefill) are never evicted, only moved.
    pub pinned: bool,
    /// Write order: a later write of the same key wins when a journal is replayed.
    pub seq: u64,
    hits: u8,
}

/// An object moved inside its region when the region was reclaimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<K> {
    pub key: K,
    pub from: u64,
    pub to: u64,
    pub len: u64,
    pub seq: u64,
}

/// What an insert decided: copy `moved` (in order), drop `evicted`, then write the object at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<K> {
    pub offset: u64,
    pub seq: u64,
    pub evicted: Vec<K>,
    pub moved: Vec<Move<K>>,
}

/// Why an object was not placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than one region.
    TooLarge,
    /// Placing it would evict objects that are more popular.
    NotAdmitted,
    /// The region it needs is being read (a response holds a slice of it).
    Busy,
    /// Every region is full of pinned objects.
    Full,
}

impl Refusal {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::NotAdmitted => "not_admitted",
            Refusal::Busy => "busy",
            Refusal::Full => "full",
        }
    }
}

/// Sizes of the log for gauges and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub capacity_bytes: u64,
    pub live_bytes: u64,
    pub entries: u64,
    pub pinned_bytes: u64,
    /// Region tails skipped because the next object did not fit.
    pub gap_bytes: u64,
}

/// The region size used for a store of `capacity` bytes: about 1/16 of it,
/// at most 256 MiB and, unless the store is smaller, at least 2 MiB; rounded
/// so whole regions cover the store (fewer than `regions` bytes go unused).
pub fn region_bytes_for(capacity: u64) -> u64 {
    let target = (capacity / 16).clamp(4 << 20, 256 << 20);
    let regions = capacity.div_ceil(target).max(1);
    (capacity / regions).max(1)
}

/// The disk tier's index and policy.
pub struct LogIndex<K> {
    region_bytes: u64,
    regions: u64,
    head: u64,
    head_off: u64,
    entries: HashMap<K, Slot>,
    /// Per region: the keys whose slot starts there, so reclaiming a region
    /// looks at its own objects only, not at every entry.
    region_keys: Vec<HashSet<K>>,
    /// Per region: bytes of pinned objects, which no reclaim frees.
    region_pinned: Vec<u64>,
    live_bytes: u64,
    pinned_bytes: u64,
    gap_bytes: u64,
    /// Per region: the tail left unused when the head moved on.
    tails: Vec<u64>,
    next_seq: u64,
    policy: DiskPolicy,
    sketch: FrequencySketch,
}

impl<K: Hash + Eq + Clone> LogIndex<K> {
    /// An empty log over `capacity` bytes cut into regions of `region_bytes`.
    pub fn new(capacity: u64, region_bytes: u64, policy: DiskPolicy) -> Self {
        let region_bytes = region_bytes.clamp(1, capacity.max(1));
        let regions = (capacity / region_bytes).max(u64::from(capacity > 0));
        Self {
            region_bytes,
            regions,
            head: 0,
            head_off: 0,
            entries: HashMap::new(),
            region_keys: (0..regions).map(|_| HashSet::new()).collect(),
            region_pinned: vec![0; regions as usize],
            live_bytes: 0,
            pinned_bytes: 0,
            gap_bytes: 0,
            tails: vec![0; (capacity / region_bytes).max(u64::from(capacity > 0)) as usize],
            next_seq: 1,
            policy,
            sketch: FrequencySketch::new(),
        }
    }

    /// Region size in bytes.
    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    /// Bytes the regions cover (capacity rounded down to whole regions).
    pub fn usable_bytes(&self) -> u64 {
        self.region_bytes * self.regions
    }

    /// Where `key` is, without counting an access.
    pub fn slot(&self, key: &K) -> Option<Slot> {
        self.entries.get(key).copied()
    }

    /// Counts a request for `key` (held or not) and returns its slot if held.
    pub fn access(&mut self, key: &K) -> Option<Slot> {
        self.sketch.increment(key, self.entries.len());
        let slot = self.entries.get_mut(key)?;
        slot.hits = (slot.hits + 1).min(MAX_HITS);
        Some(*slot)
    }

    /// Region index of a store offset.
    pub fn region_of(&self, offset: u64) -> u64 {
        offset / self.region_bytes
    }

    /// Records `key` at `slot` (replacing any slot it had) in the entry map and its region's key set.
    fn put_entry(&mut self, key: K, slot: Slot) {
        let region = self.region_of(slot.offset) as usize;
        if let Some(old) = self.entries.insert(key.clone(), slot) {
            let was = self.region_of(old.offset) as usize;
            if old.pinned {
                self.region_pinned[was] -= old.len;
            }
            if was != region {
                self.region_keys[was].remove(&key);
            }
        }
        if slot.pinned {
            self.region_pinned[region] += slot.len;
        }
        self.region_keys[region].insert(key);
    }

    /// Forgets `key`; returns its slot if it was held.
    pub fn remove(&mut self, key: &K) -> Option<Slot> {
        let slot = self.entries.remove(key)?;
        let region = self.region_of(slot.offset) as usize;
        self.region_keys[region].remove(key);
        if slot.pinned {
            self.region_pinned[region] -= slot.len;
        }
        self.live_bytes -= slot.len;
        if slot.pinned {
            self.pinned_bytes -= slot.len;
        }
        Some(slot)
    }

    /// Marks `key` pinned (or not); returns false if it is not held.
    pub fn set_pinned(&mut self, key: &K, pinned: bool) -> bool {
        let Some(slot) = self.entries.get_mut(key) else { return false };
        if slot.pinned != pinned {
            slot.pinned = pinned;
            let region = (slot.offset / self.region_bytes) as usize;
            if pinned {
                self.pinned_bytes += slot.len;
                self.region_pinned[region] += slot.len;
            } else {
                self.pinned_bytes -= slot.len;
                self.region_pinned[region] -= slot.len;
            }
        }
        true
    }

    /// Re-creates an entry read back from a journal. The head continues
    /// after the entry with the highest `seq`. Returns false (and keeps
    /// nothing) if the slot is outside the store. Overlaps are not checked
    /// here: the checksum on first read catches a slot whose bytes changed.
    pub fn restore(&mut self, key: K, offset: u64, len: u64, pinned: bool, seq: u64) -> bool {
        let fits = len <= self.region_bytes
            && offset.checked_add(len).is_some_and(|end| end <= self.usable_bytes())
            && (len == 0 || self.region_of(offset) == self.region_of(offset + len - 1));
        if !fits {
            return false;
        }
        self.remove(&key);
        self.put_entry(key, Slot { offset, len, pinned, seq, hits: 0 });
        self.live_bytes += len;
        if pinned {
            self.pinned_bytes += len;
        }
        if seq >= self.next_seq {
            self.next_seq = seq + 1;
            self.head = self.region_of(offset);
            self.head_off = offset + len - self.head * self.region_bytes;
        }
        true
    }

    /// Decides where `key` (of `len` bytes) goes. `busy(region)` says a region
    /// may not be overwritten now. On success the index already reflects the
    /// placement; the caller must carry it out (moves first, then the write).
    pub fn insert(
        &mut self,
        key: K,
        len: u64,
        pinned: bool,
        busy: impl Fn(u64) -> bool,
    ) -> Result<Placement<K>, Refusal> {
        if self.regions == 0 || len > self.region_bytes {
            return Err(Refusal::TooLarge);
        }
        let previous = self.remove(&key);
        let hits = previous.map_or(0, |s| s.hits);
        let mut placement = Placement { offset: 0, seq: 0, evicted: Vec::new(), moved: Vec::new() };
        let mut advanced = 0;
        // When pinned objects leave no region room for this one, say so before reclaiming
        // anything: going round the log would evict objects and still refuse.
        if self.head_off + len > self.region_bytes && self.region_pinned.iter().all(|&p| self.region_bytes - p < len) {
            return Err(Refusal::Full);
        }
        while self.head_off + len > self.region_bytes {
            if advanced == self.regions {
                return Err(Refusal::Full);
            }
            let next = (self.head + 1) % self.regions;
            if busy(next) {
                return Err(Refusal::Busy);
            }
            let (kept, evicted) = self.plan_reclaim(next, len);
            if !evicted.is_empty() && !pinned && !self.admits(&key) {
                return Err(Refusal::NotAdmitted);
            }
            // The tail the head leaves behind is a gap until that region comes round.
            let tail = self.region_bytes - self.head_off;
            self.tails[self.head as usize] = tail;
            self.gap_bytes += tail;
            self.apply_reclaim(next, kept, evicted, &mut placement);
            self.head = next;
            advanced += 1;
        }
        placement.offset = self.head * self.region_bytes + self.head_off;
        placement.seq = self.take_seq();
        self.head_off += len;
        self.put_entry(key, Slot { offset: placement.offset, len, pinned, seq: placement.seq, hits });
        self.live_bytes += len;
        if pinned {
            self.pinned_bytes += len;
        }
        Ok(placement)
    }

    fn admits(&self, key: &K) -> bool {
        match self.policy {
            DiskPolicy::Fifo => true,
            DiskPolicy::Frequency => self.sketch.estimate(key) >= ADMIT_MIN_FREQUENCY,
        }
    }

    /// Splits region `r`'s entries into kept (offset order) and evicted,
    /// leaving room for an object of `incoming` bytes where possible.
    fn plan_reclaim(&self, r: u64, incoming: u64) -> (Vec<(K, Slot)>, Vec<K>) {
        let mut in_region: Vec<(K, Slot)> =
            self.region_keys[r as usize].iter().filter_map(|k| self.entries.get(k).map(|s| (k.clone(), *s))).collect();
        in_region.sort_by_key(|(_, s)| (s.offset, s.seq));
        let mut kept_bytes: u64 = in_region.iter().filter(|(_, s)| s.pinned).map(|(_, s)| s.len).sum();
        let mut keep = vec![false; in_region.len()];
        for (i, (_, s)) in in_region.iter().enumerate() {
            if s.pinned {
                keep[i] = true;
            } else if self.policy == DiskPolicy::Frequency
                && s.hits > 0
                && kept_bytes + s.len + incoming <= self.region_bytes
            {
                keep[i] = true;
                kept_bytes += s.len;
            }
        }
        let mut kept = Vec::new();
        let mut evicted = Vec::new();
        for ((k, s), keep) in in_region.into_iter().zip(keep) {
            if keep {
                kept.push((k, s));
            } else {
                evicted.push(k);
            }
        }
        (kept, evicted)
    }

    fn apply_reclaim(&mut self, r: u64, kept: Vec<(K, Slot)>, evicted: Vec<K>, placement: &mut Placement<K>) {
        for k in evicted {
            self.remove(&k);
            placement.evicted.push(k);
        }
        self.gap_bytes -= std::mem::take(&mut self.tails[r as usize]);
        let mut off = r * self.region_bytes;
        for (k, s) in kept {
            let hits = if s.pinned { s.hits } else { s.hits.saturating_sub(1) };
            let seq = if s.offset == off { s.seq } else { self.take_seq() };
            if s.offset != off {
                placement.moved.push(Move { key: k.clone(), from: s.offset, to: off, len: s.len, seq });
            }
            self.put_entry(k, Slot { offset: off, seq, hits, ..s });
            off += s.len;
        }
        self.head_off = off - r * self.region_bytes;
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Every held key with its slot (for writing a journal snapshot).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Slot)> {
        self.entries.iter()
    }

    /// Current sizes.
    pub fn stats(&self) -> LogStats {
        LogStats {
            capacity_bytes: self.usable_bytes(),
            live_bytes: self.live_bytes,
            entries: self.entries.len() as u64,
            pinned_bytes: self.pinned_bytes,
            gap_bytes: self.gap_bytes,
        }
    }
}

/// A count-min sketch of 4-bit-style saturating counters (u8 capped at 15)
/// with periodic halving, so popularity follows recent demand.
struct FrequencySketch {
    rows: Vec<Vec<u8>>,
    mask: usize,
    additions: u64,
    hasher: BuildHasherDefault<DefaultHasher>,
}

const SKETCH_ROWS: usize = 4;
const SKETCH_WIDTH: usize = 1 << 16;
const SKETCH_MAX: u8 = 15;

impl FrequencySketch {
    fn new() -> Self {
        Self {
            rows: vec![vec![0; SKETCH_WIDTH]; SKETCH_ROWS],
            mask: SKETCH_WIDTH - 1,
            additions: 0,
            hasher: BuildHasherDefault::default(),
        }
    }

    fn indexes<K: Hash>(&self, key: &K) -> [usize; SKETCH_ROWS] {
        let h = self.hasher.hash_one(key);
        let (a, b) = (h as usize, (h >> 32) as usize | 1);
        std::array::from_fn(|i| a.wrapping_add(i.wrapping_mul(b)) & self.mask)
    }

    fn estimate<K: Hash>(&self, key: &K) -> u8 {
        self.indexes(key).iter().enumerate().map(|(r, &i)| self.rows[r][i]).min().unwrap_or(0)
    }

    fn increment<K: Hash>(&mut self, key: &K, held: usize) {
        for (r, i) in self.indexes(key).into_iter().enumerate() {
            let c = &mut self.rows[r][i];
            *c = (*c + 1).min(SKETCH_MAX);
        }
        self.additions += 1;
        // Age every counter once per ~10 accesses per held object (TinyLFU's reset).
        if self.additions >= (10 * held as u64).max(SKETCH_WIDTH as u64) {
            self.additions = 0;
            for row in &mut self.rows {
                for c in row.iter_mut() {
                    *c /= 2;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_busy(_: u64) -> bool {
        false
    }

    #[test]
    fn default_regions_cover_the_whole_store() {
        for capacity in [1, 1000, 8_000_000, 64 << 20, 10_000_000_000, 4 << 40] {
            let r = region_bytes_for(capacity);
            let regions = capacity / r;
            assert!(capacity - regions * r < regions.max(1), "{capacity}: region {r}");
            assert!(r <= 256 << 20 && (r >= 2 << 20 || regions == 1), "{capacity}: region {r}");
        }
    }

    #[test]
    fn appends_then_wraps_and_evicts_the_oldest_region() {
        let mut log: LogIndex<u32> = LogIndex::new(400, 100, DiskPolicy::Fifo);
        for k in 0..4 {
            let p = log.insert(k, 100, false, never_busy).unwrap();
            assert_eq!(p.offset, u64::from(k) * 100);
        }
        let p = log.insert(4, 60, false, never_busy).unwrap();
        assert_eq!((p.offset, p.evicted.clone()), (0, vec![0]));
        let p = log.insert(5, 60, false, never_busy).unwrap();
        assert_eq!((p.offset, p.evicted.clone()), (100, vec![1]));
        assert_eq!(log.stats().gap_bytes, 40, "region 0's unused tail");
        assert!(log.stats().live_bytes + log.stats().gap_bytes <= 400);
    }

    #[test]
    fn pinned_and_recently_read_objects_survive_a_reclaim() {
        let mut log: LogIndex<u32> = LogIndex::new(200, 100, DiskPolicy::Frequency);
        log.insert(1, 30, true, never_busy).unwrap();
        log.insert(2, 30, false, never_busy).unwrap();
        log.insert(3, 40, false, never_busy).unwrap();
        log.insert(4, 100, false, never_busy).unwrap();
        log.access(&3);
        // New key 5 has no history: it may not evict anything.
        assert_eq!(log.insert(5, 30, false, never_busy), Err(Refusal::NotAdmitted));
        log.access(&5);
        log.access(&5);
        let p = log.insert(5, 30, false, never_busy).unwrap();
        assert_eq!(p.evicted, vec![2]);
        assert_eq!(p.moved.iter().map(|m| (m.key, m.from, m.to)).collect::<Vec<_>>(), vec![(3, 60, 30)]);
        assert_eq!(p.offset, 70);
        assert_eq!(log.slot(&1).unwrap().offset, 0, "pinned stays");
        assert_eq!(log.insert(6, 50, true, never_busy).unwrap().evicted, vec![4]);
    }

    #[test]
    fn busy_regions_and_oversized_objects_are_refused() {
        let mut log: LogIndex<u32> = LogIndex::new(200, 100, DiskPolicy::Fifo);
        assert_eq!(log.insert(1, 101, false, never_busy), Err(Refusal::TooLarge));
        log.insert(1, 100, false, never_busy).unwrap();
        assert_eq!(log.insert(2, 10, false, |r| r == 1), Err(Refusal::Busy));
        assert!(log.insert(2, 10, false, never_busy).is_ok());
        let mut all_pinned: LogIndex<u32> = LogIndex::new(200, 100, DiskPolicy::Fifo);
        all_pinned.insert(1, 100, true, never_busy).unwrap();
        all_pinned.insert(2, 100, true, never_busy).unwrap();
        assert_eq!(all_pinned.insert(3, 10, false, never_busy), Err(Refusal::Full));
        assert!(all_pinned.slot(&1).is_some() && all_pinned.slot(&2).is_some());
    }

    #[test]
    fn restore_continues_the_log_after_the_newest_entry() {
        let mut log: LogIndex<u32> = LogIndex::new(400, 100, DiskPolicy::Fifo);
        assert!(log.restore(7, 100, 50, false, 9));
        assert!(log.restore(8, 0, 50, false, 3));
        assert!(!log.restore(9, 390, 20, false, 10), "crosses the end");
        assert_eq!(log.insert(1, 10, false, never_busy).unwrap().offset, 150);
        assert_eq!(log.stats().entries, 3);
    }

    /// Model check: random operations never overlap live objects nor exceed capacity.
    #[test]
    fn live_objects_never_overlap() {
        for policy in [DiskPolicy::Fifo, DiskPolicy::Frequency] {
            let mut log: LogIndex<u32> = LogIndex::new(1000, 128, policy);
            let mut state: u64 = 42;
            for _ in 0..5000 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = ((state >> 33) % 60) as u32;
                let len = (state >> 20) % 100 + 1;
                log.access(&key);
                if log.slot(&key).is_none() {
                    let _ = log.insert(key, len, key.is_multiple_of(17) && len < 20, never_busy);
                } else if key.is_multiple_of(13) {
                    log.set_pinned(&key, (state >> 40).is_multiple_of(2));
                }
                let mut spans: Vec<(u64, u64)> = log.iter().map(|(_, s)| (s.offset, s.offset + s.len)).collect();
                spans.sort();
                assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap in {spans:?}");
                assert!(spans.last().is_none_or(|s| s.1 <= log.usable_bytes()));
                let live: u64 = spans.iter().map(|s| s.1 - s.0).sum();
                assert_eq!(live, log.stats().live_bytes);
                // Every entry is listed under its region, and nothing else is.
                let listed: usize = log.region_keys.iter().map(HashSet::len).sum();
                assert_eq!(listed, log.entries.len());
                let pinned: u64 = log.region_pinned.iter().sum();
                assert_eq!(pinned, log.stats().pinned_bytes);
                assert!(log.iter().all(|(k, s)| log.region_keys[log.region_of(s.offset) as usize].contains(k)));
            }
        }
    }
}
