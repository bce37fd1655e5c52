//! The fleet half of `cargo xtask bench encode`: the same clip through the
//! real job queue (SQLite) and real `encoder worker` processes, once with one
//! worker and once with two, each task encoding with one thread per
//! rendition (`--threads 1`). Two workers must take at most 0.6x the wall
//! time of one: the fleet really runs tasks in parallel.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Segment length and segments per chunk: 1 s chunks, so a 10 s clip is ten
/// video tasks plus the audio. With five, two workers split them 3:2 and the
/// one with three sets the wall time (0.61 of one worker's, measured).
const SEGMENT_SECONDS: &str = "1";
const CHUNK_SEGMENTS: &str = "1";

/// Kills and reaps the workers still running when dropped (on an error path).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Wall seconds for `n` workers to drain a queue holding one job for `src`.
fn fleet_wall_s(encoder: &Path, src: &Path, preset: &str, work: &Path, n: usize) -> Result<f64> {
    let dir = work.join(format!("fleet-{n}"));
    std::fs::create_dir_all(&dir)?;
    let queue = format!("sqlite://{}", dir.join("queue.db").display());
    let out = Command::new(encoder)
        .args(["submit", "--queue", &queue, "--title", "bench", "--preset", preset])
        .args(["--segment-seconds", SEGMENT_SECONDS, "--chunk-segments", CHUNK_SEGMENTS, "--input"])
        .arg(src)
        .output()
        .context("running encoder submit")?;
    if !out.status.success() {
        bail!("encoder submit failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let started = Instant::now();
    let mut workers = Workers(Vec::new());
    for i in 0..n {
        let log = std::fs::File::create(dir.join(format!("worker-{i}.log")))?;
        let child = Command::new(encoder)
            .args(["worker", "--queue", &queue, "--once", "--threads", "1", "--poll-ms", "50"])
            .args(["--name", &format!("bench-{i}"), "--store"])
            .arg(dir.join("store"))
            .arg("--staging")
            .arg(dir.join("staging"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting encoder worker")?;
        workers.0.push(child);
    }
    let deadline = started + Duration::from_secs(600);
    for (i, c) in workers.0.iter_mut().enumerate() {
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("worker {i} failed ({status}); see {}", dir.join(format!("worker-{i}.log")).display());
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("the fleet of {n} did not finish within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let out = Command::new(encoder).args(["status", "--json", "--queue", &queue, &id]).output()?;
    let status: Value = serde_json::from_slice(&out.stdout).context("reading the job status")?;
    if status["state"] != "succeeded" {
        bail!("the fleet of {n} did not publish the job: {}", status["last_error"]);
    }
    Ok(wall)
}

/// Runs one worker, then two, on the same clip; returns the figures for `details.fleet`.
pub fn run(encoder: &Path, src: &Path, preset: &str, work: &Path) -> Result<Value> {
    eprintln!("bench encode: fleet of 1 worker (sqlite queue, --threads 1)");
    let one = fleet_wall_s(encoder, src, preset, work, 1)?;
    eprintln!("bench encode: fleet of 2 workers");
    let two = fleet_wall_s(encoder, src, preset, work, 2)?;
    eprintln!("bench encode: fleet wall time: 1 worker {one:.2} s, 2 workers {two:.2} s, ratio {:.3}", two / one);
    Ok(json!({
        "wall_s_one_worker": one,
        "wall_s_two_workers": two,
        "ratio_two_over_one": two / one,
        "target": "two workers <= 0.6 x one worker's wall time",
        "queue": "sqlite",
        "segment_seconds": SEGMENT_SECONDS, "chunk_segments": CHUNK_SEGMENTS, "threads_per_rendition": 1,
        "note": "wall time from starting the workers to every worker exiting with the job published (plan, chunks, audio, finalize)",
    }))
}
