//! The encoder: turns a source file into a CMAF ABR ladder with HLS and DASH
//! manifests and publishes it to an object store, catalog last.

pub mod api;
pub mod audio;
mod chunk;
pub mod error;
pub mod fmp4;
pub mod job;
pub mod mux;
pub mod package;
mod publish;
pub mod queue;
pub mod transcode;
pub mod video;
pub mod video_filter;
pub mod worker;

use std::path::Path;

use origin::PublishTarget;
use vod::{Catalog, TitleId};

pub use error::EncodeError;
pub use job::{
    clean_partial, finalize, plan_tasks, run_job, run_task, JobSpec, LadderSpec, RungSpec, TaskSpec, VideoCodec,
};
pub use transcode::EncodeSettings;

/// Encodes `input` as `title` and publishes it to `store`: every segment,
/// init segment and manifest first, `catalog.json` last, so a reader that
/// sees the catalog sees a whole title. Nothing is written if the encode fails.
/// `store` is any publish target: a `LocalStore`, or a `BlockingStore` over S3.
pub fn encode_and_publish(
    input: &Path,
    title: &TitleId,
    store: &dyn PublishTarget,
    settings: &EncodeSettings,
) -> Result<Catalog, EncodeError> {
    let mut spec = JobSpec::new(title.clone());
    spec.segment_ms = settings.segment_ms;
    spec.preset = settings.preset.clone();
    // One process: one chunk, decoded once, every rung encoded in parallel.
    spec.chunk_segments = Some(u32::MAX);
    let work = tempfile::Builder::new().prefix("encode-").tempdir()?;
    let show = settings.progress;
    let mut last = None;
    let cat = run_job(input, &spec, work.path(), store, None, &mut |t, f| {
        if show && last != Some((t.name(), (f * 100.0) as u32)) {
            last = Some((t.name(), (f * 100.0) as u32));
            eprint!("\rencoding {}: {:.0}%   ", t.name(), f * 100.0);
        }
    });
    if show {
        eprintln!();
    }
    cat
}
