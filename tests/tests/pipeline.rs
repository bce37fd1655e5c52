//! The whole path on loopback with the real binaries: encode a generated
//! clip, serve it from the origin through an edge, ask steering where to
//! play, fetch every object of every rendition, and check the media with
//! ffprobe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stack::{bin, run, Service};
use vod::token::TokenKey;
use vod::TitleId;

const SECRET: &str = "e2e-test-secret";
const WAIT: Duration = Duration::from_secs(30);

fn s(x: &str) -> String {
    x.to_owned()
}

fn require_bins(names: &[&str]) {
    for b in names {
        assert!(
            bin(b).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            bin(b).display()
        );
    }
}

/// Sends a raw request line so that `..` and `%2e` reach the server as typed
/// (HTTP clients normalise them away). Returns the status code.
fn raw_status(addr: SocketAddr, target: &str, extra: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(20)).send().unwrap()
}

fn get_bytes(url: &str) -> Vec<u8> {
    let r = get(url);
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().unwrap().to_vec()
}

fn resolve(base: &str, rel: &str) -> String {
    reqwest::Url::parse(base).unwrap().join(rel).unwrap().to_string()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    logs: PathBuf,
    work: PathBuf,
}

fn encode_clip(title: &str, seconds: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    stack::encode_generated(dir.path(), &store, title, (seconds, 640, 360), 2).unwrap_or_else(|e| panic!("{e}"));
    let logs = dir.path().join("logs");
    let work = dir.path().to_path_buf();
    Fixture { _dir: dir, store, logs, work }
}

fn start_origin(f: &Fixture) -> Service {
    Service::origin(&f.store, &f.logs, WAIT).unwrap()
}

fn start_edge(f: &Fixture, name: &str, upstream: &str) -> Service {
    Service::start(
        name,
        &bin("edge"),
        &[
            s("serve"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--upstream"),
            s(upstream),
            s("--ram-bytes"),
            s("100000000"),
            s("--name"),
            s(name),
            s("--token-secret"),
            s(SECRET),
        ],
        &f.logs,
        WAIT,
    )
    .unwrap()
}

fn start_steering(f: &Fixture, edges: &[(&Service, &str, &str)]) -> Service {
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_secret = \"{SECRET}\"\ntrust_forwarded_for = true\nprobe_interval_ms = 200\nprobe_timeout_ms = 200\nprobe_failures_to_down = 1\n"
    );
    for (e, site, prefix) in edges {
        cfg.push_str(&format!(
            "\n[[edges]]\nname = \"{}\"\nurl = \"{}\"\nsite = \"{site}\"\nprefixes = [\"{prefix}\"]\n",
            e.name,
            e.url()
        ));
    }
    let path = f.work.join("steering.toml");
    std::fs::write(&path, cfg).unwrap();
    Service::steering(&path, &f.logs, WAIT).unwrap()
}

