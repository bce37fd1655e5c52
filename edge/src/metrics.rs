//! Counters the edge exposes as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// How one object request ended, for `edge_requests_total{result=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the RAM tier.
    Hit,
    /// Served from the disk tier.
    DiskHit,
    /// Served an expired copy because every upstream failed.
    Stale,
    /// Served after an upstream fetch (this request's or a coalesced one).
    Miss,
    /// Refused or failed before an object was in hand (400/403/404/5xx).
    Error,
}

impl CacheResult {
    /// Label value and `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::DiskHit => "HIT-DISK",
            CacheResult::Stale => "STALE",
            CacheResult::Miss => "MISS",
            CacheResult::Error => "ERROR",
        }
    }
}

/// The edge's counters. Plain atomics: each is updated on its own.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    hits: AtomicU64,
    disk_hits: AtomicU64,
    stale: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    bytes_served: AtomicU64,
    upstream_fetches: AtomicU64,
    upstream_errors: AtomicU64,
    upstream_bytes: AtomicU64,
    coalesced: AtomicU64,
    streamed_misses: AtomicU64,
    segment_misses: AtomicU64,
    log_rows_dropped: AtomicU64,
    latency: LatencyHistogram,
}

/// Upper bounds (seconds) of the request-latency histogram's buckets.
const LATENCY_BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A Prometheus histogram of request latency (until the response head is ready).
#[derive(Debug, Default)]
struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// The disk tier's sizes and counters, sampled when `/metrics` is rendered.
#[derive(Debug, Clone, Copy)]
pub struct DiskGauges<'a> {
    pub log: crate::disk_log::LogStats,
    pub counters: &'a crate::disk::DiskCounters,
}

/// Tier sizes sampled when `/metrics` is rendered.
#[derive(Debug, Clone, Copy)]
pub struct TierGauges {
    pub bytes: u64,
    pub entries: u64,
    pub capacity_bytes: u64,
}

