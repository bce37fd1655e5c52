//! QoE of a session and means over many, computed the same way in both modes.

use serde::Serialize;

/// One played segment: its rung's bitrate and its duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayedSegment {
    /// Nominal bitrate of the rung it was fetched at.
    pub bitrate_kbps: f64,
    /// Media duration.
    pub duration_ms: f64,
}

/// Quality of experience of one session (Sabre's definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionQoe {
    /// Request of the first segment to its arrival (playback starts then).
    pub startup_ms: f64,
    /// Media played.
    pub content_ms: f64,
    /// Stall time after playback started.
    pub stall_ms: f64,
    /// Σ bitrate·duration / (startup + content + stall).
    pub avg_bitrate_kbps: f64,
    /// stall / (startup + content + stall).
    pub rebuffer_ratio: f64,
    /// Times the buffer ran dry after playback started.
    pub rebuffer_events: u64,
    /// Bitrate changes between consecutive segments.
    pub switches: u64,
    /// Segments played.
    pub segments: usize,
    /// Linear QoE (MPC, Pensieve): Σ bitrate (Mbit/s) − 4.3 · (startup + stall) (s) − Σ |Δ bitrate| (Mbit/s).
    pub qoe: f64,
}

impl SessionQoe {
    /// Compute from what was played, in play order.
    pub fn from_playback(startup_ms: f64, stall_ms: f64, rebuffer_events: u64, played: &[PlayedSegment]) -> Self {
        // fold from +0.0: an empty `sum()` of floats is -0.0, which would print as such.
        let content_ms = played.iter().fold(0.0, |acc, s| acc + s.duration_ms);
        let bit_ms = played.iter().fold(0.0, |acc, s| acc + s.bitrate_kbps * s.duration_ms);
        let total = startup_ms + content_ms + stall_ms;
        let switches = played.windows(2).filter(|w| w[0].bitrate_kbps != w[1].bitrate_kbps).count() as u64;
        let bitrate_sum = played.iter().fold(0.0, |acc, s| acc + s.bitrate_kbps) / 1000.0;
        let change_sum =
            played.windows(2).fold(0.0, |acc, w| acc + (w[1].bitrate_kbps - w[0].bitrate_kbps).abs()) / 1000.0;
        // Pensieve counts the wait for the first segment as rebuffering, and so does the offline optimum.
        let qoe = bitrate_sum - crate::abr::QOE_REBUFFER_PENALTY * (startup_ms + stall_ms) / 1000.0 - change_sum;
        let ratio = |x: f64| if total > 0.0 { x / total } else { 0.0 };
        Self {
            startup_ms,
            content_ms,
            stall_ms,
            avg_bitrate_kbps: ratio(bit_ms),
            rebuffer_ratio: ratio(stall_ms),
            rebuffer_events,
            switches,
            segments: played.len(),
            qoe,
        }
    }
}

/// Unweighted means of per-session QoE values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QoeMeans {
    pub avg_bitrate_kbps: f64,
    pub rebuffer_ratio: f64,
    pub rebuffer_events: f64,
    pub switches: f64,
    pub startup_ms: f64,
    pub stall_ms: f64,
    /// Mean linear QoE per session.
    pub qoe: f64,
}

impl QoeMeans {
    /// Means over `sessions`; all zero when there are none.
    pub fn of<'a>(sessions: impl IntoIterator<Item = &'a SessionQoe>) -> Self {
        let mut sum = QoeMeans::default();
        let mut n = 0usize;
        for s in sessions {
            n += 1;
            sum.avg_bitrate_kbps += s.avg_bitrate_kbps;
            sum.rebuffer_ratio += s.rebuffer_ratio;
            sum.rebuffer_events += s.rebuffer_events as f64;
            sum.switches += s.switches as f64;
            sum.startup_ms += s.startup_ms;
            sum.stall_ms += s.stall_ms;
            sum.qoe += s.qoe;
        }
        if n == 0 {
            return sum;
        }
        let k = n as f64;
        QoeMeans {
            avg_bitrate_kbps: sum.avg_bitrate_kbps / k,
            rebuffer_ratio: sum.rebuffer_ratio / k,
            rebuffer_events: sum.rebuffer_events / k,
            switches: sum.switches / k,
            startup_ms: sum.startup_ms / k,
            stall_ms: sum.stall_ms / k,
            qoe: sum.qoe / k,
        }
    }
}

