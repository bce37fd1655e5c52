//! Adaptive bitrate rules behind one interface, shared by the simulator and the live player.
//!
//! The rules follow the Sabre simulator (Spiteri et al., MMSys 2018) closely
//! enough that simulated figures compare with its published ones. Units as in
//! Sabre: time in ms, sizes in bits, rates in kbit/s (= bits/ms).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::estimate::ThroughputEstimate;

mod bba;
mod bolae;
mod dynamic;
pub(crate) mod mpc;
mod ours;
mod planned;
#[cfg(test)]
mod scenario_tests;

pub use bba::Bba;
pub use bolae::BolaE;
pub use dynamic::{Dynamic, DynamicDash};
pub use mpc::RobustMpc;
pub use ours::{Ours, OursParams, Predictor};
pub use planned::Planned;

/// What an ABR rule sees when it picks the next segment's rung.
#[derive(Debug, Clone, Copy)]
pub struct AbrContext<'a> {
    /// Index of the segment about to be fetched (0-based).
    pub segment_index: usize,
    /// Number of segments in the title.
    pub segment_count: usize,
    /// Nominal segment duration.
    pub segment_duration_ms: f64,
    /// Media buffered ahead of the playhead.
    pub buffer_level_ms: f64,
    /// The ladder, lowest first.
    pub bitrates_kbps: &'a [f64],
    /// Throughput and latency estimate; `None` before the first download.
    pub estimate: Option<ThroughputEstimate>,
    /// Sizes of the next segment per rung, when the player knows them.
    pub next_sizes_bits: Option<&'a [u64]>,
    /// Every segment's sizes per rung (`[segment][rung]`), when the player knows them (lookahead rules use it).
    pub all_sizes_bits: Option<&'a [Vec<u64>]>,
}

impl AbrContext<'_> {
    /// Size of `segment` at `rung`: the real one when known, else nominal bitrate × duration.
    pub fn size_bits(&self, segment: usize, rung: usize) -> f64 {
        match self.all_sizes_bits.and_then(|s| s.get(segment)) {
            Some(sizes) => sizes[rung] as f64,
            None => self.bitrates_kbps[rung] * self.segment_duration_ms,
        }
    }
}

/// A finished (or abandoned) download, reported to the rule after the buffer was updated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownloadReport {
    /// Segment index.
    pub segment_index: usize,
    /// Rung that was downloaded.
    pub rung: usize,
    /// Full size of the segment.
    pub size_bits: f64,
    /// Bits received.
    pub downloaded_bits: f64,
    /// Total time, latency included.
    pub time_ms: f64,
    /// Latency part of `time_ms`.
    pub time_to_first_bit_ms: f64,
    /// Set when the download was abandoned for this rung.
    pub abandoned_to: Option<usize>,
    /// Buffer level after the download (the segment counted unless abandoned).
    pub buffer_level_ms: f64,
}

/// The rung to fetch next and how long to wait before fetching it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Index into the ladder.
    pub rung: usize,
    /// Idle time before the request starts.
    pub delay_ms: f64,
}

/// How far a download in flight has come, for abandonment checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownloadProgress {
    /// Rung being downloaded.
    pub rung: usize,
    /// Full size of the segment.
    pub size_bits: f64,
    /// Bits received so far.
    pub downloaded_bits: f64,
    /// Time since the request started, latency included.
    pub elapsed_ms: f64,
    /// Latency part of `elapsed_ms`.
    pub time_to_first_bit_ms: f64,
}

/// One ABR rule. Rules may keep state between segments (Sabre's do).
pub trait Abr: Send {
    /// Short name, as given on the command line.
    fn name(&self) -> &'static str;
    /// Pick the next segment's rung.
    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision;
    /// Called while a download is in flight: `Some(rung)` abandons it for a lower rung.
    fn check_abandon(
        &mut self,
        _ctx: &AbrContext<'_>,
        _progress: &DownloadProgress,
        _buffer_level_ms: f64,
    ) -> Option<usize> {
        None
    }
    /// The player idled `delay_ms` because the buffer was full (Sabre's `report_delay`).
    fn report_delay(&mut self, _delay_ms: f64) {}
    /// A download finished or was abandoned (Sabre's `report_download`; also called for the first segment).
    fn report_download(&mut self, _report: &DownloadReport) {}
}

