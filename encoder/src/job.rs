//! An encode job as units of work a fleet can share: the job's spec, its
//! tasks (video chunks of whole segments, and the audio), running one task
//! into a staging directory, and joining every task's output into a title.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use origin::PublishTarget;
use serde::{Deserialize, Serialize};
use vod::{Catalog, TitleId};

use crate::error::EncodeError;

/// A codec of the ladder's video renditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
}

impl VideoCodec {
    /// Every codec, in the order renditions are listed.
    pub const ALL: [VideoCodec; 3] = [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1];

    /// The name used in flags, specs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
            VideoCodec::Av1 => "av1",
        }
    }

    /// Appended to a rung's rendition id (`v720`, `v720-hevc`, `v720-av1`).
    pub fn rendition_suffix(self) -> &'static str {
        match self {
            VideoCodec::H264 => "",
            VideoCodec::Hevc => "-hevc",
            VideoCodec::Av1 => "-av1",
        }
    }

    /// Parses a comma-separated list such as `h264,hevc,av1`; H.264 is always
    /// included (first), duplicates are dropped.
    pub fn parse_list(text: &str) -> Result<Vec<VideoCodec>, EncodeError> {
        let mut out = vec![VideoCodec::H264];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c: VideoCodec = part.parse()?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VideoCodec {
    type Err = EncodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "h264" | "avc" | "x264" => Ok(VideoCodec::H264),
            "hevc" | "h265" | "x265" => Ok(VideoCodec::Hevc),
            "av1" => Ok(VideoCodec::Av1),
            other => Err(EncodeError::BadSpec(format!("unknown codec {other:?}; expected h264, hevc or av1"))),
        }
    }
}

/// One rung as configured, before planning against the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungSpec {
    /// Picture height in pixels; the width follows the source's display aspect.
    pub height: u32,
    /// Target average bitrate in kbit/s (the H.264 figure; other codecs scale it).
    pub kbps: u64,
}

/// The ladder as configured: rungs highest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LadderSpec {
    pub rungs: Vec<RungSpec>,
}

/// A ladder file: `[[rung]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LadderFile {
    #[serde(default)]
    rung: Vec<RungSpec>,
}

impl LadderSpec {
    /// The default ladder: six rungs from 1080p down to 144p.
    pub fn default_ladder() -> Self {
        Self { rungs: vod::ladder::DEFAULT_LADDER.iter().map(|&(height, kbps)| RungSpec { height, kbps }).collect() }
    }

    /// Reads a TOML ladder file of `[[rung]]` tables with `height` and `kbps`.
    pub fn from_toml_file(path: &Path) -> Result<Self, EncodeError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| EncodeError::BadLadder { origin: origin.clone(), reason: e.to_string() })?;
        Self::from_toml_str(&text, &origin)
    }

    /// Parses ladder TOML; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, EncodeError> {
        let bad = |reason: String| EncodeError::BadLadder { origin: origin.to_owned(), reason };
        let file: LadderFile = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
        let mut ladder = Self { rungs: file.rung };
        ladder.rungs.sort_by_key(|r| std::cmp::Reverse(r.height));
        ladder.validate().map_err(|e| match e {
            EncodeError::BadLadder { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(ladder)
    }

    /// Checks every rung is encodable.
    pub fn validate(&self) -> Result<(), EncodeError> {
        let bad = |reason: String| EncodeError::BadLadder { origin: "ladder".into(), reason };
        if self.rungs.is_empty() {
            return Err(bad("no rungs; add at least one [[rung]] with height and kbps".into()));
        }
        for (i, r) in self.rungs.iter().enumerate() {
            if !(16..=4320).contains(&r.height) {
                return Err(bad(format!("rung {} (height {}): height must be between 16 and 4320", i + 1, r.height)));
            }
            if !(50..=100_000).contains(&r.kbps) {
                return Err(bad(format!("rung {} (height {}): kbps must be between 50 and 100000", i + 1, r.height)));
            }
        }
        for w in self.rungs.windows(2) {
            if w[0].height == w[1].height {
                return Err(bad(format!("two rungs have height {}", w[0].height)));
            }
        }
        Ok(())
    }

    /// As `(height, kbps)` pairs, highest first, for `vod::ladder::plan_ladder`.
    pub fn pairs(&self) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self.rungs.iter().map(|r| (r.height, r.kbps)).collect();
        v.sort_by_key(|&(h, _)| std::cmp::Reverse(h));
        v
    }
}

