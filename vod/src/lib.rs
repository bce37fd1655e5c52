//! Pure types of the video delivery system. No I/O, no async runtime: every
//! decision here is a plain function that the services call and tests drive
//! directly.

pub mod catalog;
pub mod content_steering;
pub mod cors;
pub mod edge_auth;
pub mod id;
pub mod key;
pub mod ladder;
pub mod log;
pub mod manifest;
pub mod plan;
pub mod range;
pub mod steering;
pub mod token;
pub mod trace;
pub mod units;

pub use catalog::{Catalog, MediaKind, Rendition, SegmentInfo};
pub use id::{IdError, RenditionId, TitleId};
pub use key::{KeyError, ObjectKey};
pub use range::{ByteRange, RangeOutcome};
pub use units::{Bitrate, ByteCount, Millis};
