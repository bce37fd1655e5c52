//! The prefixes learned from each peer. Pure: time is an argument.
//!
//! Announcements add, withdrawals remove at once. When a session goes down its
//! prefixes turn stale and stay for a grace period (a router restart or a short
//! outage must not send every client elsewhere), then go. A new session starts
//! with no live prefixes; stale ones stay until re-announced, withdrawn, an
//! End-of-RIB marker arrives, or the grace runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ipnet::IpNet;

/// Prefixes of one peer.
#[derive(Debug, Clone, Default)]
struct PeerRoutes {
    live: BTreeSet<IpNet>,
    stale: BTreeSet<IpNet>,
    stale_until: Option<Instant>,
}

/// Prefixes learned per peer (peers named by the caller, e.g. their address).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    peers: BTreeMap<String, PeerRoutes>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session with `peer` is established: what it had before is stale until re-announced.
    pub fn session_up(&mut self, peer: &str) {
        let p = self.peers.entry(peer.to_owned()).or_default();
        let live = std::mem::take(&mut p.live);
        p.stale.extend(live);
    }

    /// The session with `peer` ended at `now`: its prefixes stay until `now + grace`.
    pub fn session_down(&mut self, peer: &str, now: Instant, grace: std::time::Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            let live = std::mem::take(&mut p.live);
            p.stale.extend(live);
            if !p.stale.is_empty() {
                p.stale_until = Some(now + grace);
            }
        }
    }

    /// Applies an UPDATE's withdrawals (first) and announcements.
    pub fn apply(&mut self, peer: &str, withdrawn: &[IpNet], announced: &[IpNet]) {
        let p = self.peers.entry(peer.to_owned()).or_default();
        for w in withdrawn {
            p.live.remove(w);
            p.stale.remove(w);
        }
        for a in announced {
            p.stale.remove(a);
            p.live.insert(*a);
        }
    }

    /// End-of-RIB from `peer`: everything still stale was not re-announced, so it goes now.
    pub fn end_of_rib(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.stale.clear();
            p.stale_until = None;
        }
    }

    /// Drops stale prefixes whose grace ended by `now`; true if anything went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for p in self.peers.values_mut() {
            if p.stale_until.is_some_and(|t| t <= now) {
                changed |= !p.stale.is_empty();
                p.stale.clear();
                p.stale_until = None;
            }
        }
        self.peers.retain(|_, p| !p.live.is_empty() || !p.stale.is_empty());
        changed
    }

    /// Number of prefixes `peer` has live (announced in its current session).
    pub fn live_count(&self, peer: &str) -> usize {
        self.peers.get(peer).map_or(0, |p| p.live.len())
    }

    /// Every prefix any peer announced (live or within its grace), sorted, without duplicates.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let all: BTreeSet<IpNet> = self.peers.values().flat_map(|p| p.live.iter().chain(&p.stale)).copied().collect();
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn withdrawals_remove_at_once_and_session_loss_after_the_grace() {
        let t0 = Instant::now();
        let mut t = RouteTable::new();
        t.session_up("r1");
        t.apply("r1", &[], &nets(&["10.1.0.0/16", "10.2.0.0/16", "2001:db8::/32"]));
        t.apply("r1", &nets(&["10.2.0.0/16"]), &[]);
        assert_eq!(t.prefixes(), nets(&["10.1.0.0/16", "2001:db8::/32"]));
        t.session_down("r1", t0, Duration::from_secs(10));
        assert!(!t.expire(t0 + Duration::from_secs(9)));
        assert_eq!(t.prefixes().len(), 2, "kept during the grace");
        assert!(t.expire(t0 + Duration::from_secs(10)));
        assert!(t.prefixes().is_empty());
    }

    #[test]
    fn a_new_session_keeps_stale_routes_until_reannounced_or_end_of_rib() {
        let t0 = Instant::now();
        let mut t = RouteTable::new();
        t.apply("r1", &[], &nets(&["10.1.0.0/16", "10.2.0.0/16"]));
        t.session_down("r1", t0, Duration::from_secs(10));
        t.session_up("r1");
        t.apply("r1", &[], &nets(&["10.1.0.0/16"]));
        assert_eq!(t.live_count("r1"), 1);
        assert_eq!(t.prefixes().len(), 2);
        t.end_of_rib("r1");
        assert_eq!(t.prefixes(), nets(&["10.1.0.0/16"]));
        // Re-announced routes survive the old grace deadline.
        t.session_down("r1", t0, Duration::from_secs(1));
        t.session_up("r1");
        t.apply("r1", &[], &nets(&["10.1.0.0/16"]));
        t.expire(t0 + Duration::from_secs(5));
        assert_eq!(t.prefixes(), nets(&["10.1.0.0/16"]));
    }

    #[test]
    fn peers_are_independent_and_the_union_has_no_duplicates() {
        let mut t = RouteTable::new();
        t.apply("r1", &[], &nets(&["10.1.0.0/16"]));
        t.apply("r2", &[], &nets(&["10.1.0.0/16", "10.3.0.0/16"]));
        t.apply("r2", &nets(&["10.1.0.0/16"]), &[]);
        assert_eq!(t.prefixes(), nets(&["10.1.0.0/16", "10.3.0.0/16"]));
    }
}
