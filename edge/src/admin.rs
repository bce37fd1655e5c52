//! The operator API under `/admin/`, behind a bearer token (`admin_token`):
//!
//! - `GET /admin/status` — JSON: tiers (sizes, capacity, fragmentation),
//!   requests by result, bytes, upstreams with their breaker states.
//! - `POST /admin/purge?key=titles/...` or `?title=T` — drops the object, or
//!   every object of the title, from RAM, disk and the stale copies.
//! - `POST /admin/drain` / `POST /admin/undrain` — asks steering (through the
//!   heartbeats) to send no new players here / to send them again. Players
//!   already here keep being served.
//!
//! Without a configured token the API answers 404: it does not exist.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use origin::http_object::error_response;
use serde_json::json;
use vod::{ObjectKey, TitleId};

use crate::server::EdgeState;

/// Answers one `/admin/...` request.
pub fn handle(
    state: &EdgeState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    let Some(expected) = state.admin_token.as_deref() else {
        return error_response(StatusCode::NOT_FOUND, "no admin API on this edge");
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(offered.as_bytes(), expected.as_bytes()) {
        let mut resp = error_response(StatusCode::UNAUTHORIZED, "admin API: missing or wrong bearer token");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    match (method, path) {
        (&Method::GET, "/admin/status") => json_response(StatusCode::OK, &status(state)),
        (&Method::POST, "/admin/purge") => purge(state, query.unwrap_or("")),
        (&Method::POST, "/admin/drain" | "/admin/undrain") => {
            let drained = path == "/admin/drain";
            state.drained.store(drained, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(drained, "admin drain");
            json_response(StatusCode::OK, &json!({ "name": state.name, "drained": drained }))
        }
        (_, "/admin/status" | "/admin/purge" | "/admin/drain" | "/admin/undrain") => {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "GET status; POST purge, drain, undrain")
        }
        _ => error_response(StatusCode::NOT_FOUND, "unknown admin path (status, purge, drain, undrain)"),
    }
}

fn purge(state: &EdgeState, query: &str) -> Response<Body> {
    let mut params = query.split('&').filter_map(|kv| kv.split_once('='));
    match params.next() {
        Some(("key", k)) => match ObjectKey::parse(k) {
            Ok(key) => {
                let held = state.filler.purge(&key);
                tracing::info!(%key, held, "admin purge");
                json_response(StatusCode::OK, &json!({ "key": key.to_string(), "purged": u64::from(held) }))
            }
            Err(e) => error_response(StatusCode::BAD_REQUEST, format!("bad key: {e}")),
        },
        Some(("title", t)) => match TitleId::new(t) {
            Ok(title) => {
                let n = state.filler.purge_title(&title);
                tracing::info!(%title, copies = n, "admin purge");
                json_response(StatusCode::OK, &json!({ "title": t, "purged": n }))
            }
            Err(e) => error_response(StatusCode::BAD_REQUEST, format!("bad title: {e}")),
        },
        _ => error_response(StatusCode::BAD_REQUEST, "purge needs ?key=titles/... or ?title=T"),
    }
}

fn status(state: &EdgeState) -> serde_json::Value {
    let ram = state.filler.ram();
    ram.settle();
    let disk = state.filler.disk().map(|d| {
        let s = d.stats();
        let c = d.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "bytes": s.live_bytes, "objects": s.entries, "capacity_bytes": s.capacity_bytes,
            "pinned_bytes": s.pinned_bytes, "gap_bytes": s.gap_bytes, "path": d.dir().display().to_string(),
            "writes": get(&c.writes), "refused": get(&c.refused), "evictions": get(&c.evictions),
            "corrupt_dropped": get(&c.corrupt_dropped), "reloaded_at_start": d.loaded_entries(),
        })
    });
    let requests: serde_json::Map<String, serde_json::Value> =
        state.metrics.requests_by_result().iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let total: u64 = state.metrics.requests_by_result().iter().map(|(_, v)| v).sum();
    let hits: u64 = state.metrics.requests_by_result().iter().filter(|(k, _)| k.contains("hit")).map(|(_, v)| v).sum();
    let (served, fetched) = state.metrics.bytes_served_and_fetched();
    let upstreams: Vec<_> = state
        .filler
        .upstreams()
        .states()
        .into_iter()
        .map(|(url, b)| json!({ "url": url, "breaker": b.as_str() }))
        .collect();
    json!({
        "name": state.name,
        "drained": state.drained.load(std::sync::atomic::Ordering::Relaxed),
        "ram": { "bytes": ram.weighted_bytes(), "objects": ram.entries(), "capacity_bytes": ram.capacity_bytes() },
        "disk": disk,
        "requests": requests,
        "hit_ratio": if total == 0 { 0.0 } else { hits as f64 / total as f64 },
        "bytes_served": served,
        "upstream_bytes": fetched,
        "upstreams": upstreams,
        "prefill": state.prefill.to_json(),
    })
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
