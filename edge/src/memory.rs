//! The RAM tier: a byte-weighted moka cache (TinyLFU admission, LRU eviction).
//!
//! The same struct backs the server's RAM tier and both tiers of `edge replay`,
//! so replay measures the policy the server runs. It is moka's *sync* cache:
//! its operations never await, which lets the fill coalescer re-check the cache
//! under its own lock and lets replay run without a runtime. Coalescing of
//! concurrent misses lives in `fill`, not here, so a later disk tier can sit
//! between this tier and the upstream.

use std::hash::{BuildHasherDefault, DefaultHasher, Hash};
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
}

impl<K, V> MemoryTier<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: TierValue,
{
    /// An empty tier holding at most `capacity_bytes` of values.
    pub fn new(capacity_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            // moka weighs in u32; objects here are far below 4 GiB, and a larger
            // one saturates, which still keeps it out of any realistic tier.
            .weigher(|_k: &K, v: &V| u32::try_from(v.weight_bytes()).unwrap_or(u32::MAX))
            .expire_after(ValueTtl)
            .build_with_hasher(FixedHasher::default());
        Self { cache, capacity_bytes }
    }

    /// The value under `key`, if held and fresh. Counts as an access for admission.
    pub fn get(&self, key: &K) -> Option<V> {
        self.cache.get(key)
    }

    /// Offers `value` to the tier. The admission policy may still turn it away
    /// when the tier is full and the key is colder than what it would evict.
    pub fn insert(&self, key: K, value: V) {
        self.cache.insert(key, value);
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
