//! The steering HTTP service: `/v1/play`, `/v1/redirect`, `/v1/steering`,
//! `/v1/dash`, `/v1/heartbeat`, `/v1/edges`, `/health`.
//!
//! Content steering reaches real players this way. HLS: the redirect sends the
//! player to an edge's signed master playlist, which the edge rewrites to carry
//! `#EXT-X-CONTENT-STEERING` pointing at `/v1/steering/{title}`. DASH: the
//! redirect for `dash/manifest.mpd` sends the player to `/v1/dash/{title}/manifest.mpd`
//! here, which serves the title's MPD (fetched from an edge or the origin,
//! cached briefly) with `<ContentSteering>` and one signed `<BaseURL>` per
//! ranked edge.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use vod::edge_auth::KeySpec;
use vod::steering::{Format, Heartbeat, PlayResponse, PlayUrl};
use vod::token::TokenKey;
use vod::{ObjectKey, TitleId};

use crate::client_ip::{client_ip, Forwarding};
use crate::config::{Config, Edge};
use crate::content_steering::{is_pathway_id, master_uris, steer_mpd, steering_manifest, MasterUris, Pathway};
use crate::coverage::{self, CoverageMap};
use crate::decide::{decide, Policy, Target};
use crate::enroll::{Caller, EdgeAuth};
use crate::health::{self, EdgeHealth, ProbeSettings};
use crate::registry::{HeartbeatError, Registry, RegistrySettings};
use crate::Error;

/// Largest heartbeat body accepted (about half a million title ids).
const HEARTBEAT_MAX_BYTES: usize = 16 << 20;

/// The URL-signing keys: the one steering signs with, and the set it hands to
/// enrolled edges with every heartbeat answer (signing key first).
#[derive(Debug)]
pub struct Keys {
    pub signing: TokenKey,
    pub specs: Vec<KeySpec>,
}

impl Keys {
    /// The keys `config` names.
    pub fn of(config: &Config) -> Self {
        Self {
            signing: TokenKey::new(config.token_key_id.clone(), config.token_secret.clone().into_bytes()),
            specs: config.token_key_specs(),
        }
    }
}

/// Keys read by every request and swapped whole on a reload.
pub type SharedKeys = Arc<arc_swap::ArcSwap<Keys>>;

/// State shared by the handlers. The registry is written by the prober and by
/// heartbeats, read by every decision; the coverage table is swapped whole on reload.
struct AppState {
    registry: watch::Sender<Registry>,
    coverage: watch::Receiver<Arc<CoverageMap>>,
    /// The signing key and the accepted set; replaced on a config reload.
    keys: SharedKeys,
    ttl_s: u64,
    forwarding: Forwarding,
    policy: Policy,
    origin: Option<String>,
    /// Who may heartbeat: the bearer `heartbeat_token` or enrolled edges' signatures.
    auth: Arc<EdgeAuth>,
    steering_ttl_s: u64,
    /// Fetches MPDs for `/v1/dash` and master playlists for steering manifests.
    http: reqwest::Client,
    /// Manifest text per (title, path) and when it was fetched (Unix ms).
    manifests: Mutex<ManifestCache>,
}

