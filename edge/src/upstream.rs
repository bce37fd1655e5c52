//! The edge's upstreams: the HTTP client for one (timeouts, status mapping,
//! length and digest checks) and the ordered set of them, each behind its
//! own circuit breaker.

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use md5::Digest;
use vod::ObjectKey;

use crate::breaker::{Breaker, BreakerState};
use crate::error::{EdgeError, Fault};
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

    /// GETs `key` and returns the response once its head is in: status
    /// checked (404/410 → `NotFound`; other non-200 → `UpstreamStatus`),
    /// Content-Length and strong ETag read, body still to come.
    pub async fn open(&self, key: &ObjectKey) -> Result<Opened, EdgeError> {
        let (resp, url) = self.send(key, None).await?;
        match resp.status().as_u16() {
            200 => {}
            404 | 410 => return Err(EdgeError::NotFound { key: key.to_string() }),
            status => return Err(EdgeError::UpstreamStatus { url, status }),
        }
        Ok(self.opened(resp, url, 0))
    }

    /// GETs bytes `from..len` of the version of `key` whose strong ETag is
    /// `etag`, for a fill whose upstream broke off after `from` bytes. Asks
    /// with `Range` and `If-Range`; takes a 206 whose Content-Range is
    /// exactly `from-(len-1)/len`, or a 200 of the same version and length
    /// (whose first `from` bytes are then skipped). Anything else, such as a
    /// different ETag (the object changed, or this upstream keeps another
    /// copy), is an error: bytes of two versions are never joined.
    pub async fn open_rest(&self, key: &ObjectKey, from: u64, len: u64, etag: &str) -> Result<Opened, EdgeError> {
        let (resp, url) = self.send(key, Some((from, etag))).await?;
        let skip = match resp.status().as_u16() {
            200 => from,
            206 => {
                let want = format!("bytes {from}-{}/{len}", len.saturating_sub(1));
                let got = resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                if got != want {
                    return Err(EdgeError::UpstreamCorrupt {
                        url,
                        detail: format!("resuming at byte {from}: Content-Range {got:?}, expected {want:?}"),
                    });
                }
                0
            }
            404 | 410 => return Err(EdgeError::NotFound { key: key.to_string() }),
            status => return Err(EdgeError::UpstreamStatus { url, status }),
        };
        let opened = self.opened(resp, url, skip);
        let total = opened.len.map(|n| n + from - skip);
        if opened.etag.as_deref() != Some(etag) || total != Some(len) {
            return Err(opened.corrupt(format!(
                "resuming at byte {from}: another version (ETag {:?}, {:?} bytes; expected {etag}, {len} bytes)",
                opened.etag, total
            )));
        }
        Ok(opened)
    }

    /// Sends the GET for `key`, as a `Range` request from a byte with `If-Range` when `rest` is given.
    async fn send(&self, key: &ObjectKey, rest: Option<(u64, &str)>) -> Result<(reqwest::Response, String), EdgeError> {
        let url = self.url_of(key);
        let mut req = self.client.get(&url);
        if let Some((from, etag)) = rest {
            req = req.header(header::RANGE, format!("bytes={from}-")).header(header::IF_RANGE, etag);
        }
        let timeout_ms = self.timeout.as_millis() as u64;
        match req.send().await {
            Ok(resp) => Ok((resp, url)),
            Err(e) if e.is_timeout() => Err(EdgeError::UpstreamTimeout { url, timeout_ms }),
            Err(e) => Err(EdgeError::UpstreamUnreachable { url, cause: e }),
        }
    }

    /// The head of an answered GET: Content-Length and strong ETag read, body still to come.
    fn opened(&self, resp: reqwest::Response, url: String, skip: u64) -> Opened {
        let len = resp
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
        Opened { resp, url, timeout_ms: self.timeout.as_millis() as u64, len, etag, skip }
    }

    /// GETs the whole object; a body shorter or longer than its
    /// Content-Length → `UpstreamTruncated`.
    pub async fn fetch(&self, key: &ObjectKey) -> Result<Fetched, EdgeError> {
        self.open(key).await?.read_whole().await
    }
}

/// An upstream response whose head has arrived.
#[derive(Debug)]
pub struct Opened {
    resp: reqwest::Response,
    url: String,
    timeout_ms: u64,
    /// The declared Content-Length, if any.
    pub len: Option<u64>,
    /// The upstream's strong ETag, quoted, if it sent one.
    pub etag: Option<String>,
    /// Leading body bytes still to drop (a resume answered with the whole object).
    skip: u64,
}

