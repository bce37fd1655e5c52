//! The edge registry: every edge steering knows (from config or by
//! heartbeat), what its probes, heartbeats and circuit breaker say, and
//! whether it may get players at a given instant. Pure: time is an argument.
//!
//! An edge is out when it is drained (config or heartbeat), when its probes
//! say down, when it has sent heartbeats but none for `heartbeat_timeout_ms`,
//! when its last heartbeat says not ok, or while its breaker holds it out.
//!
//! The breaker: an edge that fails again within `window` of recovering is
//! flapping; after its next recovery it stays out for a backoff that starts at
//! `backoff` and doubles per flap up to `max_backoff`. An edge that stays up
//! for a whole window starts over. A first failure has no hold-out, so a
//! single blip costs nothing once the edge is back.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Serialize;
use vod::steering::Heartbeat;

use crate::config::{check_base_url, Edge};
use crate::health::{EdgeHealth, HealthState, ProbeOutcome};
use crate::rank::{title_key, TitleSet};

/// Timing of heartbeats, probes and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Heartbeat silence after which an edge that has sent one is out.
    pub heartbeat_timeout_ms: u64,
    /// Consecutive failed probes that make an edge down.
    pub failures_to_down: u32,
    /// First hold-out of a flapping edge.
    pub breaker_backoff_ms: u64,
    /// Longest hold-out.
    pub breaker_max_backoff_ms: u64,
    /// A failure within this long after a recovery is a flap.
    pub breaker_window_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 2500,
            failures_to_down: 2,
            breaker_backoff_ms: 10_000,
            breaker_max_backoff_ms: 300_000,
            breaker_window_ms: 60_000,
        }
    }
}

/// Why an edge gets no players right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutReason {
    /// Drained by config or by its own heartbeat.
    Drained,
    /// Active probes failed.
    ProbeDown,
    /// It used to heartbeat and stopped.
    HeartbeatMissed,
    /// Its last heartbeat reported it unhealthy.
    ReportsUnhealthy,
    /// Recovered, but held out by the circuit breaker.
    BreakerOpen,
    /// Its enrollment was revoked (`steering edges revoke`).
    Revoked,
}

impl OutReason {
    /// Kebab-case name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OutReason::Drained => "drained",
            OutReason::ProbeDown => "probe-down",
            OutReason::HeartbeatMissed => "heartbeat-missed",
            OutReason::ReportsUnhealthy => "reports-unhealthy",
            OutReason::BreakerOpen => "breaker-open",
            OutReason::Revoked => "revoked",
        }
    }
}

/// The last heartbeat of an edge, as kept by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatState {
    /// When it arrived (Unix ms).
    pub at_ms: u64,
    /// The edge's own health.
    pub ok: bool,
    /// Egress bits/s.
    pub load_bps: u64,
    /// Open connections.
    pub connections: u64,
    /// Cache capacity, bytes.
    pub capacity_bytes: u64,
    /// Egress capacity, bits/s (0: unknown).
    pub max_load_bps: u64,
    /// Asked for no new players.
    pub drained: bool,
    /// Titles it holds, as [`title_key`]s.
    pub titles: TitleSet,
}

/// Circuit-breaker memory of one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Breaker {
    /// Raw availability (ignoring the breaker) at the last update.
    raw_in: bool,
    /// When it last came back (Unix ms).
    last_back_ms: Option<u64>,
    /// Hold-out applied after the next recovery (0: none).
    pub backoff_ms: u64,
    /// Out until this instant (Unix ms) even if otherwise fine.
    pub open_until_ms: u64,
    /// Flaps counted since it was last stable.
    pub flaps: u32,
}

impl Breaker {
    fn new() -> Self {
        Self { raw_in: true, ..Self::default() }
    }