/// How close a rule's linear QoE comes to the offline optimum's over the same sessions.
///
/// A ratio of QoE values means something only where the optimum's QoE is
/// positive: on traces with outages longer than the buffer even the optimum
/// stalls so long that its QoE is negative, and a ratio of two negatives
/// rewards the worse rule. Those sessions are left out of both figures and
/// counted in `sessions_left_out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ShareOfOptimum {
    /// Σ QoE / Σ optimum's QoE over the sessions counted (the figure the README quotes).
    pub ratio_of_sums: f64,
    /// Mean over the sessions counted of QoE / optimum's QoE (weighs short-QoE sessions as much as long ones).
    pub mean_of_ratios: f64,
    /// Sessions counted.
    pub sessions: usize,
    /// Sessions where the optimum's QoE is not positive.
    pub sessions_left_out: usize,
}

impl ShareOfOptimum {
    /// Pair `rule[i]` with `optimum[i]` (the same trace, in the same order).
    pub fn of(rule: &[SessionQoe], optimum: &[SessionQoe]) -> Self {
        let mut out = Self::default();
        let (mut sum, mut sum_opt, mut ratios) = (0.0, 0.0, 0.0);
        for (r, o) in rule.iter().zip(optimum) {
            if o.qoe > 0.0 {
                out.sessions += 1;
                sum += r.qoe;
                sum_opt += o.qoe;
                ratios += r.qoe / o.qoe;
            } else {
                out.sessions_left_out += 1;
            }
        }
        if out.sessions > 0 {
            out.ratio_of_sums = sum / sum_opt;
            out.mean_of_ratios = ratios / out.sessions as f64;
        }
        out
    }
}

/// A plain-text table: a header row and right-aligned columns after the first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(bitrate_kbps: f64) -> PlayedSegment {
        PlayedSegment { bitrate_kbps, duration_ms: 2000.0 }
    }

    #[test]
    fn qoe_follows_sabre_definitions() {
        let played = [seg(1000.0), seg(1000.0), seg(2000.0), seg(1000.0)];
        let q = SessionQoe::from_playback(1000.0, 1000.0, 1, &played);
        // T = 1000 + 8000 + 1000 = 10 s; bits·ms = 2000·(1000+1000+2000+1000) = 10⁷.
        assert!((q.avg_bitrate_kbps - 1000.0).abs() < 1e-9);
        assert!((q.rebuffer_ratio - 0.1).abs() < 1e-12);
        assert_eq!(q.switches, 2);
        assert_eq!(q.segments, 4);
        assert_eq!(q.content_ms, 8000.0);
    }

    #[test]
    fn means_are_unweighted() {
        let a = SessionQoe::from_playback(0.0, 0.0, 2, &[seg(100.0)]);
        let b = SessionQoe::from_playback(0.0, 0.0, 0, &[seg(300.0), seg(300.0), seg(300.0)]);
        let m = QoeMeans::of([&a, &b]);
        assert!((m.avg_bitrate_kbps - 200.0).abs() < 1e-9);
        assert_eq!(m.rebuffer_events, 1.0);
        assert_eq!(QoeMeans::of([]), QoeMeans::default());
    }

    #[test]
    fn share_of_optimum_skips_sessions_where_the_optimum_is_not_positive() {
        let q = |qoe: f64| SessionQoe { qoe, ..SessionQoe::from_playback(0.0, 0.0, 0, &[seg(1000.0)]) };
        let rule = [q(50.0), q(90.0), q(-300.0), q(-10.0)];
        let opt = [q(100.0), q(100.0), q(-200.0), q(0.0)];
        let s = ShareOfOptimum::of(&rule, &opt);
        assert_eq!((s.sessions, s.sessions_left_out), (2, 2));
        assert!((s.ratio_of_sums - 0.7).abs() < 1e-12, "{s:?}");
        assert!((s.mean_of_ratios - 0.7).abs() < 1e-12, "{s:?}");
        // The two figures differ when the sessions' QoE differ in size.
        let s = ShareOfOptimum::of(&[q(10.0), q(300.0)], &[q(100.0), q(300.0)]);
        assert!((s.ratio_of_sums - 310.0 / 400.0).abs() < 1e-12);
        assert!((s.mean_of_ratios - 0.55).abs() < 1e-12);
        assert_eq!(ShareOfOptimum::of(&[], &[]), ShareOfOptimum::default());
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["name", "kbps"], &[vec!["a".into(), "1".into()], vec!["long-name".into(), "1234".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[2].len()), "{t}");
    }
}
