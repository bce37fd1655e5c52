//! Counters the edge exposes as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// How one object request ended, for `edge_requests_total{result=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the RAM tier.
    Hit,
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
            CacheResult::Miss => "MISS",
            CacheResult::Error => "ERROR",
        }
    }
}

/// The edge's counters. Plain atomics: each is updated on its own.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    bytes_served: AtomicU64,
    upstream_fetches: AtomicU64,
    upstream_errors: AtomicU64,
    upstream_bytes: AtomicU64,
    coalesced: AtomicU64,
    log_rows_dropped: AtomicU64,
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

    /// Counts a request-log row dropped because the writer fell behind.
    pub fn log_row_dropped(&self) {
        self.log_rows_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Upstream fetches started so far.
    pub fn upstream_fetches(&self) -> u64 {
        self.upstream_fetches.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every counter plus the RAM tier gauges.
    pub fn render(&self, name: &str, ram: TierGauges) -> String {
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
            "edge_request_log_dropped_total",
            "counter",
            "Request-log rows dropped because the writer fell behind.",
            &[("", get(&self.log_rows_dropped))],
        );
        let tier = "{tier=\"ram\"}";
        metric("edge_cache_bytes", "gauge", "Bytes held by a cache tier.", &[(tier, ram.bytes)]);
        metric("edge_cache_objects", "gauge", "Objects held by a cache tier.", &[(tier, ram.entries)]);
        metric("edge_cache_capacity_bytes", "gauge", "Capacity of a cache tier.", &[(tier, ram.capacity_bytes)]);
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
        let text = m.render("edge-a", TierGauges { bytes: 5, entries: 1, capacity_bytes: 10 });
        assert!(text.contains("edge_requests_total{result=\"hit\"} 2\n"), "{text}");
        assert!(text.contains("edge_bytes_served_total 42\n"), "{text}");
        assert!(text.contains("edge_cache_bytes{tier=\"ram\"} 5\n"), "{text}");
        assert!(text.contains("edge_info{name=\"edge-a\"} 1\n"), "{text}");
    }
}
