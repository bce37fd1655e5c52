//! Player simulation: ABR rules behind one interface, a trace-driven simulator
//! on a virtual clock (Sabre's model), and a live HTTP player that plays
//! sessions through steering and edges and reports QoE the same way.

pub mod abr;
pub mod estimate;
pub mod hls;
pub mod live;
pub mod load;
pub mod network;
pub mod playback;
mod player;
pub mod report;
pub mod shaping;
pub mod sim;

pub use abr::{Abr, AbrConfig, AbrContext, AbrKind, Decision, DownloadProgress};
pub use live::{LiveConfig, LiveReport};
pub use sim::{simulate, simulate_all, SimConfig, SimOutcome, SimReport};
