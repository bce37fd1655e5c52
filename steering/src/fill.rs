//! Fill plans: from one day's request log to the objects an edge should hold
//! tomorrow, highest priority first.
//!
//! Three steps, each replaceable: tally the log (streamed, one line at a
//! time), forecast tomorrow's requests per object, then choose objects
//! greedily by value per byte of cache (an object's forecast requests: each
//! byte of an object requested r times saves r upstream bytes) until the
//! edge's capacity is full. Objects are segments, so the value of a title's prefix
//! (its first minutes, watched by every viewer who starts it) is measured
//! apart from its tail (watched by the few who stay).
//!
//! The contract mode (`--log DAY.csv --edge-bytes N`) plans one edge from one
//! day. The site mode ([`plan_site`]) plans every edge of a site from the
//! site's history ([`crate::forecast`]) with rendezvous placement.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use vod::log::{LogParseError, RequestLogRow, HEADER};
use vod::plan::{DailyPopularity, EdgeFillPlan, FillPlan, PeerEdge, PlannedObject, SiteFillPlan};

use crate::forecast::LaunchHint;

/// Why a request log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("opening log {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("line {line}: reading log: {source}")]
    Read { line: usize, source: std::io::Error },
    #[error("line 1: header must be {HEADER:?}, found {found:?}")]
    Header { found: String },
    #[error(transparent)]
    Row(#[from] LogParseError),
    #[error("{path}: {cause}")]
    InFile { path: PathBuf, cause: Box<FillError> },
    #[error("{path}: not valid JSON of the expected shape: {reason}")]
    Json { path: PathBuf, reason: String },
}

/// One object's demand over the logged day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDemand {
    /// Object key as logged.
    pub key: String,
    /// Object size (the largest size logged for it, so the plan never undercounts capacity).
    pub bytes: u64,
    /// Requests for it that day.
    pub requests: u64,
}

/// Requests counted per key.
#[derive(Debug, Clone, Default)]
pub struct DemandTally {
    by_key: HashMap<String, (u64, u64)>,
    rows: u64,
}

impl DemandTally {
    /// Counts one request.
    pub fn add(&mut self, row: &RequestLogRow) {
        self.rows += 1;
        if let Some((requests, bytes)) = self.by_key.get_mut(&row.key) {
            *requests += 1;
            *bytes = (*bytes).max(row.bytes);
        } else {
            self.by_key.insert(row.key.clone(), (1, row.bytes));
        }
    }

