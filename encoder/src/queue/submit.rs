//! Turning a submission (CLI flags or the API's JSON body) into a job row:
//! validate everything, hash the input, derive the job id.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use vod::TitleId;

use super::input::S3Input;
use super::{NewJob, QueueError};
use crate::job::{JobSpec, LadderSpec, VideoCodec};

/// Attempts per task before a job fails, unless the submission says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;

/// A submission, as `POST /v1/jobs` takes it and `encoder submit` builds it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A source file readable by every worker at this path (made absolute).
    pub input: String,
    /// Title id: `[a-z0-9][a-z0-9_-]{0,63}`.
    pub title: String,
    /// `default` or the path of a TOML ladder file (read at submission).
    #[serde(default)]
    pub ladder: Option<String>,
    /// Video codecs; H.264 is always included.
    #[serde(default)]
    pub codecs: Option<Vec<String>>,
    /// Segment duration in seconds (default 4).
    #[serde(default)]
    pub segment_seconds: Option<f64>,
    /// x264 preset (default `veryfast`).
    #[serde(default)]
    pub preset: Option<String>,
    /// Segments per video chunk (default: about 8 s of video).
    #[serde(default)]
    pub chunk_segments: Option<u32>,
    /// Where to publish: a directory or `s3://bucket/prefix`; default: the worker's `--store`.
    #[serde(default)]
    pub store: Option<String>,
    /// Attempts per task before the job fails (default 3).
    #[serde(default)]
    pub max_attempts: Option<i64>,
}

fn bad(msg: impl Into<String>) -> QueueError {
    QueueError::BadRequest(msg.into())
}

impl SubmitRequest {
    /// Validates the submission and identifies its input: the sha256 of a
    /// local file's bytes (read on a blocking thread), or an S3 object's ETag and size.
    pub async fn prepare(&self) -> Result<NewJob, QueueError> {
        let title = TitleId::new(self.title.clone()).map_err(|e| bad(format!("title: {e}")))?;
        let mut spec = JobSpec::new(title.clone());
        match self.ladder.as_deref() {
            None | Some("default") => {}
            Some(file) => spec.ladder = LadderSpec::from_toml_file(Path::new(file)).map_err(|e| bad(e.to_string()))?,
        }
        if let Some(codecs) = &self.codecs {
            spec.codecs = VideoCodec::parse_list(&codecs.join(",")).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(s) = self.segment_seconds {
            if !(0.5..=60.0).contains(&s) {
                return Err(bad(format!("segment_seconds must be between 0.5 and 60, got {s}")));
            }
            spec.segment_ms = (s * 1000.0).round() as u64;
        }
        if let Some(p) = &self.preset {
            spec.preset = p.clone();
        }
        spec.chunk_segments = self.chunk_segments;
        spec.validate().map_err(|e| bad(e.to_string()))?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=100).contains(&max_attempts) {
            return Err(bad(format!("max_attempts must be between 1 and 100, got {max_attempts}")));
        }
        let store = match self.store.as_deref() {
            None => None,
            Some(s) => Some(match origin::StoreLocation::parse(s).map_err(|e| bad(format!("store: {e}")))? {
                origin::StoreLocation::Local(dir) => absolute(&dir)?.display().to_string(),
                s3 => s3.to_string(),
            }),
        };
        let (input, input_hash) = match S3Input::parse(&self.input).map_err(bad)? {
            Some(s3) => {
                let identity = s3.identity().await.map_err(bad)?;
                (s3.to_string(), identity)
            }
            None => {
                let input = self.input.clone();
                tokio::task::spawn_blocking(move || hash_input(&input))
                    .await
                    .map_err(|e| bad(format!("hashing the input: {e}")))??
            }
        };
        let spec_json = serde_json::to_string(&spec).map_err(|e| bad(format!("spec: {e}")))?;
        let id = job_id(&input_hash, title.as_str(), &spec_json, store.as_deref());
        Ok(NewJob { id, title: title.to_string(), input, input_hash, spec: spec_json, store, max_attempts })
    }
}

/// The job id of a submission: the same input bytes, title, spec and store
/// always give the same id.
pub fn job_id(input_hash: &str, title: &str, spec_json: &str, store: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [input_hash, title, spec_json, store.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("j{}", &hex(&h.finalize())[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn absolute(path: &Path) -> Result<PathBuf, QueueError> {
    std::path::absolute(path).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// (input as stored, `sha256:HEX` of its bytes).
fn hash_input(input: &str) -> Result<(String, String), QueueError> {
    if input.is_empty() {
        return Err(bad("input is empty"));
    }
    if input.contains("://") {
        return Err(bad(format!(
            "input {input}: expected a local file (a path every worker can read) or s3://bucket/key"
        )));
    }
    let path = absolute(Path::new(input))?;
    let mut file = std::fs::File::open(&path).map_err(|e| bad(format!("input {}: {e}", path.display())))?;
    if !file.metadata().map_err(|e| bad(format!("input {}: {e}", path.display())))?.is_file() {
        return Err(bad(format!("input {} is not a file", path.display())));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| bad(format!("reading input {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((path.display().to_string(), format!("sha256:{}", hex(&h.finalize()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(input: &Path) -> SubmitRequest {
        SubmitRequest { input: input.display().to_string(), title: "t1".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn same_submission_same_id_other_bytes_other_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mp4");
        std::fs::write(&a, b"one").unwrap();
        let j1 = req(&a).prepare().await.unwrap();
        let j2 = req(&a).prepare().await.unwrap();
        assert_eq!(j1.id, j2.id);
        assert!(j1.input_hash.starts_with("sha256:"));
        std::fs::write(&a, b"two").unwrap();
        assert_ne!(req(&a).prepare().await.unwrap().id, j1.id);
        let mut hevc = req(&a);
        hevc.codecs = Some(vec!["hevc".into()]);
        assert_ne!(hevc.prepare().await.unwrap().id, req(&a).prepare().await.unwrap().id);
    }

    #[tokio::test]
    async fn bad_submissions_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mp4");
        std::fs::write(&a, b"x").unwrap();
        let cases = [
            (SubmitRequest { title: "Bad Title".into(), ..req(&a) }, "title"),
            (req(&dir.path().join("missing.mp4")), "missing.mp4"),
            (SubmitRequest { codecs: Some(vec!["vp9".into()]), ..req(&a) }, "vp9"),
            (SubmitRequest { segment_seconds: Some(0.1), ..req(&a) }, "segment_seconds"),
            (SubmitRequest { preset: Some("warp".into()), ..req(&a) }, "warp"),
            (SubmitRequest { ladder: Some("/nonexistent.toml".into()), ..req(&a) }, "nonexistent"),
            (SubmitRequest { max_attempts: Some(0), ..req(&a) }, "max_attempts"),
            (SubmitRequest { input: "http://x/y.mp4".into(), ..req(&a) }, "s3://bucket/key"),
            (SubmitRequest { input: "s3://bucket-only".into(), ..req(&a) }, "s3://bucket/key"),
        ];
        for (r, needle) in cases {
            let e = r.prepare().await.unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }
}
