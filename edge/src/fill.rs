//! Misses: fetching objects from upstream, one fetch per object however many
//! clients ask at once, streamed to them while it arrives.
//!
//! `Filler` (the upstreams themselves are in `upstream`) looks in the RAM and disk tiers and, on a miss, joins the fetch
//! already in flight for that key or starts one. As soon as the upstream's
//! response head is in, every waiting request gets the fill's
//! [`GrowingBody`] (length and ETag from that head) and streams from it;
//! requests arriving later join it and get the bytes so far, then the rest.
//! The fetch runs in its own task, so a client that hangs up does not cancel
//! it for the others. Only a body whose length (and MD5, when the ETag is one) checks out is stored, and it
//! is stored *before* the key leaves the in-flight map: a request that
//! arrives in between either joins the fetch or finds the object cached. A
//! body that breaks off (or fails its ETag digest) fails every reader (their
//! connections are aborted), leaves the map first and caches nothing, so the
//! next request refetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;
use vod::ObjectKey;

use crate::disk::{DiskTier, Stored};
use crate::error::{EdgeError, Fault};
use crate::fill_stream::GrowingBody;
use crate::memory::{CachedObject, MemoryTier, MEMFD_MIN_BYTES};
use crate::metrics::EdgeMetrics;
use crate::upstream::{derived_etag, DigestCheck};
pub use crate::upstream::{Fetched, Opened, Upstream, UpstreamSet};

/// Where the object a request got came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The RAM tier held it.
    Hit,
    /// The disk tier held it.
    DiskHit,
    /// This request started the upstream fetch.
    Fetched,
    /// This request joined a fetch another request had started.
    Joined,
    /// Every upstream failed; an expired copy was served (stale-if-error).
    Stale,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Found {
    /// A whole object: from a tier, a stale copy, or a fill that had to end
    /// first (an upstream that sent no Content-Length).
    Whole(CachedObject, Source),
    /// An object still arriving from upstream (`Fetched` or `Joined`):
    /// read it as it grows.
    Filling(Arc<GrowingBody>, Source),
}

/// How a fill started, shared by every request waiting on it.
#[derive(Debug, Clone)]
enum Started {
    /// The whole object; `true` if it is a stale copy served because upstreams failed.
    Whole(CachedObject, bool),
    /// The upstream's head arrived; the body is arriving into this buffer.
    Streaming(Arc<GrowingBody>),
}

type StartResult = Result<Started, Arc<EdgeError>>;
type SharedFill = Shared<BoxFuture<'static, StartResult>>;

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
    /// promoted to RAM), else the one upstream fetch for it, as soon as the
    /// upstream's response head is in (the body streams into the buffer).
    pub async fn lookup(&self, key: &ObjectKey) -> Result<Found, Arc<EdgeError>> {
        if let Some(obj) = self.inner.ram.get(key) {
            return Ok(Found::Whole(obj, Source::Hit));
        }
        if let Some(obj) = self.inner.disk_hit(key) {
            return Ok(Found::Whole(obj, Source::DiskHit));
        }
        let (fill, source) = {
            let mut inflight = self.inner.lock_inflight();
            if let Some(f) = inflight.get(key) {
                (f.clone(), Source::Joined)
            } else if let Some(obj) = self.inner.ram.get(key) {
                // A fill completed between the first look and taking the lock.
                return Ok(Found::Whole(obj, Source::Hit));
            } else {
                let f = FillInner::start(&self.inner, key.clone());
                inflight.insert(key.clone(), f.clone());
                (f, Source::Fetched)
            }
        };
        if source == Source::Joined {
            self.inner.metrics.coalesced();
        }
        Ok(match fill.await? {
            Started::Whole(obj, true) => Found::Whole(obj, Source::Stale),
            Started::Whole(obj, false) => Found::Whole(obj, source),
            Started::Streaming(body) => Found::Filling(body, source),
        })
    }

    /// Like [`Filler::lookup`], waiting for a fill to end: the whole object.
    pub async fn get(&self, key: &ObjectKey) -> Result<(CachedObject, Source), Arc<EdgeError>> {
        self.lookup(key).await?.into_whole().await
    }
}

