//! Tasks as workers see them: claim one with a lease, renew it while the
//! work runs, report success or failure, clean up after failed and
//! cancelled jobs. A worker holds a lease by its random token; once the
//! lease expired and another worker claimed the task, every write of the
//! first worker matches no row and it learns it lost the task.

use super::{write_tx, JobState, Queue, QueueError};

/// What kind of work a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// Probe the source and insert the encode tasks.
    Plan,
    /// Encode one chunk of video or the audio (`video` / `audio`), spec as JSON.
    Encode { kind: String, spec: String },
    /// Join the staged output and publish it, catalog last.
    Finalize,
}

/// A task claimed by a worker, with what it needs to know of its job.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: String,
    pub seq: i64,
    pub name: String,
    pub task: TaskKind,
    /// This attempt's number, from 1.
    pub attempt: i64,
    pub token: String,
    pub title: String,
    pub input: String,
    pub input_hash: String,
    pub job_spec: String,
    pub store: Option<String>,
    pub max_attempts: i64,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Still ours; keep going.
    Held,
    /// The lease expired and the task went to another worker (or back to the queue).
    Lost,
    /// The job was cancelled or failed elsewhere: stop.
    JobStopped(JobState),
}

/// A failed or cancelled job whose leftovers a worker must remove.
#[derive(Debug, Clone)]
pub struct Cleanup {
    pub job_id: String,
    pub title: String,
    pub store: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    job_id: String,
    seq: i64,
    kind: String,
    name: String,
    spec: Option<String>,
    attempts: i64,
}

#[derive(sqlx::FromRow)]
struct LeaseJobRow {
    title: String,
    input: String,
    input_hash: String,
    spec: String,
    store: Option<String>,
    max_attempts: i64,
}

/// Delay before attempt `attempt + 1` after attempt `attempt` failed.
pub fn backoff_ms(base_ms: i64, attempt: i64) -> i64 {
    base_ms.saturating_mul(1i64 << (attempt - 1).clamp(0, 20))
}

/// Locks the job row for the rest of the transaction (PostgreSQL; SQLite's
/// `BEGIN IMMEDIATE` already holds the database's write lock).
macro_rules! lock_job {
    ($tx:ident, $pg:expr, $job_id:expr) => {
        if $pg {
            sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind($job_id).execute(&mut *$tx).await?;
        }
    };
}

/// Marks the leased task succeeded; evaluates to false if the lease was lost.
macro_rules! finish_task {
    ($tx:ident, $lease:expr, $now:expr) => {
        sqlx::query(
            "UPDATE tasks SET state = 'succeeded', progress = 1, lease_token = NULL, finished_ms = $1 \
             WHERE job_id = $2 AND seq = $3 AND lease_token = $4 AND state = 'running'",
        )
        .bind($now)
        .bind(&$lease.job_id)
        .bind($lease.seq)
        .bind(&$lease.token)
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            > 0
    };
}

/// Makes the finalize task claimable once every other task of the job succeeded.
macro_rules! promote_finalize {
    ($tx:ident, $job_id:expr) => {
        sqlx::query(
            "UPDATE tasks SET state = 'queued' WHERE job_id = $1 AND kind = 'finalize' AND state = 'waiting' \
             AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.job_id = $1 AND o.kind <> 'finalize' \
                             AND o.state <> 'succeeded')",
        )
        .bind($job_id)
        .execute(&mut *$tx)
        .await?
    };
}

