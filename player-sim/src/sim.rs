//! Trace-driven simulation on a virtual clock, following Sabre's session model:
//! the first segment is fetched at the rung the rule picks knowing nothing
//! (the lowest, for every online rule; the offline optimum may pick another)
//! and playback starts when it arrives; then each step waits for buffer room, asks the ABR, downloads
//! (with abandonment checks), and plays out the buffer for the time spent.

use std::collections::VecDeque;

use serde::Serialize;
use vod::trace::{Movie, NetworkTrace};

use crate::abr::{Abr, AbrConfig, AbrContext, AbrKind, DownloadProgress, DownloadReport, Planned};
use crate::estimate::Ewma;
use crate::network::NetworkModel;
use crate::report::{table, PlayedSegment, QoeMeans, SessionQoe};

/// Settings of a simulation run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// ABR rule.
    pub abr: AbrKind,
    /// Buffer size and BOLA tuning.
    pub abr_config: AbrConfig,
    /// Let the ABR abandon downloads in flight (Sabre does by default).
    pub abandon: bool,
    /// Buffer cell of the offline optimum's state merge (`crate::optimal`).
    pub optimal_grid_ms: f64,
}

impl SimConfig {
    /// Sabre's defaults with the given rule: 25 s buffer, gamma·p = 5, abandonment on.
    pub fn new(abr: AbrKind) -> Self {
        Self { abr, abr_config: AbrConfig::default(), abandon: true, optimal_grid_ms: crate::optimal::DEFAULT_GRID_MS }
    }
}

/// The playout buffer in Sabre's bookkeeping: whole segments queued, the
/// first one possibly partly played (`played_of_first`).
#[derive(Debug)]
struct Playout {
    segment_ms: f64,
    queued: VecDeque<usize>,
    played_of_first: f64,
    stall_ms: f64,
    rebuffer_events: u64,
}

impl Playout {
    fn new(segment_ms: f64) -> Self {
        Self { segment_ms, queued: VecDeque::new(), played_of_first: 0.0, stall_ms: 0.0, rebuffer_events: 0 }
    }

    fn level_ms(&self) -> f64 {
        self.segment_ms * self.queued.len() as f64 - self.played_of_first
    }

    /// Play for `time` ms; whatever the buffer cannot cover is stall.
    fn play(&mut self, mut time: f64) {
        if self.queued.is_empty() {
            // Already stalled: the event was counted when the buffer ran dry.
            self.stall_ms += time;
            return;
        }
        if self.played_of_first > 0.0 {
            if time + self.played_of_first < self.segment_ms {
                self.played_of_first += time;
                return;
            }
            time -= self.segment_ms - self.played_of_first;
            self.queued.pop_front();
            self.played_of_first = 0.0;
        }
        while time > 0.0 && !self.queued.is_empty() {
            if time >= self.segment_ms {
                self.queued.pop_front();
                time -= self.segment_ms;
            } else {
                self.played_of_first = time;
                time = 0.0;
            }
        }
        if time > 0.0 {
            self.stall_ms += time;
            self.rebuffer_events += 1;
        }
    }
}

/// One simulated session: its QoE and the rung of every segment, in play order.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOutcome {
    pub qoe: SessionQoe,
    pub rungs: Vec<usize>,
}

/// Simulate one session of `movie` over `trace`.
pub fn simulate(trace: &NetworkTrace, movie: &Movie, config: &SimConfig) -> SimOutcome {
    if config.abr.is_offline() {
        let plan = crate::optimal::plan(trace, movie, config.abr_config.max_buffer_ms, config.optimal_grid_ms);
        // The plan never abandons: it was computed without abandonment.
        return simulate_with(trace, movie, &SimConfig { abandon: false, ..*config }, Box::new(Planned::new(plan)));
    }
    simulate_with(trace, movie, config, config.abr.build(&config.abr_config))
}

