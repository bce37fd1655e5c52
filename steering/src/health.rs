//! Edge health: a pure state machine fed by probe outcomes, and the
//! background task that probes `GET {edge}/health`.
//!
//! An edge starts `Unknown` and is treated as up until a probe says
//! otherwise, so a freshly started steering serves players at once. It goes
//! `Down` after `failures_to_down` consecutive failed probes (error, timeout
//! or non-2xx) and `Up` again after one success.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::registry::Registry;

/// What steering believes about an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not concluded yet; treated as up.
    Unknown,
    /// Last probe succeeded.
    Up,
    /// Enough consecutive probes failed.
    Down,
}

impl HealthState {
    /// Lowercase name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }

    /// Whether players may be sent to an edge in this state.
    pub fn is_usable(self) -> bool {
        !matches!(self, HealthState::Down)
    }
}

/// Result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// 2xx answer within the timeout.
    Ok,
    /// Anything else, with a reason for operators.
    Failed(String),
}

/// Health record of one edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeHealth {
    /// Current belief.
    pub state: HealthState,
    /// Failed probes since the last success.
    pub consecutive_failures: u32,
    /// When the last probe finished (Unix ms), if any.
    pub last_probe_unix_ms: Option<u64>,
    /// Why the last failed probe failed (cleared by a success).
    pub last_error: Option<String>,
}

impl Default for EdgeHealth {
    fn default() -> Self {
        Self { state: HealthState::Unknown, consecutive_failures: 0, last_probe_unix_ms: None, last_error: None }
    }
}

impl EdgeHealth {
    /// Applies one probe outcome; returns the new state if it changed.
    pub fn record(&mut self, outcome: ProbeOutcome, now_unix_ms: u64, failures_to_down: u32) -> Option<HealthState> {
        let before = self.state;
        self.last_probe_unix_ms = Some(now_unix_ms);
        match outcome {
            ProbeOutcome::Ok => {
                self.consecutive_failures = 0;
                self.last_error = None;
                self.state = HealthState::Up;
            }
            ProbeOutcome::Failed(reason) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(reason);
                if self.consecutive_failures >= failures_to_down.max(1) {
                    self.state = HealthState::Down;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Settings of the probe task.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Time between two rounds.
    pub interval: Duration,
    /// Per-probe timeout.
    pub timeout: Duration,
}

/// Probes one URL once.
async fn probe(client: &reqwest::Client, url: &str) -> ProbeOutcome {
    match client.get(url).send().await {
        Ok(resp) if resp.status().is_success() => ProbeOutcome::Ok,
        Ok(resp) => ProbeOutcome::Failed(format!("health answered {}", resp.status())),
        Err(e) if e.is_timeout() => ProbeOutcome::Failed("health probe timed out".to_owned()),
        Err(e) if e.is_connect() => ProbeOutcome::Failed("cannot connect".to_owned()),
        Err(e) => ProbeOutcome::Failed(format!("health probe failed: {e}")),
    }
}

/// Builds the HTTP client used for probes.
pub fn probe_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // Probes reuse kept-alive connections: a thousand edges probed every
        // second would otherwise cost steering a thousand TCP handshakes a
        // second. A dead edge still fails at once: its connection is reset and
        // the reconnect is refused or times out.
        .pool_idle_timeout(Duration::from_secs(30))
        // Edges are probed directly, never through an environment proxy.
        .no_proxy()
        .build()
}

/// Probes in flight at once.
const PROBE_CONCURRENCY: usize = 128;

/// Starts probing every edge of `registry` each `interval` (first round at once) and
/// records the outcomes there; each round also re-evaluates heartbeat freshness and
/// breakers. Edges that register later are probed from the next round. The task ends
/// when `stop` fires or its sender is dropped.
pub fn spawn_prober(
    client: reqwest::Client,
    settings: ProbeSettings,
    registry: watch::Sender<Registry>,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let round = async {
                ticker.tick().await;
                let targets = registry.borrow().probe_targets();
                // At most PROBE_CONCURRENCY at once: a thousand simultaneous connects overflow accept
                // queues (ours and the edges') and read as timeouts.
                // Owned futures, collected first: the spawned task must not hold a borrowing iterator.
                let probes: Vec<_> = targets
                    .iter()
                    .map(|(_, u)| {
                        let (client, url) = (client.clone(), u.clone());
                        async move { probe(&client, &url).await }
                    })
                    .collect();
                let outcomes: Vec<ProbeOutcome> =
                    futures::stream::iter(probes).buffered(PROBE_CONCURRENCY).collect().await;
                let now = unix_now_ms();
                registry.send_modify(|reg| {
                    for ((name, _), outcome) in targets.iter().zip(outcomes) {
                        let reason = match &outcome {
                            ProbeOutcome::Failed(r) => r.clone(),
                            ProbeOutcome::Ok => String::new(),
                        };
                        match reg.record_probe(name, outcome, now) {
                            Some(HealthState::Down) => tracing::warn!(edge = %name, %reason, "edge down"),
                            Some(s) => tracing::info!(edge = %name, state = s.as_str(), "edge health"),
                            None => {}
                        }
                    }
                    reg.tick(now);
                });
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                () = round => {}
            }
        }
        tracing::debug!("health prober stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> ProbeOutcome {
        ProbeOutcome::Failed("boom".into())
    }

    #[test]
    fn unknown_is_usable_and_down_needs_consecutive_failures() {
        let mut h = EdgeHealth::default();
        assert!(h.state.is_usable(), "unprobed edges are treated as up");
        assert_eq!(h.record(fail(), 1, 2), None, "one failure is not enough");
        assert!(h.state.is_usable());
        assert_eq!(h.record(ProbeOutcome::Ok, 2, 2), Some(HealthState::Up));
        assert_eq!(h.record(fail(), 3, 2), None);
        assert_eq!(h.consecutive_failures, 1, "a success resets the count");
        assert_eq!(h.record(fail(), 4, 2), Some(HealthState::Down));
        assert!(!h.state.is_usable());
        assert_eq!(h.last_error.as_deref(), Some("boom"));
        assert_eq!(h.record(fail(), 5, 2), None);
        assert_eq!(h.record(ProbeOutcome::Ok, 6, 2), Some(HealthState::Up), "one success brings it back");
        assert_eq!((h.consecutive_failures, h.last_error.clone(), h.last_probe_unix_ms), (0, None, Some(6)));
    }

    #[test]
    fn threshold_of_one_downs_at_once() {
        let mut h = EdgeHealth::default();
        assert_eq!(h.record(fail(), 1, 1), Some(HealthState::Down));
        let mut h = EdgeHealth::default();
        assert_eq!(h.record(fail(), 1, 0), Some(HealthState::Down), "0 behaves like 1");
    }
}
