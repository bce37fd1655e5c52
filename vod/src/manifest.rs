//! HLS and DASH manifest text from a catalog.
//!
//! URIs are relative so that a path token in front of the title
//! (`/t/{token}/titles/...`) carries through every request a player makes:
//! `hls/{rendition}.m3u8` points at `../{rendition}/{n}.m4s`, and the MPD at
//! `dash/manifest.mpd` points at `../$RepresentationID$/...`.

use std::fmt::Write as _;

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType, MediaSegment,
    Resolution, VariantStream,
};

use crate::catalog::{Catalog, MediaKind, Rendition};

/// HLS version: fMP4 segments with EXT-X-MAP need 7.
const HLS_VERSION: usize = 7;
const AUDIO_GROUP: &str = "aud";

fn write_m3u8(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    f(&mut out).unwrap_or_else(|e| unreachable!("writing to memory: {e}"));
    String::from_utf8(out).unwrap_or_else(|e| unreachable!("m3u8-rs writes UTF-8: {e}"))
}

/// The HLS master playlist: one variant per video rung, audio as a group.
pub fn hls_master(cat: &Catalog) -> String {
    let audio = cat.audio();
    let audio_bw = audio.iter().map(|a| a.bandwidth_bps).max().unwrap_or(0);
    let audio_avg = audio.iter().map(|a| a.average_bandwidth_bps).max().unwrap_or(0);
    let audio_codec = audio.first().map(|a| a.codecs.clone());
    let alternatives = audio
        .iter()
        .enumerate()
        .map(|(i, a)| AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(format!("{}.m3u8", a.id)),
            group_id: AUDIO_GROUP.to_owned(),
            language: Some("und".to_owned()),
            name: a.id.to_string(),
            default: i == 0,
            autoselect: true,
            channels: a.channels.map(|c| c.to_string()),
            ..Default::default()
        })
        .collect();
    let variants = cat
        .video()
        .into_iter()
        .rev()
        .map(|v| VariantStream {
            uri: format!("{}.m3u8", v.id),
            bandwidth: v.bandwidth_bps + audio_bw,
            average_bandwidth: Some(v.average_bandwidth_bps + audio_avg),
            codecs: Some(match &audio_codec {
                Some(a) => format!("{},{}", v.codecs, a),
                None => v.codecs.clone(),
            }),
            resolution: v.width.zip(v.height).map(|(w, h)| Resolution { width: w.into(), height: h.into() }),
            frame_rate: v.frame_rate.map(|f| (f * 1000.0).round() / 1000.0),
            audio: audio_codec.as_ref().map(|_| AUDIO_GROUP.to_owned()),
            ..Default::default()
        })
        .collect();
    let pl = MasterPlaylist {
        version: Some(HLS_VERSION),
        independent_segments: true,
        variants,
        alternatives,
        ..Default::default()
    };
    write_m3u8(|w| pl.write_to(w))
}

/// The HLS media playlist of one rendition.
pub fn hls_media(rendition: &Rendition) -> String {
    let map = Map { uri: format!("../{}/init.mp4", rendition.id), ..Default::default() };
    let segments: Vec<MediaSegment> = (0..rendition.segments.len())
        .map(|i| MediaSegment {
            uri: format!("../{}/{}.m4s", rendition.id, i + 1),
            duration: rendition.segment_seconds(i) as f32,
            map: (i == 0).then(|| map.clone()),
            ..Default::default()
        })
        .collect();
    let target = (0..rendition.segments.len()).map(|i| rendition.segment_seconds(i)).fold(0.0, f64::max);
    let pl = MediaPlaylist {
        version: Some(HLS_VERSION),
        // EXT-X-TARGETDURATION is the longest EXTINF rounded to the nearest integer (RFC 8216 4.3.3.1).
        target_duration: target.round().max(1.0) as u64,
        media_sequence: 1,
        playlist_type: Some(MediaPlaylistType::Vod),
        independent_segments: true,
        end_list: true,
        segments,
        ..Default::default()
    };
    write_m3u8(|w| pl.write_to(w))
}