/// The ABR rules this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AbrKind {
    /// Sabre's `ThroughputRule`: safety factor 0.9 on an EWMA estimate, insufficient-buffer rule.
    Throughput,
    /// Sabre's `bola` (BOLA with the throughput cap on upswitches).
    Bola,
    /// Sabre's `bolae`: BOLA-E (placeholder buffer, insufficient-buffer rule, abandonment).
    Bolae,
    /// Sabre's `dynamic`: throughput rule below 10 s of buffer, BOLA above.
    Dynamic,
    /// Sabre's `dynamicdash`: dash.js DYNAMIC (throughput below 5 s, BOLA-E above 10 s).
    Dynamicdash,
    /// BBA-0 (Huang et al., SIGCOMM 2014): a rate map over the buffer with a reservoir and a cushion.
    Bba,
    /// RobustMPC (Yin et al., SIGCOMM 2015) as in Pensieve's `mpc.py`: 5-segment horizon, linear QoE.
    Robustmpc,
    /// Offline optimum: dynamic programming over the known trace (simulation only).
    Optimal,
    /// Ours: model-predictive control on the player's own model (see `abr::ours`).
    Ours,
}

/// Tuning shared by the rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbrConfig {
    /// Maximum buffer the player keeps (BOLA sizes its thresholds from it).
    pub max_buffer_ms: f64,
    /// BOLA's gamma·p product (Sabre's `-gp`, default 5).
    pub gamma_p: f64,
}

impl Default for AbrConfig {
    fn default() -> Self {
        Self { max_buffer_ms: 25_000.0, gamma_p: 5.0 }
    }
}

/// Rebuffer penalty of the linear QoE (MPC, Pensieve): 4.3 per second of stall, bitrates in Mbit/s.
pub const QOE_REBUFFER_PENALTY: f64 = 4.3;

impl AbrKind {
    /// Every rule, for help texts.
    pub const ALL: [AbrKind; 9] = [
        AbrKind::Throughput,
        AbrKind::Bola,
        AbrKind::Bolae,
        AbrKind::Dynamic,
        AbrKind::Dynamicdash,
        AbrKind::Bba,
        AbrKind::Robustmpc,
        AbrKind::Optimal,
        AbrKind::Ours,
    ];

    /// True for rules that need the whole trace in advance (simulation only).
    pub fn is_offline(self) -> bool {
        self == AbrKind::Optimal
    }

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            AbrKind::Throughput => "throughput",
            AbrKind::Bola => "bola",
            AbrKind::Bolae => "bolae",
            AbrKind::Dynamic => "dynamic",
            AbrKind::Dynamicdash => "dynamicdash",
            AbrKind::Bba => "bba",
            AbrKind::Robustmpc => "robustmpc",
            AbrKind::Optimal => "optimal",
            AbrKind::Ours => "ours",
        }
    }

    /// A fresh rule instance for one session. `optimal` needs a plan made from
    /// the trace (`crate::optimal`); built here without one it plays the lowest rung.
    pub fn build(self, config: &AbrConfig) -> Box<dyn Abr> {
        match self {
            AbrKind::Throughput => Box::new(ThroughputRule::new()),
            AbrKind::Bola => Box::new(Bola::new(config)),
            AbrKind::Bolae => Box::new(BolaE::new(config)),
            AbrKind::Dynamic => Box::new(Dynamic::new(config)),
            AbrKind::Dynamicdash => Box::new(DynamicDash::new(config)),
            AbrKind::Bba => Box::new(Bba::new(config)),
            AbrKind::Robustmpc => Box::new(RobustMpc::new()),
            AbrKind::Optimal => Box::new(Planned::new(Vec::new())),
            AbrKind::Ours => Box::new(Ours::new(config)),
        }
    }
}

impl fmt::Display for AbrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ABR name nobody implements.
#[derive(Debug, thiserror::Error)]
#[error("unknown ABR {0:?} (known: throughput, bola, bolae, dynamic, dynamicdash, bba, robustmpc, optimal, ours)")]
pub struct UnknownAbr(pub String);

