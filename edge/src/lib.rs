//! The edge appliance: an HTTP cache in front of the origin.
//!
//! A request for `/t/{token}/titles/...` has its token checked (`vod::token`)
//! before the cache is touched; then the RAM tier (`memory`) answers, then the
//! disk tier (`disk`, laid out and evicted by the pure `disk_log`), or the
//! fill coalescer (`fill`) fetches the object from upstream once, however many
//! clients are waiting. Responses reuse the origin's HTTP object semantics
//! (Range, ETag/304, HEAD, CORS). `replay` runs a request log through the same
//! tier and policy code without HTTP or files.

pub mod admin;
pub mod bgp;
pub mod breaker;
pub mod config;
pub mod config_check;
pub mod disk;
mod disk_journal;
pub mod disk_log;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod fill;
pub mod fill_stream;
pub mod heartbeat;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod prefill;
pub mod prefill_rate;
pub mod prefill_report;
pub mod prefill_window;
pub mod ram_dir;
pub mod replay;
pub mod request_log;
pub mod server;
pub mod upstream;

pub use config::{EdgeConfig, ServeArgs};
pub use error::{EdgeError, Fault};
pub use replay::{ReplayArgs, ReplayReport};
pub use server::run;
