//! A fill in progress as a growing buffer that many clients read at once.
//!
//! The fill task appends the upstream's chunks as they arrive; each reader
//! holds its own position and is woken (a `watch` channel) when more bytes
//! or the end arrive. Readers never see bytes past the declared length, and
//! a fill that breaks makes every reader's stream fail, so hyper aborts the
//! connection instead of ending a short body that looks complete. The last
//! byte of the object is held back until the fill is marked complete (its
//! length checked and the object stored), so a client that has the whole
//! body finds it cached when it asks again. The buffer holds the object
//! once: when the fill completes, its chunks are replaced by the one
//! contiguous copy handed to the cache tiers.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::watch;

use crate::error::EdgeError;

/// How far a fill has got.
#[derive(Debug, Clone)]
enum Progress {
    /// Bytes are still arriving (each push bumps the channel's version).
    Receiving,
    /// Every declared byte arrived and the length checked out.
    Complete,
    /// The upstream broke off; nothing is cached.
    Failed(Arc<EdgeError>),
}

/// The bytes received so far, in arrival order.
#[derive(Default)]
struct Chunks {
    /// Offset of each chunk's first byte.
    starts: Vec<u64>,
    chunks: Vec<Bytes>,
    received: u64,
}

impl Chunks {
    /// Up to `max` bytes at `pos`, without copying; empty if `pos` has not arrived.
    fn slice_at(&self, pos: u64, max: u64) -> Bytes {
        if pos >= self.received || max == 0 {
            return Bytes::new();
        }
        let i = self.starts.partition_point(|&s| s <= pos) - 1;
        let chunk = &self.chunks[i];
        let from = (pos - self.starts[i]) as usize;
        let to = (from as u64 + max).min(chunk.len() as u64) as usize;
        chunk.slice(from..to)
    }
}

/// An object being filled: its length and validator (from the upstream's
/// response head) and the bytes that have arrived.
pub struct GrowingBody {
    len: u64,
    etag: Option<String>,
    chunks: Mutex<Chunks>,
    progress: watch::Sender<Progress>,
}

impl std::fmt::Debug for GrowingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowingBody").field("len", &self.len).field("etag", &self.etag).finish_non_exhaustive()
    }
}

impl GrowingBody {
    /// An empty buffer for an object of `len` bytes with the upstream's strong `etag`, if it sent one.
    pub fn new(len: u64, etag: Option<String>) -> Arc<Self> {
        let (progress, _) = watch::channel(Progress::Receiving);
        Arc::new(Self { len, etag, chunks: Mutex::new(Chunks::default()), progress })
    }

    /// The declared length (the upstream's Content-Length).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The upstream's strong ETag, quoted, if it sent one.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Bytes arrived so far.
    pub fn received(&self) -> u64 {
        self.lock().received
    }

