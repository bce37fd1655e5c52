//! Shaping a live session's downloads to a network trace: after each chunk
//! the reader waits until the trace's bandwidth would have delivered it, so
//! bytes/elapsed never exceed the period's rate. Time the session spends idle
//! earns no credit: a chunk's time starts at the later of its arrival and the
//! end of the previous chunk's time, never earlier.

use std::time::{Duration, Instant};

use vod::trace::{NetworkPeriod, NetworkTrace};

use crate::network::NetworkModel;

/// How long the trace needs to carry `bits` starting `at_ms` into it (looping).
pub fn transfer_ms(trace: &NetworkTrace, at_ms: f64, bits: f64) -> f64 {
    NetworkModel::at(trace, at_ms).transfer(bits)
}

/// The period in force `at_ms` into the (looping) trace.
pub fn period_at(trace: &NetworkTrace, at_ms: f64) -> NetworkPeriod {
    *NetworkModel::at(trace, at_ms).current()
}

/// `trace` played `speed` times faster: periods last 1/speed as long, carry
/// `speed` times the bandwidth, and add 1/speed of the latency. A session
/// shaped by it and played `speed` times faster is the original session on a
/// compressed clock (`--speed`).
pub fn time_scaled(trace: &NetworkTrace, speed: f64) -> NetworkTrace {
    if speed == 1.0 || !(speed.is_finite() && speed > 0.0) {
        return trace.clone();
    }
    let periods = trace
        .periods()
        .iter()
        .map(|p| NetworkPeriod {
            duration_ms: ((p.duration_ms as f64 / speed).round() as u64).max(1),
            bandwidth_kbps: p.bandwidth_kbps * speed,
            latency_ms: p.latency_ms / speed,
        })
        .collect();
    // Scaling keeps every invariant `NetworkTrace::new` checks.
    NetworkTrace::new(periods).unwrap_or_else(|_| trace.clone())
}

/// Per-session pacing state.
#[derive(Debug, Clone)]
pub struct Shaper {
    trace: NetworkTrace,
    origin: Instant,
    busy_until: Instant,
}

impl Shaper {
    /// Trace time 0 is `origin` (the session's start).
    pub fn new(trace: NetworkTrace, origin: Instant) -> Self {
        Self { trace, origin, busy_until: origin }
    }

    fn offset_ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
    }

    /// The request latency of the period in force at `now`.
    pub fn latency(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(period_at(&self.trace, self.offset_ms(now)).latency_ms / 1000.0)
    }

    /// `bytes` arrived at `now`: the instant before which the reader must not go on.
    pub fn pace(&mut self, now: Instant, bytes: usize) -> Instant {
        let start = now.max(self.busy_until);
        let ms = transfer_ms(&self.trace, self.offset_ms(start), bytes as f64 * 8.0);
        // Cap a single wait so a pathological trace cannot park a session forever.
        let wait = Duration::from_secs_f64((ms / 1000.0).min(3600.0));
        self.busy_until = start + wait;
        self.busy_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scaling_compresses_the_clock() {
        let t = NetworkTrace::new(vec![
            NetworkPeriod { duration_ms: 1000, bandwidth_kbps: 500.0, latency_ms: 80.0 },
            NetworkPeriod { duration_ms: 3000, bandwidth_kbps: 2000.0, latency_ms: 40.0 },
        ])
        .unwrap();
        let fast = time_scaled(&t, 4.0);
        assert_eq!(fast.duration_ms(), 1000);
        assert_eq!(fast.periods()[1].bandwidth_kbps, 8000.0);
        assert_eq!(fast.periods()[0].latency_ms, 20.0);
        // The same bits take a quarter of the time.
        let slow_ms = transfer_ms(&t, 0.0, 1_500_000.0);
        let fast_ms = transfer_ms(&fast, 0.0, 1_500_000.0);
        assert!((slow_ms / 4.0 - fast_ms).abs() < 1e-6, "{slow_ms} {fast_ms}");
        assert_eq!(time_scaled(&t, 1.0), t);
    }

    fn trace() -> NetworkTrace {
        // 1 s at 800 kbps (100 kB/s), 1 s at 400 kbps, looping.
        NetworkTrace::new(vec![
            NetworkPeriod { duration_ms: 1000, bandwidth_kbps: 800.0, latency_ms: 20.0 },
            NetworkPeriod { duration_ms: 1000, bandwidth_kbps: 400.0, latency_ms: 40.0 },
        ])
        .unwrap()
    }

    #[test]
    fn transfer_time_follows_the_trace() {
        let t = trace();
        assert!((transfer_ms(&t, 0.0, 400_000.0) - 500.0).abs() < 1e-9);
        // 800 kbit from 0.5 s: 400 kbit by 1 s, then 400 kbit at 400 kbps.
        assert!((transfer_ms(&t, 500.0, 800_000.0) - 1500.0).abs() < 1e-9);
        // Looping: 2.25 s in is the first period again.
        assert_eq!(period_at(&t, 2250.0).bandwidth_kbps, 800.0);
    }

    #[test]
    fn pacing_never_exceeds_the_rate() {
        let t0 = Instant::now();
        let mut s = Shaper::new(trace(), t0);
        assert_eq!(s.latency(t0), Duration::from_millis(20));
        // Ten 10 kB chunks arriving at once: the last may be read after 1 s.
        let mut until = t0;
        for _ in 0..10 {
            until = s.pace(t0, 10_000);
        }
        let waited = until.duration_since(t0).as_secs_f64();
        assert!((waited - 1.0).abs() < 1e-6, "{waited}");
    }

    #[test]
    fn idle_time_earns_no_credit() {
        let t0 = Instant::now();
        let mut s = Shaper::new(trace(), t0);
        let later = t0 + Duration::from_secs(10);
        // At 10 s the trace is in its 800 kbps period again: 50 kB take 0.5 s from `later`.
        let until = s.pace(later, 50_000);
        assert!((until.duration_since(later).as_secs_f64() - 0.5).abs() < 1e-6);
    }
}