/// Fails an active job with `reason` and drops its tasks that have not started.
macro_rules! fail_job {
    ($tx:ident, $job_id:expr, $reason:expr, $now:expr) => {
        let failed = sqlx::query(
            "UPDATE jobs SET state = 'failed', last_error = $2, updated_ms = $3, finished_ms = $3 \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind($job_id)
        .bind($reason)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        if failed.rows_affected() > 0 {
            sqlx::query("UPDATE tasks SET state = 'cancelled' WHERE job_id = $1 AND state IN ('queued', 'waiting')")
                .bind($job_id)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

impl Queue {
    /// Puts back tasks whose lease expired: to the queue with the reason, or,
    /// past the attempt limit, fails them and their job. Tasks of jobs that
    /// already stopped are marked cancelled. Returns how many tasks moved.
    pub async fn reap_expired(&self, now: i64) -> Result<u64, QueueError> {
        let moved = write_tx!(self, tx, _pg => {
            let mut moved = sqlx::query(
                "UPDATE tasks SET state = 'cancelled', lease_token = NULL, finished_ms = $1 \
                 WHERE state = 'running' AND lease_until < $1 \
                 AND job_id IN (SELECT id FROM jobs WHERE state NOT IN ('queued', 'running'))",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let exhausted: Vec<(String, String, i64)> = sqlx::query_as(
                "UPDATE tasks SET state = 'failed', lease_token = NULL, finished_ms = $1, \
                 last_error = 'lease expired: worker ' || COALESCE(worker, '?') || ' stopped renewing it' \
                 WHERE state = 'running' AND lease_until < $1 \
                 AND attempts >= (SELECT max_attempts FROM jobs WHERE jobs.id = tasks.job_id) \
                 RETURNING job_id, name, attempts",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for (job_id, name, attempts) in &exhausted {
                let reason =
                    format!("task {name} failed after {attempts} attempts: its workers stopped renewing their leases");
                fail_job!(tx, job_id, &reason, now);
            }
            moved += exhausted.len() as u64;
            moved += sqlx::query(
                "UPDATE tasks SET state = 'queued', lease_token = NULL, not_before = $1, \
                 last_error = 'lease expired: worker ' || COALESCE(worker, '?') || ' stopped renewing it' \
                 WHERE state = 'running' AND lease_until < $1",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            moved
        });
        Ok(moved)
    }

    /// Claims the next runnable task for `worker`, leased until `now + lease_ms`.
    pub async fn claim(&self, worker: &str, lease_ms: i64, now: i64) -> Result<Option<Lease>, QueueError> {
        let token = new_token(worker, now);
        write_tx!(self, tx, pg => {
            let lock = if pg { " FOR UPDATE OF t SKIP LOCKED" } else { "" };
            let sql = format!(
                "UPDATE tasks SET state = 'running', attempts = attempts + 1, worker = $1, lease_token = $2, \
                 lease_until = $3, started_ms = $4, progress = 0 \
                 WHERE (job_id, seq) = (SELECT t.job_id, t.seq FROM tasks t JOIN jobs j ON j.id = t.job_id \
                   WHERE t.state = 'queued' AND t.not_before <= $4 AND j.state IN ('queued', 'running') \
                   ORDER BY j.created_ms, j.id, t.seq LIMIT 1{lock}) \
                 RETURNING job_id, seq, kind, name, spec, attempts"
            );
            let row: Option<ClaimedRow> = sqlx::query_as(&sql)
                .bind(worker)
                .bind(&token)
                .bind(now + lease_ms)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            sqlx::query("UPDATE jobs SET state = 'running', updated_ms = $2 WHERE id = $1 AND state = 'queued'")
                .bind(&row.job_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let job: LeaseJobRow = sqlx::query_as(
                "SELECT title, input, input_hash, spec, store, max_attempts FROM jobs WHERE id = $1",
            )
            .bind(&row.job_id)
            .fetch_one(&mut *tx)
            .await?;
            let task = match row.kind.as_str() {
                "plan" => TaskKind::Plan,
                "finalize" => TaskKind::Finalize,
                kind => TaskKind::Encode {
                    kind: kind.to_owned(),
                    spec: row.spec.ok_or_else(|| QueueError::Corrupt(format!("task {} has no spec", row.name)))?,
                },
            };
            Ok(Some(Lease {
                job_id: row.job_id,
                seq: row.seq,
                name: row.name,
                task,
                attempt: row.attempts,
                token,
                title: job.title,
                input: job.input,
                input_hash: job.input_hash,
                job_spec: job.spec,
                store: job.store,
                max_attempts: job.max_attempts,
            }))
        })
    }

    /// Renews the lease and records progress (0.0 to 1.0).
    pub async fn heartbeat(
        &self,
        lease: &Lease,
        progress: f64,
        lease_ms: i64,
        now: i64,
    ) -> Result<LeaseCheck, QueueError> {
        write_tx!(self, tx, _pg => {
            let renewed = sqlx::query(
                "UPDATE tasks SET lease_until = $1, progress = $2 \
                 WHERE job_id = $3 AND seq = $4 AND lease_token = $5 AND state = 'running'",
            )
            .bind(now + lease_ms)
            .bind(progress.clamp(0.0, 1.0))
            .bind(&lease.job_id)
            .bind(lease.seq)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if renewed == 0 {
                return Ok(LeaseCheck::Lost);
            }
            let (state,): (String,) =
                sqlx::query_as("SELECT state FROM jobs WHERE id = $1").bind(&lease.job_id).fetch_one(&mut *tx).await?;
            let state: JobState = state.parse()?;
            Ok(if state.is_active() { LeaseCheck::Held } else { LeaseCheck::JobStopped(state) })
        })
    }

    /// Finishes the plan task: inserts the encode tasks (`(kind, name, spec
    /// JSON)`, run in this order) and the finalize task that waits for them.
    /// False if the lease was lost meanwhile (nothing is inserted).
    pub async fn complete_plan(
        &self,
        lease: &Lease,
        tasks: &[(String, String, String)],
        now: i64,
    ) -> Result<bool, QueueError> {
        write_tx!(self, tx, pg => {
            lock_job!(tx, pg, &lease.job_id);
            if !finish_task!(tx, lease, now) {
                return Ok(false);
            }
            for (i, (kind, name, spec)) in tasks.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO tasks (job_id, seq, kind, name, spec, state, not_before) \
                     VALUES ($1, $2, $3, $4, $5, 'queued', 0)",
                )
                .bind(&lease.job_id)
                .bind(i as i64 + 1)
                .bind(kind)
                .bind(name)
                .bind(spec)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO tasks (job_id, seq, kind, name, spec, state, not_before) \
                 VALUES ($1, $2, 'finalize', 'finalize', NULL, 'waiting', 0)",
            )
            .bind(&lease.job_id)
            .bind(tasks.len() as i64 + 1)
            .execute(&mut *tx)
            .await?;
            promote_finalize!(tx, &lease.job_id);
            Ok(true)
        })
    }

    /// Marks an encode task done; when it was the last one, the finalize
    /// task becomes claimable. False if the lease was lost meanwhile.
    pub async fn complete_task(&self, lease: &Lease, now: i64) -> Result<bool, QueueError> {
        write_tx!(self, tx, pg => {
            // The job row lock serialises the completions of one job, so the
            // last one always sees the others and promotes the finalize task.
            lock_job!(tx, pg, &lease.job_id);
            if !finish_task!(tx, lease, now) {
                return Ok(false);
            }
            promote_finalize!(tx, &lease.job_id);
            Ok(true)
        })
    }

    /// Marks the finalize task and its job succeeded, published at `published`.
    pub async fn complete_job(&self, lease: &Lease, published: &str, now: i64) -> Result<bool, QueueError> {
        write_tx!(self, tx, pg => {
            lock_job!(tx, pg, &lease.job_id);
            if !finish_task!(tx, lease, now) {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE jobs SET state = 'succeeded', published = $2, last_error = NULL, updated_ms = $3, \
                 finished_ms = $3 WHERE id = $1",
            )
            .bind(&lease.job_id)
            .bind(published)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        })
    }

    /// Records a failed attempt: the task is retried after `backoff_ms(base, attempt)`,
    /// or, at the attempt limit, fails and fails its job with the reason.
    /// Returns the job's state afterwards (`Failed` when this was the last try).
    pub async fn fail_task(
        &self,
        lease: &Lease,
        error: &str,
        backoff_base_ms: i64,
        now: i64,
    ) -> Result<JobState, QueueError> {
        write_tx!(self, tx, pg => {
            lock_job!(tx, pg, &lease.job_id);
            let last = lease.attempt >= lease.max_attempts;
            let (state, not_before) =
                if last { ("failed", now) } else { ("queued", now + backoff_ms(backoff_base_ms, lease.attempt)) };
            let changed = sqlx::query(
                "UPDATE tasks SET state = $1, not_before = $2, last_error = $3, lease_token = NULL, finished_ms = $4 \
                 WHERE job_id = $5 AND seq = $6 AND lease_token = $7 AND state = 'running'",
            )
            .bind(state)
            .bind(not_before)
            .bind(error)
            .bind(now)
            .bind(&lease.job_id)
            .bind(lease.seq)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed > 0 && last {
                let reason = format!("task {} failed after {} attempts: {error}", lease.name, lease.attempt);
                fail_job!(tx, &lease.job_id, &reason, now);
            }
            let (state,): (String,) =
                sqlx::query_as("SELECT state FROM jobs WHERE id = $1").bind(&lease.job_id).fetch_one(&mut *tx).await?;
            state.parse()
        })
    }

    /// Gives up a task because its job stopped (cancelled or failed elsewhere).
    pub async fn abandon_task(&self, lease: &Lease, now: i64) -> Result<(), QueueError> {
        write_tx!(self, tx, _pg => {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', lease_token = NULL, finished_ms = $1 \
                 WHERE job_id = $2 AND seq = $3 AND lease_token = $4 AND state = 'running'",
            )
            .bind(now)
            .bind(&lease.job_id)
            .bind(lease.seq)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Hands a task back without counting the attempt (the worker is shutting down).
    pub async fn release_task(&self, lease: &Lease, now: i64) -> Result<(), QueueError> {
        write_tx!(self, tx, _pg => {
            sqlx::query(
                "UPDATE tasks SET state = 'queued', attempts = attempts - 1, lease_token = NULL, not_before = $1, \
                 progress = 0 WHERE job_id = $2 AND seq = $3 AND lease_token = $4 AND state = 'running'",
            )
            .bind(now)
            .bind(&lease.job_id)
            .bind(lease.seq)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// The specs (JSON) of a job's encode tasks, in plan order.
    pub async fn encode_task_specs(&self, job_id: &str) -> Result<Vec<String>, QueueError> {
        let rows: Vec<(Option<String>,)> = super::with_pool!(self, pool, _pg => {
            sqlx::query_as("SELECT spec FROM tasks WHERE job_id = $1 AND kind NOT IN ('plan', 'finalize') ORDER BY seq")
                .bind(job_id)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(s,)| s.ok_or_else(|| QueueError::Corrupt(format!("job {job_id} has an encode task without a spec"))))
            .collect()
    }

    /// Claims the cleanup of a failed or cancelled job once none of its tasks
    /// still holds a live lease; the claim itself expires after `lease_ms`.
    pub async fn claim_cleanup(&self, lease_ms: i64, now: i64) -> Result<Option<Cleanup>, QueueError> {
        write_tx!(self, tx, pg => {
            let lock = if pg { " FOR UPDATE OF j SKIP LOCKED" } else { "" };
            let sql = format!(
                "UPDATE jobs SET cleanup_lease_until = $2 WHERE id = (SELECT j.id FROM jobs j \
                   WHERE j.state IN ('failed', 'cancelled') AND j.cleaned_ms IS NULL \
                   AND (j.cleanup_lease_until IS NULL OR j.cleanup_lease_until < $1) \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'running' \
                                   AND t.lease_until >= $1) \
                   ORDER BY j.updated_ms LIMIT 1{lock}) \
                 RETURNING id, title, store"
            );
            let row: Option<(String, String, Option<String>)> =
                sqlx::query_as(&sql).bind(now).bind(now + lease_ms).fetch_optional(&mut *tx).await?;
            Ok(row.map(|(job_id, title, store)| Cleanup { job_id, title, store }))
        })
    }

    /// Records that a job's leftovers are gone.
    pub async fn finish_cleanup(&self, job_id: &str, now: i64) -> Result<(), QueueError> {
        write_tx!(self, tx, _pg => {
            sqlx::query("UPDATE jobs SET cleaned_ms = $2, cleanup_lease_until = NULL WHERE id = $1")
                .bind(job_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// True when no job is queued or running and every failed or cancelled
    /// job has been cleaned up: nothing is left for any worker.
    pub async fn drained(&self) -> Result<bool, QueueError> {
        let (n,): (i64,) = super::with_pool!(self, pool, _pg => {
            sqlx::query_as(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running') \
                 OR (state IN ('failed', 'cancelled') AND cleaned_ms IS NULL)",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(n == 0)
    }
}

/// A lease token nobody else will hold: the worker, the time and a counter.
fn new_token(worker: &str, now: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{worker}/{now}/{n}")
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_per_attempt() {
        assert_eq!(backoff_ms(500, 1), 500);
        assert_eq!(backoff_ms(500, 2), 1000);
        assert_eq!(backoff_ms(500, 3), 2000);
        assert_eq!(backoff_ms(500, 0), 500);
        assert!(backoff_ms(i64::MAX / 2, 30) > 0);
    }
}
