//! The queue's lease rules on a real SQLite file, with the clock in the
//! test's hands: expiry, lost leases, backoff, the attempt limit, finalize
//! promotion, cleanup claims.

use encoder::queue::{JobState, LeaseCheck, NewJob, Queue, TaskKind, TaskState};

fn job(id: &str, title: &str, max_attempts: i64) -> NewJob {
    NewJob {
        id: id.into(),
        title: title.into(),
        input: "/media/in.mp4".into(),
        input_hash: format!("sha256:{id}"),
        spec: "{}".into(),
        store: None,
        max_attempts,
    }
}

async fn open(dir: &tempfile::TempDir) -> Queue {
    Queue::open(&format!("sqlite://{}", dir.path().join("q.db").display())).await.unwrap()
}

fn encode_tasks() -> Vec<(String, String, String)> {
    vec![
        ("video".into(), "video-000".into(), r#"{"kind":"video","chunk":0,"first_segment":1,"segments":2}"#.into()),
        ("audio".into(), "audio".into(), r#"{"kind":"audio"}"#.into()),
    ]
}

#[tokio::test]
async fn an_expired_lease_goes_back_and_its_old_holder_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir).await;
    q.submit(&job("j1", "t1", 3), 0).await.unwrap();
    let plan = q.claim("w1", 1000, 0).await.unwrap().expect("the plan task");
    assert_eq!((plan.task.clone(), plan.attempt), (TaskKind::Plan, 1));
    assert!(q.claim("w2", 1000, 0).await.unwrap().is_none(), "one task, claimed twice");
    assert_eq!(q.heartbeat(&plan, 0.5, 1000, 500).await.unwrap(), LeaseCheck::Held);
    assert_eq!(q.reap_expired(1400).await.unwrap(), 0, "a renewed lease expired early");
    assert_eq!(q.status("j1").await.unwrap().tasks[0].progress, 0.5);
    assert_eq!(q.reap_expired(1600).await.unwrap(), 1);
    let s = q.status("j1").await.unwrap();
    assert_eq!(s.tasks[0].state, TaskState::Queued);
    assert!(s.tasks[0].last_error.as_deref().is_some_and(|e| e.contains("lease expired") && e.contains("w1")));

    let again = q.claim("w2", 1000, 1600).await.unwrap().expect("the plan task again");
    assert_eq!(again.attempt, 2);
    // The first holder comes back: every write of its old lease is refused.
    assert_eq!(q.heartbeat(&plan, 0.9, 1000, 1700).await.unwrap(), LeaseCheck::Lost);
    assert!(!q.complete_plan(&plan, &encode_tasks(), 1700).await.unwrap());
    assert!(q.complete_plan(&again, &encode_tasks(), 1700).await.unwrap());
    let s = q.status("j1").await.unwrap();
    let states: Vec<_> = s.tasks.iter().map(|t| (t.name.as_str(), t.state)).collect();
    assert_eq!(
        states,
        [
            ("plan", TaskState::Succeeded),
            ("video-000", TaskState::Queued),
            ("audio", TaskState::Queued),
            ("finalize", TaskState::Waiting)
        ]
    );

    // Finalize becomes claimable only when both encode tasks are done.
    let a = q.claim("w1", 1000, 1800).await.unwrap().unwrap();
    let b = q.claim("w2", 1000, 1800).await.unwrap().unwrap();
    assert!(q.claim("w3", 1000, 1800).await.unwrap().is_none(), "finalize was claimable too early");
    assert!(q.complete_task(&a, 1900).await.unwrap());
    assert!(q.claim("w3", 1000, 1900).await.unwrap().is_none(), "finalize was claimable too early");
    assert!(q.complete_task(&b, 1950).await.unwrap());
    let fin = q.claim("w3", 1000, 2000).await.unwrap().expect("finalize");
    assert_eq!(fin.task, TaskKind::Finalize);
    assert_eq!(q.encode_task_specs("j1").await.unwrap().len(), 2);
    assert!(q.complete_job(&fin, "/srv/vod/titles/t1/catalog.json", 2100).await.unwrap());
    let s = q.status("j1").await.unwrap();
    assert_eq!((s.state, s.published.as_deref()), (JobState::Succeeded, Some("/srv/vod/titles/t1/catalog.json")));
    assert!(q.drained().await.unwrap());
    // The same submission after success is the same, finished job.
    let o = q.submit(&job("j1", "t1", 3), 3000).await.unwrap();
    assert_eq!((o.created, o.state), (false, JobState::Succeeded));
}

