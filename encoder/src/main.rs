//! `encoder encode | submit | status | list | cancel | serve | worker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use encoder::queue::{now_ms, JobStatus, Queue, SubmitRequest, DEFAULT_QUEUE};
use encoder::worker::WorkerConfig;
use encoder::EncodeSettings;
use origin::{BlockingStore, LocalStore, PublishTarget, StoreLocation};
use vod::TitleId;

#[derive(Parser)]
#[command(about = "Encodes titles into CMAF ABR ladders with HLS and DASH manifests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--queue`: where the job queue lives.
#[derive(clap::Args)]
struct QueueArg {
    /// The job queue: sqlite://PATH or a file path (SQLite, the default), or
    /// postgres://user:password@host/db for a fleet.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    queue: String,
}

#[derive(Subcommand)]
enum Command {
    /// Encode one source file and publish it to a store (a directory or S3).
    Encode {
        /// Source media file.
        #[arg(long)]
        input: PathBuf,
        /// Title id: [a-z0-9][a-z0-9_-]{0,63}.
        #[arg(long)]
        title: String,
        /// The origin's object store: a directory, or s3://bucket/prefix
        /// (AWS_ENDPOINT_URL, AWS_REGION, credentials from the environment).
        #[arg(long)]
        store: String,
        /// Segment duration in seconds.
        #[arg(long, default_value_t = 4.0)]
        segment_seconds: f64,
        /// x264 preset.
        #[arg(long, default_value = "veryfast")]
        preset: String,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Queue an encode job; prints its id. The same submission twice is one job.
    Submit {
        #[command(flatten)]
        queue: QueueArg,
        /// Source: a file every worker can read at this path, or s3://bucket/key
        /// (AWS_ENDPOINT_URL, AWS_REGION, credentials from the environment).
        #[arg(long)]
        input: String,
        /// Title id: [a-z0-9][a-z0-9_-]{0,63}.
        #[arg(long)]
        title: String,
        /// `default`, or a TOML ladder file of [[rung]] tables (height, kbps).
        #[arg(long, default_value = "default")]
        ladder: String,
        /// Video codecs, comma-separated: h264 (always), hevc, av1.
        #[arg(long, default_value = "h264")]
        codecs: String,
        /// Segment duration in seconds.
        #[arg(long)]
        segment_seconds: Option<f64>,
        /// x264 preset (veryfast by default).
        #[arg(long)]
        preset: Option<String>,
        /// Segments per video chunk (one task each); default about 8 s of video.
        #[arg(long)]
        chunk_segments: Option<u32>,
        /// Where to publish (a directory or s3://bucket/prefix); default: the worker's --store.
        #[arg(long)]
        store: Option<String>,
        /// Attempts per task before the job fails.
        #[arg(long)]
        max_attempts: Option<i64>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a job: state, each task's progress, attempts and last error, where it was published.
    Status {
        #[command(flatten)]
        queue: QueueArg,
        /// Job id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List the newest jobs.
    List {
        #[command(flatten)]
        queue: QueueArg,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job; workers stop and remove its partial output.
    Cancel {
        #[command(flatten)]
        queue: QueueArg,
        /// Job id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Serve the queue over HTTP: POST/GET /v1/jobs, GET/DELETE /v1/jobs/{id}.
    Serve {
        #[command(flatten)]
        queue: QueueArg,
        /// Address to listen on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:8070")]
        listen: SocketAddr,
    },
    /// Take tasks from the queue and run them until stopped (SIGTERM hands the current task back).
    Worker {
        #[command(flatten)]
        queue: QueueArg,
        /// Where jobs that name no store publish: a directory or s3://bucket/prefix.
        #[arg(long)]
        store: Option<String>,
        /// Staging directory shared by every worker of the fleet (a mount on a multi-machine fleet).
        #[arg(long)]
        staging: PathBuf,
        /// Encoder threads per rendition in a task (default: the codec's choice).
        #[arg(long)]
        threads: Option<usize>,
        /// Exit once no job is queued or running and every failed job is cleaned up.
        #[arg(long)]
        once: bool,
        /// Worker name shown in task status (default HOST-PID).
        #[arg(long)]
        name: Option<String>,
        /// Lease length: a task whose worker stops renewing it goes back to the queue after this.
        #[arg(long, default_value_t = 15_000)]
        lease_ms: i64,
        /// How often a running task renews its lease.
        #[arg(long, default_value_t = 3_000)]
        heartbeat_ms: u64,
        /// How often an idle worker looks for work.
        #[arg(long, default_value_t = 1_000)]
        poll_ms: u64,
        /// First retry delay after a failed attempt; doubles each attempt.
        #[arg(long, default_value_t = 2_000)]
        backoff_ms: i64,
    },
    /// Run one encode task (used by `encoder worker`; prints `progress F` lines).
    #[command(hide = true)]
    RunTask {
        #[arg(long)]
        input: PathBuf,
        /// The job spec as JSON.
        #[arg(long)]
        spec: String,
        /// The task spec as JSON.
        #[arg(long)]
        task: String,
        #[arg(long)]
        staging: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> Result<()> {
    let command = Cli::parse().command;
    svc::init_tracing(if matches!(command, Command::Worker { .. } | Command::Serve { .. }) { "info" } else { "warn" });
    match command {
        Command::Encode { input, title, store, segment_seconds, preset, quiet } => {
            encode(input, title, store, segment_seconds, preset, quiet)
        }
        Command::RunTask { input, spec, task, staging, threads } => run_task(&input, &spec, &task, &staging, threads),
        other => runtime()?.block_on(queue_command(other)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting a runtime")
}

async fn open_queue(q: &QueueArg) -> Result<Queue> {
    Queue::open(&q.queue).await.with_context(|| format!("opening the queue {}", q.queue))
}

async fn queue_command(command: Command) -> Result<()> {
    match command {
        Command::Submit {
            queue,
            input,
            title,
            ladder,
            codecs,
            segment_seconds,
            preset,
            chunk_segments,
            store,
            max_attempts,
            json,
        } => {
            let req = SubmitRequest {
                input,
                title,
                ladder: Some(ladder),
                codecs: Some(codecs.split(',').map(str::to_owned).collect()),
                segment_seconds,
                preset,
                chunk_segments,
                store,
                max_attempts,
            };
            let job = req.prepare().await.context("submission")?;
            let q = open_queue(&queue).await?;
            let outcome = q.submit(&job, now_ms()).await.context("submitting")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("{}", outcome.id);
                if !outcome.created {
                    eprintln!("the same submission is already job {} ({})", outcome.id, outcome.state);
                }
            }
        }
        Command::Status { queue, id, json } => {
            let q = open_queue(&queue).await?;
            let s = q.status(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        Command::List { queue, limit, json } => {
            anyhow::ensure!((1..=1000).contains(&limit), "--limit must be between 1 and 1000");
            let q = open_queue(&queue).await?;
            let jobs = q.list(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs }))?);
            } else {
                for j in &jobs {
                    let detail = j.published.as_deref().or(j.last_error.as_deref()).unwrap_or("");
                    println!("{}  {:<24} {:<10} {:>4.0}%  {detail}", j.id, j.title, j.state, j.progress * 100.0);
                }
            }
        }
        Command::Cancel { queue, id, json } => {
            let q = open_queue(&queue).await?;
            q.cancel(&id, now_ms()).await?;
            let s = q.status(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("cancelled {id}; workers stop at their next heartbeat and remove its partial output");
            }
        }
        Command::Serve { queue, listen } => {
            let q = Arc::new(open_queue(&queue).await?);
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            eprintln!("encoder listening on {}", listener.local_addr()?);
            encoder::api::run(q, listener, svc::shutdown_signal()).await.context("encoder API server")?;
        }
        Command::Worker { queue, store, staging, threads, once, name, lease_ms, heartbeat_ms, poll_ms, backoff_ms } => {
            anyhow::ensure!(lease_ms >= 100, "--lease-ms must be at least 100");
            anyhow::ensure!(
                heartbeat_ms >= 10 && (heartbeat_ms as i64) * 2 <= lease_ms,
                "--heartbeat-ms must be at least 10 and at most half of --lease-ms"
            );
            anyhow::ensure!(threads != Some(0), "--threads must be at least 1");
            let store = match store.as_deref().map(StoreLocation::parse).transpose().context("--store")? {
                Some(StoreLocation::Local(dir)) => Some(std::path::absolute(&dir)?.display().to_string()),
                Some(s3) => Some(s3.to_string()),
                None => None,
            };
            let exe = std::env::current_exe().context("finding the encoder executable")?;
            let name = name.unwrap_or_else(default_worker_name);
            let mut cfg = WorkerConfig::new(name, staging, exe);
            cfg.store = store;
            cfg.threads = threads;
            cfg.once = once;
            cfg.lease_ms = lease_ms;
            cfg.heartbeat_ms = heartbeat_ms;
            cfg.poll_ms = poll_ms.max(10);
            cfg.backoff_ms = backoff_ms.max(0);
            let q = open_queue(&queue).await?;
            eprintln!("encoder worker {} polling {}", cfg.name, q.location());
            let stats = encoder::worker::run(&q, &cfg, svc::shutdown_signal()).await.context("worker")?;
            eprintln!(
                "encoder worker {}: {} tasks succeeded, {} failed, {} given up, {} jobs cleaned up",
                cfg.name, stats.succeeded, stats.failed, stats.abandoned, stats.cleaned
            );
            q.close().await;
        }
        Command::Encode { .. } | Command::RunTask { .. } => unreachable!("handled without a runtime"),
    }
    Ok(())
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "worker".into());
    format!("{}-{}", host.trim(), std::process::id())
}

fn print_status(s: &JobStatus) {
    println!("job {}  title {}  {}  {:.0}%", s.id, s.title, s.state, s.progress * 100.0);
    println!("input {} ({})", s.input, s.input_hash);
    println!(
        "run {}, {} task attempts so far (at most {} per task){}",
        s.runs,
        s.attempts,
        s.max_attempts,
        if matches!(s.state.as_str(), "failed" | "cancelled") {
            if s.cleaned {
                ", partial output removed"
            } else {
                ", partial output not removed yet"
            }
        } else {
            ""
        }
    );
    if let Some(e) = &s.last_error {
        println!("last error: {e}");
    }
    if let Some(p) = &s.published {
        println!("published: {p}");
    }
    for t in &s.tasks {
        let mut line = format!("  {:<10} {:<9} {:>4.0}%  attempts {}", t.name, t.state, t.progress * 100.0, t.attempts);
        if let Some(w) = &t.worker {
            line.push_str(&format!("  worker {w}"));
        }
        if let Some(e) = &t.last_error {
            line.push_str(&format!("  last error: {e}"));
        }
        println!("{line}");
    }
}

fn run_task(
    input: &std::path::Path,
    spec: &str,
    task: &str,
    staging: &std::path::Path,
    threads: Option<usize>,
) -> Result<()> {
    use std::io::Write;
    let spec: encoder::job::JobSpec = serde_json::from_str(spec).context("--spec")?;
    let task: encoder::job::TaskSpec = serde_json::from_str(task).context("--task")?;
    let mut last = -1.0;
    let mut progress = |p: f64| {
        if p - last >= 0.01 || p >= 1.0 {
            last = p;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "progress {p:.4}");
            let _ = out.flush();
        }
    };
    encoder::job::run_task(input, &spec, &task, staging, threads, &mut progress)
        .with_context(|| format!("task {}", task.name()))?;
    Ok(())
}

fn encode(
    input: PathBuf,
    title: String,
    store: String,
    segment_seconds: f64,
    preset: String,
    quiet: bool,
) -> Result<()> {
    let title = TitleId::new(title).context("--title")?;
    anyhow::ensure!(
        (0.5..=60.0).contains(&segment_seconds),
        "--segment-seconds must be between 0.5 and 60, got {segment_seconds}"
    );
    let settings = EncodeSettings { segment_ms: (segment_seconds * 1000.0).round() as u64, preset, progress: !quiet };
    let location = StoreLocation::parse(&store).context("--store")?;
    let store: Box<dyn PublishTarget> = match &location {
        StoreLocation::Local(dir) => Box::new(LocalStore::new(dir)),
        StoreLocation::S3 { .. } => {
            // Multipart uploads a killed publisher left behind (logged, never fatal).
            runtime()?
                .block_on(origin::store::s3::collect_stale_uploads(&location, origin::store::s3::PUBLISHER_GC_AGE));
            Box::new(BlockingStore::open(&location).with_context(|| format!("opening store {location}"))?)
        }
    };
    let cat = encoder::encode_and_publish(&input, &title, store.as_ref(), &settings)
        .with_context(|| format!("encoding {} as {title}", input.display()))?;
    let rungs: Vec<String> =
        cat.video().iter().map(|r| format!("{}@{}k", r.id, r.average_bandwidth_bps / 1000)).collect();
    println!(
        "published {} ({:.1}s, {} segments per rendition; {}; audio: {})",
        cat.title,
        cat.duration_ms as f64 / 1000.0,
        cat.video().first().map_or(0, |r| r.segments.len()),
        rungs.join(" "),
        if cat.audio().is_empty() { "none" } else { "aac" }
    );
    Ok(())
}
