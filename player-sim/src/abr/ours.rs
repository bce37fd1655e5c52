//! `ours`: model-predictive control designed by measurement on half of the 3G
//! traces (even positions by sorted file name); the odd half is held out.
//!
//! Like RobustMPC it searches every rung sequence over the next 5 segments
//! for the best linear QoE, but it plans with what the player really knows
//! and Sabre's session model really does: the conservative EWMA estimate (min
//! of 3 s and 8 s half-lives), one request latency per download, the real
//! segment sizes, and the buffer capped where the player waits for room. It
//! keeps the throughput rule's abandonment, only when the download at its
//! current rate would outlast the buffer, and after an abandonment plans with
//! the rate that download saw.
//!
//! Against outages no estimate foresees (the 3G traces' stalls) it keeps
//! buffer two ways: it plans as if 4 s of its buffer were not there (a hard
//! reserve, shrunk in proportion when the estimate exceeds the top rung), and
//! each second the buffer ends the lookahead short of 12 s costs as much as
//! 1 Mbit/s for one segment (a soft target). The soft target is what closed
//! most of the gap: the earlier design's hard 9 s reserve made the planner
//! see an empty buffer after every slow download and drop to the bottom rung,
//! then climb back, and each such dip costs its depth twice in switches.
//!
//! Measured, Big Buck Bunny (kbps / rebuffer ratio / mean linear QoE; share
//! of the offline optimum's QoE as Σ QoE / Σ optimum and as the mean of
//! per-session ratios, over sessions where the optimum's QoE is positive):
//!
//! | set | ours | previous design (hard 9 s reserve) |
//! |---|---|---|
//! | 3G design half (43) | 1124.2 / 0.0759 / −180.4; 70.8% / 55.1% | 1138.5 / 0.0780 / −192.1; 65.1% / 45.3% |
//! | 3G held-out half (43) | 1104.1 / 0.0833 / −238.4; 76.7% / 72.6% | 1130.8 / 0.0844 / −247.8; 74.6% / 71.1% |
//! | 3G all (86) | 1114.1 / 0.0796 / −209.4; 73.7% / 63.7% | 1134.7 / 0.0812 / −219.9; 69.9% / 58.0% |
//! | 4G (40) | 5876.0 / 0.0003 / 1148.9; 96.9% / 96.9% | 5847.9 / 0.0004 / 1141.4; 96.3% / 96.3% |
//!
//! The 90% target is not met. The optimum stalls exactly as much as always
//! fetching the lowest rung would (the stall no schedule avoids) while
//! averaging 1168 kbps: it fills the buffer just before each outage. What
//! separates ours from it on the design half is stall (1156 QoE points over
//! the sessions counted), switches (668; 46 per session against its 14) and
//! bitrate (208).
//!
//! Tried on the design half only (Σ-share): switch cost weighted 1.5–5 in
//! the search (about 66%, from 65.1%); longer horizons (10–20 segments) over
//! "one rung now, another after" plans, with switch weights 1–5 (59–71%, at
//! 1049–1105 kbps); a value on the final buffer (61–70%); harmonic-mean
//! predictors over 3–20 downloads (64–68%); the lower of the EWMA and the
//! last download's rate (about 70%); extrapolating a falling rate (less
//! stall, many more switches: 68%); aiming for a full buffer when the last
//! rate fell below 50–85% of the estimate (69–71%); abandoning only below
//! 4–16 s of buffer (70–71%); target 10–14 s with reserve 0–6 s and weight
//! 0.5–2 (57–71%: 12 s / 4 s / 1 was the best at more than 1120 kbps). One
//! candidate of the 8-segment kind (switch weight 3, 7 s reserve, last-rate
//! predictor) was run once on the held-out half, did no better there than the
//! previous design (1114.2 / 0.0869 / −247.9) and was dropped; the design
//! above was then chosen on the design half and run once on the held-out one.
//!
//! A second round, again on the design half only (the design above: 70.8%,
//! 45.8 switches a session), first split the gap over the 34 sessions
//! counted into Σ bitrate / 4.3 · (startup + stall) / switch cost: ours 8524 /
//! 2704 / 891, the optimum 8732 / 1548 / 223. One trace is 411 of the 2031
//! points: `2010-11-10_1726CET` has a 75 s outage from 186 s that comes round
//! again when the 445 s trace loops; the optimum has fetched its last segment
//! just before the second one, ours, behind by its earlier stalls, runs into
//! it (139 s of stall against 54). 19% of the design traces' time is below
//! 100 kbps, in 965 spells under 150 kbps shorter than 5 s and 32 longer than
//! 60 s. Of ours' switch cost on the 43 design traces (1083), 142 is
//! alternation between 2962 and 5027 kbps on links between the two, where the
//! optimum plays long blocks of each. Tried against that, none better than
//! 71.5%: an exact search over 6, 7 and 8 segments (69.7 / 69.6 / 69.9%: 43,
//! 39 and 37 switches but less bitrate and more stall; with target, reserve,
//! safety or penalty moved, 67.8–70.3%); switches up weighted 2–4 times
//! switches down (70.5–71.0%, still 45 switches: the steps down are forced by
//! stall the planner foresees inside its reserve, not chosen against a
//! switch cost; 6 times freezes the lowest rung; 1 + 1–8 times the buffer's
//! empty share, so that a full buffer switches up freely: 70.5–70.9%);
//! charging the plan for the switch it leaves to the rung the estimate
//! sustains, weight 0.5–2 (67.9–70.1%, more switches); bits over transfer time of the last 10, 30 or
//! 60 s as the predictor (65.0 / 65.6 / 61.9%: 37 switches at 30 s but more
//! stall, the EWMA's quick fall is what saves it in outages); the target
//! raised by 4–12 s per unit of the last 5–10 rates' coefficient of variation
//! (69.7–71.5%); a target of 18–24 s, i.e. a value on buffer up to the cap
//! (68.3–68.6%); planning after an abandonment without keeping to the
//! abandonment's rung (71.0%); single moves of safety (0.9: 71.2%, 1.1:
//! 67.1%), target (15 s: 71.3%), shortfall weight (1.5: 71.5%), reserve (2 s:
//! 67.9%, 6 s: 70.7%), rebuffer penalty (6, 8: 70.7, 70.8%) and switch weight
//! (1.5, 2: 70.3, 70.8%), and their combinations (67.6–70.7%). Nothing gained
//! a point on the design half, so nothing was run on the held-out half and
//! the design is unchanged.

