//! Planning and running the tasks of a job. A video chunk is a run of whole
//! segments: its task seeks the source to a keyframe before the chunk, decodes
//! once, drops frames before the chunk, scales every frame to every rung and
//! codec, and stops at the chunk's end. Which segment a frame belongs to is one
//! rule everywhere (`segment_index`), so every frame lands in exactly one chunk.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use ffmpeg_next::{format, frame, media, Rational};
use serde::{Deserialize, Serialize};
use vod::ladder::{plan_ladder, PlannedRung};
use vod::RenditionId;

use crate::audio::AudioTrack;
use crate::error::{ff, EncodeError};
use crate::job::{JobSpec, TaskSpec, VideoCodec};
use crate::transcode::open_input;
use crate::video::{encode_rung, FrameMsg, RungEncoder, RungInput, RungSettings, SharedFrame};
use crate::video_filter::{display_geometry, rotation_of, DisplayGeometry, SourceFilter};

/// What the tasks of a job need to know about the source's video.
#[derive(Debug, Clone)]
pub(crate) struct VideoSource {
    pub index: usize,
    pub time_base: Rational,
    pub frame_rate: Rational,
    pub fps: f64,
    /// Stream start in `time_base`; timestamps are re-based on it.
    pub start: i64,
    pub rotation: i32,
    pub geometry: DisplayGeometry,
    pub has_audio: bool,
    /// Container duration, 0 when unknown.
    pub declared_s: f64,
}

