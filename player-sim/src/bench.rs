//! `player-sim bench`: sessions per second of each rule on one core.

use std::time::{Duration, Instant};

use serde::Serialize;
use vod::trace::{Movie, NetworkTrace};

use crate::abr::AbrKind;
use crate::report::QoeMeans;
use crate::sim::{simulate_all, SimConfig};

/// One rule's speed and the figures of the runs that measured it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleSpeed {
    pub abr: AbrKind,
    /// Sessions per second of the fastest timed pass, single-threaded (the
    /// least disturbed by other work on the machine).
    pub sessions_per_s: f64,
    /// Sessions per second over all timed passes.
    pub mean_sessions_per_s: f64,
    /// Passes over the trace set that were timed.
    pub passes: usize,
    pub sessions: usize,
    #[serde(flatten)]
    pub means: QoeMeans,
}

/// Time every rule in `kinds` over all `traces`: whole passes until `min_time`
/// has passed (at least one, at most `max_passes`).
pub fn measure(
    traces: &[(String, NetworkTrace)],
    movie: &Movie,
    kinds: &[AbrKind],
    min_time: Duration,
    max_passes: usize,
) -> Vec<RuleSpeed> {
    kinds
        .iter()
        .map(|&abr| {
            let config = SimConfig::new(abr);
            let start = Instant::now();
            let mut passes = 0;
            let mut fastest = f64::INFINITY;
            let mut report;
            loop {
                let pass = Instant::now();
                report = simulate_all(traces, movie, &config);
                fastest = fastest.min(pass.elapsed().as_secs_f64());
                passes += 1;
                if start.elapsed() >= min_time || passes >= max_passes.max(1) {
                    break;
                }
            }
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            RuleSpeed {
                abr,
                sessions_per_s: traces.len() as f64 / fastest.max(1e-9),
                mean_sessions_per_s: (passes * traces.len()) as f64 / elapsed,
                passes,
                sessions: report.sessions,
                means: report.means,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vod::trace::NetworkPeriod;

    #[test]
    fn measures_every_rule_it_is_given() {
        let trace =
            NetworkTrace::new(vec![NetworkPeriod { duration_ms: 1000, bandwidth_kbps: 2000.0, latency_ms: 50.0 }])
                .unwrap();
        let movie = Movie {
            segment_duration_ms: 2000,
            bitrates_kbps: vec![300.0, 1000.0],
            segment_sizes_bits: vec![vec![600_000, 2_000_000]; 5],
        };
        let traces = vec![("a".to_owned(), trace)];
        let speeds = measure(&traces, &movie, &[AbrKind::Bola, AbrKind::Ours], Duration::from_millis(1), 3);
        assert_eq!(speeds.len(), 2);
        for s in &speeds {
            assert!(s.sessions_per_s > 0.0 && s.sessions_per_s >= s.mean_sessions_per_s * 0.999, "{s:?}");
            assert!((1..=3).contains(&s.passes));
            assert_eq!(s.sessions, 1);
        }
    }
}
