//! HLS and DASH Content Steering: the steering manifest players re-poll, and
//! pure helpers that add steering to a master playlist or an MPD. No I/O.
//!
//! How it fits together (HLS). The master playlist carries
//!
//! ```text
//! #EXT-X-CONTENT-STEERING:SERVER-URI="http://steer/v1/steering/bbb?format=hls",PATHWAY-ID="base"
//! #EXT-X-STREAM-INF:BANDWIDTH=1200000,PATHWAY-ID="base"
//! v720.m3u8
//! ```
//!
//! Every variant belongs to one pathway, `base`: whichever edge served the
//! master (variant URIs are relative, so they inherit that edge's host and the
//! path token). The steering manifest then declares one pathway per candidate
//! edge as a *clone* of `base` with the edge's host (`PATHWAY-CLONES`,
//! `URI-REPLACEMENT.HOST`) and lists them best first (`PATHWAY-PRIORITY`).
//! Tokens do not depend on the edge, so the cloned URIs are signed too. The
//! player re-polls `RELOAD-URI` every `TTL` seconds, sending `_HLS_pathway`
//! (its current pathway) and `_HLS_throughput`; each poll is a fresh
//! decision, so a dead or overloaded edge drops out of the list and players
//! move mid-stream. Pathway cloning needs edges whose base URL has no path.
//!
//! DASH. The MPD carries `<ContentSteering defaultServiceLocation="a1"
//! queryBeforeStart="true">SERVER-URI</ContentSteering>` and one
//! `<BaseURL serviceLocation="a1">http://a1/t/TOKEN/titles/bbb/dash/</BaseURL>`
//! per edge; the steering manifest lists the service locations best first
//! (`SERVICE-LOCATION-PRIORITY`; the same list is also sent as
//! `PATHWAY-PRIORITY`, which some DASH players read). Players send
//! `_DASH_pathway` and `_DASH_throughput` when they re-poll.

use serde::Serialize;
use vod::steering::Format;

/// Pathway id of the variants written into a steered master playlist.
pub const BASE_PATHWAY: &str = "base";

/// Pathway ids are `[A-Za-z0-9._-]+` (HLS); edge names that are not get no pathway.
pub fn is_pathway_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One candidate as a pathway: its id and the host (`host[:port]`) its URIs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pathway {
    /// Pathway / service-location id (the edge name, or `origin`).
    pub id: String,
    /// `host[:port]` that replaces the base pathway's host.
    pub host: String,
}

/// `URI-REPLACEMENT` of a pathway clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UriReplacement {
    /// New host for every URI of the base pathway.
    #[serde(rename = "HOST")]
    pub host: String,
}

/// One entry of `PATHWAY-CLONES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathwayClone {
    /// The pathway copied.
    #[serde(rename = "BASE-ID")]
    pub base_id: String,
    /// The new pathway's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// How its URIs differ from the base pathway's.
    #[serde(rename = "URI-REPLACEMENT")]
    pub uri_replacement: UriReplacement,
}

/// A steering manifest (HLS Content Steering / DASH-IF Content Steering, version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SteeringManifest {
    /// Always 1.
    #[serde(rename = "VERSION")]
    pub version: u32,
    /// Seconds until the player polls again.
    #[serde(rename = "TTL")]
    pub ttl: u64,
    /// Where to poll next.
    #[serde(rename = "RELOAD-URI")]
    pub reload_uri: String,
    /// Pathways best first (HLS; also sent for DASH).
    #[serde(rename = "PATHWAY-PRIORITY")]
    pub pathway_priority: Vec<String>,
    /// Service locations best first (DASH only).
    #[serde(rename = "SERVICE-LOCATION-PRIORITY", skip_serializing_if = "Option::is_none")]
    pub service_location_priority: Option<Vec<String>>,
    /// Pathways derived from the master's base pathway (HLS only).
    #[serde(rename = "PATHWAY-CLONES", skip_serializing_if = "Vec::is_empty")]
    pub pathway_clones: Vec<PathwayClone>,
}