    /// Feeds the raw availability observed at `now`.
    fn update(&mut self, raw_in: bool, now_ms: u64, s: &RegistrySettings) {
        match (self.raw_in, raw_in) {
            (true, false) => {
                let flapped = self.last_back_ms.is_some_and(|b| now_ms.saturating_sub(b) < s.breaker_window_ms);
                if flapped {
                    self.flaps = self.flaps.saturating_add(1);
                    self.backoff_ms = if self.backoff_ms == 0 {
                        s.breaker_backoff_ms
                    } else {
                        self.backoff_ms.saturating_mul(2).min(s.breaker_max_backoff_ms)
                    };
                } else {
                    self.flaps = 0;
                    self.backoff_ms = 0;
                }
            }
            (false, true) => {
                self.last_back_ms = Some(now_ms);
                self.open_until_ms = now_ms.saturating_add(self.backoff_ms);
            }
            _ => {}
        }
        self.raw_in = raw_in;
    }
}

/// One edge in the registry.
#[derive(Debug, Clone)]
pub struct EdgeEntry {
    /// Name, URL, site, prefixes, drain flag, configured capacity.
    pub edge: Edge,
    /// Probe results.
    pub probe: EdgeHealth,
    /// Last heartbeat, if it ever sent one.
    pub heartbeat: Option<HeartbeatState>,
    /// Flap protection.
    pub breaker: Breaker,
    /// Cut off by `steering edges revoke`: never gets players.
    pub revoked: bool,
    /// Client prefixes its last heartbeat reported (learned over BGP or static), sorted.
    pub reported_prefixes: Vec<IpNet>,
    /// `prefixes_digest` of the list those came in (as the edge sent it); None before any.
    pub reported_digest: Option<String>,
}

impl EdgeEntry {
    fn new(edge: Edge) -> Self {
        Self {
            edge,
            probe: EdgeHealth::default(),
            heartbeat: None,
            breaker: Breaker::new(),
            revoked: false,
            reported_prefixes: Vec::new(),
            reported_digest: None,
        }
    }

    /// Out reason ignoring the breaker, or None when the edge may serve.
    fn raw_out(&self, now_ms: u64, s: &RegistrySettings) -> Option<OutReason> {
        if self.revoked {
            return Some(OutReason::Revoked);
        }
        if self.edge.drained || self.heartbeat.as_ref().is_some_and(|h| h.drained) {
            return Some(OutReason::Drained);
        }
        if self.probe.state == HealthState::Down {
            return Some(OutReason::ProbeDown);
        }
        if let Some(h) = &self.heartbeat {
            if now_ms.saturating_sub(h.at_ms) > s.heartbeat_timeout_ms {
                return Some(OutReason::HeartbeatMissed);
            }
            if !h.ok {
                return Some(OutReason::ReportsUnhealthy);
            }
        }
        None
    }

    /// Whether the edge holds `title`, by its last heartbeat (false when unknown).
    pub fn holds(&self, title: &str) -> bool {
        self.holds_key(title_key(title))
    }

    /// [`Self::holds`] for a precomputed [`title_key`].
    pub fn holds_key(&self, key: u64) -> bool {
        self.heartbeat.as_ref().is_some_and(|h| h.titles.contains(&key))
    }

    /// Egress capacity: the heartbeat's figure if given, else the configured one.
    pub fn max_load_bps(&self) -> Option<u64> {
        self.heartbeat.as_ref().map(|h| h.max_load_bps).filter(|&m| m > 0).or(self.edge.max_load_bps)
    }

    /// True when its reported load reaches `percent` % of its capacity.
    pub fn overloaded(&self, percent: u32) -> bool {
        match (self.heartbeat.as_ref(), self.max_load_bps()) {
            (Some(h), Some(max)) if max > 0 => u128::from(h.load_bps) * 100 >= u128::from(max) * u128::from(percent),
            _ => false,
        }
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("unknown edge {0:?}: send url and site to register it")]
    UnknownEdge(String),
    #[error("edge name must be 1..=64 characters of [A-Za-z0-9._-]")]
    BadName,
    #[error("edge {edge:?}: url {url:?} is not a usable base URL: {reason}")]
    BadUrl { edge: String, url: String, reason: String },
    #[error("edge {0:?}: site must not be empty")]
    EmptySite(String),
    #[error("edge {edge:?}: reported prefix {prefix:?} is not a CIDR prefix")]
    BadPrefix { edge: String, prefix: String },
    #[error("edge {edge:?}: {count} reported prefixes, more than the {max} accepted")]
    TooManyPrefixes { edge: String, count: usize, max: usize },
}

