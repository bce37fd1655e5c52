//! Decode the source once and feed every rung: video frames fan out to one
//! thread per rung (scale + x264 + mux), audio is encoded on the decode thread.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use ffmpeg_next::{format, frame, media, Rational};
use vod::ladder::{plan_ladder, PlannedRung, DEFAULT_LADDER};

use crate::audio::AudioTrack;
use crate::error::{ff, EncodeError};
use crate::video::{encode_rung, FrameMsg, RungSettings, SharedFrame};
use crate::video_filter::{display_geometry, rotation_of, SourceFilter};

/// What to encode and how.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    pub segment_ms: u64,
    pub preset: String,
    /// Print a progress line to stderr.
    pub progress: bool,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        Self { segment_ms: 4000, preset: "veryfast".into(), progress: true }
    }
}

/// The files an encode produced, before packaging.
#[derive(Debug)]
pub struct EncodedFiles {
    pub video: Vec<(PlannedRung, f64, PathBuf)>,
    pub audio: Option<PathBuf>,
    pub frames: u64,
}

/// Opens `input` and checks it is media with a video stream.
pub fn open_input(input: &Path) -> Result<format::context::Input, EncodeError> {
    if !input.exists() {
        return Err(EncodeError::InputMissing(input.to_owned()));
    }
    ffmpeg_next::init().map_err(ff("initialising ffmpeg"))?;
    ffmpeg_next::log::set_level(if std::env::var_os("ENCODER_FFMPEG_DEBUG").is_some() {
        ffmpeg_next::log::Level::Debug
    } else {
        ffmpeg_next::log::Level::Error
    });
    let ictx =
        format::input(input).map_err(|e| EncodeError::NotMedia { path: input.to_owned(), reason: e.to_string() })?;
    if ictx.streams().best(media::Type::Video).is_none() {
        return Err(EncodeError::NoVideo(input.to_owned()));
    }
    Ok(ictx)
}

struct Progress {
    start: Instant,
    last: Instant,
    total: u64,
    enabled: bool,
}

