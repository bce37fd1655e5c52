//! Sabre's two hybrids of a throughput rule and BOLA.
//!
//! * `dynamic` (Sabre's `Dynamic`): asks both BOLA and the throughput rule
//!   every time; uses BOLA once the buffer exceeds 10 s and BOLA picks at least
//!   the throughput rule's rung, and goes back to the throughput rule when the
//!   buffer falls below 10 s while BOLA picks lower. Abandonment is always the
//!   throughput rule's (Sabre disables BOLA's there).
//! * `dynamicdash` (Sabre's `DynamicDash`, dash.js DYNAMIC): throughput rule
//!   until the buffer exceeds 10 s, BOLA-E until it falls below 5 s.

use super::{Abr, AbrConfig, AbrContext, Bola, BolaE, Decision, DownloadProgress, DownloadReport, ThroughputRule};

/// Sabre's `Dynamic`.
#[derive(Debug, Clone)]
pub struct Dynamic {
    bola: Bola,
    tput: ThroughputRule,
    pub(super) is_bola: bool,
}

impl Dynamic {
    const LOW_BUFFER_THRESHOLD_MS: f64 = 10_000.0;

    /// A rule starting on the throughput side.
    pub fn new(config: &AbrConfig) -> Self {
        Self { bola: Bola::new(config), tput: ThroughputRule::new(), is_bola: false }
    }
}

impl Abr for Dynamic {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        if ctx.estimate.is_none() {
            return Decision { rung: 0, delay_ms: 0.0 };
        }
        let level = ctx.buffer_level_ms;
        // Both rules decide every time so each keeps its own state current.
        let b = self.bola.choose(ctx);
        let t = self.tput.choose(ctx);
        if self.is_bola {
            if level < Self::LOW_BUFFER_THRESHOLD_MS && b.rung < t.rung {
                self.is_bola = false;
            }
        } else if level > Self::LOW_BUFFER_THRESHOLD_MS && b.rung >= t.rung {
            self.is_bola = true;
        }
        if self.is_bola {
            b
        } else {
            t
        }
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, p: &DownloadProgress, buffer_level_ms: f64) -> Option<usize> {
        self.tput.check_abandon(ctx, p, buffer_level_ms)
    }
}

/// Sabre's `DynamicDash`.
#[derive(Debug, Clone)]
pub struct DynamicDash {
    bola: BolaE,
    tput: ThroughputRule,
    pub(super) is_bola: bool,
}

impl DynamicDash {
    const LOW_THRESHOLD_MS: f64 = 5_000.0;
    const HIGH_THRESHOLD_MS: f64 = 10_000.0;

    /// A rule starting on the throughput side.
    pub fn new(config: &AbrConfig) -> Self {
        Self { bola: BolaE::new(config), tput: ThroughputRule::new(), is_bola: false }
    }
}

impl Abr for DynamicDash {
    fn name(&self) -> &'static str {
        "dynamicdash"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        if ctx.estimate.is_none() {
            return Decision { rung: 0, delay_ms: 0.0 };
        }
        let level = ctx.buffer_level_ms;
        if self.is_bola && level < Self::LOW_THRESHOLD_MS {
            self.is_bola = false;
        } else if !self.is_bola && level > Self::HIGH_THRESHOLD_MS {
            self.is_bola = true;
        }
        if self.is_bola {
            self.bola.choose(ctx)
        } else {
            self.tput.choose(ctx)
        }
    }

    fn check_abandon(&mut self, ctx: &AbrContext<'_>, p: &DownloadProgress, buffer_level_ms: f64) -> Option<usize> {
        if self.is_bola {
            self.bola.check_abandon(ctx, p, buffer_level_ms)
        } else {
            self.tput.check_abandon(ctx, p, buffer_level_ms)
        }
    }

    fn report_delay(&mut self, delay_ms: f64) {
        self.bola.report_delay(delay_ms);
    }

    fn report_download(&mut self, r: &DownloadReport) {
        self.bola.report_download(r);
    }
}
