//! Misses: fetching objects from upstream, one fetch per object however many
//! clients ask at once.
//!
//! `Upstream` is the HTTP client (timeouts, status mapping, truncation check).
//! `Filler` looks in the RAM tier and, on a miss, joins the fetch already in
//! flight for that key or starts one. The fetch runs in its own task, so a
//! client that hangs up does not cancel it for the others, and it stores the
//! object in the tier *before* leaving the in-flight map: a request that
//! arrives in between either joins the fetch or finds the object cached.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::header;
use vod::ObjectKey;

use crate::breaker::{Breaker, BreakerState};
use crate::disk::{DiskTier, Stored};
use crate::error::{EdgeError, Fault};
use crate::memory::{CachedObject, MemoryTier};
use crate::metrics::EdgeMetrics;

/// A complete object as received from upstream.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: bytes::Bytes,
    /// Strong ETag, quoted.
    pub etag: String,
}

/// HTTP client for the edge's upstream (origin or parent edge).
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Upstream {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) that gives up when the
    /// upstream takes longer than `timeout` to connect or to send the next bytes.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, EdgeError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            // Per read, not total: a large segment over a slow but moving link
            // is fine; a stalled upstream is not.
            .read_timeout(timeout)
            // Fill traffic goes straight to the configured upstream, never via
            // an HTTP_PROXY that happens to be set in the environment.
            .no_proxy()
            .user_agent(concat!("vod-edge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EdgeError::Config(format!("building the upstream client: {e}")))?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), timeout })
    }

    /// The URL of `key` upstream.
    pub fn url_of(&self, key: &ObjectKey) -> String {
        format!("{}/{}", self.base, key)
    }

    /// GETs the whole object. 404/410 → `NotFound`; other non-200 → `UpstreamStatus`;
    /// a body shorter or longer than its Content-Length → `UpstreamTruncated`.
    pub async fn fetch(&self, key: &ObjectKey) -> Result<Fetched, EdgeError> {
        let url = self.url_of(key);
        let timeout_ms = self.timeout.as_millis() as u64;
        let resp = self.client.get(&url).send().await.map_err(|e| {
            if e.is_timeout() {
                EdgeError::UpstreamTimeout { url: url.clone(), timeout_ms }
            } else {
                EdgeError::UpstreamUnreachable { url: url.clone(), cause: e }
            }
        })?;
        match resp.status().as_u16() {
            200 => {}
            404 | 410 => return Err(EdgeError::NotFound { key: key.to_string() }),
            status => return Err(EdgeError::UpstreamStatus { url, status }),
        }
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with('"') && v.ends_with('"') && v.len() >= 2)
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                EdgeError::UpstreamTimeout { url: url.clone(), timeout_ms }
            } else {
                EdgeError::UpstreamTruncated { url: url.clone(), detail: e.to_string() }
            }
        })?;
        // hyper already refuses a body that ends early; this also catches one
        // that is longer than declared, and keeps the guarantee local.
        if let Some(n) = declared {
            if body.len() as u64 != n {
                return Err(EdgeError::UpstreamTruncated {
                    url,
                    detail: format!("received {} of {n} declared bytes", body.len()),
                });
            }
        }
        let etag = etag.unwrap_or_else(|| derived_etag(&body));
        Ok(Fetched { body, etag })
    }
}

/// The upstreams in the order they are tried (a parent edge, then the
/// origin), each behind its own circuit breaker.
pub struct UpstreamSet {
    members: Vec<(Upstream, Mutex<Breaker>)>,
}

impl UpstreamSet {
    /// Upstreams tried in order; each opens its breaker after
    /// `failures_to_open` failures in a row, for `cooldown`.
    pub fn new(upstreams: Vec<Upstream>, failures_to_open: u32, cooldown: Duration) -> Self {
        Self {
            members: upstreams.into_iter().map(|u| (u, Mutex::new(Breaker::new(failures_to_open, cooldown)))).collect(),
        }
    }

