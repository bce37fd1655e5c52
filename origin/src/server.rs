//! The HTTP origin server: hyper's HTTP/1 connection loop, one per core,
//! with limits a public-facing server needs (a cap on connections, a header
//! read timeout, a write stall timeout), and one handler that streams
//! objects from a store.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, Request, Response, StatusCode};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use svc::zerocopy::SendfileStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vod::{KeyError, ObjectKey};

use crate::http_object::{add_cors, error_response, preflight, stream_response};
use crate::stall::StallGuard;
use crate::store::{LocalStore, ObjectStore, StoreError};

/// Origin settings (TOML; flags override).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Root directory of the local object store.
    pub root: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Everything `origin serve` reads from its TOML file: `OriginConfig` plus a
/// store location (a directory or `s3://bucket/prefix`) and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Root directory of a local store (same as `store = "DIR"`).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Store location: a directory or `s3://bucket/prefix`.
    #[serde(default)]
    pub store: Option<String>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: ServerLimits,
}

/// What one client may hold of the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A client must send a request's headers within this long.
    pub header_read_timeout_ms: u64,
    /// A client that accepts no response bytes for this long is dropped.
    pub write_stall_timeout_ms: u64,
    /// Longest request target (path and query) accepted; longer gets 414.
    pub max_target_bytes: usize,
    /// How long shutdown waits for in-flight responses.
    pub drain_ms: u64,
    /// Send bodies that are slices of the local store's kept file maps with
    /// `sendfile` (as nginx's `sendfile on`); false copies them with `writev`.
    /// Safe because the store replaces files by rename. A file rewritten in
    /// place by something else could change bytes already queued on a
    /// socket; off, only bytes not yet written could change (the body comes
    /// from the map either way).
    pub sendfile: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            write_stall_timeout_ms: 30_000,
            max_target_bytes: 1024,
            drain_ms: 10_000,
            sendfile: true,
        }
    }
}

#[derive(Clone)]
struct AppState {
    store: Arc<dyn ObjectStore>,
    max_target_bytes: usize,
}

/// Builds the origin's router over any store, with default limits.
pub fn router(store: Arc<dyn ObjectStore>) -> Router {
    router_with(store, &ServerLimits::default())
}

/// Builds the origin's router over any store.
pub fn router_with(store: Arc<dyn ObjectStore>, limits: &ServerLimits) -> Router {
    let state = AppState { store, max_target_bytes: limits.max_target_bytes };
    Router::new().fallback(serve_object).with_state(state).layer(axum::middleware::map_response(add_cors))
}

async fn serve_object(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > state.max_target_bytes {
        return error_response(StatusCode::URI_TOO_LONG, "request target too long");
    }
    if method == Method::OPTIONS {
        return preflight();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD and OPTIONS");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return r;
    }
    let path = req.uri().path();
    if path == "/health" {
        return error_response(StatusCode::OK, "ok");
    }
    let key = match ObjectKey::parse(path.strip_prefix('/').unwrap_or(path)) {
        Ok(k) => k,
        // Traversal and escapes are an attack or a bug: say so. A clean path
        // that names no object is just not there.
        Err(KeyError::Hostile) => return error_response(StatusCode::BAD_REQUEST, "bad object path"),
        Err(_) => return error_response(StatusCode::NOT_FOUND, "not found"),
    };
    match state.store.open(&key).await {
        Ok(reader) => stream_response(&method, req.headers(), &key, reader).await,
        Err(StoreError::NotFound(_)) => error_response(StatusCode::NOT_FOUND, "not found"),
        Err(e) => {
            tracing::error!(%key, error = %e, "store read failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "store read failed")
        }
    }
}

/// Serves `config.root` on `listener` until `shutdown` resolves.
pub async fn run(
    config: OriginConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(Arc::new(LocalStore::new(config.root)), ServerLimits::default(), listener, shutdown).await
}

/// What an over-the-cap connection gets before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\n\
access-control-allow-origin: *\r\nconnection: close\r\n\r\n";

/// Serves `store` on `listener` until `shutdown` resolves, then lets
/// in-flight responses finish (up to `limits.drain_ms`). One accept loop
/// runs per core, each on its own single-threaded runtime
/// (`svc::serve::per_core`); the connection cap is shared by all of them.
pub async fn serve(
    store: Arc<dyn ObjectStore>,
    limits: ServerLimits,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router_with(store, &limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let threads = svc::serve::default_threads();
    svc::serve::per_core("origin", listener.into_std()?, threads, shutdown, move |listener, stop| {
        accept_loop(listener, router.clone(), Arc::clone(&slots), limits.clone(), stop.signal())
    })
    .await
}

/// One thread's accept loop: serves connections until `shutdown`, then
/// waits for its own in-flight responses.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    slots: Arc<Semaphore>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut refusals = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.max(1)));
    let stall = Duration::from_millis(limits.write_stall_timeout_ms.max(1));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = refusals.join_next(), if !refusals.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or similar: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; refusing");
            if refusals.len() < 1024 {
                refusals.spawn(refuse(tcp));
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // Body slices of the store's kept file maps go out with sendfile
        // (`store::mapped`); heads and small bodies with writev.
        let io = TokioIo::new(StallGuard::new(SendfileStream::with_sendfile(tcp, limits.sendfile), stall));
        let conn = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        // Tracked by `graceful`, which shutdown waits on.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    refusals.abort_all();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_millis(limits.drain_ms)) => {
            tracing::warn!("shutdown: dropping connections still open after the drain period");
        }
    }
    Ok(())
}

/// Answers 503 and closes gently: reading what the client sent before
/// closing keeps the kernel from resetting the connection under the reply.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_config_reads_store_and_limits_and_refuses_unknown_keys() {
        let cfg: ServeConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nstore = \"s3://vod/prod\"\n[limits]\nmax_connections = 10\n")
                .unwrap();
        assert_eq!(cfg.store.as_deref(), Some("s3://vod/prod"));
        assert_eq!(cfg.limits.max_connections, 10);
        assert_eq!(cfg.limits.header_read_timeout_ms, ServerLimits::default().header_read_timeout_ms);
        assert!(cfg.limits.sendfile, "sendfile is on by default");
        let off: ServeConfig = toml::from_str("root = \"/srv\"\n[limits]\nsendfile = false\n").unwrap();
        assert!(!off.limits.sendfile);
        assert!(toml::from_str::<ServeConfig>("root = \"/srv\"\nlisten_on = 1\n").is_err());
        assert!(toml::from_str::<ServeConfig>("root = \"/srv\"\n[limits]\nmax_conns = 1\n").is_err());
        // The edge's tests build this by hand; it keeps its two fields.
        let old: OriginConfig = toml::from_str("root = \"/srv\"\n").unwrap();
        assert_eq!(old.listen, default_listen());
    }
}
