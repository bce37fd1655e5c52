//! `edge replay`: runs a request log through the edge's cache policy, no HTTP.
//!
//! RAM of `ram_bytes` (the server's `MemoryTier`: moka, TinyLFU admission,
//! byte-weighted LRU eviction) in front of a disk tier of `disk_bytes` run by
//! the server's own `disk_log::LogIndex` (regions, admission, reinsertion,
//! pinning), with sizes instead of bytes. As in the server, a disk hit is
//! promoted to RAM, a miss is offered to both tiers, objects larger than the
//! RAM tier are not offered to it, and the disk's policy only sees requests
//! that missed RAM. Prefilled objects are pinned into the disk tier before the
//! first row, admitted by the plan rather than by frequency.
//!
//! `--disk-policy` picks the disk policy to compare: `frequency` (the
//! server's default), `fifo` (the same log without admission or
//! reinsertion), `lru` (a byte-weighted LRU that ignores regions: the
//! textbook baseline) or `moka` (the RAM tier's policy at the disk's size).
//!
//! Not modelled: manifest TTLs (the log has no freshness data) and partial
//! objects (each row is a whole object). A row whose size differs from the
//! held copy is a miss: the object changed upstream.

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;
use vod::log::{LogParseError, RequestLogRow, HEADER};
use vod::plan::FillPlan;

use crate::disk_log::{region_bytes_for, DiskPolicy, LogIndex};
use crate::error::EdgeError;
use crate::memory::{MemoryTier, TierValue};

/// What the model holds per object: only its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelObject {
    pub bytes: u64,
}

impl TierValue for ModelObject {
    fn weight_bytes(&self) -> u64 {
        self.bytes
    }
}

/// Where one replayed request was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    RamHit,
    DiskHit,
    Miss,
}

/// The disk policy a replay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplayPolicy {
    /// The server's disk tier: log with count-min admission and reinsertion.
    #[default]
    Frequency,
    /// The server's log without admission or reinsertion.
    Fifo,
    /// A byte-weighted LRU (a baseline the log cannot run, for comparison).
    Lru,
    /// moka (TinyLFU + LRU) at the disk's size: the earlier model.
    Moka,
}

impl ReplayPolicy {
    /// Label in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayPolicy::Frequency => DiskPolicy::Frequency.as_str(),
            ReplayPolicy::Fifo => DiskPolicy::Fifo.as_str(),
            ReplayPolicy::Lru => "byte-weighted LRU",
            ReplayPolicy::Moka => "moka TinyLFU admission, byte-weighted LRU eviction",
        }
    }
}

enum DiskModel {
    Log(LogIndex<String>),
    Lru(LruModel),
    Moka(MemoryTier<String, ModelObject>),
}

impl DiskModel {
    /// Looks `key` up, counting the access; true if held at `bytes`.
    fn lookup(&mut self, key: &str, bytes: u64) -> bool {
        let key = key.to_owned();
        match self {
            DiskModel::Log(log) => log.access(&key).is_some_and(|s| s.len == bytes),
            DiskModel::Lru(lru) => lru.get(&key) == Some(bytes),
            DiskModel::Moka(m) => m.get(&key) == Some(ModelObject { bytes }),
        }
    }

    fn insert(&mut self, key: &str, bytes: u64, pinned: bool) {
        match self {
            DiskModel::Log(log) => {
                let _ = log.insert(key.to_owned(), bytes, pinned, |_| false);
            }
            DiskModel::Lru(lru) => lru.insert(key.to_owned(), bytes),
            DiskModel::Moka(m) => {
                m.insert(key.to_owned(), ModelObject { bytes });
                m.settle();
            }
        }
    }

    fn held_bytes(&self) -> u64 {
        match self {
            DiskModel::Log(log) => log.stats().live_bytes,
            DiskModel::Lru(lru) => lru.bytes,
            DiskModel::Moka(m) => m.weighted_bytes(),
        }
    }
}

/// A plain byte-weighted LRU: a map plus a recency-ordered tree.
struct LruModel {
    capacity: u64,
    bytes: u64,
    tick: u64,
    entries: std::collections::HashMap<String, (u64, u64)>,
    order: std::collections::BTreeMap<u64, String>,
}

