//! Pure rewrites that add HLS / DASH Content Steering to a master playlist or
//! an MPD. Edges steer the master playlists they serve on signed paths;
//! steering builds steered MPDs. See `steering::content_steering` for the
//! steering manifest players re-poll.

/// Pathway id of the variants written into a steered master playlist.
pub const BASE_PATHWAY: &str = "base";

/// Pathway ids are `[A-Za-z0-9._-]+` (HLS); edge names that are not get no pathway.
pub fn is_pathway_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn quote_attr(v: &str) -> String {
    // Quoted-strings in HLS cannot carry '"' or line breaks.
    v.chars().filter(|c| *c != '"' && *c != '\n' && *c != '\r').collect()
}

/// Splits an attribute list on commas outside quotes.
fn split_attrs(attrs: &str) -> Vec<String> {
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
    parts
}

/// Sets the quoted attributes `set` (name, value) on one tag line, replacing any already there.
fn with_attrs(line: &str, set: &[(&str, &str)]) -> String {
    let (tag, attrs) = line.split_once(':').unwrap_or((line, ""));
    let mut parts = split_attrs(attrs);
    parts.retain(|p| !set.iter().any(|(name, _)| p.trim_start().starts_with(&format!("{name}="))));
    for (name, value) in set {
        parts.push(format!("{name}=\"{}\"", quote_attr(value)));
    }
    format!("{tag}:{}", parts.join(","))
}

/// The value of the quoted attribute `name` of a tag line.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, attrs) = line.split_once(':')?;
    let prefix = format!("{name}=\"");
    let mut rest = attrs;
    loop {
        let at = rest.find(&prefix)?;
        // Only at the start of an attribute.
        if at == 0 || rest.as_bytes()[at - 1] == b',' {
            let value = &rest[at + prefix.len()..];
            return value.find('"').map(|end| &value[..end]);
        }
        rest = &rest[at + prefix.len()..];
    }
}

/// The stable id (`STABLE-VARIANT-ID` / `STABLE-RENDITION-ID`) of a playlist URI: its
/// file name without `.m3u8`, in the characters HLS allows. Edges write it into the
/// master playlist and steering names the per-variant URIs of each pathway by it, so both
/// derive it from the URI alone.
pub fn stable_id(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.strip_suffix(".m3u8").unwrap_or(name);
    stem.chars().map(|c| if c.is_ascii_alphanumeric() || "+/=.-_".contains(c) { c } else { '_' }).collect()
}

/// The playlists a master playlist points at: (stable id, URI as written) of every variant
/// (`#EXT-X-STREAM-INF` + URI line) and of every rendition (`#EXT-X-MEDIA` with a `URI`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MasterUris {
    pub variants: Vec<(String, String)>,
    pub renditions: Vec<(String, String)>,
}

/// Reads the variant and rendition URIs of a master playlist; None if it is not one.
pub fn master_uris(master: &str) -> Option<MasterUris> {
    let mut lines = master.lines().map(|l| l.trim_end_matches('\r'));
    if lines.next() != Some("#EXTM3U") {
        return None;
    }
    let mut out = MasterUris::default();
    let mut pending_variant = false;
    for line in lines {
        if line.starts_with("#EXT-X-STREAM-INF:") {
            pending_variant = true;
        } else if line.starts_with("#EXT-X-MEDIA:") {
            if let Some(uri) = attr(line, "URI") {
                out.renditions.push((stable_id(uri), uri.to_owned()));
            }
        } else if pending_variant && !line.is_empty() && !line.starts_with('#') {
            out.variants.push((stable_id(line), line.to_owned()));
            pending_variant = false;
        }
    }
    Some(out)
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
    let lines: Vec<&str> = lines.map(|l| l.trim_end_matches('\r')).collect();
    let mut placed = false;
    for (i, &line) in lines.iter().enumerate() {
        if line.starts_with("#EXT-X-CONTENT-STEERING") {
            continue;
        }
        // After the version/independent-segments header lines, before the first other line.
        let header = line.starts_with("#EXT-X-VERSION") || line.starts_with("#EXT-X-INDEPENDENT-SEGMENTS");
        if !placed && !header {
            out.push_str(&steering);
            placed = true;
        }
        if line.starts_with("#EXT-X-STREAM-INF:") {
            // Named by its URI (the next line that is not a tag), so steering can give
            // each pathway clone whole per-variant URIs (a host replacement cannot change
            // the port, and edges may differ only by port).
            let uri = lines[i + 1..].iter().find(|l| !l.is_empty() && !l.starts_with('#'));
            match uri {
                Some(uri) => out.push_str(&with_attrs(
                    line,
                    &[("PATHWAY-ID", BASE_PATHWAY), ("STABLE-VARIANT-ID", &stable_id(uri))],
                )),
                None => out.push_str(&with_attrs(line, &[("PATHWAY-ID", BASE_PATHWAY)])),
            }
        } else if line.starts_with("#EXT-X-I-FRAME-STREAM-INF:") {
            out.push_str(&with_attrs(line, &[("PATHWAY-ID", BASE_PATHWAY)]));
        } else if line.starts_with("#EXT-X-MEDIA:") && attr(line, "URI").is_some() {
            let id = attr(line, "URI").map(stable_id).unwrap_or_default();
            out.push_str(&with_attrs(line, &[("STABLE-RENDITION-ID", &id)]));
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
            "#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\",PATHWAY-ID=\"base\",\
             STABLE-VARIANT-ID=\"v360\""
        );
        assert_eq!(
            lines[4],
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"a\",URI=\"audio.m3u8\",STABLE-RENDITION-ID=\"audio\""
        );
        assert_eq!(
            lines[7],
            "#EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.64001f,mp4a.40.2\",PATHWAY-ID=\"base\",\
             STABLE-VARIANT-ID=\"v720\""
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
    fn master_uris_and_stable_ids() {
        let uris = master_uris(MASTER).unwrap();
        assert_eq!(
            uris.variants,
            vec![("v360".to_owned(), "v360.m3u8".to_owned()), ("v720".to_owned(), "v720.m3u8".to_owned())]
        );
        assert_eq!(uris.renditions, vec![("audio".to_owned(), "audio.m3u8".to_owned())]);
        // The steered playlist names the same playlists by the same ids.
        let steered = steer_master_playlist(MASTER, "http://s/x").unwrap();
        assert_eq!(master_uris(&steered).unwrap(), uris);
        assert_eq!(stable_id("../a b/v1080-hevc.m3u8?x=1"), "v1080-hevc");
        assert_eq!(stable_id("we\"ird.m3u8"), "we_ird");
        assert_eq!(master_uris("no"), None);
    }

    #[test]
    fn pathway_ids_are_checked() {
        assert!(is_pathway_id("edge-a.1_x"));
        assert!(!is_pathway_id("") && !is_pathway_id("a b") && !is_pathway_id("a\"b"));
    }
}
