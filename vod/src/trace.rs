//! Network traces and movie descriptions for ABR simulation (formats in `shared/traces/README.md`).
//!
//! Units follow the Sabre simulator these files come from: time in
//! milliseconds, sizes in bits, rates in kbit/s (= bits/ms), so a size divided
//! by a rate is a time without conversion.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::catalog::{Catalog, MediaKind};

/// Request latency given to periods of formats that carry none (mahimahi,
/// Pensieve logs): Pensieve's simulator uses an 80 ms round trip.
pub const DEFAULT_LATENCY_MS: f64 = 80.0;

/// Bin width of mahimahi traces turned into periods.
pub const MAHIMAHI_BIN_MS: u64 = 1000;

/// Bits of one mahimahi delivery opportunity (one 1500-byte packet).
const MAHIMAHI_PACKET_BITS: f64 = 1500.0 * 8.0;

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
    #[error("line {line}, field {field}: {message}")]
    Line { line: usize, field: &'static str, message: String },
    #[error("catalog: {0}")]
    Catalog(String),
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

    /// Parse a mahimahi packet-delivery trace: one line per 1500-byte delivery
    /// opportunity, its time in ms (non-decreasing; the trace loops after the
    /// last). Deliveries are counted in bins of `MAHIMAHI_BIN_MS`, each a period.
    pub fn from_mahimahi(text: &str) -> Result<Self, TraceError> {
        let mut times = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| TraceError::Line { line: i + 1, field: "timestamp_ms", message };
            let t: u64 = line.parse().map_err(|_| bad(format!("expected a whole number of ms, got {line:?}")))?;
            if times.last().is_some_and(|&prev| t < prev) {
                return Err(bad(format!("{t} is earlier than the line before")));
            }
            times.push(t);
        }
        let Some(&last) = times.last() else { return Err(TraceError::EmptyTrace) };
        let bins = (last / MAHIMAHI_BIN_MS + 1) as usize;
        let mut counts = vec![0u64; bins];
        for t in times {
            counts[(t / MAHIMAHI_BIN_MS) as usize] += 1;
        }
        let periods = counts
            .into_iter()
            .map(|n| NetworkPeriod {
                duration_ms: MAHIMAHI_BIN_MS,
                bandwidth_kbps: n as f64 * MAHIMAHI_PACKET_BITS / MAHIMAHI_BIN_MS as f64,
                latency_ms: DEFAULT_LATENCY_MS,
            })
            .collect();
        Self::new(periods)
    }

    /// Parse a Pensieve-style log: per line `seconds Mbit/s` (whitespace
    /// separated, times ascending); each rate holds until the next line's time,
    /// the last one for the median gap.
    pub fn from_pensieve(text: &str) -> Result<Self, TraceError> {
        let mut rows: Vec<(f64, f64)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut field = |name: &'static str| -> Result<f64, TraceError> {
                let bad = |message: String| TraceError::Line { line: i + 1, field: name, message };
                let f = fields.next().ok_or_else(|| bad("missing".into()))?;
                let v: f64 = f.parse().map_err(|_| bad(format!("not a number: {f:?}")))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!("must be a finite number >= 0, got {v}")));
                }
                Ok(v)
            };
            let t = field("seconds")?;
            let mbps = field("mbit_per_s")?;
            if let Some(extra) = fields.next() {
                return Err(TraceError::Line { line: i + 1, field: "end", message: format!("unexpected {extra:?}") });
            }
            if rows.last().is_some_and(|&(prev, _)| t <= prev) {
                return Err(TraceError::Line {
                    line: i + 1,
                    field: "seconds",
                    message: format!("{t} does not come after the line before"),
                });
            }
            rows.push((t, mbps));
        }
        if rows.is_empty() {
            return Err(TraceError::EmptyTrace);
        }
        let mut gaps: Vec<f64> = rows.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_by(f64::total_cmp);
        let last_gap = gaps.get(gaps.len() / 2).copied().unwrap_or(1.0);
        let mut periods = Vec::with_capacity(rows.len());
        for (k, &(t, mbps)) in rows.iter().enumerate() {
            let end = rows.get(k + 1).map_or(t + last_gap, |r| r.0);
            // Sub-millisecond steps are merged into the next period.
            let duration_ms = ((end * 1000.0).round() - (t * 1000.0).round()) as u64;
            if duration_ms > 0 {
                periods.push(NetworkPeriod {
                    duration_ms,
                    bandwidth_kbps: mbps * 1000.0,
                    latency_ms: DEFAULT_LATENCY_MS,
                });
            }
        }
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

    /// The video renditions of one of our titles: the ladder from their advertised
    /// bandwidths, every segment's real size. Segments are taken as the nominal
    /// duration long (the encoder cuts them at that cadence).
    pub fn from_catalog(catalog: &Catalog) -> Result<Self, TraceError> {
        let mut video: Vec<_> = catalog.renditions.iter().filter(|r| r.kind == MediaKind::Video).collect();
        video.sort_by_key(|r| r.bandwidth_bps);
        let Some(first) = video.first() else { return Err(TraceError::Catalog("no video renditions".into())) };
        let count = first.segments.len();
        if let Some(r) = video.iter().find(|r| r.segments.len() != count) {
            return Err(TraceError::Catalog(format!(
                "rendition {} has {} segments, {} has {count}",
                r.id,
                r.segments.len(),
                first.id
            )));
        }
        let movie = Movie {
            segment_duration_ms: catalog.segment_duration_ms,
            bitrates_kbps: video.iter().map(|r| r.bandwidth_bps as f64 / 1000.0).collect(),
            segment_sizes_bits: (0..count).map(|i| video.iter().map(|r| r.segments[i].bytes * 8).collect()).collect(),
        };
        movie.validate()?;
        Ok(movie)
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

    #[test]
    fn parses_mahimahi_delivery_logs_into_one_second_periods() {
        // 3 packets in the first second, 1 in the second, none in the third, 2 in the fourth.
        let t = NetworkTrace::from_mahimahi("0\n10\n999\n1500\n\n3000\n3001\n").unwrap();
        let bw: Vec<f64> = t.periods().iter().map(|p| p.bandwidth_kbps).collect();
        assert_eq!(bw, vec![36.0, 12.0, 0.0, 24.0]);
        assert!(t.periods().iter().all(|p| p.duration_ms == 1000 && p.latency_ms == DEFAULT_LATENCY_MS));
    }

    #[test]
    fn mahimahi_errors_name_the_line() {
        let e = NetworkTrace::from_mahimahi("5\n7\nx7\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3, field timestamp_ms: expected a whole number of ms, got \"x7\"");
        let e = NetworkTrace::from_mahimahi("5\n7\n6\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 3, .. }), "{e}");
        assert_eq!(NetworkTrace::from_mahimahi("\n"), Err(TraceError::EmptyTrace));
    }

    #[test]
    fn parses_pensieve_logs() {
        let t = NetworkTrace::from_pensieve("0.0 1.5\n1.0\t0.5\n2.5 2\n").unwrap();
        let p = t.periods();
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].duration_ms, p[0].bandwidth_kbps), (1000, 1500.0));
        assert_eq!((p[1].duration_ms, p[1].bandwidth_kbps), (1500, 500.0));
        // The last rate lasts the median gap (1.0 and 1.5 → 1.5).
        assert_eq!((p[2].duration_ms, p[2].bandwidth_kbps), (1500, 2000.0));
    }

    #[test]
    fn pensieve_errors_name_line_and_field() {
        let e = NetworkTrace::from_pensieve("0 1\n1 fast\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2, field mbit_per_s: not a number: \"fast\"");
        let e = NetworkTrace::from_pensieve("0 1\n1\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 2, field: "mbit_per_s", .. }), "{e}");
        let e = NetworkTrace::from_pensieve("0 1\n0 2\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 2, field: "seconds", .. }), "{e}");
        let e = NetworkTrace::from_pensieve("0 1 2\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 1, field: "end", .. }), "{e}");
        let e = NetworkTrace::from_pensieve("0 -1\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 1, field: "mbit_per_s", .. }), "{e}");
    }

    #[test]
    fn movie_from_a_catalog_uses_video_segment_bytes() {
        let json = r#"{"title": "t1", "segment_duration_ms": 2000, "duration_ms": 4000, "renditions": [
            {"id": "v720", "kind": "video", "codecs": "avc1", "bandwidth_bps": 3000000, "average_bandwidth_bps": 2500000,
             "width": 1280, "height": 720, "frame_rate": 25.0, "sample_rate": null, "channels": null, "timescale": 1000,
             "init_bytes": 900, "segments": [{"start": 0, "duration": 2000, "bytes": 600000}, {"start": 2000, "duration": 2000, "bytes": 700000}]},
            {"id": "a128", "kind": "audio", "codecs": "mp4a", "bandwidth_bps": 128000, "average_bandwidth_bps": 128000,
             "width": null, "height": null, "frame_rate": null, "sample_rate": 48000, "channels": 2, "timescale": 48000,
             "init_bytes": 700, "segments": [{"start": 0, "duration": 96000, "bytes": 32000}, {"start": 96000, "duration": 96000, "bytes": 32000}]},
            {"id": "v360", "kind": "video", "codecs": "avc1", "bandwidth_bps": 800000, "average_bandwidth_bps": 700000,
             "width": 640, "height": 360, "frame_rate": 25.0, "sample_rate": null, "channels": null, "timescale": 1000,
             "init_bytes": 800, "segments": [{"start": 0, "duration": 2000, "bytes": 150000}, {"start": 2000, "duration": 2000, "bytes": 190000}]}
        ]}"#;
        let catalog: Catalog = serde_json::from_str(json).unwrap();
        let m = Movie::from_catalog(&catalog).unwrap();
        assert_eq!(m.bitrates_kbps, vec![800.0, 3000.0]);
        assert_eq!(m.segment_sizes_bits, vec![vec![1_200_000, 4_800_000], vec![1_520_000, 5_600_000]]);
        assert_eq!(m.segment_duration_ms, 2000);
        let mut short = catalog.clone();
        short.renditions[0].segments.pop();
        assert!(Movie::from_catalog(&short).unwrap_err().to_string().contains("segments"));
    }
}
