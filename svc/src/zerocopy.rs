//! Zero-copy sends of file-backed memory: a registry of address ranges that
//! are read-only shared mappings of a file (a cache's store file, a memfd),
//! and a vectored socket write that sends the slices it finds there with
//! `sendfile(2)` instead of copying them through `writev(2)`.
//!
//! hyper's HTTP/1 writer (and h2's, for DATA payloads) hands the connection
//! `IoSlice`s that point straight into the response body's `Bytes`. When a
//! body is a view of a registered mapping, the kernel can send the file's
//! pages instead of copying the bytes into the socket buffer: the socket
//! then references those pages until the peer has them. Whoever registers a
//! mapping therefore promises that the bytes of a range, once handed out,
//! never change in the file's pages (a memfd sealed against writes; a store
//! that punches a hole before it reuses space, so pages still in flight are
//! orphaned with their old contents instead of being overwritten).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

/// Slices shorter than this are copied with the rest of a `writev`: a
/// syscall per small slice would cost more than the copy saves.
pub const MIN_SENDFILE_BYTES: usize = 16 * 1024;

struct Mapping {
    start: usize,
    end: usize,
    fd: RawFd,
    file_offset: u64,
    id: u64,
}

/// Sorted by `start`; ranges never overlap (they are live mappings).
static MAPPINGS: RwLock<Vec<Mapping>> = RwLock::new(Vec::new());
/// `MAPPINGS.len()`, readable without the lock, so processes that register
/// nothing pay one atomic load per write.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static SENDFILE_BYTES: AtomicU64 = AtomicU64::new(0);
static COPIED_BYTES: AtomicU64 = AtomicU64::new(0);

fn read_mappings() -> std::sync::RwLockReadGuard<'static, Vec<Mapping>> {
    // Every critical section leaves the vector sorted; a poisoned lock is still usable.
    MAPPINGS.read().unwrap_or_else(|p| p.into_inner())
}

fn write_mappings() -> std::sync::RwLockWriteGuard<'static, Vec<Mapping>> {
    MAPPINGS.write().unwrap_or_else(|p| p.into_inner())
}

/// A registered mapping; dropping it removes the registration.
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut all = write_mappings();
        all.retain(|m| m.id != self.id);
        REGISTERED.store(all.len(), Ordering::Release);
    }
}

/// Registers `[ptr, ptr + len)` as a view of the file `fd` from `file_offset`.
///
/// # Safety
///
/// Until the returned registration is dropped: the range must be a mapping
/// of `fd` at `file_offset` that reads exactly as the file does (shared,
/// read-only), `fd` must stay open, and bytes of the range that a reader may
/// still hold must never change in the file's pages (see the module doc).
/// Drop the registration before unmapping the range or closing `fd`.
pub unsafe fn register(ptr: *const u8, len: usize, fd: RawFd, file_offset: u64) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let start = ptr as usize;
    let mut all = write_mappings();
    let at = all.partition_point(|m| m.start < start);
    all.insert(at, Mapping { start, end: start.saturating_add(len), fd, file_offset, id });
    REGISTERED.store(all.len(), Ordering::Release);
    Registration { id }
}

/// Where a slice of registered memory lives in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    /// The file (owned by the registration's holder).
    pub fd: RawFd,
    /// Offset of the slice's first byte in the file.
    pub offset: u64,
}

/// The file behind `slice`, if all of it lies in one registered mapping.
pub fn file_of(slice: &[u8]) -> Option<FileSpan> {
    file_at(slice.as_ptr() as usize, slice.len())
}

/// The file behind the `len` bytes at address `addr`, if all of them lie in
/// one registered mapping (an address is only compared, never read).
pub fn file_at(addr: usize, len: usize) -> Option<FileSpan> {
    if REGISTERED.load(Ordering::Acquire) == 0 || len == 0 {
        return None;
    }
    let end = addr.checked_add(len)?;
    let all = read_mappings();
    let at = all.partition_point(|m| m.start <= addr);
    let m = all.get(at.checked_sub(1)?)?;
    (end <= m.end).then(|| FileSpan { fd: m.fd, offset: m.file_offset + (addr - m.start) as u64 })
}

