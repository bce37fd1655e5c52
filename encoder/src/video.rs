//! One video rung: scale decoded frames to the rung's size, encode with
//! libx264 (or libx265, libsvtav1) with a keyframe at every segment boundary,
//! and mux the segments.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use ffmpeg_next::software::scaling;
use ffmpeg_next::{codec, encoder, format, frame, picture, Dictionary, Packet, Rational};
use vod::ladder::PlannedRung;

use crate::error::{ff, EncodeError};
use crate::job::VideoCodec;
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
    /// Frames per segment, rounded up: the longest GOP the encoder may make on its own.
    pub gop: u32,
    /// x264 preset name; other codecs use their matching speed.
    pub preset: String,
    pub codec: VideoCodec,
    /// Encoder threads; None leaves the codec's own default.
    pub threads: Option<usize>,
}

/// Maps an x264 preset to the SVT-AV1 preset of about the same speed rank.
fn svt_preset(x264: &str) -> &'static str {
    match x264 {
        "ultrafast" => "12",
        "superfast" => "11",
        "veryfast" => "10",
        "faster" => "9",
        "fast" => "8",
        "medium" => "7",
        "slow" => "6",
        "slower" => "5",
        _ => "4",
    }
}

/// Opens the encoder of `settings.codec` for one rung.
fn open_encoder(settings: &RungSettings) -> Result<encoder::Video, EncodeError> {
    let name = match settings.codec {
        VideoCodec::H264 => "libx264",
        VideoCodec::Hevc => "libx265",
        VideoCodec::Av1 => "libsvtav1",
    };
    let codec = encoder::find_by_name(name).ok_or(EncodeError::MissingCodec(name))?;
    let mut enc =
        codec::context::Context::new_with_codec(codec).encoder().video().map_err(ff(format!("creating {name}")))?;
    let r = &settings.rung;
    enc.set_width(r.width);
    enc.set_height(r.height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(settings.time_base);
    enc.set_frame_rate(Some(settings.frame_rate));
    enc.set_gop(settings.gop);
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    if let Some(n) = settings.threads {
        enc.set_threading(ffmpeg_next::threading::Config {
            kind: ffmpeg_next::threading::Type::Frame,
            count: n,
            ..Default::default()
        });
    }
    let bps = r.bitrate.bps() as usize;
    enc.set_bit_rate(bps);
    let mut opts = Dictionary::new();
    match settings.codec {
        VideoCodec::H264 | VideoCodec::Hevc => {
            // A VBV keeps every segment near the advertised BANDWIDTH.
            enc.set_max_bit_rate(bps * 3 / 2);
            // SAFETY: plain field write on a context we own and have not opened yet.
            unsafe {
                (*enc.as_mut_ptr()).rc_buffer_size = (bps * 2) as i32;
            }
            opts.set("preset", &settings.preset);
            // Forced I frames become IDRs; no scene-cut keyframes, closed GOPs, so
            // segment boundaries are the only places a GOP has to start.
            opts.set("forced-idr", "1");
            if settings.codec == VideoCodec::H264 {
                opts.set("profile", "high");
                opts.set("x264-params", "scenecut=0:open-gop=0");
            } else {
                let mut params = String::from("scenecut=0:open-gop=0:log-level=error");
                if let Some(n) = settings.threads {
                    params.push_str(&format!(":pools={n}:frame-threads={n}"));
                }
                opts.set("profile", "main");
                opts.set("x265-params", &params);
            }
        }
        VideoCodec::Av1 => {
            // SVT-AV1 caps bitrate only in CRF mode; plain VBR at the target here.
            opts.set("preset", svt_preset(&settings.preset));
            let mut params = String::from("scd=0");
            if let Some(n) = settings.threads {
                params.push_str(&format!(":lp={n}"));
            }
            opts.set("svtav1-params", &params);
        }
    }
    enc.open_with(opts).map_err(ff(format!("opening {name} for {}", r.id)))
}

/// What a rung thread receives.
pub enum RungInput {
    Frame(FrameMsg),
    /// No more frames; the stream continues at this pts (the next chunk's
    /// first frame) or, if None, ends here.
    End(Option<i64>),
}

/// Encodes every frame received on `rx` into `settings.out`.
pub fn encode_rung(settings: RungSettings, rx: Receiver<RungInput>) -> Result<PathBuf, EncodeError> {
    let mut rung = RungEncoder::new(&settings)?;
    let mut next_pts = None;
    for msg in rx {
        match msg {
            RungInput::Frame(f) => rung.push(&f)?,
            RungInput::End(next) => next_pts = next,
        }
    }
    rung.finish(next_pts)
}

/// One rung's scaler, encoder and muxer, fed frame by frame: on a thread of
/// its own (`encode_rung`) or inline on the decoding thread.
pub struct RungEncoder {
    enc: encoder::Video,
    mux: SegmentedMuxer,
    scaler: Option<scaling::Context>,
    boundaries: VecDeque<i64>,
    scaled: frame::Video,
    width: u32,
    height: u32,
    tb: Rational,
    /// Pts of the first frame and dts of the first packet.
    first_pts: Option<i64>,
    first_dts: Option<i64>,
    /// The last packet is held back: its duration is only known at the end.
    pending: Option<(Packet, bool)>,
}

impl RungEncoder {
    /// Opens the encoder and the output file.
    pub fn new(settings: &RungSettings) -> Result<Self, EncodeError> {
        let enc = open_encoder(settings)?;
        let tag = (settings.codec == VideoCodec::Hevc).then_some(*b"hvc1");
        let mux = SegmentedMuxer::create_tagged(&settings.out, &enc, settings.time_base, tag)?;
        Ok(Self {
            enc,
            mux,
            scaler: None,
            boundaries: VecDeque::new(),
            scaled: frame::Video::empty(),
            width: settings.rung.width,
            height: settings.rung.height,
            tb: settings.time_base,
            first_pts: None,
            first_dts: None,
            pending: None,
        })
    }

    /// Scales and encodes one frame.
    pub fn push(&mut self, msg: &FrameMsg) -> Result<(), EncodeError> {
        let src = &msg.frame.0;
        self.first_pts = self.first_pts.or(src.pts());
        if src.width() == self.width && src.height() == self.height && src.format() == format::Pixel::YUV420P {
            // The rung is the source size: hand the encoder a new reference to
            // the decoded buffers instead of a scaled copy.
            let mut same = frame::Video::empty();
            // SAFETY: both frames are valid; av_frame_ref only adds buffer references.
            let ret = unsafe { ffmpeg_next::ffi::av_frame_ref(same.as_mut_ptr(), src.as_ptr()) };
            if ret < 0 {
                return Err(EncodeError::Ffmpeg { stage: "referencing a frame".into(), source: ret.into() });
            }
            return self.encode_frame(&mut same, msg.starts_segment);
        }
        let sc = match &mut self.scaler {
            Some(s) => s,
            None => self.scaler.insert(
                scaling::Context::get(
                    src.format(),
                    src.width(),
                    src.height(),
                    format::Pixel::YUV420P,
                    self.width,
                    self.height,
                    scaling::Flags::BICUBIC,
                )
                .map_err(ff("creating the scaler"))?,
            ),
        };
        sc.run(src, &mut self.scaled).map_err(ff("scaling a frame"))?;
        self.scaled.set_pts(src.pts());
        let mut scaled = std::mem::replace(&mut self.scaled, frame::Video::empty());
        let r = self.encode_frame(&mut scaled, msg.starts_segment);
        self.scaled = scaled;
        r
    }

    /// Flushes the encoder and closes the file; returns its path. `next_pts`
    /// is where the stream continues (the next chunk's first frame): the last
    /// sample lasts until then, so chunks join with no gap or overlap even at
    /// a variable frame rate.
    pub fn finish(mut self, next_pts: Option<i64>) -> Result<PathBuf, EncodeError> {
        self.enc.send_eof().map_err(ff("flushing the video encoder"))?;
        self.drain()?;
        if let Some((mut pkt, starts)) = self.pending.take() {
            if let (Some(next), Some(p0), Some(d0), Some(dts)) = (next_pts, self.first_pts, self.first_dts, pkt.dts()) {
                // Decode time runs from d0 for as long as presentation runs from p0.
                let duration = next - p0 + d0 - dts;
                if duration > 0 {
                    pkt.set_duration(duration);
                }
            }
            self.mux.write(&mut pkt, self.tb, starts)?;
        }
        self.mux.finish()
    }

    fn encode_frame(&mut self, frame: &mut frame::Video, starts_segment: bool) -> Result<(), EncodeError> {
        if starts_segment {
            frame.set_kind(picture::Type::I);
            self.boundaries.push_back(frame.pts().unwrap_or(0));
        } else {
            frame.set_kind(picture::Type::None);
        }
        self.enc.send_frame(frame).map_err(ff("sending a frame to the video encoder"))?;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), EncodeError> {
        let mut pkt = Packet::empty();
        while self.enc.receive_packet(&mut pkt).is_ok() {
            let mut starts = false;
            if pkt.is_key() {
                let pts = pkt.pts().unwrap_or(i64::MIN);
                while self.boundaries.front().is_some_and(|&b| b <= pts) {
                    self.boundaries.pop_front();
                    starts = true;
                }
            }
            self.first_dts = self.first_dts.or(pkt.dts());
            if let Some((mut prev, prev_starts)) = self.pending.replace((pkt, starts)) {
                self.mux.write(&mut prev, self.tb, prev_starts)?;
            }
            pkt = Packet::empty();
        }
        Ok(())
    }
}
