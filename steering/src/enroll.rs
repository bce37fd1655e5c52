//! Edge enrollment and the authentication of edges' requests.
//!
//! - [`EnrollStore`]: one JSON file per edge in `edges_dir` (written
//!   atomically, mode 0600), so steering replicas sharing the directory agree
//!   and a restart keeps them. `steering edges add` creates a record with the
//!   SHA-256 of a one-time token; `POST /v1/enroll` claims the token
//!   exclusively (a marker file created with `create_new`, so two replicas
//!   cannot both accept it) and stores a fresh per-edge secret;
//!   `steering edges revoke` marks the record revoked.
//! - [`EdgeAuth`]: who sent a request to `/v1/heartbeat`, `/v1/popularity` or
//!   `/v1/fill-plan/{edge}`: the static bearer `heartbeat_token`, or an
//!   enrolled edge's signature ([`vod::edge_auth`]). Records are re-read
//!   whenever their file changes (a stat per request), so a revocation
//!   applies to the next request without a restart.
//! - [`spawn_revocation_watcher`]: takes revoked edges out of routing within
//!   half a second of `edges revoke`, even if they send nothing.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vod::edge_auth::{self, EnrollRequest, EnrollResponse, SignedHeaders};

use crate::registry::Registry;

/// The [`Refusal::reason`] of a request signed by a revoked edge.
pub const REASON_REVOKED: &str = "edge revoked";

/// Largest enrollment request accepted.
const ENROLL_MAX_BYTES: usize = 16 << 10;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("edges_dir {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("edge record {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{0:?} is not a usable name: 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    BadName(String),
    #[error("edge {0:?} is enrolled; revoke it first to enroll a new box under that name")]
    Exists(String),
    #[error("no edge called {0:?}")]
    Unknown(String),
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
    #[error("--ttl {0:?}: expected a duration like 30m, 1h, 2d or seconds")]
    BadTtl(String),
}

/// One enrolled (or to-be-enrolled) edge, as stored in `{edges_dir}/{name}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRecord {
    /// The edge's name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// When `edges add` created it, Unix seconds.
    pub created_unix_s: u64,
    /// Hex SHA-256 of the enrollment token (the token itself is never stored).
    pub token_sha256: String,
    /// The token is refused after this instant, Unix seconds.
    pub token_expires_unix_s: u64,
    /// When the token was exchanged, if it was.
    #[serde(default)]
    pub enrolled_unix_s: Option<u64>,
    /// Base64 per-edge secret, set at enrollment.
    #[serde(default)]
    pub secret: Option<String>,
    /// Where the edge said players reach it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// When `edges revoke` cut it off, if it did.
    #[serde(default)]
    pub revoked_unix_s: Option<u64>,
}

impl EdgeRecord {
    /// Whether `edges revoke` cut it off.
    pub fn revoked(&self) -> bool {
        self.revoked_unix_s.is_some()
    }

    /// A one-word state for `edges list`.
    pub fn state(&self, now_s: u64) -> &'static str {
        if self.revoked() {
            "revoked"
        } else if self.enrolled_unix_s.is_some() {
            "enrolled"
        } else if now_s > self.token_expires_unix_s {
            "token-expired"
        } else {
            "pending"
        }
    }
}

/// Identity of a record file on disk: it changes whenever the file is replaced.
type FileStamp = (u64, u64, i64, i64, u64);

fn stamp(meta: &std::fs::Metadata) -> FileStamp {
    (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size())
}

/// Edge records in a directory, with a cache keyed by each file's stat.
#[derive(Debug)]
pub struct EnrollStore {
    dir: PathBuf,
    cache: Mutex<HashMap<String, (FileStamp, Arc<EdgeRecord>)>>,
}

/// Reads `n` bytes from the operating system's random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, EnrollError> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| EnrollError::Random(e.to_string()))?;
    Ok(buf)
}

/// Parses `--ttl`: `90s`, `30m`, `1h`, `2d` or bare seconds.
pub fn parse_ttl(text: &str) -> Result<u64, EnrollError> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| EnrollError::BadTtl(text.to_owned()))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(EnrollError::BadTtl(text.to_owned())),
    };
    match n.checked_mul(mult) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(EnrollError::BadTtl(text.to_owned())),
    }
}

