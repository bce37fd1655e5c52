//! Rendezvous (highest random weight) hashing of (title, edge name): within a
//! site, the edge with the highest weight for a title is that title's owner, so
//! a title lands on the same edge of a site every time, titles spread evenly
//! across a site's edges, and losing an edge moves only that edge's titles.
//! [`mod@crate::decide`] uses it; fill plans must agree with it.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Rendezvous weight of `edge` for `title`: stable across runs, platforms and
/// Rust versions (FNV-1a, then the murmur3 finalizer for avalanche), because
/// placement decides which edge caches a title.
pub fn rendezvous_weight(title: &str, edge: &str) -> u64 {
    TitleHasher::new(title).weight(edge)
}

/// The title's half of [`rendezvous_weight`], hashed once per decision: weighing
/// a thousand edges then costs only their names.
#[derive(Debug, Clone, Copy)]
pub struct TitleHasher(u64);

impl TitleHasher {
    /// Hashes `title` and the separator.
    pub fn new(title: &str) -> Self {
        // 0xff never occurs in UTF-8, so ("ab","c") and ("a","bc") hash apart.
        Self(fnv(fnv(OFFSET, title.as_bytes()), &[0xff]))
    }

    /// Equal to `rendezvous_weight(title, edge)`.
    pub fn weight(self, edge: &str) -> u64 {
        finish(fnv(self.0, edge.as_bytes()))
    }
}

/// A 64-bit key of a title for "which titles does an edge hold" sets (no
/// separator, so it differs from every weight).
pub fn title_key(title: &str) -> u64 {
    finish(fnv(OFFSET, title.as_bytes()))
}

/// A hasher for keys that are already good hashes ([`title_key`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with it; fold anything else anyway.
        self.0 = fnv(self.0 ^ OFFSET, bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A set of [`title_key`]s.
pub type TitleSet = std::collections::HashSet<u64, std::hash::BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_a_fixed_function() {
        // Placement must not change between builds: caches are filled by it.
        assert_eq!(rendezvous_weight("bbb", "a1"), rendezvous_weight("bbb", "a1"));
        assert_ne!(rendezvous_weight("ab", "c"), rendezvous_weight("a", "bc"));
        assert_eq!(rendezvous_weight("bbb", "a1"), PINNED_BBB_A1);
        assert_eq!(TitleHasher::new("bbb").weight("a1"), PINNED_BBB_A1);
        assert_ne!(title_key("bbb"), title_key("bbc"));
    }

    #[test]
    fn losing_an_edge_moves_only_its_titles() {
        let edges = ["a1", "a2", "a3"];
        fn owner<'a>(title: &str, edges: &[&'a str]) -> &'a str {
            edges.iter().max_by_key(|e| rendezvous_weight(title, e)).unwrap()
        }
        for i in 0..3000 {
            let title = format!("title-{i}");
            let before = owner(&title, &edges);
            if before != "a3" {
                assert_eq!(owner(&title, &edges[..2]), before, "{title} moved although its edge stayed");
            }
        }
    }

    const PINNED_BBB_A1: u64 = 13_675_614_111_078_020_015;
}
