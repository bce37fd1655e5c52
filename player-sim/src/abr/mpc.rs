//! RobustMPC (Yin, Jindal, Sekar, Sinopoli, "A Control-Theoretic Approach for
//! Dynamic Adaptive Video Streaming over HTTP", SIGCOMM 2015) as Pensieve's
//! `mpc.py` implements it:
//!
//! * throughput prediction: harmonic mean of the last 5 downloads' throughput
//!   (size over total time, latency included), divided by 1 + the largest
//!   relative prediction error of the last 5 predictions;
//! * lookahead: every rung sequence over the next 5 segments (fewer near the
//!   end) is played out against that throughput from the current buffer
//!   (download time drains it, each segment adds its duration; no cap);
//! * objective: the linear QoE, Σ bitrate (Mbit/s) − 4.3 · rebuffer (s) −
//!   Σ |Δ bitrate| (Mbit/s) with the first Δ against the last rung fetched;
//!   the first rung of the best sequence is fetched (ties: the later sequence
//!   in lexicographic order, as `mpc.py`'s `>=`).
//!
//! The search is exact but not exhaustive: depth-first from the highest rung
//! down, seeded with the best constant sequence, a branch cut when an upper
//! bound on the rest (a Lagrangian relaxation of the buffer dynamics, see
//! `Search::cannot_reach`) cannot beat the best sequence found. The first segment (no
//! sample yet) is the lowest rung.
//!
//! Speed (`cargo xtask bench abr`, 86 3G traces × 199 segments): the bound is
//! computed for four prices at once from tables laid out price-innermost, the
//! price that cut last is tried alone first, and maxima are plain comparisons
//! (no NaN can occur). Against the earlier eight prices tried one by one this
//! took valgrind's instruction count of a pass from 1140 M to 768 M (robustmpc)
//! and 1132 M to 819 M (ours), 260 M of which is loading the traces and the
//! simulator itself. `tests/decisions.rs` holds both rules to the rungs they
//! chose before the change, on every segment of every 3G trace.

use std::collections::VecDeque;

use super::{Abr, AbrContext, Decision, DownloadReport, QOE_REBUFFER_PENALTY};

pub(crate) const HORIZON: usize = 5;
const HISTORY: usize = 5;
/// Rungs the lookahead considers (ladders are cut to their lowest 16).
pub(crate) const MAX_RUNGS: usize = 16;
/// Prices of download time (per second) for the search's bound, all ≤ the rebuffer penalty. Any set
/// gives the same choices (each price yields a valid upper bound); this one prunes well for its size
/// on the 3G traces.
const LAMBDAS: Prices = [1.0, 0.5, 0.25, 0.1];
const PRICES: usize = 4;
/// One value per price: the bound is computed for all prices at once (the loops over them vectorise).
type Prices = [f64; PRICES];

/// RobustMPC.
#[derive(Debug, Clone, Default)]
pub struct RobustMpc {
    /// Recent throughput samples, kbit/s.
    samples: VecDeque<f64>,
    /// Recent relative prediction errors.
    errors: VecDeque<f64>,
    /// The harmonic-mean prediction made at the previous decision.
    last_prediction: Option<f64>,
    last_rung: usize,
}

/// One lookahead problem: sizes over the horizon, bitrates, throughput.
struct Search<'a> {
    /// `download_ms[position][rung]` at the predicted throughput.
    download_ms: &'a [[f64; MAX_RUNGS]],
    mbps: &'a [f64],
    segment_ms: f64,
    /// Rebuffer penalty per second (4.3 for RobustMPC).
    penalty: f64,
    /// Multiplies the switch cost (1 for RobustMPC).
    switch_weight: f64,
    /// Buffer wanted after the last position, and the cost per second short of it (0 for RobustMPC).
    target_ms: f64,
    shortfall_weight: f64,
    /// The buffer never exceeds this when a download starts (the player waits); infinite for `mpc.py`.
    cap_ms: f64,
    /// `suffix[j][q][l]`: best Σ over positions `j..` of (Mbit/s − `lambdas[l]` · download s − switch cost)
    /// coming from rung `q` (exact for that priced problem, which has no buffer to track).
    suffix: &'a [[Prices; MAX_RUNGS]; HORIZON + 1],
    /// `LAMBDAS` scaled by penalty / 4.3: the prices scale with the penalty.
    lambdas: Prices,
    best: f64,
    best_first: usize,
    /// The price that cut last: neighbouring branches tend to fall to the same one, so it is tried
    /// alone first.
    hint: usize,
}