impl LruModel {
    fn new(capacity: u64) -> Self {
        Self { capacity, bytes: 0, tick: 0, entries: Default::default(), order: Default::default() }
    }

    fn get(&mut self, key: &String) -> Option<u64> {
        let (bytes, at) = self.entries.get_mut(key)?;
        self.order.remove(at);
        self.tick += 1;
        *at = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(*bytes)
    }

    fn insert(&mut self, key: String, bytes: u64) {
        if bytes > self.capacity {
            return;
        }
        if let Some((old, at)) = self.entries.remove(&key) {
            self.order.remove(&at);
            self.bytes -= old;
        }
        while self.bytes + bytes > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else { break };
            if let Some((b, _)) = self.entries.remove(&victim) {
                self.bytes -= b;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (bytes, self.tick));
        self.bytes += bytes;
    }
}

/// RAM in front of a disk tier, keyed by the log's key text.
pub struct TwoTierModel {
    ram: MemoryTier<String, ModelObject>,
    disk: DiskModel,
}

impl TwoTierModel {
    /// Empty tiers of the given capacities, the disk run by the server's policy.
    pub fn new(ram_bytes: u64, disk_bytes: u64) -> Self {
        Self::with_policy(ram_bytes, disk_bytes, ReplayPolicy::default())
    }

    /// Empty tiers with the disk run by `policy`.
    pub fn with_policy(ram_bytes: u64, disk_bytes: u64, policy: ReplayPolicy) -> Self {
        let log = |p| DiskModel::Log(LogIndex::new(disk_bytes, region_bytes_for(disk_bytes), p));
        let disk = match policy {
            ReplayPolicy::Frequency => log(DiskPolicy::Frequency),
            ReplayPolicy::Fifo => log(DiskPolicy::Fifo),
            ReplayPolicy::Lru => DiskModel::Lru(LruModel::new(disk_bytes)),
            ReplayPolicy::Moka => DiskModel::Moka(MemoryTier::new(disk_bytes)),
        };
        Self { ram: MemoryTier::new(ram_bytes), disk }
    }

    /// Pins the plan's objects into the disk tier, in plan order; returns the bytes held afterwards.
    pub fn prefill(&mut self, plan: &FillPlan) -> u64 {
        for o in &plan.objects {
            self.disk.insert(&o.key, o.bytes, true);
        }
        self.disk.held_bytes()
    }

    /// Serves one request for `key` of `bytes` through the tiers.
    pub fn request(&mut self, key: &str, bytes: u64) -> Outcome {
        let wanted = ModelObject { bytes };
        if self.ram.get(&key.to_owned()) == Some(wanted) {
            return Outcome::RamHit;
        }
        let fits_ram = bytes <= self.ram.capacity_bytes();
        if self.disk.lookup(key, bytes) {
            if fits_ram {
                self.ram.insert(key.to_owned(), wanted);
                self.ram.settle();
            }
            return Outcome::DiskHit;
        }
        self.disk.insert(key, bytes, false);
        if fits_ram {
            self.ram.insert(key.to_owned(), wanted);
            // Settling after every fill applies admission and eviction in log
            // order, so a replay is repeatable rather than batch-timing dependent.
            self.ram.settle();
        }
        Outcome::Miss
    }
}

/// The figures `edge replay --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Rows replayed.
    pub requests: u64,
    /// Rows served from RAM or disk.
    pub hit_requests: u64,
    /// Sum of the rows' bytes.
    pub bytes: u64,
    /// Bytes of rows served from RAM or disk.
    pub hit_bytes: u64,
    /// `hit_bytes / bytes` (0 for an empty log).
    pub byte_hit_ratio: f64,
    /// Bytes fetched from the origin on misses (prefill not included).
    pub origin_bytes: u64,
    pub ram_hit_requests: u64,
    pub ram_hit_bytes: u64,
    pub disk_hit_requests: u64,
    pub disk_hit_bytes: u64,
    /// Objects and bytes in the fill plan, and the bytes the disk tier held after prefill.
    pub prefill_objects: u64,
    pub prefill_bytes: u64,
    pub prefill_held_bytes: u64,
    pub ram_bytes: u64,
    pub disk_bytes: u64,
    /// `"disk_log"` when the disk tier ran the server's code, `"model"` for the comparison baselines.
    pub disk_tier: &'static str,
    /// The disk policy replayed.
    pub policy: &'static str,
}