/// Simulate one session of `movie` over `trace` with a rule built by the
/// caller (e.g. a tuned variant); `config.abr` is not used.
pub fn simulate_with(trace: &NetworkTrace, movie: &Movie, config: &SimConfig, mut abr: Box<dyn Abr>) -> SimOutcome {
    let seg_ms = movie.segment_duration_ms as f64;
    let bitrates = movie.bitrates_kbps.as_slice();
    let count = movie.segment_count();
    let max_buffer_ms = config.abr_config.max_buffer_ms;
    let abandon = config.abandon;
    let mut network = NetworkModel::new(trace);
    let mut estimator = Ewma::new(seg_ms);
    let mut playout = Playout::new(seg_ms);
    let mut played = Vec::with_capacity(count);
    let mut rungs = Vec::with_capacity(count);

    let context = |index: usize, level: f64, estimator: &Ewma| AbrContext {
        segment_index: index,
        segment_count: count,
        segment_duration_ms: seg_ms,
        buffer_level_ms: level,
        bitrates_kbps: bitrates,
        estimate: estimator.estimate(),
        next_sizes_bits: movie.segment_sizes_bits.get(index).map(Vec::as_slice),
        all_sizes_bits: Some(&movie.segment_sizes_bits),
    };

    // First segment: nothing known, no abandonment; playback starts on arrival.
    let first = abr.choose(&context(0, 0.0, &estimator)).rung;
    let dl = network.download(movie.segment_sizes_bits[0][first] as f64, first, None);
    let startup_ms = dl.time_ms;
    let transfer_ms = dl.time_ms - dl.time_to_first_bit_ms;
    estimator.push(transfer_ms, dl.downloaded_bits / transfer_ms, dl.time_to_first_bit_ms);
    playout.queued.push_back(first);
    abr.report_download(&DownloadReport {
        segment_index: 0,
        rung: first,
        size_bits: dl.size_bits,
        downloaded_bits: dl.downloaded_bits,
        time_ms: dl.time_ms,
        time_to_first_bit_ms: dl.time_to_first_bit_ms,
        abandoned_to: None,
        buffer_level_ms: playout.level_ms(),
    });
    rungs.push(first);
    played.push(PlayedSegment { bitrate_kbps: bitrates[first], duration_ms: seg_ms });

    let mut next = 1;
    while next < count {
        // Wait for room in the buffer.
        let full_delay = playout.level_ms() + seg_ms - max_buffer_ms;
        if full_delay > 0.0 {
            playout.play(full_delay);
            network.delay(full_delay);
            abr.report_delay(full_delay);
        }
        let ctx = context(next, playout.level_ms(), &estimator);
        let decision = abr.choose(&ctx);
        let rung = decision.rung.min(bitrates.len() - 1);
        if decision.delay_ms > 0.0 {
            playout.play(decision.delay_ms);
            network.delay(decision.delay_ms);
        }
        let level_at_start = playout.level_ms();
        let ctx = AbrContext { buffer_level_ms: level_at_start, ..ctx };
        let size = movie.segment_sizes_bits[next][rung] as f64;
        let dl = if abandon {
            let mut check = |p: &DownloadProgress| abr.check_abandon(&ctx, p, (level_at_start - p.elapsed_ms).max(0.0));
            network.download(size, rung, Some(&mut check))
        } else {
            network.download(size, rung, None)
        };
        playout.play(dl.time_ms);
        if dl.abandoned_to.is_none() {
            playout.queued.push_back(rung);
            rungs.push(rung);
            played.push(PlayedSegment { bitrate_kbps: bitrates[rung], duration_ms: seg_ms });
            next += 1;
        }
        abr.report_download(&DownloadReport {
            segment_index: next - usize::from(dl.abandoned_to.is_none()),
            rung,
            size_bits: dl.size_bits,
            downloaded_bits: dl.downloaded_bits,
            time_ms: dl.time_ms,
            time_to_first_bit_ms: dl.time_to_first_bit_ms,
            abandoned_to: dl.abandoned_to,
            buffer_level_ms: playout.level_ms(),
        });
        if dl.abandoned_to.is_none() {
            let transfer_ms = dl.time_ms - dl.time_to_first_bit_ms;
            estimator.push(transfer_ms, dl.downloaded_bits / transfer_ms, dl.time_to_first_bit_ms);
        }
        // An abandoned download teaches the estimator nothing (as in Sabre); the
        // same segment is decided again on the next turn.
    }
    // The rest of the buffer plays out without stalls. (Sabre plays it out
    // step by step and can count a rounding residue of ~1e-12 ms as one more
    // rebuffer event; computing it directly does not.)
    let qoe = SessionQoe::from_playback(startup_ms, playout.stall_ms, playout.rebuffer_events, &played);
    SimOutcome { qoe, rungs }
}

