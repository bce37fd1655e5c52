//! The routing decision: which edges a player should use for a title, best
//! first, with the reasons. Pure: no I/O, no clock.
//!
//! Usable edges (not down, not drained) of the client's site come first, then
//! every other usable edge. Within each group, rendezvous (highest random
//! weight) hashing of (title, edge name) orders the edges, so a title lands on
//! the same edge of a site every time and titles spread evenly across a
//! site's edges; losing an edge moves only that edge's titles.

use vod::TitleId;

use crate::coverage::CoverageMatch;
use crate::health::HealthState;

/// What the ranking needs to know about one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeStatus<'a> {
    /// Unique edge name (hashed for placement).
    pub name: &'a str,
    /// Site the edge sits in.
    pub site: &'a str,
    /// Probe-derived health.
    pub health: HealthState,
    /// Drained edges get no new players.
    pub drained: bool,
}

/// One candidate: the index of the edge in the input slice and why it is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedEdge {
    /// Index into the `edges` slice given to [`rank`].
    pub index: usize,
    /// Human-readable reasons, most important first.
    pub reasons: Vec<String>,
}

/// Rendezvous weight of `edge` for `title`: stable across runs, platforms and
/// Rust versions (FNV-1a, then the murmur3 finalizer for avalanche), because
/// placement decides which edge caches a title.
pub fn rendezvous_weight(title: &str, edge: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    // 0xff never occurs in UTF-8, so ("ab","c") and ("a","bc") hash apart.
    for &b in title.as_bytes().iter().chain(&[0xff]).chain(edge.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn health_reason(h: HealthState) -> &'static str {
    match h {
        HealthState::Up => "healthy",
        HealthState::Unknown => "health unknown (not probed yet), treated as up",
        HealthState::Down => "down",
    }
}

/// Orders `indices` by descending rendezvous weight (ties by name, for determinism).
fn rendezvous_order(title: &str, edges: &[EdgeStatus<'_>], indices: &mut [usize]) {
    indices.sort_by(|&a, &b| {
        rendezvous_weight(title, edges[b].name)
            .cmp(&rendezvous_weight(title, edges[a].name))
            .then_with(|| edges[a].name.cmp(edges[b].name))
    });
}

/// Ranks the usable edges for `title` and a client placed by `client` (None: not covered).
pub fn rank(title: &TitleId, client: Option<&CoverageMatch>, edges: &[EdgeStatus<'_>]) -> Vec<RankedEdge> {
    let usable = |e: &EdgeStatus<'_>| e.health.is_usable() && !e.drained;
    let in_site = |e: &EdgeStatus<'_>| client.is_some_and(|c| c.site == e.site);
    let mut local: Vec<usize> = (0..edges.len()).filter(|&i| usable(&edges[i]) && in_site(&edges[i])).collect();
    let mut other: Vec<usize> = (0..edges.len()).filter(|&i| usable(&edges[i]) && !in_site(&edges[i])).collect();
    rendezvous_order(title.as_str(), edges, &mut local);
    rendezvous_order(title.as_str(), edges, &mut other);

    let mut out = Vec::with_capacity(local.len() + other.len());
    let n_local = local.len();
    // `local` is empty unless the client is covered.
    if let Some(c) = client {
        for (k, &i) in local.iter().enumerate() {
            out.push(RankedEdge {
                index: i,
                reasons: vec![
                    format!("in client site {} via {}", c.site, c.prefix),
                    format!("rendezvous rank {} of {n_local} in site", k + 1),
                    health_reason(edges[i].health).to_owned(),
                ],
            });
        }
    }
    let n_other = other.len();
    for (k, &i) in other.iter().enumerate() {
        let (placement, group) = match client {
            Some(c) => (format!("outside client site {} (edge in {})", c.site, edges[i].site), "outside client site"),
            None => ("site fallback: client not in any covered prefix".to_owned(), "across all sites"),
        };
        out.push(RankedEdge {
            index: i,
            reasons: vec![
                placement,
                format!("rendezvous rank {} of {n_other} {group}", k + 1),
                health_reason(edges[i].health).to_owned(),
            ],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st<'a>(name: &'a str, site: &'a str, health: HealthState) -> EdgeStatus<'a> {
        EdgeStatus { name, site, health, drained: false }
    }

    fn client(site: &str) -> CoverageMatch {
        CoverageMatch { site: site.into(), prefix: "10.1.0.0/16".parse().unwrap() }
    }

    fn t(s: &str) -> TitleId {
        TitleId::new(s).unwrap()
    }

    fn names(edges: &[EdgeStatus<'_>], r: &[RankedEdge]) -> Vec<String> {
        r.iter().map(|c| edges[c.index].name.to_owned()).collect()
    }

    #[test]
    fn client_site_comes_first_with_reasons() {
        let edges = [
            st("b1", "lab-b", HealthState::Up),
            st("a1", "lab-a", HealthState::Up),
            st("a2", "lab-a", HealthState::Unknown),
        ];
        let r = rank(&t("bbb"), Some(&client("lab-a")), &edges);
        let n = names(&edges, &r);
        assert_eq!(n.len(), 3);
        assert!(n[0].starts_with('a') && n[1].starts_with('a') && n[2] == "b1", "{n:?}");
        assert_eq!(r[0].reasons[0], "in client site lab-a via 10.1.0.0/16");
        assert_eq!(r[0].reasons[1], "rendezvous rank 1 of 2 in site");
        assert_eq!(r[1].reasons[1], "rendezvous rank 2 of 2 in site");
        assert!(r[2].reasons[0].starts_with("outside client site lab-a"), "{:?}", r[2].reasons);
        let a2 = r.iter().find(|c| edges[c.index].name == "a2").unwrap();
        assert!(a2.reasons.iter().any(|s| s.contains("treated as up")));
    }

    #[test]
    fn uncovered_client_gets_fallback_over_all_sites() {
        let edges = [st("a1", "lab-a", HealthState::Up), st("b1", "lab-b", HealthState::Up)];
        let r = rank(&t("bbb"), None, &edges);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|c| c.reasons[0] == "site fallback: client not in any covered prefix"));
        assert_eq!(r[0].reasons[2], "healthy");
    }

    #[test]
    fn down_and_drained_edges_are_skipped() {
        let mut edges = [
            st("a1", "lab-a", HealthState::Down),
            st("a2", "lab-a", HealthState::Up),
            st("b1", "lab-b", HealthState::Up),
        ];
        edges[1].drained = true;
        let r = rank(&t("bbb"), Some(&client("lab-a")), &edges);
        assert_eq!(names(&edges, &r), vec!["b1"]);
        edges[2].health = HealthState::Down;
        assert!(rank(&t("bbb"), Some(&client("lab-a")), &edges).is_empty());
    }

    #[test]
    fn rendezvous_is_stable_and_spreads_titles_evenly() {
        let edges = [
            st("a1", "lab-a", HealthState::Up),
            st("a2", "lab-a", HealthState::Up),
            st("a3", "lab-a", HealthState::Up),
        ];
        let c = client("lab-a");
        let mut counts = [0usize; 3];
        let titles: Vec<TitleId> = (0..3000).map(|i| t(&format!("title-{i}"))).collect();
        for title in &titles {
            let first = rank(title, Some(&c), &edges)[0].index;
            assert_eq!(rank(title, Some(&c), &edges)[0].index, first, "same title, same edge");
            counts[first] += 1;
        }
        for n in counts {
            assert!((850..=1150).contains(&n), "uneven spread {counts:?}");
        }
        // Losing a3 moves only a3's titles.
        let without = &edges[..2];
        for title in &titles {
            let before = rank(title, Some(&c), &edges)[0].index;
            let after = rank(title, Some(&c), without)[0].index;
            if before != 2 {
                assert_eq!(before, after, "{title} moved although its edge stayed");
            }
        }
    }

    #[test]
    fn weight_is_a_fixed_function() {
        // Placement must not change between builds: caches are filled by it.
        assert_eq!(rendezvous_weight("bbb", "a1"), rendezvous_weight("bbb", "a1"));
        assert_ne!(rendezvous_weight("ab", "c"), rendezvous_weight("a", "bc"));
        assert_eq!(rendezvous_weight("bbb", "a1"), PINNED_BBB_A1);
    }

    const PINNED_BBB_A1: u64 = 13_675_614_111_078_020_015;
}
