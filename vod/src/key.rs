//! Object keys: the one path grammar shared by the origin's store, its URLs
//! and the edges' URLs. Anything outside the grammar is rejected, which is
//! what keeps `..`, `%2e`, backslashes and empty segments out of the store.

use std::fmt;

use crate::id::{IdError, RenditionId, TitleId};

/// Why a path is not an object key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("path must start with titles/")]
    NotUnderTitles,
    #[error("path contains an empty, dot or escaped segment")]
    Hostile,
    #[error("bad identifier in path: {0}")]
    BadId(#[from] IdError),
    #[error("path names no known object")]
    Unknown,
}

/// A file of a published title, as stored at the origin and served by edges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// `titles/{title}/catalog.json`, written last; its presence means published.
    Catalog(TitleId),
    /// `titles/{title}/hls/master.m3u8`.
    HlsMaster(TitleId),
    /// `titles/{title}/hls/{rendition}.m3u8`.
    HlsMedia(TitleId, RenditionId),
    /// `titles/{title}/dash/manifest.mpd`.
    DashManifest(TitleId),
    /// `titles/{title}/{rendition}/init.mp4`.
    Init(TitleId, RenditionId),
    /// `titles/{title}/{rendition}/{n}.m4s`, n from 1.
    Segment(TitleId, RenditionId, u32),
}

/// The content type of an object, from its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    HlsPlaylist,
    DashManifest,
    InitSegment,
    MediaSegment,
}

impl ContentKind {
    /// The `Content-Type` header value.
    pub fn mime(self) -> &'static str {
        match self {
            ContentKind::Json => "application/json",
            ContentKind::HlsPlaylist => "application/vnd.apple.mpegurl",
            ContentKind::DashManifest => "application/dash+xml",
            ContentKind::InitSegment => "video/mp4",
            ContentKind::MediaSegment => "video/iso.segment",
        }
    }
}

impl ObjectKey {
    /// Parses a key such as `titles/bbb/v720/3.m4s` (no leading slash).
    pub fn parse(path: &str) -> Result<Self, KeyError> {
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts {
            if p.is_empty() || p.starts_with('.') || p.contains(['%', '\\', '\0']) {
                return Err(KeyError::Hostile);
            }
        }
        if parts.first() != Some(&"titles") {
            return Err(KeyError::NotUnderTitles);
        }
        let title = || -> Result<TitleId, KeyError> { Ok(TitleId::new(*parts.get(1).ok_or(KeyError::Unknown)?)?) };
        match parts.as_slice() {
            [_, _, "catalog.json"] => Ok(Self::Catalog(title()?)),
            [_, _, "hls", "master.m3u8"] => Ok(Self::HlsMaster(title()?)),
            [_, _, "hls", file] => {
                let r = file.strip_suffix(".m3u8").ok_or(KeyError::Unknown)?;
                Ok(Self::HlsMedia(title()?, RenditionId::new(r)?))
            }
            [_, _, "dash", "manifest.mpd"] => Ok(Self::DashManifest(title()?)),
            [_, _, r, "init.mp4"] => Ok(Self::Init(title()?, RenditionId::new(*r)?)),
            [_, _, r, file] => {
                let n = file.strip_suffix(".m4s").ok_or(KeyError::Unknown)?;
                // Digits only, no sign, no leading zero: one spelling per segment.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
                    return Err(KeyError::Unknown);
                }
                let n: u32 = n.parse().map_err(|_| KeyError::Unknown)?;
                Ok(Self::Segment(title()?, RenditionId::new(*r)?, n))
            }
            _ => Err(KeyError::Unknown),
        }
    }

    /// The title this object belongs to.
    pub fn title(&self) -> &TitleId {
        match self {
            Self::Catalog(t)
            | Self::HlsMaster(t)
            | Self::HlsMedia(t, _)
            | Self::DashManifest(t)
            | Self::Init(t, _)
            | Self::Segment(t, _, _) => t,
        }
    }

    /// What kind of content the object holds.
    pub fn content_kind(&self) -> ContentKind {
        match self {
            Self::Catalog(_) => ContentKind::Json,
            Self::HlsMaster(_) | Self::HlsMedia(..) => ContentKind::HlsPlaylist,
            Self::DashManifest(_) => ContentKind::DashManifest,
            Self::Init(..) => ContentKind::InitSegment,
            Self::Segment(..) => ContentKind::MediaSegment,
        }
    }

    /// Segments and init segments never change once written.
    pub fn is_immutable(&self) -> bool {
        matches!(self, Self::Init(..) | Self::Segment(..))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Catalog(t) => write!(f, "titles/{t}/catalog.json"),
            Self::HlsMaster(t) => write!(f, "titles/{t}/hls/master.m3u8"),
            Self::HlsMedia(t, r) => write!(f, "titles/{t}/hls/{r}.m3u8"),
            Self::DashManifest(t) => write!(f, "titles/{t}/dash/manifest.mpd"),
            Self::Init(t, r) => write!(f, "titles/{t}/{r}/init.mp4"),
            Self::Segment(t, r, n) => write!(f, "titles/{t}/{r}/{n}.m4s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for k in [
            "titles/bbb/catalog.json",
            "titles/bbb/hls/master.m3u8",
            "titles/bbb/hls/v720.m3u8",
            "titles/bbb/dash/manifest.mpd",
            "titles/bbb/v720/init.mp4",
            "titles/bbb/audio/12.m4s",
        ] {
            assert_eq!(ObjectKey::parse(k).unwrap().to_string(), k);
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        for k in [
            "titles/../etc/passwd",
            "titles/bbb/../../x",
            "titles/%2e%2e/x/1.m4s",
            "titles/bbb/v720/%2e%2e",
            "titles//v720/1.m4s",
            "titles/bbb\\..\\x/1.m4s",
            "/titles/bbb/v720/1.m4s",
            "titles/bbb/v720/1.m4s/",
            "titles/bbb/.hidden/1.m4s",
            "etc/passwd",
            "titles/BBB/v720/1.m4s",
            "titles/bbb/v720/01.m4s",
            "titles/bbb/v720/-1.m4s",
            "titles/bbb/v720/99999999999.m4s",
            "titles/bbb/v720/1.mp3",
        ] {
            assert!(ObjectKey::parse(k).is_err(), "{k:?} should be rejected");
        }
    }

    #[test]
    fn knows_content_types() {
        let k = ObjectKey::parse("titles/bbb/hls/master.m3u8").unwrap();
        assert_eq!(k.content_kind().mime(), "application/vnd.apple.mpegurl");
        assert!(!k.is_immutable());
        assert!(ObjectKey::parse("titles/bbb/v1/3.m4s").unwrap().is_immutable());
    }
}
