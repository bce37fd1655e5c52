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
