//! Network traces and movie descriptions for ABR simulation (formats in `shared/traces/README.md`).
//!
//! Units follow the Sabre simulator these files come from: time in
//! milliseconds, sizes in bits, rates in kbit/s (= bits/ms), so a size divided
//! by a rate is a time without conversion.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a trace or movie description was refused.
#[derive(Debug, Error, PartialEq)]
pub enum TraceError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("network trace has no periods")]
    EmptyTrace,
    #[error("network period {index}: duration_ms must be > 0")]
    ZeroDuration { index: usize },
    #[error("network period {index}: {field} must be a finite number >= 0, got {value}")]
    BadPeriodValue { index: usize, field: &'static str, value: f64 },
    #[error("network trace never has any bandwidth: a download could not finish")]
    NoBandwidth,
    #[error("movie: segment_duration_ms must be > 0")]
    ZeroSegmentDuration,
    #[error("movie has no bitrates")]
    NoBitrates,
    #[error("movie: bitrate {index} must be a finite number > 0, got {value}")]
    BadBitrate { index: usize, value: f64 },
    #[error("movie: bitrates_kbps must be strictly ascending ({prev} then {next} at index {index})")]
    UnsortedBitrates { index: usize, prev: f64, next: f64 },
    #[error("movie has no segments")]
    NoSegments,
    #[error("movie: segment {index} has {got} sizes for {want} bitrates")]
    SizeCount { index: usize, got: usize, want: usize },
    #[error("movie: segment {index} rung {rung} has size 0")]
    ZeroSize { index: usize, rung: usize },
}

/// One stretch of a network trace with constant bandwidth and latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPeriod {
    pub duration_ms: u64,
    pub bandwidth_kbps: f64,
    pub latency_ms: f64,
}

/// A validated network trace: non-empty, every period lasts, some bandwidth somewhere.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct NetworkTrace {
    periods: Vec<NetworkPeriod>,
}

impl NetworkTrace {
    /// Validate periods into a trace.
    pub fn new(periods: Vec<NetworkPeriod>) -> Result<Self, TraceError> {
        if periods.is_empty() {
            return Err(TraceError::EmptyTrace);
        }
        for (index, p) in periods.iter().enumerate() {
            if p.duration_ms == 0 {
                return Err(TraceError::ZeroDuration { index });
            }
            for (field, value) in [("bandwidth_kbps", p.bandwidth_kbps), ("latency_ms", p.latency_ms)] {
                if !value.is_finite() || value < 0.0 {
                    return Err(TraceError::BadPeriodValue { index, field, value });
                }
            }
        }
        // A looping trace with no bandwidth anywhere would stall a download forever.
        if periods.iter().all(|p| p.bandwidth_kbps <= 0.0) {
            return Err(TraceError::NoBandwidth);
        }
        Ok(Self { periods })
    }

    /// Parse and validate the JSON list-of-periods format.
    pub fn from_json(text: &str) -> Result<Self, TraceError> {
        let periods: Vec<NetworkPeriod> = serde_json::from_str(text).map_err(|e| TraceError::Json(e.to_string()))?;
        Self::new(periods)
    }

    /// The periods, in play order.
    pub fn periods(&self) -> &[NetworkPeriod] {
        &self.periods
    }

    /// Length of one pass over the trace.
    pub fn duration_ms(&self) -> u64 {
        self.periods.iter().map(|p| p.duration_ms).sum()
    }

    /// Mean bandwidth over one pass, weighted by duration.
    pub fn mean_bandwidth_kbps(&self) -> f64 {
        let weighted: f64 = self.periods.iter().map(|p| p.bandwidth_kbps * p.duration_ms as f64).sum();
        weighted / self.duration_ms() as f64
    }
}

impl<'de> Deserialize<'de> for NetworkTrace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let periods = Vec::<NetworkPeriod>::deserialize(d)?;
        Self::new(periods).map_err(serde::de::Error::custom)
    }
}

/// A title as the simulator sees it: a bitrate ladder and every segment's size per rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Movie {
    pub segment_duration_ms: u64,
    /// Ladder, lowest first.
    pub bitrates_kbps: Vec<f64>,
    /// `segment_sizes_bits[segment][rung]`.
    pub segment_sizes_bits: Vec<Vec<u64>>,
}

impl Movie {
    /// Parse and validate the movie JSON format.
    pub fn from_json(text: &str) -> Result<Self, TraceError> {
        let movie: Movie = serde_json::from_str(text).map_err(|e| TraceError::Json(e.to_string()))?;
        movie.validate()?;
        Ok(movie)
    }

