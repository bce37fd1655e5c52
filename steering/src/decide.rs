//! The routing decision: which edges a player should use for a title, best
//! first, each with its reasons. A pure function of (client, title, registry
//! snapshot, policy, now): no I/O, no clock.
//!
//! Order:
//! 1. edges of the client's site (`site-match`), then of the sites its
//!    `nearby` list names, nearest first (`nearby-site`); for a client no
//!    prefix covers, the `fallback_sites` (`no-coverage`, `fallback-site`);
//! 2. when the client's site has no `nearby` list (or an uncovered client no
//!    `fallback_sites`), every other edge (`other-site`, or `no-coverage`),
//!    each site's hash owner before the rest; with a list, other sites are
//!    used only when nothing else (not even the origin) is left;
//! 3. edges skipped for load (`overloaded-skip`), in the order they were met:
//!    an overloaded edge still beats the origin;
//! 4. the origin, unsigned, when configured (`fallback-origin`).
//!
//! Within a site, edges that report holding the title come first
//! (`holds-title`), then rendezvous order of (title, edge name): the top one is
//! the title's `hash-owner` in that site, the others `hash-rank-N`. Only edges
//! that are in (see [`crate::registry`]) are offered at all.

use std::fmt;

use vod::TitleId;

use crate::coverage::CoverageMatch;
use crate::health::HealthState;
use crate::rank::{title_key, TitleHasher};
use crate::registry::Registry;

/// Settings of the decision that come from config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Load at or above this percentage of capacity is overload.
    pub overload_percent: u32,
    /// Most edge URLs in one answer.
    pub max_urls: usize,
    /// Site → nearby sites, nearest first.
    pub nearby: std::collections::BTreeMap<String, Vec<String>>,
    /// Sites tried first for uncovered clients.
    pub fallback_sites: Vec<String>,
    /// Whether the origin is offered last.
    pub origin: bool,
}

/// Why a candidate is where it is in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// In the client's site.
    SiteMatch,
    /// In a site listed as near the client's.
    NearbySite,
    /// The client is not covered by any prefix.
    NoCoverage,
    /// In a site configured for uncovered clients.
    FallbackSite,
    /// In some other site.
    OtherSite,
    /// Its heartbeat says it holds the title.
    HoldsTitle,
    /// First in rendezvous order for this title in its site.
    HashOwner,
    /// N-th (from 2) in rendezvous order in its site.
    HashRank(u32),
    /// Probes or heartbeats say it is healthy.
    Healthy,
    /// Neither probed nor heard from yet; treated as healthy.
    HealthUnknown,
    /// Over the load threshold, moved behind the edges with headroom.
    OverloadedSkip,
    /// The origin itself, unsigned: the last resort.
    FallbackOrigin,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::SiteMatch => "site-match",
            Reason::NearbySite => "nearby-site",
            Reason::NoCoverage => "no-coverage",
            Reason::FallbackSite => "fallback-site",
            Reason::OtherSite => "other-site",
            Reason::HoldsTitle => "holds-title",
            Reason::HashOwner => "hash-owner",
            Reason::HashRank(n) => return write!(f, "hash-rank-{n}"),
            Reason::Healthy => "healthy",
            Reason::HealthUnknown => "health-unknown",
            Reason::OverloadedSkip => "overloaded-skip",
            Reason::FallbackOrigin => "fallback-origin",
        })
    }
}

/// Where a candidate points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Index into [`Registry::edges`].
    Edge(usize),
    /// The configured origin.
    Origin,
}

/// One ranked candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Edge or origin.
    pub target: Target,
    /// Why, most important first.
    pub reasons: Vec<Reason>,
}

impl Choice {
    /// The reasons as strings (the `/v1/play` contract's `reasons`).
    pub fn reason_strings(&self) -> Vec<String> {
        self.reasons.iter().map(ToString::to_string).collect()
    }
}

/// An in edge of a site with its placement facts.
struct Placed {
    index: usize,
    holds: bool,
    overloaded: bool,
    /// 1 = hash owner in its site.
    hash_rank: u32,
    weight: u64,
}

/// What a decision needs about the title, hashed once.
struct TitleKeys {
    hasher: TitleHasher,
    key: u64,
}

