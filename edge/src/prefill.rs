//! Prefill: pulls a fill plan's objects onto the disk tier, pinned, in plan
//! (priority) order, at a capped rate. Objects already on disk are pinned
//! without a fetch, so a restart resumes where the last run stopped.

use std::time::{Duration, Instant};

use vod::plan::FillPlan;
use vod::ObjectKey;

use crate::fill::Filler;

/// What a prefill run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillReport {
    /// Objects fetched from upstream.
    pub fetched: u64,
    /// Objects the disk already held (pinned in place).
    pub already_held: u64,
    /// Objects that failed (bad key, upstream error, refused write).
    pub failed: u64,
    /// Bytes fetched.
    pub bytes: u64,
}

/// Runs the plan through `filler`, sending at most `rate_bytes_per_s` (if set) from upstream.
pub async fn run(filler: Filler, plan: FillPlan, rate_bytes_per_s: Option<u64>) -> PrefillReport {
    let started = Instant::now();
    let mut report = PrefillReport::default();
    for object in &plan.objects {
        let key = match ObjectKey::parse(&object.key) {
            Ok(k) if k.is_immutable() => k,
            _ => {
                tracing::warn!(key = %object.key, "prefill: not a cacheable segment key, skipped");
                report.failed += 1;
                continue;
            }
        };
        match filler.prefill(&key).await {
            Ok(0) => report.already_held += 1,
            Ok(n) => {
                report.fetched += 1;
                report.bytes += n;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "prefill: fetch failed");
                report.failed += 1;
            }
        }
        if let Some(rate) = rate_bytes_per_s.filter(|r| *r > 0) {
            // Pace, not wait for a condition: the plan must not crowd out players.
            let due = Duration::from_secs_f64(report.bytes as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    tracing::info!(?report, "prefill done");
    report
}
