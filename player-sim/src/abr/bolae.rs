//! Sabre's `bolae`: BOLA-E (Spiteri, Sitaraman, Sparacio, MMSys 2018), the
//! BOLA variant dash.js ships. Over BOLA it adds a *placeholder* buffer (virtual
//! buffer credited while the player idles, so BOLA climbs at startup and after
//! pauses), the insufficient-buffer rule, and an abandonment rule that accounts
//! for the latency of the replacement request. Follows Sabre's `BolaEnh` line
//! by line, in its default (non-oscillation-avoiding) mode.

use super::{rung_for_throughput, Abr, AbrConfig, AbrContext, Decision, DownloadProgress, DownloadReport};

/// BOLA-E's thresholds come from these buffer levels, not only from the maximum buffer.
const MINIMUM_BUFFER_MS: f64 = 10_000.0;
const MINIMUM_BUFFER_PER_LEVEL_MS: f64 = 2_000.0;
const LOW_BUFFER_SAFETY_FACTOR: f64 = 0.5;
const LOW_BUFFER_SAFETY_FACTOR_INIT: f64 = 0.9;

/// Ladder-dependent constants, fixed on the first decision.
#[derive(Debug, Clone)]
struct Params {
    bitrates: Vec<f64>,
    /// ln(bitrate) shifted so the lowest rung has utility 1.
    utilities: Vec<f64>,
    gp: f64,
    vp: f64,
}

impl Params {
    fn new(bitrates: &[f64], max_buffer_ms: f64) -> Self {
        let offset = 1.0 - bitrates[0].ln();
        let utilities: Vec<f64> = bitrates.iter().map(|b| b.ln() + offset).collect();
        let buffer = (MINIMUM_BUFFER_MS + MINIMUM_BUFFER_PER_LEVEL_MS * bitrates.len() as f64).max(max_buffer_ms);
        let top = utilities[utilities.len() - 1];
        let gp = (top - 1.0) / (buffer / MINIMUM_BUFFER_MS - 1.0);
        Self { bitrates: bitrates.to_vec(), utilities, gp, vp: MINIMUM_BUFFER_MS / gp }
    }

    fn rung_from_buffer(&self, level: f64) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (q, &b) in self.bitrates.iter().enumerate() {
            let s = (self.vp * (self.utilities[q] + self.gp) - level) / b;
            if q == 0 || s > best_score {
                best = q;
                best_score = s;
            }
        }
        best
    }

    /// Lowest buffer level at which BOLA prefers `rung` to every lower rung.
    fn min_buffer_for(&self, rung: usize) -> f64 {
        let (bitrate, utility) = (self.bitrates[rung], self.utilities[rung]);
        let mut level: f64 = 0.0;
        for q in 0..rung {
            if self.utilities[q] < utility {
                let (b, u) = (self.bitrates[q], self.utilities[q]);
                level = level.max(self.vp * (self.gp + (bitrate * u - b * utility) / (bitrate - b)));
            }
        }
        level
    }

    /// Highest buffer level at which BOLA still downloads `rung`.
    fn max_buffer_for(&self, rung: usize) -> f64 {
        self.vp * (self.utilities[rung] + self.gp)
    }
}

/// Sabre's `BolaEnh`.
#[derive(Debug, Clone)]
pub struct BolaE {
    max_buffer_ms: f64,
    params: Option<Params>,
    steady: bool,
    placeholder_ms: f64,
    last_rung: usize,
    ibr_safety: f64,
}

impl BolaE {
    /// A rule in its startup state.
    pub fn new(config: &AbrConfig) -> Self {
        Self {
            max_buffer_ms: config.max_buffer_ms,
            params: None,
            steady: false,
            placeholder_ms: 0.0,
            last_rung: 0,
            ibr_safety: LOW_BUFFER_SAFETY_FACTOR_INIT,
        }
    }

    fn params(&mut self, bitrates: &[f64]) -> &Params {
        let max_buffer_ms = self.max_buffer_ms;
        self.params.get_or_insert_with(|| Params::new(bitrates, max_buffer_ms))
    }

