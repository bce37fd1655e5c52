//! `encoder worker`: takes tasks from the queue one at a time, runs them and
//! reports back, renewing its lease every heartbeat.
//!
//! Encode tasks run in a child process (`encoder run-task`), so a cancelled
//! job or a lost lease stops the work at once (the child is killed) and a
//! crash inside a codec library costs one attempt, not the worker. The child
//! dies with its worker (`PR_SET_PDEATHSIG`). Plan and finalize run in the
//! worker itself. Every worker of a fleet shares the staging directory
//! (`{staging}/{job}/work/{task}`): a multi-machine fleet mounts it (NFS,
//! EFS…), and local inputs must be readable at the same path on every
//! worker; `s3://` inputs are downloaded once to `{staging}/{job}/input/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use origin::{BlockingStore, LocalStore, PublishTarget, StoreLocation};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::job::{self, JobSpec, TaskSpec};
use crate::queue::{now_ms, Cleanup, JobState, Lease, LeaseCheck, Queue, QueueError, S3Input, TaskKind};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shown in task status and lease tokens.
    pub name: String,
    /// Where jobs without a store of their own publish.
    pub store: Option<String>,
    /// The staging directory shared by the fleet.
    pub staging: PathBuf,
    /// Encoder threads per rendition in a task (None: the codec's default).
    pub threads: Option<usize>,
    /// How long a claim lasts without a heartbeat.
    pub lease_ms: i64,
    /// How often a running task renews its lease.
    pub heartbeat_ms: u64,
    /// How long to wait when there is nothing to do.
    pub poll_ms: u64,
    /// First retry delay; doubles with each failed attempt.
    pub backoff_ms: i64,
    /// Exit once the queue is drained instead of waiting for more jobs.
    pub once: bool,
    /// The `encoder` executable that runs encode tasks (`encoder run-task`).
    pub exe: PathBuf,
}