impl EdgeMetrics {
    /// Counts one object request by its result.
    pub fn request(&self, result: CacheResult) {
        let c = match result {
            CacheResult::Hit => &self.hits,
            CacheResult::DiskHit => &self.disk_hits,
            CacheResult::Stale => &self.stale,
            CacheResult::Miss => &self.misses,
            CacheResult::Error => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts body bytes sent to clients.
    pub fn served(&self, bytes: u64) {
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one upstream fetch started.
    pub fn upstream_fetch(&self) {
        self.upstream_fetches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed upstream fetch.
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes received from upstream in complete bodies.
    pub fn upstream_bytes(&self, bytes: u64) {
        self.upstream_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a request that waited on another request's fetch instead of starting one.
    pub fn coalesced(&self) {
        self.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a miss whose body was streamed while the object was still arriving.
    pub fn streamed_miss(&self) {
        self.streamed_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a miss on a segment or init segment (an immutable object): what prefill is meant to avoid.
    pub fn segment_miss(&self) {
        self.segment_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request-log row dropped because the writer fell behind.
    pub fn log_row_dropped(&self) {
        self.log_rows_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long an object request took until its response head was ready.
    pub fn observe_latency(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|&le| secs <= le) {
            self.latency.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency.count.fetch_add(1, Ordering::Relaxed);
        self.latency.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Object requests by result label (`hit`, `disk_hit`, `stale`, `miss`, `error`).
    pub fn requests_by_result(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("hit", get(&self.hits)),
            ("disk_hit", get(&self.disk_hits)),
            ("stale", get(&self.stale)),
            ("miss", get(&self.misses)),
            ("error", get(&self.errors)),
        ]
    }

    /// Body bytes sent and bytes fetched from upstream so far.
    pub fn bytes_served_and_fetched(&self) -> (u64, u64) {
        (self.bytes_served.load(Ordering::Relaxed), self.upstream_bytes.load(Ordering::Relaxed))
    }

    /// Upstream fetches started so far.
    pub fn upstream_fetches(&self) -> u64 {
        self.upstream_fetches.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every counter plus the tier gauges.
    pub fn render(&self, name: &str, ram: TierGauges, disk: Option<DiskGauges<'_>>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let info = format!("{{name=\"{}\"}}", name.replace(['"', '\\', '\n'], "_"));
        metric("edge_info", "gauge", "This edge's configured name.", &[(&info, 1)]);
        metric(
            "edge_requests_total",
            "counter",
            "Object requests by cache result.",
            &[
                ("{result=\"hit\"}", get(&self.hits)),
                ("{result=\"disk_hit\"}", get(&self.disk_hits)),
                ("{result=\"stale\"}", get(&self.stale)),
                ("{result=\"miss\"}", get(&self.misses)),
                ("{result=\"error\"}", get(&self.errors)),
            ],
        );
        metric("edge_bytes_served_total", "counter", "Body bytes sent to clients.", &[("", get(&self.bytes_served))]);
        metric(
            "edge_upstream_fetches_total",
            "counter",
            "Upstream fetches started.",
            &[("", get(&self.upstream_fetches))],
        );
        metric(
            "edge_upstream_errors_total",
            "counter",
            "Upstream fetches that failed.",
            &[("", get(&self.upstream_errors))],
        );
        metric(
            "edge_upstream_bytes_total",
            "counter",
            "Bytes received from upstream.",
            &[("", get(&self.upstream_bytes))],
        );
        metric(
            "edge_coalesced_requests_total",
            "counter",
            "Misses that joined a fetch already in flight.",
            &[("", get(&self.coalesced))],
        );
        metric(
            "edge_streamed_misses_total",
            "counter",
            "Miss responses streamed while their object was still arriving from upstream.",
            &[("", get(&self.streamed_misses))],
        );
        metric(
            "edge_segment_misses_total",
            "counter",
            "Misses on segments and init segments (playlists and catalogs, refreshed by TTL, are not counted).",
            &[("", get(&self.segment_misses))],
        );
        metric(
            "edge_request_log_dropped_total",
            "counter",
            "Request-log rows dropped because the writer fell behind.",
            &[("", get(&self.log_rows_dropped))],
        );
        let _ = writeln!(
            out,
            "# HELP edge_request_duration_seconds Object request latency until the response head is ready.\n\
             # TYPE edge_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (le, b) in LATENCY_BUCKETS_S.iter().zip(&self.latency.buckets) {
            cumulative += get(b);
            let _ = writeln!(out, "edge_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = get(&self.latency.count);
        let _ = writeln!(out, "edge_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "edge_request_duration_seconds_sum {}", get(&self.latency.sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "edge_request_duration_seconds_count {count}");
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let (r, d) = ("{tier=\"ram\"}", "{tier=\"disk\"}");
        let mut bytes = vec![(r, ram.bytes)];
        let mut objects = vec![(r, ram.entries)];
        let mut capacity = vec![(r, ram.capacity_bytes)];
        if let Some(disk) = &disk {
            bytes.push((d, disk.log.live_bytes));
            objects.push((d, disk.log.entries));
            capacity.push((d, disk.log.capacity_bytes));
        }
        metric("edge_cache_bytes", "gauge", "Bytes held by a cache tier.", &bytes);
        metric("edge_cache_objects", "gauge", "Objects held by a cache tier.", &objects);
        metric("edge_cache_capacity_bytes", "gauge", "Capacity of a cache tier.", &capacity);
        if let Some(disk) = disk {
            let c = disk.counters;
            metric(
                "edge_disk_gap_bytes",
                "gauge",
                "Disk tier bytes lost to region tails (fragmentation).",
                &[("", disk.log.gap_bytes)],
            );
            metric(
                "edge_disk_pinned_bytes",
                "gauge",
                "Disk tier bytes pinned by prefill.",
                &[("", disk.log.pinned_bytes)],
            );
            metric("edge_disk_writes_total", "counter", "Objects written to the disk tier.", &[("", get(&c.writes))]);
            metric(
                "edge_disk_write_bytes_total",
                "counter",
                "Bytes written to the disk tier.",
                &[("", get(&c.write_bytes))],
            );
            metric(
                "edge_disk_refused_total",
                "counter",
                "Objects the disk tier's policy turned away.",
                &[("", get(&c.refused))],
            );
            metric(
                "edge_disk_evictions_total",
                "counter",
                "Objects evicted from the disk tier.",
                &[("", get(&c.evictions))],
            );
            metric(
                "edge_disk_corrupt_total",
                "counter",
                "Disk objects dropped because their checksum failed.",
                &[("", get(&c.corrupt_dropped))],
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = EdgeMetrics::default();
        m.request(CacheResult::Hit);
        m.request(CacheResult::Hit);
        m.served(42);
        m.observe_latency(std::time::Duration::from_millis(3));
        let text = m.render("edge-a", TierGauges { bytes: 5, entries: 1, capacity_bytes: 10 }, None);
        assert!(text.contains("edge_requests_total{result=\"hit\"} 2\n"), "{text}");
        assert!(text.contains("edge_bytes_served_total 42\n"), "{text}");
        assert!(text.contains("edge_cache_bytes{tier=\"ram\"} 5\n"), "{text}");
        assert!(text.contains("edge_info{name=\"edge-a\"} 1\n"), "{text}");
        assert!(text.contains("edge_request_duration_seconds_bucket{le=\"0.0025\"} 0\n"), "{text}");
        assert!(text.contains("edge_request_duration_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("edge_request_duration_seconds_count 1\n"), "{text}");
    }
}
