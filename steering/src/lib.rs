//! Steering: where should a player fetch a title from?
//!
//! - [`registry`]: edges from config or registered by heartbeat; probes,
//!   heartbeats, drain and a circuit breaker decide who is in (pure).
//! - [`coverage`]: client IP → site by longest-prefix match over the edges'
//!   prefixes plus a coverage file (CSV or Traffic Control JSON), reloaded
//!   when it changes.
//! - [`mod@decide`]: the ranking, a pure function of (client, title, registry,
//!   policy, now) with a reason per entry (`site-match`, `holds-title`,
//!   `hash-owner`, `overloaded-skip`, `fallback-origin`, …).
//! - [`content_steering`]: HLS/DASH content-steering manifests and the
//!   master-playlist / MPD rewrites that point players at them.
//! - [`server`]: `GET /v1/play/{title}`, `GET /v1/redirect/{title}/{path}`,
//!   `GET /v1/steering/{title}`, `GET /v1/dash/{title}/manifest.mpd` (the
//!   MPD with content steering), `POST /v1/heartbeat`, `GET /v1/edges`,
//!   `GET /health`.
//! - [`enroll`]: enrolled edges (`steering edges add|revoke|list`,
//!   `POST /v1/enroll`) and the signed requests they make.
//! - [`fill`]: fill plans from request logs (`steering fill-plan`), per edge
//!   or per site with rendezvous placement; [`forecast`]: tomorrow's demand
//!   from a site's daily history plus launch hints.

#[doc(hidden)]
pub mod bench;
pub mod client_ip;
pub mod config;
pub mod content_steering;
pub mod coverage;
pub mod decide;
pub mod enroll;
pub mod fill;
pub mod forecast;
pub mod health;
pub mod popularity;
pub mod rank;
pub mod registry;
pub mod server;

pub use config::{Config, ConfigError, Edge, EdgeConfig};
pub use coverage::{CoverageMap, CoverageMatch};
pub use decide::{decide, Choice, Policy, Reason, Target};
pub use fill::{plan_fill, FillError};
pub use health::{EdgeHealth, HealthState};
pub use rank::rendezvous_weight;
pub use registry::{OutReason, Registry, RegistrySettings};
pub use server::run;

/// Why the steering service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Coverage(#[from] coverage::CoverageError),
    #[error("building the health-probe HTTP client: {0}")]
    ProbeClient(#[from] reqwest::Error),
    #[error(transparent)]
    Popularity(#[from] popularity::PopularityError),
    #[error(transparent)]
    Enroll(#[from] enroll::EnrollError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("health prober task failed: {0}")]
    Prober(#[from] tokio::task::JoinError),
}
