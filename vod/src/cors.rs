//! CORS headers every HTTP response of every service carries, so browser
//! players can use any of them (302s and errors included).

/// Header name/value pairs added to every response.
pub const CORS_HEADERS: &[(&str, &str)] = &[
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
    ("access-control-allow-headers", "Range, If-None-Match, Content-Type, Authorization"),
    ("access-control-expose-headers", "Content-Length, Content-Range, ETag, Location"),
    ("access-control-max-age", "86400"),
];
