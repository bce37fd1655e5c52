//! Edge ↔ steering authentication: signed requests and the enrollment messages.
//!
//! An enrolled edge holds a per-edge secret (32 random bytes, base64) that
//! steering handed out once, at enrollment. Each request it makes to steering
//! (heartbeats, fill plans, popularity reports) carries three headers: its
//! name, the Unix time in seconds, and an HMAC-SHA256 under the secret over
//!
//! ```text
//! vod-edge-v1\n{edge}\n{METHOD}\n{path and query}\n{timestamp}\n{hex SHA-256 of the body}
//! ```
//!
//! so a body changed after signing, another path, another edge's name or an
//! old timestamp (outside ±[`MAX_SKEW_S`]) is refused. Pure: the caller passes
//! the time.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Header naming the signing edge.
pub const HEADER_EDGE: &str = "x-vod-edge";
/// Header with the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-vod-timestamp";
/// Header with the base64url HMAC-SHA256.
pub const HEADER_SIGNATURE: &str = "x-vod-signature";
/// A signature more than this many seconds away from the receiver's clock is refused (skew, replay).
pub const MAX_SKEW_S: u64 = 60;
/// Bytes of a per-edge secret.
pub const SECRET_LEN: usize = 32;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("{0} header is malformed")]
    Malformed(&'static str),
    #[error(
        "timestamp {timestamp} is {skew_s} s away from now (at most {MAX_SKEW_S} s allowed): clock skew or replay"
    )]
    Stale { timestamp: u64, skew_s: u64 },
    #[error("signature does not match")]
    BadSignature,
    #[error("secret is not base64 of {SECRET_LEN} bytes")]
    BadSecret,
}

/// The three authentication headers of a request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The edge that claims to have signed.
    pub edge: String,
    /// When it signed, Unix seconds.
    pub timestamp: u64,
    /// The MAC, base64url without padding.
    pub signature: String,
}

impl SignedHeaders {
    /// Reads the headers through `get` (a header lookup); `Ok(None)` when none of them is present.
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Option<Self>, AuthError> {
        let (edge, ts, sig) = (get(HEADER_EDGE), get(HEADER_TIMESTAMP), get(HEADER_SIGNATURE));
        if edge.is_none() && ts.is_none() && sig.is_none() {
            return Ok(None);
        }
        let edge = edge.ok_or(AuthError::MissingHeader(HEADER_EDGE))?.trim();
        if !is_edge_name(edge) {
            return Err(AuthError::Malformed(HEADER_EDGE));
        }
        let timestamp = ts
            .ok_or(AuthError::MissingHeader(HEADER_TIMESTAMP))?
            .trim()
            .parse::<u64>()
            .map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP))?;
        let signature = sig.ok_or(AuthError::MissingHeader(HEADER_SIGNATURE))?.trim().to_owned();
        Ok(Some(Self { edge: edge.to_owned(), timestamp, signature }))
    }
}

/// True for names an edge may have: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn is_edge_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Decodes a base64 per-edge secret.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, AuthError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| AuthError::BadSecret)?;
    if bytes.len() != SECRET_LEN {
        return Err(AuthError::BadSecret);
    }
    Ok(bytes)
}

/// Encodes a per-edge secret as base64.
pub fn encode_secret(secret: &[u8]) -> String {
    STANDARD.encode(secret)
}

/// Lower-case hex of SHA-256 of `bytes` (also how enrollment tokens are stored).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(secret: &[u8], edge: &str, method: &str, path_and_query: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    let canonical = format!(
        "vod-edge-v1\n{edge}\n{}\n{path_and_query}\n{timestamp}\n{}",
        method.to_ascii_uppercase(),
        sha256_hex(body)
    );
    mac.update(canonical.as_bytes());
    mac
}

/// The signature of one request.
pub fn sign(secret: &[u8], edge: &str, method: &str, path_and_query: &str, timestamp: u64, body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, edge, method, path_and_query, timestamp, body).finalize().into_bytes())
}

/// Checks a received request against the edge's secret at `now_s` (constant-time comparison).
pub fn verify(
    secret: &[u8],
    headers: &SignedHeaders,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_s: u64,
) -> Result<(), AuthError> {
    let skew_s = now_s.abs_diff(headers.timestamp);
    if skew_s > MAX_SKEW_S {
        return Err(AuthError::Stale { timestamp: headers.timestamp, skew_s });
    }
    let presented = URL_SAFE_NO_PAD.decode(headers.signature.as_bytes()).map_err(|_| AuthError::BadSignature)?;
    mac(secret, &headers.edge, method, path_and_query, headers.timestamp, body)
        .verify_slice(&presented)
        .map_err(|_| AuthError::BadSignature)
}

/// An edge's signing identity.
#[derive(Clone)]
pub struct EdgeSigner {
    /// The edge's name, as steering enrolled it.
    pub edge: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for EdgeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSigner").field("edge", &self.edge).finish_non_exhaustive()
    }
}

impl EdgeSigner {
    /// A signer from the edge's name and its base64 secret.
    pub fn new(edge: impl Into<String>, secret_b64: &str) -> Result<Self, AuthError> {
        let edge = edge.into();
        if !is_edge_name(&edge) {
            return Err(AuthError::Malformed(HEADER_EDGE));
        }
        Ok(Self { edge, secret: decode_secret(secret_b64)? })
    }

    /// The three headers (name, value) that authenticate this request at `now_s`.
    pub fn headers(&self, method: &str, path_and_query: &str, body: &[u8], now_s: u64) -> [(&'static str, String); 3] {
        [
            (HEADER_EDGE, self.edge.clone()),
            (HEADER_TIMESTAMP, now_s.to_string()),
            (HEADER_SIGNATURE, sign(&self.secret, &self.edge, method, path_and_query, now_s, body)),
        ]
    }
}

/// A URL-signing key as steering hands it to edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Key id that tokens name.
    pub id: String,
    /// The shared secret (text, as in the config files).
    pub secret: String,
}

