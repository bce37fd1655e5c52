//! Steering: where should a player fetch a title from?
//!
//! Config-driven edge registry, active health probes, client IP → site by
//! longest-prefix match, rendezvous ranking of healthy edges, signed edge
//! URLs (`GET /v1/play`, `GET /v1/redirect`), and fill plans computed from
//! request logs (`steering fill-plan`).

pub mod config;
pub mod coverage;
pub mod fill;
pub mod health;
pub mod rank;
pub mod server;

pub use config::{Config, ConfigError, Edge, EdgeConfig};
pub use coverage::{CoverageMap, CoverageMatch};
pub use fill::{plan_fill, FillError};
pub use health::{EdgeHealth, HealthState};
pub use rank::{rank, EdgeStatus, RankedEdge};
pub use server::run;

/// Why the steering service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("building the health-probe HTTP client: {0}")]
    ProbeClient(#[from] reqwest::Error),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("health prober task failed: {0}")]
    Prober(#[from] tokio::task::JoinError),
}
