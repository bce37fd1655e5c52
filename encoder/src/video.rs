//! One video rung: scale decoded frames to the rung's size, encode with
//! libx264 with an IDR at every segment boundary, and mux the segments.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use ffmpeg_next::software::scaling;
use ffmpeg_next::{codec, encoder, format, frame, picture, Dictionary, Packet, Rational};
use vod::ladder::PlannedRung;

use crate::error::{ff, EncodeError};
use crate::mux::SegmentedMuxer;

/// A decoded frame read by every rung thread at once.
pub struct SharedFrame(pub frame::Video);

// SAFETY: rung threads only read the frame (scaling reads its planes, a
// reference copies its buffer refs); nothing mutates it once it is shared.
unsafe impl Sync for SharedFrame {}

/// A decoded source frame and whether a segment starts at it.
pub struct FrameMsg {
    pub frame: Arc<SharedFrame>,
    pub starts_segment: bool,
}

/// How to encode one rung.
#[derive(Debug, Clone)]
pub struct RungSettings {
    pub rung: PlannedRung,
    pub out: PathBuf,
    /// Time base of the frames' pts.
    pub time_base: Rational,
    pub frame_rate: Rational,
    /// Frames per segment, rounded up: the longest GOP x264 may make on its own.
    pub gop: u32,
    pub preset: String,
}

/// Encodes every frame received on `rx` into `settings.out`.
pub fn encode_rung(settings: RungSettings, rx: Receiver<FrameMsg>) -> Result<PathBuf, EncodeError> {
    let codec = encoder::find_by_name("libx264").ok_or(EncodeError::MissingCodec("libx264"))?;
    let mut enc = codec::context::Context::new_with_codec(codec).encoder().video().map_err(ff("creating libx264"))?;
    let r = &settings.rung;
    enc.set_width(r.width);
    enc.set_height(r.height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(settings.time_base);
    enc.set_frame_rate(Some(settings.frame_rate));
    enc.set_gop(settings.gop);
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let bps = r.bitrate.bps() as usize;
    enc.set_bit_rate(bps);
    // A VBV keeps every segment near the advertised BANDWIDTH.
    enc.set_max_bit_rate(bps * 3 / 2);
    // SAFETY: plain field write on a context we own and have not opened yet.
    unsafe {
        (*enc.as_mut_ptr()).rc_buffer_size = (bps * 2) as i32;
    }
    let mut opts = Dictionary::new();
    opts.set("preset", &settings.preset);
    opts.set("profile", "high");
    // Forced I frames become IDRs; no scene-cut keyframes, closed GOPs, so
    // segment boundaries are the only places a GOP has to start.
    opts.set("forced-idr", "1");
    opts.set("x264-params", "scenecut=0:open-gop=0");
    let mut enc = enc.open_with(opts).map_err(ff(format!("opening libx264 for {}", r.id)))?;
    let mut mux = SegmentedMuxer::create(&settings.out, &enc, settings.time_base)?;

    let mut scaler: Option<scaling::Context> = None;
    let mut boundaries: VecDeque<i64> = VecDeque::new();
    let mut scaled = frame::Video::empty();
    let tb = settings.time_base;
    for msg in rx {
        let src = &msg.frame.0;
        if src.width() == r.width && src.height() == r.height && src.format() == format::Pixel::YUV420P {
            // The rung is the source size: hand x264 a new reference to the
            // decoded buffers instead of a scaled copy.
            let mut same = frame::Video::empty();
            // SAFETY: both frames are valid; av_frame_ref only adds buffer references.
            let ret = unsafe { ffmpeg_next::ffi::av_frame_ref(same.as_mut_ptr(), src.as_ptr()) };
            if ret < 0 {
                return Err(EncodeError::Ffmpeg { stage: "referencing a frame".into(), source: ret.into() });
            }
            encode_frame(&mut enc, &mut mux, &mut boundaries, tb, &mut same, msg.starts_segment)?;
            continue;
        }
        let sc = match &mut scaler {
            Some(s) => s,
            None => scaler.insert(
                scaling::Context::get(
                    src.format(),
                    src.width(),
                    src.height(),
                    format::Pixel::YUV420P,
                    r.width,
                    r.height,
                    scaling::Flags::BICUBIC,
                )
                .map_err(ff("creating the scaler"))?,
            ),
        };
        sc.run(src, &mut scaled).map_err(ff("scaling a frame"))?;
        scaled.set_pts(src.pts());
        encode_frame(&mut enc, &mut mux, &mut boundaries, tb, &mut scaled, msg.starts_segment)?;
    }
    enc.send_eof().map_err(ff("flushing libx264"))?;
    drain(&mut enc, &mut mux, &mut boundaries, tb)?;
    mux.finish()
}

fn encode_frame(
    enc: &mut encoder::Video,
    mux: &mut SegmentedMuxer,
    boundaries: &mut VecDeque<i64>,
    tb: Rational,
    frame: &mut frame::Video,
    starts_segment: bool,
) -> Result<(), EncodeError> {
    if starts_segment {
        frame.set_kind(picture::Type::I);
        boundaries.push_back(frame.pts().unwrap_or(0));
    } else {
        frame.set_kind(picture::Type::None);
    }
    enc.send_frame(frame).map_err(ff("sending a frame to libx264"))?;
    drain(enc, mux, boundaries, tb)
}

fn drain(
    enc: &mut encoder::Video,
    mux: &mut SegmentedMuxer,
    boundaries: &mut VecDeque<i64>,
    tb: Rational,
) -> Result<(), EncodeError> {
    let mut pkt = Packet::empty();
    while enc.receive_packet(&mut pkt).is_ok() {
        let mut starts = false;
        if pkt.is_key() {
            let pts = pkt.pts().unwrap_or(i64::MIN);
            while boundaries.front().is_some_and(|&b| b <= pts) {
                boundaries.pop_front();
                starts = true;
            }
        }
        mux.write(&mut pkt, tb, starts)?;
    }
    Ok(())
}