/// Manifest text by (title, path under the title), with when it was fetched (Unix ms).
type ManifestCache = HashMap<(TitleId, &'static str), (u64, Arc<str>)>;

/// How long a fetched manifest is reused (VOD manifests change only on republish).
const MANIFEST_CACHE_MS: u64 = 10_000;
/// Largest manifest accepted from upstream.
const MANIFEST_MAX_BYTES: usize = 4 << 20;

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
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn unix_now_s() -> u64 {
    health::unix_now_ms() / 1000
}

/// One ranked candidate, resolved against the registry snapshot.
struct Resolved {
    base: String,
    edge: String,
    site: String,
    reasons: Vec<String>,
    /// Edges get signed URLs; the origin fallback does not.
    signed: bool,
}

impl AppState {
    /// Ranks where the client at `ip` should fetch `title`; 503 when nowhere.
    fn choose(&self, title: &TitleId, ip: IpAddr) -> Result<Vec<Resolved>, ApiError> {
        self.choose_n(title, ip, usize::MAX)
    }

    /// The best `n` of [`Self::choose`]: a redirect resolves only the first.
    fn choose_n(&self, title: &TitleId, ip: IpAddr, n: usize) -> Result<Vec<Resolved>, ApiError> {
        let client = self.coverage.borrow().lookup(ip);
        let now = health::unix_now_ms();
        let reg = self.registry.borrow();
        let choices = decide(client.as_ref(), title, &reg, &self.policy, now);
        let resolved: Vec<Resolved> = choices
            .iter()
            .filter_map(|c| match c.target {
                Target::Edge(i) => {
                    let e = &reg.edges()[i].edge;
                    Some(Resolved {
                        base: e.base_url.clone(),
                        edge: e.name.clone(),
                        site: e.site.clone(),
                        reasons: c.reason_strings(),
                        signed: true,
                    })
                }
                Target::Origin => self.origin.as_ref().map(|o| Resolved {
                    base: o.clone(),
                    edge: "origin".to_owned(),
                    site: "origin".to_owned(),
                    reasons: c.reason_strings(),
                    signed: false,
                }),
            })
            .take(n)
            .collect();
        drop(reg);
        tracing::debug!(%title, %ip, site = ?client.as_ref().map(|c| &c.site), candidates = resolved.len(), "decided");
        if resolved.is_empty() {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "no healthy edge available".to_owned(),
            });
        }
        Ok(resolved)
    }

    /// `{edge}/t/{token}/{key}` for edges, `{origin}/{key}` for the origin.
    fn url(&self, r: &Resolved, token: &str, key: &str) -> String {
        if r.signed {
            format!("{}/t/{token}/{key}", r.base)
        } else {
            format!("{}/{key}", r.base)
        }
    }

    fn token(&self, title: &TitleId) -> String {
        self.keys.load().signing.sign(title, unix_now_s().saturating_add(self.ttl_s))
    }

    fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        client_ip(peer.ip(), xff, &self.forwarding)
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
        .map(|r| PlayUrl { url: s.url(&r, &token, &key), edge: r.edge, site: r.site, reasons: r.reasons })
        .collect();
    let body = PlayResponse { title: title.to_string(), format, ttl_s: s.ttl_s, urls };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn redirect(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    // The request itself, not a `HeaderMap` extractor: that one copies every header.
    req: Request,
) -> Result<Response, ApiError> {
    let Path((raw_title, rest)) = path.map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    let title = TitleId::new(raw_title).map_err(|e| ApiError::bad_request(format!("bad title id: {e}")))?;
    let key = ObjectKey::parse(&format!("titles/{title}/{rest}"))
        .map_err(|e| ApiError::bad_request(format!("bad object path {rest:?}: {e}")))?;
    let ranked = s.choose_n(&title, s.client(peer, req.headers()), 1)?;
    // DASH players get the steered MPD from here (one BaseURL per ranked edge).
    if rest == "dash/manifest.mpd" {
        let location = HeaderValue::from_str(&format!("/v1/dash/{title}/manifest.mpd")).map_err(|_| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "MPD URL is not a valid header value".to_owned(),
        })?;
        return Ok((
            StatusCode::FOUND,
            [(header::LOCATION, location), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response());
    }
    let location = s.url(&ranked[0], &s.token(&title), &key.to_string());
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

/// `GET /v1/steering/{title}` query: the format, plus what HLS/DASH players report.
#[derive(Debug, Deserialize)]
struct SteeringQuery {
    format: Option<Format>,
    #[serde(rename = "_HLS_pathway")]
    hls_pathway: Option<String>,
    #[serde(rename = "_HLS_throughput")]
    hls_throughput: Option<String>,
    #[serde(rename = "_DASH_pathway")]
    dash_pathway: Option<String>,
    #[serde(rename = "_DASH_throughput")]
    dash_throughput: Option<String>,
}

/// The host name (no port) of a base URL.
fn host_of(base: &str) -> Option<String> {
    reqwest::Url::parse(base).ok()?.host_str().map(str::to_owned)
}

/// The content-steering manifest: one pathway per candidate edge, re-decided on every poll.
async fn steering(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SteeringQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let title = parse_title(path)?;
    let Query(q) = query.map_err(|_| ApiError::bad_request("format must be hls or dash"))?;
    let format = q.format.unwrap_or(Format::Hls);
    let ranked = s.choose(&title, s.client(peer, &headers))?;
    if !ranked.iter().any(|r| r.signed && is_pathway_id(&r.edge)) {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "no healthy edge available".to_owned(),
        });
    }
    // HLS clones carry whole per-variant URIs (a HOST replacement cannot change the port):
    // read the variant and rendition playlists from the title's master playlist. Without it
    // the clones still replace the host, which is enough for edges on one port.
    let uris = match format {
        Format::Hls => match s.manifest_text(&title, "hls/master.m3u8", &ranked).await {
            Ok(master) => master_uris(&master).unwrap_or_else(|| {
                tracing::warn!(%title, "upstream master playlist is not a master playlist");
                MasterUris::default()
            }),
            Err(e) => {
                tracing::warn!(%title, error = %e.message, "no master playlist for per-variant pathway URIs");
                MasterUris::default()
            }
        },
        Format::Dash => MasterUris::default(),
    };
    let token = s.token(&title);
    let absolute = |r: &Resolved, list: &[(String, String)]| -> BTreeMap<String, String> {
        list.iter().map(|(id, uri)| (id.clone(), s.url(r, &token, &format!("titles/{title}/hls/{uri}")))).collect()
    };
    let pathways: Vec<Pathway> = ranked
        .iter()
        .filter(|r| r.signed && is_pathway_id(&r.edge))
        .filter_map(|r| {
            Some(Pathway {
                id: r.edge.clone(),
                host: host_of(&r.base)?,
                variants: absolute(r, &uris.variants),
                renditions: absolute(r, &uris.renditions),
            })
        })
        .collect();
    if pathways.is_empty() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "no healthy edge available".to_owned(),
        });
    }
    let (current, throughput) = match format {
        Format::Hls => (q.hls_pathway, q.hls_throughput),
        Format::Dash => (q.dash_pathway, q.dash_throughput),
    };
    tracing::debug!(%title, ?current, ?throughput, best = %pathways[0].id, "steering poll");
    let fmt = match format {
        Format::Hls => "hls",
        Format::Dash => "dash",
    };
    let reload = format!("/v1/steering/{title}?format={fmt}");
    let manifest = steering_manifest(format, s.steering_ttl_s, reload, &pathways);
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(manifest)).into_response())
}

