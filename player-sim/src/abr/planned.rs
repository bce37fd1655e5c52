//! A rule that replays a rung per segment decided in advance (the offline optimum's plan).

use super::{Abr, AbrContext, Decision};

/// Plays `plan[segment]`; the lowest rung past the plan's end.
#[derive(Debug, Clone)]
pub struct Planned {
    plan: Vec<usize>,
}

impl Planned {
    /// Replay `plan`.
    pub fn new(plan: Vec<usize>) -> Self {
        Self { plan }
    }
}

impl Abr for Planned {
    fn name(&self) -> &'static str {
        "optimal"
    }

    fn choose(&mut self, ctx: &AbrContext<'_>) -> Decision {
        Decision { rung: self.plan.get(ctx.segment_index).copied().unwrap_or(0), delay_ms: 0.0 }
    }
}
