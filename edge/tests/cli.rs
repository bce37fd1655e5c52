//! `edge serve` as a process: flags alone start it, it announces its address,
//! and it opens its disk tier.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_from_flags_announces_its_address_and_opens_its_disk_tier() {
    let disk = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_edge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--ram-bytes", "1000000"])
            .arg("--disk-path")
            .arg(disk.path())
            .args(["--disk-bytes", "5000000", "--name", "edge-cli"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut addr, mut disk_open) = (None, false);
    while addr.is_none() || !disk_open {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("edge did not announce itself and its disk tier");
        if let Some(a) = line.strip_prefix("edge listening on ") {
            addr = Some(a.trim().to_owned());
        }
        disk_open |= line.contains("disk tier open");
    }
    let addr = addr.unwrap();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(child);
    let _ = reader.join();
    assert_eq!(std::fs::metadata(disk.path().join("store.bin")).unwrap().len(), 5_000_000);
}

#[test]
fn serve_refuses_a_config_without_an_upstream() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--ram-bytes", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream"), "{err}");
}
