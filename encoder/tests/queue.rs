//! Queue semantics through the real binary: one job per submission, retries
//! with backoff then a clear failure, cancel with cleanup, the HTTP API.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use encoder::queue::{JobState, Queue, TaskState};
use support::{encoder, encoder_env, rt, status, wait_finished, wait_job, Moto, Worker, FAST};

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("queue.db").display())
}

fn clip(dir: &Path, seconds: u32) -> String {
    let p = dir.join("clip.mp4");
    stack::generate_clip_with(&p, seconds, 640, 360, 25, true).expect("test clip");
    p.display().to_string()
}

#[test]
fn the_same_submission_twice_is_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let input = dir.path().join("src.mp4");
    std::fs::write(&input, b"bytes are hashed, not probed, at submission").unwrap();
    let input = input.display().to_string();
    let submit =
        |extra: &[&str]| encoder(&[&["submit", "--queue", &q, "--input", &input, "--title", "dup"], extra].concat());
    let (ok, a, err) = submit(&[]);
    assert!(ok, "{err}");
    let (ok, b, err) = submit(&[]);
    assert!(ok, "{err}");
    assert_eq!(a, b);
    assert!(err.contains("already job"), "{err}");
    // Another spec for the same title while the first is active is refused, naming the job.
    let (ok, _, err) = submit(&["--segment-seconds", "2"]);
    assert!(!ok);
    assert!(err.contains("already has an active job") && err.contains(a.trim()), "{err}");
    let (ok, list, _) = encoder(&["list", "--queue", &q, "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(v["jobs"][0]["state"], "queued");
    assert_eq!(v["jobs"][0]["tasks"][0]["name"], "plan");
    let (ok, text, _) = encoder(&["status", "--queue", &q, a.trim()]);
    assert!(ok && text.contains("queued") && text.contains("plan"), "{text}");
    let (ok, _, err) = encoder(&["status", "--queue", &q, "jnope"]);
    assert!(!ok && err.contains("no job jnope"), "{err}");
}

#[test]
fn a_source_that_is_not_media_is_retried_with_backoff_then_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let input = dir.path().join("notes.mp4");
    std::fs::write(&input, b"this is a text file, not a movie\n".repeat(100)).unwrap();
    let input = input.display().to_string();
    let store = dir.path().join("store").display().to_string();
    let (ok, id, err) = encoder(&["submit", "--queue", &q, "--input", &input, "--title", "notmedia"]);
    assert!(ok, "{err}");
    let id = id.trim();
    let started = Instant::now();
    let staging = dir.path().join("staging");
    let mut w = Worker::start(
        "w",
        &q,
        &staging,
        dir.path(),
        &[&FAST[..6], &["--threads", "1", "--store", &store, "--once", "--backoff-ms", "300"]].concat(),
    );
    let rt = rt();
    let queue = rt.block_on(Queue::open(&q)).unwrap();
    let s = wait_finished(&rt, &queue, id, Duration::from_secs(60));
    // Three attempts, 300 ms then 600 ms apart.
    assert!(started.elapsed() >= Duration::from_millis(900), "retries did not back off: {:?}", started.elapsed());
    assert_eq!(s.state, JobState::Failed, "{s:#?}");
    let plan = &s.tasks[0];
    assert_eq!((plan.name.as_str(), plan.state, plan.attempts), ("plan", TaskState::Failed, 3), "{s:#?}");
    let reason = s.last_error.clone().unwrap_or_default();
    assert!(reason.starts_with("task plan failed after 3 attempts: "), "{reason}");
    assert!(reason.contains("notes.mp4") && reason.contains("not a readable media file"), "{reason}");
    assert!(w.wait_exit(Duration::from_secs(30)), "worker did not exit: {}", w.log());
    let s = status(&rt, &queue, id);
    assert!(s.cleaned, "{s:#?}");
    assert!(!staging.join(id).exists());
    let (_, text, _) = encoder(&["status", "--queue", &q, id]);
    assert!(text.contains("failed") && text.contains("not a readable media file"), "{text}");
    rt.block_on(queue.close());
}

