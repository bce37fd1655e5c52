//! A circuit breaker per upstream, pure: `now` comes from the caller.
//!
//! Closed → after `failures_to_open` upstream failures in a row, open for
//! `cooldown`; then half-open: one request may try, a success closes the
//! breaker, a failure opens it for another cooldown.

use std::time::{Duration, Instant};

/// State of one upstream's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Consecutive-failure circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    /// A closed breaker that opens after `failures_to_open` failures in a row, for `cooldown`.
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            trial_in_flight: false,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to this upstream at `now` (claims the half-open trial).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.trial_in_flight => false,
            BreakerState::HalfOpen => {
                self.trial_in_flight = true;
                true
            }
        }
    }

    /// Records a success: the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.trial_in_flight = false;
    }

    /// Records an upstream failure at `now`.
    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.trial_in_flight = false;
        if self.open_until.is_some() || self.failures >= self.failures_to_open {
            self.open_until = Some(now + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(5));
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert!(b.allow(t0), "a success reset the count");
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_secs(4)));
        let later = t0 + Duration::from_secs(5);
        assert!(b.allow(later), "one trial when half-open");
        assert!(!b.allow(later), "only one");
        b.failure(later);
        assert_eq!(b.state(later + Duration::from_secs(1)), BreakerState::Open, "a failed trial reopens it");
        let again = later + Duration::from_secs(5);
        assert!(b.allow(again));
        b.success();
        assert_eq!(b.state(again), BreakerState::Closed);
    }
}