impl VideoSource {
    /// Opens `input` and reads its video stream's parameters.
    pub fn open(input: &Path) -> Result<(Self, format::context::Input), EncodeError> {
        let ictx = open_input(input)?;
        let vst = ictx.streams().best(media::Type::Video).ok_or_else(|| EncodeError::NoVideo(input.to_owned()))?;
        let mut rate = vst.avg_frame_rate();
        if rate.numerator() <= 0 || rate.denominator() <= 0 {
            rate = vst.rate();
        }
        if rate.numerator() <= 0 || rate.denominator() <= 0 {
            rate = Rational(25, 1);
        }
        let start = if vst.start_time() == ffmpeg_next::ffi::AV_NOPTS_VALUE { 0 } else { vst.start_time() };
        let dec = ffmpeg_next::codec::context::Context::from_parameters(vst.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(ff("opening the video decoder"))?;
        let rotation = rotation_of(&vst);
        let sar = dec.aspect_ratio();
        if dec.width() == 0 || dec.height() == 0 {
            return Err(EncodeError::NotMedia { path: input.to_owned(), reason: "video stream has no size".into() });
        }
        let geometry = display_geometry(dec.width(), dec.height(), (sar.numerator(), sar.denominator()), rotation);
        let src = Self {
            index: vst.index(),
            time_base: vst.time_base(),
            frame_rate: rate,
            fps: f64::from(rate),
            start,
            rotation,
            geometry,
            has_audio: ictx.streams().best(media::Type::Audio).is_some(),
            declared_s: if ictx.duration() > 0 { ictx.duration() as f64 / 1e6 } else { 0.0 },
        };
        Ok((src, ictx))
    }

    /// Half a nominal frame, in seconds: a frame this close to a boundary starts the next segment.
    fn half_frame(&self) -> f64 {
        0.5 / self.fps.max(1.0)
    }

    /// Seconds since the stream start of a re-based pts.
    fn seconds(&self, pts: i64) -> f64 {
        pts as f64 * f64::from(self.time_base)
    }
}

/// The segment (0-based) a frame at `t` seconds belongs to. The one rule that
/// cuts segments and chunks alike.
pub(crate) fn segment_index(t: f64, half_frame: f64, segment_ms: u64) -> u64 {
    let x = (t + half_frame) * 1000.0 / segment_ms as f64;
    if x <= 0.0 {
        0
    } else {
        x.floor() as u64
    }
}

/// One video rendition of the job: a rung in one codec.
#[derive(Debug, Clone)]
pub(crate) struct VideoRendition {
    pub rung: PlannedRung,
    pub codec: VideoCodec,
}

/// Kilobits per second of a rung in `codec`, from its H.264 figure.
fn codec_kbps(codec: VideoCodec, kbps: u64) -> u64 {
    match codec {
        VideoCodec::H264 => kbps,
        VideoCodec::Hevc => kbps * 7 / 10,
        VideoCodec::Av1 => kbps * 6 / 10,
    }
}

/// Every video rendition of a job, in publishing order (codec by codec, highest rung first).
pub(crate) fn renditions(spec: &JobSpec, geometry: &DisplayGeometry) -> Result<Vec<VideoRendition>, EncodeError> {
    let rungs = plan_ladder(geometry.width, geometry.height, &spec.ladder.pairs());
    let mut out = Vec::new();
    for &codec in &spec.codecs {
        for r in &rungs {
            let id = RenditionId::new(format!("{}{}", r.id, codec.rendition_suffix()))
                .map_err(|e| EncodeError::BadSpec(e.to_string()))?;
            let bitrate = vod::Bitrate::from_kbps(codec_kbps(codec, r.bitrate.kbps()));
            out.push(VideoRendition { rung: PlannedRung { id, bitrate, ..r.clone() }, codec });
        }
    }
    Ok(out)
}

/// Probes the source and cuts the job into tasks.
pub(crate) fn plan(input: &Path, spec: &JobSpec) -> Result<Vec<TaskSpec>, EncodeError> {
    let (src, mut ictx) = VideoSource::open(input)?;
    // Demux (no decode) to find the last frame: the chunk plan must cover it,
    // and a file whose frames stop early is truncated.
    let (mut last_pts, mut end_pts) = (None::<i64>, None::<i64>);
    for (stream, packet) in ictx.packets() {
        if stream.index() != src.index {
            continue;
        }
        if let Some(p) = packet.pts().or(packet.dts()) {
            let p = p - src.start;
            last_pts = Some(last_pts.map_or(p, |l| l.max(p)));
            let end = p + packet.duration().max(0);
            end_pts = Some(end_pts.map_or(end, |e| e.max(end)));
        }
    }
    let Some(last_pts) = last_pts else {
        return Err(EncodeError::Empty(input.to_owned()));
    };
    let decoded_s = src.seconds(end_pts.unwrap_or(last_pts)).max(src.seconds(last_pts) + 1.0 / src.fps.max(1.0));
    if src.declared_s > 0.0 && decoded_s + 0.5 < src.declared_s * 0.97 {
        return Err(EncodeError::Truncated { path: input.to_owned(), decoded_s, declared_s: src.declared_s });
    }
    renditions(spec, &src.geometry)?;
    let total = segment_index(src.seconds(last_pts), src.half_frame(), spec.segment_ms) + 1;
    let per = u64::from(spec.segments_per_chunk());
    let mut tasks = Vec::new();
    let mut first = 0u64;
    while first < total {
        let n = per.min(total - first);
        tasks.push(TaskSpec::Video { chunk: tasks.len() as u32, first_segment: first as u32 + 1, segments: n as u32 });
        first += n;
    }
    if src.has_audio {
        tasks.push(TaskSpec::Audio);
    }
    Ok(tasks)
}

/// What a finished video chunk says about itself (`chunk.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChunkMeta {
    pub frames: u64,
    /// Re-based pts of the first and last frame, in the source stream's time base.
    pub first_pts: Option<i64>,
    pub last_pts: Option<i64>,
    /// Re-based pts of the frame after the chunk (the next chunk's first), if any.
    #[serde(default)]
    pub next_pts: Option<i64>,
    pub renditions: Vec<String>,
}

/// Where a finished task's output lives.
pub(crate) fn task_dir(staging: &Path, task: &TaskSpec) -> PathBuf {
    staging.join(task.name())
}

/// Moves a finished temp directory into place; a previous attempt's output is replaced.
fn commit(tmp: tempfile::TempDir, done: &Path) -> Result<(), EncodeError> {
    let tmp = tmp.keep();
    if done.exists() {
        std::fs::remove_dir_all(done)?;
    }
    if let Err(e) = std::fs::rename(&tmp, done) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    Ok(())
}