    fn decide(&mut self, p: &Params, ctx: &AbrContext<'_>) -> Decision {
        let level = ctx.buffer_level_ms;
        let Some(est) = ctx.estimate else { return Decision { rung: self.last_rung, delay_ms: 0.0 } };
        if !self.steady {
            // Startup: trust the first throughput sample and pretend the buffer
            // already holds what BOLA would need to pick that rung.
            self.steady = true;
            self.ibr_safety = LOW_BUFFER_SAFETY_FACTOR_INIT;
            let rung = rung_for_throughput(ctx, est.throughput_kbps);
            self.placeholder_ms = (p.min_buffer_for(rung) - level).max(0.0);
            return Decision { rung, delay_ms: 0.0 };
        }
        let mut rung = p.rung_from_buffer(level + self.placeholder_ms);
        let rung_t = rung_for_throughput(ctx, est.throughput_kbps);
        if rung > self.last_rung && rung > rung_t {
            rung = self.last_rung.max(rung_t) + 1;
        }
        let mut delay = level + self.placeholder_ms - p.max_buffer_for(rung);
        if delay > 0.0 {
            if delay <= self.placeholder_ms {
                self.placeholder_ms -= delay;
                delay = 0.0;
            } else {
                delay -= self.placeholder_ms;
                self.placeholder_ms = 0.0;
            }
        } else {
            delay = 0.0;
        }
        if rung == p.bitrates.len() - 1 {
            delay = 0.0;
        }
        // Insufficient-buffer rule.
        let safe_size = self.ibr_safety * (level - est.latency_ms) * est.throughput_kbps;
        self.ibr_safety = (self.ibr_safety * LOW_BUFFER_SAFETY_FACTOR_INIT).max(LOW_BUFFER_SAFETY_FACTOR);
        if let Some(q) = (0..rung).find(|&q| p.bitrates[q + 1] * ctx.segment_duration_ms > safe_size) {
            rung = q;
            delay = 0.0;
            let max_placeholder = (p.min_buffer_for(q) - level).max(0.0);
            self.placeholder_ms = self.placeholder_ms.min(max_placeholder);
        }
        Decision { rung, delay_ms: delay }
    }
}

impl Abr for BolaE {
    fn name(&self) -> &'static str {
        "bolae"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        let p = self.params.take().unwrap_or_else(|| Params::new(ctx.bitrates_kbps, self.max_buffer_ms));
        let d = self.decide(&p, ctx);
        self.params = Some(p);
        d
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, pr: &DownloadProgress, buffer_level_ms: f64) -> Option<usize> {
        let placeholder_ms = self.placeholder_ms;
        let p = self.params(ctx.bitrates_kbps);
        let remain = pr.size_bits - pr.downloaded_bits;
        let transfer_ms = pr.elapsed_ms - pr.time_to_first_bit_ms;
        if pr.downloaded_bits <= 0.0 || remain <= 0.0 || transfer_ms <= 0.0 {
            return None;
        }
        // A replacement request pays a latency again: judge the state after it.
        let bl = (buffer_level_ms + placeholder_ms - pr.time_to_first_bit_ms).max(0.0);
        let tput = pr.downloaded_bits / transfer_ms;
        let sz = remain - pr.time_to_first_bit_ms * tput;
        if sz <= 0.0 {
            return None;
        }
        let mut score = (p.vp * (p.gp + p.utilities[pr.rung]) - bl) / sz;
        let mut abandon_to = None;
        for q in 0..pr.rung {
            let other_size = pr.size_bits * p.bitrates[q] / p.bitrates[pr.rung];
            let other_score = (p.vp * (p.gp + p.utilities[q]) - bl) / other_size;
            // Switching only pays if the replacement is smaller than what is left.
            if other_size < sz && other_score > score {
                score = other_score;
                abandon_to = Some(q);
            }
        }
        abandon_to
    }

    fn report_delay(&mut self, delay_ms: f64) {
        self.placeholder_ms += delay_ms;
    }

    fn report_download(&mut self, r: &DownloadReport) {
        self.last_rung = r.rung;
        let Some(p) = self.params.as_ref() else { return };
        let level = r.buffer_level_ms;
        match r.abandoned_to {
            None => {
                let level_was = level + r.time_ms;
                let max_placeholder = (p.max_buffer_for(r.rung) - level_was).max(0.0);
                self.placeholder_ms = self.placeholder_ms.min(max_placeholder);
                // Not too small either (the rung may not have been BOLA's pick); not while rebuffering.
                if level > 0.0 {
                    self.placeholder_ms = self.placeholder_ms.max(p.min_buffer_for(r.rung) - level_was);
                }
            }
            Some(to) => {
                // Abandonment means something went wrong: fall back to a conservative level.
                let want = if to > 0 { p.min_buffer_for(to) } else { MINIMUM_BUFFER_MS };
                self.placeholder_ms = self.placeholder_ms.min((want - level).max(0.0));
            }
        }
    }
}
