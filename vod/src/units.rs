//! Newtypes for units so bits, bytes and milliseconds never mix as bare integers.

use serde::{Deserialize, Serialize};

/// A bitrate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bitrate(pub u64);

impl Bitrate {
    /// From kilobits per second.
    pub const fn from_kbps(kbps: u64) -> Self {
        Self(kbps * 1000)
    }
    /// Bits per second.
    pub const fn bps(self) -> u64 {
        self.0
    }
    /// Kilobits per second, rounded down.
    pub const fn kbps(self) -> u64 {
        self.0 / 1000
    }
}

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteCount(pub u64);

/// A duration or timestamp in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// Seconds as a float, for manifests.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}
