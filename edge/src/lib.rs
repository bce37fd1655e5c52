//! The edge appliance: an HTTP cache in front of the origin.
//!
//! A request for `/t/{token}/titles/...` has its token checked (`vod::token`)
//! before the cache is touched; then the RAM tier (`memory`) answers, or the
//! fill coalescer (`fill`) fetches the object from upstream once, however many
//! clients are waiting. Responses reuse the origin's HTTP object semantics
//! (Range, ETag/304, HEAD, CORS). `replay` runs a request log through the same
//! tier code without HTTP. This version caches in RAM only; the disk tier is
//! modelled in replay and not yet served.

pub mod config;
pub mod error;
pub mod fill;
pub mod memory;
pub mod metrics;
pub mod replay;
pub mod request_log;
pub mod server;

pub use config::{EdgeConfig, ServeArgs};
pub use error::{EdgeError, Fault};
pub use replay::{ReplayArgs, ReplayReport};
pub use server::run;