/// One simulated session with the trace it ran on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimSession {
    /// Trace name (file name).
    pub trace: String,
    #[serde(flatten)]
    pub qoe: SessionQoe,
}

/// The result of `player-sim sim`: means over sessions, then each session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub abr: AbrKind,
    pub sessions: usize,
    #[serde(flatten)]
    pub means: QoeMeans,
    pub max_buffer_ms: f64,
    pub per_session: Vec<SimSession>,
}

/// Simulate one session per named trace, in the order given.
pub fn simulate_all(traces: &[(String, NetworkTrace)], movie: &Movie, config: &SimConfig) -> SimReport {
    let per_session: Vec<SimSession> = traces
        .iter()
        .map(|(name, trace)| SimSession { trace: name.clone(), qoe: simulate(trace, movie, config).qoe })
        .collect();
    SimReport {
        abr: config.abr,
        sessions: per_session.len(),
        means: QoeMeans::of(per_session.iter().map(|s| &s.qoe)),
        max_buffer_ms: config.abr_config.max_buffer_ms,
        per_session,
    }
}

impl SimReport {
    /// One CSV row per session, with a header.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "trace,abr,avg_bitrate_kbps,rebuffer_ratio,rebuffer_events,switches,startup_ms,stall_ms,content_ms,qoe\n",
        );
        for s in &self.per_session {
            let q = &s.qoe;
            // Trace names are file names; quote them so a comma cannot shift the columns.
            out.push_str(&format!(
                "\"{}\",{},{},{},{},{},{},{},{},{}\n",
                s.trace.replace('"', "\"\""),
                self.abr,
                q.avg_bitrate_kbps,
                q.rebuffer_ratio,
                q.rebuffer_events,
                q.switches,
                q.startup_ms,
                q.stall_ms,
                q.content_ms,
                q.qoe
            ));
        }
        out
    }

    /// A readable table: one row per session and a row of means.
    pub fn to_table(&self) -> String {
        let row = |name: &str, kbps: f64, ratio: f64, events: String, switches: String, startup: f64, qoe: f64| {
            vec![
                name.to_owned(),
                format!("{kbps:.1}"),
                format!("{ratio:.5}"),
                events,
                switches,
                format!("{startup:.0}"),
                format!("{qoe:.1}"),
            ]
        };
        let mut rows: Vec<Vec<String>> = self
            .per_session
            .iter()
            .map(|s| {
                let q = &s.qoe;
                row(
                    &s.trace,
                    q.avg_bitrate_kbps,
                    q.rebuffer_ratio,
                    q.rebuffer_events.to_string(),
                    q.switches.to_string(),
                    q.startup_ms,
                    q.qoe,
                )
            })
            .collect();
        let m = &self.means;
        rows.push(row(
            &format!("mean of {} ({})", self.sessions, self.abr),
            m.avg_bitrate_kbps,
            m.rebuffer_ratio,
            format!("{:.2}", m.rebuffer_events),
            format!("{:.2}", m.switches),
            m.startup_ms,
            m.qoe,
        ));
        table(&["trace", "avg_kbps", "rebuf_ratio", "rebuf_events", "switches", "startup_ms", "qoe"], &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playout_counts_one_event_per_dry_spell() {
        let mut p = Playout::new(1000.0);
        p.queued.extend([0, 0]);
        p.play(500.0);
        assert_eq!(p.level_ms(), 1500.0);
        p.play(2000.0);
        assert_eq!(p.stall_ms, 500.0);
        assert_eq!(p.rebuffer_events, 1);
        p.play(300.0);
        assert_eq!(p.stall_ms, 800.0);
        assert_eq!(p.rebuffer_events, 1, "still the same stall");
        p.queued.push_back(1);
        p.play(1500.0);
        assert_eq!(p.rebuffer_events, 2);
    }
}
