//! The edge's accept side: a connection cap (the listener takes a permit
//! before it accepts, so connections beyond `max_connections` wait in the
//! kernel's backlog instead of taking memory and CPU from the ones being
//! served), and the serve loop, one accept loop per core on its own
//! single-threaded runtime (`svc::serve::per_core`) sharing that cap.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// A limit on open connections, shared by every listener made from it.
#[derive(Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionCap {
    /// At most `max` (at least one) connections open at once.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// `inner`, accepting only while this cap has room.
    pub fn listener(&self, inner: TcpListener) -> CappedListener {
        CappedListener { inner, permits: Arc::clone(&self.permits), max: self.max }
    }

    /// A handle that counts the connections open right now (for heartbeats).
    pub fn gauge(&self) -> ConnectionGauge {
        ConnectionGauge { permits: Arc::clone(&self.permits), max: self.max }
    }
}

/// A TCP listener that holds at most `max` connections open at once.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
}

impl CappedListener {
    /// Caps `inner` at `max` open connections.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        ConnectionCap::new(max).listener(inner)
    }

    /// A handle that counts the connections open right now (for heartbeats).
    pub fn gauge(&self) -> ConnectionGauge {
        ConnectionGauge { permits: Arc::clone(&self.permits), max: self.max }
    }
}

/// Per-connection limits of the serve loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// A client must send a request's headers within this long; a kept-alive
    /// connection idle this long between requests is closed too.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` with one accept loop per core, all under
/// `cap`, until `shutdown` resolves; then each loop stops accepting and
/// returns once its open connections have finished their requests.
pub async fn serve(
    listener: TcpListener,
    cap: ConnectionCap,
    app: Router,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let threads = svc::serve::default_threads();
    svc::serve::per_core("edge", listener.into_std()?, threads, shutdown, move |listener, stop| {
        accept_loop(cap.listener(listener), app.clone(), settings, stop.signal())
    })
    .await
}

/// One thread's loop: HTTP/1.1, or HTTP/2 when a connection opens with the
/// h2 preface (prior knowledge, no TLS), with a header read timeout for
/// HTTP/1 and keep-alive pings for HTTP/2; the peer address reaches handlers
/// as `ConnectInfo<PeerAddr>`.
async fn accept_loop(
    mut listener: CappedListener,
    app: Router,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let timeout = settings.header_read_timeout.max(Duration::from_millis(1));
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(timeout);
    // A silent HTTP/2 peer is found by pings: no answer within the timeout closes it.
    http.http2().timer(TokioTimer::new()).keep_alive_interval(Some(timeout)).keep_alive_timeout(timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = Listener::accept(&mut listener) => accepted,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            app.clone().oneshot(req)
        });
        let started = stream.started();
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service).into_owned());
        // Until its protocol is known, hyper waits for a client without a timer:
        // one that sends too little for that within the timeout is dropped here.
        let silent = async move {
            tokio::time::sleep(timeout).await;
            if started.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        // Tracked by `graceful`, which shutdown waits on.
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                () = silent => tracing::debug!(%peer, "client sent no request in time; closed"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Counts a [`CappedListener`]'s open connections.
#[derive(Clone)]
pub struct ConnectionGauge {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionGauge {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.max.saturating_sub(self.permits.available_permits()) as u64
    }
}

/// An accepted connection; its permit is returned when it closes.
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    started: Arc<AtomicBool>,
    /// Bytes read so far, counted up to `PREFACE_BYTES`.
    read: u64,
}

impl Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            // The semaphore is never closed; if it were, accept nothing more.
            return std::future::pending().await;
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let started = Arc::new(AtomicBool::new(false));
                    return (CappedStream { stream, _permit: permit, started, read: 0 }, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, as axum does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The peer address of a connection, for handlers (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Bytes a client must send before its protocol is known (the length of
/// the HTTP/2 preface; any HTTP/1 request line with headers is longer).
const PREFACE_BYTES: u64 = 24;

impl CappedStream {
    /// Set once the connection has carried a request: `PREFACE_BYTES` read, or anything written.
    pub fn started(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.started)
    }

    fn mark_started(&mut self) {
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this.read < PREFACE_BYTES {
            this.read += (buf.filled().len() - before) as u64;
            if this.read >= PREFACE_BYTES {
                this.mark_started();
            }
        }
        r
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.mark_started();
        svc::zerocopy::poll_write_vectored(Pin::new(&mut this.stream), cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.mark_started();
        // Body slices that are views of the disk tier's store file or of a RAM
        // tier memfd go out with sendfile; the rest (heads, small bodies) with writev.
        svc::zerocopy::poll_write_vectored(Pin::new(&mut this.stream), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Keeps hyper writing head and body in one writev, without copying the body.
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