/// The steering manifest for ranked `pathways` (best first).
pub fn steering_manifest(format: Format, ttl_s: u64, reload_uri: String, pathways: &[Pathway]) -> SteeringManifest {
    let ids: Vec<String> = pathways.iter().map(|p| p.id.clone()).collect();
    match format {
        Format::Hls => SteeringManifest {
            version: 1,
            ttl: ttl_s,
            reload_uri,
            pathway_priority: ids,
            service_location_priority: None,
            pathway_clones: pathways
                .iter()
                .map(|p| PathwayClone {
                    base_id: BASE_PATHWAY.to_owned(),
                    id: p.id.clone(),
                    uri_replacement: UriReplacement { host: p.host.clone() },
                })
                .collect(),
        },
        Format::Dash => SteeringManifest {
            version: 1,
            ttl: ttl_s,
            reload_uri,
            pathway_priority: ids.clone(),
            service_location_priority: Some(ids),
            pathway_clones: Vec::new(),
        },
    }
}

fn quote_attr(v: &str) -> String {
    // Quoted-strings in HLS cannot carry '"' or line breaks.
    v.chars().filter(|c| *c != '"' && *c != '\n' && *c != '\r').collect()
}

/// Sets `PATHWAY-ID="{pathway}"` on one `#EXT-X-STREAM-INF` / `#EXT-X-I-FRAME-STREAM-INF` line.
fn with_pathway(line: &str, pathway: &str) -> String {
    let (tag, attrs) = line.split_once(':').unwrap_or((line, ""));
    // Split on commas outside quotes, drop any PATHWAY-ID, append ours.
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in attrs.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts.retain(|p| !p.trim_start().starts_with("PATHWAY-ID="));
    parts.push(format!("PATHWAY-ID=\"{}\"", quote_attr(pathway)));
    format!("{tag}:{}", parts.join(","))
}