/// Bytes sent with `sendfile` and bytes copied with `writev`/`sendmsg` by
/// [`poll_write_vectored`] in this process so far.
pub fn sent_bytes() -> (u64, u64) {
    (SENDFILE_BYTES.load(Ordering::Relaxed), COPIED_BYTES.load(Ordering::Relaxed))
}

/// `AsyncWrite::poll_write_vectored` for a TCP stream, sending slices of
/// registered mappings (at least [`MIN_SENDFILE_BYTES`] long) with
/// `sendfile` and the others with `sendmsg`, in order. The slices before a
/// file-backed one go with `MSG_MORE`, so a response's head and the start
/// of its body leave in one segment. Returns how many leading bytes of
/// `bufs` were written, as `AsyncWrite` requires (possibly fewer than all).
pub fn poll_write_vectored(
    stream: Pin<&mut TcpStream>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mapped = |b: &IoSlice<'_>| b.len() >= MIN_SENDFILE_BYTES && file_of(b).is_some();
    if REGISTERED.load(Ordering::Acquire) == 0 || !bufs.iter().any(mapped) {
        let r = stream.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            COPIED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        }
        return r;
    }
    let stream = stream.get_mut();
    let sock = stream.as_raw_fd();
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match stream.try_io(Interest::WRITABLE, || send_mixed(sock, bufs)) {
            Ok(n) => return Poll::Ready(Ok(n)),
            // Readiness was cleared: the next poll registers the waker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A TCP stream whose writes go through [`poll_write_vectored`]: slices of
/// registered mappings leave with `sendfile`, the rest with `sendmsg`.
/// Reads, flush and shutdown are the stream's own. With sendfile off
/// (like nginx's `sendfile off`) every write is the stream's own `writev`.
#[derive(Debug)]
pub struct SendfileStream {
    stream: TcpStream,
    sendfile: bool,
}

impl SendfileStream {
    /// Wraps `stream`, sendfile on.
    pub fn new(stream: TcpStream) -> Self {
        Self::with_sendfile(stream, true)
    }

    /// Wraps `stream`; `sendfile` false writes everything with `writev`.
    pub fn with_sendfile(stream: TcpStream, sendfile: bool) -> Self {
        Self { stream, sendfile }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

impl tokio::io::AsyncRead for SendfileStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sendfile {
            poll_write_vectored(Pin::new(&mut this.stream), cx, bufs)
        } else {
            Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then hands over head and body slices as they are, so a body
        // that is a view of a mapping reaches `sendfile` uncopied.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One pass over `bufs`: runs of plain slices with `sendmsg`, file-backed
/// slices with `sendfile`. Stops at the first short write or error.
fn send_mixed(sock: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut total = 0usize;
    let mut i = 0;
    while i < bufs.len() {
        let span = if bufs[i].len() >= MIN_SENDFILE_BYTES { file_of(&bufs[i]) } else { None };
        let step = match span {
            Some(span) => {
                let want = bufs[i].len();
                i += 1;
                sendfile(sock, span, want).map(|n| (n, want))
            }
            None => {
                let run_start = i;
                while i < bufs.len() && !(bufs[i].len() >= MIN_SENDFILE_BYTES && file_of(&bufs[i]).is_some()) {
                    i += 1;
                }
                let run = &bufs[run_start..i];
                let want: usize = run.iter().map(|b| b.len()).sum();
                sendmsg(sock, run, i < bufs.len()).map(|n| (n, want))
            }
        };
        match step {
            Ok((n, want)) => {
                total += n;
                if n < want {
                    break;
                }
            }
            // What went out is reported; the error recurs on the next call.
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

fn sendmsg(sock: RawFd, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
    if bufs.is_empty() {
        return Ok(0);
    }
    // SAFETY: a zeroed msghdr is valid; iov points at `bufs`, which IoSlice
    // lays out exactly as `struct iovec`, and outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let n = loop {
        // SAFETY: `sock` is an open socket and `msg` is valid for the call.
        let n = unsafe { libc::sendmsg(sock, &msg, flags) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    COPIED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
    Ok(n as usize)
}

fn sendfile(sock: RawFd, span: FileSpan, len: usize) -> io::Result<usize> {
    let mut offset = libc::off_t::try_from(span.offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range"))?;
    let n = loop {
        // SAFETY: both descriptors are open (the registration's holder keeps the
        // file open while the slice it backs is borrowed here); `offset` is ours.
        let n = unsafe { libc::sendfile(sock, span.fd, &mut offset, len) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == 0 {
        // Only past the end of the file: the mapping outlived its file's length.
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file behind a mapped body is shorter than it"));
    }
    SENDFILE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// A read-only shared mapping of a temporary file holding `data`.
    struct Mapped {
        _file: std::fs::File,
        ptr: *mut libc::c_void,
        len: usize,
    }

    impl Mapped {
        fn new(data: &[u8]) -> Self {
            let mut file = tempfile_in_target();
            file.write_all(data).unwrap();
            let ptr = unsafe {
                libc::mmap(std::ptr::null_mut(), data.len(), libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            Self { _file: file, ptr, len: data.len() }
        }
        fn bytes(&self) -> &[u8] {
            unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }

    fn tempfile_in_target() -> std::fs::File {
        static FILES: AtomicU64 = AtomicU64::new(0);
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("svc-zerocopy-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn lookups_find_only_registered_ranges_and_stop_at_deregistration() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let m = Mapped::new(&data);
        let fd = m._file.as_raw_fd();
        assert_eq!(file_of(&m.bytes()[10..20]), None, "unregistered");
        let reg = unsafe { register(m.bytes().as_ptr(), m.len, fd, 4096) };
        assert_eq!(file_of(&m.bytes()[10..20]), Some(FileSpan { fd, offset: 4106 }));
        assert_eq!(file_of(m.bytes()), Some(FileSpan { fd, offset: 4096 }));
        let outside = vec![0u8; 10];
        assert_eq!(file_of(&outside), None);
        drop(reg);
        assert_eq!(file_of(&m.bytes()[10..20]), None, "still found after deregistration");
    }

    #[tokio::test]
    async fn mixed_writes_arrive_in_order_and_the_mapped_part_goes_by_sendfile() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(31) % 253) as u8).collect();
        let m = Mapped::new(&data);
        let _reg = unsafe { register(m.bytes().as_ptr(), m.len, m._file.as_raw_fd(), 0) };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let (mut sock, _) = listener.accept().await.unwrap();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_vec();
        let body = &m.bytes()[1000..2_001_000];
        let small = &m.bytes()[5..10]; // mapped, but too short for sendfile
        let tail = b"trailer".to_vec();
        let parts: Vec<&[u8]> = vec![&head, body, small, &tail];
        let want: Vec<u8> = parts.concat();
        let before = sent_bytes().0;
        // Drive the writes the way hyper does: retry with what is left after a short write.
        let mut done = 0usize;
        while done < want.len() {
            let mut skip = done;
            let mut slices = Vec::new();
            for p in &parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                slices.push(IoSlice::new(&p[skip..]));
                skip = 0;
            }
            let n = std::future::poll_fn(|cx| poll_write_vectored(Pin::new(&mut sock), cx, &slices)).await.unwrap();
            assert!(n > 0);
            done += n;
        }
        tokio::io::AsyncWriteExt::shutdown(&mut sock).await.unwrap();
        drop(sock);
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        assert!(sent_bytes().0 - before >= body.len() as u64, "the mapped body was not sent with sendfile");
    }
}
