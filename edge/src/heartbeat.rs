//! Heartbeats to steering: every `heartbeat_interval_ms` the edge posts its
//! health, load (egress bits/s, open connections), capacity, drain state and
//! the titles it holds to `{steering}/v1/heartbeat`. Steering marks an edge
//! out when heartbeats stop (2.5 s by default), so a dead edge loses its
//! players within 3 s; a graceful stop sends a last heartbeat saying
//! `drained` so steering stops sending players at once.
//!
//! An enrolled edge (`edge_secret`) signs each heartbeat (`vod::edge_auth`)
//! and takes the URL-signing keys in steering's answer as the keys it
//! accepts from then on, so a key rotation on steering reaches it within a
//! heartbeat.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use vod::steering::Heartbeat;

use crate::listener::ConnectionGauge;
use crate::server::EdgeState;

/// Where and how to send heartbeats.
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    /// `{steering}/v1/heartbeat`.
    pub endpoint: String,
    /// Bearer token steering expects.
    pub token: Option<String>,
    /// Signs heartbeats as an enrolled edge.
    pub signer: Option<vod::edge_auth::EdgeSigner>,
    /// Time between two heartbeats.
    pub interval: Duration,
    /// Base URL players reach this edge at.
    pub public_url: String,
    /// Site, for registration with a steering that was not configured with this edge.
    pub site: Option<String>,
    /// Egress capacity, bits/s (0: unknown).
    pub max_load_bps: u64,
    /// Client prefixes to report: static ones and those learned over BGP.
    pub prefixes: crate::bgp::ClientPrefixes,
}

/// Egress rate between two samples of the served-bytes counter.
#[derive(Debug, Clone, Copy)]
pub struct LoadMeter {
    last_bytes: u64,
    last_at: Instant,
}

impl LoadMeter {
    /// Starts measuring from `bytes` served so far at `now`.
    pub fn new(bytes: u64, now: Instant) -> Self {
        Self { last_bytes: bytes, last_at: now }
    }

    /// Bits/s served since the previous sample.
    pub fn sample(&mut self, bytes: u64, now: Instant) -> u64 {
        let secs = now.saturating_duration_since(self.last_at).as_secs_f64();
        let delta = bytes.saturating_sub(self.last_bytes);
        self.last_bytes = bytes;
        self.last_at = now;
        if secs <= 0.0 {
            return 0;
        }
        (delta as f64 * 8.0 / secs) as u64
    }
}

/// Titles with at least one object in the RAM or disk tier, sorted.
pub fn titles_held(state: &EdgeState) -> Vec<String> {
    let mut titles: BTreeSet<String> = state.filler.ram().keys().iter().map(|k| k.title().to_string()).collect();
    if let Some(disk) = state.filler.disk() {
        titles.extend(disk.titles().into_iter().map(|t| t.to_string()));
    }
    titles.into_iter().collect()
}

/// The heartbeat describing `state` now.
pub fn describe(state: &EdgeState, settings: &HeartbeatSettings, load_bps: u64, connections: u64) -> Heartbeat {
    let ram = state.filler.ram().capacity_bytes();
    let disk = state.filler.disk().map_or(0, |d| d.stats().capacity_bytes);
    let mut hb = Heartbeat::new(state.name.clone());
    hb.load_bps = load_bps;
    hb.connections = connections;
    hb.capacity_bytes = ram.saturating_add(disk);
    hb.max_load_bps = settings.max_load_bps;
    hb.drained = state.drained.load(Ordering::Relaxed);
    hb.titles = titles_held(state);
    hb.url = Some(settings.public_url.clone());
    hb.site.clone_from(&settings.site);
    hb.prefixes = settings.prefixes.current();
    hb
}

/// Unix seconds now.
fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Adds the signature headers of `signer` (if any) to a request of `method` to `url` with `body`.
pub fn sign_request(
    mut req: reqwest::RequestBuilder,
    signer: Option<&vod::edge_auth::EdgeSigner>,
    method: &str,
    url: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let Some(signer) = signer else { return req };
    let path = match reqwest::Url::parse(url) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        },
        Err(_) => return req,
    };
    for (k, v) in signer.headers(method, &path, body, unix_now_s()) {
        req = req.header(k, v);
    }
    req
}

async fn send(
    client: &reqwest::Client,
    settings: &HeartbeatSettings,
    hb: &Heartbeat,
) -> Result<vod::edge_auth::HeartbeatKeys, String> {
    let body = serde_json::to_vec(hb).map_err(|e| e.to_string())?;
    let mut req = client.post(&settings.endpoint).header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(t) = &settings.token {
        req = req.bearer_auth(t);
    }
    req = sign_request(req, settings.signer.as_ref(), "POST", &settings.endpoint, &body);
    let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        // Only the keys matter here; an answer without them (or unreadable) changes nothing.
        Ok(resp.json().await.unwrap_or_default())
    } else {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", body.trim()))
    }
}

