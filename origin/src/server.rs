//! The HTTP origin server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, Response, StatusCode};
use axum::Router;
use serde::Deserialize;
use vod::ObjectKey;

use crate::http_object::{add_cors, error_response, object_response, preflight};
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

/// Builds the origin's router over any store.
pub fn router(store: Arc<dyn ObjectStore>) -> Router {
    Router::new().fallback(serve_object).with_state(store).layer(axum::middleware::map_response(add_cors))
}

async fn serve_object(State(store): State<Arc<dyn ObjectStore>>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return preflight();
    }
    if method != Method::GET && method != Method::HEAD {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD and OPTIONS");
    }
    let path = req.uri().path();
    if path == "/health" {
        return error_response(StatusCode::OK, "ok");
    }
    let key = match ObjectKey::parse(path.strip_prefix('/').unwrap_or(path)) {
        Ok(k) => k,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("bad object path: {e}")),
    };
    match store.get(&key).await {
        Ok((body, meta)) => object_response(&method, req.headers(), &key, body, &meta.etag),
        Err(StoreError::NotFound(_)) => error_response(StatusCode::NOT_FOUND, format!("{key} not found")),
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
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(config.root));
    axum::serve(listener, router(store)).with_graceful_shutdown(shutdown).await
}
