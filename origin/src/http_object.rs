//! HTTP semantics for serving one object, shared by the origin and the edges:
//! HEAD, single Range (206/416) with If-Range, strong ETag and Last-Modified
//! with If-None-Match / If-Modified-Since (304) and If-Match /
//! If-Unmodified-Since (412), Content-Type by key, immutable caching for
//! segments, CORS everywhere. Bodies come from memory (`object_response`,
//! for the edge's RAM tier) or stream from a store (`stream_response`).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use std::time::SystemTime;

use bytes::Bytes;
use vod::range::{resolve, ByteRange, RangeOutcome};
use vod::ObjectKey;

use crate::store::{ObjectMeta, ObjectReader};

/// Cache-Control for segments and init segments: they never change.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control for manifests and catalogs, which a republish replaces.
pub const SHORT_LIVED: &str = "public, max-age=10";

/// True if `If-None-Match` lists `etag` (or `*`). Weak comparison, as RFC 9110 asks for this header.
pub fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let bare = etag.trim_start_matches("W/");
    v.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

/// What to answer for an object, decided from the request's conditional and
/// Range headers and the object's validators alone (no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client's copy is current.
    NotModified,
    /// 412: an `If-Match` / `If-Unmodified-Since` precondition failed.
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// 200 with the whole object (`None`) or 206 with one range.
    Send(Option<ByteRange>),
}

impl Plan {
    /// The status code this plan answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Plan::NotModified => StatusCode::NOT_MODIFIED,
            Plan::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Plan::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Plan::Send(None) => StatusCode::OK,
            Plan::Send(Some(_)) => StatusCode::PARTIAL_CONTENT,
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whole seconds since the epoch: HTTP dates have no finer resolution.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn http_date_secs(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v.trim()).ok().map(unix_secs)
}

/// Strong comparison against a list of entity tags (`If-Match`, `If-Range`).
fn strong_match(list: &str, etag: &str) -> bool {
    !etag.starts_with("W/") && list.split(',').map(str::trim).any(|t| t == "*" || t == etag)
}

/// Decides what to answer, following RFC 9110 section 13.2.2: If-Match, then
/// If-Unmodified-Since, then If-None-Match (else If-Modified-Since), then
/// Range guarded by If-Range. Only GET and HEAD reach here, so a matching
/// If-None-Match means 304.
pub fn plan(headers: &HeaderMap, meta: &ObjectMeta) -> Plan {
    let modified = meta.last_modified.map(unix_secs);
    if let Some(v) = header_str(headers, header::IF_MATCH) {
        if !strong_match(v, &meta.etag) {
            return Plan::PreconditionFailed;
        }
    } else if let (Some(since), Some(m)) =
        (header_str(headers, header::IF_UNMODIFIED_SINCE).and_then(http_date_secs), modified)
    {
        if m > since {
            return Plan::PreconditionFailed;
        }
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        if etag_matches(headers, &meta.etag) {
            return Plan::NotModified;
        }
    } else if let (Some(since), Some(m)) =
        (header_str(headers, header::IF_MODIFIED_SINCE).and_then(http_date_secs), modified)
    {
        if m <= since {
            return Plan::NotModified;
        }
    }
    let range = header_str(headers, header::RANGE);
    // If-Range: the range applies only to the version the client holds part of;
    // otherwise it gets the whole current object.
    let range = match header_str(headers, header::IF_RANGE) {
        None => range,
        Some(v) if v.trim_start().starts_with('"') || v.trim_start().starts_with("W/") => {
            range.filter(|_| strong_match(v.trim(), &meta.etag) && !v.contains(','))
        }
        Some(v) => range.filter(|_| modified.is_some() && http_date_secs(v) == modified),
    };
    match resolve(range, meta.len) {
        RangeOutcome::Full => Plan::Send(None),
        RangeOutcome::Partial(r) => Plan::Send(Some(r)),
        RangeOutcome::Unsatisfiable => Plan::Unsatisfiable,
    }
}

/// The response for `plan`; `body` is asked for the bytes only when a GET
/// gets a 200 or 206.
fn respond(
    method: &Method,
    key: &ObjectKey,
    meta: &ObjectMeta,
    plan: Plan,
    body: impl FnOnce(Option<ByteRange>) -> Body,
) -> Response<Body> {
    let mut b = Response::builder()
        .status(plan.status())
        .header(header::CONTENT_TYPE, key.content_kind().mime())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, if key.is_immutable() { IMMUTABLE } else { SHORT_LIVED });
    if let Ok(v) = HeaderValue::from_str(&meta.etag) {
        b = b.header(header::ETAG, v);
    }
    if let Some(t) = meta.last_modified {
        b = b.header(header::LAST_MODIFIED, httpdate::fmt_http_date(t));
    }
    match plan {
        Plan::NotModified | Plan::PreconditionFailed => finish(b, Body::empty()),
        Plan::Unsatisfiable => finish(b.header(header::CONTENT_RANGE, format!("bytes */{}", meta.len)), Body::empty()),
        Plan::Send(range) => {
            let len = match range {
                Some(r) => {
                    b = b.header(header::CONTENT_RANGE, r.content_range(meta.len));
                    r.len()
                }
                None => meta.len,
            };
            let b = b.header(header::CONTENT_LENGTH, len);
            if method == Method::HEAD {
                finish(b, Body::empty())
            } else {
                finish(b, body(range))
            }
        }
    }
}

