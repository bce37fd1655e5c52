//! The durable encoding job queue: a SQLite file by default (embedded, zero
//! setup) or PostgreSQL for a fleet, both through sqlx with migrations.
//!
//! A job is a row in `jobs`; its work is rows in `tasks`: one `plan` task
//! (the first worker to take it probes the source and inserts the chunk and
//! audio tasks), then `video`/`audio` tasks any worker may take, then one
//! `finalize` task that becomes claimable when every other task succeeded.
//! Workers lease one task at a time with an atomic claim (SQLite: `BEGIN
//! IMMEDIATE`; PostgreSQL: `FOR UPDATE SKIP LOCKED`) and heartbeat while it
//! runs; a lease that is not renewed expires and the task goes back to the
//! queue. Every time is Unix epoch milliseconds passed in by the caller.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

mod input;
mod jobs;
mod lease;
mod submit;

pub use input::S3Input;
pub use jobs::{JobStatus, NewJob, SubmitOutcome, TaskStatus};
pub use lease::{backoff_ms, Cleanup, Lease, LeaseCheck, TaskKind};
pub use submit::{job_id, SubmitRequest, DEFAULT_MAX_ATTEMPTS};

/// The default queue: a SQLite file in the working directory.
pub const DEFAULT_QUEUE: &str = "sqlite://encoder-queue.db";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// What went wrong in the queue, split by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The `--queue` value is not a queue location.
    #[error("queue location {0}")]
    BadLocation(String),
    /// The submission is malformed (bad title, ladder, codec, input…).
    #[error("{0}")]
    BadRequest(String),
    /// No such job.
    #[error("no job {0}")]
    NotFound(String),
    /// The request conflicts with the job's state or with another job.
    #[error("{0}")]
    Conflict(String),
    #[error("queue database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queue migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("queue data: {0}")]
    Corrupt(String),
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True while workers still have something to do for the job.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

impl FromStr for JobState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(QueueError::Corrupt(format!("unknown job state {other:?}"))),
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task is in its life; `waiting` is the finalize task before every
/// other task of its job succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Waiting,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl FromStr for TaskState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "waiting" => Self::Waiting,
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(QueueError::Corrupt(format!("unknown task state {other:?}"))),
        })
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to the queue database.
pub struct Queue {
    backend: Backend,
    location: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("location", &self.location).finish_non_exhaustive()
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$pg` telling
/// which backend it is; the body is compiled once per backend.
macro_rules! with_pool {
    ($q:expr, $pool:ident, $pg:ident => $body:expr) => {
        match &$q.backend {
            $crate::queue::Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::queue::Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}

/// Runs `$body` inside a write transaction bound to `$tx`: `BEGIN IMMEDIATE`
/// on SQLite (takes the write lock up front, so two processes never both read
/// then try to upgrade), a plain transaction on PostgreSQL (row locks do the
/// rest). Commits when the body finishes; an early `return` or `?` rolls back.
macro_rules! write_tx {
    ($q:expr, $tx:ident, $pg:ident => $body:block) => {
        match &$q.backend {
            $crate::queue::Backend::Sqlite(pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::queue::Backend::Postgres(pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

pub(crate) use {with_pool, write_tx};

impl Queue {
    /// Opens (creating if needed) and migrates the queue at `location`:
    /// `sqlite://PATH`, a plain file path (SQLite), or `postgres://…`.
    pub async fn open(location: &str) -> Result<Self, QueueError> {
        let backend = if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(location)
                .map_err(|e| QueueError::BadLocation(format!("{}: {e}", redact(location))))?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Backend::Postgres(pool)
        } else {
            let path = location.strip_prefix("sqlite://").unwrap_or(location);
            if path.is_empty() || path.contains("://") {
                return Err(QueueError::BadLocation(format!(
                    "{location:?}: expected sqlite://PATH, a file path or postgres://…"
                )));
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Backend::Sqlite(pool)
        };
        Ok(Self { backend, location: redact(location) })
    }

    /// The queue's location, without any password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, pool, _pg => pool.close().await)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else { return location.to_owned() };
    let Some((auth, host)) = rest.split_once('@') else { return location.to_owned() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => location.to_owned(),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://enc:hunter2@db:5432/q"), "postgres://enc:***@db:5432/q");
        assert_eq!(redact("postgres://enc@db/q"), "postgres://enc@db/q");
        assert_eq!(redact("sqlite://q.db"), "sqlite://q.db");
    }

    #[test]
    fn states_round_trip() {
        for s in [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            assert_eq!(s.as_str().parse::<JobState>().ok(), Some(s));
        }
        assert!("done".parse::<JobState>().is_err());
        assert!("paused".parse::<TaskState>().is_err());
    }
}