impl FromStr for AbrKind {
    type Err = UnknownAbr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AbrKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownAbr(s.to_owned()))
    }
}

/// Highest rung whose segment, started now, arrives within one segment duration
/// at `throughput_kbps` after the estimated latency (Sabre's `quality_from_throughput`).
pub fn rung_for_throughput(ctx: &AbrContext<'_>, throughput_kbps: f64) -> usize {
    let latency = ctx.estimate.map_or(0.0, |e| e.latency_ms);
    let p = ctx.segment_duration_ms;
    if throughput_kbps <= 0.0 || !throughput_kbps.is_finite() {
        return 0;
    }
    let mut rung = 0;
    while rung + 1 < ctx.bitrates_kbps.len() && latency + p * ctx.bitrates_kbps[rung + 1] / throughput_kbps <= p {
        rung += 1;
    }
    rung
}

/// Sabre's `ThroughputRule`.
#[derive(Debug, Clone)]
pub struct ThroughputRule {
    ibr_safety: f64,
}

impl ThroughputRule {
    const SAFETY_FACTOR: f64 = 0.9;
    const LOW_BUFFER_SAFETY_FACTOR: f64 = 0.5;
    const LOW_BUFFER_SAFETY_FACTOR_INIT: f64 = 0.9;
    const ABANDON_MULTIPLIER: f64 = 1.8;
    const ABANDON_GRACE_MS: f64 = 500.0;

    /// A rule in its initial state.
    pub fn new() -> Self {
        Self { ibr_safety: Self::LOW_BUFFER_SAFETY_FACTOR_INIT }
    }
}

impl Default for ThroughputRule {
    fn default() -> Self {
        Self::new()
    }
}

impl Abr for ThroughputRule {
    fn name(&self) -> &'static str {
        "throughput"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        // Sabre's first segment is always the lowest rung: nothing is known yet.
        let Some(est) = ctx.estimate else { return Decision { rung: 0, delay_ms: 0.0 } };
        let mut rung = rung_for_throughput(ctx, est.throughput_kbps * Self::SAFETY_FACTOR);
        // Insufficient-buffer rule: do not start a download the buffer cannot cover,
        // with a safety margin that tightens from 0.9 to 0.5 over the first segments.
        let safe_size = self.ibr_safety * (ctx.buffer_level_ms - est.latency_ms) * est.throughput_kbps;
        self.ibr_safety = (self.ibr_safety * Self::LOW_BUFFER_SAFETY_FACTOR_INIT).max(Self::LOW_BUFFER_SAFETY_FACTOR);
        for q in 0..rung {
            if ctx.bitrates_kbps[q + 1] * ctx.segment_duration_ms > safe_size {
                rung = q;
                break;
            }
        }
        Decision { rung, delay_ms: 0.0 }
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, p: &DownloadProgress, _buffer_level_ms: f64) -> Option<usize> {
        let dl_time = p.elapsed_ms - p.time_to_first_bit_ms;
        if p.elapsed_ms < Self::ABANDON_GRACE_MS || dl_time <= 0.0 || p.downloaded_bits <= 0.0 {
            return None;
        }
        let tput = p.downloaded_bits / dl_time;
        let size_left = p.size_bits - p.downloaded_bits;
        let estimate_time_left = size_left / tput;
        if p.elapsed_ms + estimate_time_left <= Self::ABANDON_MULTIPLIER * ctx.segment_duration_ms {
            return None;
        }
        let rung = rung_for_throughput(ctx, tput * Self::SAFETY_FACTOR);
        let estimate_size = p.size_bits * ctx.bitrates_kbps[rung] / ctx.bitrates_kbps[p.rung];
        (rung < p.rung && estimate_size < size_left).then_some(rung)
    }
}

/// Sabre's `bola`: BOLA-U with a throughput cap on upswitches, buffer target
/// shrunk near the start and end of the title, and abandonment.
#[derive(Debug, Clone)]
pub struct Bola {
    gamma_p: f64,
    buffer_size_ms: f64,
    /// Lyapunov trade-off weight; recomputed per decision, kept for abandonment.
    vp: Option<f64>,
    last_rung: usize,
}

