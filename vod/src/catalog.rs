//! The catalog: what a published title holds. Written last, so its presence
//! at the origin means every object it names is already there.

use serde::{Deserialize, Serialize};

use crate::id::{RenditionId, TitleId};
use crate::key::ObjectKey;

/// Video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Video,
    Audio,
}

/// One media segment of a rendition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Presentation start in the rendition's timescale.
    pub start: u64,
    /// Duration in the rendition's timescale.
    pub duration: u64,
    /// Size of the `.m4s` file.
    pub bytes: u64,
}

/// One rung of the ladder, or the audio track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendition {
    pub id: RenditionId,
    pub kind: MediaKind,
    /// RFC 6381 codecs string, e.g. `avc1.64001f` or `mp4a.40.2`.
    pub codecs: String,
    /// Peak bitrate over any segment, bits/s.
    pub bandwidth_bps: u64,
    /// Mean bitrate over the whole rendition, bits/s.
    pub average_bandwidth_bps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Ticks per second of `SegmentInfo::start` and `duration`.
    pub timescale: u32,
    pub init_bytes: u64,
    pub segments: Vec<SegmentInfo>,
}

impl Rendition {
    /// Duration of segment `i` (0-based) in seconds.
    pub fn segment_seconds(&self, i: usize) -> f64 {
        self.segments[i].duration as f64 / f64::from(self.timescale)
    }

    /// Total duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.segments.iter().map(|s| s.duration).sum::<u64>() as f64 / f64::from(self.timescale)
    }
}

/// A published title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub title: TitleId,
    /// Nominal segment duration; actual durations are per segment.
    pub segment_duration_ms: u64,
    pub duration_ms: u64,
    pub renditions: Vec<Rendition>,
}

impl Catalog {
    /// Video renditions, highest first.
    pub fn video(&self) -> Vec<&Rendition> {
        let mut v: Vec<&Rendition> = self.renditions.iter().filter(|r| r.kind == MediaKind::Video).collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.bandwidth_bps));
        v
    }

    /// Audio renditions.
    pub fn audio(&self) -> Vec<&Rendition> {
        self.renditions.iter().filter(|r| r.kind == MediaKind::Audio).collect()
    }

    /// Every media object key of the title (init and segments), in rendition order.
    pub fn media_keys(&self) -> Vec<(ObjectKey, u64)> {
        let mut out = Vec::new();
        for r in &self.renditions {
            out.push((ObjectKey::Init(self.title.clone(), r.id.clone()), r.init_bytes));
            for (i, s) in r.segments.iter().enumerate() {
                out.push((ObjectKey::Segment(self.title.clone(), r.id.clone(), i as u32 + 1), s.bytes));
            }
        }
        out
    }

    /// Manifest keys of the title.
    pub fn manifest_keys(&self) -> Vec<ObjectKey> {
        let mut out = vec![ObjectKey::HlsMaster(self.title.clone()), ObjectKey::DashManifest(self.title.clone())];
        out.extend(self.renditions.iter().map(|r| ObjectKey::HlsMedia(self.title.clone(), r.id.clone())));
        out
    }
}