/// Adds `#EXT-X-CONTENT-STEERING` (pointing at `server_uri`) to a master playlist and puts
/// every variant in the [`BASE_PATHWAY`]; an existing steering tag is replaced. Returns
/// None when the text is not a master playlist (no `#EXTM3U` header).
pub fn steer_master_playlist(master: &str, server_uri: &str) -> Option<String> {
    let mut lines = master.lines();
    if lines.next().map(str::trim_end) != Some("#EXTM3U") {
        return None;
    }
    let mut out = String::with_capacity(master.len() + 128);
    out.push_str("#EXTM3U\n");
    let steering =
        format!("#EXT-X-CONTENT-STEERING:SERVER-URI=\"{}\",PATHWAY-ID=\"{BASE_PATHWAY}\"\n", quote_attr(server_uri));
    let mut placed = false;
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.starts_with("#EXT-X-CONTENT-STEERING") {
            continue;
        }
        // After the version/independent-segments header lines, before the first other line.
        let header = line.starts_with("#EXT-X-VERSION") || line.starts_with("#EXT-X-INDEPENDENT-SEGMENTS");
        if !placed && !header {
            out.push_str(&steering);
            placed = true;
        }
        if line.starts_with("#EXT-X-STREAM-INF:") || line.starts_with("#EXT-X-I-FRAME-STREAM-INF:") {
            out.push_str(&with_pathway(line, BASE_PATHWAY));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !placed {
        out.push_str(&steering);
    }
    Some(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Adds `<ContentSteering>` and one `<BaseURL serviceLocation=…>` per location (best first)
/// right after the `<MPD …>` opening tag. `locations` are (id, absolute base URL ending in
/// `/`). Returns None when no `<MPD` element is found.
pub fn steer_mpd(mpd: &str, server_uri: &str, locations: &[(String, String)]) -> Option<String> {
    let start = mpd.find("<MPD")?;
    let end = start + mpd[start..].find('>')? + 1;
    let default = locations.first().map(|(id, _)| id.as_str()).unwrap_or_default();
    let mut insert = format!(
        "\n  <ContentSteering defaultServiceLocation=\"{}\" queryBeforeStart=\"true\">{}</ContentSteering>",
        xml_escape(default),
        xml_escape(server_uri)
    );
    for (id, base) in locations {
        insert.push_str(&format!("\n  <BaseURL serviceLocation=\"{}\">{}</BaseURL>", xml_escape(id), xml_escape(base)));
    }
    Some(format!("{}{insert}{}", &mpd[..end], &mpd[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(id: &str, host: &str) -> Pathway {
        Pathway { id: id.into(), host: host.into() }
    }

    #[test]
    fn hls_manifest_has_the_spec_keys_and_clones() {
        let m = steering_manifest(
            Format::Hls,
            10,
            "/v1/steering/bbb?format=hls".into(),
            &[pw("a1", "127.0.0.1:4567"), pw("b1", "edge-b:80")],
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["VERSION"], 1);
        assert_eq!(v["TTL"], 10);
        assert_eq!(v["RELOAD-URI"], "/v1/steering/bbb?format=hls");
        assert_eq!(v["PATHWAY-PRIORITY"], serde_json::json!(["a1", "b1"]));
        assert_eq!(
            v["PATHWAY-CLONES"][1],
            serde_json::json!({"BASE-ID": "base", "ID": "b1", "URI-REPLACEMENT": {"HOST": "edge-b:80"}})
        );
        assert!(v.get("SERVICE-LOCATION-PRIORITY").is_none());
    }

    #[test]
    fn dash_manifest_lists_service_locations() {
        let m = steering_manifest(Format::Dash, 5, "r".into(), &[pw("a1", "h")]);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["SERVICE-LOCATION-PRIORITY"], serde_json::json!(["a1"]));
        assert_eq!(v["PATHWAY-PRIORITY"], serde_json::json!(["a1"]));
        assert!(v.get("PATHWAY-CLONES").is_none());
    }

    const MASTER: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
        #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"a\",URI=\"audio.m3u8\"\n\
        #EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\"\nv360.m3u8\n\
        #EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.64001f,mp4a.40.2\",PATHWAY-ID=\"old\"\nv720.m3u8\n";

    #[test]
    fn master_playlist_gets_the_tag_and_base_pathway() {
        let out = steer_master_playlist(MASTER, "http://steer/v1/steering/bbb?format=hls").unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "#EXTM3U");
        assert_eq!(
            lines[3],
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"http://steer/v1/steering/bbb?format=hls\",PATHWAY-ID=\"base\""
        );
        assert_eq!(
            lines[5],
            "#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\",PATHWAY-ID=\"base\""
        );
        assert_eq!(
            lines[7],
            "#EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.64001f,mp4a.40.2\",PATHWAY-ID=\"base\""
        );
        assert_eq!(lines[8], "v720.m3u8");
        // Idempotent: steering an already steered playlist changes nothing.
        assert_eq!(steer_master_playlist(&out, "http://steer/v1/steering/bbb?format=hls").unwrap(), out);
        // And it still parses as a master playlist.
        assert!(matches!(m3u8_rs::parse_playlist_res(out.as_bytes()), Ok(m3u8_rs::Playlist::MasterPlaylist(_))));
        assert_eq!(steer_master_playlist("not a playlist", "x"), None);
    }

    #[test]
    fn mpd_gets_content_steering_and_base_urls() {
        let mpd = "<?xml version=\"1.0\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\">\n  <Period/>\n</MPD>\n";
        let out = steer_mpd(
            mpd,
            "http://steer/v1/steering/bbb?format=dash&a=1",
            &[
                ("a1".into(), "http://a1/t/TOK/titles/bbb/dash/".into()),
                ("b1".into(), "http://b1/t/TOK/titles/bbb/dash/".into()),
            ],
        )
        .unwrap();
        assert!(out.contains(
            "<ContentSteering defaultServiceLocation=\"a1\" queryBeforeStart=\"true\">http://steer/v1/steering/bbb?format=dash&amp;a=1</ContentSteering>"
        ));
        assert!(out.contains("<BaseURL serviceLocation=\"b1\">http://b1/t/TOK/titles/bbb/dash/</BaseURL>"));
        assert!(out.find("<ContentSteering").unwrap() < out.find("<Period").unwrap());
        assert_eq!(steer_mpd("<html/>", "x", &[]), None);
    }

    #[test]
    fn pathway_ids_are_checked() {
        assert!(is_pathway_id("edge-a.1_x"));
        assert!(!is_pathway_id("") && !is_pathway_id("a b") && !is_pathway_id("a\"b"));
    }
}