/// Everything that defines a job's output; stored as JSON in the queue.
/// The same spec and the same input hash make the same job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub title: TitleId,
    pub ladder: LadderSpec,
    /// Video codecs; H.264 first and always present.
    pub codecs: Vec<VideoCodec>,
    /// Nominal segment duration.
    pub segment_ms: u64,
    /// x264 preset (other codecs use their matching speed).
    pub preset: String,
    /// Segments per video chunk; `None` picks about 8 s of video per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_segments: Option<u32>,
}

impl JobSpec {
    /// A job with the default ladder, H.264 only, 4 s segments and x264 `veryfast`.
    pub fn new(title: TitleId) -> Self {
        Self {
            title,
            ladder: LadderSpec::default_ladder(),
            codecs: vec![VideoCodec::H264],
            segment_ms: 4000,
            preset: "veryfast".into(),
            chunk_segments: None,
        }
    }

    /// Checks the spec before any work is done.
    pub fn validate(&self) -> Result<(), EncodeError> {
        self.ladder.validate()?;
        if !(500..=60_000).contains(&self.segment_ms) {
            return Err(EncodeError::BadSpec(format!(
                "segment duration must be between 500 and 60000 ms, got {}",
                self.segment_ms
            )));
        }
        if self.codecs.first() != Some(&VideoCodec::H264) {
            return Err(EncodeError::BadSpec("codecs must start with h264".into()));
        }
        if self.codecs.iter().enumerate().any(|(i, c)| self.codecs[..i].contains(c)) {
            return Err(EncodeError::BadSpec(format!("codecs listed twice: {:?}", self.codecs)));
        }
        if self.chunk_segments == Some(0) {
            return Err(EncodeError::BadSpec("chunk_segments must be at least 1".into()));
        }
        const PRESETS: &[&str] = &[
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
            "placebo",
        ];
        if !PRESETS.contains(&self.preset.as_str()) {
            return Err(EncodeError::BadSpec(format!("unknown preset {:?}; expected one of {PRESETS:?}", self.preset)));
        }
        Ok(())
    }

    /// Segments per chunk.
    pub fn segments_per_chunk(&self) -> u32 {
        self.chunk_segments.unwrap_or_else(|| ((8000.0 / self.segment_ms.max(1) as f64).round() as u32).max(1))
    }
}

/// One unit of work any worker can take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskSpec {
    /// Video segments `first_segment..first_segment + segments` (numbered from 1,
    /// as published) of every rung and codec. The plan covers every frame the
    /// source holds (found by demuxing it), so the last chunk ends with the stream.
    Video { chunk: u32, first_segment: u32, segments: u32 },
    /// The whole audio rendition.
    Audio,
}

impl TaskSpec {
    /// A short name for status output and the staging directory: `video-003`, `audio`.
    pub fn name(&self) -> String {
        match self {
            TaskSpec::Video { chunk, .. } => format!("video-{chunk:03}"),
            TaskSpec::Audio => "audio".into(),
        }
    }
}

/// Probes the source and splits the job into tasks: video chunks of whole
/// segments plus one audio task when there is audio.
pub fn plan_tasks(input: &Path, spec: &JobSpec) -> Result<Vec<TaskSpec>, EncodeError> {
    spec.validate()?;
    crate::chunk::plan(input, spec)
}

/// Runs one task and writes its output under `staging/{task.name()}`,
/// atomically: a killed worker leaves nothing that looks finished.
/// `threads`: encoder threads per rendition (None = codec default); `Some(1)`
/// also encodes the renditions one after another on the decoding thread, so a
/// task uses one core. `staging` is the job's own directory, shared by its workers.
pub fn run_task(
    input: &Path,
    spec: &JobSpec,
    task: &TaskSpec,
    staging: &Path,
    threads: Option<usize>,
    progress: &mut dyn FnMut(f64),
) -> Result<(), EncodeError> {
    spec.validate()?;
    crate::chunk::run(input, spec, task, staging, threads, progress)
}

