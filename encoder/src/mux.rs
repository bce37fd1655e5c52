//! A one-track fragmented-MP4 writer whose fragments are cut exactly where
//! the caller says a segment begins (`movflags=frag_custom`), so every
//! fragment is one CMAF segment.

use std::path::{Path, PathBuf};

use ffmpeg_next::{codec, format, Dictionary, Packet, Rational};

use crate::error::{ff, EncodeError};

/// Writes one rendition's packets to a fragmented MP4 file.
pub struct SegmentedMuxer {
    octx: format::context::Output,
    path: PathBuf,
    stream_tb: Rational,
    written: bool,
}

impl SegmentedMuxer {
    /// Opens `path` for the stream produced by `encoder`.
    pub fn create(path: &Path, encoder: &codec::encoder::Encoder, encoder_tb: Rational) -> Result<Self, EncodeError> {
        Self::create_tagged(path, encoder, encoder_tb, None)
    }

    /// Like `create`, with the sample entry's four-character code set (`hvc1`:
    /// parameter sets only in the init segment, which Apple players require).
    pub fn create_tagged(
        path: &Path,
        encoder: &codec::encoder::Encoder,
        encoder_tb: Rational,
        tag: Option<[u8; 4]>,
    ) -> Result<Self, EncodeError> {
        let mut octx = format::output_as(path, "mp4").map_err(ff("opening the mp4 muxer"))?;
        {
            let mut ost = octx.add_stream(encoder.codec()).map_err(ff("adding a stream"))?;
            ost.set_parameters(encoder);
            ost.set_time_base(encoder_tb);
            if let Some(t) = tag {
                // SAFETY: the stream and its codec parameters were just allocated by add_stream.
                unsafe {
                    (*(*ost.as_mut_ptr()).codecpar).codec_tag = u32::from_le_bytes(t);
                }
            }
        }
        let mut opts = Dictionary::new();
        opts.set("movflags", "frag_custom+empty_moov+default_base_moof+skip_trailer+cmaf");
        octx.write_header_with(opts).map_err(ff("writing the mp4 header"))?;
        let stream_tb = octx.stream(0).map(|s| s.time_base()).unwrap_or(encoder_tb);
        Ok(Self { octx, path: path.to_owned(), stream_tb, written: false })
    }

    /// Writes a packet stamped in `encoder_tb`; `starts_segment` closes the fragment before it.
    pub fn write(
        &mut self,
        packet: &mut Packet,
        encoder_tb: Rational,
        starts_segment: bool,
    ) -> Result<(), EncodeError> {
        if starts_segment && self.written {
            self.flush_fragment()?;
        }
        packet.set_stream(0);
        packet.rescale_ts(encoder_tb, self.stream_tb);
        packet.write(&mut self.octx).map_err(ff("writing a packet"))?;
        self.written = true;
        Ok(())
    }

    fn flush_fragment(&mut self) -> Result<(), EncodeError> {
        // SAFETY: the context is open and its header written; a null packet
        // asks the mp4 muxer to close the current fragment (frag_custom).
        let ret = unsafe { ffmpeg_next::ffi::av_write_frame(self.octx.as_mut_ptr(), std::ptr::null_mut()) };
        if ret < 0 {
            return Err(EncodeError::Ffmpeg {
                stage: "closing a fragment".into(),
                source: ffmpeg_next::Error::from(ret),
            });
        }
        Ok(())
    }

    /// Closes the last fragment and the file; returns its path.
    pub fn finish(mut self) -> Result<PathBuf, EncodeError> {
        let stage = format!("writing the mp4 trailer of {}", self.path.display());
        self.octx.write_trailer().map_err(ff(stage))?;
        Ok(self.path)
    }
}