impl AppState {
    /// The title's manifest `rest` (`dash/manifest.mpd` or `hls/master.m3u8`): from the cache,
    /// else from the first ranked edge (unsigned fill path) or the origin that answers.
    async fn manifest_text(
        &self,
        title: &TitleId,
        rest: &'static str,
        ranked: &[Resolved],
    ) -> Result<Arc<str>, ApiError> {
        let now = health::unix_now_ms();
        let cache_key = (title.clone(), rest);
        if let Ok(cache) = self.manifests.lock() {
            if let Some((at, text)) = cache.get(&cache_key) {
                if now.saturating_sub(*at) < MANIFEST_CACHE_MS {
                    return Ok(Arc::clone(text));
                }
            }
        }
        let key = format!("titles/{title}/{rest}");
        let mut last = String::from("no edge or origin to fetch it from");
        let sources = ranked.iter().map(|r| r.base.as_str()).chain(self.origin.as_deref());
        for base in sources {
            let url = format!("{base}/{key}");
            match fetch_text(&self.http, &url).await {
                Ok(text) => {
                    let text: Arc<str> = Arc::from(text);
                    if let Ok(mut cache) = self.manifests.lock() {
                        // Bounded: titles are few, but do not let a scan of ids grow it forever.
                        if cache.len() > 10_000 {
                            cache.clear();
                        }
                        cache.insert(cache_key, (now, Arc::clone(&text)));
                    }
                    return Ok(text);
                }
                Err(e) => {
                    tracing::debug!(%url, error = %e, "manifest fetch failed, trying the next source");
                    last = format!("{url}: {e}");
                }
            }
        }
        Err(ApiError { status: StatusCode::BAD_GATEWAY, message: format!("could not fetch {rest}; last: {last}") })
    }
}

async fn fetch_text(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err("not found".to_owned());
    }
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if resp.content_length().is_some_and(|n| n > MANIFEST_MAX_BYTES as u64) {
        return Err("manifest too large".to_owned());
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MANIFEST_MAX_BYTES {
        return Err("manifest too large".to_owned());
    }
    String::from_utf8(body.to_vec()).map_err(|_| "manifest is not UTF-8".to_owned())
}

