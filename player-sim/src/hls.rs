//! What the live player needs from HLS playlists: the ladder, the audio
//! rendition, and per rendition the segment URLs with their init segments.
//! Pure: text and base URL in, absolute URLs out.

use reqwest::Url;

/// A playlist the player cannot use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HlsError {
    #[error("{url}: not a master playlist: {reason}")]
    Master { url: String, reason: String },
    #[error("{url}: not a media playlist: {reason}")]
    Media { url: String, reason: String },
    #[error("{url}: master playlist has no variants")]
    NoVariants { url: String },
    #[error("{url}: media playlist has no segments")]
    NoSegments { url: String },
    #[error("{base}: bad URI {uri:?}: {reason}")]
    Uri { base: String, uri: String, reason: String },
}

/// One video variant of the ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Peak bitrate (`BANDWIDTH`), bits/s.
    pub bandwidth_bps: u64,
    /// Its media playlist.
    pub playlist: Url,
}

/// The master playlist as the player uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Master {
    /// Video variants, lowest bandwidth first.
    pub variants: Vec<Variant>,
    /// Media playlist of the audio rendition, when audio is a separate group.
    pub audio: Option<Url>,
}

impl Master {
    /// The ladder in kbit/s, lowest first (what the ABR sees).
    pub fn bitrates_kbps(&self) -> Vec<f64> {
        self.variants.iter().map(|v| v.bandwidth_bps as f64 / 1000.0).collect()
    }
}

/// One media segment with the init segment in force for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub url: Url,
    pub duration_ms: f64,
    /// `EXT-X-MAP` in force (applies until the next one).
    pub init: Option<Url>,
}

/// The segments of one rendition, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaTrack {
    pub segments: Vec<Segment>,
}

fn resolve(base: &Url, uri: &str) -> Result<Url, HlsError> {
    base.join(uri).map_err(|e| HlsError::Uri { base: base.to_string(), uri: uri.to_owned(), reason: e.to_string() })
}

/// Parse a master playlist fetched from `base`.
pub fn parse_master(text: &[u8], base: &Url) -> Result<Master, HlsError> {
    let pl = m3u8_rs::parse_master_playlist_res(text)
        .map_err(|e| HlsError::Master { url: base.to_string(), reason: short_reason(&e.to_string()) })?;
    let mut variants = Vec::new();
    let mut audio_group: Option<String> = None;
    for v in pl.variants.iter().filter(|v| !v.is_i_frame) {
        variants.push(Variant { bandwidth_bps: v.bandwidth, playlist: resolve(base, &v.uri)? });
        if audio_group.is_none() {
            audio_group.clone_from(&v.audio);
        }
    }
    if variants.is_empty() {
        return Err(HlsError::NoVariants { url: base.to_string() });
    }
    // Stable sort: equal bandwidths keep playlist order.
    variants.sort_by_key(|v| v.bandwidth_bps);
    let audio = match audio_group {
        Some(group) => {
            let candidates: Vec<_> = pl
                .alternatives
                .iter()
                .filter(|a| a.media_type == m3u8_rs::AlternativeMediaType::Audio && a.group_id == group)
                .filter(|a| a.uri.is_some())
                .collect();
            let pick = candidates.iter().find(|a| a.default).or(candidates.first());
            match pick.and_then(|a| a.uri.as_deref()) {
                Some(uri) => Some(resolve(base, uri)?),
                None => None,
            }
        }
        None => None,
    };
    Ok(Master { variants, audio })
}

/// Parse a media playlist fetched from `base`.
pub fn parse_media(text: &[u8], base: &Url) -> Result<MediaTrack, HlsError> {
    let pl = m3u8_rs::parse_media_playlist_res(text)
        .map_err(|e| HlsError::Media { url: base.to_string(), reason: short_reason(&e.to_string()) })?;
    let mut init: Option<Url> = None;
    let mut segments = Vec::with_capacity(pl.segments.len());
    for s in &pl.segments {
        if let Some(map) = &s.map {
            init = Some(resolve(base, &map.uri)?);
        }
        segments.push(Segment {
            url: resolve(base, &s.uri)?,
            duration_ms: f64::from(s.duration) * 1000.0,
            init: init.clone(),
        });
    }
    if segments.is_empty() {
        return Err(HlsError::NoSegments { url: base.to_string() });
    }
    Ok(MediaTrack { segments })
}

/// nom's errors quote the whole remaining input; keep messages to one line.
fn short_reason(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    if line.len() > 120 {
        let mut end = 120;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,URI=\"a128.m3u8\",GROUP-ID=\"aud\",LANGUAGE=\"und\",NAME=\"a128\",DEFAULT=YES,AUTOSELECT=YES
#EXT-X-STREAM-INF:BANDWIDTH=1128000,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\"
v720.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=328000,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\"
v360.m3u8
";

    const MEDIA: &str = "#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:1
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-MAP:URI=\"../v360/init.mp4\"
#EXTINF:2,
../v360/1.m4s
#EXTINF:1.5,
../v360/2.m4s
#EXT-X-ENDLIST
";

    fn base(path: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:9/t/TOKEN/titles/t1/hls/{path}")).unwrap()
    }

    #[test]
    fn master_sorts_variants_and_finds_audio() {
        let m = parse_master(MASTER.as_bytes(), &base("master.m3u8")).unwrap();
        assert_eq!(m.bitrates_kbps(), vec![328.0, 1128.0]);
        assert_eq!(m.variants[0].playlist.as_str(), "http://127.0.0.1:9/t/TOKEN/titles/t1/hls/v360.m3u8");
        assert_eq!(m.audio.unwrap().as_str(), "http://127.0.0.1:9/t/TOKEN/titles/t1/hls/a128.m3u8");
    }

    #[test]
    fn media_resolves_relative_uris_and_carries_the_map() {
        let t = parse_media(MEDIA.as_bytes(), &base("v360.m3u8")).unwrap();
        assert_eq!(t.segments.len(), 2);
        assert_eq!(t.segments[1].url.as_str(), "http://127.0.0.1:9/t/TOKEN/titles/t1/v360/2.m4s");
        assert_eq!(t.segments[1].duration_ms, 1500.0);
        let init = "http://127.0.0.1:9/t/TOKEN/titles/t1/v360/init.mp4";
        assert!(t.segments.iter().all(|s| s.init.as_ref().map(Url::as_str) == Some(init)));
    }

    #[test]
    fn bad_playlists_are_errors() {
        assert!(parse_master(b"not a playlist", &base("master.m3u8")).is_err());
        assert!(matches!(
            parse_master(b"#EXTM3U\n#EXT-X-VERSION:7\n", &base("master.m3u8")),
            Err(HlsError::NoVariants { .. }) | Err(HlsError::Master { .. })
        ));
        assert!(parse_media(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-ENDLIST\n", &base("v.m3u8")).is_err());
    }

    #[test]
    fn without_audio_group_there_is_no_audio() {
        let m = parse_master(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=500000\nv.m3u8\n", &base("master.m3u8")).unwrap();
        assert_eq!(m.audio, None);
        assert_eq!(m.variants.len(), 1);
    }
}