use std::collections::VecDeque;

use super::mpc::{best_first_rung, Objective, HORIZON, MAX_RUNGS};
use super::{Abr, AbrConfig, AbrContext, Decision, DownloadProgress, DownloadReport, ThroughputRule};

/// Most throughput samples the harmonic mean may use.
const MAX_HISTORY: usize = 32;

/// Where the planner's throughput comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    /// The player's EWMA estimate (Sabre's: the lower of 3 s and 8 s half-lives).
    Ewma,
    /// Harmonic mean of the last `history` downloads' transfer rates.
    Harmonic,
    /// The lower of the EWMA and the harmonic mean.
    Lower,
    /// The lower of the EWMA and the last download's rate (reacts at once to a fall).
    LastDrop,
}

/// Tuning of `ours` (fixed by measurement; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OursParams {
    /// Multiplies the predicted throughput.
    pub safety: f64,
    /// Rebuffer penalty per second in the lookahead (the QoE's own is 4.3).
    pub penalty: f64,
    /// Segments looked ahead (at most 5).
    pub horizon: usize,
    /// Buffer the planner pretends not to have, kept against outages no estimate foresees.
    pub reserve_ms: f64,
    /// Multiplies the switch cost in the lookahead (the QoE's own is 1).
    pub switch_weight: f64,
    /// Buffer the lookahead wants left after its last segment…
    pub target_ms: f64,
    /// …and what each second short of it costs (Mbit/s-equivalents).
    pub shortfall_weight: f64,
    /// Throughput source.
    pub predictor: Predictor,
    /// Downloads the harmonic mean looks back over.
    pub history: usize,
}

impl Default for OursParams {
    fn default() -> Self {
        Self {
            safety: 1.0,
            penalty: 4.3,
            horizon: HORIZON,
            reserve_ms: 4_000.0,
            switch_weight: 1.0,
            target_ms: 12_000.0,
            shortfall_weight: 1.0,
            predictor: Predictor::Ewma,
            history: 5,
        }
    }
}

/// Our rule.
#[derive(Debug, Clone)]
pub struct Ours {
    params: OursParams,
    max_buffer_ms: f64,
    abandon: ThroughputRule,
    last_rung: usize,
    /// Transfer rates of the last downloads, kbit/s.
    samples: VecDeque<f64>,
    /// Set by an abandonment: the rate that download saw and the rung it was abandoned for.
    after_abandon: Option<(f64, usize)>,
}

impl Ours {
    /// A rule with the default tuning.
    pub fn new(config: &AbrConfig) -> Self {
        Self::with_params(config, OursParams::default())
    }

    /// A rule with explicit tuning.
    pub fn with_params(config: &AbrConfig, params: OursParams) -> Self {
        Self {
            params,
            max_buffer_ms: config.max_buffer_ms,
            abandon: ThroughputRule::new(),
            last_rung: 0,
            samples: VecDeque::with_capacity(MAX_HISTORY),
            after_abandon: None,
        }
    }