    /// Check the invariants the simulator relies on.
    pub fn validate(&self) -> Result<(), TraceError> {
        if self.segment_duration_ms == 0 {
            return Err(TraceError::ZeroSegmentDuration);
        }
        if self.bitrates_kbps.is_empty() {
            return Err(TraceError::NoBitrates);
        }
        for (index, &value) in self.bitrates_kbps.iter().enumerate() {
            if !value.is_finite() || value <= 0.0 {
                return Err(TraceError::BadBitrate { index, value });
            }
        }
        for (i, w) in self.bitrates_kbps.windows(2).enumerate() {
            if w[1] <= w[0] {
                return Err(TraceError::UnsortedBitrates { index: i + 1, prev: w[0], next: w[1] });
            }
        }
        if self.segment_sizes_bits.is_empty() {
            return Err(TraceError::NoSegments);
        }
        let want = self.bitrates_kbps.len();
        for (index, sizes) in self.segment_sizes_bits.iter().enumerate() {
            if sizes.len() != want {
                return Err(TraceError::SizeCount { index, got: sizes.len(), want });
            }
            if let Some(rung) = sizes.iter().position(|&s| s == 0) {
                return Err(TraceError::ZeroSize { index, rung });
            }
        }
        Ok(())
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segment_sizes_bits.len()
    }

    /// Content duration of the whole movie.
    pub fn duration_ms(&self) -> u64 {
        self.segment_duration_ms * self.segment_count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(duration_ms: u64, bandwidth_kbps: f64) -> NetworkPeriod {
        NetworkPeriod { duration_ms, bandwidth_kbps, latency_ms: 50.0 }
    }

    #[test]
    fn parses_the_shared_trace_format() {
        let t = NetworkTrace::from_json(
            r#"[{"duration_ms": 1000, "bandwidth_kbps": 1500, "latency_ms": 100},
                {"duration_ms": 3000, "bandwidth_kbps": 500.5, "latency_ms": 75}]"#,
        )
        .unwrap();
        assert_eq!(t.periods().len(), 2);
        assert_eq!(t.duration_ms(), 4000);
        assert_eq!(t.periods()[1].bandwidth_kbps, 500.5);
        assert!((t.mean_bandwidth_kbps() - (1500.0 + 3.0 * 500.5) / 4.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_traces() {
        assert_eq!(NetworkTrace::from_json("[]"), Err(TraceError::EmptyTrace));
        assert_eq!(
            NetworkTrace::new(vec![period(1000, 10.0), period(0, 5.0)]),
            Err(TraceError::ZeroDuration { index: 1 })
        );
        assert!(matches!(
            NetworkTrace::new(vec![period(1000, -1.0)]),
            Err(TraceError::BadPeriodValue { index: 0, field: "bandwidth_kbps", .. })
        ));
        assert_eq!(NetworkTrace::new(vec![period(1000, 0.0)]), Err(TraceError::NoBandwidth));
        assert!(matches!(NetworkTrace::from_json("{not json"), Err(TraceError::Json(_))));
        assert!(matches!(
            NetworkTrace::from_json(r#"[{"duration_ms": 1, "bandwidth_kbps": 1, "latency_ms": 1, "x": 2}]"#),
            Err(TraceError::Json(_))
        ));
    }

    #[test]
    fn trace_deserialize_validates() {
        let bad: Result<NetworkTrace, _> = serde_json::from_str("[]");
        assert!(bad.is_err());
        let good: NetworkTrace =
            serde_json::from_str(r#"[{"duration_ms": 5, "bandwidth_kbps": 1, "latency_ms": 0}]"#).unwrap();
        assert_eq!(good.duration_ms(), 5);
    }

    fn movie() -> Movie {
        Movie {
            segment_duration_ms: 3000,
            bitrates_kbps: vec![200.0, 400.0],
            segment_sizes_bits: vec![vec![600_000, 1_200_000], vec![500_000, 1_100_000]],
        }
    }

    #[test]
    fn movie_round_trips_and_validates() {
        let m = movie();
        let text = serde_json::to_string(&m).unwrap();
        let back = Movie::from_json(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.segment_count(), 2);
        assert_eq!(back.duration_ms(), 6000);
    }

    #[test]
    fn rejects_bad_movies() {
        let mut m = movie();
        m.bitrates_kbps = vec![400.0, 200.0];
        assert!(matches!(m.validate(), Err(TraceError::UnsortedBitrates { index: 1, .. })));
        let mut m = movie();
        m.bitrates_kbps = vec![200.0, 200.0];
        assert!(matches!(m.validate(), Err(TraceError::UnsortedBitrates { .. })));
        let mut m = movie();
        m.segment_sizes_bits[1].pop();
        assert_eq!(m.validate(), Err(TraceError::SizeCount { index: 1, got: 1, want: 2 }));
        let mut m = movie();
        m.segment_sizes_bits.clear();
        assert_eq!(m.validate(), Err(TraceError::NoSegments));
        let mut m = movie();
        m.segment_duration_ms = 0;
        assert_eq!(m.validate(), Err(TraceError::ZeroSegmentDuration));
        let mut m = movie();
        m.bitrates_kbps.clear();
        assert_eq!(m.validate(), Err(TraceError::NoBitrates));
        let mut m = movie();
        m.segment_sizes_bits[0][1] = 0;
        assert_eq!(m.validate(), Err(TraceError::ZeroSize { index: 0, rung: 1 }));
        assert!(matches!(Movie::from_json(r#"{"segment_duration_ms": 3000}"#), Err(TraceError::Json(_))));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = TraceError::UnsortedBitrates { index: 1, prev: 400.0, next: 200.0 }.to_string();
        assert!(msg.contains("ascending"), "{msg}");
        assert!(TraceError::ZeroDuration { index: 3 }.to_string().contains("period 3"));
    }
}