impl Progress {
    fn tick(&mut self, frames: u64, force: bool) {
        if !self.enabled || (!force && self.last.elapsed().as_millis() < 500) {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let fps = frames as f64 / secs;
        let eta = if fps > 0.0 && self.total > frames { (self.total - frames) as f64 / fps } else { 0.0 };
        eprint!("\rencoding: frame {frames}/{} {fps:.1} frames/s ETA {eta:.0}s   ", self.total);
        if force {
            eprintln!();
        }
    }
}

/// Encodes `input` into one fMP4 file per rendition under `work`.
pub fn encode(input: &Path, work: &Path, settings: &EncodeSettings) -> Result<EncodedFiles, EncodeError> {
    let mut ictx = open_input(input)?;
    let vst = ictx.streams().best(media::Type::Video).ok_or_else(|| EncodeError::NoVideo(input.to_owned()))?;
    let v_index = vst.index();
    let v_tb = vst.time_base();
    let mut rate = vst.avg_frame_rate();
    if rate.numerator() <= 0 || rate.denominator() <= 0 {
        rate = vst.rate();
    }
    if rate.numerator() <= 0 || rate.denominator() <= 0 {
        rate = Rational(25, 1);
    }
    let fps = f64::from(rate);
    let v_start = if vst.start_time() == ffmpeg_next::ffi::AV_NOPTS_VALUE { 0 } else { vst.start_time() };
    let mut vdec = ffmpeg_next::codec::context::Context::from_parameters(vst.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(ff("opening the video decoder"))?;
    vdec.set_packet_time_base(v_tb);
    let duration_s = if ictx.duration() > 0 { ictx.duration() as f64 / 1e6 } else { 0.0 };
    let rotation = rotation_of(&vst);
    let sar = vdec.aspect_ratio();
    let geometry = display_geometry(vdec.width(), vdec.height(), (sar.numerator(), sar.denominator()), rotation);
    let rungs = plan_ladder(geometry.width, geometry.height, DEFAULT_LADDER);
    let mut source_filter = SourceFilter::new(&vdec, v_tb, rotation)?;

    let astream = ictx.streams().best(media::Type::Audio).map(|s| (s.index(), s.parameters(), s.time_base()));
    let a_index = astream.as_ref().map(|(i, _, _)| *i);
    let mut audio = match astream {
        Some((_, params, tb)) => Some(AudioTrack::new(params, tb, work.join("audio.mp4"), settings.segment_ms)?),
        None => None,
    };

    let gop = ((settings.segment_ms as f64 / 1000.0) * fps).ceil().max(1.0) as u32;
    let mut senders: Vec<SyncSender<FrameMsg>> = Vec::new();
    let mut workers: Vec<(PlannedRung, JoinHandle<Result<PathBuf, EncodeError>>)> = Vec::new();
    for rung in &rungs {
        let (tx, rx) = sync_channel::<FrameMsg>(8);
        let s = RungSettings {
            rung: rung.clone(),
            out: work.join(format!("{}.mp4", rung.id)),
            time_base: v_tb,
            frame_rate: rate,
            gop,
            preset: settings.preset.clone(),
        };
        let handle = std::thread::Builder::new().name(format!("rung-{}", rung.id)).spawn(move || encode_rung(s, rx))?;
        senders.push(tx);
        workers.push((rung.clone(), handle));
    }

    let seg_s = settings.segment_ms as f64 / 1000.0;
    let tb_s = f64::from(v_tb);
    let half_frame = 0.5 / fps.max(1.0);
    let mut next_boundary = 0.0f64;
    let mut frames = 0u64;
    let mut last_pts: Option<i64> = None;
    let mut progress = Progress {
        start: Instant::now(),
        last: Instant::now(),
        total: (duration_s * fps).round() as u64,
        enabled: settings.progress,
    };
    let mut decoded = frame::Video::empty();
    let mut send_frames =
        |vdec: &mut ffmpeg_next::decoder::Video, frames: &mut u64, eof: bool| -> Result<(), EncodeError> {
            while vdec.receive_frame(&mut decoded).is_ok() {
                source_filter.push(&decoded)?;
            }
            if eof {
                source_filter.flush()?;
            }
            loop {
                // A fresh frame each time: it is shared with every rung, not copied.
                let mut f = frame::Video::empty();
                if !source_filter.pull(&mut f) {
                    break;
                }
                let decoded = &f;
                // Re-base on the stream start; keep pts strictly increasing for x264.
                let mut pts = decoded.timestamp().map_or_else(|| last_pts.map_or(0, |p| p + 1), |t| t - v_start);
                if let Some(p) = last_pts {
                    if pts <= p {
                        pts = p + 1;
                    }
                }
                last_pts = Some(pts);
                let t = pts as f64 * tb_s;
                let starts_segment = t + half_frame >= next_boundary;
                if starts_segment {
                    while next_boundary <= t + half_frame {
                        next_boundary += seg_s;
                    }
                }
                f.set_pts(Some(pts));
                let shared = Arc::new(SharedFrame(f));
                for tx in &senders {
                    let msg = FrameMsg { frame: Arc::clone(&shared), starts_segment };
                    if tx.send(msg).is_err() {
                        // The worker stopped early; its error surfaces at join.
                        return Err(EncodeError::Worker("a rung encoder stopped".into()));
                    }
                }
                *frames += 1;
                progress.tick(*frames, false);
            }
            Ok(())
        };

    let mut result: Result<(), EncodeError> = Ok(());
    for (stream, packet) in ictx.packets() {
        if stream.index() == v_index {
            if let Err(e) = vdec.send_packet(&packet) {
                tracing::warn!(error = %e, "skipping an undecodable video packet");
                continue;
            }
            if let Err(e) = send_frames(&mut vdec, &mut frames, false) {
                result = Err(e);
                break;
            }
        } else if Some(stream.index()) == a_index {
            if let Some(a) = audio.as_mut() {
                if let Err(e) = a.packet(&packet) {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        result = vdec
            .send_eof()
            .map_err(ff("flushing the video decoder"))
            .and_then(|_| send_frames(&mut vdec, &mut frames, true));
    }
    drop(senders);
    progress.tick(frames, true);
    let mut video = Vec::new();
    let mut worker_err = None;
    for (rung, handle) in workers {
        match handle.join() {
            Ok(Ok(path)) => video.push((rung, fps, path)),
            Ok(Err(e)) => worker_err = worker_err.or(Some(e)),
            Err(_) => worker_err = worker_err.or(Some(EncodeError::Worker(format!("rung {} panicked", rung.id)))),
        }
    }
    // A worker's own error explains a send failure better than the send failure.
    if let Some(e) = worker_err {
        return Err(e);
    }
    result?;
    if frames == 0 {
        return Err(EncodeError::Empty(input.to_owned()));
    }
    // A file cut short (an interrupted upload) still opens when its index is
    // at the front; publishing the part that decodes would lose the rest.
    let decoded_s = last_pts.map_or(0.0, |p| p as f64 * tb_s + 1.0 / fps.max(1.0));
    if duration_s > 0.0 && decoded_s + 0.5 < duration_s * 0.97 {
        return Err(EncodeError::Truncated { path: input.to_owned(), decoded_s, declared_s: duration_s });
    }
    let audio = audio.map(AudioTrack::finish).transpose()?;
    Ok(EncodedFiles { video, audio, frames })
}