/// `GET /v1/dash/{title}/manifest.mpd`: the title's MPD with `<ContentSteering>` and one signed
/// `<BaseURL>` per ranked candidate, so DASH players can move between edges mid-stream.
async fn dash_mpd(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let title = parse_title(path)?;
    let ranked = s.choose(&title, s.client(peer, &headers))?;
    let mpd = s.manifest_text(&title, "dash/manifest.mpd", &ranked).await?;
    let token = s.token(&title);
    let dir = format!("titles/{title}/dash/");
    let locations: Vec<(String, String)> =
        ranked.iter().filter(|r| is_pathway_id(&r.edge)).map(|r| (r.edge.clone(), s.url(r, &token, &dir))).collect();
    // Absolute, so the player can poll it whatever its base URL handling.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.contains(['/', '"', '<']));
    let server_uri = match host {
        Some(h) => format!("http://{h}/v1/steering/{title}?format=dash"),
        None => format!("/v1/steering/{title}?format=dash"),
    };
    let body = steer_mpd(&mpd, &server_uri, &locations).ok_or_else(|| ApiError {
        status: StatusCode::BAD_GATEWAY,
        message: "upstream MPD has no <MPD> element".to_owned(),
    })?;
    Ok(([(header::CONTENT_TYPE, "application/dash+xml"), (header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// `POST /v1/heartbeat` answer.
#[derive(Debug, Serialize)]
struct HeartbeatAck {
    edge: String,
    /// Whether the edge gets players right now.
    available: bool,
    /// Why not, if it does not.
    out_reason: Option<&'static str>,
    /// Send the next heartbeat within this long (a third of the timeout: two may be lost).
    interval_ms: u64,
    /// The URL-signing keys to accept, signing key first: only for enrolled (signed) edges.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_keys: Option<Vec<KeySpec>>,
    /// Digest of the prefix set held for the edge (`vod::steering::prefixes_digest`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    prefixes_sha256: Option<String>,
}

async fn heartbeat(
    State(s): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if s.auth.heartbeat_token.is_none() && s.auth.store.is_none() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "heartbeats are disabled (no heartbeat_token or edges_dir configured)".to_owned(),
        });
    }
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let now = health::unix_now_ms();
    let caller = match s.auth.authorize("POST", path, &headers, &body, now / 1000) {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(path, reason = "no credentials", "edge request refused");
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong bearer token".to_owned(),
            });
        }
        Err(r) => {
            // A revoked edge that still talks leaves routing now, not at its heartbeat timeout.
            if r.reason == crate::enroll::REASON_REVOKED {
                if let Some(name) = headers.get(vod::edge_auth::HEADER_EDGE).and_then(|v| v.to_str().ok()) {
                    s.registry.send_if_modified(|reg| reg.set_revoked(name, true));
                }
            }
            return Err(ApiError { status: r.status, message: r.message });
        }
    };
    let mut hb: Heartbeat =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad heartbeat: {e}")))?;
    let signed = match &caller {
        Caller::Edge(rec) => {
            if hb.edge != rec.name {
                tracing::warn!(signer = %rec.name, claimed = %hb.edge, "edge request refused: heartbeat for another edge");
                return Err(ApiError {
                    status: StatusCode::FORBIDDEN,
                    message: format!("edge {:?} may only heartbeat for itself, not {:?}", rec.name, hb.edge),
                });
            }
            // The enrolled site wins over whatever the edge says.
            hb.site = Some(rec.site.clone());
            true
        }
        Caller::Bearer => false,
    };
    let mut applied = Err(HeartbeatError::BadName);
    let name = hb.edge.clone();
    s.registry.send_modify(|reg| {
        if signed {
            // Enrolled again after a revocation: a new box under the old name.
            reg.set_revoked(&name, false);
        }
        applied = reg.heartbeat(hb, now);
    });
    let i = applied.map_err(|e| match e {
        HeartbeatError::UnknownEdge(_) => ApiError { status: StatusCode::NOT_FOUND, message: e.to_string() },
        e => ApiError::bad_request(e.to_string()),
    })?;
    let reg = s.registry.borrow();
    let out = reg.out_reason(i, now);
    let ack = HeartbeatAck {
        edge: reg.edges()[i].edge.name.clone(),
        available: out.is_none(),
        out_reason: out.map(|o| o.as_str()),
        interval_ms: (reg.settings().heartbeat_timeout_ms / 3).max(1),
        token_keys: signed.then(|| s.keys.load().specs.clone()),
        prefixes_sha256: reg.edges()[i].reported_digest.clone(),
    };
    drop(reg);
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(ack)).into_response())
}