impl Opened {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, EdgeError> {
        loop {
            let chunk = self.resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    EdgeError::UpstreamTimeout { url: self.url.clone(), timeout_ms: self.timeout_ms }
                } else {
                    EdgeError::UpstreamTruncated { url: self.url.clone(), detail: e.to_string() }
                }
            })?;
            match chunk {
                Some(c) if self.skip >= c.len() as u64 => self.skip -= c.len() as u64,
                Some(c) if self.skip > 0 => {
                    let from = std::mem::take(&mut self.skip) as usize;
                    return Ok(Some(c.slice(from..)));
                }
                other => return Ok(other),
            }
        }
    }

    /// A length mismatch as an error.
    pub fn truncated(&self, detail: String) -> EdgeError {
        EdgeError::UpstreamTruncated { url: self.url.clone(), detail }
    }

    /// A body that does not match its ETag, as an error.
    pub fn corrupt(&self, detail: String) -> EdgeError {
        EdgeError::UpstreamCorrupt { url: self.url.clone(), detail }
    }

    /// Reads the rest of the body and checks it against the declared length.
    pub async fn read_whole(mut self) -> Result<Fetched, EdgeError> {
        let mut buf = bytes::BytesMut::with_capacity(self.len.unwrap_or(0).min(64 << 20) as usize);
        let mut digest = DigestCheck::for_etag(self.etag.as_deref());
        while let Some(c) = self.chunk().await? {
            digest.update(&c);
            buf.extend_from_slice(&c);
        }
        let body = buf.freeze();
        // hyper already refuses a body that ends early; this also catches one
        // that is longer than declared, and keeps the guarantee local.
        if let Some(n) = self.len {
            if body.len() as u64 != n {
                return Err(self.truncated(format!("received {} of {n} declared bytes", body.len())));
            }
        }
        digest.verify().map_err(|detail| self.corrupt(detail))?;
        let etag = self.etag.take().unwrap_or_else(|| derived_etag(&body));
        Ok(Fetched { body, etag })
    }
}

/// Checks a body against its ETag where the ETag is a content digest: a
/// quoted 32-hex-digit MD5, which is what S3 (behind the origin) gives for
/// objects put in one part. Other ETags (the local store's mtime-length,
/// multipart S3 ETags) say nothing about the bytes and are not checked.
pub struct DigestCheck {
    md5: Option<(md5::Md5, String)>,
}

impl DigestCheck {
    /// A check for a body announced with `etag`.
    pub fn for_etag(etag: Option<&str>) -> Self {
        let digest = etag
            .and_then(|e| e.strip_prefix('"')?.strip_suffix('"'))
            .filter(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|hex| (md5::Md5::new(), hex.to_ascii_lowercase()));
        Self { md5: digest }
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some((h, _)) = self.md5.as_mut() {
            h.update(chunk);
        }
    }

