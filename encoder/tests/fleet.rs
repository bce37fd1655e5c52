//! A fleet of real worker processes on one queue, one of them killed with
//! SIGKILL in the middle of a task: the job still completes (the dead
//! worker's lease expires and another worker redoes the task) and the
//! published title is byte-for-byte the one a single worker makes.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use encoder::queue::{JobState, Queue, TaskState};
use support::{encoder, rt, status, wait_finished, wait_job, Postgres, Worker, FAST};

const TITLE: &str = "fleet";
const CLIP_SECONDS: u32 = 8;
const FPS: u32 = 25;

/// The shared source clip and the title a single worker made from it.
struct Reference {
    clip: PathBuf,
    store: PathBuf,
}

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("encoder-fleet")
}

fn submit_args<'a>(queue: &'a str, clip: &'a str) -> Vec<&'a str> {
    vec![
        "submit",
        "--queue",
        queue,
        "--input",
        clip,
        "--title",
        TITLE,
        "--segment-seconds",
        "1",
        "--chunk-segments",
        "2",
        "--preset",
        "faster",
    ]
}

/// Made once per test binary: the clip, then one worker encoding it alone.
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clip = dir.join("clip.mp4");
        stack::generate_clip_with(&clip, CLIP_SECONDS, 640, 360, FPS, true).expect("test clip");
        let queue = format!("sqlite://{}", dir.join("ref.db").display());
        let store = dir.join("ref-store");
        let clip_s = clip.display().to_string();
        let (ok, out, err) = encoder(&submit_args(&queue, &clip_s));
        assert!(ok, "submit: {err}");
        let id = out.trim().to_owned();
        let store_s = store.display().to_string();
        let mut w = Worker::start(
            "ref",
            &queue,
            &dir.join("ref-staging"),
            &dir,
            &[&["--store", &store_s, "--once"], FAST].concat(),
        );
        assert!(w.wait_exit(Duration::from_secs(120)), "reference worker failed: {}", w.log());
        let (ok, out, _) = encoder(&["status", "--queue", &queue, &id, "--json"]);
        assert!(ok && out.contains("\"succeeded\""), "reference job did not succeed: {out}\n{}", w.log());
        Reference { clip, store }
    })
}

/// Runs the job on `queue` with `n` workers, kills the first one with
/// SIGKILL while it runs an encode task, and checks the outcome.
fn fleet_survives_a_killed_worker(queue_url: &str, n: usize, tag: &str) {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let staging = dir.path().join("staging");
    let clip_s = reference.clip.display().to_string();
    let (ok, out, err) = encoder(&submit_args(queue_url, &clip_s));
    assert!(ok, "submit: {err}");
    let id = out.trim().to_owned();

    let rt = rt();
    let queue = rt.block_on(Queue::open(queue_url)).unwrap();
    let store_s = store.display().to_string();
    let args = [&["--store", store_s.as_str(), "--once"], FAST].concat();
    let mut workers: Vec<Worker> =
        (0..n).map(|i| Worker::start(&format!("{tag}-w{i}"), queue_url, &staging, dir.path(), &args)).collect();

    // Wait until a worker is inside a video task, then kill that worker.
    let running_video = |s: &encoder::queue::JobStatus| {
        s.tasks.iter().find(|t| t.state == TaskState::Running && t.kind == "video" && t.worker.is_some()).cloned()
    };
    let s = wait_job(&rt, &queue, &id, Duration::from_secs(60), "a worker to run a video task", |s| {
        running_video(s).is_some()
    });
    let task = running_video(&s).unwrap();
    let (killed_task, victim) = (task.name, task.worker.unwrap_or_default());
    let v = workers.iter().position(|w| w.name == victim).expect("the task's worker is one of ours");
    workers[v].kill9();

    let s = wait_finished(&rt, &queue, &id, Duration::from_secs(120));
    let logs: String = workers.iter().map(|w| format!("--- {}\n{}", w.name, w.log())).collect();
    assert_eq!(s.state, JobState::Succeeded, "{s:#?}\n{logs}");
    let t = s.tasks.iter().find(|t| t.name == killed_task).unwrap();
    assert!(t.attempts >= 2, "the killed task was not run again: {t:?}");
    assert!(
        t.last_error.as_deref().is_some_and(|e| e.contains("lease expired") && e.contains(&victim)),
        "the killed task does not say why it was retried: {t:?}"
    );
    assert!(t.worker.as_deref() != Some(victim.as_str()), "{t:?}");
    assert!(s.published.as_deref().is_some_and(|p| p.ends_with("titles/fleet/catalog.json")), "{s:?}");
    for w in workers.iter_mut().filter(|w| w.name != victim) {
        assert!(
            w.wait_exit(Duration::from_secs(30)),
            "worker {} did not exit after the queue drained: {}",
            w.name,
            w.log()
        );
    }
    assert!(!staging.join(&id).exists(), "staging files of a published job were left behind");

    // Frame-exact: every published object equals the single-worker run's, byte for byte.
    let ours = support::tree(&store.join("titles").join(TITLE));
    let single = support::tree(&reference.store.join("titles").join(TITLE));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&single), "the fleet published other objects than one worker");
    for ((name, a), (_, b)) in ours.iter().zip(&single) {
        assert!(a == b, "{name} differs from the single-worker run");
    }
    // And the video is the source's frames: count and timestamps.
    let rendition = store.join("titles").join(TITLE).join("v360");
    check_frames(&rendition, dir.path());
    rt.block_on(queue.close());
}