/// Builds the response for `body` (the whole object, held in memory) under `key`.
pub fn object_response(
    method: &Method,
    headers: &HeaderMap,
    key: &ObjectKey,
    body: Bytes,
    etag: &str,
) -> Response<Body> {
    let meta = ObjectMeta { len: body.len() as u64, etag: etag.to_owned(), last_modified: None };
    object_response_with_meta(method, headers, key, body, &meta)
}

/// Like `object_response`, with every validator of the object (Last-Modified too).
pub fn object_response_with_meta(
    method: &Method,
    headers: &HeaderMap,
    key: &ObjectKey,
    body: Bytes,
    meta: &ObjectMeta,
) -> Response<Body> {
    let plan = plan(headers, meta);
    respond(method, key, meta, plan, |range| match range {
        Some(r) => Body::from(body.slice(r.start as usize..=r.end as usize)),
        None => Body::from(body),
    })
}

/// Streams an opened object: the bytes are read from the store while the
/// response is sent, so memory stays bounded whatever the object's size.
pub async fn stream_response(
    method: &Method,
    headers: &HeaderMap,
    key: &ObjectKey,
    reader: ObjectReader,
) -> Response<Body> {
    let plan = plan(headers, &reader.meta);
    let meta = reader.meta.clone();
    let wanted = match plan {
        Plan::Send(range) if method != Method::HEAD => Some(range),
        _ => None,
    };
    let Some(range) = wanted else {
        return respond(method, key, &meta, plan, |_| Body::empty());
    };
    match reader.read(range).await {
        Ok(stream) => respond(method, key, &meta, plan, |_| Body::from_stream(stream)),
        Err(e) => {
            tracing::error!(%key, error = %e, "store read failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "store read failed")
        }
    }
}

/// A plain-text error response.
pub fn error_response(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let b = Response::builder().status(status).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    finish(b, Body::from(format!("{}\n", msg.into())))
}

fn finish(b: axum::http::response::Builder, body: Body) -> Response<Body> {
    b.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Adds the CORS headers to a response; install with `axum::middleware::map_response`.
pub async fn add_cors(mut resp: Response<Body>) -> Response<Body> {
    for (k, v) in vod::cors::CORS_HEADERS {
        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    resp
}

/// Answers a CORS preflight.
pub fn preflight() -> Response<Body> {
    finish(Response::builder().status(StatusCode::NO_CONTENT), Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::parse("titles/t/v1/1.m4s").unwrap()
    }

    fn req(h: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in h {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn range_304_and_416() {
        let body = Bytes::from_static(b"0123456789");
        let r = object_response(&Method::GET, &req(&[("range", "bytes=2-4")]), &key(), body.clone(), "\"e\"");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "3");
        let r = object_response(&Method::GET, &req(&[("range", "bytes=10-")]), &key(), body.clone(), "\"e\"");
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
        let r =
            object_response(&Method::GET, &req(&[("if-none-match", "\"x\", \"e\"")]), &key(), body.clone(), "\"e\"");
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = object_response(&Method::HEAD, &req(&[]), &key(), body, "\"e\"");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "video/iso.segment");
    }

    #[test]
    fn plan_follows_rfc_9110_precedence() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let meta = ObjectMeta { len: 100, etag: "\"v2\"".into(), last_modified: Some(t) };
        let lm = httpdate::fmt_http_date(t);
        let before = httpdate::fmt_http_date(t - std::time::Duration::from_secs(1));
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let part = Plan::Send(Some(ByteRange { start: 0, end: 9 }));
        assert_eq!(plan(&h(&[]), &meta), Plan::Send(None));
        assert_eq!(plan(&h(&[("if-modified-since", &lm)]), &meta), Plan::NotModified);
        assert_eq!(plan(&h(&[("if-modified-since", &before)]), &meta), Plan::Send(None));
        // If-None-Match present: If-Modified-Since is ignored.
        assert_eq!(plan(&h(&[("if-none-match", "\"v1\""), ("if-modified-since", &lm)]), &meta), Plan::Send(None));
        assert_eq!(plan(&h(&[("if-match", "\"v1\"")]), &meta), Plan::PreconditionFailed);
        assert_eq!(plan(&h(&[("if-match", "\"v2\""), ("range", "bytes=0-9")]), &meta), part);
        assert_eq!(plan(&h(&[("if-unmodified-since", &before)]), &meta), Plan::PreconditionFailed);
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", "\"v2\"")]), &meta), part);
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", "W/\"v2\"")]), &meta), Plan::Send(None));
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", "\"v1\"")]), &meta), Plan::Send(None));
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", &lm)]), &meta), part);
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", &before)]), &meta), Plan::Send(None));
        assert_eq!(plan(&h(&[("range", "bytes=100-")]), &meta), Plan::Unsatisfiable);
        // Without a known modification time, date conditions never match.
        let no_date = ObjectMeta { last_modified: None, ..meta };
        assert_eq!(plan(&h(&[("if-modified-since", &lm)]), &no_date), Plan::Send(None));
        assert_eq!(plan(&h(&[("range", "bytes=0-9"), ("if-range", &lm)]), &no_date), Plan::Send(None));
    }
}
