//! Live mode: many real player sessions through steering and edges, run
//! concurrently, each failure recorded without stopping the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vod::steering::Format;
use vod::trace::NetworkTrace;

use crate::abr::{AbrConfig, AbrKind};
use crate::player::{play_session, SessionSettings};
use crate::report::{table, QoeMeans, SessionQoe};

pub use crate::player::{LiveSession, SessionError};

/// Default timeout of each network operation.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to play and how.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Base URL of steering, e.g. `http://127.0.0.1:8090`.
    pub steering: String,
    /// Title id.
    pub title: String,
    /// Number of sessions.
    pub sessions: usize,
    /// Shape each session's downloads to this trace (looped).
    pub network: Option<NetworkTrace>,
    /// One trace per session, cycled (session i gets `networks[i % len]`); when
    /// non-empty it replaces `network`.
    pub networks: Vec<NetworkTrace>,
    /// Client IPs sent as `X-Forwarded-For`, cycled over sessions; none sends no header.
    pub client_ips: Vec<String>,
    /// Manifest format (only HLS is played).
    pub format: Format,
    /// ABR rule.
    pub abr: AbrKind,
    /// Sessions in flight at once.
    pub concurrency: usize,
    /// Maximum buffer.
    pub max_buffer: Duration,
    /// Timeout of each request (steering, playlist, segment).
    pub request_timeout: Duration,
    /// Time scale: media plays this many times faster than real time and the
    /// trace is compressed to match; figures are reported in media time.
    pub speed: f64,
}

impl LiveConfig {
    /// Defaults for everything but the target: one session, HLS, throughput ABR, 25 s buffer.
    pub fn new(steering: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            steering: steering.into(),
            title: title.into(),
            sessions: 1,
            network: None,
            networks: Vec::new(),
            client_ips: Vec::new(),
            format: Format::Hls,
            abr: AbrKind::Throughput,
            concurrency: 1,
            max_buffer: Duration::from_secs(25),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            speed: 1.0,
        }
    }
}