impl ReplayReport {
    fn empty(ram_bytes: u64, disk_bytes: u64, policy: ReplayPolicy) -> Self {
        Self {
            requests: 0,
            hit_requests: 0,
            bytes: 0,
            hit_bytes: 0,
            byte_hit_ratio: 0.0,
            origin_bytes: 0,
            ram_hit_requests: 0,
            ram_hit_bytes: 0,
            disk_hit_requests: 0,
            disk_hit_bytes: 0,
            prefill_objects: 0,
            prefill_bytes: 0,
            prefill_held_bytes: 0,
            ram_bytes,
            disk_bytes,
            disk_tier: match policy {
                ReplayPolicy::Frequency | ReplayPolicy::Fifo => "disk_log",
                ReplayPolicy::Lru | ReplayPolicy::Moka => "model",
            },
            policy: policy.as_str(),
        }
    }

    fn count(&mut self, bytes: u64, outcome: Outcome) {
        self.requests += 1;
        self.bytes += bytes;
        match outcome {
            Outcome::RamHit => {
                self.ram_hit_requests += 1;
                self.ram_hit_bytes += bytes;
            }
            Outcome::DiskHit => {
                self.disk_hit_requests += 1;
                self.disk_hit_bytes += bytes;
            }
            Outcome::Miss => self.origin_bytes += bytes,
        }
        if outcome != Outcome::Miss {
            self.hit_requests += 1;
            self.hit_bytes += bytes;
        }
    }

    /// A few lines for people (the non-`--json` output).
    pub fn to_text(&self) -> String {
        format!(
            "requests {} ({} hits: {} RAM, {} disk)\nbytes {} ({} hit, byte hit ratio {:.4})\n\
             origin bytes {}\nprefill {} objects, {} bytes ({} held)\ntiers: RAM {} B, disk {} B ({}), {}\n",
            self.requests,
            self.hit_requests,
            self.ram_hit_requests,
            self.disk_hit_requests,
            self.bytes,
            self.hit_bytes,
            self.byte_hit_ratio,
            self.origin_bytes,
            self.prefill_objects,
            self.prefill_bytes,
            self.prefill_held_bytes,
            self.ram_bytes,
            self.disk_bytes,
            self.disk_tier,
            self.policy
        )
    }
}

/// `edge replay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Request log CSV (`ts_ms,client_ip,key,bytes`).
    #[arg(long)]
    pub log: std::path::PathBuf,
    /// RAM tier capacity in bytes.
    #[arg(long)]
    pub ram_bytes: u64,
    /// Disk tier capacity in bytes.
    #[arg(long, default_value_t = 0)]
    pub disk_bytes: u64,
    /// Disk policy: the server's (`frequency`) or a baseline to compare with.
    #[arg(long, value_enum, default_value_t = ReplayPolicy::Frequency)]
    pub disk_policy: ReplayPolicy,
    /// Fill plan JSON whose objects are loaded into the disk tier first.
    #[arg(long)]
    pub prefill: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Replays the log file at `log` (streamed line by line), after loading `plan` into the disk tier.
pub fn replay_file(
    log: &Path,
    ram_bytes: u64,
    disk_bytes: u64,
    plan: Option<&FillPlan>,
) -> Result<ReplayReport, EdgeError> {
    replay_file_with(log, ram_bytes, disk_bytes, plan, ReplayPolicy::default())
}

/// `replay_file` with a chosen disk policy.
pub fn replay_file_with(
    log: &Path,
    ram_bytes: u64,
    disk_bytes: u64,
    plan: Option<&FillPlan>,
    policy: ReplayPolicy,
) -> Result<ReplayReport, EdgeError> {
    let file = std::fs::File::open(log).map_err(|e| EdgeError::io(format!("opening {}", log.display()), e))?;
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    replay_reader_with(reader, &log.display().to_string(), ram_bytes, disk_bytes, plan, policy)
}