fn iso_duration(seconds: f64) -> String {
    format!("PT{seconds:.3}S")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn segment_timeline(r: &Rendition) -> String {
    // Run-length encode equal durations: <S t= d= r=/>.
    let mut out = String::from("<SegmentTimeline>");
    let mut i = 0;
    while i < r.segments.len() {
        let s = &r.segments[i];
        let mut repeat = 0;
        while i + repeat + 1 < r.segments.len() && r.segments[i + repeat + 1].duration == s.duration {
            repeat += 1;
        }
        if repeat > 0 {
            let _ = write!(out, "<S t=\"{}\" d=\"{}\" r=\"{}\"/>", s.start, s.duration, repeat);
        } else {
            let _ = write!(out, "<S t=\"{}\" d=\"{}\"/>", s.start, s.duration);
        }
        i += repeat + 1;
    }
    out.push_str("</SegmentTimeline>");
    out
}

/// The DASH MPD: static, one AdaptationSet per media type, SegmentTemplate with a timeline.
pub fn dash_mpd(cat: &Catalog) -> String {
    let total = cat.renditions.iter().map(Rendition::duration_seconds).fold(0.0, f64::max);
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019" type="static" mediaPresentationDuration="{}" minBufferTime="{}">"#,
        iso_duration(total),
        iso_duration(cat.segment_duration_ms as f64 / 1000.0),
    );
    let _ = writeln!(x, r#"  <Period id="0" start="PT0S">"#);
    // One AdaptationSet per video codec (players switch rungs within a set,
    // never codecs), then the audio.
    let mut sets: Vec<(MediaKind, Vec<&Rendition>)> = Vec::new();
    for r in &cat.renditions {
        let family = codec_family(&r.codecs);
        match sets.iter_mut().find(|(k, reps)| *k == r.kind && codec_family(&reps[0].codecs) == family) {
            Some((_, reps)) => reps.push(r),
            None => sets.push((r.kind, vec![r])),
        }
    }
    sets.sort_by_key(|(k, _)| *k == MediaKind::Audio);
    for (set_id, (kind, mut reps)) in sets.into_iter().enumerate() {
        let (content, mime) = match kind {
            MediaKind::Video => ("video", "video/mp4"),
            MediaKind::Audio => ("audio", "audio/mp4"),
        };
        reps.sort_by_key(|r| r.bandwidth_bps);
        let _ = writeln!(
            x,
            r#"    <AdaptationSet id="{set_id}" contentType="{content}" mimeType="{mime}" segmentAlignment="true" startWithSAP="1">"#
        );
        for r in reps {
            let mut attrs = format!(
                r#"id="{}" bandwidth="{}" codecs="{}""#,
                xml_escape(r.id.as_str()),
                r.bandwidth_bps,
                xml_escape(&r.codecs)
            );
            if let (Some(w), Some(h)) = (r.width, r.height) {
                let _ = write!(attrs, r#" width="{w}" height="{h}" sar="1:1""#);
            }
            if let Some(f) = r.frame_rate {
                let _ = write!(attrs, r#" frameRate="{}""#, frame_rate_attr(f));
            }
            if let Some(sr) = r.sample_rate {
                let _ = write!(attrs, r#" audioSamplingRate="{sr}""#);
            }
            let _ = writeln!(x, "      <Representation {attrs}>");
            if let Some(ch) = r.channels {
                let _ = writeln!(
                    x,
                    r#"        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="{ch}"/>"#
                );
            }
            let _ = writeln!(
                x,
                r#"        <SegmentTemplate timescale="{}" initialization="../$RepresentationID$/init.mp4" media="../$RepresentationID$/$Number$.m4s" startNumber="1">{}</SegmentTemplate>"#,
                r.timescale,
                segment_timeline(r)
            );
            let _ = writeln!(x, "      </Representation>");
        }
        let _ = writeln!(x, "    </AdaptationSet>");
    }
    let _ = writeln!(x, "  </Period>");
    let _ = writeln!(x, "</MPD>");
    x
}

/// The sample entry part of a codecs string: `avc1`, `hvc1`, `av01`, `mp4a`.
fn codec_family(codecs: &str) -> &str {
    codecs.split('.').next().unwrap_or(codecs)
}

fn frame_rate_attr(f: f64) -> String {
    // 29.97 and friends as the exact NTSC fraction; integers as integers.
    let ntsc = f * 1.001;
    if (f - f.round()).abs() < 1e-6 {
        format!("{}", f.round() as u64)
    } else if (ntsc - ntsc.round()).abs() < 1e-3 {
        format!("{}/1001", (ntsc.round() as u64) * 1000)
    } else {
        format!("{}/1000", (f * 1000.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SegmentInfo;
    use crate::id::{RenditionId, TitleId};

    fn rendition(id: &str, kind: MediaKind, bw: u64, timescale: u32, durs: &[u64]) -> Rendition {
        let mut start = 0;
        let segments = durs
            .iter()
            .map(|&d| {
                let s = SegmentInfo { start, duration: d, bytes: 1000 };
                start += d;
                s
            })
            .collect();
        Rendition {
            id: RenditionId::new(id).unwrap(),
            kind,
            codecs: if kind == MediaKind::Video { "avc1.64001e".into() } else { "mp4a.40.2".into() },
            bandwidth_bps: bw,
            average_bandwidth_bps: bw * 9 / 10,
            width: (kind == MediaKind::Video).then_some(640),
            height: (kind == MediaKind::Video).then_some(360),
            frame_rate: (kind == MediaKind::Video).then_some(25.0),
            sample_rate: (kind == MediaKind::Audio).then_some(48000),
            channels: (kind == MediaKind::Audio).then_some(2),
            timescale,
            init_bytes: 800,
            segments,
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            title: TitleId::new("t").unwrap(),
            segment_duration_ms: 4000,
            duration_ms: 10000,
            renditions: vec![
                rendition("v360", MediaKind::Video, 800_000, 12800, &[51200, 51200, 25600]),
                rendition("v240", MediaKind::Video, 400_000, 12800, &[51200, 51200, 25600]),
                rendition("audio", MediaKind::Audio, 128_000, 48000, &[192512, 191488, 96000]),
            ],
        }
    }

    #[test]
    fn hls_master_round_trips_through_a_parser() {
        let text = hls_master(&catalog());
        let m3u8_rs::Playlist::MasterPlaylist(m) = m3u8_rs::parse_playlist_res(text.as_bytes()).unwrap() else {
            panic!("not a master playlist: {text}");
        };
        assert_eq!(m.variants.len(), 2);
        assert_eq!(m.variants[0].bandwidth, 528_000, "lowest rung first, audio included");
        assert_eq!(m.variants[1].codecs.as_deref(), Some("avc1.64001e,mp4a.40.2"));
        assert_eq!(m.variants[1].audio.as_deref(), Some("aud"));
        assert!(m.variants[1].average_bandwidth.is_some());
        assert_eq!(m.alternatives[0].uri.as_deref(), Some("audio.m3u8"));
        assert!(text.contains("FRAME-RATE=25"));
    }

    #[test]
    fn hls_media_lists_every_segment_with_its_duration() {
        let r = rendition("v360", MediaKind::Video, 800_000, 12800, &[51200, 51200, 25600]);
        let text = hls_media(&r);
        let m3u8_rs::Playlist::MediaPlaylist(m) = m3u8_rs::parse_playlist_res(text.as_bytes()).unwrap() else {
            panic!("not a media playlist");
        };
        assert_eq!(m.segments.len(), 3);
        assert_eq!(m.segments[2].uri, "../v360/3.m4s");
        assert!((m.segments[2].duration - 2.0).abs() < 1e-6);
        assert_eq!(m.target_duration, 4);
        assert!(m.end_list);
        assert!(text.contains("#EXT-X-MAP:URI=\"../v360/init.mp4\""));
    }

    #[test]
    fn mpd_has_one_adaptation_set_per_type_and_a_timeline() {
        let x = dash_mpd(&catalog());
        assert_eq!(x.matches("<AdaptationSet").count(), 2);
        assert!(x.contains(r#"<S t="0" d="51200" r="1"/><S t="102400" d="25600"/>"#), "{x}");
        assert!(x.contains(r#"mediaPresentationDuration="PT10.000S""#));
        assert!(x.contains(r#"frameRate="25""#));
        assert_eq!(frame_rate_attr(29.97002997), "30000/1001");
    }

    #[test]
    fn each_video_codec_gets_its_own_adaptation_set_and_hls_variants() {
        let mut cat = catalog();
        let mut hevc = rendition("v360-hevc", MediaKind::Video, 560_000, 12800, &[51200, 51200, 25600]);
        hevc.codecs = "hvc1.1.6.L93.B0".into();
        cat.renditions.insert(2, hevc);
        let x = dash_mpd(&cat);
        assert_eq!(x.matches("<AdaptationSet").count(), 3, "{x}");
        let hevc_set = x.split("<AdaptationSet").nth(2).unwrap();
        assert!(hevc_set.contains(r#"codecs="hvc1.1.6.L93.B0""#) && !hevc_set.contains("avc1"), "{x}");
        assert!(x.split("<AdaptationSet").nth(3).unwrap().contains("audio/mp4"));
        let master = hls_master(&cat);
        assert!(master.contains(r#"CODECS="hvc1.1.6.L93.B0,mp4a.40.2""#), "{master}");
        assert_eq!(master.matches("#EXT-X-STREAM-INF").count(), 3);
    }
}
