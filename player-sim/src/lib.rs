//! Player simulation: ABR rules behind one interface, a trace-driven simulator
//! on a virtual clock (Sabre's model), and a live HTTP player that plays
//! sessions through steering and edges and reports QoE the same way.
//!
//! Rules (`abr`): Sabre's `throughput`, `bola`, `bolae`, `dynamic` and
//! `dynamicdash` (reproducing Sabre's published figures), BBA-0, RobustMPC,
//! `ours` (MPC on the player's own model; see `abr::ours` for how it was
//! tuned and what it measured), and the offline optimum (`optimal`, dynamic
//! programming over the known trace, simulation only). QoE per session
//! includes the linear QoE of MPC/Pensieve (`report`). Traces: Sabre JSON,
//! mahimahi and Pensieve logs (`load`); movies: the traces folder's format or
//! one codec's ladder of one of our `catalog.json` files. `plot` draws CDFs
//! per rule as SVG or PNG.

pub mod abr;
pub mod bench;
pub mod estimate;
pub mod hls;
pub mod live;
pub mod load;
pub mod network;
pub mod optimal;
pub mod playback;
mod player;
pub mod plot;
pub mod report;
pub mod shaping;
pub mod sim;

pub use abr::{Abr, AbrConfig, AbrContext, AbrKind, Decision, DownloadProgress};
pub use live::{LiveConfig, LiveReport};
pub use sim::{simulate, simulate_all, simulate_with, SimConfig, SimOutcome, SimReport};