    /// True once the fill is marked complete.
    pub fn is_complete(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Complete)
    }

    fn lock(&self) -> MutexGuard<'_, Chunks> {
        // Each critical section is a push or a read: the state stays consistent.
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a chunk from upstream. Errs (and keeps nothing of it) if it
    /// would take the body past its declared length.
    pub fn push(&self, chunk: Bytes) -> Result<(), String> {
        if chunk.is_empty() {
            return Ok(());
        }
        {
            let mut c = self.lock();
            let after = c.received + chunk.len() as u64;
            if after > self.len {
                return Err(format!("received more than the {} declared bytes", self.len));
            }
            let start = c.received;
            c.starts.push(start);
            c.chunks.push(chunk);
            c.received = after;
        }
        self.progress.send_replace(Progress::Receiving);
        Ok(())
    }

    /// Checks the body after the upstream's ended: the whole body if every
    /// declared byte arrived (readers go on from one contiguous copy), else
    /// an error for `fail`. `keep_copy` false (nothing will cache it) skips
    /// building the contiguous copy. Readers get the last byte only after
    /// [`GrowingBody::mark_complete`].
    pub fn finish(&self, keep_copy: bool) -> Result<Option<Bytes>, String> {
        let mut c = self.lock();
        if c.received != self.len {
            return Err(format!("received {} of {} declared bytes", c.received, self.len));
        }
        let whole = if !keep_copy {
            None
        } else if c.chunks.len() == 1 {
            Some(c.chunks[0].clone())
        } else {
            let mut buf = BytesMut::with_capacity(self.len as usize);
            for chunk in &c.chunks {
                buf.extend_from_slice(chunk);
            }
            let whole = buf.freeze();
            // Readers from now on share the one copy; the chunks go.
            c.starts = vec![0];
            c.chunks = vec![whole.clone()];
            Some(whole)
        };
        Ok(whole)
    }

    /// Marks the fill complete (after `finish` and storing the object): readers get the last byte.
    pub fn mark_complete(&self) {
        self.progress.send_replace(Progress::Complete);
    }

    /// Ends the fill with an error: every reader's stream fails.
    pub fn fail(&self, error: Arc<EdgeError>) {
        self.progress.send_replace(Progress::Failed(error));
    }

    /// The bytes `[start, end)` as they arrive. The stream fails if the fill
    /// does (or its task goes away), so a declared Content-Length is never
    /// followed by a short body that looks complete.
    pub fn reader(
        self: &Arc<Self>,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let end = end.min(self.len);
        let state = (Arc::clone(self), self.progress.subscribe(), start);
        futures::stream::unfold(state, move |(body, mut rx, pos)| async move {
            loop {
                if pos >= end {
                    return None;
                }
                // The state first, then the bytes: a push after this look
                // bumps the channel, so the wait below cannot miss it.
                let state = rx.borrow_and_update().clone();
                let mut bytes = body.lock().slice_at(pos, end - pos);
                let complete = matches!(state, Progress::Complete);
                if !complete && !bytes.is_empty() && pos + bytes.len() as u64 == body.len {
                    bytes.truncate(bytes.len() - 1);
                }
                if !bytes.is_empty() {
                    let next = pos + bytes.len() as u64;
                    return Some((Ok(bytes), (body, rx, next)));
                }
                let failed = match state {
                    Progress::Failed(e) => Some(e.to_string()),
                    // Complete with `pos` not arrived cannot happen (the length
                    // checked out); treat it as broken rather than hang.
                    Progress::Complete => Some("the fill ended early".to_owned()),
                    Progress::Receiving => None,
                };
                if let Some(why) = failed {
                    return Some((Err(std::io::Error::other(why)), (body, rx, end)));
                }
                if rx.changed().await.is_err() {
                    let e = std::io::Error::other("the fill was dropped");
                    return Some((Err(e), (body, rx, end)));
                }
            }
        })
    }

    /// Waits for the end of the fill: the whole body, or why it failed.
    pub async fn complete(self: &Arc<Self>) -> Result<Bytes, Arc<EdgeError>> {
        let mut rx = self.progress.subscribe();
        loop {
            let now = rx.borrow_and_update().clone();
            match now {
                Progress::Complete => {}
                Progress::Failed(e) => return Err(e),
                Progress::Receiving => {
                    if rx.changed().await.is_err() {
                        return Err(Arc::new(EdgeError::Internal("the fill was dropped".into())));
                    }
                    continue;
                }
            }
            let c = self.lock();
            if c.chunks.len() == 1 {
                return Ok(c.chunks[0].clone());
            }
            let mut buf = BytesMut::with_capacity(self.len as usize);
            for chunk in &c.chunks {
                buf.extend_from_slice(chunk);
            }
            return Ok(buf.freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};

    async fn collect(s: impl Stream<Item = Result<Bytes, std::io::Error>>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        futures::pin_mut!(s);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_get_what_arrived_then_the_rest_and_ranges_cut_exactly() {
        let body = GrowingBody::new(10, Some("\"e\"".into()));
        body.push(Bytes::from_static(b"0123")).unwrap();
        let whole = tokio::spawn(collect(body.reader(0, 10)));
        let range = tokio::spawn(collect(body.reader(2, 7)));
        body.push(Bytes::from_static(b"456")).unwrap();
        body.push(Bytes::from_static(b"789")).unwrap();
        assert_eq!(body.finish(true).unwrap().unwrap(), Bytes::from_static(b"0123456789"));
        // Everything but the last byte goes out before the fill is marked complete.
        let held = body.reader(0, 10);
        futures::pin_mut!(held);
        let mut early = Vec::new();
        while let Some(Some(chunk)) = held.next().now_or_never() {
            early.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(early, b"012345678");
        body.mark_complete();
        assert_eq!(&held.next().await.unwrap().unwrap()[..], b"9");
        assert_eq!(whole.await.unwrap().unwrap(), b"0123456789");
        assert_eq!(range.await.unwrap().unwrap(), b"23456");
        // A late reader is served from the contiguous copy.
        assert_eq!(collect(body.reader(5, 10)).await.unwrap(), b"56789");
        assert_eq!(&body.complete().await.unwrap()[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_failed_fill_fails_every_reader_and_too_many_bytes_are_refused() {
        let body = GrowingBody::new(8, None);
        body.push(Bytes::from_static(b"abcd")).unwrap();
        assert!(body.push(Bytes::from_static(b"efghi")).is_err(), "past the declared length");
        let reader = tokio::spawn(collect(body.reader(0, 8)));
        assert!(body.finish(true).is_err(), "4 of 8 bytes is not complete");
        body.fail(Arc::new(EdgeError::UpstreamTruncated { url: "u".into(), detail: "cut".into() }));
        assert!(reader.await.unwrap().is_err());
        assert!(body.complete().await.is_err());
        // Bytes that arrived before the break are still readable on their own.
        assert_eq!(collect(body.reader(0, 4)).await.unwrap(), b"abcd");
    }
}