    /// Number of rows counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The demand per object, sorted by key.
    pub fn into_objects(self) -> Vec<ObjectDemand> {
        let mut v: Vec<ObjectDemand> =
            self.by_key.into_iter().map(|(key, (requests, bytes))| ObjectDemand { key, bytes, requests }).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

/// Reads a request log (header required, blank lines skipped) line by line.
pub fn read_log(reader: impl BufRead) -> Result<DemandTally, FillError> {
    let mut tally = DemandTally::default();
    read_rows(reader, |row| tally.add(row))?;
    Ok(tally)
}

/// Opens and reads a request log file.
pub fn read_log_file(path: &Path) -> Result<DemandTally, FillError> {
    let file = std::fs::File::open(path).map_err(|source| FillError::Open { path: path.to_owned(), source })?;
    read_log(std::io::BufReader::new(file))
}

/// Tomorrow's requests per object. The simplest forecast: tomorrow looks like
/// today (later versions weigh several days, time of day and title age).
pub fn forecast_tomorrow(today: Vec<ObjectDemand>) -> Vec<PlannedObject> {
    today
        .into_iter()
        .map(|d| PlannedObject { key: d.key, bytes: d.bytes, expected_requests: d.requests as f64 })
        .collect()
}

/// Value per byte of cache: an object of `b` bytes requested `r` times saves
/// `r × b` upstream bytes for the `b` bytes it takes, so its value per byte is
/// its forecast request count, whatever its size. (Requests per byte would
/// maximise hit *requests*, and favour the small low-bitrate segments that save
/// the fewest bytes; the edge exists to offload bytes.)
fn density(o: &PlannedObject) -> f64 {
    o.expected_requests
}

/// Chooses objects by value density until `edge_bytes` is full, skipping any
/// that no longer fit (smaller ones may still); objects with no forecast
/// demand are left out. Output is in priority order.
pub fn plan_fill(candidates: Vec<PlannedObject>, edge_bytes: u64) -> FillPlan {
    let mut candidates: Vec<PlannedObject> =
        candidates.into_iter().filter(|o| o.expected_requests > 0.0 && o.expected_requests.is_finite()).collect();
    candidates.sort_by(|a, b| {
        density(b)
            .total_cmp(&density(a))
            .then_with(|| b.expected_requests.total_cmp(&a.expected_requests))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut total_bytes = 0u64;
    let mut objects = Vec::new();
    for o in candidates {
        if o.bytes <= edge_bytes - total_bytes {
            total_bytes += o.bytes;
            objects.push(o);
        }
    }
    FillPlan { edge_bytes, total_bytes, objects }
}

/// The whole `fill-plan` pipeline over a log file.
pub fn plan_from_log_file(path: &Path, edge_bytes: u64) -> Result<FillPlan, FillError> {
    let tally = read_log_file(path)?;
    Ok(plan_fill(forecast_tomorrow(tally.into_objects()), edge_bytes))
}

/// One edge of a site as the site planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSlot {
    pub name: String,
    /// Base URL of its unsigned fill path, when known (peers fill from it).
    pub url: Option<String>,
    /// Disk capacity to plan for.
    pub bytes: u64,
}

impl EdgeSlot {
    /// Parses `NAME:BYTES` or `NAME:BYTES@URL`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (spec, url) = match text.split_once('@') {
            Some((s, u)) if u.starts_with("http://") || u.starts_with("https://") => (s, Some(u.to_owned())),
            Some((_, u)) => return Err(format!("edge {text:?}: URL {u:?} must start with http:// or https://")),
            None => (text, None),
        };
        let Some((name, bytes)) = spec.split_once(':') else {
            return Err(format!("edge {text:?}: expected NAME:BYTES[@URL]"));
        };
        if name.is_empty() {
            return Err(format!("edge {text:?}: empty name"));
        }
        let bytes = bytes.parse().map_err(|_| format!("edge {text:?}: BYTES {bytes:?} is not an unsigned integer"))?;
        Ok(Self { name: name.to_owned(), url, bytes })
    }
}

/// How a site's objects are spread over its edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// The hottest objects, up to this share of the site's capacity, are held on `hot_copies` edges.
    pub hot_fraction: f64,
    /// Copies of a hot object (at most one per edge).
    pub hot_copies: usize,
    /// Share of each edge's capacity the plan may use; the rest stays for objects nobody forecast.
    pub fill_fraction: f64,
}

impl Default for Placement {
    fn default() -> Self {
        // 95% of the disk: in `cargo xtask bench cache`'s backtests the byte-hit ratio still rises
        // up to a fully pinned disk, but by 0.004 only from 95%; the 5% left holds what the forecast
        // missed (a title nobody hinted), which a fully pinned disk could not cache at all.
        Self { hot_fraction: 0.05, hot_copies: 2, fill_fraction: 0.95 }
    }
}

