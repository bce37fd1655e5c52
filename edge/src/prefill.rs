//! Prefill: pulls a fill plan's objects onto the disk tier, pinned, in plan
//! (priority) order, inside an off-peak window, at a capped rate.
//!
//! For each planned object: already on disk → pinned in place (so a restart
//! resumes where the last run stopped; the disk tier only ever indexes whole,
//! CRC-checked objects, so a fill cut short leaves nothing to serve); else
//! from a peer of the site the plan says holds it (asked with
//! `Cache-Control: only-if-cached`, so a peer that does not hold it answers
//! 504 instead of filling it from the origin); else from the upstreams in
//! order (parent, then origin). Objects a previous plan pinned and this one
//! does not list are unpinned, so eviction takes them when space is needed.
//! Progress goes to `/metrics` and `/admin/status`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vod::plan::EdgeFillPlan;
use vod::ObjectKey;

use crate::disk::Stored;
use crate::error::EdgeError;
use crate::fill::Filler;
pub use crate::prefill_rate::TokenBucket;
pub use crate::prefill_window::{system_clock, LocalClock, PrefillWindow};

/// What a prefill run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillReport {
    /// Objects fetched (from a peer or an upstream).
    pub fetched: u64,
    /// Of those, from a peer edge.
    pub from_peer: u64,
    /// Objects the disk already held (pinned in place).
    pub already_held: u64,
    /// Objects that failed (bad key, upstream error, refused write).
    pub failed: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Objects a previous plan pinned that this one dropped.
    pub unpinned: u64,
}

/// Where a prefill run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillState {
    Idle = 0,
    WaitingWindow = 1,
    Filling = 2,
    Done = 3,
}

impl PrefillState {
    /// Label in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PrefillState::Idle => "idle",
            PrefillState::WaitingWindow => "waiting-window",
            PrefillState::Filling => "filling",
            PrefillState::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => PrefillState::WaitingWindow,
            2 => PrefillState::Filling,
            3 => PrefillState::Done,
            _ => PrefillState::Idle,
        }
    }
}

/// Live progress counters, shared with `/metrics` and `/admin/status`.
#[derive(Debug, Default)]
pub struct PrefillProgress {
    state: AtomicU8,
    pub planned_objects: AtomicU64,
    pub planned_bytes: AtomicU64,
    /// Planned objects on disk (held before or fetched).
    pub held_objects: AtomicU64,
    pub held_bytes: AtomicU64,
    pub peer_bytes: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub failed: AtomicU64,
}

impl PrefillProgress {
    /// The current state.
    pub fn state(&self) -> PrefillState {
        PrefillState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: PrefillState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// A JSON object for `/admin/status`.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "state": self.state().as_str(),
            "planned_objects": g(&self.planned_objects), "planned_bytes": g(&self.planned_bytes),
            "held_objects": g(&self.held_objects), "held_bytes": g(&self.held_bytes),
            "peer_bytes": g(&self.peer_bytes), "upstream_bytes": g(&self.upstream_bytes),
            "failed": g(&self.failed),
        })
    }

    /// Prometheus text for `/metrics`.
    pub fn render(&self, edge: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{{edge=\"{edge}\"{labels}}} {v}\n"));
            }
        };
        gauge(
            "edge_prefill_planned_objects",
            "Objects in the current fill plan.",
            "gauge",
            &[(String::new(), g(&self.planned_objects))],
        );
        gauge(
            "edge_prefill_planned_bytes",
            "Bytes in the current fill plan.",
            "gauge",
            &[(String::new(), g(&self.planned_bytes))],
        );
        gauge(
            "edge_prefill_held_objects",
            "Planned objects on the disk tier.",
            "gauge",
            &[(String::new(), g(&self.held_objects))],
        );
        gauge(
            "edge_prefill_held_bytes",
            "Planned bytes on the disk tier.",
            "gauge",
            &[(String::new(), g(&self.held_bytes))],
        );
        gauge(
            "edge_prefill_fetched_bytes_total",
            "Bytes prefill fetched, by source.",
            "counter",
            &[
                (",source=\"peer\"".into(), g(&self.peer_bytes)),
                (",source=\"upstream\"".into(), g(&self.upstream_bytes)),
            ],
        );
        gauge(
            "edge_prefill_failed_total",
            "Planned objects prefill could not fetch.",
            "counter",
            &[(String::new(), g(&self.failed))],
        );
        let state = self.state();
        let states = [PrefillState::Idle, PrefillState::WaitingWindow, PrefillState::Filling, PrefillState::Done];
        let samples: Vec<(String, u64)> =
            states.iter().map(|s| (format!(",state=\"{}\"", s.as_str()), u64::from(*s == state))).collect();
        gauge("edge_prefill_state", "Prefill state (1 for the current one).", "gauge", &samples);
        out
    }
}

