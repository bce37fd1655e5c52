//! Throughput and latency estimation from past downloads (Sabre's default EWMA).

use serde::Serialize;

/// A conservative throughput and latency estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThroughputEstimate {
    /// Expected download rate, kbit/s.
    pub throughput_kbps: f64,
    /// Expected time to first byte of a request.
    pub latency_ms: f64,
}

/// Two exponentially weighted moving averages (fast and slow); the estimate
/// takes the lower throughput and the higher latency, so it drops quickly and
/// recovers slowly. Throughput is weighted by download time, latency per download.
#[derive(Debug, Clone)]
pub struct Ewma {
    half_life_ms: [f64; 2],
    latency_half_life: [f64; 2],
    throughput: [f64; 2],
    latency: [f64; 2],
    weight_throughput: f64,
    weight_latency: f64,
    current: Option<ThroughputEstimate>,
}

impl Ewma {
    /// Sabre's defaults: half-lives of 3 s and 8 s.
    pub const DEFAULT_HALF_LIVES_MS: [f64; 2] = [3000.0, 8000.0];

    /// An empty estimator; latency half-lives are counted in segments of `segment_duration_ms`.
    pub fn new(segment_duration_ms: f64) -> Self {
        Self::with_half_lives(Self::DEFAULT_HALF_LIVES_MS, segment_duration_ms)
    }

    /// An empty estimator with explicit half-lives.
    pub fn with_half_lives(half_life_ms: [f64; 2], segment_duration_ms: f64) -> Self {
        Self {
            half_life_ms,
            latency_half_life: half_life_ms.map(|h| h / segment_duration_ms),
            throughput: [0.0; 2],
            latency: [0.0; 2],
            weight_throughput: 0.0,
            weight_latency: 0.0,
            current: None,
        }
    }

    /// Record one download: time spent receiving bits, its throughput, its latency.
    pub fn push(&mut self, download_ms: f64, throughput_kbps: f64, latency_ms: f64) {
        if !(download_ms > 0.0 && throughput_kbps.is_finite() && latency_ms.is_finite()) {
            return;
        }
        for i in 0..2 {
            let alpha = 0.5f64.powf(download_ms / self.half_life_ms[i]);
            self.throughput[i] = alpha * self.throughput[i] + (1.0 - alpha) * throughput_kbps;
            let alpha = 0.5f64.powf(1.0 / self.latency_half_life[i]);
            self.latency[i] = alpha * self.latency[i] + (1.0 - alpha) * latency_ms;
        }
        self.weight_throughput += download_ms;
        self.weight_latency += 1.0;
        let mut tput: Option<f64> = None;
        let mut lat: Option<f64> = None;
        for i in 0..2 {
            // Divide out the weight still held by the zero the averages started from.
            let zero_factor = 1.0 - 0.5f64.powf(self.weight_throughput / self.half_life_ms[i]);
            let t = self.throughput[i] / zero_factor;
            tput = Some(tput.map_or(t, |x| x.min(t)));
            let zero_factor = 1.0 - 0.5f64.powf(self.weight_latency / self.latency_half_life[i]);
            let l = self.latency[i] / zero_factor;
            lat = Some(lat.map_or(l, |x| x.max(l)));
        }
        if let (Some(throughput_kbps), Some(latency_ms)) = (tput, lat) {
            self.current = Some(ThroughputEstimate { throughput_kbps, latency_ms });
        }
    }

    /// The estimate, once at least one download was recorded.
    pub fn estimate(&self) -> Option<ThroughputEstimate> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_is_the_estimate() {
        let mut e = Ewma::new(3000.0);
        assert_eq!(e.estimate(), None);
        e.push(1000.0, 2000.0, 80.0);
        let est = e.estimate().unwrap();
        assert!((est.throughput_kbps - 2000.0).abs() < 1e-9);
        assert!((est.latency_ms - 80.0).abs() < 1e-9);
    }

    #[test]
    fn drops_fast_and_recovers_slowly() {
        let mut e = Ewma::new(3000.0);
        for _ in 0..20 {
            e.push(1000.0, 4000.0, 50.0);
        }
        e.push(3000.0, 1000.0, 50.0);
        let after_drop = e.estimate().unwrap().throughput_kbps;
        // The 3 s half-life moved halfway in 3 s; the min picks it.
        assert!((after_drop - 2500.0).abs() < 20.0, "{after_drop}");
        e.push(3000.0, 4000.0, 50.0);
        let after_rise = e.estimate().unwrap().throughput_kbps;
        // The slow 8 s average holds the estimate back on the way up.
        assert!(after_rise < 3500.0, "{after_rise}");
    }

    #[test]
    fn ignores_degenerate_samples() {
        let mut e = Ewma::new(3000.0);
        e.push(0.0, f64::INFINITY, 10.0);
        assert_eq!(e.estimate(), None);
    }
}
