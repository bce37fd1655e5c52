//! `edge doctor` as an operator runs it: against a real origin and steering
//! every check passes; a dead upstream, a missing or unwritable cache path
//! and an occupied port each give the right FAIL line and exit code 1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

async fn start_steering() -> Running<steering::Error> {
    let cfg =
        steering::Config::from_toml_str(&format!("token_secret = \"{SECRET}\"\nheartbeat_token = \"hb\"\n")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(steering::run(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running::new(addr, tx, task)
}

/// A loopback port nothing listens on.
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn write_config(dir: &Path, listen: SocketAddr, upstream: &str, steering: &str, cache: &Path) -> std::path::PathBuf {
    write_config_with(dir, listen, upstream, steering, cache, "")
}

/// `extra` goes at the end (tables such as `[bgp]`).
fn write_config_with(
    dir: &Path,
    listen: SocketAddr,
    upstream: &str,
    steering: &str,
    cache: &Path,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("edge.toml");
    let text = format!(
        "listen = \"{listen}\"\nupstream = \"{upstream}\"\nram_bytes = 10000000\nsteering = \"{steering}\"\n\
         disk_path = \"{}\"\ndisk_bytes = 50000000\ntoken_secret = \"{SECRET}\"\n{extra}",
        cache.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `edge doctor --config FILE` (as `uid` if given) with a small write test; returns (exit code, stdout lines).
async fn doctor(config: &Path, uid: Option<u32>) -> (i32, Vec<String>) {
    try_doctor(config, uid).await.expect("starting edge doctor")
}

async fn try_doctor(config: &Path, uid: Option<u32>) -> std::io::Result<(i32, Vec<String>)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.arg("doctor").arg("--config").arg(config);
    // No service-user line: the machine may have the package's user, which cannot use temp dirs.
    cmd.args(["--min-write-mbps", "1", "--write-test-bytes", "4194304", "--timeout-ms", "1000", "--service-user="]);
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("doctor did not finish in 30 s")
        .unwrap()?;
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    Ok((out.status.code().unwrap_or(-1), lines))
}

fn line<'a>(lines: &'a [String], check: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} line in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_a_real_origin_and_steering() {
    let (origin, _store) = start_origin(&[]).await;
    let steering = start_steering().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let bgp =
        format!("[bgp]\nlisten = \"{}\"\nlocal_as = 64512\npeer_as = 64500\nrouter_id = \"192.0.2.10\"\n", dead_port());
    let config = write_config_with(dir.path(), dead_port(), &origin.url(), &steering.url(), &cache, &bgp);
    let (code, lines) = doctor(&config, None).await;
    eprintln!("{}", lines.join("\n"));
    assert_eq!(code, 0, "{lines:#?}");
    for l in &lines {
        assert!(l.starts_with("PASS  "), "{lines:#?}");
    }
    for check in [
        "config",
        "cache-path",
        "disk-space",
        "write-speed",
        "listen",
        "bgp",
        "upstream",
        "steering",
        "memory",
        "mappings",
    ] {
        line(&lines, check);
    }
    let clocks: Vec<&String> = lines.iter().filter(|l| l.contains(" clock ")).collect();
    assert_eq!(clocks.len(), 2, "one clock line per server: {lines:#?}");
    assert!(line(&lines, "upstream").contains(&origin.url()));
    assert!(line(&lines, "write-speed").contains("MB/s"));
    // The write test and the probe leave nothing behind.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_a_missing_cache_path_and_an_occupied_port_fail() {
    let steering = start_steering().await;
    let dir = tempfile::tempdir().unwrap();
    // A listener that never answers HTTP holds the port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", dead_port());
    let held = squatter.local_addr().unwrap();
    let bgp = format!("[bgp]\nlisten = \"{held}\"\nlocal_as = 64512\npeer_as = 64500\nrouter_id = \"192.0.2.10\"\n");
    let config = write_config_with(dir.path(), held, &dead, &steering.url(), &dir.path().join("nope"), &bgp);
    let (code, lines) = doctor(&config, None).await;
    assert_eq!(code, 1, "{lines:#?}");
    assert!(line(&lines, "config").starts_with("PASS"), "{lines:#?}");
    let cache = line(&lines, "cache-path");
    assert!(cache.starts_with("FAIL") && cache.contains("does not exist"), "{lines:#?}");
    let listen = line(&lines, "listen");
    assert!(listen.starts_with("FAIL") && listen.contains("in use by another process"), "{lines:#?}");
    let upstream = line(&lines, "upstream");
    assert!(upstream.starts_with("FAIL") && upstream.contains(&dead) && upstream.contains("unreachable"), "{lines:#?}");
    assert!(line(&lines, "steering").starts_with("PASS"), "{lines:#?}");
    assert!(line(&lines, "bgp").starts_with("FAIL"), "{lines:#?}");
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_a_running_edge_passes_with_a_note() {
    let (origin, _store) = start_origin(&[]).await;
    let steering = start_steering().await;
    let running = start_edge(edge_config(&origin.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let config = write_config(dir.path(), running.addr, &origin.url(), &steering.url(), &cache);
    let (code, lines) = doctor(&config, None).await;
    assert_eq!(code, 0, "{lines:#?}");
    let listen = line(&lines, "listen");
    assert!(listen.starts_with("PASS") && listen.contains("served by a running edge"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_cache_path_fails() {
    use std::os::unix::fs::PermissionsExt;
    let (origin, _store) = start_origin(&[]).await;
    let steering = start_steering().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes anywhere: run the doctor as `nobody`, as the service's own user would be.
    // SAFETY: geteuid has no preconditions.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(65534);
    if uid.is_some() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = write_config(dir.path(), dead_port(), &origin.url(), &steering.url(), &cache);
    let (code, lines) = match try_doctor(&config, uid).await {
        Ok((_, lines)) if uid.is_some() && lines.first().is_some_and(|l| l.starts_with("FAIL  config")) => (-1, lines),
        Ok(seen) => seen,
        Err(e) => (-1, vec![format!("cannot run as nobody: {e}")]),
    };
    let (code, lines) = if code == -1 {
        // `nobody` cannot reach the binary or the temp dir here (e.g. a checkout under /root):
        // sysfs refuses new files even to root.
        eprintln!("doctor as nobody impossible here ({lines:?}); using /sys/kernel as the unwritable path");
        let config = write_config(dir.path(), dead_port(), &origin.url(), &steering.url(), Path::new("/sys/kernel"));
        doctor(&config, None).await
    } else {
        (code, lines)
    };
    assert_eq!(code, 1, "{lines:#?}");
    let c = line(&lines, "cache-path");
    assert!(c.starts_with("FAIL") && c.contains("not writable"), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("write-speed")), "no write test on a path it cannot write: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_fails_with_its_line_and_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "upstream = \"http://o:1\"\nram_bytes = 5\ndisk_byts = 7\n").unwrap();
    let (code, lines) = doctor(&config, None).await;
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("FAIL  config") && lines[0].contains("edge.toml:3: key `disk_byts`"), "{lines:#?}");
}

/// An HTTP server whose `Date` header is `offset_s` away from our clock.
async fn skewed_server(offset_s: i64) -> (String, AbortOnDrop) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let now = std::time::SystemTime::now();
            let t = if offset_s >= 0 {
                now + Duration::from_secs(offset_s.unsigned_abs())
            } else {
                now - Duration::from_secs(offset_s.unsigned_abs())
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                httpdate::fmt_http_date(t)
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (url, AbortOnDrop(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_warns_past_a_second_and_fails_past_thirty() {
    let (origin, _o) = skewed_server(5).await;
    let (steering, _s) = skewed_server(-45).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let config = write_config(dir.path(), dead_port(), &origin, &steering, &cache);
    let (code, lines) = doctor(&config, None).await;
    assert_eq!(code, 1, "{lines:#?}");
    let clock = |url: &str| lines.iter().find(|l| l.contains(" clock ") && l.contains(url)).cloned();
    let o = clock(&origin).unwrap_or_default();
    let s = clock(&steering).unwrap_or_default();
    assert!(o.starts_with("WARN") && (o.contains("+4.") || o.contains("+5.0")), "{lines:#?}");
    assert!(s.starts_with("FAIL") && s.contains("-4"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_dir_passes_on_a_huge_tmpfs_warns_without_huge_pages_and_fails_on_disk() {
    let (origin, _store) = start_origin(&[]).await;
    let steering = start_steering().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let check = |ram_dir: &Path| {
        let config = write_config_with(
            dir.path(),
            dead_port(),
            &origin.url(),
            &steering.url(),
            &cache,
            &format!("ram_dir = \"{}\"\n", ram_dir.display()),
        );
        async move {
            let (code, lines) = doctor(&config, None).await;
            (code, line(&lines, "ram_dir").to_owned())
        }
    };
    let huge = RamDirFixture::new("huge=within_size");
    if huge.mounted {
        let (code, l) = check(huge.path()).await;
        assert!(code == 0 && l.starts_with("PASS") && l.contains("huge=within_size"), "{l}");
    } else {
        eprintln!("cannot mount a tmpfs here: no PASS case");
    }
    let plain = RamDirFixture::new("huge=never");
    let (code, l) = check(plain.path()).await;
    // /dev/shm (when mounting is impossible) follows the host, which may give huge pages.
    if plain.mounted {
        assert!(code == 0 && l.starts_with("WARN") && l.contains("huge=never"), "{l}");
    }
    let (code, l) = check(&cache).await;
    assert!(code == 1 && l.starts_with("FAIL") && l.contains("is not a tmpfs"), "{l}");
    // Missing: only the service's own mount namespace may have it.
    let (_, l) = check(&dir.path().join("missing")).await;
    assert!(l.starts_with("WARN") && l.contains("does not exist") && l.contains("TemporaryFileSystem="), "{l}");
}