/// A run that could not start at all (a session's failure is in its report instead).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("--steering {url:?} is not a usable URL: {reason}")]
    SteeringUrl { url: String, reason: String },
    #[error("the live player plays HLS only (--format hls)")]
    UnsupportedFormat,
    #[error("--concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("--speed must be a finite number > 0, got {0}")]
    BadSpeed(f64),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The result of a live run: means over successful sessions, bytes per edge, each session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveReport {
    pub title: String,
    pub abr: AbrKind,
    pub sessions: usize,
    pub failed: usize,
    /// Unweighted means over sessions that completed.
    #[serde(flatten)]
    pub means: QoeMeans,
    /// Startup time percentiles over completed sessions (nearest rank), media time.
    pub startup_ms_p50: f64,
    pub startup_ms_p90: f64,
    pub startup_ms_p99: f64,
    /// Playback speed of the run (`--speed`).
    pub speed: f64,
    pub total_bytes: u64,
    /// Moves to the next edge of a ranked list after an error or a timeout, over all sessions.
    pub failovers: u64,
    /// Bytes received per edge name, over all sessions.
    pub bytes_by_edge: BTreeMap<String, u64>,
    pub per_session: Vec<LiveSession>,
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl LiveReport {
    fn from_sessions(config: &LiveConfig, per_session: Vec<LiveSession>) -> Self {
        let ok: Vec<&SessionQoe> = per_session.iter().filter(|s| s.error.is_none()).map(|s| &s.qoe).collect();
        let mut bytes_by_edge = BTreeMap::new();
        for s in &per_session {
            for (edge, bytes) in &s.bytes_by_edge {
                *bytes_by_edge.entry(edge.clone()).or_insert(0) += bytes;
            }
        }
        let mut startups: Vec<f64> = ok.iter().map(|q| q.startup_ms).collect();
        startups.sort_by(f64::total_cmp);
        Self {
            title: config.title.clone(),
            abr: config.abr,
            sessions: per_session.len(),
            failed: per_session.len() - ok.len(),
            means: QoeMeans::of(ok.iter().copied()),
            startup_ms_p50: percentile(&startups, 50.0),
            startup_ms_p90: percentile(&startups, 90.0),
            startup_ms_p99: percentile(&startups, 99.0),
            speed: config.speed,
            total_bytes: per_session.iter().map(|s| s.bytes).sum(),
            failovers: per_session.iter().map(|s| u64::from(s.failovers)).sum(),
            bytes_by_edge,
            per_session,
        }
    }

    /// A readable table: one row per session, then the means and bytes per edge.
    pub fn to_table(&self) -> String {
        let dash = || "-".to_owned();
        let rows: Vec<Vec<String>> = self
            .per_session
            .iter()
            .map(|s| {
                let q = &s.qoe;
                vec![
                    s.index.to_string(),
                    s.client_ip.clone().unwrap_or_else(dash),
                    s.edge.clone().unwrap_or_else(dash),
                    format!("{:.0}", q.startup_ms),
                    format!("{:.1}", q.avg_bitrate_kbps),
                    format!("{:.5}", q.rebuffer_ratio),
                    q.rebuffer_events.to_string(),
                    q.switches.to_string(),
                    s.bytes.to_string(),
                    q.segments.to_string(),
                    s.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut out = table(
            &[
                "session",
                "client_ip",
                "edge",
                "startup_ms",
                "avg_kbps",
                "rebuf_ratio",
                "rebuf_events",
                "switches",
                "bytes",
                "segments",
                "error",
            ],
            &rows,
        );
        let m = &self.means;
        out.push_str(&format!(
            "\n{} sessions ({} failed), {} ABR: startup {:.0} ms, {:.1} kbps, rebuffer ratio {:.5}, \
             {:.2} rebuffer events, {:.2} switches per session, {} bytes\n",
            self.sessions,
            self.failed,
            self.abr,
            m.startup_ms,
            m.avg_bitrate_kbps,
            m.rebuffer_ratio,
            m.rebuffer_events,
            m.switches,
            self.total_bytes
        ));
        out.push_str(&format!(
            "startup ms p50 {:.0}, p90 {:.0}, p99 {:.0} (speed ×{}), {} failovers\n",
            self.startup_ms_p50, self.startup_ms_p90, self.startup_ms_p99, self.speed, self.failovers
        ));
        for (edge, bytes) in &self.bytes_by_edge {
            out.push_str(&format!("  {edge}: {bytes} bytes\n"));
        }
        out
    }
}

/// Run every session of `config` and report; only a bad configuration is an error.
pub async fn run(config: LiveConfig) -> Result<LiveReport, LiveError> {
    let steering = Url::parse(&config.steering)
        .map_err(|e| LiveError::SteeringUrl { url: config.steering.clone(), reason: e.to_string() })?;
    if steering.cannot_be_a_base() || !matches!(steering.scheme(), "http" | "https") {
        return Err(LiveError::SteeringUrl { url: config.steering.clone(), reason: "need an http:// URL".into() });
    }
    if config.format != Format::Hls {
        return Err(LiveError::UnsupportedFormat);
    }
    if config.concurrency == 0 && config.sessions > 0 {
        return Err(LiveError::ZeroConcurrency);
    }
    if !(config.speed.is_finite() && config.speed > 0.0) {
        return Err(LiveError::BadSpeed(config.speed));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(config.request_timeout)
        .read_timeout(config.request_timeout)
        // Players talk to edges directly; a proxy from the environment would skew every figure.
        .no_proxy()
        .build()?;
    let settings = Arc::new(SessionSettings {
        steering,
        title: config.title.clone(),
        format: config.format,
        abr: config.abr,
        abr_config: AbrConfig { max_buffer_ms: config.max_buffer.as_secs_f64() * 1000.0, ..AbrConfig::default() },
        networks: if config.networks.is_empty() {
            config.network.iter().cloned().collect()
        } else {
            config.networks.clone()
        },
        request_timeout: config.request_timeout,
        speed: config.speed,
    });
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for index in 0..config.sessions {
        let client_ip =
            (!config.client_ips.is_empty()).then(|| config.client_ips[index % config.client_ips.len()].clone());
        let (client, settings, permits) = (client.clone(), Arc::clone(&settings), Arc::clone(&permits));
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await;
            play_session(&client, &settings, index, client_ip).await
        });
    }
    let mut per_session: Vec<Option<LiveSession>> = vec![None; config.sessions];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(s) => {
                let i = s.index;
                per_session[i] = Some(s);
            }
            Err(e) => tracing::error!(error = %e, "session task died"),
        }
    }
    let per_session = per_session
        .into_iter()
        .enumerate()
        .map(|(index, s)| {
            s.unwrap_or_else(|| LiveSession {
                index,
                client_ip: None,
                edge: None,
                url: None,
                bytes: 0,
                bytes_by_edge: BTreeMap::new(),
                failovers: 0,
                audio_segments: 0,
                qoe: SessionQoe::from_playback(0.0, 0.0, 0, &[]),
                error: Some("session task panicked".into()),
            })
        })
        .collect();
    Ok(LiveReport::from_sessions(&config, per_session))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
    }
}