/// Plans a site: objects in priority order (forecast requests), each
/// placed on the first edges in rendezvous order of its title that still have
/// room (so steering's hash owner holds it and a site holds one copy), the
/// hottest on `hot_copies` edges. Each edge's plan lists which peers hold its
/// objects too, so prefill can fill from them.
pub fn plan_site(
    site: &str,
    forecast_label: &str,
    candidates: Vec<PlannedObject>,
    edges: &[EdgeSlot],
    placement: Placement,
) -> SiteFillPlan {
    let mut candidates: Vec<PlannedObject> =
        candidates.into_iter().filter(|o| o.expected_requests > 0.0 && o.expected_requests.is_finite()).collect();
    candidates.sort_by(|a, b| {
        density(b)
            .total_cmp(&density(a))
            .then_with(|| b.expected_requests.total_cmp(&a.expected_requests))
            .then_with(|| a.key.cmp(&b.key))
    });
    let fraction = placement.fill_fraction.clamp(0.0, 1.0);
    let budgets: Vec<u64> = edges.iter().map(|e| (e.bytes as f64 * fraction) as u64).collect();
    let mut free = budgets.clone();
    let site_bytes: u64 = budgets.iter().sum();
    let hot_bytes = (site_bytes as f64 * placement.hot_fraction.clamp(0.0, 1.0)) as u64;
    let mut hot_used = 0u64;
    let mut placed: Vec<Vec<PlannedObject>> = vec![Vec::new(); edges.len()];
    let mut holders: HashMap<String, Vec<usize>> = HashMap::new();
    for o in candidates {
        let title = crate::forecast::key_parts(&o.key).map_or(o.key.as_str(), |p| p.title);
        let hasher = crate::rank::TitleHasher::new(title);
        let mut order: Vec<usize> = (0..edges.len()).collect();
        order.sort_by(|&a, &b| {
            hasher.weight(&edges[b].name).cmp(&hasher.weight(&edges[a].name)).then_with(|| a.cmp(&b))
        });
        let hot = hot_used + o.bytes <= hot_bytes;
        let copies = if hot { placement.hot_copies.clamp(1, edges.len().max(1)) } else { 1 };
        let mut on = Vec::new();
        for i in order {
            if on.len() == copies {
                break;
            }
            if o.bytes <= free[i] {
                free[i] -= o.bytes;
                on.push(i);
            }
        }
        if on.is_empty() {
            continue;
        }
        if hot {
            hot_used += o.bytes * on.len() as u64;
        }
        for &i in &on {
            placed[i].push(o.clone());
        }
        if on.len() > 1 {
            holders.insert(o.key.clone(), on);
        }
    }
    let peers_of = |me: usize| -> Vec<PeerEdge> {
        edges
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, e)| PeerEdge { name: e.name.clone(), url: e.url.clone() })
            .collect()
    };
    let plans = edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let objects = std::mem::take(&mut placed[i]);
            let mut held_elsewhere = BTreeMap::new();
            for o in &objects {
                if let Some(on) = holders.get(&o.key) {
                    let names: Vec<String> = on.iter().filter(|&&j| j != i).map(|&j| edges[j].name.clone()).collect();
                    held_elsewhere.insert(o.key.clone(), names);
                }
            }
            EdgeFillPlan {
                plan: FillPlan { edge_bytes: e.bytes, total_bytes: budgets[i] - free[i], objects },
                edge: e.name.clone(),
                site: site.to_owned(),
                peers: peers_of(i),
                holders: held_elsewhere,
            }
        })
        .collect();
    SiteFillPlan { site: site.to_owned(), forecast: forecast_label.to_owned(), plans }
}

/// Reads a site's history from `dir`: request logs (`*.csv`, split into UTC
/// days) and daily aggregates (`*.json`, as `POST /v1/popularity` and the
/// popularity store write them), merged per day.
pub fn read_history_dir(dir: &Path) -> Result<Vec<DailyPopularity>, FillError> {
    let entries = std::fs::read_dir(dir).map_err(|source| FillError::Open { path: dir.to_owned(), source })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut days = Vec::new();
    let mut agg = crate::forecast::DayAggregator::default();
    for path in paths {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => {
                let file =
                    std::fs::File::open(&path).map_err(|source| FillError::Open { path: path.clone(), source })?;
                read_rows(std::io::BufReader::new(file), |row| agg.add(row))
                    .map_err(|e| FillError::InFile { path: path.clone(), cause: Box::new(e) })?;
            }
            Some("json") => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| FillError::Open { path: path.clone(), source })?;
                let day: DailyPopularity = serde_json::from_str(&text)
                    .map_err(|e| FillError::Json { path: path.clone(), reason: e.to_string() })?;
                days.push(day);
            }
            _ => {}
        }
    }
    days.extend(agg.finish("", None));
    Ok(crate::forecast::merge_days(days))
}