impl Search<'_> {
    /// True when an upper bound on the reward of positions `pos..` (from
    /// `buffer_ms`, after rung `last`) is at most `need`, so the branch cannot
    /// win.
    ///
    /// Let D be the download time of the rest and `slack` = buffer (capped, as
    /// the player waits for room) + (k − pos − 1) · segment. After the last
    /// position the buffer holds at least one segment, so the rebuffer is at
    /// least (D − slack)⁺ (waiting only adds to it), and the final buffer is at
    /// most slack + segment − D + rebuffer, so the shortfall cost is at least
    /// `shortfall_weight` · (target − that)⁺. Both are convex in D: call their
    /// sum g(D). For any price λ ≤ the penalty, the reward is at most
    /// max over sequences of (Σ Mbit/s − switch costs − λ · D), solved exactly
    /// per (position, previous rung) in `suffix`, plus max over D ≥ 0 of
    /// (λ · D − g(D)), reached at a kink of g. The branch is cut when the
    /// lowest of these bounds over the prices is at most `need`.
    fn cannot_reach(&mut self, pos: usize, buffer_ms: f64, last: usize, need: f64) -> bool {
        let k = self.download_ms.len();
        if pos >= k {
            return 0.0 <= need;
        }
        let slack = (buffer_ms.min(self.cap_ms) + (k - pos - 1) as f64 * self.segment_ms) / 1000.0;
        let suffix = &self.suffix[pos][last];
        let h = self.hint;
        if self.shortfall_weight == 0.0 {
            // Without a target g has one kink, at slack (RobustMPC's case, kept cheap).
            if suffix[h] + self.lambdas[h] * slack <= need {
                return true;
            }
            let bounds: Prices = std::array::from_fn(|l| suffix[l] + self.lambdas[l] * slack);
            return self.cut_by_any(&bounds, need);
        }
        // The final buffer's room above the target when nothing is downloaded or stalled, s.
        let room = slack + (self.segment_ms - self.target_ms) / 1000.0;
        // g below assumes a second of stall costs at least as much as a second of
        // shortfall; a heavier shortfall only lowers the reward, so bounding with
        // the lighter one stays an upper bound.
        let (p, w) = (self.penalty, self.shortfall_weight.min(self.penalty));
        let g = |d: f64| {
            if d <= slack {
                w * (d - room).max(0.0)
            } else {
                p * (d - slack) + w * (slack - room).max(0.0)
            }
        };
        let mid = room.clamp(0.0, slack);
        let (g0, g_mid, g_slack) = (g(0.0), g(mid), g(slack));
        let bound = |lambda: f64, suffix: f64| suffix + max(max(-g0, lambda * mid - g_mid), lambda * slack - g_slack);
        if bound(self.lambdas[h], suffix[h]) <= need {
            return true;
        }
        let bounds: Prices = std::array::from_fn(|l| bound(self.lambdas[l], suffix[l]));
        self.cut_by_any(&bounds, need)
    }

    /// True when some price's bound is at most `need`; that price becomes the hint.
    fn cut_by_any(&mut self, bounds: &Prices, need: f64) -> bool {
        let lowest = bounds.iter().fold(f64::INFINITY, |a, &b| min(a, b));
        if lowest > need {
            return false;
        }
        self.hint = bounds.iter().position(|&b| b <= need).unwrap_or(self.hint);
        true
    }

    /// Reward of playing `rung` at every position (a cheap first incumbent).
    fn constant(&self, start_buffer_ms: f64, last: usize, rung: usize) -> f64 {
        let mut buffer = start_buffer_ms;
        let mut reward = 0.0;
        let mut prev = last;
        for row in self.download_ms {
            let dl = row[rung];
            buffer = buffer.min(self.cap_ms);
            reward += self.mbps[rung]
                - self.penalty * (dl - buffer).max(0.0) / 1000.0
                - self.switch_weight * (self.mbps[rung] - self.mbps[prev]).abs();
            buffer = (buffer - dl).max(0.0) + self.segment_ms;
            prev = rung;
        }
        reward - self.shortfall(buffer)
    }

    /// Terminal cost of ending the horizon with `buffer_ms` (never negative, so the bound stays an upper bound).
    fn shortfall(&self, buffer_ms: f64) -> f64 {
        self.shortfall_weight * (self.target_ms - buffer_ms).max(0.0) / 1000.0
    }

    fn dfs(&mut self, pos: usize, buffer_ms: f64, last: usize, reward: f64, first: usize) {
        if pos == self.download_ms.len() {
            if reward > self.best {
                self.best = reward;
                self.best_first = first;
            }
            return;
        }
        let buffer_ms = buffer_ms.min(self.cap_ms);
        for q in (0..self.mbps.len()).rev() {
            let dl = self.download_ms[pos][q];
            let rebuffer = (dl - buffer_ms).max(0.0);
            let gain = self.mbps[q]
                - self.penalty * rebuffer / 1000.0
                - self.switch_weight * (self.mbps[q] - self.mbps[last]).abs();
            let r = reward + gain;
            let next_buffer = (buffer_ms - dl).max(0.0) + self.segment_ms;
            if pos + 1 == self.download_ms.len() {
                // Last position: a leaf, no need to recurse.
                let r = r - self.shortfall(next_buffer);
                if r > self.best {
                    self.best = r;
                    self.best_first = if pos == 0 { q } else { first };
                }
                continue;
            }
            if self.cannot_reach(pos + 1, next_buffer, q, self.best - r) {
                continue;
            }
            self.dfs(pos + 1, next_buffer, q, r, if pos == 0 { q } else { first });
        }
    }
}

