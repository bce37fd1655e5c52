//! The decision micro-benchmark behind `steering bench-decide` (hidden): a
//! generated world of edges, sites and coverage prefixes, and per-call
//! latency percentiles of coverage lookup + [`decide`]. Deterministic, so
//! runs compare.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;
use serde::Serialize;
use vod::steering::Heartbeat;
use vod::TitleId;

use crate::config::Edge;
use crate::coverage::CoverageMap;
use crate::decide::{decide, Policy};
use crate::registry::{Registry, RegistrySettings};

/// A xorshift generator.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A random prefix: 4 in 5 IPv4 /16../24, the rest IPv6 /32../48 under 2000::/3.
pub fn random_prefix(rng: &mut Rng) -> IpNet {
    if rng.next_u64().is_multiple_of(5) {
        let len = 32 + (rng.next_u64() % 17) as u8;
        let raw = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let bits = (raw & !(0b111u128 << 125)) | (1u128 << 125);
        IpNet::new(IpAddr::V6(Ipv6Addr::from(bits)), len).unwrap_or_else(|_| unreachable!("len <= 128")).trunc()
    } else {
        let len = 16 + (rng.next_u64() % 9) as u8;
        IpNet::new(IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)), len)
            .unwrap_or_else(|_| unreachable!("len <= 32"))
            .trunc()
    }
}

/// What the benchmark decides over.
pub struct World {
    pub coverage: CoverageMap,
    pub registry: Registry,
    pub titles: Vec<TitleId>,
    pub prefixes: Vec<IpNet>,
    pub policy: Policy,
}

/// `edges` edges, three per site, each heartbeating with load and 20 held titles (of 1,000);
/// `prefixes` random prefixes spread over the sites; each site lists its next three as nearby.
pub fn world(edges: usize, prefixes: usize) -> World {
    let sites = (edges / 3).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let edge_list: Vec<Edge> = (0..edges)
        .map(|i| Edge {
            name: format!("e{i}"),
            base_url: format!("http://10.255.{}.{}:80", i / 250, i % 250),
            site: format!("s{}", i % sites),
            prefixes: Vec::new(),
            drained: false,
            max_load_bps: Some(10_000_000_000),
        })
        .collect();
    let mut registry = Registry::new(edge_list.clone(), RegistrySettings::default());
    let titles: Vec<TitleId> = (0..1000).filter_map(|i| TitleId::new(format!("t{i}")).ok()).collect();
    for e in &edge_list {
        let mut hb = Heartbeat::new(e.name.clone());
        hb.load_bps = rng.next_u64() % 10_000_000_000;
        hb.titles = (0..20).map(|_| titles[(rng.next_u64() % 1000) as usize].to_string()).collect();
        // Known names and no URL change: cannot fail.
        let _ = registry.heartbeat(hb, 0);
    }
    let mut nets = Vec::with_capacity(prefixes);
    let mut entries = Vec::with_capacity(prefixes);
    let mut seen = std::collections::HashSet::with_capacity(prefixes);
    while nets.len() < prefixes {
        let net = random_prefix(&mut rng);
        if !seen.insert(net) {
            continue;
        }
        nets.push(net);
        entries.push((net, format!("s{}", rng.next_u64() as usize % sites)));
    }
    let nearby =
        (0..sites).map(|i| (format!("s{i}"), (1..=3).map(|k| format!("s{}", (i + k) % sites)).collect())).collect();
    let policy = Policy { overload_percent: 90, max_urls: 8, nearby, ..Policy::default() };
    World { coverage: CoverageMap::build(&[], entries), registry, titles, prefixes: nets, policy }
}

/// Per-call latency of lookup + decide over `n` random (client, title) pairs.
#[derive(Debug, Clone, Serialize)]
pub struct DecideReport {
    pub edges: usize,
    pub prefixes: usize,
    pub decisions: usize,
    pub decisions_per_s: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Mean candidates per answer (shows the work is real).
    pub mean_candidates: f64,
}

/// Times `n` decisions, each one on its own (clock read before and after every call).
pub fn measure(w: &World, n: usize) -> DecideReport {
    let mut rng = Rng(42);
    let mut lat: Vec<u64> = Vec::with_capacity(n);
    let mut offered = 0usize;
    let start = Instant::now();
    for _ in 0..n {
        let net = w.prefixes[(rng.next_u64() as usize) % w.prefixes.len()];
        let title = &w.titles[(rng.next_u64() as usize) % w.titles.len()];
        let t0 = Instant::now();
        let client = w.coverage.lookup(net.network());
        let d = decide(client.as_ref(), title, &w.registry, &w.policy, 1);
        lat.push(t0.elapsed().as_nanos() as u64);
        offered += std::hint::black_box(d).len();
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((n as f64 * p) as usize).min(n.saturating_sub(1))).copied().unwrap_or(0);
    DecideReport {
        edges: w.registry.edges().len(),
        prefixes: w.coverage.len(),
        decisions: n,
        decisions_per_s: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        p50_ns: pct(0.50),
        p90_ns: pct(0.90),
        p99_ns: pct(0.99),
        p999_ns: pct(0.999),
        max_ns: lat.last().copied().unwrap_or(0),
        mean_candidates: if n == 0 { 0.0 } else { offered as f64 / n as f64 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_world_decides_for_v4_and_v6_clients() {
        let w = world(30, 500);
        assert_eq!(w.registry.edges().len(), 30);
        assert!(w.prefixes.iter().any(|p| matches!(p, IpNet::V4(_))));
        assert!(w.prefixes.iter().any(|p| matches!(p, IpNet::V6(_))));
        let r = measure(&w, 500);
        assert_eq!(r.decisions, 500);
        assert!(r.mean_candidates >= 1.0, "{r:?}");
        assert!(r.p50_ns <= r.p99_ns && r.p99_ns <= r.max_ns);
    }
}