impl Bola {
    /// A rule in its initial state.
    pub fn new(config: &AbrConfig) -> Self {
        Self { gamma_p: config.gamma_p, buffer_size_ms: config.max_buffer_ms, vp: None, last_rung: 0 }
    }

    /// ln(bitrate) shifted so the lowest rung has utility 0 (computed as Sabre does, bit for bit).
    fn utility(bitrates: &[f64], rung: usize) -> f64 {
        let offset = -bitrates[0].ln();
        bitrates[rung].ln() + offset
    }

    fn vp_for(&self, bitrates: &[f64], segment_ms: f64, buffer_ms: f64) -> f64 {
        let top = Self::utility(bitrates, bitrates.len() - 1);
        (buffer_ms - segment_ms) / (top + self.gamma_p)
    }

    fn rung_from_buffer(&self, vp: f64, bitrates: &[f64], level: f64) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (q, &b) in bitrates.iter().enumerate() {
            let s = (vp * (Self::utility(bitrates, q) + self.gamma_p) - level) / b;
            if q == 0 || s > best_score {
                best = q;
                best_score = s;
            }
        }
        best
    }
}

impl Abr for Bola {
    fn name(&self) -> &'static str {
        "bola"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        let Some(est) = ctx.estimate else { return Decision { rung: 0, delay_ms: 0.0 } };
        let br = ctx.bitrates_kbps;
        // Near the start and the end of the title a full-size buffer target
        // cannot be reached, so BOLA aims for a smaller one (Sabre, non-basic mode).
        let segments_left = ctx.segment_count.saturating_sub(ctx.segment_index);
        let horizon = (ctx.segment_index.min(segments_left) as f64 / 2.0).max(3.0) * ctx.segment_duration_ms;
        let buffer_ms = self.buffer_size_ms.min(horizon);
        let vp = self.vp_for(br, ctx.segment_duration_ms, buffer_ms);
        self.vp = Some(vp);

