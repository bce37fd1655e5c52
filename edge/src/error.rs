//! The edge's error type. Every error says whose fault it is (the client, the
//! upstream, or this edge) so the server picks the status code and operators
//! know where to look. Messages carry their cause inline (no `source()`
//! chain), so one line in a log or on stderr says everything.

use axum::http::StatusCode;

/// Which side of the edge a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request (or an input file) was wrong; retrying it unchanged will not help.
    Client,
    /// The origin or parent cache failed or is unreachable; a retry may help.
    Upstream,
    /// Something on this edge: configuration, local I/O, a bug.
    Local,
}

impl Fault {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Local => "local",
        }
    }
}

/// Everything that can go wrong in the edge library.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The URL path is not an object key (`..`, `%`, backslashes, unknown names).
    #[error("bad object path: {0}")]
    BadPath(#[from] vod::KeyError),
    /// The path token is missing, forged, expired or for another title.
    #[error("token refused: {0}")]
    Token(#[from] vod::token::TokenError),
    /// The upstream does not have the object.
    #[error("{key} not found upstream")]
    NotFound { key: String },
    /// The upstream could not be reached (refused, reset, DNS).
    #[error("upstream {url} unreachable: {cause}")]
    UpstreamUnreachable { url: String, cause: reqwest::Error },
    /// The upstream stopped answering for longer than the configured timeout.
    #[error("upstream {url} timed out (no bytes for {timeout_ms} ms)")]
    UpstreamTimeout { url: String, timeout_ms: u64 },
    /// The upstream answered with a status the edge cannot serve.
    #[error("upstream {url} answered {status}")]
    UpstreamStatus { url: String, status: u16 },
    /// Every upstream's circuit breaker is open: failing fast.
    #[error("all {count} upstreams are failing (circuit breakers open)")]
    UpstreamsDown { count: usize },
    /// The upstream body broke off or disagreed with its Content-Length.
    #[error("upstream {url} sent a truncated body: {detail}")]
    UpstreamTruncated { url: String, detail: String },
    /// The upstream body does not match the digest its ETag announced.
    #[error("upstream {url} sent a corrupt body: {detail}")]
    UpstreamCorrupt { url: String, detail: String },
    /// A setting is missing or invalid.
    #[error("config: {0}")]
    Config(String),
    /// A request log is malformed (the message carries the line number).
    #[error("request log {path}: {cause}")]
    Log { path: String, cause: vod::log::LogParseError },
    /// A fill plan is not valid JSON of the expected shape.
    #[error("fill plan {path}: {cause}")]
    Plan { path: String, cause: serde_json::Error },
    /// Local file or socket I/O failed.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// A bug or a panicked task; never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EdgeError {
    /// Wraps an I/O error with what the edge was doing.
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io { what: what.into(), cause }
    }

    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            Self::BadPath(_) | Self::Token(_) | Self::NotFound { .. } | Self::Log { .. } | Self::Plan { .. } => {
                Fault::Client
            }
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamTruncated { .. }
            | Self::UpstreamCorrupt { .. }
            | Self::UpstreamsDown { .. } => Fault::Upstream,
            Self::Config(_) | Self::Io { .. } | Self::Internal(_) => Fault::Local,
        }
    }

    /// True if the same request may succeed later (upstream trouble).
    pub fn retryable(&self) -> bool {
        self.fault() == Fault::Upstream
    }

    /// The text a client sees: upstream and local details (internal URLs,
    /// paths) stay in the edge's own log.
    pub fn client_message(&self) -> String {
        match self {
            Self::UpstreamUnreachable { .. } => "bad gateway: the upstream is unreachable".into(),
            Self::UpstreamTimeout { timeout_ms, .. } => {
                format!("gateway timeout: the upstream sent nothing for {timeout_ms} ms")
            }
            Self::UpstreamStatus { status, .. } => format!("bad gateway: the upstream answered {status}"),
            Self::UpstreamTruncated { .. } => "bad gateway: the upstream sent a truncated body".into(),
            Self::UpstreamCorrupt { .. } => "bad gateway: the upstream sent a corrupt body".into(),
            Self::UpstreamsDown { .. } => "bad gateway: every upstream is failing".into(),
            Self::Config(_) | Self::Io { .. } | Self::Internal(_) => "internal error on the edge".into(),
            _ => self.to_string(),
        }
    }

    /// The HTTP status a client sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::Log { .. } | Self::Plan { .. } => StatusCode::BAD_REQUEST,
            Self::Token(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamTruncated { .. }
            | Self::UpstreamCorrupt { .. }
            | Self::UpstreamsDown { .. } => StatusCode::BAD_GATEWAY,
            Self::Config(_) | Self::Io { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_fault() {
        let e = EdgeError::from(vod::ObjectKey::parse("titles/../x").unwrap_err());
        assert_eq!((e.status(), e.fault()), (StatusCode::BAD_REQUEST, Fault::Client));
        let e = EdgeError::from(vod::token::TokenError::Expired);
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let e = EdgeError::UpstreamTimeout { url: "u".into(), timeout_ms: 5 };
        assert_eq!((e.status(), e.fault(), e.retryable()), (StatusCode::GATEWAY_TIMEOUT, Fault::Upstream, true));
        let e = EdgeError::UpstreamStatus { url: "u".into(), status: 503 };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(!EdgeError::Config("x".into()).retryable());
    }
}
