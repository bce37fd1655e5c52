//! Reading traces and movies from files (the only file I/O of the crate).

use std::path::{Path, PathBuf};

use vod::catalog::{Catalog, MediaKind};
use vod::trace::{Movie, NetworkTrace, TraceError};

/// A trace or movie file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // Causes are part of the message (not `source`), so `{:#}` does not repeat them.
    #[error("reading {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: TraceError },
    #[error(
        "{path}: no traces in this directory (*.json, mahimahi *.up/*.down/*.mahi, *.log/*.txt or extensionless logs)"
    )]
    NoTraces { path: PathBuf },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })
}

/// The network trace formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// Sabre's JSON list of periods.
    Json,
    /// mahimahi: one ms timestamp per 1500-byte delivery.
    Mahimahi,
    /// Pensieve: `seconds Mbit/s` per line.
    Pensieve,
}

/// The format of a trace file: by extension when it says (`.json`; `.mahi`,
/// `.mahimahi`, `.up`, `.down`), else by its first non-empty line (`[` or `{`:
/// JSON; one field: mahimahi; two: Pensieve).
pub fn detect_format(path: &Path, text: &str) -> TraceFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => return TraceFormat::Json,
        Some("mahi" | "mahimahi" | "up" | "down") => return TraceFormat::Mahimahi,
        _ => {}
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if first.starts_with('[') || first.starts_with('{') {
        TraceFormat::Json
    } else if first.split_whitespace().count() == 1 {
        TraceFormat::Mahimahi
    } else {
        TraceFormat::Pensieve
    }
}

/// Load and validate one network trace in any supported format.
pub fn load_trace(path: &Path) -> Result<NetworkTrace, LoadError> {
    let text = read(path)?;
    let parsed = match detect_format(path, &text) {
        TraceFormat::Json => NetworkTrace::from_json(&text),
        TraceFormat::Mahimahi => NetworkTrace::from_mahimahi(&text),
        TraceFormat::Pensieve => NetworkTrace::from_pensieve(&text),
    };
    parsed.map_err(|error| LoadError::Invalid { path: path.to_owned(), error })
}

/// A video codec family, as the first entry of a rendition's RFC 6381 `codecs` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Codec {
    /// `avc1`, `avc3`.
    H264,
    /// `hvc1`, `hev1`.
    Hevc,
    /// `av01`.
    Av1,
    /// `vp09`.
    Vp9,
}

impl Codec {
    /// Every family, for help texts.
    pub const ALL: [Codec; 4] = [Codec::H264, Codec::Hevc, Codec::Av1, Codec::Vp9];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Hevc => "hevc",
            Codec::Av1 => "av1",
            Codec::Vp9 => "vp9",
        }
    }

    /// The family of an RFC 6381 codecs string (its first entry), if known.
    pub fn of(codecs: &str) -> Option<Codec> {
        let first = codecs.split(',').next().unwrap_or("").trim();
        match first.split('.').next().unwrap_or("") {
            "avc1" | "avc3" => Some(Codec::H264),
            "hvc1" | "hev1" => Some(Codec::Hevc),
            "av01" => Some(Codec::Av1),
            "vp09" => Some(Codec::Vp9),
            _ => None,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Codec::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown codec {s:?} (known: h264, hevc, av1, vp9)"))
    }
}

/// Load and validate a movie: the traces folder's movie format, or one of our
/// titles' `catalog.json` (recognised by its `renditions`), playing its
/// H.264 ladder (or its only codec's, when it has one).
pub fn load_movie(path: &Path) -> Result<Movie, LoadError> {
    load_movie_for_codec(path, None)
}