/// Appends the in edges of one site, holders first, then rendezvous order.
fn place_site(
    reg: &Registry,
    site_edges: &[usize],
    title: &TitleKeys,
    policy: &Policy,
    now_ms: u64,
    out: &mut Vec<Placed>,
) {
    let start = out.len();
    out.extend(site_edges.iter().filter(|&&i| reg.is_in(i, now_ms)).map(|&i| {
        let e = &reg.edges()[i];
        Placed {
            index: i,
            holds: e.holds_key(title.key),
            overloaded: e.overloaded(policy.overload_percent),
            hash_rank: 0,
            weight: title.hasher.weight(&e.edge.name),
        }
    }));
    let group = &mut out[start..];
    let name = |p: &Placed| reg.edges()[p.index].edge.name.as_str();
    group.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| name(a).cmp(name(b))));
    for (k, p) in group.iter_mut().enumerate() {
        p.hash_rank = u32::try_from(k + 1).unwrap_or(u32::MAX);
    }
    // Stable: holders keep their rendezvous order among themselves.
    group.sort_by_key(|p| !p.holds);
}

/// Keeps the `k` best of `v` (by `cmp`), sorted; linear time plus k log k.
fn keep_best(v: &mut Vec<Placed>, k: usize, cmp: impl Fn(&Placed, &Placed) -> std::cmp::Ordering) {
    if k == 0 {
        v.clear();
        return;
    }
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, &cmp);
        v.truncate(k);
    }
    v.sort_by(cmp);
}

/// Candidate order outside the near sites: holders, then hash rank, then weight.
fn others_order(reg: &Registry) -> impl Fn(&Placed, &Placed) -> std::cmp::Ordering + Copy + '_ {
    move |a: &Placed, b: &Placed| {
        b.holds
            .cmp(&a.holds)
            .then(a.hash_rank.cmp(&b.hash_rank))
            .then(b.weight.cmp(&a.weight))
            .then_with(|| reg.edges()[a.index].edge.name.cmp(&reg.edges()[b.index].edge.name))
    }
}

/// The best `need_fine` edges with headroom, then the best `need_busy` overloaded ones,
/// among the in edges of sites not in `seen`: every site ranked, all sorted (reference).
fn others_by_sorting(
    reg: &Registry,
    seen: &[u32],
    keys: &TitleKeys,
    policy: &Policy,
    now_ms: u64,
    need_fine: usize,
    need_busy: usize,
) -> Vec<Placed> {
    let mut placed = Vec::new();
    for (site, edges) in reg.sites() {
        if reg.site_id(site).is_some_and(|id| !seen.contains(&id)) {
            place_site(reg, edges, keys, policy, now_ms, &mut placed);
        }
    }
    let order = others_order(reg);
    let (mut busy, mut free): (Vec<Placed>, Vec<Placed>) = placed.into_iter().partition(|p| p.overloaded);
    keep_best(&mut free, need_fine, order);
    keep_best(&mut busy, need_busy, order);
    free.extend(busy);
    free
}

/// Does `a` (weight, name) outrank `b` in rendezvous order?
fn heavier(reg: &Registry, a: (u64, usize), b: (u64, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && reg.edges()[a.1].edge.name < reg.edges()[b.1].edge.name)
}