fn play_url(steering: &Service, title: &str, format: &str, client: &str) -> serde_json::Value {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/v1/play/{title}?format={format}", steering.url()))
        .header("x-forwarded-for", client)
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn ffprobe_json(url: &str) -> serde_json::Value {
    let (status, out, err) = run(
        Path::new("ffprobe"),
        &[
            s("-v"),
            s("error"),
            s("-show_entries"),
            s("stream=codec_type,width,height:format=duration"),
            s("-of"),
            s("json"),
            s(url),
        ],
    )
    .unwrap();
    assert!(status.success(), "ffprobe {url}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn video_heights(probe: &serde_json::Value) -> Vec<u64> {
    let mut h: Vec<u64> = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == "video")
        .filter_map(|s| s["height"].as_u64())
        .collect();
    h.sort_unstable();
    h.dedup();
    h
}

fn first_packet_is_key(init: &[u8], segment: &[u8], scratch: &Path) -> bool {
    let f = scratch.join("probe.mp4");
    std::fs::write(&f, [init, segment].concat()).unwrap();
    let (status, out, _) = run(
        Path::new("ffprobe"),
        &[
            s("-v"),
            s("error"),
            s("-select_streams"),
            s("v:0"),
            s("-show_entries"),
            s("packet=flags"),
            s("-of"),
            s("csv=p=0"),
            f.display().to_string(),
        ],
    )
    .unwrap();
    status.success() && out.lines().next().is_some_and(|l| l.starts_with('K'))
}

#[test]
fn encode_serve_steer_and_play_every_rendition() {
    require_bins(&["encoder", "origin", "edge", "steering"]);
    let f = encode_clip("clip", 7);
    let origin = start_origin(&f);
    let edge = start_edge(&f, "edge-a", &origin.url());
    let steering = start_steering(&f, &[(&edge, "site-a", "10.1.0.0/16")]);

    let play = play_url(&steering, "clip", "hls", "10.1.2.3");
    let master_url = play["urls"][0]["url"].as_str().unwrap().to_owned();
    assert!(master_url.starts_with(&format!("{}/t/", edge.url())), "{master_url}");
    assert_eq!(play["urls"][0]["edge"], "edge-a");

    let master_text = get_bytes(&master_url);
    let m3u8_rs::Playlist::MasterPlaylist(master) = m3u8_rs::parse_playlist_res(&master_text).unwrap() else {
        panic!("not a master playlist");
    };
    assert_eq!(master.variants.len(), 3, "three video rungs for a 360p source");
    let mut media_uris: Vec<String> = master.variants.iter().map(|v| v.uri.clone()).collect();
    media_uris.extend(master.alternatives.iter().filter_map(|a| a.uri.clone()));
    assert_eq!(media_uris.len(), 4, "three video playlists and one audio");

    let catalog: vod::Catalog =
        serde_json::from_slice(&std::fs::read(f.store.join("titles/clip/catalog.json")).unwrap()).unwrap();
    let mut segments = 0;
    for uri in &media_uris {
        let media_url = resolve(&master_url, uri);
        let m3u8_rs::Playlist::MediaPlaylist(media) = m3u8_rs::parse_playlist_res(&get_bytes(&media_url)).unwrap()
        else {
            panic!("not a media playlist: {media_url}");
        };
        let map = media.segments[0].map.as_ref().expect("EXT-X-MAP");
        let init_url = resolve(&media_url, &map.uri);
        let init = get_bytes(&init_url);
        let key = init_url.split_once("/titles/").unwrap().1;
        assert_eq!(init, std::fs::read(f.store.join("titles").join(key)).unwrap(), "{key} differs from the origin's");
        let total: f32 = media.segments.iter().map(|s| s.duration).sum();
        assert!((total - 7.0).abs() < 0.1, "{uri}: {total}s of media");
        let is_video = !uri.starts_with("audio");
        for seg in &media.segments {
            let url = resolve(&media_url, &seg.uri);
            let body = get_bytes(&url);
            let key = url.split_once("/titles/").unwrap().1.to_owned();
            let from_origin = get_bytes(&format!("{}/titles/{key}", origin.url()));
            assert_eq!(body, from_origin, "{key}: edge bytes differ from origin bytes");
            if is_video {
                assert!(first_packet_is_key(&init, &body, &f.work), "{key} does not start with a keyframe");
            }
            segments += 1;
        }
    }
    let expected: usize = catalog.renditions.iter().map(|r| r.segments.len()).sum();
    assert_eq!(segments, expected);

    // Players decode both manifests over HTTP through the edge.
    let hls = ffprobe_json(&master_url);
    assert_eq!(video_heights(&hls), vec![144, 240, 360]);
    let dur: f64 = hls["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((dur - 7.0).abs() < 0.2, "HLS duration {dur}");
    let dash_url = play_url(&steering, "clip", "dash", "10.1.2.3")["urls"][0]["url"].as_str().unwrap().to_owned();
    assert!(dash_url.ends_with("/titles/clip/dash/manifest.mpd"));
    let dash = ffprobe_json(&dash_url);
    assert_eq!(video_heights(&dash), vec![144, 240, 360]);
    assert!(dash["streams"].as_array().unwrap().iter().any(|s| s["codec_type"] == "audio"));

    // Steering's redirect lands on the same edge with a signed path.
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/v1/redirect/clip/hls/master.m3u8", steering.url()))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["access-control-allow-origin"] == "*");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(get_bytes(&loc), master_text);
}

#[test]
fn hostile_paths_bad_tokens_and_ranges_are_refused() {
    require_bins(&["encoder", "origin", "edge"]);
    let f = encode_clip("clip", 3);
    let origin = start_origin(&f);
    let edge = start_edge(&f, "edge-a", &origin.url());
    let title = TitleId::new("clip").unwrap();
    let key = TokenKey::new("k1", SECRET.as_bytes().to_vec());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let good = key.sign(&title, now + 600);
    let seg = "titles/clip/v360/1.m4s";

    assert_eq!(raw_status(edge.addr, &format!("/t/{good}/{seg}"), ""), 200);
    // Traversal, raw and percent-encoded, on origin and edge.
    for target in [
        "/titles/../../etc/passwd",
        "/titles/clip/v360/../../../etc/passwd",
        "/titles/%2e%2e/%2e%2e/etc/passwd",
        "/titles/clip/v360/%2e%2e%2fcatalog.json",
        "/titles/clip\\v360/1.m4s",
        "/titles//v360/1.m4s",
    ] {
        assert_eq!(raw_status(origin.addr, target, ""), 400, "origin {target}");
        assert_eq!(raw_status(edge.addr, target, ""), 400, "edge {target}");
        assert_eq!(raw_status(edge.addr, &format!("/t/{good}{target}"), ""), 400, "edge signed {target}");
    }
    // Forged, expired and other-title tokens.
    let mut forged = good.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let wrong_secret = TokenKey::new("k1", b"not-the-secret".to_vec()).sign(&title, now + 600);
    let expired = key.sign(&title, now - 1);
    let other = key.sign(&TitleId::new("other").unwrap(), now + 600);
    for tok in [forged.as_str(), wrong_secret.as_str(), expired.as_str(), other.as_str(), "garbage"] {
        assert_eq!(raw_status(edge.addr, &format!("/t/{tok}/{seg}"), ""), 403, "token {tok}");
    }
    // Ranges.
    let size = std::fs::metadata(f.store.join(seg)).unwrap().len();
    assert_eq!(raw_status(origin.addr, &format!("/{seg}"), &format!("Range: bytes={size}-\r\n")), 416);
    assert_eq!(raw_status(origin.addr, &format!("/{seg}"), "Range: bytes=0-99\r\n"), 206);
    assert_eq!(raw_status(edge.addr, &format!("/t/{good}/{seg}"), &format!("Range: bytes={size}-\r\n")), 416);
    assert_eq!(raw_status(edge.addr, &format!("/t/{good}/{seg}"), "Range: bytes=0-99\r\n"), 206);
    assert_eq!(raw_status(edge.addr, &format!("/t/{good}/titles/clip/v360/999.m4s"), ""), 404);
}

#[test]
fn encoder_refuses_bad_input_and_publishes_nothing() {
    require_bins(&["encoder"]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video\n".repeat(100)).unwrap();
    // An upload cut in half: the index is at the front, so it still opens.
    let whole = dir.path().join("whole.mp4");
    stack::generate_clip(&whole, 6, 320, 240).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cases = [
        (cut.display().to_string(), "is truncated"),
        (text.display().to_string(), "not a readable media file"),
        (dir.path().join("missing.mp4").display().to_string(), "does not exist"),
    ];
    for (input, message) in cases {
        let (status, _, err) = run(
            &bin("encoder"),
            &[
                s("encode"),
                s("--input"),
                input.clone(),
                s("--title"),
                s("bad"),
                s("--store"),
                store.display().to_string(),
                s("--quiet"),
            ],
        )
        .unwrap();
        assert!(!status.success(), "{input} was accepted");
        assert!(err.contains(message), "{input}: error should say {message:?}, got: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!store.join("titles/bad").exists(), "{input} published something");
    }
    let (status, _, err) = run(
        &bin("encoder"),
        &[
            s("encode"),
            s("--input"),
            text.display().to_string(),
            s("--title"),
            s("../evil"),
            s("--store"),
            store.display().to_string(),
        ],
    )
    .unwrap();
    assert!(!status.success() && err.contains("--title"), "{err}");
}

#[test]
fn steering_routes_by_client_site_and_skips_a_dead_edge() {
    require_bins(&["encoder", "origin", "edge", "steering"]);
    let f = encode_clip("clip", 2);
    let origin = start_origin(&f);
    let edge_a = start_edge(&f, "edge-a", &origin.url());
    let mut edge_b = start_edge(&f, "edge-b", &origin.url());
    let steering = start_steering(&f, &[(&edge_a, "site-a", "10.1.0.0/16"), (&edge_b, "site-b", "10.2.0.0/16")]);
    let first_edge =
        |client: &str| play_url(&steering, "clip", "hls", client)["urls"][0]["edge"].as_str().unwrap().to_owned();
    assert_eq!(first_edge("10.1.9.9"), "edge-a");
    assert_eq!(first_edge("10.2.9.9"), "edge-b");
    // A site-b player streams from edge-b through its signed URL.
    let url = play_url(&steering, "clip", "hls", "10.2.9.9")["urls"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&edge_b.url()));
    assert!(!get_bytes(&url).is_empty());

    edge_b.stop(Duration::from_secs(5));
    let moved = stack::wait_until(Duration::from_secs(15), || first_edge("10.2.9.9") == "edge-a");
    assert!(moved, "steering kept sending site-b players to a dead edge");
    let play = play_url(&steering, "clip", "hls", "10.2.9.9");
    let urls = play["urls"].as_array().unwrap();
    assert_eq!(urls.len(), 1, "the dead edge is not offered at all: {play}");
    assert!(get(urls[0]["url"].as_str().unwrap()).status().is_success());
}
