//! What the edge does for systemd: under a unit (`JOURNAL_STREAM` set) log
//! lines carry no timestamp and no colours, since journald stamps every line
//! itself (elsewhere they keep the timestamp, and colours stay off when stderr
//! is not a terminal); with `NOTIFY_SOCKET` set (`Type=notify`) it says
//! `READY=1` once it listens and `STOPPING=1` on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The edge's first log line mentioning the disk tier, started with `journal` set or not.
fn disk_tier_line(journal: bool) -> String {
    let disk = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--ram-bytes", "1000000"])
        .arg("--disk-path")
        .arg(disk.path())
        .args(["--disk-bytes", "4000000"])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if journal {
        cmd.env("JOURNAL_STREAM", "8:4242");
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("disk tier open") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    found.expect("the edge logged no `disk tier open` line within 20 s")
}

#[test]
fn journal_lines_have_no_timestamp_and_no_colours() {
    let line = disk_tier_line(true);
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(line.trim_start().starts_with("INFO"), "{line:?}");
    let plain = disk_tier_line(false);
    assert!(!plain.contains('\u{1b}'), "stderr is a pipe here: {plain:?}");
    assert!(plain.starts_with(|c: char| c.is_ascii_digit()), "a timestamp first: {plain:?}");
}

#[test]
fn ready_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--ram-bytes", "1000000"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = sock.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let stopping = sock.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got.expect("no READY=1 within 20 s"), "READY=1");
    assert_eq!(stopping.expect("no STOPPING=1 within 20 s"), "STOPPING=1");
    assert!(status.expect("the edge did not stop within 20 s of SIGTERM").success());
}
