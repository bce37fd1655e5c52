//! The edge's HTTP server.
//!
//! One fallback handler parses the raw request path itself: axum never gets
//! to percent-decode it, so `%2e%2e` reaches `ObjectKey::parse` as written and
//! is refused there. Routes:
//!
//! - `/t/{token}/titles/...` — signed player traffic; the token is checked
//!   against the key's title before the cache is touched. With a steering
//!   URL configured, an HLS master playlist served here carries
//!   `#EXT-X-CONTENT-STEERING` pointing at steering (`vod::content_steering`).
//! - `/titles/...` — unsigned fill traffic between edges and the origin.
//! - `/health`, `/metrics`.
//!
//! GET and HEAD only (OPTIONS answers the CORS preflight), CORS on every response.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use origin::http_object::{add_cors, error_response, object_response, preflight, Plan, IMMUTABLE, SHORT_LIVED};
use origin::store::ObjectMeta;
use vod::token::{verify, TokenKey};
use vod::ObjectKey;

use crate::config::EdgeConfig;
use crate::disk::DiskTier;
use crate::error::{EdgeError, Fault};
use crate::fill::{Filler, Found, Source, Upstream, UpstreamSet};
use crate::fill_stream::GrowingBody;
use crate::listener::{ConnectionCap, PeerAddr};
use crate::memory::MemoryTier;
use crate::metrics::{CacheResult, DiskGauges, EdgeMetrics, TierGauges};
use crate::request_log::RequestLog;

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/health` or `/healthz`.
    Health,
    /// `/admin/...` (bearer token).
    Admin,
    /// `/metrics`.
    Metrics,
    /// An object; `token` is `Some` on `/t/{token}/...` paths.
    Object { token: Option<&'a str>, key_path: &'a str },
}

/// Splits a raw (still percent-encoded) request path into its target.
/// The key part is validated later by `ObjectKey::parse`.
pub fn route(path: &str) -> Target<'_> {
    match path {
        "/health" | "/healthz" => Target::Health,
        p if p.starts_with("/admin/") => Target::Admin,
        "/metrics" => Target::Metrics,
        _ => match path.strip_prefix("/t/") {
            Some(rest) => {
                // `/t/{token}` with nothing after it leaves an empty key, which parse refuses.
                let (token, key_path) = rest.split_once('/').unwrap_or((rest, ""));
                Target::Object { token: Some(token), key_path }
            }
            None => Target::Object { token: None, key_path: path.strip_prefix('/').unwrap_or(path) },
        },
    }
}

/// The client address for the request log: the first `X-Forwarded-For`
/// entry when present and parseable, else the TCP peer. The header is taken
/// on trust: the log feeds demand forecasts, not access control, and load
/// generators and front proxies use it to stand in for real clients.
pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok())
        .or_else(|| peer.map(|p| p.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Shared state of one running edge.
pub struct EdgeState {
    pub(crate) name: String,
    /// Accepted URL-signing keys; steering's heartbeat answers replace them on enrolled edges.
    keys: std::sync::RwLock<Arc<[TokenKey]>>,
    pub(crate) filler: Filler,
    pub(crate) metrics: Arc<EdgeMetrics>,
    log: Option<RequestLog>,
    pub(crate) admin_token: Option<String>,
    /// Set by `/admin/drain`: steering is told to send no new players.
    pub(crate) drained: AtomicBool,
    /// Progress of the current prefill run.
    pub(crate) prefill: Arc<crate::prefill::PrefillProgress>,
    /// Steering's base URL, for the content-steering tag of master playlists.
    steering: Option<String>,
    /// The BGP session's gauges for `/metrics` (set once the speaker runs).
    pub(crate) bgp: crate::bgp::BgpGauges,
}

impl EdgeState {
    /// Builds the cache, the upstream client and the metrics from `config`.
    pub fn new(config: &EdgeConfig, log: Option<RequestLog>, metrics: Arc<EdgeMetrics>) -> Result<Self, EdgeError> {
        let upstreams = config
            .all_upstreams()
            .into_iter()
            .map(|u| Upstream::new(u, config.upstream_timeout()))
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = UpstreamSet::new(
            upstreams,
            config.breaker_failures,
            std::time::Duration::from_millis(config.breaker_cooldown_ms),
        );
        let ram = Arc::new(MemoryTier::with_bodies(config.ram_bytes, body_store(config)?));
        let need = crate::memory::mappings_needed(config.ram_bytes);
        if let Some(limit) = crate::memory::max_map_count().filter(|&l| l < need) {
            tracing::warn!(
                max_map_count = limit,
                needed = need,
                "vm.max_map_count is below what a RAM tier full of 64 KiB bodies takes (one mapping each); bodies \
                 beyond it stay on the heap and are copied into sockets (see `edge doctor`)"
            );
        }
        let disk = match config.disk() {
            Some(cfg) => {
                let disk = DiskTier::open(&cfg)?;
                tracing::info!(
                    dir = %cfg.dir.display(),
                    bytes = cfg.capacity_bytes,
                    reloaded = disk.loaded_entries(),
                    "disk tier open"
                );
                Some(Arc::new(disk))
            }
            None => None,
        };
        let filler = Filler::new(upstream, ram, disk, Arc::clone(&metrics), config.manifest_ttl());
        let keys: Vec<TokenKey> = config.token_key_list();
        Ok(Self {
            name: config.name.clone(),
            keys: std::sync::RwLock::new(keys.into()),
            filler,
            metrics,
            log,
            admin_token: config.admin_token.clone(),
            drained: AtomicBool::new(false),
            prefill: Default::default(),
            steering: config.steering_base().map(str::to_owned),
            bgp: Default::default(),
        })
    }
}

/// Where the RAM tier keeps large bodies: `ram_dir` (checked to be a tmpfs) or memfds.
fn body_store(config: &EdgeConfig) -> Result<crate::memory::BodyStore, EdgeError> {
    let Some(dir) = &config.ram_dir else {
        return Ok(crate::memory::BodyStore::memfd());
    };
    let ram_dir = crate::ram_dir::RamDir::open(dir)?;
    let huge = ram_dir.huge_pages();
    if huge.enabled() {
        tracing::info!(dir = %dir.display(), huge_pages = %huge.describe(), "RAM-tier bodies in ram_dir, huge pages on");
    } else {
        tracing::warn!(
            dir = %dir.display(),
            huge_pages = %huge.describe(),
            "RAM-tier bodies in ram_dir without huge pages (mount it with huge=within_size for faster sends)"
        );
    }
    Ok(crate::memory::BodyStore::in_dir(ram_dir))
}

impl EdgeState {
    /// The URL-signing keys accepted right now.
    pub fn token_keys(&self) -> Arc<[TokenKey]> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the accepted URL-signing keys (a rotation handed down by steering).
    pub fn set_token_keys(&self, keys: Vec<TokenKey>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.into();
    }
}

/// The edge's router over `state`. Serve it with connect info (`PeerAddr`)
/// so the request log sees the peer address.
pub fn router(state: Arc<EdgeState>) -> Router {
    Router::new().fallback(handle).with_state(state).layer(axum::middleware::map_response(add_cors))
}

async fn handle(State(state): State<Arc<EdgeState>>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return preflight();
    }
    if route(req.uri().path()) == Target::Admin {
        return crate::admin::handle(&state, &method, req.uri().path(), req.uri().query(), req.headers());
    }
    if method != Method::GET && method != Method::HEAD {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD and OPTIONS");
    }
    match route(req.uri().path()) {
        Target::Health => error_response(StatusCode::OK, "ok"),
        Target::Metrics => metrics_response(&state),
        Target::Admin => error_response(StatusCode::NOT_FOUND, "admin"), // answered above
        Target::Object { token, key_path } => {
            let started = std::time::Instant::now();
            let peer = req.extensions().get::<ConnectInfo<PeerAddr>>().map(|c| c.0 .0);
            let (mut resp, result) = match serve_object(&state, &method, req.headers(), token, key_path, peer).await {
                Ok(served) => served,
                Err(e) => (failure(&state, &e, key_path), CacheResult::Error),
            };
            state.metrics.request(result);
            if result == CacheResult::Miss && ObjectKey::parse(key_path).is_ok_and(|k| k.is_immutable()) {
                state.metrics.segment_miss();
            }
            state.metrics.observe_latency(started.elapsed());
            if method == Method::GET && resp.status().is_success() {
                state.metrics.served(content_length(&resp));
            }
            if result != CacheResult::Error {
                resp.headers_mut().insert("x-cache", HeaderValue::from_static(result.as_str()));
            }
            if let Ok(v) = HeaderValue::from_str(&state.name) {
                resp.headers_mut().insert("x-served-by", v);
            }
            resp
        }
    }
}

async fn serve_object(
    state: &EdgeState,
    method: &Method,
    headers: &HeaderMap,
    token: Option<&str>,
    key_path: &str,
    peer: Option<SocketAddr>,
) -> Result<(Response<Body>, CacheResult), Arc<EdgeError>> {
    let key = ObjectKey::parse(key_path).map_err(|e| Arc::new(e.into()))?;
    if let Some(token) = token {
        verify(&state.token_keys(), token, key.title(), now_unix_s()).map_err(|e| Arc::new(e.into()))?;
    }
    if token.is_none() && only_if_cached(headers) {
        // A peer's prefill asks only for what this edge holds (RFC 9111 5.2.1.7): never fill for it.
        return Ok(match state.filler.cached(&key) {
            Some(obj) => (object_response(method, headers, &key, obj.body, &obj.etag), CacheResult::Hit),
            None => (error_response(StatusCode::GATEWAY_TIMEOUT, "not cached here"), CacheResult::Miss),
        });
    }
    let found = state.filler.lookup(&key).await?;
    let result = match found.source() {
        Source::Hit => CacheResult::Hit,
        Source::DiskHit => CacheResult::DiskHit,
        Source::Stale => CacheResult::Stale,
        Source::Fetched | Source::Joined => CacheResult::Miss,
    };
    if let Some(log) = &state.log {
        log.record(client_ip(headers, peer), key.to_string(), found.len());
    }
    let steered = token.is_some() && state.steering.is_some() && is_master_playlist(&key);
    let obj = match found {
        // The master playlist is rewritten whole; everything else streams while it fills.
        Found::Filling(body, _) if !steered => {
            state.metrics.streamed_miss();
            return Ok((streamed_response(method, headers, &key, &body), result));
        }
        found => found.into_whole().await?.0,
    };
    if let (Some(_), Some(steering)) = (token, &state.steering) {
        if let Some((body, etag)) = steered_master(&key, &obj.body, &obj.etag, steering) {
            return Ok((object_response(method, headers, &key, body, &etag), result));
        }
    }
    Ok((object_response(method, headers, &key, obj.body, &obj.etag), result))
}

/// An HLS master playlist with content steering pointing at `steering`, and its own ETag;
/// None for any other object (or a master that does not parse as one).
fn steered_master(key: &ObjectKey, body: &[u8], etag: &str, steering: &str) -> Option<(bytes::Bytes, String)> {
    let title = key.title();
    if !is_master_playlist(key) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let server_uri = format!("{steering}/v1/steering/{title}?format=hls");
    let steered = vod::content_steering::steer_master_playlist(text, &server_uri)?;
    // A different body needs a different strong ETag.
    let etag = format!("\"{}-steered\"", etag.trim_matches('"'));
    Some((bytes::Bytes::from(steered), etag))
}

fn is_master_playlist(key: &ObjectKey) -> bool {
    key.to_string() == format!("titles/{}/hls/master.m3u8", key.title())
}

/// The response for an object still arriving from upstream: the head at
/// once (length and ETag from the upstream's head, so Range, 304 and 412 are
/// decided as for a cached copy), the body from the fill's buffer as it
/// grows. A Range is served from that buffer too, once its bytes arrive: it
/// is never passed through to the upstream, which would fetch the same bytes
/// twice over the link the fill is already using. If the fill breaks, the
/// body stream fails and hyper aborts the connection: the client sees a
/// body shorter than its Content-Length, never a short one that looks whole.
fn streamed_response(method: &Method, headers: &HeaderMap, key: &ObjectKey, body: &Arc<GrowingBody>) -> Response<Body> {
    let len = body.len();
    // Without an upstream ETag (origin and edges always send one) nothing
    // matches a validator, and no ETag is announced until the body is whole.
    let meta = ObjectMeta { len, etag: body.etag().unwrap_or_default().to_owned(), last_modified: None };
    let plan = origin::http_object::plan(headers, &meta);
    let mut b = Response::builder()
        .status(plan.status())
        .header(header::CONTENT_TYPE, key.content_kind().mime())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, if key.is_immutable() { IMMUTABLE } else { SHORT_LIVED });
    if let Some(v) = body.etag().and_then(|e| HeaderValue::from_str(e).ok()) {
        b = b.header(header::ETAG, v);
    }
    let built = match plan {
        Plan::NotModified | Plan::PreconditionFailed => b.body(Body::empty()),
        Plan::Unsatisfiable => b.header(header::CONTENT_RANGE, format!("bytes */{len}")).body(Body::empty()),
        Plan::Send(range) => {
            let (start, end) = range.map_or((0, len), |r| (r.start, r.end + 1));
            if let Some(r) = range {
                b = b.header(header::CONTENT_RANGE, r.content_range(len));
            }
            let b = b.header(header::CONTENT_LENGTH, end - start);
            if method == Method::HEAD {
                b.body(Body::empty())
            } else {
                b.body(Body::from_stream(body.reader(start, end)))
            }
        }
    };
    built.unwrap_or_else(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("building a response: {e}")))
}

fn failure(state: &EdgeState, e: &EdgeError, key_path: &str) -> Response<Body> {
    match e.fault() {
        Fault::Client => tracing::debug!(edge = %state.name, path = key_path, error = %e, "request refused"),
        Fault::Upstream | Fault::Local => {
            tracing::warn!(edge = %state.name, path = key_path, fault = e.fault().as_str(), error = %e, "request failed")
        }
    }
    error_response(e.status(), e.client_message())
}

fn metrics_response(state: &EdgeState) -> Response<Body> {
    let ram = state.filler.ram();
    ram.settle();
    let gauges =
        TierGauges { bytes: ram.weighted_bytes(), entries: ram.entries(), capacity_bytes: ram.capacity_bytes() };
    let disk = state.filler.disk().map(|d| DiskGauges { log: d.stats(), counters: d.counters() });
    let mut text = state.metrics.render(&state.name, gauges, disk);
    text.push_str(&state.prefill.render(&state.name));
    text.push_str(&state.bgp.render(&state.name));
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

fn only_if_cached(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("only-if-cached")))
}

fn content_length(resp: &Response<Body>) -> u64 {
    resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Serves the edge on `listener` until `shutdown` resolves, then flushes the request log.
pub async fn run(
    config: EdgeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    config.validate()?;
    let metrics = Arc::new(EdgeMetrics::default());
    let (log, writer) = match &config.request_log {
        Some(path) => {
            let (log, writer) = RequestLog::open(path, Arc::clone(&metrics)).await?;
            (Some(log), Some(writer))
        }
        None => (None, None),
    };
    let state = Arc::new(EdgeState::new(&config, log, metrics)?);
    if config.token_secret.is_none() && config.token_keys.is_empty() {
        tracing::warn!("no token_secret: every signed /t/{{token}}/ path will be refused with 403");
    }
    tracing::info!(name = %config.name, upstreams = ?config.all_upstreams(), ram_bytes = config.ram_bytes, "edge serving");
    let prefill = config.prefill_plan.clone().map(|location| {
        let settings = crate::prefill::PrefillSettings {
            rate_bps: config.prefill_rate_bps.or(config.prefill_rate_bytes_per_s.map(|b| b.saturating_mul(8))),
            window: config.prefill_window.as_deref().and_then(|w| crate::prefill::PrefillWindow::parse(w).ok()),
            ..Default::default()
        };
        let (filler, progress) = (state.filler.clone(), Arc::clone(&state.prefill));
        let signer = config.signer();
        tokio::spawn(async move {
            // Loaded here, not before serving: an unreachable plan source must not keep the edge down.
            // Steering may not know this edge until its first heartbeat, or be restarting: retry, backing
            // off to a minute between tries.
            let mut wait = std::time::Duration::from_millis(500);
            let plan = loop {
                match crate::prefill::load_plan_signed(&location, signer.as_ref()).await {
                    Ok(plan) => break plan,
                    Err(e) => {
                        tracing::warn!(plan = %location.display(), error = %e, retry_in_ms = wait.as_millis() as u64, "prefill: no plan yet")
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            };
            tracing::info!(plan = %location.display(), objects = plan.plan.objects.len(), "prefill starting");
            crate::prefill::run(filler, plan, settings, progress).await;
        })
    });
    let public_url = match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let addr = listener.local_addr().map_err(|e| EdgeError::io("reading the listen address", e))?;
            if addr.ip().is_unspecified() && config.steering.is_some() {
                return Err(EdgeError::Config(format!(
                    "listening on {addr}: set public_url (--public-url) so steering can send players here"
                )));
            }
            format!("http://{addr}")
        }
    };
    let cap = ConnectionCap::new(config.max_connections);
    // The BGP session with the ISP's router (if any) learns the client prefixes heartbeats report.
    let (speaker, client_prefixes) = crate::bgp::start(config.bgp.as_ref(), &config.static_prefixes).await?;
    if let Some(s) = &speaker {
        state.bgp.attach(s);
    }
    if speaker.is_some() && config.steering.is_none() {
        tracing::warn!("bgp is on but steering is not set: the learned prefixes are reported nowhere");
    }
    let (stop_hb_tx, stop_hb_rx) = tokio::sync::oneshot::channel::<()>();
    let heartbeats = config.steering_base().map(|steering| {
        let settings = crate::heartbeat::HeartbeatSettings {
            endpoint: format!("{steering}/v1/heartbeat"),
            token: config.heartbeat_token.clone(),
            signer: config.signer(),
            interval: std::time::Duration::from_millis(config.heartbeat_interval_ms),
            public_url,
            site: config.site.clone(),
            max_load_bps: config.max_load_bps.unwrap_or(0),
            prefixes: client_prefixes,
        };
        tracing::info!(steering, every_ms = config.heartbeat_interval_ms, "heartbeats on");
        crate::heartbeat::spawn(Arc::clone(&state), settings, cap.gauge(), stop_hb_rx)
    });
    // Daily popularity for steering's forecasts, summed from the request log.
    let reporter = match (config.steering_base(), &config.request_log) {
        (Some(steering), Some(log)) => Some(crate::prefill_report::spawn(crate::prefill_report::ReporterSettings {
            log: log.clone(),
            steering: steering.to_owned(),
            token: config.heartbeat_token.clone(),
            signer: config.signer(),
            edge: config.name.clone(),
            site: config.site.clone(),
            interval: crate::prefill_report::REPORT_INTERVAL,
        })),
        _ => None,
    };
    // Graceful shutdown waits for open connections, so when `serve` returns no
    // request holds the log's sender any more and the writer can drain. The
    // heartbeats stop first, with a last one saying drained.
    let conn = crate::listener::ConnSettings {
        header_read_timeout: std::time::Duration::from_millis(config.header_read_timeout_ms),
    };
    let served = crate::listener::serve(listener, cap, router(state), conn, async move {
        shutdown.await;
        let _ = stop_hb_tx.send(());
    })
    .await;
    if let Some(task) = heartbeats {
        let _ = task.await;
    }
    if let Some(speaker) = speaker {
        speaker.shutdown().await;
    }
    if let Some(task) = reporter {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = prefill {
        // What is on disk stays; the next start resumes the plan.
        task.abort();
        let _ = task.await;
    }
    if let Some(writer) = writer {
        writer.finish().await?;
    }
    served.map_err(|e| EdgeError::io("serving HTTP", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_token_and_key_without_decoding() {
        assert_eq!(route("/health"), Target::Health);
        assert_eq!(route("/healthz"), Target::Health);
        assert_eq!(route("/admin/status"), Target::Admin);
        assert_eq!(route("/metrics"), Target::Metrics);
        assert_eq!(
            route("/t/abc/titles/t1/v1/1.m4s"),
            Target::Object { token: Some("abc"), key_path: "titles/t1/v1/1.m4s" }
        );
        assert_eq!(route("/t/abc"), Target::Object { token: Some("abc"), key_path: "" });
        assert_eq!(route("/titles/%2e%2e/x"), Target::Object { token: None, key_path: "titles/%2e%2e/x" });
    }

    #[test]
    fn client_ip_prefers_the_first_forwarded_address() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, Some(peer)), "192.0.2.1".parse::<IpAddr>().unwrap());
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3, 192.0.2.9"));
        assert_eq!(client_ip(&h, Some(peer)), "10.1.2.3".parse::<IpAddr>().unwrap());
        h.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_ip(&h, Some(peer)), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