pub(crate) fn run(
    input: &Path,
    spec: &JobSpec,
    task: &TaskSpec,
    staging: &Path,
    threads: Option<usize>,
    progress: &mut dyn FnMut(f64),
) -> Result<(), EncodeError> {
    // Encodes on a thread that already ran encodes come out slightly
    // different (some per-thread state of the codec libraries), so every task
    // runs on a fresh thread: the same task gives the same bytes whether it
    // runs alone in a worker process or after others in one process.
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    std::thread::scope(|scope| {
        let worker =
            std::thread::Builder::new().name(format!("task-{}", task.name())).spawn_scoped(scope, move || {
                run_here(input, spec, task, staging, threads, &mut |f| {
                    let _ = tx.send(f);
                })
            })?;
        for f in rx {
            progress(f);
        }
        worker.join().unwrap_or_else(|_| Err(EncodeError::Worker(format!("task {} panicked", task.name()))))
    })
}

fn run_here(
    input: &Path,
    spec: &JobSpec,
    task: &TaskSpec,
    staging: &Path,
    threads: Option<usize>,
    progress: &mut dyn FnMut(f64),
) -> Result<(), EncodeError> {
    std::fs::create_dir_all(staging)?;
    let tmp = tempfile::Builder::new().prefix(&format!(".{}-", task.name())).tempdir_in(staging)?;
    match *task {
        TaskSpec::Video { first_segment, segments, .. } => {
            if first_segment == 0 || segments == 0 {
                return Err(EncodeError::Task {
                    task: task.name(),
                    reason: "segments are numbered from 1 and a chunk has at least one".into(),
                });
            }
            let first = u64::from(first_segment - 1);
            let meta = encode_chunk(input, spec, tmp.path(), first..first + u64::from(segments), threads, progress)?;
            if meta.frames == 0 {
                return Err(EncodeError::Task { task: task.name(), reason: "no source frames in this chunk".into() });
            }
            let json = serde_json::to_vec_pretty(&meta).map_err(|e| EncodeError::Io(e.into()))?;
            std::fs::write(tmp.path().join("chunk.json"), json)?;
        }
        TaskSpec::Audio => encode_audio(input, spec, &tmp.path().join("audio.mp4"), progress)?,
    }
    commit(tmp, &task_dir(staging, task))?;
    progress(1.0);
    Ok(())
}

/// Seeks so that decoding starts at a keyframe before `t` seconds.
fn seek_before(ictx: &mut format::context::Input, src: &VideoSource, t: f64) -> Result<(), EncodeError> {
    let ts = src.start + (t / f64::from(src.time_base)).floor() as i64;
    // SAFETY: the context is open; seeking the video stream to the keyframe at or before `ts`.
    let ret = unsafe { ffmpeg_next::ffi::avformat_seek_file(ictx.as_mut_ptr(), src.index as i32, i64::MIN, ts, ts, 0) };
    if ret < 0 {
        return Err(EncodeError::Ffmpeg { stage: "seeking to a chunk".into(), source: ret.into() });
    }
    Ok(())
}

/// Why a decode pass ended before its chunk was done.
enum Pass {
    Done(ChunkMeta),
    /// The seek landed after the chunk start: retry from further back.
    SeekedTooLate,
}

