//! Joining a job's task outputs into a title and publishing it, catalog last;
//! and cleaning up after a job that failed.

use std::path::Path;

use bytes::Bytes;
use origin::PublishTarget;
use vod::{Catalog, ObjectKey, TitleId};

use crate::chunk::{renditions, task_dir, ChunkMeta, VideoSource};
use crate::error::EncodeError;
use crate::job::{JobSpec, TaskSpec};
use crate::package::{package_parts, PartStart, VideoParts};

pub(crate) fn finalize(
    input: &Path,
    spec: &JobSpec,
    tasks: &[TaskSpec],
    staging: &Path,
    target: &dyn PublishTarget,
) -> Result<Catalog, EncodeError> {
    let catalog_key = ObjectKey::Catalog(spec.title.clone());
    if target.exists_blocking(&catalog_key)? {
        return Err(EncodeError::AlreadyPublished(spec.title.to_string()));
    }
    let (src, _) = VideoSource::open(input)?;
    let mut chunks: Vec<&TaskSpec> = tasks.iter().filter(|t| matches!(t, TaskSpec::Video { .. })).collect();
    chunks.sort_by_key(|t| match t {
        TaskSpec::Video { first_segment, .. } => *first_segment,
        TaskSpec::Audio => u32::MAX,
    });
    if chunks.is_empty() {
        return Err(EncodeError::BadSpec("a job needs at least one video task".into()));
    }
    // Chunks must tile the segments with no gap or overlap.
    let mut next = 1u32;
    for t in &chunks {
        if let TaskSpec::Video { first_segment, segments, .. } = t {
            if *first_segment != next {
                return Err(EncodeError::Task {
                    task: t.name(),
                    reason: format!(
                        "starts at segment {first_segment}, expected {next}: chunks leave a gap or overlap"
                    ),
                });
            }
            next = first_segment.saturating_add(*segments);
        }
    }
    let missing = |t: &TaskSpec| EncodeError::Task {
        task: t.name(),
        reason: format!("no finished output under {}; the task has not run", task_dir(staging, t).display()),
    };
    let mut frames = 0u64;
    let mut last_pts: Option<i64> = None;
    let mut starts = Vec::new();
    for t in &chunks {
        let dir = task_dir(staging, t);
        let text = std::fs::read(dir.join("chunk.json")).map_err(|_| missing(t))?;
        let meta: ChunkMeta = serde_json::from_slice(&text)
            .map_err(|e| EncodeError::Task { task: t.name(), reason: format!("unreadable chunk.json: {e}") })?;
        if let (Some(prev), Some(first)) = (last_pts, meta.first_pts) {
            if first <= prev {
                return Err(EncodeError::Task {
                    task: t.name(),
                    reason: format!("its first frame (pts {first}) does not follow the previous chunk's last ({prev})"),
                });
            }
        }
        last_pts = meta.last_pts.or(last_pts);
        let tb = src.time_base;
        starts.push(meta.first_pts.map(|pts| PartStart {
            pts,
            num: i64::from(tb.numerator()),
            den: i64::from(tb.denominator()),
        }));
        frames += meta.frames;
    }
    tracing::debug!(frames, chunks = chunks.len(), "joining chunks");
    let video: Vec<VideoParts> = renditions(spec, &src.geometry)?
        .into_iter()
        .map(|r| VideoParts {
            parts: chunks
                .iter()
                .zip(&starts)
                .map(|(t, s)| (task_dir(staging, t).join(format!("{}.mp4", r.rung.id)), *s))
                .collect(),
            rung: r.rung,
            fps: src.fps,
        })
        .collect();
    for v in &video {
        if let Some((i, _)) = v.parts.iter().enumerate().find(|(_, (p, _))| !p.is_file()) {
            return Err(missing(chunks[i]));
        }
    }
    let audio_task = tasks.iter().find(|t| matches!(t, TaskSpec::Audio));
    let audio = match audio_task {
        Some(t) => {
            let p = task_dir(staging, t).join("audio.mp4");
            if !p.is_file() {
                return Err(missing(t));
            }
            Some(p)
        }
        None => None,
    };
    let pkg = package_parts(&spec.title, &video, audio.as_deref(), spec.segment_ms)?;
    for (key, body) in &pkg.objects {
        target.put_blocking(key, body)?;
    }
    let json = serde_json::to_vec_pretty(&pkg.catalog).map_err(|e| EncodeError::Io(e.into()))?;
    target.put_blocking(&catalog_key, &Bytes::from(json))?;
    Ok(pkg.catalog)
}

/// Removes a job's partial objects unless the title's catalog exists.
pub(crate) fn clean_partial(title: &TitleId, target: &dyn PublishTarget) -> Result<(), EncodeError> {
    if target.exists_blocking(&ObjectKey::Catalog(title.clone()))? {
        return Ok(());
    }
    target.delete_prefix_blocking(&format!("titles/{title}/"))?;
    Ok(())
}
