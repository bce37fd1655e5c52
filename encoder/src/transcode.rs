//! Opening a source, and the settings of a one-process encode
//! (`encode_and_publish`). The decode-once, encode-every-rung pipeline lives in
//! `chunk`, which runs it over one chunk of segments at a time.

use std::path::Path;

use ffmpeg_next::{format, media};

use crate::error::{ff, EncodeError};

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