fn encode_chunk(
    input: &Path,
    spec: &JobSpec,
    out: &Path,
    segs: std::ops::Range<u64>,
    threads: Option<usize>,
    progress: &mut dyn FnMut(f64),
) -> Result<ChunkMeta, EncodeError> {
    // Start just before the chunk: the seek lands on the keyframe at or before
    // that point, so little is decoded only to be dropped.
    let mut back: Option<f64> = None;
    loop {
        let (mut src, mut ictx) = VideoSource::open(input)?;
        let chunk_start = segs.start as f64 * spec.segment_ms as f64 / 1000.0;
        let margin = *back.get_or_insert(2.0 / src.fps.max(1.0));
        let mut from_start = chunk_start - margin <= 0.0;
        if !from_start {
            if let Err(e) = seek_before(&mut ictx, &src, chunk_start - margin) {
                tracing::warn!(error = %e, "the source does not seek; decoding this chunk from its start");
                (src, ictx) = VideoSource::open(input)?;
                from_start = true;
            }
        }
        match decode_pass(input, spec, out, &segs, threads, progress, src, ictx, from_start)? {
            Pass::Done(meta) => return Ok(meta),
            Pass::SeekedTooLate => {
                tracing::debug!(margin, "seeked past the chunk start; seeking further back");
                back = Some(margin.max(0.25) * 4.0);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_pass(
    input: &Path,
    spec: &JobSpec,
    out: &Path,
    segs: &std::ops::Range<u64>,
    threads: Option<usize>,
    progress: &mut dyn FnMut(f64),
    src: VideoSource,
    mut ictx: format::context::Input,
    from_start: bool,
) -> Result<Pass, EncodeError> {
    let vst = ictx.stream(src.index).ok_or_else(|| EncodeError::NoVideo(input.to_owned()))?;
    let mut vdec = ffmpeg_next::codec::context::Context::from_parameters(vst.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(ff("opening the video decoder"))?;
    vdec.set_packet_time_base(src.time_base);
    let mut source_filter = SourceFilter::new(&vdec, src.time_base, src.rotation)?;
    let renditions = renditions(spec, &src.geometry)?;
    let gop = ((spec.segment_ms as f64 / 1000.0) * src.fps).ceil().max(1.0) as u32;

    let settings: Vec<RungSettings> = renditions
        .iter()
        .map(|r| RungSettings {
            rung: r.rung.clone(),
            out: out.join(format!("{}.mp4", r.rung.id)),
            time_base: src.time_base,
            frame_rate: src.frame_rate,
            gop,
            preset: spec.preset.clone(),
            codec: r.codec,
            threads,
        })
        .collect();
    // One thread per task: every rendition encodes on this thread, in turn.
    let mut sink = RenditionSink::start(settings, threads == Some(1))?;

    let half_frame = src.half_frame();
    let expected = ((segs.end - segs.start) as f64 * spec.segment_ms as f64 / 1000.0 * src.fps).max(1.0);
    let mut meta = ChunkMeta {
        frames: 0,
        first_pts: None,
        last_pts: None,
        next_pts: None,
        renditions: renditions.iter().map(|r| r.rung.id.to_string()).collect(),
    };
    let mut last_pts: Option<i64> = None;
    let mut current_segment: Option<u64> = None;
    let mut seen_any = false;
    let mut seeked_too_late = false;
    let finished = std::cell::Cell::new(false);
    let mut last_report = Instant::now();
    let mut decoded = frame::Video::empty();
    let mut handle_frames = |vdec: &mut ffmpeg_next::decoder::Video,
                             eof: bool,
                             meta: &mut ChunkMeta,
                             progress: &mut dyn FnMut(f64)|
     -> Result<(), EncodeError> {
        while vdec.receive_frame(&mut decoded).is_ok() {
            source_filter.push(&decoded)?;
        }
        if eof {
            source_filter.flush()?;
        }
        loop {
            // A fresh frame each time: it is shared with every rung, not copied.
            let mut f = frame::Video::empty();
            if finished.get() || !source_filter.pull(&mut f) {
                break;
            }
            // Re-base on the stream start; keep pts strictly increasing for the encoders.
            let mut pts = f.timestamp().map_or_else(|| last_pts.map_or(0, |p| p + 1), |t| t - src.start);
            if let Some(p) = last_pts {
                if pts <= p {
                    pts = p + 1;
                }
            }
            last_pts = Some(pts);
            let seg = segment_index(src.seconds(pts), half_frame, spec.segment_ms);
            if !seen_any {
                seen_any = true;
                if seg >= segs.start && !from_start && segs.start > 0 {
                    // Frames of this chunk may precede the keyframe we landed on.
                    seeked_too_late = true;
                    finished.set(true);
                    break;
                }
            }
            if seg < segs.start {
                continue;
            }
            if seg >= segs.end {
                meta.next_pts = Some(pts);
                finished.set(true);
                break;
            }
            let starts_segment = current_segment != Some(seg);
            current_segment = Some(seg);
            f.set_pts(Some(pts));
            sink.send(Arc::new(SharedFrame(f)), starts_segment)?;
            meta.first_pts.get_or_insert(pts);
            meta.last_pts = Some(pts);
            meta.frames += 1;
            if last_report.elapsed().as_millis() >= 500 {
                last_report = Instant::now();
                progress((meta.frames as f64 / expected).min(0.99));
            }
        }
        Ok(())
    };

    let mut result: Result<(), EncodeError> = Ok(());
    for (stream, packet) in ictx.packets() {
        if stream.index() != src.index {
            continue;
        }
        if let Err(e) = vdec.send_packet(&packet) {
            tracing::warn!(error = %e, "skipping an undecodable video packet");
            continue;
        }
        if let Err(e) = handle_frames(&mut vdec, false, &mut meta, progress) {
            result = Err(e);
            break;
        }
        if finished.get() {
            break;
        }
    }
    if result.is_ok() && !finished.get() {
        result = vdec
            .send_eof()
            .map_err(ff("flushing the video decoder"))
            .and_then(|_| handle_frames(&mut vdec, true, &mut meta, progress));
    }
    // A worker's own error explains a send failure better than the send failure.
    sink.finish(meta.next_pts)?;
    result?;
    if seeked_too_late {
        return Ok(Pass::SeekedTooLate);
    }
    Ok(Pass::Done(meta))
}

/// Where decoded frames go: one encoding thread per rendition, or every
/// rendition inline on the decoding thread.
enum RenditionSink {
    Threads {
        senders: Vec<SyncSender<RungInput>>,
        workers: Vec<(RenditionId, JoinHandle<Result<PathBuf, EncodeError>>)>,
    },
    Inline(Vec<RungEncoder>),
}

impl RenditionSink {
    fn start(settings: Vec<RungSettings>, inline: bool) -> Result<Self, EncodeError> {
        if inline {
            return Ok(Self::Inline(settings.iter().map(RungEncoder::new).collect::<Result<_, _>>()?));
        }
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for s in settings {
            let (tx, rx) = sync_channel::<RungInput>(8);
            let id = s.rung.id.clone();
            let handle = std::thread::Builder::new().name(format!("rung-{id}")).spawn(move || encode_rung(s, rx))?;
            senders.push(tx);
            workers.push((id, handle));
        }
        Ok(Self::Threads { senders, workers })
    }

    fn send(&mut self, frame: Arc<SharedFrame>, starts_segment: bool) -> Result<(), EncodeError> {
        match self {
            Self::Threads { senders, .. } => {
                for tx in senders.iter() {
                    if tx.send(RungInput::Frame(FrameMsg { frame: Arc::clone(&frame), starts_segment })).is_err() {
                        // The worker stopped early; its error surfaces at join.
                        return Err(EncodeError::Worker("a rung encoder stopped".into()));
                    }
                }
            }
            Self::Inline(rungs) => {
                let msg = FrameMsg { frame, starts_segment };
                for r in rungs.iter_mut() {
                    r.push(&msg)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes every rendition; the first encoder error, if any.
    fn finish(self, next_pts: Option<i64>) -> Result<(), EncodeError> {
        match self {
            Self::Threads { senders, workers } => {
                for tx in &senders {
                    // A worker that already stopped reports its own error at join.
                    let _ = tx.send(RungInput::End(next_pts));
                }
                drop(senders);
                let mut first_err = None;
                for (id, handle) in workers {
                    let e = match handle.join() {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => e,
                        Err(_) => EncodeError::Worker(format!("rendition {id} panicked")),
                    };
                    first_err = first_err.or(Some(e));
                }
                first_err.map_or(Ok(()), Err)
            }
            Self::Inline(rungs) => rungs.into_iter().try_for_each(|r| r.finish(next_pts).map(drop)),
        }
    }
}

/// The audio task: the whole audio track, cut at the same nominal boundaries as the video.
fn encode_audio(input: &Path, spec: &JobSpec, out: &Path, progress: &mut dyn FnMut(f64)) -> Result<(), EncodeError> {
    let mut ictx = open_input(input)?;
    let ast = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| EncodeError::Task { task: "audio".into(), reason: "the source has no audio stream".into() })?;
    let (index, tb) = (ast.index(), ast.time_base());
    let mut track = AudioTrack::new(ast.parameters(), tb, out.to_owned(), spec.segment_ms)?;
    let duration_s = if ictx.duration() > 0 { ictx.duration() as f64 / 1e6 } else { 0.0 };
    let mut last_report = Instant::now();
    for (stream, packet) in ictx.packets() {
        if stream.index() != index {
            continue;
        }
        track.packet(&packet)?;
        if duration_s > 0.0 && last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            let t = packet.pts().map_or(0.0, |p| p as f64 * f64::from(tb));
            progress((t / duration_s).clamp(0.0, 0.99));
        }
    }
    track.finish()?;
    Ok(())
}
