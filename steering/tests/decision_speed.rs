//! How fast the decision is: coverage lookup + ranking over 1,000 edges.
//!
//! `cargo test -p steering --release --test decision_speed -- --ignored --nocapture`
//! (`STEERING_BENCH_PREFIXES=1000000` for the 1M-prefix table). The
//! ignored test only measures and prints; the small one keeps the code path
//! exercised in every run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnet::IpNet;
use steering::{decide, CoverageMap, Edge, Policy, Registry, RegistrySettings};
use vod::steering::Heartbeat;
use vod::TitleId;

/// A deterministic xorshift, so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct World {
    coverage: CoverageMap,
    registry: Registry,
    titles: Vec<TitleId>,
    prefixes: Vec<IpNet>,
}

/// `edges` edges over `edges / 3` sites, `prefixes` random /16../24 IPv4 prefixes spread over the
/// sites, every edge heartbeating with load and a few held titles.
fn world(edges: usize, prefixes: usize) -> World {
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
    let titles: Vec<TitleId> = (0..1000).map(|i| TitleId::new(format!("t{i}")).unwrap()).collect();
    for e in &edge_list {
        let mut hb = Heartbeat::new(e.name.clone());
        hb.load_bps = rng.next() % 10_000_000_000;
        hb.titles = (0..20).map(|_| titles[(rng.next() % 1000) as usize].to_string()).collect();
        registry.heartbeat(hb, 0).unwrap();
    }
    let mut nets = Vec::with_capacity(prefixes);
    let mut entries = Vec::with_capacity(prefixes);
    for _ in 0..prefixes {
        let len = 16 + (rng.next() % 9) as u8;
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)), len).unwrap().trunc();
        nets.push(net);
        entries.push((net, format!("s{}", rng.next() as usize % sites)));
    }
    World { coverage: CoverageMap::build(&[], entries), registry, titles, prefixes: nets }
}

/// Each site's three next sites as its nearness list.
fn nearby(sites: usize) -> Policy {
    let nearby =
        (0..sites).map(|i| (format!("s{i}"), (1..=3).map(|k| format!("s{}", (i + k) % sites)).collect())).collect();
    Policy { overload_percent: 90, max_urls: 8, nearby, ..Policy::default() }
}

/// Runs `n` decisions; returns (decisions/s, p50 ns, p99 ns).
fn measure(w: &World, policy: &Policy, n: usize) -> (f64, u128, u128) {
    let mut rng = Rng(42);
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut offered = 0usize;
    for _ in 0..n {
        let net = w.prefixes[(rng.next() as usize) % w.prefixes.len()];
        let title = &w.titles[(rng.next() as usize) % w.titles.len()];
        let t0 = Instant::now();
        let client = w.coverage.lookup(net.network());
        let d = decide(client.as_ref(), title, &w.registry, policy, 1);
        lat.push(t0.elapsed().as_nanos());
        offered += d.len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(offered >= n, "every decision offers something");
    lat.sort_unstable();
    (n as f64 / secs, lat[n / 2], lat[n * 99 / 100])
}

#[test]
fn decisions_over_many_edges_are_made() {
    let w = world(60, 2_000);
    let (rate, p50, p99) = measure(&w, &nearby(20), 2_000);
    eprintln!("decision (debug build, 60 edges, 2k prefixes): {rate:.0}/s, p50 {p50} ns, p99 {p99} ns");
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn decision_speed() {
    let prefixes = std::env::var("STEERING_BENCH_PREFIXES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let t = Instant::now();
    let w = world(1000, prefixes);
    eprintln!("built 1000 edges, {} prefixes in {:?}", w.coverage.len(), t.elapsed());
    let listed = nearby(1000 / 3);
    let _ = measure(&w, &listed, 10_000);
    let (rate, p50, p99) = measure(&w, &listed, 200_000);
    eprintln!("decision, 3 nearby sites per site: {rate:.0} decisions/s, p50 {p50} ns, p99 {p99} ns");
    let flat = Policy { overload_percent: 90, max_urls: 8, ..Policy::default() };
    let (rate, p50, p99) = measure(&w, &flat, 50_000);
    eprintln!("decision, no nearness lists (every edge ranked): {rate:.0} decisions/s, p50 {p50} ns, p99 {p99} ns");
}
