//! Cuts each rendition's fragmented MP4 into CMAF objects and describes the
//! title in a catalog.

use std::path::Path;

use bytes::Bytes;
use vod::{Catalog, MediaKind, ObjectKey, Rendition, RenditionId, SegmentInfo, TitleId};

use crate::error::EncodeError;
use crate::fmp4;
use crate::transcode::EncodedFiles;

/// Every object of a title, ready to upload; the catalog goes last.
pub struct Package {
    pub objects: Vec<(ObjectKey, Bytes)>,
    pub catalog: Catalog,
}

fn cut(
    title: &TitleId,
    id: RenditionId,
    kind: MediaKind,
    path: &Path,
    objects: &mut Vec<(ObjectKey, Bytes)>,
) -> Result<Rendition, EncodeError> {
    let pkg_err = |reason: String| EncodeError::Packaging { rendition: id.to_string(), reason };
    let data = Bytes::from(std::fs::read(path)?);
    let split = fmp4::split(&data).map_err(|e| pkg_err(e.to_string()))?;
    if split.fragments.is_empty() {
        return Err(pkg_err("no media fragments".into()));
    }
    let mut segments = Vec::with_capacity(split.fragments.len());
    for (i, f) in split.fragments.iter().enumerate() {
        if kind == MediaKind::Video && !f.starts_with_sync {
            return Err(pkg_err(format!("segment {} does not start with a keyframe", i + 1)));
        }
        objects.push((ObjectKey::Segment(title.clone(), id.clone(), i as u32 + 1), data.slice(f.bytes.clone())));
        segments.push(SegmentInfo { start: f.decode_time, duration: f.duration, bytes: f.bytes.len() as u64 });
    }
    objects.push((ObjectKey::Init(title.clone(), id.clone()), data.slice(split.init.clone())));
    let ts = f64::from(split.track.timescale);
    let total_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let total_s = segments.iter().map(|s| s.duration).sum::<u64>() as f64 / ts;
    // Peak over segments of at least half a nominal segment: a short tail
    // segment would otherwise inflate BANDWIDTH.
    let longest = segments.iter().map(|s| s.duration).max().unwrap_or(1) as f64;
    let peak = segments
        .iter()
        .filter(|s| s.duration as f64 >= longest / 2.0 || segments.len() == 1)
        .map(|s| s.bytes as f64 * 8.0 / (s.duration.max(1) as f64 / ts))
        .fold(0.0, f64::max);
    Ok(Rendition {
        id,
        kind,
        codecs: split.track.codecs.clone(),
        bandwidth_bps: peak.ceil() as u64,
        average_bandwidth_bps: (total_bytes as f64 * 8.0 / total_s.max(1e-3)).ceil() as u64,
        width: None,
        height: None,
        frame_rate: None,
        sample_rate: None,
        channels: None,
        timescale: split.track.timescale,
        init_bytes: split.init.len() as u64,
        segments,
    })
}

/// Packages the encoded files of `title`.
pub fn package(title: &TitleId, files: &EncodedFiles, segment_ms: u64) -> Result<Package, EncodeError> {
    let mut objects = Vec::new();
    let mut renditions = Vec::new();
    let mut counts = Vec::new();
    for (rung, fps, path) in &files.video {
        let mut r = cut(title, rung.id.clone(), MediaKind::Video, path, &mut objects)?;
        r.width = Some(rung.width);
        r.height = Some(rung.height);
        r.frame_rate = Some(*fps);
        counts.push(r.segments.len());
        renditions.push(r);
    }
    // Aligned keyframes mean every rung has the same segment boundaries.
    if counts.windows(2).any(|w| w[0] != w[1]) {
        return Err(EncodeError::Packaging {
            rendition: "video".into(),
            reason: format!("rungs disagree on segment count: {counts:?}"),
        });
    }
    if let Some(path) = &files.audio {
        let audio_id = RenditionId::new("audio").unwrap_or_else(|_| unreachable!("valid id"));
        let mut r = cut(title, audio_id, MediaKind::Audio, path, &mut objects)?;
        r.sample_rate = Some(crate::audio::SAMPLE_RATE as u32);
        r.channels = Some(crate::audio::CHANNELS);
        renditions.push(r);
    }
    let duration_ms = renditions.iter().map(|r| (r.duration_seconds() * 1000.0).round() as u64).max().unwrap_or(0);
    let catalog = Catalog { title: title.clone(), segment_duration_ms: segment_ms, duration_ms, renditions };
    objects.push((ObjectKey::HlsMaster(title.clone()), Bytes::from(vod::manifest::hls_master(&catalog))));
    for r in &catalog.renditions {
        objects.push((ObjectKey::HlsMedia(title.clone(), r.id.clone()), Bytes::from(vod::manifest::hls_media(r))));
    }
    objects.push((ObjectKey::DashManifest(title.clone()), Bytes::from(vod::manifest::dash_mpd(&catalog))));
    Ok(Package { objects, catalog })
}