impl EnrollStore {
    /// The store in `dir` (created, mode 0700, if missing).
    pub fn open(dir: &Path) -> Result<Self, EnrollError> {
        let io = |source| EnrollError::Io { path: dir.to_owned(), source };
        for sub in ["claims", "locks"] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join(sub)).map_err(io)?;
        }
        Ok(Self { dir: dir.to_owned(), cache: Mutex::new(HashMap::new()) })
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The record of `name`, re-read when its file changed; `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Arc<EdgeRecord>>, EnrollError> {
        if !edge_auth::is_edge_name(name) {
            return Ok(None);
        }
        let path = self.path_of(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(EnrollError::Io { path, source }),
        };
        let st = stamp(&meta);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, rec)) = cache.get(name) {
            if *seen == st {
                return Ok(Some(Arc::clone(rec)));
            }
        }
        let text = std::fs::read_to_string(&path).map_err(|source| EnrollError::Io { path: path.clone(), source })?;
        let rec: EdgeRecord = serde_json::from_str(&text)
            .map_err(|e| EnrollError::Parse { path: path.clone(), reason: e.to_string() })?;
        if rec.name != name {
            return Err(EnrollError::Parse { path, reason: format!("names edge {:?}", rec.name) });
        }
        let rec = Arc::new(rec);
        cache.insert(name.to_owned(), (st, Arc::clone(&rec)));
        Ok(Some(rec))
    }

    /// Every record, by name.
    pub fn list(&self) -> Result<Vec<Arc<EdgeRecord>>, EnrollError> {
        let io = |source| EnrollError::Io { path: self.dir.clone(), source };
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if edge_auth::is_edge_name(n) {
                    names.push(n.to_owned());
                }
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(r) = self.get(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// An exclusive lock on `name`'s record (`flock` on `locks/NAME.lock`),
    /// held until the returned file is dropped: `add`, `revoke` and `enroll`
    /// read, change and write a record under it, so two of them (in this
    /// process, another replica or the `steering edges` command) never
    /// overwrite each other's change.
    fn lock(&self, name: &str) -> Result<std::fs::File, EnrollError> {
        let path = self.dir.join("locks").join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|source| EnrollError::Io { path, source })?;
        Ok(file)
    }

    /// Writes `rec` atomically (temp file, fsync, rename), mode 0600: it holds the edge's secret.
    fn save(&self, rec: &EdgeRecord) -> Result<(), EnrollError> {
        let path = self.path_of(&rec.name);
        let suffix = edge_auth::sha256_hex(&random_bytes(8)?);
        let tmp = self.dir.join(format!(".{}.json.{}.tmp", rec.name, &suffix[..12]));
        let io = |source| EnrollError::Io { path: path.clone(), source };
        let body = serde_json::to_vec_pretty(rec)
            .map_err(|e| EnrollError::Parse { path: path.clone(), reason: e.to_string() })?;
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }

    /// `steering edges add`: a new record for `name` at `site`; returns the one-time token.
    pub fn add(&self, name: &str, site: &str, ttl_s: u64, now_s: u64) -> Result<(String, EdgeRecord), EnrollError> {
        if !edge_auth::is_edge_name(name) {
            return Err(EnrollError::BadName(name.to_owned()));
        }
        if !edge_auth::is_edge_name(site) {
            return Err(EnrollError::BadName(site.to_owned()));
        }
        let _lock = self.lock(name)?;
        if let Some(old) = self.get(name)? {
            if old.enrolled_unix_s.is_some() && !old.revoked() {
                return Err(EnrollError::Exists(name.to_owned()));
            }
        }
        // The name travels in the token so enrollment finds the record in one read.
        let token = format!("{name}.{}", base64_url(&random_bytes(32)?));
        let rec = EdgeRecord {
            name: name.to_owned(),
            site: site.to_owned(),
            created_unix_s: now_s,
            token_sha256: edge_auth::sha256_hex(token.as_bytes()),
            token_expires_unix_s: now_s.saturating_add(ttl_s),
            enrolled_unix_s: None,
            secret: None,
            public_url: None,
            revoked_unix_s: None,
        };
        self.save(&rec)?;
        Ok((token, rec))
    }

    /// `steering edges revoke`: from the next request on the edge is refused.
    pub fn revoke(&self, name: &str, now_s: u64) -> Result<EdgeRecord, EnrollError> {
        if !edge_auth::is_edge_name(name) {
            return Err(EnrollError::Unknown(name.to_owned()));
        }
        let _lock = self.lock(name)?;
        let Some(rec) = self.get(name)? else { return Err(EnrollError::Unknown(name.to_owned())) };
        let mut rec = (*rec).clone();
        if rec.revoked_unix_s.is_none() {
            rec.revoked_unix_s = Some(now_s);
            self.save(&rec)?;
        }
        Ok(rec)
    }

    /// Exchanges an enrollment token for the edge's record with a fresh secret.
    pub fn enroll(&self, req: &EnrollRequest, now_s: u64) -> Result<EdgeRecord, Refusal> {
        let token = req.token.trim();
        let Some((name, _)) = token.rsplit_once('.') else {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown enrollment token", "malformed token"));
        };
        if !edge_auth::is_edge_name(name) {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown enrollment token", "no such edge"));
        }
        let _lock = self.lock(name).map_err(Refusal::internal)?;
        let rec = match self.get(name) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown enrollment token", "no such edge")),
            Err(e) => return Err(Refusal::internal(e)),
        };
        let presented = edge_auth::sha256_hex(token.as_bytes());
        if !same_secret(presented.as_bytes(), rec.token_sha256.as_bytes()) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unknown enrollment token",
                "token does not match the record (forged or superseded)",
            ));
        }
        if rec.revoked() {
            return Err(Refusal::new(StatusCode::FORBIDDEN, format!("edge {name:?} is revoked"), "edge revoked"));
        }
        if rec.enrolled_unix_s.is_some() {
            return Err(Refusal::new(StatusCode::FORBIDDEN, "enrollment token already used", "token reused"));
        }
        if now_s > rec.token_expires_unix_s {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("enrollment token expired at {} (Unix s); ask for a new one", rec.token_expires_unix_s),
                "token expired",
            ));
        }
        // The claim: whichever replica creates the marker first enrolls; every other one refuses.
        let marker = self.dir.join("claims").join(&rec.token_sha256);
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&marker) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Refusal::new(StatusCode::FORBIDDEN, "enrollment token already used", "token reused"));
            }
            Err(source) => return Err(Refusal::internal(EnrollError::Io { path: marker, source })),
        }
        let mut rec = (*rec).clone();
        rec.secret = Some(edge_auth::encode_secret(&random_bytes(edge_auth::SECRET_LEN).map_err(Refusal::internal)?));
        rec.enrolled_unix_s = Some(now_s);
        rec.public_url.clone_from(&req.public_url);
        self.save(&rec).map_err(Refusal::internal)?;
        Ok(rec)
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares secrets without leaking where they differ through timing.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refused request: the answer, and the reason logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403 or 500.
    pub status: StatusCode,
    /// What the client is told.
    pub message: String,
    /// Why, for the log line.
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { status, message: message.into(), reason: reason.into() }
    }

    fn internal(e: EnrollError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "enrollment store unavailable", e.to_string())
    }

    /// The JSON error answer.
    pub fn response(&self) -> Response {
        let mut resp = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Who sent an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The static bearer `heartbeat_token` (configured edges, tools).
    Bearer,
    /// An enrolled edge, by its signature.
    Edge(Arc<EdgeRecord>),
}

/// The credentials steering accepts from edges.
#[derive(Debug)]
pub struct EdgeAuth {
    /// Static bearer token, if configured.
    pub heartbeat_token: Option<String>,
    /// Enrolled edges, if `edges_dir` is configured.
    pub store: Option<Arc<EnrollStore>>,
}

impl EdgeAuth {
    /// Checks the request's credentials: `Ok(None)` when it carries none at all (the caller
    /// decides whether that is acceptable). Every refusal is logged with its reason.
    pub fn authorize(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_s: u64,
    ) -> Result<Option<Caller>, Refusal> {
        let refused = |r: Refusal, edge: Option<&str>| {
            tracing::warn!(path = %path_and_query, edge = edge.unwrap_or("-"), reason = %r.reason, "edge request refused");
            r
        };
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let signed = SignedHeaders::from_lookup(get).map_err(|e| {
            refused(Refusal::new(StatusCode::UNAUTHORIZED, format!("bad signature headers: {e}"), e.to_string()), None)
        })?;
        if let Some(h) = signed {
            let Some(store) = &self.store else {
                let r = Refusal::new(StatusCode::UNAUTHORIZED, "signed requests need edges_dir", "no enrollment store");
                return Err(refused(r, Some(&h.edge)));
            };
            let rec = match store.get(&h.edge) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let r = Refusal::new(StatusCode::UNAUTHORIZED, "unknown edge", "no such enrolled edge");
                    return Err(refused(r, Some(&h.edge)));
                }
                Err(e) => return Err(refused(Refusal::internal(e), Some(&h.edge))),
            };
            if rec.revoked() {
                let r = Refusal::new(StatusCode::UNAUTHORIZED, format!("edge {:?} is revoked", h.edge), REASON_REVOKED);
                return Err(refused(r, Some(&h.edge)));
            }
            let Some(secret) = rec.secret.as_deref().and_then(|s| edge_auth::decode_secret(s).ok()) else {
                let r = Refusal::new(StatusCode::UNAUTHORIZED, "edge is not enrolled yet", "no secret on record");
                return Err(refused(r, Some(&h.edge)));
            };
            return match edge_auth::verify(&secret, &h, method, path_and_query, body, now_s) {
                Ok(()) => Ok(Some(Caller::Edge(rec))),
                Err(e) => {
                    let r = Refusal::new(StatusCode::UNAUTHORIZED, format!("request refused: {e}"), e.to_string());
                    Err(refused(r, Some(&h.edge)))
                }
            };
        }
        let presented = get(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match (presented, &self.heartbeat_token) {
            (None, _) => Ok(None),
            (Some(p), Some(expected)) if same_secret(p.as_bytes(), expected.as_bytes()) => Ok(Some(Caller::Bearer)),
            (Some(_), _) => Err(refused(
                Refusal::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token", "wrong bearer"),
                None,
            )),
        }
    }

    /// Whether `name` is an enrolled edge (whose resources need its signature).
    pub fn is_enrolled(&self, name: &str) -> bool {
        self.store.as_ref().is_some_and(|s| matches!(s.get(name), Ok(Some(r)) if r.enrolled_unix_s.is_some()))
    }
}

/// What `/v1/enroll` hands out besides the record.
#[derive(Debug)]
pub struct EnrollApi {
    /// Where records live.
    pub store: Arc<EnrollStore>,
    /// URL-signing keys, the signing one first (replaced on a config reload).
    pub keys: crate::server::SharedKeys,
    /// Steering's public base URL, if configured.
    pub steering_url: Option<String>,
    /// The origin edges fill from.
    pub upstream: Option<String>,
    /// Heartbeat period edges should use.
    pub heartbeat_interval_ms: u64,
}

/// `POST /v1/enroll`.
pub fn router(api: Arc<EnrollApi>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .layer(axum::extract::DefaultBodyLimit::max(ENROLL_MAX_BYTES))
        .with_state(api)
        .layer(axum::middleware::map_response(|mut resp: Response| async move {
            for (k, v) in vod::cors::CORS_HEADERS {
                resp.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            resp
        }))
}

async fn enroll(State(api): State<Arc<EnrollApi>>, body: Bytes) -> Response {
    let req: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let r = Refusal::new(StatusCode::BAD_REQUEST, format!("bad enrollment request: {e}"), "bad body");
            tracing::warn!(reason = %r.reason, "enrollment refused");
            return r.response();
        }
    };
    if let Some(u) = &req.public_url {
        if let Err(e) = crate::config::check_base_url(u) {
            return Refusal::new(StatusCode::BAD_REQUEST, format!("public_url {u:?}: {e}"), "bad public_url")
                .response();
        }
    }
    let now = crate::health::unix_now_ms() / 1000;
    let store = Arc::clone(&api.store);
    let done = tokio::task::spawn_blocking(move || store.enroll(&req, now)).await;
    let rec = match done {
        Ok(Ok(rec)) => rec,
        Ok(Err(r)) => {
            tracing::warn!(reason = %r.reason, status = r.status.as_u16(), "enrollment refused");
            return r.response();
        }
        Err(e) => {
            let r = Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "enrollment failed", e.to_string());
            tracing::warn!(reason = %r.reason, "enrollment refused");
            return r.response();
        }
    };
    tracing::info!(edge = %rec.name, site = %rec.site, public_url = ?rec.public_url, "edge enrolled");
    let body = EnrollResponse {
        name: rec.name.clone(),
        site: rec.site.clone(),
        secret: rec.secret.clone().unwrap_or_default(),
        token_keys: api.keys.load().specs.clone(),
        steering_url: api.steering_url.clone(),
        upstream: api.upstream.clone(),
        heartbeat_interval_ms: Some(api.heartbeat_interval_ms),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// Every `interval`, marks the edges whose records say revoked as revoked in the registry.
pub fn spawn_revocation_watcher(
    store: Arc<EnrollStore>,
    registry: watch::Sender<Registry>,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let s = Arc::clone(&store);
            let records = match tokio::task::spawn_blocking(move || s.list()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "edge records not read");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "edge record reader failed");
                    continue;
                }
            };
            registry.send_if_modified(|reg| {
                let mut changed = false;
                for r in &records {
                    if reg.set_revoked(&r.name, r.revoked()) {
                        if r.revoked() {
                            tracing::warn!(edge = %r.name, "edge revoked: out of routing");
                        }
                        changed = true;
                    }
                }
                changed
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: &str) -> EnrollRequest {
        EnrollRequest { token: token.to_owned(), public_url: None, listen: None }
    }

    #[test]
    fn a_token_enrolls_once_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = EnrollStore::open(dir.path()).unwrap();
        let (token, rec) = store.add("edge-a", "isp-a", 3600, 1000).unwrap();
        assert!(!std::fs::read_to_string(dir.path().join("edge-a.json")).unwrap().contains(&token));
        assert_eq!(rec.state(1000), "pending");
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(store.enroll(&req(&forged), 1001).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(store.enroll(&req("nobody.abc"), 1001).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(store.enroll(&req("garbage"), 1001).unwrap_err().status, StatusCode::UNAUTHORIZED);
        let rec = store.enroll(&req(&token), 1001).unwrap();
        assert_eq!(edge_auth::decode_secret(rec.secret.as_deref().unwrap()).unwrap().len(), 32);
        let again = store.enroll(&req(&token), 1002).unwrap_err();
        assert_eq!((again.status, again.reason.as_str()), (StatusCode::FORBIDDEN, "token reused"));
        // Another replica with its own cache sees the same.
        let other = EnrollStore::open(dir.path()).unwrap();
        assert_eq!(other.enroll(&req(&token), 1002).unwrap_err().reason, "token reused");
        assert_eq!(other.get("edge-a").unwrap().unwrap().state(1002), "enrolled");
        let mode = std::fs::metadata(dir.path().join("edge-a.json")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(store.add("edge-a", "isp-a", 60, 1003), Err(EnrollError::Exists(_))));

        let (late, _) = store.add("edge-b", "isp-a", 60, 1000).unwrap();
        let expired = store.enroll(&req(&late), 1061).unwrap_err();
        assert_eq!((expired.status, expired.reason.as_str()), (StatusCode::FORBIDDEN, "token expired"));
    }

    #[test]
    fn revocation_is_seen_by_every_reader_and_allows_a_new_box() {
        let dir = tempfile::tempdir().unwrap();
        let store = EnrollStore::open(dir.path()).unwrap();
        let (token, _) = store.add("edge-a", "isp-a", 3600, 0).unwrap();
        store.enroll(&req(&token), 1).unwrap();
        let reader = EnrollStore::open(dir.path()).unwrap();
        assert!(!reader.get("edge-a").unwrap().unwrap().revoked());
        store.revoke("edge-a", 2).unwrap();
        assert!(reader.get("edge-a").unwrap().unwrap().revoked(), "the cached copy was not refreshed");
        assert!(matches!(store.revoke("nobody", 2), Err(EnrollError::Unknown(_))));
        let (new_token, _) = store.add("edge-a", "isp-a", 3600, 3).unwrap();
        assert!(!reader.get("edge-a").unwrap().unwrap().revoked());
        assert_eq!(store.enroll(&req(&token), 4).unwrap_err().status, StatusCode::UNAUTHORIZED, "old token");
        store.enroll(&req(&new_token), 4).unwrap();
        assert_eq!(reader.list().unwrap().len(), 1);
        assert!(matches!(store.add("../x", "s", 1, 0), Err(EnrollError::BadName(_))));
    }

    #[test]
    fn signed_and_bearer_requests_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EnrollStore::open(dir.path()).unwrap());
        let (token, _) = store.add("edge-a", "isp-a", 3600, 0).unwrap();
        let rec = store.enroll(&req(&token), 1).unwrap();
        let auth = EdgeAuth { heartbeat_token: Some("hb".into()), store: Some(Arc::clone(&store)) };
        let signer = edge_auth::EdgeSigner::new("edge-a", rec.secret.as_deref().unwrap()).unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in signer.headers("POST", "/v1/heartbeat", b"{}", 100) {
            h.insert(k, HeaderValue::from_str(&v).unwrap());
        }
        let caller = auth.authorize("POST", "/v1/heartbeat", &h, b"{}", 100).unwrap();
        assert!(matches!(caller, Some(Caller::Edge(r)) if r.name == "edge-a"));
        assert!(auth.authorize("POST", "/v1/heartbeat", &h, b"{ }", 100).is_err(), "tampered body");
        assert!(auth.authorize("POST", "/v1/heartbeat", &h, b"{}", 200).is_err(), "stale");
        store.revoke("edge-a", 2).unwrap();
        assert_eq!(auth.authorize("POST", "/v1/heartbeat", &h, b"{}", 100).unwrap_err().reason, REASON_REVOKED);

        let mut b = HeaderMap::new();
        b.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer hb"));
        assert_eq!(auth.authorize("POST", "/x", &b, b"", 0), Ok(Some(Caller::Bearer)));
        b.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer hx"));
        assert!(auth.authorize("POST", "/x", &b, b"", 0).is_err());
        assert_eq!(auth.authorize("POST", "/x", &HeaderMap::new(), b"", 0), Ok(None));
    }

    #[test]
    fn replicas_racing_for_one_token_enroll_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let (token, _) = EnrollStore::open(dir.path()).unwrap().add("edge-a", "isp-a", 3600, 0).unwrap();
        let wins: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, token) = (dir.path(), token.clone());
                    scope.spawn(move || EnrollStore::open(dir).unwrap().enroll(&req(&token), 1).is_ok())
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    }

    #[test]
    fn a_revocation_racing_an_enrollment_is_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut enrolled_then_revoked = 0;
        for i in 0..40 {
            let name = format!("edge-{i}");
            let (token, _) = EnrollStore::open(dir.path()).unwrap().add(&name, "isp-a", 3600, 0).unwrap();
            let barrier = std::sync::Barrier::new(2);
            let (enrolled, revoked) = std::thread::scope(|scope| {
                let e = scope.spawn(|| {
                    let store = EnrollStore::open(dir.path()).unwrap();
                    barrier.wait();
                    store.enroll(&req(&token), 1).is_ok()
                });
                let r = scope.spawn(|| {
                    let store = EnrollStore::open(dir.path()).unwrap();
                    barrier.wait();
                    store.revoke(&name, 2).is_ok()
                });
                (e.join().unwrap(), r.join().unwrap())
            });
            assert!(revoked);
            let rec = EnrollStore::open(dir.path()).unwrap().get(&name).unwrap().unwrap();
            assert!(rec.revoked(), "round {i}: the revocation was overwritten (enrolled: {enrolled}) {rec:?}");
            enrolled_then_revoked += usize::from(enrolled);
            // An enrollment that won the race keeps its secret in the revoked record.
            assert_eq!(rec.secret.is_some(), enrolled, "round {i}");
        }
        eprintln!("{enrolled_then_revoked} of 40 enrolled before the revocation");
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert_eq!(parse_ttl("45").unwrap(), 45);
        for bad in ["", "0", "1w", "h", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