/// Reads launch hints (a JSON array of `{title, expected_share, objects: [{key, bytes}]}`).
pub fn read_hints(path: &Path) -> Result<Vec<LaunchHint>, FillError> {
    let text = std::fs::read_to_string(path).map_err(|source| FillError::Open { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|e| FillError::Json { path: path.to_owned(), reason: e.to_string() })
}

/// Streams the rows of a request log (header required, blank lines skipped).
fn read_rows(reader: impl BufRead, mut each: impl FnMut(&RequestLogRow)) -> Result<u64, FillError> {
    let mut lines = reader.lines();
    let header = match lines.next() {
        Some(Ok(h)) => h,
        Some(Err(source)) => return Err(FillError::Read { line: 1, source }),
        None => return Err(FillError::Header { found: String::new() }),
    };
    if header.trim_start_matches('\u{feff}').trim() != HEADER {
        return Err(FillError::Header { found: header });
    }
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let line = line.map_err(|source| FillError::Read { line: line_no, source })?;
        if line.trim().is_empty() {
            continue;
        }
        each(&RequestLogRow::parse(&line, line_no)?);
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, bytes: u64, expected: f64) -> PlannedObject {
        PlannedObject { key: key.into(), bytes, expected_requests: expected }
    }

    #[test]
    fn empty_demand_gives_empty_plan() {
        let plan = plan_fill(Vec::new(), 1000);
        assert_eq!((plan.edge_bytes, plan.total_bytes, plan.objects.len()), (1000, 0, 0));
        let tally = read_log(format!("{HEADER}\n").as_bytes()).unwrap();
        assert!(plan_fill(forecast_tomorrow(tally.into_objects()), 1000).objects.is_empty());
    }

    #[test]
    fn hot_beats_cold_and_capacity_is_never_exceeded() {
        let plan = plan_fill(vec![obj("cold", 100, 1.0), obj("hot", 100, 50.0), obj("warm", 100, 10.0)], 250);
        let keys: Vec<&str> = plan.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["hot", "warm"]);
        assert_eq!(plan.total_bytes, 200);
    }

    #[test]
    fn skips_what_does_not_fit_and_continues_with_smaller() {
        // big is densest but cannot fit after "a"; the small ones still go in.
        let plan =
            plan_fill(vec![obj("a", 60, 600.0), obj("big", 50, 400.0), obj("s1", 20, 20.0), obj("s2", 20, 10.0)], 100);
        let keys: Vec<&str> = plan.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["a", "s1", "s2"]);
        assert_eq!(plan.total_bytes, 100);
        assert!(plan_fill(vec![obj("huge", 1001, 1e9)], 1000).objects.is_empty());
    }

    #[test]
    fn capacity_holds_for_many_mixed_objects() {
        let objs: Vec<PlannedObject> =
            (0..500u64).map(|i| obj(&format!("k{i}"), (i * 7919) % 1000 + 1, ((i * 31) % 97) as f64)).collect();
        for cap in [0, 1, 999, 10_000, 100_000, 1_000_000] {
            let plan = plan_fill(objs.clone(), cap);
            let sum: u64 = plan.objects.iter().map(|o| o.bytes).sum();
            assert_eq!(sum, plan.total_bytes);
            assert!(sum <= cap, "cap {cap} exceeded: {sum}");
            let dens: Vec<f64> = plan.objects.iter().map(density).collect();
            assert!(dens.windows(2).all(|w| w[0] >= w[1]), "not in priority order");
        }
    }

    fn slots(spec: &[(&str, u64)]) -> Vec<EdgeSlot> {
        spec.iter().map(|(n, b)| EdgeSlot { name: (*n).into(), url: Some(format!("http://{n}")), bytes: *b }).collect()
    }

    #[test]
    fn site_plans_respect_each_edge_capacity_and_keep_priority_order() {
        let objs: Vec<PlannedObject> = (0..300u64)
            .map(|i| obj(&format!("titles/t{}/v1/{}.m4s", i % 17, i), (i * 7919) % 900 + 100, ((i * 31) % 97) as f64))
            .collect();
        let edges = slots(&[("a", 20_000), ("b", 35_000), ("c", 5_000)]);
        let full = Placement { fill_fraction: 1.0, ..Placement::default() };
        let site = plan_site("s", "last-day", objs.clone(), &edges, full);
        assert_eq!(site.plans.len(), 3);
        for (p, e) in site.plans.iter().zip(&edges) {
            let sum: u64 = p.plan.objects.iter().map(|o| o.bytes).sum();
            assert_eq!(sum, p.plan.total_bytes);
            assert!(sum <= e.bytes, "{} over capacity: {sum} > {}", e.name, e.bytes);
            assert!(sum > e.bytes * 9 / 10, "{} left mostly empty: {sum}", e.name);
            let dens: Vec<f64> = p.plan.objects.iter().map(density).collect();
            assert!(dens.windows(2).all(|w| w[0] >= w[1]), "{} not in priority order", e.name);
            assert_eq!(p.peers.len(), 2);
        }
        // By default a twentieth of each disk stays free for what the forecast missed.
        let site = plan_site("s", "last-day", objs, &edges, Placement::default());
        for (p, e) in site.plans.iter().zip(&edges) {
            assert!(p.plan.total_bytes <= e.bytes * 95 / 100, "{}: {}", e.name, p.plan.total_bytes);
        }
    }

    #[test]
    fn a_site_holds_one_copy_of_most_objects_spread_by_title_and_two_of_the_hottest() {
        // 40 titles x 10 segments of 100 bytes; demand falls with title rank and segment index.
        let mut objs = Vec::new();
        for t in 0..40u64 {
            for n in 1..=10u64 {
                objs.push(obj(&format!("titles/t{t}/v1/{n}.m4s"), 100, 1000.0 / ((t + 1) * n) as f64));
            }
        }
        let edges = slots(&[("a", 15_000), ("b", 15_000), ("c", 15_000)]);
        let placement = Placement { hot_fraction: 0.05, hot_copies: 2, fill_fraction: 1.0 };
        let site = plan_site("s", "last-day", objs, &edges, placement);
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for p in &site.plans {
            for o in &p.plan.objects {
                *copies.entry(o.key.as_str()).or_default() += 1;
            }
        }
        assert_eq!(copies.len(), 400, "everything fits once");
        assert_eq!(copies["titles/t0/v1/1.m4s"], 2, "the hottest object is on two edges");
        let singles = copies.values().filter(|&&c| c == 1).count();
        assert!(singles >= 360, "most objects held once: {singles}");
        // Every edge owns some titles, and a title's single-copy objects sit on its rendezvous owner.
        for p in &site.plans {
            assert!(p.plan.objects.len() > 60, "{} holds {}", p.edge, p.plan.objects.len());
        }
        let owner = |title: &str| {
            let h = crate::rank::TitleHasher::new(title);
            edges.iter().max_by_key(|e| h.weight(&e.name)).unwrap().name.clone()
        };
        // An owner that is full passes the least valuable objects on to the next edge in rendezvous order.
        let (mut on_owner, mut singles_seen) = (0, 0);
        for p in &site.plans {
            for o in &p.plan.objects {
                if copies[o.key.as_str()] == 1 {
                    let title = crate::forecast::key_parts(&o.key).unwrap().title;
                    singles_seen += 1;
                    on_owner += usize::from(p.edge == owner(title));
                }
            }
        }
        assert!(on_owner * 10 >= singles_seen * 8, "{on_owner} of {singles_seen} on their owner");
        // Peers are named for doubly held objects only, never the edge itself.
        let a = &site.plans[0];
        for (key, names) in &a.holders {
            assert_eq!(copies[key.as_str()], 2);
            assert!(names.iter().all(|n| n != "a"));
            assert_eq!(a.peer_urls_for(key).len(), 1);
        }
    }

    #[test]
    fn edge_slots_parse_and_name_bad_input() {
        assert_eq!(EdgeSlot::parse("a:10").unwrap(), EdgeSlot { name: "a".into(), url: None, bytes: 10 });
        let s = EdgeSlot::parse("b:5@http://127.0.0.1:80").unwrap();
        assert_eq!((s.name.as_str(), s.url.as_deref(), s.bytes), ("b", Some("http://127.0.0.1:80"), 5));
        assert!(EdgeSlot::parse("a").unwrap_err().contains("NAME:BYTES"));
        assert!(EdgeSlot::parse("a:x").unwrap_err().contains("not an unsigned"));
        assert!(EdgeSlot::parse(":1").is_err());
        assert!(EdgeSlot::parse("a:1@ftp://x").is_err());
    }

    #[test]
    fn reads_log_and_counts_per_key() {
        let log = format!(
            "{HEADER}\n1,10.0.0.1,titles/a/v1/1.m4s,100\n2,10.0.0.2,titles/a/v1/1.m4s,100\n\n3,10.0.0.1,titles/b/v1/1.m4s,50\n"
        );
        let tally = read_log(log.as_bytes()).unwrap();
        assert_eq!(tally.rows(), 3);
        let objs = tally.into_objects();
        assert_eq!(objs[0], ObjectDemand { key: "titles/a/v1/1.m4s".into(), bytes: 100, requests: 2 });
        assert_eq!(objs[1].requests, 1);
    }

    #[test]
    fn bad_logs_name_the_line() {
        let e = read_log("ts,ip\n".as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("line 1: header"), "{e}");
        assert!(matches!(read_log("".as_bytes()), Err(FillError::Header { .. })));
        let e = read_log(format!("{HEADER}\n1,10.0.0.1,k,1\n2,not-an-ip,k,1\n").as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("line 3:"), "{e}");
        let e = read_log_file(Path::new("/nonexistent/day.csv")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/day.csv"), "{e}");
    }
}
