//! Encoder errors, each saying what the operator can do about it.

use std::path::PathBuf;

/// Why an encode or publish failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("input {0} does not exist")]
    InputMissing(PathBuf),
    #[error("input {path} is not a readable media file: {reason}")]
    NotMedia { path: PathBuf, reason: String },
    #[error("input {0} has no video stream")]
    NoVideo(PathBuf),
    #[error("title {0} is already published; republishing to a new version is not supported yet")]
    AlreadyPublished(String),
    #[error("ffmpeg failed while {stage}: {source}")]
    Ffmpeg {
        stage: String,
        #[source]
        source: ffmpeg_next::Error,
    },
    #[error("required encoder {0} is not available in this ffmpeg build")]
    MissingCodec(&'static str),
    #[error("packaging {rendition}: {reason}")]
    Packaging { rendition: String, reason: String },
    #[error("input {path} is truncated: {decoded_s:.1}s of video decode out of the {declared_s:.1}s it declares")]
    Truncated { path: PathBuf, decoded_s: f64, declared_s: f64 },
    #[error("encode produced no frames from {0}")]
    Empty(PathBuf),
    #[error("work directory I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("publishing: {0}")]
    Store(#[from] origin::StoreError),
    #[error("an encoding thread failed: {0}")]
    Worker(String),
    #[error("ladder {origin}: {reason}")]
    BadLadder { origin: String, reason: String },
    #[error("job spec: {0}")]
    BadSpec(String),
    #[error("task {task}: {reason}")]
    Task { task: String, reason: String },
}

/// Wraps an ffmpeg error with the stage it happened in.
pub fn ff(stage: impl Into<String>) -> impl FnOnce(ffmpeg_next::Error) -> EncodeError {
    let stage = stage.into();
    move |source| EncodeError::Ffmpeg { stage, source }
}
