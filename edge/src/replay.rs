//! `edge replay`: runs a request log through the edge's cache policy, no HTTP.
//!
//! Two tiers, each a `MemoryTier` (the server's RAM tier code: moka, TinyLFU
//! admission, byte-weighted LRU eviction): RAM of `ram_bytes` in front of a
//! disk tier of `disk_bytes`. Until the real disk tier lands, the disk tier
//! here is *modelled* with that same policy, and the report says so
//! (`"disk_tier": "modelled"`). A request is a hit if either tier holds the
//! object; a disk hit is promoted to RAM; a miss is fetched from the origin
//! and offered to both tiers. Prefilled objects go into the disk tier before
//! the first row, admitted by the plan rather than by frequency.
//!
//! Not modelled: manifest TTLs (the log has no freshness data) and partial
//! objects (each row is a whole object). A row whose size differs from the
//! held copy is a miss: the object changed upstream.

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;
use vod::log::{LogParseError, RequestLogRow, HEADER};
use vod::plan::FillPlan;

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

/// RAM in front of a (modelled) disk tier, keyed by the log's key text.
pub struct TwoTierModel {
    ram: MemoryTier<String, ModelObject>,
    disk: MemoryTier<String, ModelObject>,
}

impl TwoTierModel {
    /// Empty tiers of the given capacities.
    pub fn new(ram_bytes: u64, disk_bytes: u64) -> Self {
        Self { ram: MemoryTier::new(ram_bytes), disk: MemoryTier::new(disk_bytes) }
    }

    /// Loads the plan's objects into the disk tier, in plan order; returns the bytes held afterwards.
    pub fn prefill(&self, plan: &FillPlan) -> u64 {
        for o in &plan.objects {
            self.disk.insert(o.key.clone(), ModelObject { bytes: o.bytes });
            // Settle each insert so a plan larger than the tier keeps its head,
            // as a prefill in priority order would.
            self.disk.settle();
        }
        self.disk.weighted_bytes()
    }

    /// Serves one request for `key` of `bytes` through the tiers.
    pub fn request(&self, key: &str, bytes: u64) -> Outcome {
        let wanted = ModelObject { bytes };
        let key = key.to_owned();
        if self.ram.get(&key) == Some(wanted) {
            return Outcome::RamHit;
        }
        if self.disk.get(&key) == Some(wanted) {
            self.ram.insert(key, wanted);
            self.ram.settle();
            return Outcome::DiskHit;
        }
        self.disk.insert(key.clone(), wanted);
        self.ram.insert(key, wanted);
        // Settling after every fill applies admission and eviction in log
        // order, so a replay is repeatable rather than batch-timing dependent.
        self.disk.settle();
        self.ram.settle();
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
    /// `"modelled"`: the disk tier is the RAM tier's policy with the disk's capacity.
    pub disk_tier: &'static str,
    /// The cache policy replayed.
    pub policy: &'static str,
}

impl ReplayReport {
    fn empty(ram_bytes: u64, disk_bytes: u64) -> Self {
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
            disk_tier: "modelled",
            policy: "moka TinyLFU admission, byte-weighted LRU eviction",
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
    /// Disk tier capacity in bytes (modelled with the RAM tier's policy for now).
    #[arg(long, default_value_t = 0)]
    pub disk_bytes: u64,
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
    let file = std::fs::File::open(log).map_err(|e| EdgeError::io(format!("opening {}", log.display()), e))?;
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    replay_reader(reader, &log.display().to_string(), ram_bytes, disk_bytes, plan)
}

/// Reads a fill plan file.
pub fn read_plan(path: &Path) -> Result<FillPlan, EdgeError> {
    let text = std::fs::read_to_string(path).map_err(|e| EdgeError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|cause| EdgeError::Plan { path: path.display().to_string(), cause })
}

/// Replays a log from any reader; `name` labels errors.
pub fn replay_reader(
    mut reader: impl BufRead,
    name: &str,
    ram_bytes: u64,
    disk_bytes: u64,
    plan: Option<&FillPlan>,
) -> Result<ReplayReport, EdgeError> {
    let bad =
        |line: usize, reason: String| EdgeError::Log { path: name.to_owned(), cause: LogParseError { line, reason } };
    let model = TwoTierModel::new(ram_bytes, disk_bytes);
    let mut report = ReplayReport::empty(ram_bytes, disk_bytes);
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
        let m = TwoTierModel::new(100, 1000);
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