#[test]
fn cancel_stops_the_worker_and_removes_partial_output_and_staging() {
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let input = clip(dir.path(), 8);
    let store = dir.path().join("store");
    let store_s = store.display().to_string();
    let submit = ["submit", "--queue", &q, "--input", &input, "--title", "cancelme", "--segment-seconds", "1"];
    let submit = [&submit[..], &["--chunk-segments", "1", "--preset", "medium"]].concat();
    let (ok, id, err) = encoder(&submit);
    assert!(ok, "{err}");
    let id = id.trim().to_owned();
    let staging = dir.path().join("staging");
    let mut w = Worker::start("w", &q, &staging, dir.path(), &[FAST, &["--store", &store_s, "--once"]].concat());
    let rt = rt();
    let queue = rt.block_on(Queue::open(&q)).unwrap();
    let s = wait_job(&rt, &queue, &id, Duration::from_secs(60), "an encode task to run", |s| {
        s.tasks.iter().any(|t| t.kind == "video" && t.state == TaskState::Running)
    });
    let running = s.tasks.iter().find(|t| t.state == TaskState::Running).map(|t| t.name.clone()).unwrap();
    // What an interrupted publish would have left in the store.
    let partial = store.join("titles/cancelme/v360/1.m4s");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, b"partial").unwrap();

    let (ok, out, err) = encoder(&["cancel", "--queue", &q, &id]);
    assert!(ok && out.contains("cancelled"), "{out}{err}");
    let s = wait_job(&rt, &queue, &id, Duration::from_secs(30), "the cleanup", |s| s.cleaned);
    assert_eq!(s.state, JobState::Cancelled);
    let t = s.tasks.iter().find(|t| t.name == running).unwrap();
    assert_eq!(t.state, TaskState::Cancelled, "the running task was not stopped: {s:#?}");
    assert!(s.tasks.iter().all(|t| matches!(t.state, TaskState::Succeeded | TaskState::Cancelled)), "{s:#?}");
    assert!(!staging.join(&id).exists(), "staging left behind");
    let left = support::tree(&store.join("titles/cancelme"));
    assert!(left.is_empty(), "partial objects left behind: {:?}", left.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert!(w.wait_exit(Duration::from_secs(30)), "worker did not exit: {}", w.log());
    assert!(w.log().contains("job stopped"), "{}", w.log());

    let (ok, _, err) = encoder(&["cancel", "--queue", &q, &id]);
    assert!(!ok && err.contains("already cancelled"), "{err}");
    // The same submission again runs the job again under the same id.
    let (ok, again, err) = encoder(&submit);
    assert!(ok, "{err}");
    assert_eq!(again.trim(), id);
    let s = status(&rt, &queue, &id);
    assert_eq!((s.state, s.runs, s.tasks.len()), (JobState::Queued, 2, 1), "{s:#?}");
    rt.block_on(queue.close());
}

#[test]
fn http_api_round_trip_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let input = dir.path().join("src.mp4");
    std::fs::write(&input, b"some bytes").unwrap();
    let input = input.display().to_string();
    let args: Vec<String> = ["serve", "--queue", &q, "--listen", "127.0.0.1:0"].map(String::from).to_vec();
    let server = stack::Service::start("encoder", &support::encoder_bin(), &args, dir.path(), Duration::from_secs(30))
        .expect("encoder serve");
    let base = format!("{}/v1/jobs", server.url());
    let http = reqwest::blocking::Client::new();
    let body = serde_json::json!({ "input": input, "title": "api", "codecs": ["h264"], "segment_seconds": 2 });

    let r = http.post(&base).json(&body).send().unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let created: serde_json::Value = r.json().unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["created"], true);
    assert_eq!(location.as_deref(), Some(format!("/v1/jobs/{id}").as_str()));
    let r = http.post(&base).json(&body).send().unwrap();
    assert_eq!(r.status(), 200, "the same submission is the same job");
    assert_eq!(r.json::<serde_json::Value>().unwrap()["id"], id.as_str());

    let s: serde_json::Value = http.get(format!("{base}/{id}")).send().unwrap().json().unwrap();
    assert_eq!(s["state"], "queued");
    assert_eq!(s["title"], "api");
    assert_eq!(s["spec"]["segment_ms"], 2000);
    assert_eq!(s["tasks"][0]["kind"], "plan");
    let list: serde_json::Value = http.get(&base).send().unwrap().json().unwrap();
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));

    let err = |r: reqwest::blocking::Response, code: u16, needle: &str| {
        assert_eq!(r.status(), code);
        let v: serde_json::Value = r.json().unwrap();
        let msg = v["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(needle), "{code}: {msg:?} should mention {needle:?}");
    };
    err(http.post(&base).body("{not json").send().unwrap(), 400, "not a job submission");
    err(http.post(&base).json(&serde_json::json!({ "title": "api" })).send().unwrap(), 400, "input");
    err(
        http.post(&base).json(&serde_json::json!({ "input": input, "title": "api", "colour": 1 })).send().unwrap(),
        400,
        "colour",
    );
    err(http.post(&base).json(&serde_json::json!({ "input": input, "title": "../x" })).send().unwrap(), 400, "title");
    err(
        http.post(&base).json(&serde_json::json!({ "input": "/no/such.mp4", "title": "x" })).send().unwrap(),
        400,
        "/no/such.mp4",
    );
    let other = serde_json::json!({ "input": input, "title": "api", "segment_seconds": 6 });
    err(http.post(&base).json(&other).send().unwrap(), 409, &id);
    err(http.get(format!("{base}/jnope")).send().unwrap(), 404, "no job jnope");
    err(http.get(format!("{base}?limit=0")).send().unwrap(), 400, "limit");
    err(http.delete(format!("{base}/jnope")).send().unwrap(), 404, "jnope");

    let r = http.delete(format!("{base}/{id}")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["state"], "cancelled");
    err(http.delete(format!("{base}/{id}")).send().unwrap(), 409, "already cancelled");
}

