//! The `steering` binary: `fill-plan` output and errors, and `serve` start-up.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use vod::log::HEADER;
use vod::plan::FillPlan;

const BIN: &str = env!("CARGO_BIN_EXE_steering");

fn write_log(body: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(body.as_bytes()).unwrap();
    f
}

fn fill_plan(log: &std::path::Path, edge_bytes: &str) -> std::process::Output {
    Command::new(BIN).args(["fill-plan", "--log"]).arg(log).args(["--edge-bytes", edge_bytes]).output().unwrap()
}

#[test]
fn fill_plan_prints_a_plan_within_capacity() {
    let mut body = format!("{HEADER}\n");
    for i in 0..10 {
        body.push_str(&format!("{i},10.1.0.{i},titles/hot/v1/1.m4s,1000\n"));
    }
    body.push_str("20,10.1.0.1,titles/cold/v1/1.m4s,1000\n");
    body.push_str("21,10.1.0.1,titles/hot/v1/init.mp4,100\n");
    let log = write_log(&body);
    let out = fill_plan(log.path(), "1500");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: FillPlan = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan.edge_bytes, 1500);
    let keys: Vec<&str> = plan.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec!["titles/hot/v1/1.m4s", "titles/hot/v1/init.mp4"]);
    assert_eq!(plan.objects[0].expected_requests, 10.0);
    assert_eq!(plan.total_bytes, 1100);
}

#[test]
fn fill_plan_reports_bad_logs_with_line_and_fails() {
    let bad_row = write_log(&format!("{HEADER}\n1,10.1.0.1,titles/a/v1/1.m4s,10\n2,10.1.0.1,titles/a/v1/1.m4s\n"));
    let out = fill_plan(bad_row.path(), "100");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert!(out.stdout.is_empty(), "no half-written plan");

    let bad_header = write_log("time,ip,key,size\n");
    let out = fill_plan(bad_header.path(), "100");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("header"));

    let out = fill_plan(std::path::Path::new("/nonexistent/day.csv"), "100");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/day.csv"));
}

#[test]
fn serve_prints_its_address_and_answers_health() {
    let cfg = write_log(
        "token_secret = \"s\"\n[[edges]]\nname = \"a1\"\nurl = \"http://127.0.0.1:9\"\nsite = \"lab-a\"\nprefixes = [\"10.1.0.0/16\"]\n",
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("steering listening on ").unwrap_or_else(|| panic!("got {line:?}"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("ok"), "{resp}");

    let bad = write_log("token_secret = \"\"\n");
    let out = Command::new(BIN).args(["serve", "--config"]).arg(bad.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_secret"));
}