/// When and how fast prefill runs.
#[derive(Clone)]
pub struct PrefillSettings {
    /// Bits per second; `None` = no cap.
    pub rate_bps: Option<u64>,
    /// Daily window; `None` = any time.
    pub window: Option<PrefillWindow>,
    /// Local time of day.
    pub clock: LocalClock,
    /// How often a closed window is looked at again (the clock may jump).
    pub window_poll: Duration,
    /// Timeout for peer requests.
    pub peer_timeout: Duration,
    /// How long a plan stands: its objects stay pinned this long after the
    /// run starts, then eviction may take them like any other (`None`:
    /// until a later plan drops them).
    pub pin_for: Option<Duration>,
}

/// How long a fill plan stands by default: plans are made for the next day.
pub const PLAN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Default for PrefillSettings {
    fn default() -> Self {
        Self {
            rate_bps: None,
            window: None,
            clock: system_clock(),
            window_poll: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(5),
            pin_for: Some(PLAN_LIFETIME),
        }
    }
}

/// Reads a plan from a JSON file or, for an `http://` location, GETs it.
pub async fn load_plan(location: &Path) -> Result<EdgeFillPlan, EdgeError> {
    load_plan_signed(location, None).await
}

/// [`load_plan`], signing the GET as an enrolled edge when `signer` is given.
pub async fn load_plan_signed(
    location: &Path,
    signer: Option<&vod::edge_auth::EdgeSigner>,
) -> Result<EdgeFillPlan, EdgeError> {
    let text = location.to_string_lossy();
    if text.starts_with("http://") || text.starts_with("https://") {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EdgeError::Config(format!("building the plan client: {e}")))?;
        let req = crate::heartbeat::sign_request(client.get(text.as_ref()), signer, "GET", &text, b"");
        let resp = req.send().await.map_err(|e| EdgeError::Config(format!("GET {text}: {e}")))?;
        if !resp.status().is_success() {
            return Err(EdgeError::Config(format!("GET {text}: HTTP {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(|e| EdgeError::Config(format!("GET {text}: {e}")))?;
        return serde_json::from_slice(&body).map_err(|cause| EdgeError::Plan { path: text.into_owned(), cause });
    }
    let body = tokio::fs::read(location).await.map_err(|e| EdgeError::io(format!("reading {text}"), e))?;
    serde_json::from_slice(&body).map_err(|cause| EdgeError::Plan { path: text.into_owned(), cause })
}

/// Runs `plan` through `filler`'s disk tier (see the module docs).
pub async fn run(
    filler: Filler,
    plan: EdgeFillPlan,
    settings: PrefillSettings,
    progress: Arc<PrefillProgress>,
) -> PrefillReport {
    let mut report = PrefillReport::default();
    let Some(disk) = filler.disk_handle() else {
        tracing::warn!("prefill needs a disk tier; plan ignored");
        return report;
    };
    let objects = &plan.plan.objects;
    progress.planned_objects.store(objects.len() as u64, Ordering::Relaxed);
    progress.planned_bytes.store(objects.iter().map(|o| o.bytes).sum(), Ordering::Relaxed);
    let planned: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let d = Arc::clone(&disk);
    let keep: HashSet<String> = planned.iter().map(|k| (*k).to_owned()).collect();
    match tokio::task::spawn_blocking(move || d.unpin_where(|k| !keep.contains(&k.to_string()))).await {
        Ok(Ok(n)) => report.unpinned = n,
        Ok(Err(e)) => tracing::warn!(error = %e, "prefill: unpinning the previous plan failed"),
        Err(e) => tracing::warn!(error = %e, "prefill: unpin task failed"),
    }
    let pin_until = settings.pin_for.map(|d| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |n| n.as_secs()) + d.as_secs()
    });
    let peers = PeerClient::new(settings.peer_timeout);
    let mut bucket = settings.rate_bps.map(|r| TokenBucket::new(r, r.min(8 << 20)));
    for object in objects {
        let key = match ObjectKey::parse(&object.key) {
            Ok(k) if k.is_immutable() => k,
            _ => {
                tracing::warn!(key = %object.key, "prefill: not a cacheable segment key, skipped");
                report.failed += 1;
                progress.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (d, k) = (Arc::clone(&disk), key.clone());
        if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || d.pin(&k)).await {
            pin_with_plan(&disk, &key, pin_until).await;
            report.already_held += 1;
            progress.held_objects.fetch_add(1, Ordering::Relaxed);
            progress.held_bytes.fetch_add(object.bytes, Ordering::Relaxed);
            continue;
        }
        wait_for_window(&settings, &progress).await;
        progress.set_state(PrefillState::Filling);
        if let Some(b) = bucket.as_mut() {
            b.take(object.bytes).await;
        }
        let mut done = None;
        for url in plan.peer_urls_for(&object.key) {
            match peers.fetch_if_cached(url, &key).await {
                Ok(Some((body, etag))) => {
                    let (d, k, len) = (Arc::clone(&disk), key.clone(), body.len() as u64);
                    match tokio::task::spawn_blocking(move || d.insert(&k, &body, &etag, true)).await {
                        Ok(Ok(Stored::Yes)) => {
                            progress.peer_bytes.fetch_add(len, Ordering::Relaxed);
                            report.from_peer += 1;
                            done = Some(len);
                            break;
                        }
                        Ok(Ok(Stored::Refused(why))) => {
                            tracing::info!(%key, reason = why.as_str(), "prefill: the disk tier refused the object");
                            break;
                        }
                        Ok(Err(e)) => tracing::warn!(%key, error = %e, "prefill: disk write failed"),
                        Err(e) => tracing::warn!(%key, error = %e, "prefill: disk write task failed"),
                    }
                }
                Ok(None) => tracing::debug!(%key, peer = url, "prefill: peer does not hold it"),
                Err(e) => tracing::info!(%key, peer = url, error = %e, "prefill: peer fetch failed"),
            }
        }
        let result = match done {
            Some(n) => Ok(n),
            None => filler.prefill(&key).await.inspect(|n| {
                progress.upstream_bytes.fetch_add(*n, Ordering::Relaxed);
            }),
        };
        match result {
            Ok(n) => {
                pin_with_plan(&disk, &key, pin_until).await;
                report.fetched += 1;
                report.bytes += n;
                if filler.disk().is_some_and(|d| d.holds(&key)) {
                    progress.held_objects.fetch_add(1, Ordering::Relaxed);
                    progress.held_bytes.fetch_add(n, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "prefill: fetch failed");
                report.failed += 1;
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    progress.set_state(PrefillState::Done);
    tracing::info!(?report, "prefill done");
    report
}

/// Makes `key`'s pin lapse at `until` (Unix seconds), when the plan does.
async fn pin_with_plan(disk: &Arc<crate::disk::DiskTier>, key: &ObjectKey, until: Option<u64>) {
    let Some(until) = until else { return };
    let (d, k) = (Arc::clone(disk), key.clone());
    match tokio::task::spawn_blocking(move || d.pin_until(&k, until)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(%key, error = %e, "prefill: setting the pin's end failed"),
        Err(e) => tracing::warn!(%key, error = %e, "prefill: pin task failed"),
    }
}

/// Returns once the window is open (at once without a window).
async fn wait_for_window(settings: &PrefillSettings, progress: &PrefillProgress) {
    let Some(window) = settings.window else { return };
    loop {
        let wait = window.until_open((settings.clock)());
        if wait.is_zero() {
            return;
        }
        if progress.state() != PrefillState::WaitingWindow {
            tracing::info!(%window, wait_s = wait.as_secs(), "prefill: waiting for the window");
            progress.set_state(PrefillState::WaitingWindow);
        }
        tokio::time::sleep(wait.min(settings.window_poll)).await;
    }
}

/// Asks peer edges for objects they already hold.
struct PeerClient {
    client: Option<reqwest::Client>,
}

impl PeerClient {
    fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("vod-edge-prefill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "prefill: no peer client; filling from upstreams only"))
            .ok();
        Self { client }
    }

    /// The whole object if the peer holds it; `None` if it answers anything
    /// but 200 (504 is what `only-if-cached` gets for an object it lacks).
    async fn fetch_if_cached(&self, base: &str, key: &ObjectKey) -> Result<Option<(Vec<u8>, String)>, String> {
        let Some(client) = &self.client else { return Ok(None) };
        let url = format!("{}/{key}", base.trim_end_matches('/'));
        let resp = client
            .get(&url)
            .header(http::header::CACHE_CONTROL, "only-if-cached")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Ok(None);
        }
        let declared = resp.content_length();
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with('"') && v.ends_with('"'))
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if declared.is_some_and(|n| n != body.len() as u64) {
            return Err(format!("{url}: body of {} bytes, {declared:?} declared", body.len()));
        }
        let etag = etag.ok_or_else(|| format!("{url}: no strong ETag"))?;
        Ok(Some((body.to_vec(), etag)))
    }
}
