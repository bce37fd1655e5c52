//! Popularity history per site, fed by edges, and the fill plans steering
//! computes from it.
//!
//! - `POST /v1/popularity` (the heartbeat token, or an enrolled edge's signature for itself): an edge's daily
//!   aggregate ([`DailyPopularity`]: per key requests, bytes, distinct
//!   clients). A later report for the same edge and day replaces the earlier.
//! - `GET /v1/popularity/{site}`: the days held for a site (day, objects, requests).
//! - `GET /v1/fill-plan/{edge}`: that edge's plan ([`EdgeFillPlan`]): the
//!   site's forecast placed over every edge of the site (capacity from
//!   heartbeats, `?edge_bytes=` for the asking edge), with peers' URLs.
//!   `?forecast=last-day|decayed:H|profile:H` overrides the method
//!   (default `decayed:1`).
//!
//! The store keeps `days_kept` days per site in memory and, with a state
//! directory, one JSON file per (site, day, edge), written atomically, read
//! back on start. Launch hints are read from `{state dir}/hints.json` when present.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;
use vod::plan::DailyPopularity;

use crate::enroll::{Caller, EdgeAuth, Refusal};
use crate::fill::{EdgeSlot, Placement};
use crate::forecast::{self, LaunchHint, Method};
use crate::registry::Registry;

/// Largest report accepted (about a million objects).
const REPORT_MAX_BYTES: usize = 128 << 20;

/// The forecast `/v1/fill-plan` uses unless asked otherwise (the best in `cargo xtask bench cache`'s backtests).
pub const DEFAULT_METHOD: Method = Method::Decayed { half_life_days: 1.0 };

/// Days of history kept per site.
pub const DEFAULT_DAYS_KEPT: u32 = 14;

/// Why the popularity store could not start.
#[derive(Debug, thiserror::Error)]
pub enum PopularityError {
    #[error("popularity state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("popularity state {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// Reports per site → day → edge.
#[derive(Debug, Default)]
pub struct PopularityStore {
    sites: HashMap<String, BTreeMap<u32, BTreeMap<String, DailyPopularity>>>,
    days_kept: u32,
    dir: Option<PathBuf>,
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

impl PopularityStore {
    /// An empty store in memory only.
    pub fn in_memory(days_kept: u32) -> Self {
        Self { sites: HashMap::new(), days_kept: days_kept.max(1), dir: None }
    }

    /// A store persisted under `dir` (created if missing), loaded from what is there.
    pub fn open(dir: &Path, days_kept: u32) -> Result<Self, PopularityError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PopularityError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut store = Self { dir: Some(dir.to_owned()), ..Self::in_memory(days_kept) };
        for site in std::fs::read_dir(dir).map_err(io(dir))? {
            let site = site.map_err(io(dir))?.path();
            if !site.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&site).map_err(io(&site))? {
                let path = f.map_err(io(&site))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                let day: DailyPopularity = serde_json::from_str(&text)
                    .map_err(|e| PopularityError::Parse { path: path.clone(), reason: e.to_string() })?;
                let site_name = site.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                store.insert_memory(&site_name, day);
            }
        }
        Ok(store)
    }

    fn insert_memory(&mut self, site: &str, day: DailyPopularity) -> Vec<(u32, String)> {
        let days = self.sites.entry(site.to_owned()).or_default();
        days.entry(day.day).or_default().insert(day.edge.clone(), day);
        let mut dropped = Vec::new();
        while days.len() > self.days_kept as usize {
            if let Some((d, edges)) = days.pop_first() {
                dropped.extend(edges.into_keys().map(|e| (d, e)));
            }
        }
        dropped
    }

    /// Records one edge's day for `site` (persisted first when the store has a directory).
    pub fn record(&mut self, site: &str, mut day: DailyPopularity) -> Result<(), String> {
        if !safe_name(site) || !safe_name(&day.edge) {
            return Err("site and edge names must be 1-128 of [A-Za-z0-9._-], not starting with '.'".into());
        }
        day.site = Some(site.to_owned());
        if let Some(dir) = &self.dir {
            let site_dir = dir.join(site);
            let path = site_dir.join(format!("{}-{}.json", day.day, day.edge));
            let tmp = site_dir.join(format!(".{}-{}.json.tmp", day.day, day.edge));
            let body = serde_json::to_vec(&day).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&site_dir)
                .and_then(|_| std::fs::write(&tmp, &body))
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("saving {}: {e}", path.display()))?;
        }
        let dropped = self.insert_memory(site, day);
        if let Some(dir) = &self.dir {
            for (d, edge) in dropped {
                let _ = std::fs::remove_file(dir.join(site).join(format!("{d}-{edge}.json")));
            }
        }
        Ok(())
    }

    /// A site's days, each merged over its edges, oldest first.
    pub fn history(&self, site: &str) -> Vec<DailyPopularity> {
        let Some(days) = self.sites.get(site) else { return Vec::new() };
        forecast::merge_days(days.values().flat_map(|edges| edges.values().cloned()))
    }

    /// Every site but `site`, with its history.
    pub fn other_sites(&self, site: &str) -> Vec<Vec<DailyPopularity>> {
        let mut names: Vec<&String> = self.sites.keys().filter(|s| s.as_str() != site).collect();
        names.sort();
        names.into_iter().map(|s| self.history(s)).collect()
    }
}