/// Most client prefixes one edge may report.
pub const MAX_REPORTED_PREFIXES: usize = 100_000;

/// Parses, truncates, sorts and dedups the prefixes of a heartbeat.
fn parse_reported(edge: &str, list: &[String]) -> Result<Vec<IpNet>, HeartbeatError> {
    if list.len() > MAX_REPORTED_PREFIXES {
        return Err(HeartbeatError::TooManyPrefixes {
            edge: edge.to_owned(),
            count: list.len(),
            max: MAX_REPORTED_PREFIXES,
        });
    }
    let mut nets = list
        .iter()
        .map(|p| {
            p.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| HeartbeatError::BadPrefix { edge: edge.to_owned(), prefix: p.clone() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

/// All edges steering knows, indexed by name and by site.
#[derive(Debug, Clone)]
pub struct Registry {
    settings: RegistrySettings,
    edges: Vec<EdgeEntry>,
    by_name: HashMap<String, usize>,
    site_ids: HashMap<String, u32>,
    /// Edge indices per site id.
    site_members: Vec<Vec<usize>>,
    /// Site id per edge index.
    site_of: Vec<u32>,
    /// Bumped whenever an edge's reported prefix set changes, so coverage is rebuilt only then.
    reported_generation: u64,
}

impl Registry {
    /// A registry of the configured edges, none probed or heard from yet.
    pub fn new(edges: Vec<Edge>, settings: RegistrySettings) -> Self {
        let mut reg = Self {
            settings,
            edges: Vec::new(),
            by_name: HashMap::new(),
            site_ids: HashMap::new(),
            site_members: Vec::new(),
            site_of: Vec::new(),
            reported_generation: 0,
        };
        for e in edges {
            reg.insert(e);
        }
        reg
    }

    fn insert(&mut self, edge: Edge) -> usize {
        let i = self.edges.len();
        self.by_name.insert(edge.name.clone(), i);
        let next = u32::try_from(self.site_members.len()).unwrap_or(u32::MAX);
        let sid = *self.site_ids.entry(edge.site.clone()).or_insert(next);
        if sid == next {
            self.site_members.push(Vec::new());
        }
        self.site_members[sid as usize].push(i);
        self.site_of.push(sid);
        self.edges.push(EdgeEntry::new(edge));
        i
    }

    /// Settings in force.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Every edge, in registration order (indices are stable).
    pub fn edges(&self) -> &[EdgeEntry] {
        &self.edges
    }

    /// Indices of the edges of `site` (empty if none).
    pub fn site(&self, site: &str) -> &[usize] {
        self.site_id(site).map_or(&[], |id| self.site_members[id as usize].as_slice())
    }

    /// Dense id (0..site_count) of a site.
    pub fn site_id(&self, site: &str) -> Option<u32> {
        self.site_ids.get(site).copied()
    }

    /// Number of distinct sites.
    pub fn site_count(&self) -> usize {
        self.site_members.len()
    }

    /// Site id of edge `i`.
    pub fn site_of(&self, i: usize) -> u32 {
        self.site_of[i]
    }

    /// Every site with its edge indices.
    pub fn sites(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.site_ids.iter().map(|(s, &id)| (s.as_str(), self.site_members[id as usize].as_slice()))
    }

    /// Index of the edge called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Why edge `i` gets no players at `now`, or None if it may.
    pub fn out_reason(&self, i: usize, now_ms: u64) -> Option<OutReason> {
        let e = &self.edges[i];
        e.raw_out(now_ms, &self.settings)
            .or_else(|| (now_ms < e.breaker.open_until_ms).then_some(OutReason::BreakerOpen))
    }

    /// Whether edge `i` may get players at `now`.
    pub fn is_in(&self, i: usize, now_ms: u64) -> bool {
        self.out_reason(i, now_ms).is_none()
    }

    /// Marks edge `name` revoked (out at once) or not; true when that changed anything.
    pub fn set_revoked(&mut self, name: &str, revoked: bool) -> bool {
        match self.index_of(name) {
            Some(i) if self.edges[i].revoked != revoked => {
                self.edges[i].revoked = revoked;
                true
            }
            _ => false,
        }
    }

    /// Whether edge `i`'s reported prefixes count at `now`: it is not revoked and its last
    /// heartbeat is at most `hold_ms` old (an edge silent for longer has lost its clients).
    fn reports_live(&self, i: usize, now_ms: u64, hold_ms: u64) -> bool {
        let e = &self.edges[i];
        !e.revoked
            && !e.reported_prefixes.is_empty()
            && e.heartbeat.as_ref().is_some_and(|h| now_ms.saturating_sub(h.at_ms) <= hold_ms)
    }

    /// What the coverage built from reported prefixes depends on at `now`: a generation bumped on
    /// every change of a reported set, and which edges' sets count. Cheap (one pass over the edges),
    /// so a caller can compare it on every heartbeat and rebuild coverage only when it differs.
    pub fn reported_key(&self, now_ms: u64, hold_ms: u64) -> (u64, Vec<usize>) {
        let live = (0..self.edges.len()).filter(|&i| self.reports_live(i, now_ms, hold_ms)).collect();
        (self.reported_generation, live)
    }

    /// (prefix, site) of every prefix that edges reported and that counts at `now`, in edge
    /// registration order (the first edge to report a prefix names its site).
    pub fn reported_coverage(&self, now_ms: u64, hold_ms: u64) -> Vec<(IpNet, String)> {
        (0..self.edges.len())
            .filter(|&i| self.reports_live(i, now_ms, hold_ms))
            .flat_map(|i| {
                let e = &self.edges[i];
                e.reported_prefixes.iter().map(move |p| (*p, e.edge.site.clone()))
            })
            .collect()
    }

    /// Re-evaluates every breaker at `now` (call after probes and periodically).
    pub fn tick(&mut self, now_ms: u64) {
        let s = self.settings;
        for e in &mut self.edges {
            let raw_in = e.raw_out(now_ms, &s).is_none();
            e.breaker.update(raw_in, now_ms, &s);
        }
    }

    /// Records a probe outcome for edge `name`; returns the new probe state if it changed.
    pub fn record_probe(&mut self, name: &str, outcome: ProbeOutcome, now_ms: u64) -> Option<HealthState> {
        let i = self.index_of(name)?;
        let failures = self.settings.failures_to_down;
        let changed = self.edges[i].probe.record(outcome, now_ms, failures);
        let raw_in = self.edges[i].raw_out(now_ms, &self.settings).is_none();
        let s = self.settings;
        self.edges[i].breaker.update(raw_in, now_ms, &s);
        changed
    }

    /// (name, health URL) of every edge, for the prober.
    pub fn probe_targets(&self) -> Vec<(String, String)> {
        self.edges.iter().map(|e| (e.edge.name.clone(), e.edge.health_url())).collect()
    }

    /// Applies a heartbeat received at `now`; registers an unknown edge that sends url and site.
    /// Returns the edge's index.
    pub fn heartbeat(&mut self, hb: Heartbeat, now_ms: u64) -> Result<usize, HeartbeatError> {
        // Checked first: a heartbeat with a bad prefix changes nothing. A heartbeat with only a
        // digest keeps the set held (the answer tells the edge which one that is, so it sends its
        // whole set when they differ), or empties it when the digest is the empty set's.
        let reported = match &hb.prefixes_sha256 {
            Some(d) if hb.prefixes.is_empty() => (*d == vod::steering::prefixes_digest(&[])).then(Vec::new),
            _ => Some(parse_reported(&hb.edge, &hb.prefixes)?),
        };
        let i = match self.index_of(&hb.edge) {
            Some(i) => i,
            None => {
                let name = hb.edge.clone();
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(HeartbeatError::BadName);
                }
                let (Some(url), Some(site)) = (hb.url.as_deref(), hb.site.as_deref()) else {
                    return Err(HeartbeatError::UnknownEdge(name));
                };
                if site.trim().is_empty() {
                    return Err(HeartbeatError::EmptySite(name));
                }
                let base_url = check_base_url(url).map_err(|reason| HeartbeatError::BadUrl {
                    edge: name.clone(),
                    url: url.to_owned(),
                    reason,
                })?;
                self.insert(Edge {
                    name,
                    base_url,
                    site: site.to_owned(),
                    prefixes: Vec::new(),
                    drained: false,
                    max_load_bps: None,
                })
            }
        };
        // An edge that restarted elsewhere (a new port, a new address) says so; its own URL wins.
        if let Some(url) = hb.url.as_deref() {
            if let Ok(base_url) = check_base_url(url) {
                if base_url != self.edges[i].edge.base_url {
                    self.edges[i].edge.base_url = base_url;
                }
            }
        }
        if let Some(reported) = reported {
            self.edges[i].reported_digest = Some(vod::steering::prefixes_digest(&hb.prefixes));
            if self.edges[i].reported_prefixes != reported {
                self.edges[i].reported_prefixes = reported;
                self.reported_generation += 1;
            }
        }
        self.edges[i].heartbeat = Some(HeartbeatState {
            at_ms: now_ms,
            ok: hb.ok,
            load_bps: hb.load_bps,
            connections: hb.connections,
            capacity_bytes: hb.capacity_bytes,
            max_load_bps: hb.max_load_bps,
            drained: hb.drained,
            titles: hb.titles.iter().map(|t| title_key(t)).collect(),
        });
        let raw_in = self.edges[i].raw_out(now_ms, &self.settings).is_none();
        let s = self.settings;
        self.edges[i].breaker.update(raw_in, now_ms, &s);
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn edge(name: &str, site: &str) -> Edge {
        Edge {
            name: name.into(),
            base_url: format!("http://{name}.test"),
            site: site.into(),
            prefixes: Vec::new(),
            drained: false,
            max_load_bps: None,
        }
    }

    fn reg() -> Registry {
        Registry::new(vec![edge("a1", "lab-a"), edge("a2", "lab-a"), edge("b1", "lab-b")], RegistrySettings::default())
    }

    fn fail() -> ProbeOutcome {
        ProbeOutcome::Failed("boom".into())
    }

    #[test]
    fn configured_edges_are_in_until_told_otherwise() {
        let r = reg();
        assert!((0..3).all(|i| r.is_in(i, 1_000)));
        assert_eq!(r.site("lab-a"), &[0, 1]);
        assert_eq!(r.index_of("b1"), Some(2));
    }

    #[test]
    fn missed_heartbeats_take_an_edge_out_only_once_it_has_sent_one() {
        let mut r = reg();
        r.heartbeat(Heartbeat::new("a1"), 10_000).unwrap();
        assert!(r.is_in(0, 12_500));
        assert_eq!(r.out_reason(0, 12_501), Some(OutReason::HeartbeatMissed));
        assert!(r.is_in(1, 1_000_000), "a2 never heartbeats: probes alone decide");
        r.heartbeat(Heartbeat::new("a1"), 13_000).unwrap();
        assert!(r.is_in(0, 13_000));
    }

    #[test]
    fn unhealthy_or_drained_heartbeats_and_probe_failures_take_it_out() {
        let mut r = reg();
        let mut hb = Heartbeat::new("a1");
        hb.ok = false;
        r.heartbeat(hb.clone(), 0).unwrap();
        assert_eq!(r.out_reason(0, 0), Some(OutReason::ReportsUnhealthy));
        hb.ok = true;
        hb.drained = true;
        r.heartbeat(hb, 1).unwrap();
        assert_eq!(r.out_reason(0, 1), Some(OutReason::Drained));
        r.record_probe("b1", fail(), 1);
        assert!(r.is_in(2, 1), "one failure is not enough");
        r.record_probe("b1", fail(), 2);
        assert_eq!(r.out_reason(2, 2), Some(OutReason::ProbeDown));
        r.record_probe("b1", ProbeOutcome::Ok, 3);
        assert!(r.is_in(2, 3), "a first failure has no hold-out");
    }

    #[test]
    fn breaker_holds_a_flapping_edge_out_with_doubling_backoff() {
        let mut r = Registry::new(
            vec![edge("a1", "lab-a")],
            RegistrySettings { failures_to_down: 1, ..RegistrySettings::default() },
        );
        r.record_probe("a1", fail(), 1_000);
        r.record_probe("a1", ProbeOutcome::Ok, 2_000);
        assert!(r.is_in(0, 2_000));
        // Fails again within the window: a flap.
        r.record_probe("a1", fail(), 3_000);
        r.record_probe("a1", ProbeOutcome::Ok, 4_000);
        assert_eq!(r.out_reason(0, 4_000), Some(OutReason::BreakerOpen));
        assert_eq!(r.out_reason(0, 13_999), Some(OutReason::BreakerOpen));
        assert!(r.is_in(0, 14_000), "10 s backoff");
        r.record_probe("a1", fail(), 15_000);
        r.record_probe("a1", ProbeOutcome::Ok, 16_000);
        assert_eq!(r.out_reason(0, 35_999), Some(OutReason::BreakerOpen), "20 s the second time");
        assert!(r.is_in(0, 36_000));
        // Stable for a whole window: the next failure starts over.
        r.record_probe("a1", fail(), 200_000);
        r.record_probe("a1", ProbeOutcome::Ok, 201_000);
        assert!(r.is_in(0, 201_000));
        assert_eq!(r.edges()[0].breaker.backoff_ms, 0);
    }

    #[test]
    fn heartbeat_missed_then_back_counts_as_a_flap() {
        let mut r = Registry::new(vec![edge("a1", "lab-a")], RegistrySettings::default());
        r.heartbeat(Heartbeat::new("a1"), 0).unwrap();
        r.tick(3_000); // silent for 3 s: out
        r.heartbeat(Heartbeat::new("a1"), 3_500).unwrap();
        assert!(r.is_in(0, 3_500));
        r.tick(7_000);
        r.heartbeat(Heartbeat::new("a1"), 7_500).unwrap();
        assert_eq!(r.out_reason(0, 7_500), Some(OutReason::BreakerOpen));
    }

    #[test]
    fn unknown_edges_register_with_url_and_site() {
        let mut r = reg();
        assert_eq!(r.heartbeat(Heartbeat::new("c1"), 0), Err(HeartbeatError::UnknownEdge("c1".into())));
        let mut hb = Heartbeat::new("c1");
        hb.url = Some("http://c1.test:80/".into());
        hb.site = Some("lab-c".into());
        hb.titles = vec!["bbb".into()];
        assert_eq!(r.heartbeat(hb.clone(), 0), Ok(3));
        assert_eq!(r.edges()[3].edge.base_url, "http://c1.test");
        assert!(r.edges()[3].holds("bbb") && !r.edges()[3].holds("other"));
        assert_eq!(r.site("lab-c"), &[3]);
        assert_eq!(r.heartbeat(hb, 1), Ok(3), "a second heartbeat updates, not duplicates");
        let mut bad = Heartbeat::new("d/1");
        bad.url = Some("http://d".into());
        bad.site = Some("x".into());
        assert_eq!(r.heartbeat(bad, 0), Err(HeartbeatError::BadName));
    }

    #[test]
    fn a_digest_alone_keeps_the_set_held_or_empties_it() {
        use vod::steering::prefixes_digest;
        let mut r = reg();
        let hold = 10_000;
        let list = vec!["10.1.0.0/16".to_owned(), "2001:db8::/32".to_owned()];
        let beat = |prefixes: &[String], digest: &str| {
            let mut hb = Heartbeat::new("a1");
            hb.prefixes = prefixes.to_vec();
            hb.prefixes_sha256 = Some(digest.to_owned());
            hb
        };
        let d = prefixes_digest(&list);
        r.heartbeat(beat(&list, &d), 0).unwrap();
        assert_eq!(r.edges()[0].reported_digest.as_deref(), Some(d.as_str()));
        let key = r.reported_key(0, hold);
        assert_eq!(key.1, [0]);
        // The digest of the set held: nothing changes, and the prefixes stay live.
        r.heartbeat(beat(&[], &d), 5_000).unwrap();
        assert_eq!(r.reported_key(5_000, hold), key);
        assert_eq!(r.reported_key(14_000, hold).1, [0], "the slim heartbeat kept them alive");
        // A digest steering does not hold: the set stays as it was and the answer shows the old digest.
        r.heartbeat(beat(&[], &prefixes_digest(&list[..1])), 6_000).unwrap();
        assert_eq!(r.edges()[0].reported_prefixes.len(), 2);
        assert_eq!(r.edges()[0].reported_digest.as_deref(), Some(d.as_str()));
        // The empty set's digest withdraws them all.
        r.heartbeat(beat(&[], &prefixes_digest(&[])), 7_000).unwrap();
        assert!(r.edges()[0].reported_prefixes.is_empty());
        assert_eq!(r.edges()[0].reported_digest, Some(prefixes_digest(&[])));
        // A heartbeat without a digest (an older edge) carries its whole set, as before.
        let mut old = Heartbeat::new("a1");
        old.prefixes = list.clone();
        r.heartbeat(old, 8_000).unwrap();
        assert_eq!(r.edges()[0].reported_prefixes.len(), 2);
        assert_eq!(r.edges()[0].reported_digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn reported_prefixes_replace_the_previous_set_and_lapse_with_silence_or_revocation() {
        let mut r = reg();
        let hold = 10_000;
        let with = |edge: &str, prefixes: &[&str]| {
            let mut hb = Heartbeat::new(edge);
            hb.prefixes = prefixes.iter().map(|p| (*p).to_owned()).collect();
            hb
        };
        let (g0, live0) = r.reported_key(0, hold);
        assert!(live0.is_empty());
        r.heartbeat(with("a1", &["10.1.0.0/16", "10.1.2.3/16", "2001:db8::/32"]), 0).unwrap();
        r.heartbeat(with("b1", &["10.2.0.0/16"]), 0).unwrap();
        assert_eq!(r.edges()[0].reported_prefixes.len(), 2, "truncated and deduplicated");
        let cov = r.reported_coverage(0, hold);
        assert_eq!(cov.len(), 3);
        assert!(cov.contains(&("10.2.0.0/16".parse().unwrap(), "lab-b".to_owned())));
        let key = r.reported_key(0, hold);
        assert_ne!(key.0, g0);
        assert_eq!(key.1, [0, 2]);
        // The same set again changes nothing: coverage need not be rebuilt.
        r.heartbeat(with("a1", &["2001:db8::/32", "10.1.0.0/16"]), 1_000).unwrap();
        assert_eq!(r.reported_key(1_000, hold), key);
        // A new set replaces the old one.
        r.heartbeat(with("a1", &["10.3.0.0/16"]), 2_000).unwrap();
        assert_eq!(r.reported_coverage(2_000, hold)[0], ("10.3.0.0/16".parse().unwrap(), "lab-a".to_owned()));
        assert_ne!(r.reported_key(2_000, hold), key);
        // b1 silent for longer than the hold: its prefixes lapse.
        assert_eq!(r.reported_key(10_001, hold).1, [0]);
        // A bad prefix refuses the heartbeat and keeps the previous set.
        let e = r.heartbeat(with("a1", &["10.4.0.0/16", "10.4.0.0/40"]), 3_000).unwrap_err();
        assert!(e.to_string().contains("10.4.0.0/40"), "{e}");
        assert_eq!(r.edges()[0].reported_prefixes, ["10.3.0.0/16".parse::<IpNet>().unwrap()]);
        // Revoked: gone at once. None reported: gone too.
        let sites = |r: &Registry| r.reported_coverage(3_000, hold).into_iter().map(|(_, s)| s).collect::<Vec<_>>();
        assert_eq!(sites(&r), ["lab-a", "lab-b"]);
        r.set_revoked("a1", true);
        assert_eq!(sites(&r), ["lab-b"]);
        r.set_revoked("a1", false);
        r.heartbeat(with("a1", &[]), 3_000).unwrap();
        assert_eq!(sites(&r), ["lab-b"]);
    }

    #[test]
    fn overload_uses_heartbeat_capacity_then_configured() {
        let mut r = reg();
        let mut hb = Heartbeat::new("a1");
        hb.load_bps = 950;
        r.heartbeat(hb.clone(), 0).unwrap();
        assert!(!r.edges()[0].overloaded(90), "no capacity known");
        hb.max_load_bps = 1000;
        r.heartbeat(hb, 0).unwrap();
        assert!(r.edges()[0].overloaded(90) && !r.edges()[0].overloaded(96));
    }
}