impl Found {
    /// Where the object came from.
    pub fn source(&self) -> Source {
        match self {
            Found::Whole(_, s) | Found::Filling(_, s) => *s,
        }
    }

    /// The object's full length.
    pub fn len(&self) -> u64 {
        match self {
            Found::Whole(obj, _) => obj.body.len() as u64,
            Found::Filling(body, _) => body.len(),
        }
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole object, waiting for a fill in progress to end.
    pub async fn into_whole(self) -> Result<(CachedObject, Source), Arc<EdgeError>> {
        match self {
            Found::Whole(obj, source) => Ok((obj, source)),
            Found::Filling(body, source) => {
                let bytes = body.complete().await?;
                let etag = body.etag().map_or_else(|| derived_etag(&bytes), str::to_owned);
                Ok((CachedObject { body: bytes, etag, ttl: None }, source))
            }
        }
    }
}

/// Cleans up after a fill however its task ends (a panic included): the key
/// leaves the in-flight map and readers of an unfinished body get an error
/// instead of waiting for bytes that will never come.
struct FillGuard {
    inner: Arc<FillInner>,
    key: ObjectKey,
    body: Option<Arc<GrowingBody>>,
    /// Set once the key left the map: a later fill of the same key may be in it by then.
    left: bool,
}

impl FillGuard {
    /// Takes the key out of the in-flight map (once).
    fn leave_inflight(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.inner.lock_inflight().remove(&self.key);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.leave_inflight();
        if let Some(body) = &self.body {
            if !body.is_complete() {
                body.fail(Arc::new(EdgeError::Internal("the fill stopped".into())));
            }
        }
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
            // Large bodies go straight into their memfd or `ram_dir` file
            // (one copy, not two).
            let body = if found.body.len() >= MEMFD_MIN_BYTES {
                self.ram.bodies().body(&found.body).unwrap_or_else(|_| Bytes::copy_from_slice(&found.body))
            } else {
                Bytes::copy_from_slice(&found.body)
            };
            let obj = CachedObject { body, etag: found.etag, ttl: None };
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

    /// Spawns the fill for `key`; the caller must hold the in-flight lock and
    /// insert the returned future, which resolves once the upstream's head is
    /// in. The task, not any client, owns the fill: a client that hangs up
    /// does not cancel it for the others. It removes the key from the
    /// in-flight map when the body has ended (and been stored).
    fn start(this: &Arc<Self>, key: ObjectKey) -> SharedFill {
        let (tx, rx) = oneshot::channel();
        let guard = FillGuard { inner: Arc::clone(this), key, body: None, left: false };
        // Detached on purpose: the task ends when the upstream body does.
        tokio::spawn(Self::fill(guard, tx));
        async move { rx.await.unwrap_or_else(|_| Err(Arc::new(EdgeError::Internal("the fill task stopped".into())))) }
            .boxed()
            .shared()
    }

    async fn fill(mut guard: FillGuard, tx: oneshot::Sender<StartResult>) {
        let this = Arc::clone(&guard.inner);
        let key = guard.key.clone();
        let (i, mut opened) = match this.upstream.open(&key, &this.metrics).await {
            Ok(o) => o,
            Err(e) if e.retryable() => {
                let answer = match this.stale.get(&key) {
                    Some(old) => {
                        tracing::warn!(%key, error = %e, "every upstream failed: serving a stale copy");
                        Ok(Started::Whole(old, true))
                    }
                    None => Err(Arc::new(e)),
                };
                drop(guard);
                let _ = tx.send(answer);
                return;
            }
            Err(e) => {
                drop(guard);
                let _ = tx.send(Err(Arc::new(e)));
                return;
            }
        };
        let Some(len) = opened.len else {
            // No length up front: a response could not declare one either, so
            // this object is read whole before anyone is answered.
            let result = opened.read_whole().await;
            this.upstream.settle(i, &key, result.as_ref().map(|_| ()), &this.metrics);
            let answer = match result {
                Ok(fetched) => {
                    let obj = this.store(&key, fetched.body, fetched.etag).await;
                    Ok(Started::Whole(obj, false))
                }
                Err(e) => Err(Arc::new(e)),
            };
            drop(guard);
            let _ = tx.send(answer);
            return;
        };
        let body = GrowingBody::new(len, opened.etag.clone());
        guard.body = Some(Arc::clone(&body));
        let _ = tx.send(Ok(Started::Streaming(Arc::clone(&body))));
        let ttl = if key.is_immutable() { None } else { Some(this.manifest_ttl) };
        // Whether any tier will take it: if not, the chunks are never joined into one copy.
        let keep = ttl.is_some() || len <= this.ram.capacity_bytes() || (this.disk.is_some() && key.is_immutable());
        let mut from = i;
        let received = async {
            let mut digest = DigestCheck::for_etag(opened.etag.as_deref());
            loop {
                match opened.chunk().await {
                    Ok(Some(chunk)) => {
                        digest.update(&chunk);
                        body.push(chunk).map_err(|detail| opened.truncated(detail))?;
                    }
                    Ok(None) => break,
                    // A body that breaks off goes on from another upstream,
                    // same version only (a strong ETag to ask `If-Range` with):
                    // the readers see one body, never a seam.
                    Err(e) if e.fault() == Fault::Upstream && body.etag().is_some() => {
                        let (at, etag) = (body.received(), body.etag().unwrap_or_default());
                        match this.upstream.resume(&key, from, at, len, etag, &this.metrics).await {
                            Ok((j, rest)) => {
                                this.upstream.settle(from, &key, Err(&e), &this.metrics);
                                (from, opened) = (j, rest);
                            }
                            Err(why) => {
                                tracing::debug!(%key, error = %why, "no upstream can resume the fill");
                                return Err(e);
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let whole = body.finish(keep).map_err(|detail| opened.truncated(detail))?;
            // Readers still lack the last byte: a mismatch aborts them too.
            digest.verify().map_err(|detail| opened.corrupt(detail))?;
            Ok(whole)
        }
        .await;
        this.upstream.settle(from, &key, received.as_ref().map(|_| ()), &this.metrics);
        match received {
            Ok(Some(whole)) => {
                let etag = opened.etag.take().unwrap_or_else(|| derived_etag(&whole));
                this.store(&key, whole, etag).await;
                body.mark_complete();
            }
            Ok(None) => {
                this.metrics.upstream_bytes(len);
                body.mark_complete();
            }
            Err(e) => {
                // Out of the in-flight map first, so the next request refetches
                // instead of joining a fill that is known to be broken.
                guard.leave_inflight();
                body.fail(Arc::new(e));
            }
        }
        drop(guard);
    }

    /// Keeps a complete, length-checked body in the tiers it belongs to.
    async fn store(&self, key: &ObjectKey, body: Bytes, etag: String) -> CachedObject {
        self.metrics.upstream_bytes(body.len() as u64);
        let ttl = if key.is_immutable() { None } else { Some(self.manifest_ttl) };
        let obj = CachedObject { body, etag, ttl };
        if ttl.is_some() {
            self.stale.insert(key.clone(), CachedObject { ttl: None, ..obj.clone() });
        }
        // moka would only evict an object larger than the tier on its next
        // maintenance pass; never offering it keeps the tier within bounds.
        if obj.body.len() as u64 <= self.ram.capacity_bytes() {
            self.ram.insert(key.clone(), obj.clone());
        }
        if let (Some(disk), true) = (&self.disk, key.is_immutable()) {
            // Written before the fill leaves the in-flight map, so a later
            // miss finds it on disk.
            let (d, k, o) = (Arc::clone(disk), key.clone(), obj.clone());
            let stored = tokio::task::spawn_blocking(move || d.insert(&k, &o.body, &o.etag, false)).await;
            match stored {
                Ok(Ok(Stored::Yes)) => {}
                Ok(Ok(Stored::Refused(why))) => tracing::debug!(%key, reason = why.as_str(), "disk tier refused"),
                Ok(Err(e)) => tracing::warn!(%key, error = %e, "disk tier write failed"),
                Err(e) => tracing::warn!(%key, error = %e, "disk tier write task failed"),
            }
        }
        obj
    }
}