/// Reads a fill plan file.
pub fn read_plan(path: &Path) -> Result<FillPlan, EdgeError> {
    let text = std::fs::read_to_string(path).map_err(|e| EdgeError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|cause| EdgeError::Plan { path: path.display().to_string(), cause })
}

/// Replays a log from any reader; `name` labels errors.
pub fn replay_reader(
    reader: impl BufRead,
    name: &str,
    ram_bytes: u64,
    disk_bytes: u64,
    plan: Option<&FillPlan>,
) -> Result<ReplayReport, EdgeError> {
    replay_reader_with(reader, name, ram_bytes, disk_bytes, plan, ReplayPolicy::default())
}

/// `replay_reader` with a chosen disk policy.
pub fn replay_reader_with(
    mut reader: impl BufRead,
    name: &str,
    ram_bytes: u64,
    disk_bytes: u64,
    plan: Option<&FillPlan>,
    policy: ReplayPolicy,
) -> Result<ReplayReport, EdgeError> {
    let bad =
        |line: usize, reason: String| EdgeError::Log { path: name.to_owned(), cause: LogParseError { line, reason } };
    let mut model = TwoTierModel::with_policy(ram_bytes, disk_bytes, policy);
    let mut report = ReplayReport::empty(ram_bytes, disk_bytes, policy);
    if let Some(plan) = plan {
        report.prefill_objects = plan.objects.len() as u64;
        report.prefill_bytes = plan.objects.iter().map(|o| o.bytes).sum();
        report.prefill_held_bytes = model.prefill(plan);
    }
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| EdgeError::io(format!("reading {name}"), e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|_| bad(line_no, "not UTF-8 text".into()))?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line_no == 1 {
            if line.trim_start_matches('\u{feff}').trim() != HEADER {
                return Err(bad(1, format!("header must be {HEADER}")));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let row =
            RequestLogRow::parse(line, line_no).map_err(|cause| EdgeError::Log { path: name.to_owned(), cause })?;
        let outcome = model.request(&row.key, row.bytes);
        report.count(row.bytes, outcome);
    }
    if line_no == 0 {
        return Err(bad(1, format!("empty file; header must be {HEADER}")));
    }
    report.byte_hit_ratio = if report.bytes == 0 { 0.0 } else { report.hit_bytes as f64 / report.bytes as f64 };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_requests_hit_and_a_disk_hit_is_promoted() {
        let mut m = TwoTierModel::new(100, 1000);
        assert_eq!(m.request("a", 60), Outcome::Miss);
        assert_eq!(m.request("a", 60), Outcome::RamHit);
        // "b" pushes "a" out of the 100-byte RAM tier (or is refused by it); the disk keeps both.
        for _ in 0..3 {
            m.request("b", 60);
        }
        let a = m.request("a", 60);
        assert!(matches!(a, Outcome::DiskHit | Outcome::RamHit), "{a:?}");
        assert_eq!(m.request("c", 2000), Outcome::Miss, "larger than both tiers");
        assert_eq!(m.request("c", 2000), Outcome::Miss);
        assert_eq!(m.request("a", 61), Outcome::Miss, "a changed size: the object changed");
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let text = format!("{HEADER}\n1,10.0.0.1,titles/t/v1/1.m4s,5\n2,10.0.0.1,titles/t/v1/2.m4s\n");
        let e = replay_reader(text.as_bytes(), "day.csv", 100, 100, None).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(e.to_string().contains("day.csv"), "{e}");
        let e = replay_reader("ts,ip\n".as_bytes(), "x", 1, 1, None).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(replay_reader("".as_bytes(), "x", 1, 1, None).is_err());
        let e = replay_reader(&b"ts_ms,client_ip,key,bytes\n\xff\xfe\n"[..], "x", 1, 1, None).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn an_empty_log_has_a_zero_ratio_not_nan() {
        let r = replay_reader(format!("{HEADER}\n").as_bytes(), "x", 1, 1, None).unwrap();
        assert_eq!((r.requests, r.byte_hit_ratio), (0, 0.0));
        assert!(serde_json::to_string(&r).unwrap().contains("\"byte_hit_ratio\":0.0"));
    }
}