/// What `/v1/edges` says about an edge's last heartbeat.
#[derive(Debug, Serialize)]
struct HeartbeatReport {
    age_ms: u64,
    ok: bool,
    load_bps: u64,
    connections: u64,
    capacity_bytes: u64,
    max_load_bps: u64,
    drained: bool,
    titles: usize,
}

/// One edge as `/v1/edges` reports it.
#[derive(Debug, Serialize)]
struct EdgeReport {
    name: String,
    url: String,
    site: String,
    prefixes: Vec<String>,
    /// Client prefixes its heartbeats report (learned over BGP or static on the edge).
    reported_prefixes: Vec<String>,
    drained: bool,
    #[serde(flatten)]
    health: EdgeHealth,
    available: bool,
    out_reason: Option<&'static str>,
    overloaded: bool,
    heartbeat: Option<HeartbeatReport>,
    breaker_backoff_ms: u64,
    breaker_open_until_unix_ms: u64,
}

async fn edges(State(s): State<Arc<AppState>>) -> Response {
    let now = health::unix_now_ms();
    let reg = s.registry.borrow();
    let edges: Vec<EdgeReport> = reg
        .edges()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let out = reg.out_reason(i, now);
            EdgeReport {
                name: e.edge.name.clone(),
                url: e.edge.base_url.clone(),
                site: e.edge.site.clone(),
                prefixes: e.edge.prefixes.iter().map(ToString::to_string).collect(),
                reported_prefixes: e.reported_prefixes.iter().map(ToString::to_string).collect(),
                drained: e.edge.drained,
                health: e.probe.clone(),
                available: out.is_none(),
                out_reason: out.map(|o| o.as_str()),
                overloaded: e.overloaded(s.policy.overload_percent),
                heartbeat: e.heartbeat.as_ref().map(|h| HeartbeatReport {
                    age_ms: now.saturating_sub(h.at_ms),
                    ok: h.ok,
                    load_bps: h.load_bps,
                    connections: h.connections,
                    capacity_bytes: h.capacity_bytes,
                    max_load_bps: h.max_load_bps,
                    drained: h.drained,
                    titles: h.titles.len(),
                }),
                breaker_backoff_ms: e.breaker.backoff_ms,
                breaker_open_until_unix_ms: e.breaker.open_until_ms,
            }
        })
        .collect();
    drop(reg);
    let prefixes = s.coverage.borrow().len();
    ([(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({ "edges": edges, "coverage_prefixes": prefixes })))
        .into_response()
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
        .route("/v1/steering/{title}", get(steering))
        .route("/v1/dash/{title}/manifest.mpd", get(dash_mpd))
        // A heartbeat lists every title an edge holds: allow big ones.
        .route("/v1/heartbeat", post(heartbeat).layer(DefaultBodyLimit::max(HEARTBEAT_MAX_BYTES)))
        .route("/v1/edges", get(edges))
        .fallback(not_found)
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// What the coverage table is built from besides the configured edges.
struct CoverageSources {
    edges: Vec<Edge>,
    /// Coverage file, re-read when its modification time changes.
    file: Option<PathBuf>,
    file_entries: Vec<(ipnet::IpNet, String)>,
    /// How often the file's mtime is checked and reported prefixes are aged.
    interval: Duration,
    /// How long an edge's reported prefixes outlive its last heartbeat.
    reported_hold_ms: u64,
}

/// Keeps the coverage table current: configured edge prefixes, then the prefixes edges report
/// in heartbeats (learned over BGP), then the coverage file. The table is rebuilt only when a
/// reported set or the set of edges whose reports count changes (checked on every registry
/// change, one pass over the edges) or the file changes; a file that no longer parses is
/// logged and its previous entries kept.
fn spawn_coverage_keeper(
    mut src: CoverageSources,
    mut registry: watch::Receiver<Registry>,
    table: watch::Sender<Arc<CoverageMap>>,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen = src.file.as_deref().and_then(mtime);
        let mut ticker = tokio::time::interval(src.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reported_key = (0u64, Vec::new());
        let mut reported: Vec<(ipnet::IpNet, String)> = Vec::new();
        loop {
            let tick = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticker.tick() => true,
                changed = registry.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
            };
            let mut rebuild = false;
            if let (true, Some(path)) = (tick, src.file.clone()) {
                let now = mtime(&path);
                if now != seen {
                    let p = path.clone();
                    match tokio::task::spawn_blocking(move || coverage::load_file(&p)).await {
                        Ok(Ok(entries)) => {
                            tracing::info!(file = %path.display(), entries = entries.len(), "coverage file reloaded");
                            src.file_entries = entries;
                            rebuild = true;
                            seen = now;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "coverage file not reloaded; keeping the previous table");
                            seen = now;
                        }
                        Err(e) => tracing::warn!(error = %e, "coverage reload task failed"),
                    }
                }
            }
            {
                let now = health::unix_now_ms();
                let reg = registry.borrow_and_update();
                let key = reg.reported_key(now, src.reported_hold_ms);
                if key != reported_key {
                    reported = reg.reported_coverage(now, src.reported_hold_ms);
                    reported_key = key;
                    rebuild = true;
                }
            }
            if rebuild {
                let entries = reported.iter().cloned().chain(src.file_entries.iter().cloned()).collect();
                let map = CoverageMap::build(&src.edges, entries);
                tracing::info!(prefixes = map.len(), reported = reported.len(), "coverage rebuilt");
                table.send_replace(Arc::new(map));
            }
        }
        tracing::debug!("coverage keeper stopped");
    })
}

