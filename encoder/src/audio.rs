//! The audio rendition: decode, resample to 48 kHz stereo float planar through
//! an ffmpeg filter graph (which also cuts 1024-sample frames), encode AAC-LC,
//! and cut segments at the same nominal boundaries as the video.

use std::path::PathBuf;

use ffmpeg_next::{channel_layout::ChannelLayout, codec, decoder, encoder, filter, format, frame, Packet, Rational};

use crate::error::{ff, EncodeError};
use crate::mux::SegmentedMuxer;

/// Output sample rate.
pub const SAMPLE_RATE: i32 = 48_000;
/// Output channels.
pub const CHANNELS: u32 = 2;
/// Output bitrate.
pub const BITRATE: usize = 128_000;

/// Encodes one audio stream into a segmented MP4.
pub struct AudioTrack {
    decoder: decoder::Audio,
    graph: filter::Graph,
    encoder: encoder::Audio,
    mux: SegmentedMuxer,
    /// Samples per segment at the output rate.
    segment_samples: i64,
    next_boundary: i64,
}

impl AudioTrack {
    /// Opens decoder, resampler and encoder for `params`.
    pub fn new(params: codec::Parameters, in_tb: Rational, out: PathBuf, segment_ms: u64) -> Result<Self, EncodeError> {
        let mut decoder = codec::context::Context::from_parameters(params)
            .and_then(|c| c.decoder().audio())
            .map_err(ff("opening the audio decoder"))?;
        decoder.set_packet_time_base(in_tb);
        let codec = encoder::find_by_name("aac").ok_or(EncodeError::MissingCodec("aac"))?;
        let mut enc = codec::context::Context::new_with_codec(codec).encoder().audio().map_err(ff("creating aac"))?;
        enc.set_rate(SAMPLE_RATE);
        enc.set_channel_layout(ChannelLayout::STEREO);
        enc.set_format(format::Sample::F32(format::sample::Type::Planar));
        enc.set_bit_rate(BITRATE);
        enc.set_time_base((1, SAMPLE_RATE));
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = enc.open().map_err(ff("opening aac"))?;
        let mux = SegmentedMuxer::create(&out, &encoder, Rational(1, SAMPLE_RATE))?;

        let mut layout = decoder.channel_layout();
        if layout.bits() == 0 {
            layout = ChannelLayout::default(i32::from(decoder.channels()));
        }
        let mut graph = filter::Graph::new();
        let args = format!(
            "time_base={}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
            in_tb,
            decoder.rate(),
            decoder.format().name(),
            layout.bits()
        );
        let find = |n: &str| filter::find(n).ok_or(EncodeError::MissingCodec("ffmpeg audio filters"));
        graph.add(&find("abuffer")?, "in", &args).map_err(ff("audio filter input"))?;
        graph.add(&find("abuffersink")?, "out", "").map_err(ff("audio filter output"))?;
        {
            let mut out = graph.get("out").ok_or(EncodeError::MissingCodec("abuffersink"))?;
            out.set_sample_format(encoder.format());
            out.set_channel_layout(ChannelLayout::STEREO);
            out.set_sample_rate(SAMPLE_RATE as u32);
        }
        // Timestamps re-based on sample count; async resampling fills gaps.
        let spec = format!("aresample={SAMPLE_RATE}:async=1,asetpts=N/SR/TB");
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(ff("building the audio filter graph"))?;
        graph.validate().map_err(ff("validating the audio filter graph"))?;
        if let Some(mut out) = graph.get("out") {
            out.sink().set_frame_size(encoder.frame_size());
        }
        let segment_samples = (segment_ms as i64 * i64::from(SAMPLE_RATE)) / 1000;
        Ok(Self { decoder, graph, encoder, mux, segment_samples, next_boundary: segment_samples })
    }

    /// Feeds one demuxed packet. Corrupt packets are skipped, as players do.
    pub fn packet(&mut self, packet: &Packet) -> Result<(), EncodeError> {
        if let Err(e) = self.decoder.send_packet(packet) {
            tracing::warn!(error = %e, "skipping an undecodable audio packet");
            return Ok(());
        }
        self.pull_decoded()
    }

    fn pull_decoded(&mut self) -> Result<(), EncodeError> {
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let ts = decoded.timestamp();
            decoded.set_pts(ts);
            if let Some(mut src) = self.graph.get("in") {
                src.source().add(&decoded).map_err(ff("resampling audio"))?;
            }
            self.pull_filtered()?;
        }
        Ok(())
    }

    fn pull_filtered(&mut self) -> Result<(), EncodeError> {
        let mut filtered = frame::Audio::empty();
        loop {
            let got = match self.graph.get("out") {
                Some(mut sink) => sink.sink().frame(&mut filtered).is_ok(),
                None => false,
            };
            if !got {
                break;
            }
            self.encoder.send_frame(&filtered).map_err(ff("encoding audio"))?;
            self.pull_encoded()?;
        }
        Ok(())
    }

    fn pull_encoded(&mut self) -> Result<(), EncodeError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            let pts = pkt.pts().unwrap_or(0);
            let mut starts = false;
            while pts >= self.next_boundary {
                self.next_boundary += self.segment_samples;
                starts = true;
            }
            self.mux.write(&mut pkt, Rational(1, SAMPLE_RATE), starts)?;
        }
        Ok(())
    }

    /// Drains decoder, filter and encoder and closes the file.
    pub fn finish(mut self) -> Result<PathBuf, EncodeError> {
        self.decoder.send_eof().map_err(ff("flushing the audio decoder"))?;
        self.pull_decoded()?;
        if let Some(mut src) = self.graph.get("in") {
            src.source().flush().map_err(ff("flushing the audio filter"))?;
        }
        self.pull_filtered()?;
        self.encoder.send_eof().map_err(ff("flushing aac"))?;
        self.pull_encoded()?;
        self.mux.finish()
    }
}