/// As [`load_movie`], with the ladder of `codec` when the catalog carries
/// several codecs' renditions (a title encoded as H.264 + HEVC/AV1 is several
/// ladders, and a player plays one of them). `codec` needs a catalog.
pub fn load_movie_for_codec(path: &Path, codec: Option<Codec>) -> Result<Movie, LoadError> {
    let text = read(path)?;
    let invalid = |error| LoadError::Invalid { path: path.to_owned(), error };
    let is_catalog = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.get("renditions").is_some());
    if is_catalog {
        let mut catalog: Catalog = serde_json::from_str(&text).map_err(|e| invalid(TraceError::Json(e.to_string())))?;
        let chosen = choose_codec(&catalog, codec).map_err(|m| invalid(TraceError::Catalog(m)))?;
        if let Some(chosen) = chosen {
            catalog.renditions.retain(|r| r.kind != MediaKind::Video || Codec::of(&r.codecs) == Some(chosen));
        }
        return Movie::from_catalog(&catalog).map_err(invalid);
    }
    if let Some(codec) = codec {
        return Err(invalid(TraceError::Catalog(format!(
            "--codec {codec} needs a catalog.json; a movie description has one ladder"
        ))));
    }
    Movie::from_json(&text).map_err(invalid)
}

/// The codec whose ladder to play: `wanted`, else H.264, else the only one
/// there is; `None` when no video rendition names a known codec (the ladder is then taken whole).
fn choose_codec(catalog: &Catalog, wanted: Option<Codec>) -> Result<Option<Codec>, String> {
    let mut present: Vec<Codec> =
        catalog.renditions.iter().filter(|r| r.kind == MediaKind::Video).filter_map(|r| Codec::of(&r.codecs)).collect();
    present.sort();
    present.dedup();
    let names = || present.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(c) if present.contains(&c) => Ok(Some(c)),
        Some(c) => Err(format!("no {c} video renditions (the catalog has: {})", names())),
        None if present.contains(&Codec::H264) => Ok(Some(Codec::H264)),
        None if present.len() <= 1 => Ok(present.first().copied()),
        None => Err(format!("no h264 video renditions; pick one of {} with --codec", names())),
    }
}

/// Whether a directory entry looks like a trace (so READMEs and the like are skipped).
fn is_trace_file(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    let known = match p.extension().and_then(|e| e.to_str()) {
        None => true,
        Some(e) => matches!(e, "json" | "mahi" | "mahimahi" | "up" | "down" | "log" | "txt"),
    };
    !hidden && known && p.is_file()
}