    fn harmonic(&self) -> Option<f64> {
        let k = self.params.history.clamp(1, MAX_HISTORY);
        let (n, inv) = self.samples.iter().rev().take(k).fold((0usize, 0.0), |(n, inv), s| (n + 1, inv + 1.0 / s));
        (n > 0 && inv > 0.0).then(|| n as f64 / inv)
    }

    fn predict(&self, ewma_kbps: f64) -> f64 {
        match self.params.predictor {
            Predictor::Ewma => ewma_kbps,
            Predictor::Harmonic => self.harmonic().unwrap_or(ewma_kbps),
            Predictor::Lower => self.harmonic().map_or(ewma_kbps, |h| h.min(ewma_kbps)),
            Predictor::LastDrop => self.samples.back().map_or(ewma_kbps, |&s| s.min(ewma_kbps)),
        }
    }
}

impl Abr for Ours {
    fn name(&self) -> &'static str {
        "ours"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        let Some(est) = ctx.estimate else { return Decision { rung: 0, delay_ms: 0.0 } };
        // The estimator learns nothing from an abandoned download; we do, or the
        // same segment would be fetched at the same rung and abandoned again.
        let after_abandon = self.after_abandon.take();
        let measured = after_abandon.map_or(f64::INFINITY, |(rate, _)| rate);
        let throughput = self.predict(est.throughput_kbps).min(measured) * self.params.safety;
        if throughput.is_nan() || throughput <= 0.0 {
            return Decision { rung: 0, delay_ms: 0.0 };
        }
        let n = ctx.bitrates_kbps.len().min(MAX_RUNGS);
        let horizon =
            self.params.horizon.clamp(1, HORIZON).min(ctx.segment_count.saturating_sub(ctx.segment_index)).max(1);
        let mut download_ms = [[0.0; MAX_RUNGS]; HORIZON];
        for (j, row) in download_ms.iter_mut().enumerate().take(horizon) {
            let segment = (ctx.segment_index + j).min(ctx.segment_count.saturating_sub(1));
            for (q, d) in row.iter_mut().enumerate().take(n) {
                *d = est.latency_ms + ctx.size_bits(segment, q) / throughput;
            }
        }
        let mut mbps = [0.0; MAX_RUNGS];
        for (m, b) in mbps.iter_mut().zip(ctx.bitrates_kbps) {
            *m = b / 1000.0;
        }
        // Outages hurt where the link barely carries the ladder; on a link far
        // above the top rung the reserve only costs quality, so it shrinks.
        let top = ctx.bitrates_kbps[ctx.bitrates_kbps.len() - 1];
        let reserve = self.params.reserve_ms * (top / est.throughput_kbps).min(1.0);
        let objective = Objective {
            penalty: self.params.penalty,
            switch_weight: self.params.switch_weight,
            target_ms: self.params.target_ms,
            shortfall_weight: self.params.shortfall_weight,
        };
        let rung = best_first_rung(
            &download_ms[..horizon],
            &mbps[..n],
            ctx.segment_duration_ms,
            (ctx.buffer_level_ms - reserve).max(0.0),
            self.last_rung.min(n - 1),
            &objective,
            (self.max_buffer_ms - ctx.segment_duration_ms - reserve).max(0.0),
        );
        let rung = after_abandon.map_or(rung, |(_, to)| rung.min(to));
        Decision { rung, delay_ms: 0.0 }
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, p: &DownloadProgress, buffer_level_ms: f64) -> Option<usize> {
        // Only when the download, at the rate it is getting, would outlast the
        // buffer: a slow download that still lands in time is cheaper to finish.
        let transfer_ms = p.elapsed_ms - p.time_to_first_bit_ms;
        if transfer_ms > 0.0 && p.downloaded_bits > 0.0 {
            let left_ms = (p.size_bits - p.downloaded_bits) * transfer_ms / p.downloaded_bits;
            if left_ms < buffer_level_ms {
                return None;
            }
        }
        self.abandon.check_abandon(ctx, p, buffer_level_ms)
    }

    fn report_download(&mut self, r: &DownloadReport) {
        let transfer_ms = r.time_ms - r.time_to_first_bit_ms;
        let rate = if transfer_ms > 0.0 { r.downloaded_bits / transfer_ms } else { f64::INFINITY };
        match r.abandoned_to {
            None => {
                self.last_rung = r.rung;
                if rate.is_finite() && rate > 0.0 {
                    if self.samples.len() == MAX_HISTORY {
                        self.samples.pop_front();
                    }
                    self.samples.push_back(rate);
                }
            }
            Some(to) => self.after_abandon = Some((rate, to)),
        }
    }
}