#[test]
fn an_s3_input_is_identified_by_etag_and_downloaded_by_the_worker() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let local = clip(dir.path(), 3);
    moto.upload("inputs", "masters/clip.mp4", Path::new(&local));
    let env = moto.env();
    let store = dir.path().join("store").display().to_string();
    let submit = ["submit", "--queue", &q, "--input", "s3://inputs/masters/clip.mp4", "--title", "froms3"];
    let (ok, id, err) = encoder_env(&submit, &env);
    assert!(ok, "{err}");
    let (ok, again, err) = encoder_env(&submit, &env);
    assert!(ok && again == id, "{err}");
    let (ok, _, err) =
        encoder_env(&["submit", "--queue", &q, "--input", "s3://inputs/masters/none.mp4", "--title", "x"], &env);
    assert!(!ok && err.contains("s3://inputs/masters/none.mp4"), "{err}");
    let id = id.trim();
    let staging = dir.path().join("staging");
    let mut w =
        Worker::start_env("w", &q, &staging, dir.path(), &[FAST, &["--store", &store, "--once"]].concat(), &env);
    let rt = rt();
    let queue = rt.block_on(Queue::open(&q)).unwrap();
    let s = wait_finished(&rt, &queue, id, Duration::from_secs(90));
    assert_eq!(s.state, JobState::Succeeded, "{s:#?}\n{}", w.log());
    assert!(s.input_hash.starts_with("s3:"), "{}", s.input_hash);
    assert!(Path::new(&store).join("titles/froms3/catalog.json").is_file());
    assert!(w.wait_exit(Duration::from_secs(30)), "{}", w.log());
    assert!(!staging.join(id).exists(), "the downloaded input was left in staging");
    rt.block_on(queue.close());
}

#[test]
fn sigterm_hands_the_running_task_back_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let q = sqlite(dir.path());
    let input = clip(dir.path(), 8);
    let store = dir.path().join("store").display().to_string();
    let submit = ["submit", "--queue", &q, "--input", &input, "--title", "handback", "--segment-seconds", "4"];
    let (ok, id, err) = encoder(&[&submit[..], &["--preset", "medium"]].concat());
    assert!(ok, "{err}");
    let id = id.trim();
    let staging = dir.path().join("staging");
    let mut w = Worker::start("w", &q, &staging, dir.path(), &[FAST, &["--store", &store]].concat());
    let rt = rt();
    let queue = rt.block_on(Queue::open(&q)).unwrap();
    let s = wait_job(&rt, &queue, id, Duration::from_secs(60), "a video task to run", |s| {
        s.tasks.iter().any(|t| t.kind == "video" && t.state == TaskState::Running)
    });
    let name = s.tasks.iter().find(|t| t.state == TaskState::Running).map(|t| t.name.clone()).unwrap();
    w.term();
    assert!(w.wait_exit(Duration::from_secs(30)), "worker did not stop cleanly: {}", w.log());
    assert!(w.log().contains("handed back"), "{}", w.log());
    let s = status(&rt, &queue, id);
    let t = s.tasks.iter().find(|t| t.name == name).unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0), "{s:#?}");
    assert_eq!(s.state, JobState::Running);
    rt.block_on(queue.close());
}