/// A trace file, or every trace file in a directory (see `is_trace_file`) sorted by file name; each named by its file name.
pub fn load_traces(path: &Path) -> Result<Vec<(String, NetworkTrace)>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
    let files = if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
            let p = entry.path();
            if is_trace_file(&p) {
                files.push(p);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        if files.is_empty() {
            return Err(LoadError::NoTraces { path: path.to_owned() });
        }
        files
    } else {
        vec![path.to_owned()]
    };
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
            load_trace(&p).map(|t| (name, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_extension_then_content() {
        let p = Path::new;
        assert_eq!(detect_format(p("a.json"), "0 1"), TraceFormat::Json);
        assert_eq!(detect_format(p("a.down"), "0 1"), TraceFormat::Mahimahi);
        assert_eq!(detect_format(p("trace"), "\n  [{\"duration_ms\": 1}]"), TraceFormat::Json);
        assert_eq!(detect_format(p("trace.log"), "12\n13\n"), TraceFormat::Mahimahi);
        assert_eq!(detect_format(p("norway_bus_1"), "0.0 1.2\n"), TraceFormat::Pensieve);
    }

    #[test]
    fn a_folder_runs_every_format_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.json"), r#"[{"duration_ms": 1000, "bandwidth_kbps": 500, "latency_ms": 20}]"#)
            .unwrap();
        std::fs::write(d.join("b.down"), "0\n5\n1200\n").unwrap();
        std::fs::write(d.join("c_pensieve"), "0 1.0\n1 2.0\n").unwrap();
        std::fs::write(d.join("README.md"), "not a trace").unwrap();
        std::fs::write(d.join(".hidden"), "junk").unwrap();
        let traces = load_traces(d).unwrap();
        let names: Vec<&str> = traces.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.json", "b.down", "c_pensieve"]);
        assert_eq!(traces[1].1.periods()[0].bandwidth_kbps, 24.0);
        assert_eq!(traces[2].1.periods()[1].bandwidth_kbps, 2000.0);
    }

    #[test]
    fn a_catalog_json_is_a_movie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let rendition = |id: &str, bps: u64, bytes: [u64; 2]| {
            format!(
                r#"{{"id": "{id}", "kind": "video", "codecs": "avc1", "bandwidth_bps": {bps}, "average_bandwidth_bps": {bps},
                "width": 640, "height": 360, "frame_rate": 25.0, "sample_rate": null, "channels": null, "timescale": 1000,
                "init_bytes": 800, "segments": [{{"start": 0, "duration": 4000, "bytes": {}}}, {{"start": 4000, "duration": 4000, "bytes": {}}}]}}"#,
                bytes[0], bytes[1]
            )
        };
        let json = format!(
            r#"{{"title": "t1", "segment_duration_ms": 4000, "duration_ms": 8000, "renditions": [{}, {}]}}"#,
            rendition("v2", 2_000_000, [900_000, 1_100_000]),
            rendition("v1", 500_000, [200_000, 260_000])
        );
        std::fs::write(&path, json).unwrap();
        let movie = load_movie(&path).unwrap();
        assert_eq!(movie.bitrates_kbps, vec![500.0, 2000.0]);
        assert_eq!(movie.segment_sizes_bits[1], vec![2_080_000, 8_800_000]);
        std::fs::write(&path, r#"{"title": "t1", "renditions": []}"#).unwrap();
        let msg = load_movie(&path).unwrap_err().to_string();
        assert!(msg.contains("catalog.json"), "{msg}");
    }

    #[test]
    fn a_multi_codec_catalog_plays_one_codecs_ladder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let rendition = |id: &str, codecs: &str, bps: u64| {
            format!(
                r#"{{"id": "{id}", "kind": "video", "codecs": "{codecs}", "bandwidth_bps": {bps}, "average_bandwidth_bps": {bps},
                "timescale": 1000, "init_bytes": 800, "segments": [{{"start": 0, "duration": 4000, "bytes": {}}}]}}"#,
                bps / 2
            )
        };
        let catalog = |renditions: &[String]| {
            format!(
                r#"{{"title": "t1", "segment_duration_ms": 4000, "duration_ms": 4000, "renditions": [{}]}}"#,
                renditions.join(",")
            )
        };
        let all = [
            rendition("h1", "avc1.64001f", 1_000_000),
            rendition("h2", "avc1.640028", 3_000_000),
            rendition("x1", "hvc1.1.6.L93.B0", 600_000),
            rendition("x2", "hvc1.1.6.L120.B0", 1_800_000),
            rendition("a1", "av01.0.08M.08", 1_500_000),
        ];
        std::fs::write(&path, catalog(&all)).unwrap();
        let kbps = |codec| load_movie_for_codec(&path, codec).unwrap().bitrates_kbps;
        assert_eq!(kbps(None), vec![1000.0, 3000.0], "H.264 by default");
        assert_eq!(kbps(Some(Codec::H264)), vec![1000.0, 3000.0]);
        assert_eq!(kbps(Some(Codec::Hevc)), vec![600.0, 1800.0]);
        assert_eq!(kbps(Some(Codec::Av1)), vec![1500.0]);
        let msg = load_movie_for_codec(&path, Some(Codec::Vp9)).unwrap_err().to_string();
        assert!(msg.contains("no vp9") && msg.contains("h264, hevc, av1"), "{msg}");
        // Without H.264: the only codec there is, or a clear request to pick one.
        std::fs::write(&path, catalog(&all[2..4])).unwrap();
        assert_eq!(kbps(None), vec![600.0, 1800.0]);
        std::fs::write(&path, catalog(&all[2..])).unwrap();
        let msg = load_movie(&path).unwrap_err().to_string();
        assert!(msg.contains("--codec") && msg.contains("hevc, av1"), "{msg}");
        assert_eq!("hevc".parse::<Codec>().unwrap(), Codec::Hevc);
        assert!("h265".parse::<Codec>().unwrap_err().contains("known"));
    }

    #[test]
    fn malformed_trace_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad_pensieve");
        std::fs::write(&path, "0 1\n1 2\n2 lots\n").unwrap();
        let msg = load_trace(&path).unwrap_err().to_string();
        assert!(msg.contains("bad_pensieve") && msg.contains("line 3, field mbit_per_s"), "{msg}");
    }
}
