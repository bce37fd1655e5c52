//! Cuts each rendition's fragmented MP4 into CMAF objects and describes the
//! title in a catalog.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use vod::ladder::PlannedRung;
use vod::{Catalog, MediaKind, ObjectKey, Rendition, RenditionId, SegmentInfo, TitleId};

use crate::error::EncodeError;
use crate::fmp4;

/// Every object of a title, ready to upload; the catalog goes last.
pub struct Package {
    pub objects: Vec<(ObjectKey, Bytes)>,
    pub catalog: Catalog,
}

fn cut(
    title: &TitleId,
    id: RenditionId,
    kind: MediaKind,
    parts: &[(PathBuf, Option<PartStart>)],
    objects: &mut Vec<(ObjectKey, Bytes)>,
) -> Result<Rendition, EncodeError> {
    let pkg_err = |reason: String| EncodeError::Packaging { rendition: id.to_string(), reason };
    let mut init: Option<Bytes> = None;
    let mut track = None;
    let mut segments: Vec<SegmentInfo> = Vec::new();
    let mut next_time: Option<u64> = None;
    for (p, (path, part_start)) in parts.iter().enumerate() {
        let data = Bytes::from(std::fs::read(path)?);
        let split = fmp4::split(&data).map_err(|e| pkg_err(format!("part {}: {e}", p + 1)))?;
        if split.fragments.is_empty() {
            return Err(pkg_err(format!("part {} has no media fragments", p + 1)));
        }
        let this_init = data.slice(split.init.clone());
        match &init {
            None => init = Some(this_init),
            // One init segment serves the whole rendition, so every part must
            // come from an identically configured encoder.
            Some(first) if *first != this_init => {
                return Err(pkg_err(format!(
                    "the init segment of part {} differs from part 1's (encoder configuration changed between chunks)",
                    p + 1
                )))
            }
            Some(_) => {}
        }
        let ts = u64::from(split.track.timescale);
        // Where the part's first frame must present, in the track's timescale.
        let target = part_start.map(|s| s.in_timescale(ts));
        // How much later than it decodes the part's first frame presents
        // (B-frame delay; per part, since at a variable frame rate it varies).
        let mut shift: Option<i64> = None;
        for f in &split.fragments {
            let n = segments.len() + 1;
            if kind == MediaKind::Video && !f.starts_with_sync {
                return Err(pkg_err(format!("segment {n} does not start with a keyframe")));
            }
            let mut body = data.slice(f.bytes.clone());
            // Each part was muxed on its own, from decode time 0: re-stamp it to
            // continue the previous part, or to start where its first frame
            // presents if that is later. Decode times never go backwards; if
            // the previous part's decode timeline ran past this part's first
            // frame (B-frame delay at a variable frame rate), the part's
            // composition offsets absorb the difference.
            let first_of_part = shift.is_none();
            let start = match (first_of_part, target, next_time) {
                (true, Some(t), Some(prev)) => t.max(prev),
                (true, Some(t), None) => t,
                (_, _, Some(prev)) => prev,
                (_, _, None) => f.decode_time,
            };
            let shift = match shift {
                Some(s) => s,
                None => {
                    let delay = fmp4::first_composition_offset(&body).map_err(|e| pkg_err(e.to_string()))?;
                    *shift.insert(delay + target.map_or(0, |t| start as i64 - t as i64))
                }
            };
            if start != f.decode_time || shift != 0 {
                let mut copy = body.to_vec();
                fmp4::set_decode_time(&mut copy, start)
                    .and_then(|()| fmp4::shift_composition_offsets(&mut copy, shift))
                    .map_err(|e| pkg_err(format!("segment {n}: {e}")))?;
                body = Bytes::from(copy);
            }
            next_time = Some(start + f.duration);
            objects.push((ObjectKey::Segment(title.clone(), id.clone(), n as u32), body));
            segments.push(SegmentInfo { start, duration: f.duration, bytes: f.bytes.len() as u64 });
        }
        track.get_or_insert(split.track);
    }
    let (Some(init), Some(track)) = (init, track) else {
        return Err(pkg_err("no parts".into()));
    };
    objects.push((ObjectKey::Init(title.clone(), id.clone()), init.clone()));
    let ts = f64::from(track.timescale);
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
        codecs: track.codecs.clone(),
        bandwidth_bps: peak.ceil() as u64,
        average_bandwidth_bps: (total_bytes as f64 * 8.0 / total_s.max(1e-3)).ceil() as u64,
        width: None,
        height: None,
        frame_rate: None,
        sample_rate: None,
        channels: None,
        timescale: track.timescale,
        init_bytes: init.len() as u64,
        segments,
    })
}

/// Where a part's first frame presents: `pts` in a time base of `num/den` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartStart {
    pub pts: i64,
    pub num: i64,
    pub den: i64,
}

impl PartStart {
    /// The start in ticks of `timescale`, rounded to the nearest tick.
    pub fn in_timescale(&self, timescale: u64) -> u64 {
        let x = i128::from(self.pts.max(0)) * i128::from(timescale) * i128::from(self.num);
        let den = i128::from(self.den.max(1));
        ((x + den / 2) / den) as u64
    }
}

/// One video rendition as the files its chunks produced, in order, each with
/// where its first frame presents when known.
#[derive(Debug, Clone)]
pub struct VideoParts {
    pub rung: PlannedRung,
    pub fps: f64,
    pub parts: Vec<(PathBuf, Option<PartStart>)>,
}

/// Packages `title` from renditions made of one or more parts (chunks) each:
/// segments are numbered across parts and their decode times made continuous.
pub fn package_parts(
    title: &TitleId,
    video: &[VideoParts],
    audio: Option<&Path>,
    segment_ms: u64,
) -> Result<Package, EncodeError> {
    let mut objects = Vec::new();
    let mut renditions = Vec::new();
    let mut counts = Vec::new();
    for v in video {
        let mut r = cut(title, v.rung.id.clone(), MediaKind::Video, &v.parts, &mut objects)?;
        r.width = Some(v.rung.width);
        r.height = Some(v.rung.height);
        r.frame_rate = Some(v.fps);
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
    if let Some(path) = audio {
        let audio_id = RenditionId::new("audio").unwrap_or_else(|_| unreachable!("valid id"));
        let mut r = cut(title, audio_id, MediaKind::Audio, &[(path.to_owned(), None)], &mut objects)?;
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
