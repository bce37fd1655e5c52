//! Ladder planning: which rungs to encode for a source.

use serde::{Deserialize, Serialize};

use crate::id::RenditionId;
use crate::units::Bitrate;

/// A rung to encode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRung {
    pub id: RenditionId,
    pub width: u32,
    pub height: u32,
    pub bitrate: Bitrate,
}

/// The default ladder as (height, kbps), highest first.
pub const DEFAULT_LADDER: &[(u32, u64)] = &[(1080, 5000), (720, 3000), (480, 1400), (360, 800), (240, 400), (144, 200)];

/// Fewest video rungs a title gets.
pub const MIN_RUNGS: usize = 3;

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32).max(1) * 2
}

/// Plans the video rungs for a source of `width`×`height`: every rung of
/// `ladder` at or below the source height (never upscaled). A source too small
/// for three rungs gets three rungs at 1, 2/3 and 1/3 of its height instead.
pub fn plan_ladder(width: u32, height: u32, ladder: &[(u32, u64)]) -> Vec<PlannedRung> {
    let aspect = f64::from(width) / f64::from(height.max(1));
    let rung = |h: u32, kbps: u64| {
        let h = even(f64::from(h));
        PlannedRung {
            id: RenditionId::new(format!("v{h}")).unwrap_or_else(|_| unreachable!("v + digits is a valid id")),
            width: even(f64::from(h) * aspect),
            height: h,
            bitrate: Bitrate::from_kbps(kbps),
        }
    };
    let mut rungs: Vec<PlannedRung> = ladder.iter().filter(|(h, _)| *h <= height).map(|&(h, k)| rung(h, k)).collect();
    rungs.dedup_by(|a, b| a.height == b.height);
    if rungs.len() < MIN_RUNGS {
        // Scale bitrate with pixel count from the smallest default rung.
        let (h0, k0) = ladder.last().copied().unwrap_or((144, 200));
        rungs = [1.0, 2.0 / 3.0, 1.0 / 3.0]
            .iter()
            .map(|f| {
                let h = (f64::from(height) * f).max(2.0);
                let kbps = ((k0 as f64) * (h / f64::from(h0)).powi(2)).max(50.0) as u64;
                rung(h as u32, kbps)
            })
            .collect();
        rungs.dedup_by(|a, b| a.height == b.height);
    }
    rungs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_upscales_and_keeps_aspect() {
        let r = plan_ladder(1280, 720, DEFAULT_LADDER);
        let heights: Vec<u32> = r.iter().map(|r| r.height).collect();
        assert_eq!(heights, vec![720, 480, 360, 240, 144]);
        assert_eq!(r[0].width, 1280);
        assert_eq!(r[2].width, 640);
        assert!(r.iter().all(|r| r.width % 2 == 0 && r.height % 2 == 0));
    }

    #[test]
    fn small_sources_still_get_three_rungs() {
        let r = plan_ladder(320, 240, DEFAULT_LADDER);
        assert_eq!(r.iter().map(|r| r.height).collect::<Vec<_>>(), vec![240, 160, 80]);
        assert!(r.iter().all(|x| x.height <= 240));
        let tiny = plan_ladder(64, 48, DEFAULT_LADDER);
        assert_eq!(tiny.len(), 3);
        assert!(tiny.iter().all(|x| x.height <= 48));
    }
}