#[tokio::test]
async fn failures_back_off_then_fail_the_job_which_a_worker_then_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir).await;
    q.submit(&job("j2", "t2", 2), 0).await.unwrap();
    let plan = q.claim("w1", 1000, 0).await.unwrap().unwrap();
    assert!(q.complete_plan(&plan, &encode_tasks(), 10).await.unwrap());
    let video = q.claim("w1", 1000, 20).await.unwrap().unwrap();
    let audio = q.claim("w2", 1000, 20).await.unwrap().unwrap();
    assert_eq!(q.fail_task(&video, "boom", 100, 50).await.unwrap(), JobState::Running);
    assert_eq!(q.status("j2").await.unwrap().tasks[1].retry_at_ms, Some(150));
    assert!(q.claim("w1", 1000, 149).await.unwrap().is_none(), "retried before its backoff");
    let video2 = q.claim("w1", 1000, 150).await.unwrap().expect("the retry");
    assert_eq!(video2.attempt, 2);
    // A cleanup waits while tasks still hold live leases.
    assert_eq!(q.fail_task(&video2, "boom again", 100, 200).await.unwrap(), JobState::Failed);
    let s = q.status("j2").await.unwrap();
    assert_eq!(s.last_error.as_deref(), Some("task video-000 failed after 2 attempts: boom again"));
    assert_eq!(s.tasks[3].state, TaskState::Cancelled, "finalize still waits on a failed job");
    assert!(q.claim_cleanup(1000, 300).await.unwrap().is_none(), "cleaned while audio still runs");
    assert_eq!(q.heartbeat(&audio, 0.3, 1000, 300).await.unwrap(), LeaseCheck::JobStopped(JobState::Failed));
    q.abandon_task(&audio, 310).await.unwrap();
    assert!(!q.drained().await.unwrap(), "drained before the cleanup");
    let c = q.claim_cleanup(1000, 320).await.unwrap().expect("the cleanup");
    assert_eq!((c.job_id.as_str(), c.title.as_str()), ("j2", "t2"));
    assert!(q.claim_cleanup(1000, 330).await.unwrap().is_none(), "two workers cleaning one job");
    // Another job for the title is refused until the cleanup is done.
    let e = q.submit(&job("j3", "t2", 2), 340).await.unwrap_err().to_string();
    assert!(e.contains("j2") && e.contains("not removed yet"), "{e}");
    q.finish_cleanup("j2", 400).await.unwrap();
    assert!(q.drained().await.unwrap());
    assert!(q.status("j2").await.unwrap().cleaned);
    assert!(q.submit(&job("j3", "t2", 2), 500).await.unwrap().created);
    // And the failed job submitted again runs again.
    let e = q.submit(&job("j2", "t2", 2), 600).await.unwrap_err().to_string();
    assert!(e.contains("j3") && e.contains("active"), "{e}");
}

#[tokio::test]
async fn cancel_drops_queued_tasks_and_is_refused_while_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir).await;
    q.submit(&job("j4", "t4", 3), 0).await.unwrap();
    let plan = q.claim("w1", 1000, 0).await.unwrap().unwrap();
    assert!(q.complete_plan(&plan, &encode_tasks(), 10).await.unwrap());
    let a = q.claim("w1", 1000, 20).await.unwrap().unwrap();
    let b = q.claim("w1", 1000, 20).await.unwrap().unwrap();
    assert!(q.complete_task(&a, 30).await.unwrap());
    assert!(q.complete_task(&b, 30).await.unwrap());
    let fin = q.claim("w1", 1000, 40).await.unwrap().unwrap();
    let e = q.cancel("j4", 50).await.unwrap_err().to_string();
    assert!(e.contains("publishing"), "{e}");
    // Shutting down hands the task back without spending an attempt.
    q.release_task(&fin, 60).await.unwrap();
    let fin2 = q.claim("w2", 1000, 70).await.unwrap().unwrap();
    assert_eq!(fin2.attempt, 1);
    q.release_task(&fin2, 80).await.unwrap();
    q.cancel("j4", 90).await.unwrap();
    let s = q.status("j4").await.unwrap();
    assert_eq!(s.state, JobState::Cancelled);
    assert_eq!(s.tasks[3].state, TaskState::Cancelled);
    assert!(q.claim("w1", 1000, 100).await.unwrap().is_none());
    assert!(q.cancel("j4", 110).await.unwrap_err().to_string().contains("already cancelled"));
    assert!(q.cancel("nope", 110).await.unwrap_err().to_string().contains("no job nope"));
}
