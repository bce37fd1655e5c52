//! Jobs as operators see them: submit, status, list, cancel.

use serde::Serialize;

use super::{with_pool, write_tx, JobState, Queue, QueueError, TaskState};

/// A job to insert: the submitter has validated and hashed everything.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Derived from the submission (input hash, title, spec, store), so the
    /// same submission twice names the same job.
    pub id: String,
    pub title: String,
    /// A local path every worker can read, or `s3://bucket/key`.
    pub input: String,
    /// `sha256:HEX` of the file bytes, or `s3:ETAG:SIZE`.
    pub input_hash: String,
    /// The job spec as JSON.
    pub spec: String,
    /// Where to publish; `None`: the worker's `--store`.
    pub store: Option<String>,
    /// Attempts per task before the job fails.
    pub max_attempts: i64,
}

/// What a submission did.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitOutcome {
    pub id: String,
    /// False when the same submission was already queued, running or done.
    pub created: bool,
    pub state: JobState,
}

/// One task of a job, as shown by `encoder status`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub seq: i64,
    pub kind: String,
    pub name: String,
    pub state: TaskState,
    /// 0.0 to 1.0.
    pub progress: f64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    /// A failed attempt is retried no earlier than this (epoch ms).
    pub retry_at_ms: Option<i64>,
}

/// A job and its tasks, as shown by `encoder status` and `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub title: String,
    pub state: JobState,
    pub input: String,
    pub input_hash: String,
    pub store: Option<String>,
    pub spec: serde_json::Value,
    /// How many times the job was queued (a failed or cancelled job submitted again runs again).
    pub runs: i64,
    /// Task attempts so far, over all tasks of the current run.
    pub attempts: i64,
    pub max_attempts: i64,
    /// Mean task progress, 0.0 to 1.0 (the plan task alone until the job is planned).
    pub progress: f64,
    pub last_error: Option<String>,
    /// Where the title's catalog was published, once the job succeeded.
    pub published: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    /// For failed and cancelled jobs: whether partial objects and staging files were removed.
    pub cleaned: bool,
    pub tasks: Vec<TaskStatus>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    title: String,
    state: String,
    input: String,
    input_hash: String,
    spec: String,
    store: Option<String>,
    runs: i64,
    max_attempts: i64,
    last_error: Option<String>,
    published: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    finished_ms: Option<i64>,
    cleaned_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    seq: i64,
    kind: String,
    name: String,
    state: String,
    progress: f64,
    attempts: i64,
    last_error: Option<String>,
    worker: Option<String>,
    not_before: i64,
}

const JOB_COLUMNS: &str = "id, title, state, input, input_hash, spec, store, runs, max_attempts, last_error, \
                           published, created_ms, updated_ms, finished_ms, cleaned_ms";
const TASK_COLUMNS: &str = "seq, kind, name, state, progress, attempts, last_error, worker, not_before";

fn status_of(job: JobRow, tasks: Vec<TaskRow>) -> Result<JobStatus, QueueError> {
    let tasks = tasks
        .into_iter()
        .map(|t| {
            let state: TaskState = t.state.parse()?;
            Ok(TaskStatus {
                seq: t.seq,
                kind: t.kind,
                name: t.name,
                retry_at_ms: (state == TaskState::Queued && t.attempts > 0).then_some(t.not_before),
                state,
                progress: t.progress,
                attempts: t.attempts,
                last_error: t.last_error,
                worker: t.worker,
            })
        })
        .collect::<Result<Vec<_>, QueueError>>()?;
    let state: JobState = job.state.parse()?;
    let progress = match state {
        JobState::Succeeded => 1.0,
        _ if tasks.is_empty() => 0.0,
        _ => tasks.iter().map(|t| t.progress).sum::<f64>() / tasks.len() as f64,
    };
    Ok(JobStatus {
        spec: serde_json::from_str(&job.spec).map_err(|e| QueueError::Corrupt(format!("job {} spec: {e}", job.id)))?,
        id: job.id,
        title: job.title,
        state,
        input: job.input,
        input_hash: job.input_hash,
        store: job.store,
        runs: job.runs,
        attempts: tasks.iter().map(|t| t.attempts).sum(),
        max_attempts: job.max_attempts,
        progress,
        last_error: job.last_error,
        published: job.published,
        created_ms: job.created_ms,
        updated_ms: job.updated_ms,
        finished_ms: job.finished_ms,
        cleaned: job.cleaned_ms.is_some(),
        tasks,
    })
}