/// Joins every task's output into whole renditions, writes manifests, and
/// publishes to `target`, `catalog.json` last. Refuses if the title is published.
pub fn finalize(
    input: &Path,
    spec: &JobSpec,
    tasks: &[TaskSpec],
    staging: &Path,
    target: &dyn PublishTarget,
) -> Result<Catalog, EncodeError> {
    spec.validate()?;
    crate::publish::finalize(input, spec, tasks, staging, target)
}

/// Removes what a failed or cancelled job published under its title. A title
/// whose catalog exists is published and left alone.
pub fn clean_partial(title: &TitleId, target: &dyn PublishTarget) -> Result<(), EncodeError> {
    crate::publish::clean_partial(title, target)
}

/// Runs a whole job in this process: plan, every task in turn, finalize.
/// `staging` is the job's own scratch directory.
pub fn run_job(
    input: &Path,
    spec: &JobSpec,
    staging: &Path,
    target: &dyn PublishTarget,
    threads: Option<usize>,
    progress: &mut dyn FnMut(&TaskSpec, f64),
) -> Result<Catalog, EncodeError> {
    if target.exists_blocking(&vod::ObjectKey::Catalog(spec.title.clone()))? {
        return Err(EncodeError::AlreadyPublished(spec.title.to_string()));
    }
    let tasks = plan_tasks(input, spec)?;
    for t in &tasks {
        run_task(input, spec, t, staging, threads, &mut |f| progress(t, f))?;
    }
    finalize(input, spec, &tasks, staging, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_parse_with_h264_first() {
        assert_eq!(
            VideoCodec::parse_list("hevc,av1").unwrap(),
            vec![VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1]
        );
        assert_eq!(VideoCodec::parse_list("h264").unwrap(), vec![VideoCodec::H264]);
        assert!(VideoCodec::parse_list("h264,vp9").unwrap_err().to_string().contains("vp9"));
        assert_eq!("AV1".parse::<VideoCodec>().unwrap().to_string(), "av1");
        assert_eq!(serde_json::to_string(&VideoCodec::Hevc).unwrap(), "\"hevc\"");
    }

    #[test]
    fn ladder_files_parse_and_name_what_is_wrong() {
        let l = LadderSpec::from_toml_str(
            "[[rung]]\nheight = 720\nkbps = 3000\n[[rung]]\nheight = 1080\nkbps = 5000\n",
            "t",
        )
        .unwrap();
        assert_eq!(l.pairs(), vec![(1080, 5000), (720, 3000)]);
        let e = LadderSpec::from_toml_str("[[rung]]\nheight = 720\nkbs = 3000\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("f.toml") && e.contains("kbs") && e.contains("line 3"), "{e}");
        let e = LadderSpec::from_toml_str("[[rung]]\nheight = \"big\"\nkbps = 1\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = LadderSpec::from_toml_str("[[rung]]\nheight = 8\nkbps = 300\n", "f").unwrap_err().to_string();
        assert!(e.contains("height 8"), "{e}");
        assert!(LadderSpec::from_toml_str("", "f").unwrap_err().to_string().contains("no rungs"));
        assert_eq!(LadderSpec::default_ladder().rungs.len(), 6);
    }

    #[test]
    fn specs_round_trip_and_validate() {
        let spec = JobSpec::new(TitleId::new("t").unwrap());
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
        assert_eq!(spec.segments_per_chunk(), 2);
        let mut bad = spec.clone();
        bad.preset = "warp".into();
        assert!(bad.validate().is_err());
        let mut twice = spec.clone();
        twice.codecs = vec![VideoCodec::H264, VideoCodec::Av1, VideoCodec::Av1];
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let mut no_h264 = spec.clone();
        no_h264.codecs = vec![VideoCodec::Hevc];
        assert!(no_h264.validate().is_err());
        let t = TaskSpec::Video { chunk: 3, first_segment: 7, segments: 2 };
        assert_eq!(t.name(), "video-003");
        assert_eq!(serde_json::to_string(&TaskSpec::Audio).unwrap(), r#"{"kind":"audio"}"#);
        assert_eq!(serde_json::from_str::<TaskSpec>(&serde_json::to_string(&t).unwrap()).unwrap(), t);
    }
}