impl RobustMpc {
    /// A rule with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The robust throughput prediction, recording the plain one for the next error.
    fn predict(&mut self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        if let (Some(pred), Some(&actual)) = (self.last_prediction, self.samples.back()) {
            push_bounded(&mut self.errors, (pred - actual).abs() / actual);
        } else {
            push_bounded(&mut self.errors, 0.0);
        }
        let inv: f64 = self.samples.iter().map(|s| 1.0 / s).sum();
        let harmonic = self.samples.len() as f64 / inv;
        self.last_prediction = Some(harmonic);
        let max_error = self.errors.iter().copied().fold(0.0, f64::max);
        Some(harmonic / (1.0 + max_error))
    }
}

fn push_bounded(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

impl Abr for RobustMpc {
    fn name(&self) -> &'static str {
        "robustmpc"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        let Some(throughput) = self.predict() else { return Decision { rung: 0, delay_ms: 0.0 } };
        let n = ctx.bitrates_kbps.len().min(MAX_RUNGS);
        let horizon = HORIZON.min(ctx.segment_count.saturating_sub(ctx.segment_index)).max(1);
        let mut sizes = [[0.0; MAX_RUNGS]; HORIZON];
        for (j, row) in sizes.iter_mut().enumerate().take(horizon) {
            for (q, s) in row.iter_mut().enumerate().take(n) {
                *s = ctx.size_bits((ctx.segment_index + j).min(ctx.segment_count.saturating_sub(1)), q) / throughput;
            }
        }
        let mut mbps = [0.0; MAX_RUNGS];
        for (m, b) in mbps.iter_mut().zip(ctx.bitrates_kbps) {
            *m = b / 1000.0;
        }
        let last = self.last_rung.min(n - 1);
        let rung = best_first_rung(
            &sizes[..horizon],
            &mbps[..n],
            ctx.segment_duration_ms,
            ctx.buffer_level_ms,
            last,
            &Objective::LINEAR_QOE,
            f64::INFINITY,
        );
        Decision { rung, delay_ms: 0.0 }
    }

    fn report_download(&mut self, r: &DownloadReport) {
        if r.abandoned_to.is_none() && r.time_ms > 0.0 && r.downloaded_bits > 0.0 {
            push_bounded(&mut self.samples, r.downloaded_bits / r.time_ms);
            self.last_rung = r.rung;
        }
    }
}

