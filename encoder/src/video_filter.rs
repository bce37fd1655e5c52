//! Sources that are not clean, made clean once before the fan-out to rungs:
//! interlaced frames are deinterlaced (`yadif` touches only frames flagged
//! interlaced), rotation metadata is applied (players would otherwise show a
//! phone video sideways, since our renditions carry no display matrix), and
//! non-square pixels are accounted for when the ladder is planned.

use ffmpeg_next::{codec, decoder, filter, frame, Rational};

use crate::error::{ff, EncodeError};

/// What the source looks like on screen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisplayGeometry {
    /// Display width in square pixels, after rotation.
    pub width: u32,
    /// Display height, after rotation.
    pub height: u32,
    /// Clockwise rotation applied, in degrees (0, 90, 180, 270).
    pub rotation: i32,
}

/// Rotation from a stream's display matrix, clockwise degrees rounded to a quarter turn.
pub fn rotation_of(stream: &ffmpeg_next::format::stream::Stream) -> i32 {
    for sd in stream.side_data() {
        if sd.kind() == codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            // SAFETY: a display matrix is nine 32-bit integers; we checked the length.
            let ccw = unsafe { ffmpeg_next::ffi::av_display_rotation_get(sd.data().as_ptr().cast::<i32>()) };
            if ccw.is_nan() {
                return 0;
            }
            let cw = (-ccw).round() as i32;
            return ((cw % 360 + 360) % 360 + 45) / 90 * 90 % 360;
        }
    }
    0
}

/// Pure: the display size of a `width`x`height` picture with sample aspect
/// `sar` (0/x means square) turned `rotation` degrees clockwise.
pub fn display_geometry(width: u32, height: u32, sar: (i32, i32), rotation: i32) -> DisplayGeometry {
    let (num, den) = sar;
    let w =
        if num > 0 && den > 0 { (f64::from(width) * f64::from(num) / f64::from(den)).round() as u32 } else { width };
    let (w, h) = if rotation == 90 || rotation == 270 { (height, w) } else { (w, height) };
    DisplayGeometry { width: w.max(2), height: h.max(2), rotation }
}

/// A filter graph between the decoder and the rungs.
pub struct SourceFilter {
    graph: filter::Graph,
}

impl SourceFilter {
    /// Deinterlace, then rotate by `rotation` degrees clockwise.
    pub fn new(dec: &decoder::Video, time_base: Rational, rotation: i32) -> Result<Self, EncodeError> {
        let mut graph = filter::Graph::new();
        let sar = dec.aspect_ratio();
        let (sn, sd) =
            if sar.numerator() > 0 && sar.denominator() > 0 { (sar.numerator(), sar.denominator()) } else { (1, 1) };
        let pix: ffmpeg_next::ffi::AVPixelFormat = dec.format().into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={sn}/{sd}",
            dec.width(),
            dec.height(),
            pix as i32,
            time_base.numerator(),
            time_base.denominator().max(1),
        );
        let find = |n: &str| filter::find(n).ok_or(EncodeError::MissingCodec("ffmpeg video filters"));
        graph.add(&find("buffer")?, "in", &args).map_err(ff("video filter input"))?;
        graph.add(&find("buffersink")?, "out", "").map_err(ff("video filter output"))?;
        let mut spec = String::from("yadif=mode=send_frame:deint=interlaced");
        match rotation {
            90 => spec.push_str(",transpose=clock"),
            180 => spec.push_str(",hflip,vflip"),
            270 => spec.push_str(",transpose=cclock"),
            _ => {}
        }
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(ff("building the video filter graph"))?;
        graph.validate().map_err(ff("validating the video filter graph"))?;
        Ok(Self { graph })
    }

    /// Feeds a decoded frame.
    pub fn push(&mut self, f: &frame::Video) -> Result<(), EncodeError> {
        match self.graph.get("in") {
            Some(mut src) => src.source().add(f).map_err(ff("filtering a frame")),
            None => Ok(()),
        }
    }

    /// Signals the end of the stream.
    pub fn flush(&mut self) -> Result<(), EncodeError> {
        match self.graph.get("in") {
            Some(mut src) => src.source().flush().map_err(ff("flushing the video filter")),
            None => Ok(()),
        }
    }

    /// Takes the next filtered frame, if one is ready.
    pub fn pull(&mut self, out: &mut frame::Video) -> bool {
        self.graph.get("out").is_some_and(|mut sink| sink.sink().frame(out).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_applies_sar_then_rotation() {
        assert_eq!(display_geometry(720, 576, (16, 15), 0), DisplayGeometry { width: 768, height: 576, rotation: 0 });
        assert_eq!(display_geometry(640, 360, (0, 1), 90), DisplayGeometry { width: 360, height: 640, rotation: 90 });
        assert_eq!(display_geometry(640, 360, (1, 1), 180), DisplayGeometry { width: 640, height: 360, rotation: 180 });
    }
}
