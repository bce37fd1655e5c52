//! The disk tier's index journal: one text line per record, each ending in
//! the CRC-32 of the line, so a torn tail is detected and skipped. See
//! `disk` for the record kinds and the crash ordering.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use vod::ObjectKey;

use crate::disk::Meta;
use crate::disk_log::LogIndex;
use crate::error::EdgeError;

/// The journal's file name inside the tier's directory.
pub(crate) const JOURNAL_FILE: &str = "index.journal";

/// One journal line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) op: Op,
    pub(crate) key: ObjectKey,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) crc: u32,
    pub(crate) etag: String,
    pub(crate) seq: u64,
    pub(crate) pinned: bool,
    /// When a pin lapses (Unix seconds); `None` with `pinned`: until unpinned.
    pub(crate) pin_until: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Add,
    Del,
}

impl Record {
    pub(crate) fn add(key: &ObjectKey, slot: &crate::disk_log::Slot, crc: u32, etag: &str, pinned: bool) -> Self {
        Self {
            op: Op::Add,
            key: key.clone(),
            offset: slot.offset,
            len: slot.len,
            crc,
            etag: etag.to_owned(),
            seq: slot.seq,
            pinned,
            pin_until: None,
        }
    }

    /// The same record with a pin that lapses at `until` (Unix seconds).
    pub(crate) fn with_pin_until(mut self, until: Option<u64>) -> Self {
        self.pin_until = until.filter(|_| self.pinned);
        self
    }

    pub(crate) fn del(key: &ObjectKey) -> Self {
        Self {
            op: Op::Del,
            key: key.clone(),
            offset: 0,
            len: 0,
            crc: 0,
            etag: String::new(),
            seq: 0,
            pinned: false,
            pin_until: None,
        }
    }

    pub(crate) fn to_line(&self) -> String {
        // `1@T`: pinned until Unix second T (an older edge reads it as unpinned).
        let pin = match (self.pinned, self.pin_until) {
            (false, _) => "0".to_owned(),
            (true, None) => "1".to_owned(),
            (true, Some(t)) => format!("1@{t}"),
        };
        let body = match self.op {
            Op::Add => format!(
                "add\t{}\t{}\t{}\t{:08x}\t{}\t{}\t{}",
                self.key, self.offset, self.len, self.crc, self.seq, pin, self.etag
            ),
            Op::Del => format!("del\t{}", self.key),
        };
        with_crc(body)
    }

    fn parse(body: &str) -> Option<Self> {
        let f: Vec<&str> = body.split('\t').collect();
        let key = ObjectKey::parse(f.get(1)?).ok()?;
        match (f[0], f.len()) {
            ("add", 8) => Some(Self {
                op: Op::Add,
                key,
                offset: f[2].parse().ok()?,
                len: f[3].parse().ok()?,
                crc: u32::from_str_radix(f[4], 16).ok()?,
                seq: f[5].parse().ok()?,
                pinned: f[6] == "1" || f[6].starts_with("1@"),
                pin_until: match f[6].strip_prefix("1@") {
                    Some(t) => Some(t.parse().ok()?),
                    None => None,
                },
                etag: f[7].to_owned(),
            }),
            ("del", 2) => Some(Self::del(&key)),
            _ => None,
        }
    }
}

fn with_crc(body: String) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body}\t{crc:08x}\n")
}

/// Splits `line` into its body if its trailing CRC matches.
fn checked_body(line: &str) -> Option<&str> {
    let (body, crc) = line.rsplit_once('\t')?;
    (u32::from_str_radix(crc, 16).ok()? == crc32fast::hash(body.as_bytes())).then_some(body)
}

/// The live `add` records of a journal, oldest first. A missing journal, or
/// one for another layout, is an empty tier; bad lines are skipped.
pub(crate) fn read_journal(path: &Path, capacity: u64, region_bytes: u64) -> Result<Vec<Record>, EdgeError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EdgeError::io(format!("opening {}", path.display()), e)),
    };
    let mut lines = BufReader::new(file).lines();
    let layout = format!("layout\t{capacity}\t{region_bytes}");
    match lines.next() {
        Some(Ok(first)) if checked_body(&first) == Some(layout.as_str()) => {}
        Some(_) => {
            tracing::warn!(path = %path.display(), "disk tier: journal is for another layout; starting empty");
            return Ok(Vec::new());
        }
        None => return Ok(Vec::new()),
    }
    let mut live: HashMap<ObjectKey, Record> = HashMap::new();
    let mut skipped = 0u64;
    for line in lines {
        let Ok(line) = line else {
            skipped += 1;
            continue;
        };
        match checked_body(&line).and_then(Record::parse) {
            Some(rec) if rec.op == Op::Add => {
                live.insert(rec.key.clone(), rec);
            }
            Some(rec) => {
                live.remove(&rec.key);
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "disk tier: skipped damaged journal lines");
    }
    let mut recs: Vec<Record> = live.into_values().collect();
    recs.sort_by_key(|r| r.seq);
    Ok(recs)
}

/// Writes a compact journal of the live entries (temp file, then rename) and
/// returns it open for appending.
pub(crate) fn write_snapshot(
    dir: &Path,
    index: &LogIndex<ObjectKey>,
    meta: &HashMap<ObjectKey, Meta>,
    capacity: u64,
    region_bytes: u64,
) -> Result<File, EdgeError> {
    let path = dir.join(JOURNAL_FILE);
    let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
    let io = |e| EdgeError::io(format!("writing {}", tmp.display()), e);
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io)?);
    out.write_all(with_crc(format!("layout\t{capacity}\t{region_bytes}")).as_bytes()).map_err(io)?;
    let mut entries: Vec<_> = index.iter().collect();
    entries.sort_by_key(|(_, s)| s.seq);
    for (key, slot) in entries {
        if let Some(m) = meta.get(key) {
            let rec = Record::add(key, slot, m.crc, &m.etag, slot.pinned).with_pin_until(m.pin_until);
            out.write_all(rec.to_line().as_bytes()).map_err(io)?;
        }
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| EdgeError::io(format!("renaming {}", tmp.display()), e))?;
    OpenOptions::new().append(true).open(&path).map_err(|e| EdgeError::io(format!("opening {}", path.display()), e))
}