impl Queue {
    /// Inserts a job with its plan task, or finds the same submission: an
    /// active or succeeded job with this id is returned as it is; a failed or
    /// cancelled one (once cleaned up) is queued again. Refused while another
    /// job for the same title is active.
    pub async fn submit(&self, job: &NewJob, now: i64) -> Result<SubmitOutcome, QueueError> {
        write_tx!(self, tx, pg => {
            let lock = if pg { " FOR UPDATE" } else { "" };
            let sql = format!("SELECT state, cleaned_ms FROM jobs WHERE id = $1{lock}");
            let existing: Option<(String, Option<i64>)> =
                sqlx::query_as(&sql).bind(&job.id).fetch_optional(&mut *tx).await?;
            let rerun = match existing {
                Some((state, cleaned)) => {
                    let state: JobState = state.parse()?;
                    if state.is_active() || state == JobState::Succeeded {
                        return Ok(SubmitOutcome { id: job.id.clone(), created: false, state });
                    }
                    if cleaned.is_none() {
                        return Err(QueueError::Conflict(format!(
                            "job {} {state} and its partial output is still being cleaned up by a worker; submit again once \
                             `encoder status {}` shows it cleaned",
                            job.id, job.id
                        )));
                    }
                    true
                }
                None => false,
            };
            // A stopped job of the title whose cleanup is pending would delete
            // this job's objects from under it: wait for the cleanup too.
            let other: Option<(String, String)> = sqlx::query_as(
                "SELECT id, state FROM jobs WHERE title = $1 AND id <> $2 AND (state IN ('queued', 'running') \
                 OR (state IN ('failed', 'cancelled') AND cleaned_ms IS NULL))",
            )
            .bind(&job.title)
            .bind(&job.id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((other, state)) = other {
                return Err(QueueError::Conflict(if state == "queued" || state == "running" {
                    format!(
                        "title {} already has an active job {other} with a different input or settings; cancel it \
                         first (`encoder cancel {other}`) or wait for it to finish",
                        job.title
                    )
                } else {
                    format!(
                        "title {} has a {state} job {other} whose partial output a worker has not removed yet; \
                         submit again once it is cleaned",
                        job.title
                    )
                }));
            }
            if rerun {
                sqlx::query("DELETE FROM tasks WHERE job_id = $1").bind(&job.id).execute(&mut *tx).await?;
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', runs = runs + 1, last_error = NULL, published = NULL, \
                     updated_ms = $2, finished_ms = NULL, cleaned_ms = NULL, cleanup_lease_until = NULL, \
                     max_attempts = $3 WHERE id = $1",
                )
                .bind(&job.id)
                .bind(now)
                .bind(job.max_attempts)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO jobs (id, title, input, input_hash, spec, store, state, runs, max_attempts, \
                     created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, 'queued', 1, $7, $8, $8)",
                )
                .bind(&job.id)
                .bind(&job.title)
                .bind(&job.input)
                .bind(&job.input_hash)
                .bind(&job.spec)
                .bind(&job.store)
                .bind(job.max_attempts)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO tasks (job_id, seq, kind, name, spec, state, not_before) \
                 VALUES ($1, 0, 'plan', 'plan', NULL, 'queued', 0)",
            )
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            Ok(SubmitOutcome { id: job.id.clone(), created: true, state: JobState::Queued })
        })
    }

    /// The job `id` and its tasks.
    pub async fn status(&self, id: &str) -> Result<JobStatus, QueueError> {
        with_pool!(self, pool, _pg => {
            let job: Option<JobRow> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let job = job.ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
            let tasks: Vec<TaskRow> =
                sqlx::query_as(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = $1 ORDER BY seq"))
                    .bind(id)
                    .fetch_all(pool)
                    .await?;
            status_of(job, tasks)
        })
    }

    /// The newest `limit` jobs, newest first.
    pub async fn list(&self, limit: i64) -> Result<Vec<JobStatus>, QueueError> {
        let ids: Vec<(String,)> = with_pool!(self, pool, _pg => {
            sqlx::query_as("SELECT id FROM jobs ORDER BY created_ms DESC, id LIMIT $1").bind(limit).fetch_all(pool).await?
        });
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            out.push(self.status(&id).await?);
        }
        Ok(out)
    }

    /// Cancels an active job: its queued tasks are dropped, running workers
    /// stop at their next heartbeat, and a worker then removes its partial
    /// objects and staging files. Refused once the job is publishing.
    pub async fn cancel(&self, id: &str, now: i64) -> Result<(), QueueError> {
        write_tx!(self, tx, pg => {
            let lock = if pg { " FOR UPDATE" } else { "" };
            let state: Option<(String,)> = sqlx::query_as(&format!("SELECT state FROM jobs WHERE id = $1{lock}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let state: JobState = state.ok_or_else(|| QueueError::NotFound(id.to_owned()))?.0.parse()?;
            if !state.is_active() {
                return Err(QueueError::Conflict(format!("job {id} already {state}; nothing to cancel")));
            }
            let publishing: Option<(i64,)> = sqlx::query_as(
                "SELECT seq FROM tasks WHERE job_id = $1 AND kind = 'finalize' AND state = 'running'",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if publishing.is_some() {
                return Err(QueueError::Conflict(format!(
                    "job {id} is publishing its title; too late to cancel"
                )));
            }
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', last_error = 'cancelled by an operator', updated_ms = $2, \
                 finished_ms = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE tasks SET state = 'cancelled' WHERE job_id = $1 AND state IN ('queued', 'waiting')")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }
}
