//! HTTP semantics for serving one object, shared by the origin and the edges:
//! HEAD, single Range (206/416), strong ETag with If-None-Match (304),
//! Content-Type by key, immutable caching for segments, CORS everywhere.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use vod::range::{resolve, RangeOutcome};
use vod::ObjectKey;

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

/// Builds the response for `body` (the whole object) under `key`.
pub fn object_response(
    method: &Method,
    headers: &HeaderMap,
    key: &ObjectKey,
    body: Bytes,
    etag: &str,
) -> Response<Body> {
    let total = body.len() as u64;
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, key.content_kind().mime())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, if key.is_immutable() { IMMUTABLE } else { SHORT_LIVED });
    if let Ok(v) = HeaderValue::from_str(etag) {
        b = b.header(header::ETAG, v);
    }
    if etag_matches(headers, etag) {
        return finish(b.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, slice) = match resolve(range, total) {
        RangeOutcome::Full => (StatusCode::OK, body),
        RangeOutcome::Partial(r) => {
            b = b.header(header::CONTENT_RANGE, r.content_range(total));
            (StatusCode::PARTIAL_CONTENT, body.slice(r.start as usize..=r.end as usize))
        }
        RangeOutcome::Unsatisfiable => {
            let b =
                b.status(StatusCode::RANGE_NOT_SATISFIABLE).header(header::CONTENT_RANGE, format!("bytes */{total}"));
            return finish(b, Body::empty());
        }
    };
    let b = b.status(status).header(header::CONTENT_LENGTH, slice.len());
    if method == Method::HEAD {
        finish(b, Body::empty())
    } else {
        finish(b, Body::from(slice))
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
}