/// `POST /v1/enroll` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time token `steering edges add` printed.
    pub token: String,
    /// Base URL players will reach the edge at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The address the edge will listen on (for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `POST /v1/enroll` answer: the edge's identity and credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The edge's name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Per-edge secret for signed requests, base64 of [`SECRET_LEN`] bytes.
    pub secret: String,
    /// URL-signing keys the edge must accept, the one steering signs with first.
    pub token_keys: Vec<KeySpec>,
    /// Steering's base URL, if it knows its public one.
    #[serde(default)]
    pub steering_url: Option<String>,
    /// Where the edge fills from (steering's `origin_url`), if configured.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Heartbeat period steering wants, ms.
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
}

/// The part of a heartbeat answer an edge acts on (the keys only when it is enrolled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatKeys {
    /// The URL-signing keys to accept from now on (present only for signed heartbeats).
    #[serde(default)]
    pub token_keys: Option<Vec<KeySpec>>,
    /// The digest of the prefix set steering holds for the edge (`steering::prefixes_digest`);
    /// absent when it holds none. The edge sends its whole set again whenever its own differs.
    #[serde(default)]
    pub prefixes_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn signed(method: &str, path: &str, body: &[u8], ts: u64) -> SignedHeaders {
        let s = EdgeSigner::new("edge-a", &encode_secret(&SECRET)).unwrap();
        let h = s.headers(method, path, body, ts);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        SignedHeaders::from_lookup(get).unwrap().unwrap()
    }

    #[test]
    fn a_signed_request_verifies() {
        let h = signed("POST", "/v1/heartbeat", b"{\"edge\":\"edge-a\"}", 1000);
        assert_eq!((h.edge.as_str(), h.timestamp), ("edge-a", 1000));
        assert_eq!(verify(&SECRET, &h, "post", "/v1/heartbeat", b"{\"edge\":\"edge-a\"}", 1030), Ok(()));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let body = b"{\"edge\":\"edge-a\"}";
        let h = signed("POST", "/v1/heartbeat", body, 1000);
        assert_eq!(
            verify(&SECRET, &h, "POST", "/v1/heartbeat", b"{\"edge\":\"edge-b\"}", 1000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify(&SECRET, &h, "POST", "/v1/popularity", body, 1000), Err(AuthError::BadSignature));
        assert_eq!(verify(&SECRET, &h, "GET", "/v1/heartbeat", body, 1000), Err(AuthError::BadSignature));
        assert_eq!(verify(&[8; 32], &h, "POST", "/v1/heartbeat", body, 1000), Err(AuthError::BadSignature));
        let other_name = SignedHeaders { edge: "edge-b".into(), ..h.clone() };
        assert_eq!(verify(&SECRET, &other_name, "POST", "/v1/heartbeat", body, 1000), Err(AuthError::BadSignature));
        let other_time = SignedHeaders { timestamp: 1001, ..h.clone() };
        assert_eq!(verify(&SECRET, &other_time, "POST", "/v1/heartbeat", body, 1000), Err(AuthError::BadSignature));
        let garbage = SignedHeaders { signature: "!!".into(), ..h };
        assert_eq!(verify(&SECRET, &garbage, "POST", "/v1/heartbeat", body, 1000), Err(AuthError::BadSignature));
    }

    #[test]
    fn timestamps_outside_the_window_are_refused_both_ways() {
        let h = signed("GET", "/v1/fill-plan/edge-a?edge_bytes=1", b"", 10_000);
        let at = |now| verify(&SECRET, &h, "GET", "/v1/fill-plan/edge-a?edge_bytes=1", b"", now);
        assert_eq!(at(10_000 + MAX_SKEW_S), Ok(()));
        assert_eq!(at(10_000 - MAX_SKEW_S), Ok(()));
        assert!(matches!(at(10_000 + MAX_SKEW_S + 1), Err(AuthError::Stale { skew_s: 61, .. })));
        assert!(matches!(at(10_000 - MAX_SKEW_S - 1), Err(AuthError::Stale { .. })));
    }

    #[test]
    fn headers_are_all_or_nothing() {
        assert_eq!(SignedHeaders::from_lookup(|_| None), Ok(None));
        let only_edge = |n: &str| (n == HEADER_EDGE).then_some("edge-a");
        assert_eq!(SignedHeaders::from_lookup(only_edge), Err(AuthError::MissingHeader(HEADER_TIMESTAMP)));
        let bad_ts = |n: &str| match n {
            HEADER_TIMESTAMP => Some("soon"),
            _ => Some("edge-a"),
        };
        assert_eq!(SignedHeaders::from_lookup(bad_ts), Err(AuthError::Malformed(HEADER_TIMESTAMP)));
        let bad_name = |n: &str| match n {
            HEADER_EDGE => Some("../etc"),
            _ => Some("1"),
        };
        assert_eq!(SignedHeaders::from_lookup(bad_name), Err(AuthError::Malformed(HEADER_EDGE)));
    }

    #[test]
    fn secrets_must_be_32_bytes_of_base64() {
        assert_eq!(decode_secret(&encode_secret(&SECRET)).unwrap(), SECRET.to_vec());
        assert_eq!(decode_secret("c2hvcnQ="), Err(AuthError::BadSecret));
        assert_eq!(decode_secret("not base64!"), Err(AuthError::BadSecret));
        assert!(EdgeSigner::new("a b", &encode_secret(&SECRET)).is_err());
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