/// Joins a rendition (init + segments) and checks it decodes to every source
/// frame, one per 1/FPS, none missing or doubled at chunk joins.
fn check_frames(rendition: &Path, work: &Path) {
    let mut bytes = std::fs::read(rendition.join("init.mp4")).unwrap();
    let mut n = 1;
    while let Ok(b) = std::fs::read(rendition.join(format!("{n}.m4s"))) {
        bytes.extend(b);
        n += 1;
    }
    let joined = work.join("joined.mp4");
    std::fs::write(&joined, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(&joined)
        .output()
        .expect("ffprobe");
    assert!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(times.len(), (CLIP_SECONDS * FPS) as usize, "decoded frame count");
    let first = times[0];
    for (i, t) in times.iter().enumerate() {
        let want = first + i as f64 / f64::from(FPS);
        assert!((t - want).abs() < 0.002, "frame {i} at {t}s, expected {want}s");
    }
}

#[test]
fn postgres_fleet_of_three_survives_sigkill() {
    let pg = Postgres::start();
    fleet_survives_a_killed_worker(&pg.url, 3, "pg");
}

#[test]
fn sqlite_fleet_of_two_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    fleet_survives_a_killed_worker(&queue, 2, "lite");
}

#[test]
fn postgres_queue_refuses_a_second_active_job_for_a_title() {
    let pg = Postgres::start();
    let reference = reference();
    let clip_s = reference.clip.display().to_string();
    let (ok, out, err) = encoder(&submit_args(&pg.url, &clip_s));
    assert!(ok, "{err}");
    let (ok2, out2, _) = encoder(&submit_args(&pg.url, &clip_s));
    assert!(ok2);
    assert_eq!(out, out2, "the same submission made two jobs");
    let mut other = submit_args(&pg.url, &clip_s);
    assert_eq!(other[7], "--segment-seconds");
    other[8] = "2";
    let (ok3, _, err3) = encoder(&other);
    assert!(!ok3, "a different spec for an active title was accepted");
    assert!(err3.contains("already has an active job") && err3.contains(out.trim()), "{err3}");
    let rt = rt();
    let queue = rt.block_on(Queue::open(&pg.url)).unwrap();
    assert_eq!(status(&rt, &queue, out.trim()).state, JobState::Queued);
    assert_eq!(rt.block_on(queue.list(10)).unwrap().len(), 1);
    rt.block_on(queue.close());
}