    fn breaker(&self, i: usize) -> MutexGuard<'_, Breaker> {
        self.members[i].1.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Breaker states, in upstream order, for status pages.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let now = Instant::now();
        (0..self.members.len()).map(|i| (self.members[i].0.base.clone(), self.breaker(i).state(now))).collect()
    }

    /// Fetches `key` from the first upstream that delivers it. Upstream
    /// failures move on to the next upstream; a 404 is final. With every
    /// breaker open this fails at once instead of waiting on timeouts.
    pub async fn fetch(&self, key: &ObjectKey, metrics: &EdgeMetrics) -> Result<Fetched, EdgeError> {
        let mut last = None;
        for (i, (upstream, _)) in self.members.iter().enumerate() {
            if !self.breaker(i).allow(Instant::now()) {
                continue;
            }
            metrics.upstream_fetch();
            match upstream.fetch(key).await {
                Ok(f) => {
                    self.breaker(i).success();
                    return Ok(f);
                }
                Err(e) if e.fault() == Fault::Upstream => {
                    self.breaker(i).failure(Instant::now());
                    metrics.upstream_error();
                    tracing::warn!(%key, upstream = %upstream.base, error = %e, "upstream fetch failed");
                    last = Some(e);
                }
                Err(e) => {
                    // An answer (404): the upstream is healthy.
                    self.breaker(i).success();
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or(EdgeError::UpstreamsDown { count: self.members.len() }))
    }
}

/// A strong ETag from the body, for upstreams that send none (weak ones are
/// not reused: Range and If-None-Match from cache need a strong validator).
fn derived_etag(body: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:x}-{:x}\"", body.len(), h.finish())
}

/// Where the object a request got came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The RAM tier held it.
    Hit,
    /// The disk tier held it.
    DiskHit,
    /// This request started the upstream fetch.
    Fetched,
    /// This request waited on a fetch another request had started.
    Joined,
    /// Every upstream failed; an expired copy was served (stale-if-error).
    Stale,
}

/// The outcome of one fill, shared by every request waiting on it: the
/// object and whether it is a stale copy served because upstreams failed.
pub type FillResult = Result<(CachedObject, bool), Arc<EdgeError>>;
type SharedFill = Shared<BoxFuture<'static, FillResult>>;

/// The RAM tier plus the coalescing of misses in front of the upstream.
#[derive(Clone)]
pub struct Filler {
    inner: Arc<FillInner>,
}

struct FillInner {
    upstream: UpstreamSet,
    /// Last good copies of objects that expire (manifests, catalogs), kept
    /// past their TTL so they can be served when every upstream fails.
    stale: MemoryTier<ObjectKey, CachedObject>,
    ram: Arc<MemoryTier<ObjectKey, CachedObject>>,
    disk: Option<Arc<DiskTier>>,
    inflight: Mutex<HashMap<ObjectKey, SharedFill>>,
    metrics: Arc<EdgeMetrics>,
    manifest_ttl: Duration,
}

