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
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use http::header;
use vod::ObjectKey;

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
    /// This request started the upstream fetch.
    Fetched,
    /// This request waited on a fetch another request had started.
    Joined,
}

/// The outcome of one fill, shared by every request waiting on it.
pub type FillResult = Result<CachedObject, Arc<EdgeError>>;
type SharedFill = Shared<BoxFuture<'static, FillResult>>;

/// The RAM tier plus the coalescing of misses in front of the upstream.
#[derive(Clone)]
pub struct Filler {
    inner: Arc<FillInner>,
}

struct FillInner {
    upstream: Upstream,
    ram: Arc<MemoryTier<ObjectKey, CachedObject>>,
    inflight: Mutex<HashMap<ObjectKey, SharedFill>>,
    metrics: Arc<EdgeMetrics>,
    manifest_ttl: Duration,
}

impl Filler {
    /// Serves from `ram`, filling misses from `upstream`. Manifests and
    /// catalogs are kept for `manifest_ttl`; segments until evicted.
    pub fn new(
        upstream: Upstream,
        ram: Arc<MemoryTier<ObjectKey, CachedObject>>,
        metrics: Arc<EdgeMetrics>,
        manifest_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(FillInner { upstream, ram, inflight: Mutex::new(HashMap::new()), metrics, manifest_ttl }),
        }
    }

    /// The RAM tier this filler stores into.
    pub fn ram(&self) -> &MemoryTier<ObjectKey, CachedObject> {
        &self.inner.ram
    }

    /// The object under `key`, from the RAM tier or from the one upstream fetch for it.
    pub async fn get(&self, key: &ObjectKey) -> Result<(CachedObject, Source), Arc<EdgeError>> {
        if let Some(obj) = self.inner.ram.get(key) {
            return Ok((obj, Source::Hit));
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
        fill.await.map(|obj| (obj, source))
    }
}

impl FillInner {
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

    async fn fetch_and_store(&self, key: &ObjectKey) -> Result<CachedObject, EdgeError> {
        self.metrics.upstream_fetch();
        let fetched = self.upstream.fetch(key).await.inspect_err(|e| {
            if e.fault() == Fault::Upstream {
                self.metrics.upstream_error();
                tracing::warn!(%key, error = %e, "upstream fetch failed");
            }
        })?;
        self.metrics.upstream_bytes(fetched.body.len() as u64);
        let ttl = if key.is_immutable() { None } else { Some(self.manifest_ttl) };
        let obj = CachedObject { body: fetched.body, etag: fetched.etag, ttl };
        self.ram.insert(key.clone(), obj.clone());
        Ok(obj)
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