/// What the lookahead maximises: Σ Mbit/s − `penalty` · rebuffer s −
/// `switch_weight` · Σ |Δ Mbit/s| − `shortfall_weight` · (s the final buffer is short of `target_ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Objective {
    pub penalty: f64,
    pub switch_weight: f64,
    pub target_ms: f64,
    pub shortfall_weight: f64,
}

impl Objective {
    /// The linear QoE of MPC and Pensieve, RobustMPC's objective.
    pub const LINEAR_QOE: Objective =
        Objective { penalty: QOE_REBUFFER_PENALTY, switch_weight: 1.0, target_ms: 0.0, shortfall_weight: 0.0 };
}

/// The first rung of the best sequence over `download_ms.len()` positions
/// (`download_ms[position][rung]`, latency included if the caller wants it) for
/// the linear QoE as `objective` weighs it, from `last`.
pub(crate) fn best_first_rung(
    download_ms: &[[f64; MAX_RUNGS]],
    mbps: &[f64],
    segment_ms: f64,
    start_buffer_ms: f64,
    last: usize,
    objective: &Objective,
    cap_ms: f64,
) -> usize {
    let Objective { penalty, switch_weight, target_ms, shortfall_weight } = *objective;
    let w = switch_weight;
    let n = mbps.len();
    let scale = penalty / QOE_REBUFFER_PENALTY;
    let lambdas: Prices = LAMBDAS.map(|lambda| scale * lambda);
    let mut suffix = [[[0.0; PRICES]; MAX_RUNGS]; HORIZON + 1];
    for j in (0..download_ms.len()).rev() {
        // suffix[j][from] = max over q of value[q] − w·|m_q − m_from|; the ladder
        // ascends, so split at `from` and keep running maxima (O(n), not O(n²)).
        let (now, next) = suffix.split_at_mut(j + 1);
        let (row, next) = (&mut now[j], &next[0]);
        let mut value = [[0.0; PRICES]; MAX_RUNGS];
        for q in 0..n {
            for l in 0..PRICES {
                value[q][l] = mbps[q] - lambdas[l] * download_ms[j][q] / 1000.0 + next[q][l];
            }
        }
        let mut up = [[f64::NEG_INFINITY; PRICES]; MAX_RUNGS + 1];
        for q in (0..n).rev() {
            for l in 0..PRICES {
                up[q][l] = max(up[q + 1][l], value[q][l] - w * mbps[q]);
            }
        }
        let mut down = [f64::NEG_INFINITY; PRICES];
        for from in 0..n {
            for l in 0..PRICES {
                down[l] = max(down[l], value[from][l] + w * mbps[from]);
                row[from][l] = max(up[from][l] + w * mbps[from], down[l] - w * mbps[from]);
            }
        }
    }
    let mut search = Search {
        download_ms,
        mbps,
        penalty,
        switch_weight,
        target_ms,
        shortfall_weight,
        cap_ms,
        segment_ms,
        suffix: &suffix,
        lambdas,
        best: f64::NEG_INFINITY,
        best_first: 0,
        hint: 0,
    };
    // Seed with the best constant sequence so the bound cuts from the start.
    for q in 0..n {
        let r = search.constant(start_buffer_ms, last, q);
        if r > search.best {
            search.best = r;
            search.best_first = q;
        }
    }
    // The seed must not win ties against sequences the search finds: step just below it.
    search.best -= 1e-9;
    search.dfs(0, start_buffer_ms, last, 0.0, 0);
    search.best_first
}

/// The larger of two numbers that are never NaN: a plain comparison, cheaper in
/// the search's dependent chains than `f64::max`'s NaN handling.
#[inline(always)]
fn max(a: f64, b: f64) -> f64 {
    if a >= b {
        a
    } else {
        b
    }
}

/// The smaller of two numbers that are never NaN (see [`max`]).
#[inline(always)]
fn min(a: f64, b: f64) -> f64 {
    if a <= b {
        a
    } else {
        b
    }
}
