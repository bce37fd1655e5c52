//! The steering HTTP service: `/v1/play`, `/v1/redirect`, `/v1/edges`, `/health`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use vod::steering::{Format, PlayResponse, PlayUrl};
use vod::token::TokenKey;
use vod::{ObjectKey, TitleId};

use crate::config::{Config, Edge};
use crate::coverage::CoverageMap;
use crate::health::{self, EdgeHealth, ProbeSettings};
use crate::rank::{rank, EdgeStatus, RankedEdge};
use crate::Error;

/// Read-only state shared by the handlers; health is published by the prober.
struct AppState {
    edges: Vec<Edge>,
    coverage: CoverageMap,
    key: TokenKey,
    ttl_s: u64,
    trust_forwarded_for: bool,
    health: watch::Receiver<Vec<EdgeHealth>>,
}

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// The client address used for coverage: the peer, or the first `X-Forwarded-For`
/// address when that header is trusted and parses (else the peer).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trust_forwarded_for: bool) -> IpAddr {
    if !trust_forwarded_for {
        return peer;
    }
    let Some(first) = forwarded_for.and_then(|v| v.split(',').next()).map(str::trim) else {
        return peer;
    };
    first
        .parse::<IpAddr>()
        .or_else(|_| first.parse::<SocketAddr>().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
        .unwrap_or(peer)
}

fn unix_now_s() -> u64 {
    health::unix_now_ms() / 1000
}

impl AppState {
    /// Ranks the usable edges for `title` as seen from `ip`; 503 when there is none.
    fn choose(&self, title: &TitleId, ip: IpAddr) -> Result<Vec<RankedEdge>, ApiError> {
        let client = self.coverage.lookup(ip);
        let health = self.health.borrow().clone();
        let statuses: Vec<EdgeStatus<'_>> = self
            .edges
            .iter()
            .zip(&health)
            .map(|(e, h)| EdgeStatus { name: &e.name, site: &e.site, health: h.state, drained: e.drained })
            .collect();
        let ranked = rank(title, client.as_ref(), &statuses);
        tracing::debug!(%title, %ip, site = ?client.as_ref().map(|c| &c.site), candidates = ranked.len(), "ranked");
        if ranked.is_empty() {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "no healthy edge available".to_owned(),
            });
        }
        Ok(ranked)
    }

    /// `{edge}/t/{token}/{key}`.
    fn signed_url(&self, edge: &Edge, token: &str, key: &str) -> String {
        format!("{}/t/{token}/{key}", edge.base_url)
    }

    fn token(&self, title: &TitleId) -> String {
        self.key.sign(title, unix_now_s().saturating_add(self.ttl_s))
    }

    fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        client_ip(peer.ip().to_canonical(), xff, self.trust_forwarded_for)
    }
}

fn parse_title(path: Result<Path<String>, PathRejection>) -> Result<TitleId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    TitleId::new(raw).map_err(|e| ApiError::bad_request(format!("bad title id: {e}")))
}

#[derive(Debug, Deserialize)]
struct PlayQuery {
    format: Option<Format>,
}

async fn play(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PlayQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let title = parse_title(path)?;
    let Query(q) = query.map_err(|_| ApiError::bad_request("format must be hls or dash"))?;
    let format = q.format.unwrap_or(Format::Hls);
    let ranked = s.choose(&title, s.client(peer, &headers))?;
    let token = s.token(&title);
    let key = format!("titles/{title}/{}", format.manifest_path());
    let urls = ranked
        .into_iter()
        .map(|c| {
            let edge = &s.edges[c.index];
            PlayUrl {
                url: s.signed_url(edge, &token, &key),
                edge: edge.name.clone(),
                site: edge.site.clone(),
                reasons: c.reasons,
            }
        })
        .collect();
    let body = PlayResponse { title: title.to_string(), format, ttl_s: s.ttl_s, urls };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn redirect(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_title, rest)) = path.map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    let title = TitleId::new(raw_title).map_err(|e| ApiError::bad_request(format!("bad title id: {e}")))?;
    let key = ObjectKey::parse(&format!("titles/{title}/{rest}"))
        .map_err(|e| ApiError::bad_request(format!("bad object path {rest:?}: {e}")))?;
    let ranked = s.choose(&title, s.client(peer, &headers))?;
    let best = &s.edges[ranked[0].index];
    let location = s.signed_url(best, &s.token(&title), &key.to_string());
    let location = HeaderValue::from_str(&location).map_err(|_| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "edge URL is not a valid header value".to_owned(),
    })?;
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response())
}

/// One edge as `/v1/edges` reports it.
#[derive(Debug, Serialize)]
struct EdgeReport<'a> {
    name: &'a str,
    url: &'a str,
    site: &'a str,
    prefixes: Vec<String>,
    drained: bool,
    #[serde(flatten)]
    health: EdgeHealth,
}

async fn edges(State(s): State<Arc<AppState>>) -> Response {
    let health = s.health.borrow().clone();
    let edges: Vec<EdgeReport<'_>> = s
        .edges
        .iter()
        .zip(health)
        .map(|(e, health)| EdgeReport {
            name: &e.name,
            url: &e.base_url,
            site: &e.site,
            prefixes: e.prefixes.iter().map(ToString::to_string).collect(),
            drained: e.drained,
            health,
        })
        .collect();
    ([(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({ "edges": edges }))).into_response()
}

async fn health_check() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: "no such endpoint".to_owned() }
}

/// Answers preflights and adds the CORS headers to every response, errors and 302s included.
async fn cors(req: Request, next: Next) -> Response {
    let mut resp =
        if req.method() == Method::OPTIONS { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    for (k, v) in vod::cors::CORS_HEADERS {
        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    resp
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health_check))
        .route("/v1/play/{title}", get(play))
        .route("/v1/redirect/{title}/{*path}", get(redirect))
        .route("/v1/edges", get(edges))
        .fallback(not_found)
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Validates `config`, starts the health prober and serves on `listener` until
/// `shutdown` resolves; then stops the prober and waits for it.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let edges = config.validate()?;
    let client = health::probe_client(config.probe_timeout())?;
    let (health_tx, health_rx) = watch::channel(vec![EdgeHealth::default(); edges.len()]);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let settings = ProbeSettings {
        interval: config.probe_interval(),
        timeout: config.probe_timeout(),
        failures_to_down: config.probe_failures_to_down,
    };
    let prober = health::spawn_prober(client, edges.clone(), settings, health_tx, stop_rx);
    let state = Arc::new(AppState {
        coverage: CoverageMap::from_edges(&edges),
        edges,
        key: TokenKey::new(config.token_key_id.clone(), config.token_secret.clone().into_bytes()),
        ttl_s: config.token_ttl_s,
        trust_forwarded_for: config.trust_forwarded_for,
        health: health_rx,
    });
    // Whether serving ends by the signal or by an error, `stop_tx` is sent or
    // dropped, and either ends the prober.
    let served = axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        })
        .await;
    prober.await?;
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, Some("10.1.2.3, 10.9.9.9"), false), peer);
        assert_eq!(client_ip(peer, Some("10.1.2.3, 10.9.9.9"), true), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some(" 2001:db8::1 "), true), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("10.1.2.3:5555"), true), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("::ffff:10.1.2.3"), true), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("garbage"), true), peer);
        assert_eq!(client_ip(peer, None, true), peer);
    }
}