/// What the handlers share.
struct PopularityApi {
    store: Mutex<PopularityStore>,
    registry: watch::Receiver<Registry>,
    auth: Arc<EdgeAuth>,
    hints: Vec<LaunchHint>,
}

/// The routes above over `store`, reading edges from `registry`; `auth` says who may report and fetch plans.
pub fn router(store: PopularityStore, registry: watch::Receiver<Registry>, auth: Arc<EdgeAuth>) -> Router {
    let hints = store
        .dir
        .as_ref()
        .map(|d| d.join("hints.json"))
        .filter(|p| p.is_file())
        .and_then(|p| match crate::fill::read_hints(&p) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "launch hints not loaded");
                None
            }
        })
        .unwrap_or_default();
    let api = Arc::new(PopularityApi { store: Mutex::new(store), registry, auth, hints });
    Router::new()
        // A day lists every object an edge served: allow big reports.
        .route("/v1/popularity", post(report).layer(axum::extract::DefaultBodyLimit::max(REPORT_MAX_BYTES)))
        .route("/v1/popularity/{site}", get(site_days))
        .route("/v1/fill-plan/{edge}", get(fill_plan))
        .with_state(api)
        .layer(axum::middleware::map_response(|mut resp: Response| async move {
            for (k, v) in vod::cors::CORS_HEADERS {
                resp.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            resp
        }))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut resp = (status, Json(serde_json::json!({ "error": message.into() }))).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl PopularityApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, PopularityStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who sent this request; `Ok(None)` when it carries no credentials.
    fn caller(&self, method: &str, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Option<Caller>, Refusal> {
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let now_s = crate::health::unix_now_ms() / 1000;
        self.auth.authorize(method, path, headers, body, now_s)
    }
}

async fn report(State(api): State<Arc<PopularityApi>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if api.auth.heartbeat_token.is_none() && api.auth.store.is_none() {
        return error(StatusCode::FORBIDDEN, "popularity reports are disabled (no heartbeat_token configured)");
    }
    let caller = match api.caller("POST", &uri, &headers, &body) {
        Ok(Some(c)) => c,
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
        Err(r) => return r.response(),
    };
    let mut day: DailyPopularity = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad popularity report: {e}")),
    };
    if let Caller::Edge(rec) = &caller {
        // An enrolled edge reports for itself, at its enrolled site.
        if day.edge != rec.name {
            tracing::warn!(signer = %rec.name, claimed = %day.edge, "edge request refused: report for another edge");
            return error(StatusCode::FORBIDDEN, format!("edge {:?} may only report for itself", rec.name));
        }
        day.site = Some(rec.site.clone());
    }
    let site = match day.site.clone() {
        Some(s) => s,
        None => {
            let reg = api.registry.borrow();
            match reg.index_of(&day.edge) {
                Some(i) => reg.edges()[i].edge.site.clone(),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("unknown edge {:?} and no site in the report", day.edge),
                    )
                }
            }
        }
    };
    let (objects, requests) = (day.objects.len(), day.objects.iter().map(|o| o.requests).sum::<u64>());
    let d = day.day;
    let saved = api.lock().record(&site, day);
    match saved {
        Ok(()) => Json(serde_json::json!({ "site": site, "day": d, "objects": objects, "requests": requests }))
            .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn site_days(State(api): State<Arc<PopularityApi>>, UrlPath(site): UrlPath<String>) -> Response {
    let days: Vec<serde_json::Value> = api
        .lock()
        .history(&site)
        .iter()
        .map(|d| {
            serde_json::json!({
                "day": d.day, "objects": d.objects.len(),
                "requests": d.objects.iter().map(|o| o.requests).sum::<u64>(),
            })
        })
        .collect();
    Json(serde_json::json!({ "site": site, "days": days })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    forecast: Option<String>,
    edge_bytes: Option<u64>,
    day: Option<u32>,
}

async fn fill_plan(
    State(api): State<Arc<PopularityApi>>,
    UrlPath(edge): UrlPath<String>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // An enrolled edge's plan is for that edge (signed) or holders of the bearer token; an edge may
    // not read another's. Configured edges' plans stay open to anyone, as before enrollment existed.
    match api.caller("GET", &uri, &headers, b"") {
        Ok(Some(Caller::Edge(rec))) if rec.name != edge => {
            tracing::warn!(signer = %rec.name, asked = %edge, "edge request refused: another edge's fill plan");
            return error(StatusCode::FORBIDDEN, format!("edge {:?} may only fetch its own fill plan", rec.name));
        }
        Ok(Some(_)) => {}
        Ok(None) if api.auth.is_enrolled(&edge) => {
            tracing::warn!(asked = %edge, reason = "no credentials", "edge request refused");
            return error(
                StatusCode::UNAUTHORIZED,
                format!("the fill plan of enrolled edge {edge:?} needs its signature"),
            );
        }
        Ok(None) => {}
        Err(r) => return r.response(),
    }
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "query: forecast=last-day|decayed:H, edge_bytes=N, day=D");
    };
    let method = match q.forecast.as_deref().map(Method::parse).unwrap_or(Ok(DEFAULT_METHOD)) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (site, slots) = {
        let reg = api.registry.borrow();
        let Some(me) = reg.index_of(&edge) else {
            return error(StatusCode::NOT_FOUND, format!("unknown edge {edge:?}"));
        };
        let site = reg.edges()[me].edge.site.clone();
        let slots: Vec<EdgeSlot> = reg
            .site(&site)
            .iter()
            .map(|&i| {
                let e = &reg.edges()[i];
                let heard = e.heartbeat.as_ref().map_or(0, |h| h.capacity_bytes);
                let bytes = if i == me { q.edge_bytes.unwrap_or(heard) } else { heard };
                EdgeSlot { name: e.edge.name.clone(), url: Some(e.edge.base_url.clone()), bytes }
            })
            .collect();
        (site, slots)
    };
    if slots.iter().all(|s| s.name != edge || s.bytes == 0) {
        return error(
            StatusCode::CONFLICT,
            format!("capacity of {edge:?} unknown: no heartbeat with capacity_bytes yet; pass ?edge_bytes=N"),
        );
    }
    let store = api.lock();
    let history = store.history(&site);
    // A site with no reports yet plans for today, from launch hints alone.
    let target = match (q.day, history.iter().map(|d| d.day).max()) {
        (Some(day), _) => day,
        (None, Some(last)) => last + 1,
        (None, None) if !api.hints.is_empty() => (crate::health::unix_now_ms() / forecast::DAY_MS) as u32,
        (None, None) => {
            return error(StatusCode::NOT_FOUND, format!("no popularity reports for site {site:?} yet, and no hints"))
        }
    };
    let rising = forecast::rising_elsewhere(&store.other_sites(&site), 2.0);
    drop(store);
    let objects = forecast::forecast_site(&history, target, method, &api.hints, &rising);
    let plan = crate::fill::plan_site(&site, &method.label(), objects, &slots, Placement::default());
    match plan.plans.into_iter().find(|p| p.edge == edge) {
        Some(p) => Json(p).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the site plan has no entry for this edge"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vod::plan::ObjectDay;

    fn day(edge: &str, d: u32, requests: u64) -> DailyPopularity {
        DailyPopularity {
            edge: edge.into(),
            site: None,
            day: d,
            objects: vec![ObjectDay { key: "titles/t/v/1.m4s".into(), requests, bytes: 10, clients: 1 }],
        }
    }

    #[test]
    fn a_site_merges_its_edges_keeps_bounded_days_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PopularityStore::open(dir.path(), 2).unwrap();
        store.record("s1", day("a", 10, 5)).unwrap();
        store.record("s1", day("b", 10, 7)).unwrap();
        store.record("s1", day("a", 10, 6)).unwrap(); // replaces a's first report
        store.record("s1", day("a", 11, 1)).unwrap();
        store.record("s1", day("a", 12, 2)).unwrap(); // day 10 falls out
        let h = store.history("s1");
        assert_eq!(h.iter().map(|d| d.day).collect::<Vec<_>>(), vec![11, 12]);
        // A day older than those kept is accepted and dropped again at once.
        store.record("s1", day("a", 9, 1)).unwrap();
        assert_eq!(store.history("s1").iter().map(|d| d.day).collect::<Vec<_>>(), vec![11, 12]);
        let reopened = PopularityStore::open(dir.path(), 2).unwrap();
        assert_eq!(reopened.history("s1"), store.history("s1"));
        assert!(reopened.history("other").is_empty());
        assert!(store.record("../x", day("a", 1, 1)).is_err());
        assert!(store.record("s1", day("a/b", 1, 1)).is_err());
    }

    #[test]
    fn merged_days_add_up_edges() {
        let mut store = PopularityStore::in_memory(5);
        store.record("s", day("a", 1, 5)).unwrap();
        store.record("s", day("b", 1, 7)).unwrap();
        assert_eq!(store.history("s")[0].objects[0].requests, 12);
        assert_eq!(store.other_sites("x").len(), 1);
    }
}
