//! The live player's buffer in wall-clock time: it drains while playing, a
//! stall starts when it runs dry, playback starts with the first segment.
//! Pure: the caller passes `now` (ms since the session started).

use crate::report::{PlayedSegment, SessionQoe};

/// Buffer level, stalls and what was played, over wall-clock time.
#[derive(Debug, Clone, Default)]
pub struct Playback {
    started_at_ms: Option<f64>,
    last_update_ms: f64,
    buffer_ms: f64,
    stall_ms: f64,
    stalled: bool,
    rebuffer_events: u64,
    played: Vec<PlayedSegment>,
}

impl Playback {
    /// Nothing buffered, not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Play (or stall) up to `now_ms`.
    pub fn advance(&mut self, now_ms: f64) {
        let elapsed = (now_ms - self.last_update_ms).max(0.0);
        self.last_update_ms = self.last_update_ms.max(now_ms);
        if self.started_at_ms.is_none() || elapsed == 0.0 {
            return;
        }
        if elapsed <= self.buffer_ms {
            self.buffer_ms -= elapsed;
        } else {
            self.stall_ms += elapsed - self.buffer_ms;
            self.buffer_ms = 0.0;
            if !self.stalled {
                self.stalled = true;
                self.rebuffer_events += 1;
            }
        }
    }

    /// Media buffered ahead of the playhead at `now_ms`.
    pub fn level_ms(&mut self, now_ms: f64) -> f64 {
        self.advance(now_ms);
        self.buffer_ms
    }

    /// True once the first segment arrived.
    pub fn started(&self) -> bool {
        self.started_at_ms.is_some()
    }

    /// A segment arrived at `now_ms`.
    pub fn push(&mut self, now_ms: f64, segment: PlayedSegment) {
        self.advance(now_ms);
        if self.started_at_ms.is_none() {
            self.started_at_ms = Some(now_ms);
        }
        self.buffer_ms += segment.duration_ms;
        self.stalled = false;
        self.played.push(segment);
    }

    /// QoE once everything was downloaded: the rest of the buffer plays out without stalls,
    /// so there is no need to wait for it.
    pub fn finish(&self) -> SessionQoe {
        SessionQoe::from_playback(self.started_at_ms.unwrap_or(0.0), self.stall_ms, self.rebuffer_events, &self.played)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(ms: f64) -> PlayedSegment {
        PlayedSegment { bitrate_kbps: 500.0, duration_ms: ms }
    }

    #[test]
    fn startup_then_drain_then_stall() {
        let mut p = Playback::new();
        assert_eq!(p.level_ms(400.0), 0.0, "nothing plays before the first segment");
        p.push(500.0, seg(2000.0));
        assert_eq!(p.level_ms(1500.0), 1000.0);
        p.push(2000.0, seg(2000.0));
        assert_eq!(p.level_ms(2000.0), 2500.0);
        // Runs dry at 4500, next segment at 5000: one stall of 500 ms.
        p.push(5000.0, seg(2000.0));
        let q = p.finish();
        assert_eq!(q.startup_ms, 500.0);
        assert_eq!(q.stall_ms, 500.0);
        assert_eq!(q.rebuffer_events, 1);
        assert_eq!(q.content_ms, 6000.0);
    }

    #[test]
    fn one_stall_is_one_event_however_often_it_is_observed() {
        let mut p = Playback::new();
        p.push(0.0, seg(1000.0));
        for t in [1500.0, 2000.0, 2500.0] {
            assert_eq!(p.level_ms(t), 0.0);
        }
        p.push(3000.0, seg(1000.0));
        let q = p.finish();
        assert_eq!(q.rebuffer_events, 1);
        assert_eq!(q.stall_ms, 2000.0);
    }

    #[test]
    fn arriving_exactly_when_empty_is_not_a_stall() {
        let mut p = Playback::new();
        p.push(0.0, seg(1000.0));
        p.push(1000.0, seg(1000.0));
        assert_eq!(p.finish().rebuffer_events, 0);
    }
}