impl Filler {
    /// Serves from `ram`, filling misses from `upstream`. Manifests and
    /// catalogs are kept for `manifest_ttl`; segments until evicted.
    pub fn new(
        upstream: UpstreamSet,
        ram: Arc<MemoryTier<ObjectKey, CachedObject>>,
        disk: Option<Arc<DiskTier>>,
        metrics: Arc<EdgeMetrics>,
        manifest_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(FillInner {
                upstream,
                // Manifests are small; 1/16 of RAM (at least 1 MB) holds many titles' worth.
                stale: MemoryTier::new((ram.capacity_bytes() / 16).max(1 << 20)),
                ram,
                disk,
                inflight: Mutex::new(HashMap::new()),
                metrics,
                manifest_ttl,
            }),
        }
    }

    /// Drops `key` from every tier (and its stale copy); returns whether any tier held it.
    pub fn purge(&self, key: &ObjectKey) -> bool {
        let i = &self.inner;
        let in_ram = i.ram.get(key).is_some();
        i.ram.remove(key);
        i.stale.remove(key);
        let on_disk = i.disk.as_ref().is_some_and(|d| d.remove(key));
        in_ram || on_disk
    }

    /// Drops every object of `title` from every tier; returns how many copies were dropped.
    pub fn purge_title(&self, title: &vod::TitleId) -> u64 {
        let i = &self.inner;
        let ram = i.ram.remove_where(|k| k.title() == title);
        i.stale.remove_where(|k| k.title() == title);
        ram + i.disk.as_ref().map_or(0, |d| d.remove_title(title))
    }

    /// Prefill: makes sure `key` is on the disk tier and pinned there. Returns
    /// the bytes fetched from upstream (0 if the disk already held it).
    pub async fn prefill(&self, key: &ObjectKey) -> Result<u64, EdgeError> {
        let Some(disk) = self.inner.disk.clone() else {
            return Err(EdgeError::Config("prefill needs a disk tier".into()));
        };
        let k = key.clone();
        let d = Arc::clone(&disk);
        let held = tokio::task::spawn_blocking(move || d.pin(&k))
            .await
            .map_err(|e| EdgeError::Internal(format!("prefill task: {e}")))??;
        if held {
            return Ok(0);
        }
        let fetched = self.inner.upstream.fetch(key, &self.inner.metrics).await?;
        let len = fetched.body.len() as u64;
        self.inner.metrics.upstream_bytes(len);
        let k = key.clone();
        let stored = tokio::task::spawn_blocking(move || disk.insert(&k, &fetched.body, &fetched.etag, true))
            .await
            .map_err(|e| EdgeError::Internal(format!("prefill task: {e}")))??;
        if let Stored::Refused(why) = stored {
            tracing::info!(%key, reason = why.as_str(), "prefill: the disk tier refused the object");
        }
        Ok(len)
    }

    /// The upstreams and their breaker states.
    pub fn upstreams(&self) -> &UpstreamSet {
        &self.inner.upstream
    }

    /// The disk tier under the RAM tier, if configured.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.inner.disk.as_deref()
    }

    /// The object if the RAM or disk tier holds it; never fetches.
    pub fn cached(&self, key: &ObjectKey) -> Option<CachedObject> {
        self.inner.ram.get(key).or_else(|| self.inner.disk_hit(key))
    }

    /// A shared handle on the disk tier (prefill writes from blocking tasks).
    pub fn disk_handle(&self) -> Option<Arc<DiskTier>> {
        self.inner.disk.clone()
    }

    /// The RAM tier this filler stores into.
    pub fn ram(&self) -> &MemoryTier<ObjectKey, CachedObject> {
        &self.inner.ram
    }

    /// The object under `key`: from the RAM tier, else the disk tier (and
    /// promoted to RAM), else from the one upstream fetch for it.
    pub async fn get(&self, key: &ObjectKey) -> Result<(CachedObject, Source), Arc<EdgeError>> {
        if let Some(obj) = self.inner.ram.get(key) {
            return Ok((obj, Source::Hit));
        }
        if let Some(obj) = self.inner.disk_hit(key) {
            return Ok((obj, Source::DiskHit));
        }
        let (fill, source) = {
            let mut inflight = self.inner.lock_inflight();
            if let Some(f) = inflight.get(key) {
                (f.clone(), Source::Joined)
            } else if let Some(obj) = self.inner.ram.get(key) {
                // A fill completed between the first look and taking the lock.
                return Ok((obj, Source::Hit));
            } else {
                let f = FillInner::start(&self.inner, key.clone());
                inflight.insert(key.clone(), f.clone());
                (f, Source::Fetched)
            }
        };
        if source == Source::Joined {
            self.inner.metrics.coalesced();
        }
        fill.await.map(|(obj, stale)| (obj, if stale { Source::Stale } else { source }))
    }
}