/// Same answer as [`others_by_sorting`] in one pass without ranking whole sites: when
/// enough sites' hash owners (plus holders) exist, the best non-holders are all owners,
/// so only each site's heaviest in edge is tracked. None when that does not hold.
fn others_by_owners(
    reg: &Registry,
    seen: &[u32],
    keys: &TitleKeys,
    policy: &Policy,
    now_ms: u64,
    need_fine: usize,
    need_busy: usize,
) -> Option<Vec<Placed>> {
    let mut owner: Vec<Option<(u64, usize)>> = vec![None; reg.site_count()];
    let mut holders: Vec<(u64, usize)> = Vec::new();
    let (mut in_total, mut busy_total) = (0usize, 0usize);
    for (i, e) in reg.edges().iter().enumerate() {
        let sid = reg.site_of(i);
        if seen.contains(&sid) || !reg.is_in(i, now_ms) {
            continue;
        }
        let w = (keys.hasher.weight(&e.edge.name), i);
        let slot = &mut owner[sid as usize];
        if slot.is_none_or(|o| heavier(reg, w, o)) {
            *slot = Some(w);
        }
        if e.holds_key(keys.key) {
            holders.push(w);
        }
        in_total += 1;
        busy_total += usize::from(e.overloaded(policy.overload_percent));
    }
    let mut held: Vec<Placed> = holders
        .iter()
        .map(|&(weight, index)| {
            // Its rank: in edges of its site that outweigh it, plus one.
            let site = reg.site_of(index) as usize;
            let above = reg
                .site(&reg.edges()[index].edge.site)
                .iter()
                .filter(|&&j| {
                    j != index
                        && reg.site_of(j) as usize == site
                        && reg.is_in(j, now_ms)
                        && heavier(reg, (keys.hasher.weight(&reg.edges()[j].edge.name), j), (weight, index))
                })
                .count();
            Placed {
                index,
                holds: true,
                overloaded: reg.edges()[index].overloaded(policy.overload_percent),
                hash_rank: u32::try_from(above + 1).unwrap_or(u32::MAX),
                weight,
            }
        })
        .collect();
    let mut holder_ids: Vec<usize> = holders.iter().map(|&(_, i)| i).collect();
    holder_ids.sort_unstable();
    let mut owners: Vec<Placed> = owner
        .iter()
        .flatten()
        .filter(|&&(_, i)| holder_ids.binary_search(&i).is_err())
        .map(|&(weight, index)| Placed {
            index,
            holds: false,
            overloaded: reg.edges()[index].overloaded(policy.overload_percent),
            hash_rank: 1,
            weight,
        })
        .collect();
    // Exact only if the known entries cover the best `need` of each list, or all of it.
    let busy_known = held.iter().chain(&owners).filter(|p| p.overloaded).count();
    let fine_known = held.len() + owners.len() - busy_known;
    if fine_known < need_fine.min(in_total - busy_total) || busy_known < need_busy.min(busy_total) {
        return None;
    }
    let order = others_order(reg);
    held.append(&mut owners);
    let (mut busy, mut free): (Vec<Placed>, Vec<Placed>) = held.into_iter().partition(|p| p.overloaded);
    keep_best(&mut free, need_fine, order);
    keep_best(&mut busy, need_busy, order);
    free.extend(busy);
    Some(free)
}

fn health_reason(reg: &Registry, i: usize) -> Reason {
    let e = &reg.edges()[i];
    if e.probe.state == HealthState::Unknown && e.heartbeat.is_none() {
        Reason::HealthUnknown
    } else {
        Reason::Healthy
    }
}

/// The ranked list being built: edges with headroom, and those skipped for load.
struct Ranked<'r> {
    reg: &'r Registry,
    max: usize,
    fine: Vec<Choice>,
    overloaded: Vec<Choice>,
}

impl Ranked<'_> {
    fn push(&mut self, p: &Placed, group: &[Reason]) {
        let list = if p.overloaded { &mut self.overloaded } else { &mut self.fine };
        if list.len() >= self.max {
            return;
        }
        let mut reasons = Vec::with_capacity(group.len() + 4);
        reasons.extend_from_slice(group);
        if p.holds {
            reasons.push(Reason::HoldsTitle);
        }
        reasons.push(if p.hash_rank == 1 { Reason::HashOwner } else { Reason::HashRank(p.hash_rank) });
        reasons.push(health_reason(self.reg, p.index));
        if p.overloaded {
            reasons.push(Reason::OverloadedSkip);
        }
        list.push(Choice { target: Target::Edge(p.index), reasons });
    }
}

