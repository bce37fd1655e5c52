//! Steering's answer to a player (a contract; see the design).

use serde::{Deserialize, Serialize};

/// Manifest format a player asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Hls,
    Dash,
}

impl Format {
    /// Path of the manifest under `titles/{title}/`.
    pub fn manifest_path(self) -> &'static str {
        match self {
            Format::Hls => "hls/master.m3u8",
            Format::Dash => "dash/manifest.mpd",
        }
    }
}

/// One candidate edge URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayUrl {
    pub url: String,
    pub edge: String,
    pub site: String,
    pub reasons: Vec<String>,
}

/// `GET /v1/play/{title}?format=hls|dash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayResponse {
    pub title: String,
    pub format: Format,
    pub ttl_s: u64,
    pub urls: Vec<PlayUrl>,
}

/// `POST /v1/heartbeat` body: what an edge tells steering every few seconds.
///
/// Only `edge` is required; the rest default to "healthy, idle, holds nothing".
/// An edge steering does not know yet registers itself by sending `url` and `site`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The edge's unique name (as in steering's config).
    pub edge: String,
    /// The edge's own view of its health.
    #[serde(default = "default_true")]
    pub ok: bool,
    /// Egress load in bits per second.
    #[serde(default)]
    pub load_bps: u64,
    /// Open client connections.
    #[serde(default)]
    pub connections: u64,
    /// Cache capacity in bytes (RAM + disk).
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Egress the edge can sustain, bits per second (0: unknown).
    #[serde(default)]
    pub max_load_bps: u64,
    /// The edge asks for no new players (operator drain or shutting down).
    #[serde(default)]
    pub drained: bool,
    /// Titles the edge holds (fully or mostly) in its cache.
    #[serde(default)]
    pub titles: Vec<String>,
    /// Base URL, needed only when registering an edge steering does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Site, needed only when registering an edge steering does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Client prefixes (CIDR) this edge serves: learned over BGP from the ISP's router, plus static
    /// ones from its config. Without `prefixes_sha256` each heartbeat carries the whole set and an
    /// empty one withdraws them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// [`prefixes_digest`] of the edge's whole prefix set. With it, `prefixes` may be left out
    /// while steering's answer says it holds that digest already: "the set you have" (or, when it
    /// is the empty set's digest, no prefixes). A set of 50,000 prefixes is about 1 MB of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_sha256: Option<String>,
}

/// SHA-256 (hex) of a prefix list as the edge sends it, one per line.
pub fn prefixes_digest(prefixes: &[String]) -> String {
    crate::edge_auth::sha256_hex(prefixes.join("\n").as_bytes())
}

fn default_true() -> bool {
    true
}

impl Heartbeat {
    /// A healthy, idle heartbeat for `edge` holding nothing.
    pub fn new(edge: impl Into<String>) -> Self {
        Self {
            edge: edge.into(),
            ok: true,
            load_bps: 0,
            connections: 0,
            capacity_bytes: 0,
            max_load_bps: 0,
            drained: false,
            titles: Vec::new(),
            url: None,
            site: None,
            prefixes: Vec::new(),
            prefixes_sha256: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_prefixes_are_optional_on_the_wire() {
        let hb: Heartbeat = serde_json::from_str(r#"{"edge": "e1"}"#).unwrap();
        assert!(hb.prefixes.is_empty());
        assert!(!serde_json::to_string(&hb).unwrap().contains("prefixes"), "an empty set is left out");
        let mut hb = Heartbeat::new("e1");
        hb.prefixes = vec!["10.1.0.0/16".into(), "2001:db8::/32".into()];
        let back: Heartbeat = serde_json::from_str(&serde_json::to_string(&hb).unwrap()).unwrap();
        assert_eq!(back, hb);
        assert!(!serde_json::to_string(&hb).unwrap().contains("sha256"));
        hb.prefixes_sha256 = Some(prefixes_digest(&hb.prefixes));
        let back: Heartbeat = serde_json::from_str(&serde_json::to_string(&hb).unwrap()).unwrap();
        assert_eq!(back, hb);
    }

    #[test]
    fn the_digest_tells_sets_apart_and_the_empty_set_has_one() {
        let a = vec!["10.1.0.0/16".to_owned(), "10.2.0.0/16".to_owned()];
        let b = vec!["10.1.0.0/16\n10.2.0.0/16".to_owned()];
        assert_eq!(prefixes_digest(&a), prefixes_digest(&a.clone()));
        assert_ne!(prefixes_digest(&a), prefixes_digest(&a[..1]));
        assert_eq!(prefixes_digest(&[]), crate::edge_auth::sha256_hex(b""));
        // (Prefixes never hold a newline; steering refuses such a list before it looks at digests.)
        assert_eq!(prefixes_digest(&a), prefixes_digest(&b));
    }
}