impl FillInner {
    /// A disk hit, promoted to RAM when it can fit there. Only immutable
    /// objects are ever written to disk, so a disk copy is always fresh.
    fn disk_hit(&self, key: &ObjectKey) -> Option<CachedObject> {
        let found = self.disk.as_ref()?.get(key)?;
        let len = found.body.len() as u64;
        if len <= self.ram.capacity_bytes() {
            // A copy: the RAM tier must hold RAM, not a lease on a disk region.
            let obj = CachedObject { body: Bytes::copy_from_slice(&found.body), etag: found.etag, ttl: None };
            self.ram.insert(key.clone(), obj.clone());
            return Some(obj);
        }
        Some(CachedObject { body: found.body, etag: found.etag, ttl: None })
    }

    fn lock_inflight(&self) -> MutexGuard<'_, HashMap<ObjectKey, SharedFill>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single get/insert/remove.
        self.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns the fetch for `key`; the caller must hold the in-flight lock and
    /// insert the returned future, which the task removes when done.
    fn start(this: &Arc<Self>, key: ObjectKey) -> SharedFill {
        let inner = Arc::clone(this);
        let task = tokio::spawn(async move {
            let result = inner.fetch_and_store(&key).await.map_err(Arc::new);
            inner.lock_inflight().remove(&key);
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(Arc::new(EdgeError::Internal(format!("fill task: {e}"))))) }
            .boxed()
            .shared()
    }

    async fn fetch_and_store(&self, key: &ObjectKey) -> Result<(CachedObject, bool), EdgeError> {
        let fetched = match self.upstream.fetch(key, &self.metrics).await {
            Ok(f) => f,
            Err(e) if e.retryable() => {
                return match self.stale.get(key) {
                    Some(old) => {
                        tracing::warn!(%key, error = %e, "every upstream failed: serving a stale copy");
                        Ok((old, true))
                    }
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.metrics.upstream_bytes(fetched.body.len() as u64);
        let ttl = if key.is_immutable() { None } else { Some(self.manifest_ttl) };
        let obj = CachedObject { body: fetched.body, etag: fetched.etag, ttl };
        if ttl.is_some() {
            self.stale.insert(key.clone(), CachedObject { ttl: None, ..obj.clone() });
        }
        // moka would only evict an object larger than the tier on its next
        // maintenance pass; never offering it keeps the tier within bounds.
        if obj.body.len() as u64 <= self.ram.capacity_bytes() {
            self.ram.insert(key.clone(), obj.clone());
        }
        if let (Some(disk), true) = (&self.disk, key.is_immutable()) {
            // The body is complete and its length checked; write it before the
            // fill leaves the in-flight map so a later miss finds it on disk.
            let (d, k, o) = (Arc::clone(disk), key.clone(), obj.clone());
            let stored = tokio::task::spawn_blocking(move || d.insert(&k, &o.body, &o.etag, false)).await;
            match stored {
                Ok(Ok(Stored::Yes)) => {}
                Ok(Ok(Stored::Refused(why))) => tracing::debug!(%key, reason = why.as_str(), "disk tier refused"),
                Ok(Err(e)) => tracing::warn!(%key, error = %e, "disk tier write failed"),
                Err(e) => tracing::warn!(%key, error = %e, "disk tier write task failed"),
            }
        }
        Ok((obj, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_etags_are_strong_and_follow_the_body() {
        let a = derived_etag(b"abc");
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert_eq!(a, derived_etag(b"abc"));
        assert_ne!(a, derived_etag(b"abd"));
    }

    #[test]
    fn urls_join_base_and_key_once() {
        let u = Upstream::new("http://127.0.0.1:9/", Duration::from_millis(10)).unwrap();
        let k = ObjectKey::parse("titles/t1/v1/1.m4s").unwrap();
        assert_eq!(u.url_of(&k), "http://127.0.0.1:9/titles/t1/v1/1.m4s");
    }
}