/// Ranks where `client` (None: no prefix covers it) should fetch `title` at `now_ms`.
///
/// Empty only when no edge is in and no origin is configured.
pub fn decide(
    client: Option<&CoverageMatch>,
    title: &TitleId,
    reg: &Registry,
    policy: &Policy,
    now_ms: u64,
) -> Vec<Choice> {
    let keys = TitleKeys { hasher: TitleHasher::new(title.as_str()), key: title_key(title.as_str()) };
    let max = policy.max_urls.max(1);
    let mut ranked = Ranked { reg, max, fine: Vec::with_capacity(max + 1), overloaded: Vec::new() };
    let mut seen_sites: Vec<&str> = Vec::new();
    let mut placed: Vec<Placed> = Vec::new();

    // 1. The client's site and its near sites, one group each.
    let groups: Vec<(&str, &[Reason])> = match client {
        Some(c) => std::iter::once((c.site.as_str(), &[Reason::SiteMatch][..]))
            .chain(policy.nearby.get(&c.site).into_iter().flatten().map(|s| (s.as_str(), &[Reason::NearbySite][..])))
            .collect(),
        None => policy
            .fallback_sites
            .iter()
            .map(|s| (s.as_str(), &[Reason::NoCoverage, Reason::FallbackSite][..]))
            .collect(),
    };
    for (site, group) in groups {
        if ranked.fine.len() >= max {
            break;
        }
        if seen_sites.contains(&site) {
            continue;
        }
        seen_sites.push(site);
        placed.clear();
        place_site(reg, reg.site(site), &keys, policy, now_ms, &mut placed);
        for p in &placed {
            ranked.push(p, group);
        }
    }

    // 2. Everyone else: holders, then each site's owner, then its runner-up, …
    // Only when no nearness list applies (then every site is equally near), or as
    // the last resort before refusing. Only the best few are needed, so they are
    // selected, not sorted whole; this is the one step that visits every edge.
    let listed = match client {
        Some(c) => policy.nearby.contains_key(&c.site),
        None => !policy.fallback_sites.is_empty(),
    };
    let nothing = ranked.fine.is_empty() && ranked.overloaded.is_empty() && !policy.origin;
    if ranked.fine.len() < max && (!listed || nothing) {
        let need_fine = max - ranked.fine.len();
        let need_busy = max.saturating_sub(ranked.overloaded.len());
        let seen: Vec<u32> = seen_sites.iter().filter_map(|s| reg.site_id(s)).collect();
        let best = others_by_owners(reg, &seen, &keys, policy, now_ms, need_fine, need_busy)
            .unwrap_or_else(|| others_by_sorting(reg, &seen, &keys, policy, now_ms, need_fine, need_busy));
        let group: &[Reason] = if client.is_some() { &[Reason::OtherSite] } else { &[Reason::NoCoverage] };
        for p in &best {
            ranked.push(p, group);
        }
    }

    // 3. Overloaded edges, 4. the origin.
    let mut out = ranked.fine;
    out.extend(ranked.overloaded);
    out.truncate(max);
    if policy.origin {
        out.push(Choice { target: Target::Origin, reasons: vec![Reason::FallbackOrigin] });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vod::steering::Heartbeat;

    use super::*;
    use crate::config::Edge;
    use crate::health::ProbeOutcome;
    use crate::registry::RegistrySettings;

    fn edge(name: &str, site: &str) -> Edge {
        Edge {
            name: name.into(),
            base_url: format!("http://{name}.test"),
            site: site.into(),
            prefixes: Vec::new(),
            drained: false,
            max_load_bps: None,
        }
    }

    fn registry(edges: &[(&str, &str)]) -> Registry {
        Registry::new(edges.iter().map(|(n, s)| edge(n, s)).collect(), RegistrySettings::default())
    }

    fn client(site: &str) -> CoverageMatch {
        CoverageMatch { site: site.into(), prefix: "10.1.0.0/16".parse().unwrap() }
    }

    fn t(s: &str) -> TitleId {
        TitleId::new(s).unwrap()
    }

    fn policy() -> Policy {
        Policy { overload_percent: 90, max_urls: 8, ..Policy::default() }
    }

    fn names(reg: &Registry, d: &[Choice]) -> Vec<String> {
        d.iter()
            .map(|c| match c.target {
                Target::Edge(i) => reg.edges()[i].edge.name.clone(),
                Target::Origin => "origin".to_owned(),
            })
            .collect()
    }

    fn reasons(c: &Choice) -> Vec<String> {
        c.reason_strings()
    }

    #[test]
    fn client_site_first_then_others_with_reasons() {
        let reg = registry(&[("b1", "lab-b"), ("a1", "lab-a"), ("a2", "lab-a")]);
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0);
        let n = names(&reg, &d);
        assert_eq!(n.len(), 3);
        assert!(n[0].starts_with('a') && n[1].starts_with('a') && n[2] == "b1", "{n:?}");
        assert_eq!(reasons(&d[0]), vec!["site-match", "hash-owner", "health-unknown"]);
        assert_eq!(reasons(&d[1]), vec!["site-match", "hash-rank-2", "health-unknown"]);
        assert_eq!(reasons(&d[2]), vec!["other-site", "hash-owner", "health-unknown"]);
    }

    #[test]
    fn unknown_client_gets_fallback_sites_then_everyone() {
        let reg = registry(&[("a1", "lab-a"), ("b1", "lab-b"), ("c1", "lab-c")]);
        let d = decide(None, &t("bbb"), &reg, &policy(), 0);
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|c| c.reasons[0] == Reason::NoCoverage));
        let p = Policy { fallback_sites: vec!["lab-c".into()], ..policy() };
        let d = decide(None, &t("bbb"), &reg, &p, 0);
        assert_eq!(names(&reg, &d)[0], "c1");
        assert_eq!(reasons(&d[0])[..2], ["no-coverage", "fallback-site"]);
    }

    #[test]
    fn nearby_sites_come_in_configured_order() {
        let reg = registry(&[("a1", "lab-a"), ("b1", "lab-b"), ("c1", "lab-c"), ("d1", "lab-d")]);
        let p = Policy { nearby: BTreeMap::from([("lab-a".into(), vec!["lab-c".into(), "lab-b".into()])]), ..policy() };
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &p, 0);
        assert_eq!(names(&reg, &d), vec!["a1", "c1", "b1"], "a nearness list bounds the candidates");
        assert_eq!(d[1].reasons[0], Reason::NearbySite);
        let with_origin = Policy { origin: true, ..p.clone() };
        assert_eq!(names(&reg, &decide(Some(&client("lab-a")), &t("bbb"), &reg, &with_origin, 0)).len(), 4);
        // Everything near is gone and there is no origin: far sites beat a refusal.
        let mut reg = reg;
        for e in ["a1", "b1", "c1"] {
            reg.record_probe(e, ProbeOutcome::Failed("x".into()), 1);
            reg.record_probe(e, ProbeOutcome::Failed("x".into()), 1);
        }
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &p, 1);
        assert_eq!(names(&reg, &d), vec!["d1"]);
        assert_eq!(d[0].reasons[0], Reason::OtherSite);
        assert_eq!(names(&reg, &decide(Some(&client("lab-a")), &t("bbb"), &reg, &with_origin, 1)), vec!["origin"]);
    }

    #[test]
    fn all_edges_of_the_site_down_goes_to_other_sites_then_origin() {
        let mut reg = registry(&[("a1", "lab-a"), ("a2", "lab-a"), ("b1", "lab-b")]);
        for _ in 0..2 {
            reg.record_probe("a1", ProbeOutcome::Failed("x".into()), 1);
            reg.record_probe("a2", ProbeOutcome::Failed("x".into()), 1);
        }
        let p = Policy { origin: true, ..policy() };
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &p, 1);
        assert_eq!(names(&reg, &d), vec!["b1", "origin"]);
        assert_eq!(reasons(&d[1]), vec!["fallback-origin"]);
        reg.record_probe("b1", ProbeOutcome::Failed("x".into()), 1);
        reg.record_probe("b1", ProbeOutcome::Failed("x".into()), 1);
        assert_eq!(names(&reg, &decide(Some(&client("lab-a")), &t("bbb"), &reg, &p, 1)), vec!["origin"]);
        assert!(decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 1).is_empty());
    }

    #[test]
    fn drained_edge_gets_nothing() {
        let mut reg = registry(&[("a1", "lab-a"), ("a2", "lab-a")]);
        let mut hb = Heartbeat::new("a1");
        hb.drained = true;
        reg.heartbeat(hb, 0).unwrap();
        for i in 0..50 {
            let d = decide(Some(&client("lab-a")), &t(&format!("t{i}")), &reg, &policy(), 0);
            assert_eq!(names(&reg, &d), vec!["a2"]);
            assert_eq!(d[0].reasons[1], Reason::HashOwner, "the only in edge owns every title");
        }
    }

    #[test]
    fn overloaded_edge_is_skipped_behind_the_others() {
        let mut reg = registry(&[("a1", "lab-a"), ("a2", "lab-a"), ("b1", "lab-b")]);
        let owner = names(&reg, &decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0))[0].clone();
        let mut hb = Heartbeat::new(owner.clone());
        hb.load_bps = 950;
        hb.max_load_bps = 1000;
        reg.heartbeat(hb, 0).unwrap();
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0);
        let n = names(&reg, &d);
        assert_eq!(n.len(), 3);
        assert_eq!(n[2], owner, "the overloaded owner goes last: {n:?}");
        assert_eq!(n[1], "b1");
        assert_eq!(reasons(&d[2]), vec!["site-match", "hash-owner", "healthy", "overloaded-skip"]);
    }

    #[test]
    fn holders_come_first_even_elsewhere_in_rendezvous_order() {
        let mut reg = registry(&[("a1", "lab-a"), ("a2", "lab-a"), ("a3", "lab-a"), ("b1", "lab-b"), ("b2", "lab-b")]);
        let before = names(&reg, &decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0));
        // The last of lab-a in hash order holds the title: it moves to the front.
        let holder = before[2].clone();
        let mut hb = Heartbeat::new(holder.clone());
        hb.titles = vec!["bbb".into()];
        reg.heartbeat(hb, 0).unwrap();
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0);
        assert_eq!(names(&reg, &d)[0], holder);
        assert_eq!(reasons(&d[0]), vec!["site-match", "holds-title", "hash-rank-3", "healthy"]);
        // A title held only in another site: that holder leads the other sites.
        let other = names(&reg, &d)[4].clone();
        let mut hb = Heartbeat::new(other.clone());
        hb.titles = vec!["bbb".into()];
        reg.heartbeat(hb, 0).unwrap();
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &policy(), 0);
        assert_eq!(names(&reg, &d)[3], other);
        assert!(d[3].reasons.contains(&Reason::HoldsTitle));
    }

    #[test]
    fn max_urls_caps_the_list_but_not_the_origin() {
        let reg = registry(&[("a1", "lab-a"), ("a2", "lab-a"), ("b1", "lab-b"), ("c1", "lab-c")]);
        let p = Policy { max_urls: 2, origin: true, ..policy() };
        let d = decide(Some(&client("lab-a")), &t("bbb"), &reg, &p, 0);
        assert_eq!(names(&reg, &d).len(), 3);
        assert_eq!(d[2].target, Target::Origin);
    }

    #[test]
    fn same_title_same_edge_and_titles_spread() {
        let reg = registry(&[("a1", "lab-a"), ("a2", "lab-a"), ("a3", "lab-a")]);
        let c = client("lab-a");
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let title = t(&format!("title-{i}"));
            let first = decide(Some(&c), &title, &reg, &policy(), 0)[0].target;
            assert_eq!(decide(Some(&c), &title, &reg, &policy(), 0)[0].target, first);
            let Target::Edge(i) = first else { panic!("origin") };
            counts[i] += 1;
        }
        for n in counts {
            assert!((850..=1150).contains(&n), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn the_one_pass_path_agrees_with_full_ranking() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut fast_used = 0;
        for round in 0..300 {
            let n_edges = 1 + (rnd() % 60) as usize;
            let n_sites = 1 + (rnd() % 20) as usize;
            let edges: Vec<Edge> = (0..n_edges)
                .map(|i| Edge {
                    max_load_bps: Some(100),
                    ..edge(&format!("e{i}"), &format!("s{}", rnd() as usize % n_sites))
                })
                .collect();
            let mut reg = Registry::new(edges, RegistrySettings::default());
            for i in 0..n_edges {
                let mut hb = Heartbeat::new(format!("e{i}"));
                hb.load_bps = if rnd() % 4 == 0 { 95 } else { 10 };
                hb.ok = rnd() % 8 != 0;
                if rnd() % 5 == 0 {
                    hb.titles = vec!["bbb".into()];
                }
                reg.heartbeat(hb, 0).unwrap();
            }
            let title = t("bbb");
            let keys = TitleKeys { hasher: TitleHasher::new("bbb"), key: title_key(title.as_str()) };
            let p = policy();
            let seen: Vec<u32> = (0..n_sites as u32).filter(|_| rnd() % 4 == 0).collect();
            let (nf, nb) = (1 + (rnd() % 8) as usize, (rnd() % 9) as usize);
            let slow = others_by_sorting(&reg, &seen, &keys, &p, 0, nf, nb);
            let view =
                |v: &[Placed]| v.iter().map(|p| (p.index, p.hash_rank, p.holds, p.overloaded)).collect::<Vec<_>>();
            if let Some(fast) = others_by_owners(&reg, &seen, &keys, &p, 0, nf, nb) {
                fast_used += 1;
                assert_eq!(view(&fast), view(&slow), "round {round}");
            }
        }
        assert!(fast_used > 100, "the one-pass path was taken only {fast_used} times");
    }
}
