//! A receive-only BGP-4 speaker: it peers with an ISP's router, learns the
//! IPv4 and IPv6 unicast prefixes the router announces, and keeps them in a
//! table the edge reports to steering. It never announces anything.
//!
//! `codec` is the pure message layer (RFC 4271, 4760, 6793; UPDATE in `update`), `table` the pure
//! per-peer prefix table with its grace period, `speaker` the session over TCP.

pub mod codec;
pub mod speaker;
pub mod table;
pub mod update;

pub use codec::{Message, Notification};
pub use speaker::{SessionState, Speaker, SpeakerConfig, Transport};
pub use table::RouteTable;