    /// Ok if the body matched (or there was nothing to check).
    pub fn verify(self) -> Result<(), String> {
        let Some((h, want)) = self.md5 else { return Ok(()) };
        let got = format!("{:x}", h.finalize());
        if got == want {
            Ok(())
        } else {
            Err(format!("body MD5 {got} does not match its ETag {want}"))
        }
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

    /// Opens `key` on the first upstream that answers 200. Upstream
    /// failures move on to the next upstream; a 404 is final. With every
    /// breaker open this fails at once instead of waiting on timeouts. The
    /// caller reports how the body went with [`UpstreamSet::settle`].
    pub async fn open(&self, key: &ObjectKey, metrics: &EdgeMetrics) -> Result<(usize, Opened), EdgeError> {
        self.open_from(key, 0, metrics).await
    }

    /// Like [`UpstreamSet::open`], trying the upstreams from index `first` on.
    async fn open_from(
        &self,
        key: &ObjectKey,
        first: usize,
        metrics: &EdgeMetrics,
    ) -> Result<(usize, Opened), EdgeError> {
        let mut last = None;
        for (i, (upstream, _)) in self.members.iter().enumerate().skip(first) {
            if !self.breaker(i).allow(Instant::now()) {
                continue;
            }
            metrics.upstream_fetch();
            match upstream.open(key).await {
                Ok(opened) => return Ok((i, opened)),
                Err(e) if e.fault() == Fault::Upstream => {
                    self.settle(i, key, Err(&e), metrics);
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

    /// Records how a body from upstream `i` ended: only a complete body
    /// closes its breaker; a broken one counts as a failure.
    pub fn settle(&self, i: usize, key: &ObjectKey, outcome: Result<(), &EdgeError>, metrics: &EdgeMetrics) {
        match outcome {
            Ok(()) => self.breaker(i).success(),
            Err(e) => {
                self.breaker(i).failure(Instant::now());
                metrics.upstream_error();
                tracing::warn!(%key, upstream = %self.members[i].0.base, error = %e, "upstream fetch failed");
            }
        }
    }

    /// Picks up a body that upstream `failed` broke off after `from` of its
    /// `len` bytes: asks the other upstreams, in order after it and then
    /// those before it, for the rest of the same version (`etag`). Returns
    /// the upstream and its response, positioned at byte `from`.
    pub async fn resume(
        &self,
        key: &ObjectKey,
        failed: usize,
        from: u64,
        len: u64,
        etag: &str,
        metrics: &EdgeMetrics,
    ) -> Result<(usize, Opened), EdgeError> {
        let n = self.members.len();
        let mut last = None;
        for i in (1..n).map(|k| (failed + k) % n) {
            if !self.breaker(i).allow(Instant::now()) {
                continue;
            }
            metrics.upstream_fetch();
            match self.members[i].0.open_rest(key, from, len, etag).await {
                Ok(opened) => {
                    tracing::info!(%key, upstream = %self.members[i].0.base, from, "resuming a broken fill");
                    return Ok((i, opened));
                }
                // Another version there is no fault of that upstream's.
                Err(e @ EdgeError::UpstreamCorrupt { .. }) => last = Some(e),
                Err(e) => {
                    if e.fault() == Fault::Upstream {
                        self.settle(i, key, Err(&e), metrics);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EdgeError::UpstreamsDown { count: n }))
    }

    /// Fetches the whole of `key` from the first upstream that delivers it
    /// (a body that breaks off moves on to the next upstream).
    pub async fn fetch(&self, key: &ObjectKey, metrics: &EdgeMetrics) -> Result<Fetched, EdgeError> {
        let mut last = None;
        let mut next = 0;
        while next < self.members.len() {
            let (i, opened) = match self.open_from(key, next, metrics).await {
                Ok(o) => o,
                Err(EdgeError::UpstreamsDown { .. }) if last.is_some() => break,
                Err(e) => return Err(e),
            };
            next = i + 1;
            match opened.read_whole().await {
                Ok(f) => {
                    self.settle(i, key, Ok(()), metrics);
                    return Ok(f);
                }
                Err(e) => {
                    self.settle(i, key, Err(&e), metrics);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EdgeError::UpstreamsDown { count: self.members.len() }))
    }
}

/// A strong ETag from the body, for upstreams that send none (weak ones are
/// not reused: Range and If-None-Match from cache need a strong validator).
pub(crate) fn derived_etag(body: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:x}-{:x}\"", body.len(), h.finish())
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
    fn md5_etags_are_checked_against_the_body_and_other_etags_are_not() {
        let etag = format!("\"{:x}\"", md5::Md5::digest(b"hello world"));
        let mut ok = DigestCheck::for_etag(Some(&etag));
        ok.update(b"hello ");
        ok.update(b"world");
        assert!(ok.verify().is_ok());
        let mut bad = DigestCheck::for_etag(Some(&etag.to_uppercase()));
        bad.update(b"hello w0rld");
        assert!(bad.verify().is_err(), "a flipped byte passed the digest");
        for other in ["\"18c3f2a1b-1f40\"", "\"5d41402abc4b2a76b9719d911017c592-3\"", "W/\"x\""] {
            let mut c = DigestCheck::for_etag(Some(other));
            c.update(b"anything");
            assert!(c.verify().is_ok(), "{other} is not a digest");
        }
    }

    #[test]
    fn urls_join_base_and_key_once() {
        let u = Upstream::new("http://127.0.0.1:9/", Duration::from_millis(10)).unwrap();
        let k = ObjectKey::parse("titles/t1/v1/1.m4s").unwrap();
        assert_eq!(u.url_of(&k), "http://127.0.0.1:9/titles/t1/v1/1.m4s");
    }
}
