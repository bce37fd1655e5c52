//! BBA-0, the buffer-based algorithm of Huang, Johari, McKeown, Trunnell and
//! Watson, "A Buffer-Based Approach to Rate Adaptation" (SIGCOMM 2014),
//! Algorithm 1: below the *reservoir* play the lowest rung, above reservoir +
//! *cushion* the highest; in between a linear rate map f(B), with hysteresis:
//! the rung changes only when f(B) crosses the next rung up or down.
//!
//! The paper sized its reservoir (90 s) and cushion (126 s) for a 240 s
//! buffer. Sabre's model keeps at most 25 s, so this follows Pensieve's BBA
//! baseline (reservoir 5 s, cushion 10 s), scaled down if the maximum buffer
//! (less one segment, the most the player ever holds when it decides) is
//! smaller than 15 s. No abandonment: BBA-0 has none.

use super::{Abr, AbrConfig, AbrContext, Decision};

/// BBA-0.
#[derive(Debug, Clone)]
pub struct Bba {
    reservoir_ms: f64,
    cushion_ms: f64,
    max_buffer_ms: f64,
    prev_rung: Option<usize>,
}

impl Bba {
    /// Pensieve's reservoir.
    pub const RESERVOIR_MS: f64 = 5_000.0;
    /// Pensieve's cushion.
    pub const CUSHION_MS: f64 = 10_000.0;

    /// A rule with Pensieve's reservoir and cushion.
    pub fn new(config: &AbrConfig) -> Self {
        Self::with_map(Self::RESERVOIR_MS, Self::CUSHION_MS, config.max_buffer_ms)
    }

    /// A rule with an explicit rate map.
    pub fn with_map(reservoir_ms: f64, cushion_ms: f64, max_buffer_ms: f64) -> Self {
        Self { reservoir_ms, cushion_ms, max_buffer_ms, prev_rung: None }
    }

    /// The rate map f(B): lowest bitrate at the reservoir, highest at reservoir + cushion.
    fn rate_map(&self, bitrates: &[f64], buffer_ms: f64, reservoir: f64, cushion: f64) -> f64 {
        let (lo, hi) = (bitrates[0], bitrates[bitrates.len() - 1]);
        lo + (hi - lo) * (buffer_ms - reservoir) / cushion
    }
}

impl Abr for Bba {
    fn name(&self) -> &'static str {
        "bba"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        let br = ctx.bitrates_kbps;
        let top = br.len() - 1;
        // Keep the map inside what the buffer can reach.
        let reach = (self.max_buffer_ms - ctx.segment_duration_ms).max(ctx.segment_duration_ms);
        let scale = (reach / (self.reservoir_ms + self.cushion_ms)).min(1.0);
        let (reservoir, cushion) = (self.reservoir_ms * scale, self.cushion_ms * scale);
        let buf = ctx.buffer_level_ms;
        let prev = self.prev_rung.unwrap_or(0);
        let rate_plus = br[(prev + 1).min(top)];
        let rate_minus = br[prev.saturating_sub(1)];
        let rung = if buf <= reservoir {
            0
        } else if buf >= reservoir + cushion {
            top
        } else {
            let f = self.rate_map(br, buf, reservoir, cushion);
            if f >= rate_plus {
                // Highest rung strictly below f(B).
                br.iter().rposition(|&r| r < f).unwrap_or(0)
            } else if f <= rate_minus {
                // Lowest rung strictly above f(B).
                br.iter().position(|&r| r > f).unwrap_or(top)
            } else {
                prev
            }
        };
        self.prev_rung = Some(rung);
        Decision { rung, delay_ms: 0.0 }
    }
}