        let mut rung = self.rung_from_buffer(vp, br, ctx.buffer_level_ms);
        if rung > self.last_rung {
            // Do not switch up past what the throughput sustains (one rung of
            // slack above it, as Sabre's default non-oscillation mode does).
            let rung_t = rung_for_throughput(ctx, est.throughput_kbps);
            if rung <= rung_t {
                // The buffer's choice is sustainable.
            } else if self.last_rung > rung_t {
                rung = self.last_rung;
            } else {
                rung = rung_t + 1;
            }
        }
        self.last_rung = rung;
        Decision { rung, delay_ms: 0.0 }
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, p: &DownloadProgress, buffer_level_ms: f64) -> Option<usize> {
        let remain = p.size_bits - p.downloaded_bits;
        if p.downloaded_bits <= 0.0 || remain <= 0.0 {
            return None;
        }
        let br = ctx.bitrates_kbps;
        let vp = self.vp.unwrap_or_else(|| self.vp_for(br, ctx.segment_duration_ms, self.buffer_size_ms));
        let mut score = (vp * (self.gamma_p + Self::utility(br, p.rung)) - buffer_level_ms) / remain;
        if score < 0.0 {
            return None;
        }
        let mut abandon_to = None;
        for q in 0..p.rung {
            let other_size = p.size_bits * br[q] / br[p.rung];
            let other_score = (vp * (self.gamma_p + Self::utility(br, q)) - buffer_level_ms) / other_size;
            if other_size < remain && other_score > score {
                score = other_score;
                abandon_to = Some(q);
            }
        }
        if let Some(q) = abandon_to {
            self.last_rung = q;
        }
        abandon_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LADDER: [f64; 4] = [200.0, 500.0, 1000.0, 3000.0];

    fn ctx(buffer_ms: f64, tput: Option<f64>) -> AbrContext<'static> {
        AbrContext {
            segment_index: 50,
            segment_count: 100,
            segment_duration_ms: 3000.0,
            buffer_level_ms: buffer_ms,
            bitrates_kbps: &LADDER,
            estimate: tput.map(|t| ThroughputEstimate { throughput_kbps: t, latency_ms: 100.0 }),
            next_sizes_bits: None,
            all_sizes_bits: None,
        }
    }

    #[test]
    fn names_round_trip() {
        for k in AbrKind::ALL {
            assert_eq!(k.as_str().parse::<AbrKind>().unwrap(), k);
            assert_eq!(k.build(&AbrConfig::default()).name(), k.as_str());
        }
        assert!("nope".parse::<AbrKind>().is_err());
    }

    #[test]
    fn rung_for_throughput_accounts_for_latency() {
        // 1000 kbps needs 3000 ms at 1000 kbps, plus 100 ms latency: too slow.
        assert_eq!(rung_for_throughput(&ctx(0.0, Some(1000.0)), 1000.0), 1);
        assert_eq!(rung_for_throughput(&ctx(0.0, Some(1100.0)), 1100.0), 2);
        assert_eq!(rung_for_throughput(&ctx(0.0, Some(1e9)), 1e9), 3);
        assert_eq!(rung_for_throughput(&ctx(0.0, Some(0.0)), 0.0), 0);
    }

    #[test]
    fn first_segment_is_lowest_rung() {
        for k in AbrKind::ALL {
            assert_eq!(k.build(&AbrConfig::default()).choose(&ctx(0.0, None)).rung, 0);
        }
    }

    #[test]
    fn throughput_rule_applies_safety_factor_and_buffer_rule() {
        let mut r = ThroughputRule::new();
        // 0.9 × 1200 = 1080 kbps: enough for 1000 kbps (3000·1000/1080 + 100 ≤ 3000).
        assert_eq!(r.choose(&ctx(20_000.0, Some(1200.0))).rung, 2);
        // With 1000 kbps only 500 fits after the safety factor.
        assert_eq!(r.choose(&ctx(20_000.0, Some(1000.0))).rung, 1);
        // An almost empty buffer cannot cover a big download: the buffer rule steps down.
        let mut r = ThroughputRule::new();
        assert_eq!(r.choose(&ctx(110.0, Some(100_000.0))).rung, 0);
    }

    #[test]
    fn throughput_rule_abandons_hopeless_download() {
        let mut r = ThroughputRule::new();
        let c = ctx(10_000.0, Some(3000.0));
        let slow = DownloadProgress {
            rung: 3,
            size_bits: 9_000_000.0,
            downloaded_bits: 100_000.0,
            elapsed_ms: 1100.0,
            time_to_first_bit_ms: 100.0,
        };
        assert_eq!(r.check_abandon(&c, &slow, 9000.0), Some(0));
        let fast = DownloadProgress { downloaded_bits: 3_000_000.0, ..slow };
        assert_eq!(r.check_abandon(&c, &fast, 9000.0), None);
        let early = DownloadProgress { elapsed_ms: 400.0, ..slow };
        assert_eq!(r.check_abandon(&c, &early, 9000.0), None);
    }

    #[test]
    fn bola_climbs_with_buffer_and_caps_upswitch_by_throughput() {
        let mut b = Bola::new(&AbrConfig::default());
        assert_eq!(b.choose(&ctx(0.0, Some(1e6))).rung, 0);
        // Full buffer and plenty of throughput: top rung.
        let mut b = Bola::new(&AbrConfig::default());
        assert_eq!(b.choose(&ctx(22_000.0, Some(1e6))).rung, 3);
        // Full buffer but only 600 kbps: at most one rung above the sustainable one.
        let mut b = Bola::new(&AbrConfig::default());
        let r = b.choose(&ctx(22_000.0, Some(600.0))).rung;
        assert_eq!(r, 2, "sustainable rung is 1, so at most 2");
    }

    #[test]
    fn bola_abandons_when_buffer_is_low() {
        let mut b = Bola::new(&AbrConfig::default());
        let c = ctx(22_000.0, Some(1e6));
        assert_eq!(b.choose(&c).rung, 3);
        let p = DownloadProgress {
            rung: 3,
            size_bits: 9_000_000.0,
            downloaded_bits: 100_000.0,
            elapsed_ms: 5000.0,
            time_to_first_bit_ms: 100.0,
        };
        assert!(b.check_abandon(&c, &p, 1000.0).is_some());
        assert_eq!(b.check_abandon(&c, &p, 60_000.0), None);
    }
}