/// Validates `config`, starts the health prober and the coverage keeper (coverage file
/// reloads, prefixes edges report) and serves on `listener` until `shutdown` resolves;
/// then stops the background tasks and waits for them.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_reloadable(config, listener, shutdown, watch::channel(None).1).await
}

/// [`run`], taking each config sent on `reloads` (`steering serve` sends one
/// per SIGHUP, already validated): the URL-signing keys (`token_key_id`,
/// `token_secret`, `[[token_keys]]`) change at once, for new redirects and in
/// the next heartbeat answers; other settings need a restart, which is logged
/// when they differ.
pub async fn run_reloadable(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: watch::Receiver<Option<Config>>,
) -> Result<(), Error> {
    let edges = config.validate()?;
    let keys: SharedKeys = Arc::new(arc_swap::ArcSwap::from_pointee(Keys::of(&config)));
    let reloader = spawn_key_reloader(config.clone(), reloads, Arc::clone(&keys));
    let file_entries = match &config.coverage_file {
        Some(path) => coverage::load_file(path)?,
        None => Vec::new(),
    };
    let (coverage_tx, coverage_rx) = watch::channel(Arc::new(CoverageMap::build(&edges, file_entries.clone())));
    let client = health::probe_client(config.probe_timeout())?;
    let registry = Registry::new(
        edges.clone(),
        RegistrySettings {
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            failures_to_down: config.probe_failures_to_down,
            breaker_backoff_ms: config.breaker_backoff_ms,
            breaker_max_backoff_ms: config.breaker_max_backoff_ms,
            breaker_window_ms: config.breaker_window_ms,
        },
    );
    let (registry_tx, _registry_rx) = watch::channel(registry);
    let (stop_probe_tx, stop_probe_rx) = oneshot::channel::<()>();
    let (stop_cov_tx, stop_cov_rx) = oneshot::channel::<()>();
    let settings = ProbeSettings { interval: config.probe_interval(), timeout: config.probe_timeout() };
    let prober = health::spawn_prober(client, settings, registry_tx.clone(), stop_probe_rx);
    let coverage_keeper = spawn_coverage_keeper(
        CoverageSources {
            edges: edges.clone(),
            file: config.coverage_file.clone(),
            file_entries: file_entries.clone(),
            interval: Duration::from_millis(config.coverage_reload_ms),
            reported_hold_ms: config.reported_prefix_hold_ms,
        },
        registry_tx.subscribe(),
        coverage_tx,
        stop_cov_rx,
    );
    let popularity = match &config.popularity_dir {
        Some(dir) => crate::popularity::PopularityStore::open(dir, crate::popularity::DEFAULT_DAYS_KEPT)?,
        None => crate::popularity::PopularityStore::in_memory(crate::popularity::DEFAULT_DAYS_KEPT),
    };
    let store = match &config.edges_dir {
        Some(dir) => Some(Arc::new(crate::enroll::EnrollStore::open(dir)?)),
        None => None,
    };
    let auth = Arc::new(EdgeAuth { heartbeat_token: config.heartbeat_token.clone(), store: store.clone() });
    let (stop_rev_tx, stop_rev_rx) = oneshot::channel::<()>();
    let revocations = store.clone().map(|st| {
        crate::enroll::spawn_revocation_watcher(st, registry_tx.clone(), Duration::from_millis(500), stop_rev_rx)
    });
    // The watcher stops with the server.
    let shutdown = async move {
        shutdown.await;
        let _ = stop_rev_tx.send(());
    };
    let enroll = store.map(|store| {
        crate::enroll::router(Arc::new(crate::enroll::EnrollApi {
            store,
            keys: Arc::clone(&keys),
            steering_url: config.public_url.as_deref().map(|u| u.trim_end_matches('/').to_owned()),
            upstream: config.origin_base(),
            heartbeat_interval_ms: (config.heartbeat_timeout_ms / 3).max(1),
        }))
    });
    let popularity = crate::popularity::router(popularity, registry_tx.subscribe(), Arc::clone(&auth));
    let origin = config.origin_base();
    let state = Arc::new(AppState {
        registry: registry_tx,
        coverage: coverage_rx,
        keys,
        ttl_s: config.token_ttl_s,
        forwarding: Forwarding { trust_all: config.trust_forwarded_for, proxies: config.trusted_proxy_nets()? },
        policy: Policy {
            overload_percent: config.overload_percent,
            max_urls: config.max_urls,
            nearby: config.nearby.clone(),
            fallback_sites: config.fallback_sites.clone(),
            origin: origin.is_some(),
        },
        origin,
        auth,
        steering_ttl_s: config.steering_ttl_s,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(Error::ProbeClient)?,
        manifests: Mutex::new(HashMap::new()),
    });
    // Whether serving ends by the signal or by an error, the stop senders are sent or
    // dropped, and either ends the background tasks.
    let mut app = router(state).merge(popularity);
    if let Some(enroll) = enroll {
        app = app.merge(enroll);
    }
    // One accept loop per core on its own single-threaded runtime: a request then never
    // wakes another thread (that and socket work were most of the CPU of a redirect).
    // The probes and the coverage keeper stay on this runtime.
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let stop_background = async move {
        shutdown.await;
        let _ = stop_probe_tx.send(());
        let _ = stop_cov_tx.send(());
    };
    let served = svc::serve::per_core(
        "steering",
        listener.into_std()?,
        svc::serve::default_threads(),
        stop_background,
        move |listener, stop| {
            // Answers are one small write each: send them at once rather than behind Nagle.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                let _ = tcp.set_nodelay(true);
            });
            std::future::IntoFuture::into_future(
                axum::serve(listener, make_service.clone()).with_graceful_shutdown(stop.signal()),
            )
        },
    )
    .await;
    prober.await?;
    if let Some(r) = revocations {
        r.await?;
    }
    coverage_keeper.await?;
    reloader.abort();
    served?;
    Ok(())
}

/// Applies the URL-signing keys of each config sent on `reloads` (see [`run_reloadable`]).
fn spawn_key_reloader(
    mut current: Config,
    mut reloads: watch::Receiver<Option<Config>>,
    keys: SharedKeys,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while reloads.changed().await.is_ok() {
            let Some(new) = reloads.borrow_and_update().clone() else { continue };
            let mut rest = new.clone();
            rest.token_key_id.clone_from(&current.token_key_id);
            rest.token_secret.clone_from(&current.token_secret);
            rest.token_keys.clone_from(&current.token_keys);
            if rest != current {
                tracing::warn!("config reloaded: the URL-signing keys apply now; other changes need a restart");
            }
            keys.store(Arc::new(Keys::of(&new)));
            let ids: Vec<String> = new.token_key_specs().into_iter().map(|k| k.id).collect();
            tracing::info!(signing = %new.token_key_id, accepted = ?ids, "URL-signing keys reloaded");
            current = new;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        use crate::enroll::same_secret;
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }

    #[test]
    fn host_is_the_name_without_the_port() {
        // HLS players set it as the URL's hostname, where a port is ignored.
        assert_eq!(host_of("http://127.0.0.1:4567").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("https://edge.example").as_deref(), Some("edge.example"));
    }
}