/// Sends `hb` with its prefix digest, leaving the prefix list out when steering's
/// last answer said it holds that set (`holds`); when the answer shows it does
/// not (a restarted steering, another replica), sends the whole set at once.
/// `holds` follows steering's answers (None after a failure).
async fn beat(
    client: &reqwest::Client,
    settings: &HeartbeatSettings,
    mut hb: Heartbeat,
    holds: &mut Option<String>,
) -> Result<vod::edge_auth::HeartbeatKeys, String> {
    let digest = vod::steering::prefixes_digest(&hb.prefixes);
    hb.prefixes_sha256 = Some(digest.clone());
    let slim = holds.as_deref() == Some(digest.as_str());
    let full = if slim { std::mem::take(&mut hb.prefixes) } else { Vec::new() };
    let mut sent = send(client, settings, &hb).await;
    if slim && sent.as_ref().is_ok_and(|a| a.prefixes_sha256.as_deref() != Some(digest.as_str())) {
        hb.prefixes = full;
        sent = send(client, settings, &hb).await;
    }
    *holds = sent.as_ref().ok().and_then(|a| a.prefixes_sha256.clone());
    sent
}

/// Sends heartbeats until `stop` fires (or its sender is dropped), then one last one saying drained.
pub fn spawn(
    state: Arc<EdgeState>,
    settings: HeartbeatSettings,
    gauge: ConnectionGauge,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // A heartbeat older than the interval is worthless: never wait longer than that for one.
        let timeout = settings.interval.max(Duration::from_millis(200));
        let client = match reqwest::Client::builder().timeout(timeout).no_proxy().build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "heartbeats disabled: building the HTTP client failed");
                return;
            }
        };
        let mut meter = LoadMeter::new(state.metrics.bytes_served_and_fetched().0, Instant::now());
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        let mut holds: Option<String> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let load = meter.sample(state.metrics.bytes_served_and_fetched().0, Instant::now());
            let hb = describe(&state, &settings, load, gauge.open());
            // A slow steering must not delay the stop.
            let sent = tokio::select! {
                biased;
                _ = &mut stop => break,
                r = beat(&client, &settings, hb, &mut holds) => r,
            };
            if let (Ok(keys), Some(_)) = (&sent, &settings.signer) {
                apply_keys(&state, keys);
            }
            match sent {
                Ok(_) if failing => {
                    tracing::info!(steering = %settings.endpoint, "heartbeats accepted again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(steering = %settings.endpoint, error = %e, "heartbeat refused or lost");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat still failing"),
            }
        }
        let mut last = describe(&state, &settings, 0, gauge.open());
        last.drained = true;
        if let Err(e) = send(&client, &settings, &last).await {
            tracing::debug!(error = %e, "last (drained) heartbeat not delivered");
        }
    })
}

/// Takes steering's URL-signing keys as the accepted ones, when the answer carries a usable set.
fn apply_keys(state: &EdgeState, answer: &vod::edge_auth::HeartbeatKeys) {
    let Some(keys) = &answer.token_keys else { return };
    let usable: Vec<&vod::edge_auth::KeySpec> =
        keys.iter().filter(|k| !k.id.is_empty() && !k.id.contains('|') && !k.secret.is_empty()).collect();
    if usable.is_empty() {
        return;
    }
    let current: Vec<String> = state.token_keys().iter().map(|k| k.id.clone()).collect();
    let ids: Vec<String> = usable.iter().map(|k| k.id.clone()).collect();
    let new: Vec<vod::token::TokenKey> =
        usable.iter().map(|k| vod::token::TokenKey::new(k.id.clone(), k.secret.as_bytes().to_vec())).collect();
    if current != ids {
        tracing::info!(keys = ?ids, "URL-signing keys updated by steering");
    }
    // Replaced even when the ids match: a key id may come back with another secret.
    state.set_token_keys(new);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_bits_per_second_between_samples() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(1000, t0);
        assert_eq!(m.sample(1000 + 125_000, t0 + Duration::from_millis(500)), 2_000_000);
        assert_eq!(m.sample(1000 + 125_000, t0 + Duration::from_millis(1500)), 0);
        // A counter that went backwards (never, but) counts as no traffic.
        assert_eq!(m.sample(5, t0 + Duration::from_millis(2500)), 0);
        assert_eq!(m.sample(5, t0 + Duration::from_millis(2500)), 0);
    }
}
