//! Fill plans: from one day's request log to the objects an edge should hold
//! tomorrow, highest priority first.
//!
//! Three steps, each replaceable: tally the log (streamed, one line at a
//! time), forecast tomorrow's requests per object, then choose objects
//! greedily by value density (forecast requests per byte) until the edge's
//! capacity is full.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use vod::log::{LogParseError, RequestLogRow, HEADER};
use vod::plan::{FillPlan, PlannedObject};

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
    let mut lines = reader.lines();
    let header = match lines.next() {
        Some(Ok(h)) => h,
        Some(Err(source)) => return Err(FillError::Read { line: 1, source }),
        None => return Err(FillError::Header { found: String::new() }),
    };
    if header.trim_start_matches('\u{feff}').trim() != HEADER {
        return Err(FillError::Header { found: header });
    }
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let line = line.map_err(|source| FillError::Read { line: line_no, source })?;
        if line.trim().is_empty() {
            continue;
        }
        tally.add(&RequestLogRow::parse(&line, line_no)?);
    }
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

/// Forecast requests per byte; zero-byte objects count as one byte.
fn density(o: &PlannedObject) -> f64 {
    o.expected_requests / o.bytes.max(1) as f64
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