impl WorkerConfig {
    /// Defaults: 15 s leases renewed every 3 s, 2 s first retry delay, 1 s polls.
    pub fn new(name: String, staging: PathBuf, exe: PathBuf) -> Self {
        Self {
            name,
            store: None,
            staging,
            threads: None,
            lease_ms: 15_000,
            heartbeat_ms: 3_000,
            poll_ms: 1_000,
            backoff_ms: 2_000,
            once: false,
            exe,
        }
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    pub succeeded: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub cleaned: u64,
}

/// How one piece of work ended.
enum Ended<T> {
    Done(Result<T, String>),
    Lost,
    JobStopped(JobState),
    Shutdown,
}

/// Runs until `shutdown` resolves (or, with `once`, until the queue is drained).
pub async fn run(
    queue: &Queue,
    cfg: &WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<WorkerStats, QueueError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let work = work(queue, cfg, stop_rx);
    tokio::pin!(work, shutdown);
    tokio::select! {
        out = &mut work => out,
        _ = &mut shutdown => {
            // Let the loop hand back its task and return.
            let _ = stop_tx.send(true);
            work.await
        }
    }
}

/// The work loop, with a `stop` flag that turns true on shutdown.
pub async fn work(
    queue: &Queue,
    cfg: &WorkerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<WorkerStats, QueueError> {
    std::fs::create_dir_all(&cfg.staging)
        .map_err(|e| QueueError::BadRequest(format!("creating staging directory {}: {e}", cfg.staging.display())))?;
    // Multipart uploads a killed publisher left in the default S3 store.
    if let Some(Ok(location)) = cfg.store.as_deref().map(StoreLocation::parse) {
        origin::store::s3::collect_stale_uploads(&location, origin::store::s3::PUBLISHER_GC_AGE).await;
    }
    let mut stats = WorkerStats::default();
    loop {
        if *stop.borrow() {
            return Ok(stats);
        }
        match step(queue, cfg, &mut stop, &mut stats).await {
            Ok(Step::Worked) => continue,
            Ok(Step::Idle) => {}
            Ok(Step::Drained) => return Ok(stats),
            // A lost connection, a deadlock victim, a busy database: the
            // claims are transactions, so trying again later is safe.
            Err(e) => tracing::warn!(error = %e, "queue error; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.poll_ms)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// What one turn of the work loop did.
enum Step {
    Worked,
    Idle,
    Drained,
}

async fn step(
    queue: &Queue,
    cfg: &WorkerConfig,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stats: &mut WorkerStats,
) -> Result<Step, QueueError> {
    let moved = queue.reap_expired(now_ms()).await?;
    if moved > 0 {
        tracing::info!(tasks = moved, "returned tasks with expired leases to the queue");
    }
    if let Some(c) = queue.claim_cleanup(cfg.lease_ms, now_ms()).await? {
        clean_up(queue, cfg, &c).await?;
        stats.cleaned += 1;
        return Ok(Step::Worked);
    }
    if let Some(lease) = queue.claim(&cfg.name, cfg.lease_ms, now_ms()).await? {
        tracing::info!(job = %lease.job_id, task = %lease.name, attempt = lease.attempt, "claimed");
        match run_lease(queue, cfg, &lease, stop).await? {
            Some(true) => stats.succeeded += 1,
            Some(false) => stats.failed += 1,
            None => stats.abandoned += 1,
        }
        return Ok(Step::Worked);
    }
    if cfg.once && queue.drained().await? {
        return Ok(Step::Drained);
    }
    Ok(Step::Idle)
}

/// Runs one leased task to its end. Some(true): succeeded; Some(false):
/// failed (retried later or the job failed); None: given up (lease lost,
/// job stopped, worker shutting down).
async fn run_lease(
    queue: &Queue,
    cfg: &WorkerConfig,
    lease: &Lease,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<bool>, QueueError> {
    let progress = Arc::new(AtomicU64::new(0f64.to_bits()));
    let job_dir = cfg.staging.join(&lease.job_id);
    let work = task_work(cfg, lease, &job_dir, queue, progress.clone());
    // Publishing cannot be interrupted halfway: a stopping worker finishes it.
    let interruptible = lease.task != TaskKind::Finalize;
    let ended = supervise(queue, cfg, lease, work, &progress, stop, interruptible).await?;
    match ended {
        Ended::Done(Ok(published)) => {
            let ok = match (&lease.task, published) {
                (TaskKind::Plan, Published::Planned(tasks)) => queue.complete_plan(lease, &tasks, now_ms()).await?,
                (TaskKind::Finalize, Published::At(location)) => {
                    let ok = queue.complete_job(lease, &location, now_ms()).await?;
                    if ok {
                        remove_dir(&job_dir);
                        tracing::info!(job = %lease.job_id, %location, "published");
                    }
                    ok
                }
                _ => queue.complete_task(lease, now_ms()).await?,
            };
            if !ok {
                tracing::warn!(job = %lease.job_id, task = %lease.name, "finished after losing the lease; result dropped");
                return Ok(None);
            }
            tracing::info!(job = %lease.job_id, task = %lease.name, "succeeded");
            Ok(Some(true))
        }
        Ended::Done(Err(error)) => {
            let state = queue.fail_task(lease, &error, cfg.backoff_ms, now_ms()).await?;
            tracing::warn!(job = %lease.job_id, task = %lease.name, attempt = lease.attempt, %error, job_state = %state, "failed");
            Ok(Some(false))
        }
        Ended::Lost => {
            tracing::warn!(job = %lease.job_id, task = %lease.name, "lease lost; stopped the task");
            Ok(None)
        }
        Ended::JobStopped(state) => {
            queue.abandon_task(lease, now_ms()).await?;
            tracing::info!(job = %lease.job_id, task = %lease.name, %state, "job stopped; stopped the task");
            Ok(None)
        }
        Ended::Shutdown => {
            queue.release_task(lease, now_ms()).await?;
            tracing::info!(job = %lease.job_id, task = %lease.name, "shutting down; task handed back");
            Ok(None)
        }
    }
}

/// What a task produced, besides its staged files.
enum Published {
    Planned(Vec<(String, String, String)>),
    At(String),
    Nothing,
}

/// Drives `work` while renewing the lease; drops (stops) the work when the
/// lease is lost, the job stops, or (if `interruptible`) the worker shuts down.
async fn supervise<T>(
    queue: &Queue,
    cfg: &WorkerConfig,
    lease: &Lease,
    work: impl std::future::Future<Output = Result<T, String>>,
    progress: &AtomicU64,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    interruptible: bool,
) -> Result<Ended<T>, QueueError> {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms.max(1)));
    beat.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return Ok(Ended::Done(out)),
            _ = beat.tick() => {
                let p = f64::from_bits(progress.load(Ordering::Relaxed));
                match queue.heartbeat(lease, p, cfg.lease_ms, now_ms()).await {
                    Ok(LeaseCheck::Held) => {}
                    Ok(LeaseCheck::Lost) => return Ok(Ended::Lost),
                    Ok(LeaseCheck::JobStopped(s)) => return Ok(Ended::JobStopped(s)),
                    // A database hiccup: keep working; the lease covers a few missed beats.
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
            _ = stop.changed(), if interruptible => {
                if *stop.borrow() {
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }
}

/// The work of one task, as a future the supervisor can drop.
async fn task_work(
    cfg: &WorkerConfig,
    lease: &Lease,
    job_dir: &Path,
    queue: &Queue,
    progress: Arc<AtomicU64>,
) -> Result<Published, String> {
    let spec: JobSpec = serde_json::from_str(&lease.job_spec).map_err(|e| format!("job spec in the queue: {e}"))?;
    let input = resolve_input(lease, job_dir).await?;
    let staging = job_dir.join("work");
    std::fs::create_dir_all(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    match &lease.task {
        TaskKind::Plan => {
            let store = store_location(cfg, lease)?;
            let title = spec.title.clone();
            let tasks = blocking(move || {
                let target = open_target(&store)?;
                if target
                    .exists_blocking(&vod::ObjectKey::Catalog(title.clone()))
                    .map_err(|e| format!("checking the store: {e}"))?
                {
                    return Err(format!("title {title} is already published in {store}"));
                }
                job::plan_tasks(&input, &spec).map_err(|e| e.to_string())
            })
            .await?;
            let rows = tasks
                .iter()
                .map(|t| {
                    let kind = match t {
                        TaskSpec::Video { .. } => "video",
                        TaskSpec::Audio => "audio",
                    };
                    let json = serde_json::to_string(t).map_err(|e| e.to_string())?;
                    Ok((kind.to_owned(), t.name(), json))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Published::Planned(rows))
        }
        TaskKind::Encode { spec: task, .. } => {
            run_child(cfg, &input, &lease.job_spec, task, &staging, &progress).await?;
            Ok(Published::Nothing)
        }
        TaskKind::Finalize => {
            let store = store_location(cfg, lease)?;
            let tasks = queue
                .encode_task_specs(&lease.job_id)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|s| serde_json::from_str::<TaskSpec>(s).map_err(|e| format!("task spec in the queue: {e}")))
                .collect::<Result<Vec<_>, String>>()?;
            let title = spec.title.clone();
            let location = store.clone();
            blocking(move || {
                let target = open_target(&store)?;
                job::finalize(&input, &spec, &tasks, &staging, target.as_ref()).map_err(|e| e.to_string())
            })
            .await?;
            Ok(Published::At(catalog_location(&location, &title)))
        }
    }
}

/// Where the catalog of `title` lives in `store`, for status output.
fn catalog_location(store: &str, title: &vod::TitleId) -> String {
    format!("{}/titles/{title}/catalog.json", store.trim_end_matches('/'))
}

fn store_location(cfg: &WorkerConfig, lease: &Lease) -> Result<String, String> {
    lease
        .store
        .clone()
        .or_else(|| cfg.store.clone())
        .ok_or_else(|| "no store: the job names none and this worker was started without --store".to_owned())
}

/// Opens a store for blocking use (call from a blocking thread).
fn open_target(store: &str) -> Result<Box<dyn PublishTarget>, String> {
    let location = StoreLocation::parse(store).map_err(|e| format!("store {store}: {e}"))?;
    Ok(match &location {
        StoreLocation::Local(dir) => Box::new(LocalStore::new(dir)),
        StoreLocation::S3 { .. } => {
            Box::new(BlockingStore::open(&location).map_err(|e| format!("opening store {location}: {e}"))?)
        }
    })
}

/// The source as a local file: the submitted path, or for `s3://` inputs a
/// copy downloaded once into the job's staging directory.
async fn resolve_input(lease: &Lease, job_dir: &Path) -> Result<PathBuf, String> {
    if let Some(s3) = S3Input::parse(&lease.input)? {
        return s3.fetch(&lease.input_hash, &job_dir.join("input")).await;
    }
    let path = PathBuf::from(&lease.input);
    if !path.is_file() {
        return Err(format!(
            "input {} is not readable on this worker (every worker must see local inputs at the same path)",
            lease.input
        ));
    }
    Ok(path)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("task thread: {e}"))?
}

/// Runs `encoder run-task` for one encode task, reading its progress lines.
async fn run_child(
    cfg: &WorkerConfig,
    input: &Path,
    job_spec: &str,
    task: &str,
    staging: &Path,
    progress: &AtomicU64,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&cfg.exe);
    cmd.arg("run-task")
        .arg("--input")
        .arg(input)
        .arg("--spec")
        .arg(job_spec)
        .arg("--task")
        .arg(task)
        .arg("--staging")
        .arg(staging);
    if let Some(n) = cfg.threads {
        cmd.arg("--threads").arg(n.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no Rust state. The
    // child must not outlive a worker that is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting {} run-task: {e}", cfg.exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let err_text = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(p) = line.strip_prefix("progress ").and_then(|p| p.trim().parse::<f64>().ok()) {
            progress.store(p.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        }
    }
    let status = child.wait().await.map_err(|e| format!("waiting for run-task: {e}"))?;
    let err_text = err_text.await.unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = err_text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join("; ");
    Err(if tail.is_empty() { format!("run-task exited with {status}") } else { tail })
}

/// Removes a failed or cancelled job's partial objects and its staging files.
async fn clean_up(queue: &Queue, cfg: &WorkerConfig, c: &Cleanup) -> Result<(), QueueError> {
    // clean_partial leaves a title alone once its catalog exists, so this
    // never touches a published title.
    let mut problem = None;
    match (store_for_cleanup(cfg, c), vod::TitleId::new(c.title.clone())) {
        (Ok(store), Ok(title)) => {
            let r = blocking(move || {
                let target = open_target(&store)?;
                job::clean_partial(&title, target.as_ref()).map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = r {
                problem = Some(e);
            }
        }
        (Err(e), _) => problem = Some(e),
        (_, Err(e)) => problem = Some(e.to_string()),
    }
    if let Some(e) = problem {
        // The cleanup claim expires and another worker (or this one) tries again.
        tracing::warn!(job = %c.job_id, error = %e, "could not remove partial objects; will retry");
        return Ok(());
    }
    remove_dir(&cfg.staging.join(&c.job_id));
    queue.finish_cleanup(&c.job_id, now_ms()).await?;
    tracing::info!(job = %c.job_id, "cleaned up partial output");
    Ok(())
}

fn store_for_cleanup(cfg: &WorkerConfig, c: &Cleanup) -> Result<String, String> {
    c.store.clone().or_else(|| cfg.store.clone()).ok_or_else(|| "no store to clean".to_owned())
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove staging directory");
        }
    }
}
