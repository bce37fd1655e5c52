//! `cargo xtask bench edge`: wrk on loopback against our edge (RAM hits,
//! disk-tier hits) and Debian's nginx (static files with sendfile on and
//! off; `proxy_cache` in front of our origin), same 2 MB segments.
//!
//! The RAM-hit edge keeps its bodies in `ram_dir` on a tmpfs this benchmark
//! mounts with `huge=always` (it runs as root here) and unmounts at the end;
//! when the mount fails it says so and the edge uses memfds.
//!
//! Headline: ours = our edge's RAM-hit goodput (Gb/s of segment payload),
//! baseline = nginx's best static goodput, at 64 connections. Everything
//! (requests/s, Gb/s, p50/p99, RSS, 256 connections) goes into `details`.
//! wrk and the servers share this machine's cores; the figures say so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::BenchResult;
use crate::env;

const OBJECTS: usize = 32;
const OBJECT_BYTES: usize = 2 << 20;
const CONNECTIONS: &[u32] = &[64, 256];

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    for tool in ["/usr/sbin/nginx", "/usr/bin/wrk"] {
        if !Path::new(tool).exists() {
            bail!("{tool} is missing: run `cargo xtask deps` (Debian packages nginx and wrk)");
        }
    }
    env::cargo(&["build", "--release", "-p", "edge", "-p", "origin"])?;
    let bin = env::target_dir().join("release");
    let seconds: u32 = std::env::var("EDGE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let work = WorkDir::new()?;
    let store = work.path.join("store");
    write_segments(&store)?;
    let script = work.path.join("paths.lua");
    std::fs::write(
        &script,
        format!(
            "local n = 0\nrequest = function()\n  n = n % {OBJECTS} + 1\n  \
             return wrk.format(nil, \"/titles/bench/v1/\" .. n .. \".m4s\")\nend\n"
        ),
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.clamp(1, 4).to_string();
    let bench = |addr: SocketAddr, conns: u32| -> Result<Wrk> {
        let out = Command::new("/usr/bin/wrk")
            .args(["-t", &threads, "-c", &conns.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}/"))
            .output()
            .context("running wrk")?;
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Wrk::parse(&String::from_utf8_lossy(&out.stdout))
    };
    // Every server first, all warm; then the runs interleave round by round,
    // so a burst of other load on the machine hits every contender alike.
    let origin_port = free_port()?;
    let origin = Proc::spawn(
        Command::new(bin.join("origin"))
            .args(["serve", "--root"])
            .arg(&store)
            .args(["--listen", &format!("127.0.0.1:{origin_port}")]),
        "origin listening on ",
    )?;
    let origin_url = format!("http://{}", origin.addr);
    let ram_bytes: u64 = 256 << 20;
    let ram_mount = HugeTmpfs::mount(&work.path.join("ram"), ram_bytes * 2);
    let ram_store = match &ram_mount {
        Ok(m) => format!("ram_dir on a tmpfs mounted huge=always ({})", m.path.display()),
        Err(e) => {
            eprintln!("xtask: cannot mount a huge-page tmpfs ({e:#}); the RAM-hit edge keeps its bodies in memfds");
            format!("memfds (mounting a huge-page tmpfs failed: {e:#})")
        }
    };
    // An edge holding every object in its RAM tier, bodies in `ram_dir` when given.
    let ram_edge = |ram_dir: Option<&Path>| -> Result<Proc> {
        let mut cmd = Command::new(bin.join("edge"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &origin_url,
            "--ram-bytes",
            &ram_bytes.to_string(),
        ]);
        if let Some(dir) = ram_dir {
            cmd.arg("--ram-dir").arg(dir);
        }
        let edge = Proc::spawn(&mut cmd, "edge listening on ")?;
        warm(edge.addr, "HIT")?;
        Ok(edge)
    };
    let ram_dir = ram_mount.as_ref().ok().map(|m| m.path.clone());
    let edge_ram = ram_edge(ram_dir.as_deref())?;
    // Side by side: the same edge with its RAM-tier bodies in memfds (4 KiB shmem pages).
    let edge_memfd = match &ram_mount {
        Ok(_) => Some(ram_edge(None)?),
        Err(_) => None,
    };
    // Objects only on the disk tier: its RAM tier is smaller than one object.
    let edge_disk = Proc::spawn(
        Command::new(bin.join("edge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &origin_url, "--ram-bytes", "1000000"])
            .arg("--disk-path")
            .arg(work.path.join("edge-disk"))
            .args(["--disk-bytes", &(256u64 << 20).to_string()]),
        "edge listening on ",
    )?;
    warm(edge_disk.addr, "HIT-DISK")?;
    let mut nginxes = Vec::new();
    for sendfile in ["on", "off"] {
        let nginx = Nginx::start(&work.path, &format!("static-{sendfile}"), |port| {
            format!(
                "server {{ listen 127.0.0.1:{port}; root {}; sendfile {sendfile}; tcp_nopush on; \
                 location / {{ }} }}",
                store.display()
            )
        })?;
        warm(nginx.addr, "")?;
        nginxes.push((format!("nginx_sendfile_{sendfile}"), nginx));
    }
    let cache_dir = work.path.join("nginx-cache");
    std::fs::create_dir_all(&cache_dir)?;
    set_mode(&cache_dir, 0o777)?;
    let proxy = Nginx::start(&work.path, "proxy-cache", |port| {
        format!(
            "proxy_cache_path {} levels=1:2 keys_zone=seg:16m max_size=1g inactive=1h use_temp_path=off;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass {origin_url}; proxy_cache seg; \
             proxy_cache_valid 200 1h; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             add_header X-Cache $upstream_cache_status; }} }}",
            cache_dir.display()
        )
    })?;
    warm(proxy.addr, "HIT")?;
    let edge_rss_warm = rss_kb(edge_ram.pid(), ram_dir.as_deref());

    // (name, address, pid whose RSS to sample, pid whose CPU time (with its children's) to count)
    let mut targets: Vec<(String, SocketAddr, Option<u32>, u32)> =
        vec![("edge_ram".into(), edge_ram.addr, Some(edge_ram.pid()), edge_ram.pid())];
    targets.extend(edge_memfd.iter().map(|e| ("edge_ram_memfd".to_owned(), e.addr, Some(e.pid()), e.pid())));
    targets.push(("edge_disk".into(), edge_disk.addr, Some(edge_disk.pid()), edge_disk.pid()));
    targets.extend(nginxes.iter().map(|(n, x)| (n.clone(), x.addr, None, x.pid())));
    targets.push(("nginx_proxy_cache".into(), proxy.addr, None, proxy.pid()));
    let rounds: u32 = std::env::var("EDGE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    // Best round per target and connection count.
    let mut best: std::collections::BTreeMap<String, (Wrk, Option<u64>, f64)> = Default::default();
    for &c in CONNECTIONS {
        for round in 0..rounds {
            for (name, addr, pid, cpu_pid) in &targets {
                let cpu_before = cpu_seconds(*cpu_pid);
                let w = bench(*addr, c)?;
                let cpu = cpu_seconds(*cpu_pid) - cpu_before;
                // Server CPU time per response (wrk's own CPU not included).
                let cpu_us = cpu * 1e6 / (w.requests_per_s * f64::from(seconds)).max(1.0);
                let rss = pid.and_then(|p| rss_kb(p, ram_dir.as_deref()));
                eprintln!(
                    "xtask: round {round} {name:<18} c={c:<3} {:>8.1} req/s {:>6.2} Gb/s p50 {:>8.2} ms p99 {:>8.2} ms \
                     CPU {cpu_us:>5.0} us/resp{}{}",
                    w.requests_per_s,
                    w.gbps(),
                    w.p50_ms,
                    w.p99_ms,
                    rss.map(|r| format!(" RSS {} MB", r / 1024)).unwrap_or_default(),
                    if w.errors > 0 { format!(" ERRORS {}", w.errors) } else { String::new() }
                );
                let key = format!("{name}_c{c}");
                if best.get(&key).is_none_or(|(b, _, _)| w.gbps() > b.gbps()) {
                    best.insert(key, (w, rss, cpu_us));
                }
            }
        }
    }
    let edge_ram_rss = rss_kb(edge_ram.pid(), ram_dir.as_deref());
    let capped = capped_rounds(&targets, rounds, &bench)?;
    drop(targets);
    let full = full_tier(&store, edge_ram.addr, edge_ram.pid(), ram_dir.as_deref(), ram_bytes)?;
    proxy.stop();
    for (_, n) in nginxes {
        n.stop();
    }
    edge_disk.stop();
    edge_ram.stop();
    if let Some(e) = edge_memfd {
        e.stop();
    }
    origin.stop();
    drop(ram_mount);

    let mut runs = serde_json::Map::new();
    for (k, (w, rss, cpu_us)) in &best {
        let mut v = w.to_json();
        v["server_cpu_us_per_response"] = json!(cpu_us);
        if let Some(r) = rss {
            v["rss_kb"] = json!(r);
        }
        runs.insert(k.clone(), v);
    }
    let at64 = |name: &str| best.get(&format!("{name}_c64")).map_or(0.0, |(w, _, _)| w.gbps());
    let ours = at64("edge_ram");
    let (best_sendfile, baseline) = ["on", "off"]
        .iter()
        .map(|s| (*s, at64(&format!("nginx_sendfile_{s}"))))
        .fold(("on", 0.0), |best, x| if x.1 > best.1 { x } else { best });
    let errors: u64 = best.values().map(|(w, _, _)| w.errors).sum();
    let details = json!({
        "object_bytes": OBJECT_BYTES,
        "objects": OBJECTS,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "wrk_threads": threads,
        "cores": cores,
        "note": "best of the interleaved rounds per target; wrk and the server under test share the same cores \
                 on loopback (and whatever else runs on the machine); Gb/s is segment payload \
                 (requests/s x 2 MiB x 8); latency from wrk --latency; RSS = resident anonymous and file \
                 pages plus the memfds and ram_dir files the edge holds (RAM-tier bodies); \
                 server_cpu_us_per_response = the \
                 server's CPU time (nginx: master and workers) during the run / responses",
        "edge_ram_bytes": ram_bytes,
        "edge_ram_bodies": ram_store,
        "ram_dir_vs_memfd_ratio": if at64("edge_ram_memfd") > 0.0 { ours / at64("edge_ram_memfd") } else { 0.0 },
        "edge_ram_rss_kb_warm": edge_rss_warm,
        "edge_ram_rss_kb_after": edge_ram_rss,
        "edge_disk_ram_bytes": 1_000_000,
        "baseline_sendfile": best_sendfile,
        "disk_ratio": if baseline > 0.0 { at64("edge_disk") / baseline } else { 0.0 },
        "vs_proxy_cache_ratio": if at64("nginx_proxy_cache") > 0.0 { ours / at64("nginx_proxy_cache") } else { 0.0 },
        "errors_in_best_runs": errors,
        "runs": Value::Object(runs),
        "cpu_capped": capped.map(|c| c.to_json()),
        "ram_tier_full": full,
    });
    Ok(BenchResult {
        name: "edge",
        unit: "Gb/s",
        ours,
        baseline,
        baseline_name: format!("nginx {} static (sendfile {best_sendfile})", nginx_version()),
        ratio: if baseline > 0.0 { ours / baseline } else { 0.0 },
        details,
    })
}

/// The best capped round per target, at 64 connections.
struct Capped {
    cores: f64,
    best: std::collections::BTreeMap<String, (Wrk, f64)>,
}

impl Capped {
    fn gbps(&self, name: &str) -> f64 {
        self.best.get(name).map_or(0.0, |(w, _)| w.gbps())
    }

    fn to_json(&self) -> Value {
        let nginx = self.gbps("nginx_sendfile_on").max(self.gbps("nginx_sendfile_off"));
        let ratio = |name: &str| if nginx > 0.0 { self.gbps(name) / nginx } else { 0.0 };
        let runs: serde_json::Map<String, Value> = self
            .best
            .iter()
            .map(|(k, (w, cpu_us))| {
                let mut v = w.to_json();
                v["server_cpu_us_per_response"] = json!(cpu_us);
                (k.clone(), v)
            })
            .collect();
        let best_nginx = ["nginx_sendfile_on", "nginx_sendfile_off"]
            .into_iter()
            .max_by(|a, b| self.gbps(a).total_cmp(&self.gbps(b)))
            .and_then(|n| self.best.get(n));
        let p99_ratio = match (self.best.get("edge_ram"), best_nginx) {
            (Some((ours, _)), Some((theirs, _))) if theirs.p99_ms > 0.0 => json!(ours.p99_ms / theirs.p99_ms),
            _ => Value::Null,
        };
        json!({
            "cores": self.cores,
            "connections": 64,
            "note": "each server in its own cgroup with a CPU quota of `cores`, so the server, not wrk, is the \
                     bottleneck; best of the interleaved rounds; ratios against nginx's better static target",
            "ram_ratio": ratio("edge_ram"),
            "disk_ratio": ratio("edge_disk"),
            "ram_p99_vs_nginx": p99_ratio,
            "runs": Value::Object(runs),
        })
    }
}

/// Every target again at 64 connections, each capped in turn at the same CPU
/// budget (`EDGE_BENCH_CPU_CAP` cores, default 0.25; 0 skips this part).
/// None when the cap cannot be set up here (said on stderr).
fn capped_rounds(
    targets: &[(String, SocketAddr, Option<u32>, u32)],
    rounds: u32,
    bench: &dyn Fn(SocketAddr, u32) -> Result<Wrk>,
) -> Result<Option<Capped>> {
    let cores: f64 = std::env::var("EDGE_BENCH_CPU_CAP").ok().and_then(|s| s.parse().ok()).unwrap_or(0.25);
    if cores <= 0.0 {
        return Ok(None);
    }
    let seconds: f64 = std::env::var("EDGE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let mut best: std::collections::BTreeMap<String, (Wrk, f64)> = Default::default();
    for round in 0..rounds {
        for (name, addr, _, cpu_pid) in targets {
            let cap = match super::cpucap::CpuCap::new(name, cores) {
                Ok(cap) => cap,
                Err(e) => {
                    eprintln!("xtask: no CPU-capped rounds: {e:#}");
                    return Ok(None);
                }
            };
            cap.enter(&super::procstat::with_children(*cpu_pid))?;
            let cpu_before = cpu_seconds(*cpu_pid);
            let w = bench(*addr, 64);
            let cpu = cpu_seconds(*cpu_pid) - cpu_before;
            drop(cap);
            let w = w?;
            let cpu_us = cpu * 1e6 / (w.requests_per_s * seconds).max(1.0);
            eprintln!(
                "xtask: capped at {:.2} cores, round {round} {name:<18} {:>8.1} req/s {:>6.2} Gb/s p99 {:>8.2} ms \
                 CPU {cpu_us:>5.0} us/resp{}",
                cores,
                w.requests_per_s,
                w.gbps(),
                w.p99_ms,
                if w.errors > 0 { format!(" ERRORS {}", w.errors) } else { String::new() }
            );
            if best.get(name).is_none_or(|(b, _)| w.gbps() > b.gbps()) {
                best.insert(name.clone(), (w, cpu_us));
            }
        }
    }
    Ok(Some(Capped { cores, best }))
}

/// A tmpfs mounted with `huge=always` (2 MiB pages for the edge's RAM-tier
/// bodies), unmounted on drop (lazily: a body still open cannot block it).
struct HugeTmpfs {
    path: PathBuf,
}

impl HugeTmpfs {
    fn mount(path: &Path, size_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("huge=always,size={size_bytes},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!("mount -t tmpfs -o huge=always: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { path: path.to_owned() })
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(self.path.as_os_str().as_bytes()) else { return };
        // SAFETY: umount2 with a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!("xtask: umount {}: {}", self.path.display(), std::io::Error::last_os_error());
        }
    }
}

/// A temp directory removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("vod-edge-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        // nginx workers run as an unprivileged user and must read the files.
        set_mode(&path, 0o755)?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `OBJECTS` segments of pseudo-random bytes in the origin's layout.
fn write_segments(store: &Path) -> Result<()> {
    let dir = store.join("titles/bench/v1");
    std::fs::create_dir_all(&dir)?;
    for p in [store.to_owned(), store.join("titles"), store.join("titles/bench"), dir.clone()] {
        set_mode(&p, 0o755)?;
    }
    write_objects(&dir, 1..=OBJECTS, 0x9e37_79b9_7f4a_7c15)
}

/// Objects `{n}.m4s` for each n in `numbers`, `OBJECT_BYTES` of xorshift bytes from `seed`.
fn write_objects(dir: &Path, numbers: std::ops::RangeInclusive<usize>, seed: u64) -> Result<()> {
    let mut state = seed;
    for n in numbers {
        let mut bytes = Vec::with_capacity(OBJECT_BYTES);
        while bytes.len() < OBJECT_BYTES {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        let path = dir.join(format!("{n}.m4s"));
        std::fs::write(&path, &bytes)?;
        set_mode(&path, 0o644)?;
    }
    Ok(())
}

/// The RAM-hit edge's memory with its RAM tier full: 1.5x the tier's worth
/// of new objects fetched through it (three times each, so admission takes
/// them), then its RSS (with the bodies it holds) against the tier's size.
/// Evicted bodies must have gone: their memfds or files would count here.
fn full_tier(store: &Path, edge: SocketAddr, pid: u32, ram_dir: Option<&Path>, ram_bytes: u64) -> Result<Value> {
    let dir = store.join("titles/bench/v1");
    let count = (ram_bytes as usize / OBJECT_BYTES) * 3 / 2;
    let numbers = OBJECTS + 1..=OBJECTS + count;
    write_objects(&dir, numbers.clone(), 0x2545_f491_4f6c_dd1d)?;
    let started = Instant::now();
    for round in 0..3 {
        for n in numbers.clone() {
            let path = format!("/titles/bench/v1/{n}.m4s");
            let (status, _, len) = http_get(edge, &path)?;
            if status != 200 || len != OBJECT_BYTES {
                bail!("filling the RAM tier, round {round}, {path}: status {status}, {len} bytes");
            }
        }
    }
    let text = http_text(edge, "/metrics")?;
    let gauge = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
    };
    let held = gauge("edge_cache_bytes{tier=\"ram\"}").context("no edge_cache_bytes{tier=\"ram\"} in /metrics")?;
    let (anon, file, bodies) = rss_parts_kb(pid, ram_dir).context("reading the edge's memory")?;
    let rss = anon + file + bodies;
    let over = rss as f64 * 1024.0 / ram_bytes as f64;
    eprintln!(
        "xtask: RAM tier full: {count} objects fetched 3x in {:.1?}; tier holds {:.1} MiB of {:.1} MiB; \
         RSS {:.1} MiB = {over:.3} x the tier (anonymous {anon} kB, file {file} kB, bodies {bodies} kB)",
        started.elapsed(),
        held / 1048576.0,
        ram_bytes as f64 / 1048576.0,
        rss as f64 / 1024.0
    );
    Ok(json!({
        "objects_fetched": count,
        "ram_tier_bytes": ram_bytes,
        "ram_tier_held_bytes": held,
        "rss_kb": rss,
        "rss_anon_kb": anon,
        "rss_file_kb": file,
        "bodies_kb": bodies,
        "rss_over_tier": over,
        "note": "RSS as above with 1.5x the tier's worth of objects fetched through the edge; target: at most 1.10",
    }))
}

/// Fetches every object twice; the second answer must be 200, 2 MiB, and
/// carry `X-Cache: want` (when `want` is not empty).
fn warm(addr: SocketAddr, want: &str) -> Result<()> {
    for n in 1..=OBJECTS {
        let path = format!("/titles/bench/v1/{n}.m4s");
        for round in 0..2 {
            let (status, headers, len) = http_get(addr, &path)?;
            if status != 200 || len != OBJECT_BYTES {
                bail!("warming {addr}{path}: status {status}, {len} bytes");
            }
            let cache = headers
                .lines()
                .find_map(|l| {
                    l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-cache")).map(|(_, v)| v.trim())
                })
                .unwrap_or("");
            if round == 1 && !want.is_empty() && cache != want {
                bail!("warming {addr}{path}: X-Cache {cache:?}, expected {want}");
            }
        }
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: status, header block, body length.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, usize)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").context("no header end")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head, out.len() - split - 4))
}

/// The body of a GET as text.
fn http_text(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").context("no header end")?;
    Ok(String::from_utf8_lossy(&out[split + 4..]).into_owned())
}

/// CPU seconds of `pid` and its direct children (0 when it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    super::procstat::tree_cpu_seconds(pid).unwrap_or(0.0)
}

/// A port that was free a moment ago (bound, then released).
pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Memory a process holds, in kB: resident anonymous pages, resident file pages, and
/// every memfd and every file in `ram_dir` it holds open, whole (the edge
/// keeps RAM-tier bodies there and sends them with sendfile without ever
/// touching their pages through its own mapping, so `VmRSS` alone would
/// leave them out).
fn rss_parts_kb(pid: u32, ram_dir: Option<&Path>) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let memfd_bytes: u64 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|t| {
                        t.to_string_lossy().starts_with("/memfd:") || ram_dir.is_some_and(|d| t.starts_with(d))
                    })
                })
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Some((field("RssAnon:")?, field("RssFile:")?, memfd_bytes / 1024))
}

/// The sum of [`rss_parts_kb`].
fn rss_kb(pid: u32, ram_dir: Option<&Path>) -> Option<u64> {
    rss_parts_kb(pid, ram_dir).map(|(a, f, b)| a + f + b)
}

pub(super) fn nginx_version() -> String {
    Command::new("/usr/sbin/nginx")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stderr).trim().rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn terminate(child: &mut Child) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One of our servers, started from its binary; its address is read from the line it prints.
pub(super) struct Proc {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl Proc {
    pub(super) fn spawn(cmd: &mut Command, announce: &'static str) -> Result<Self> {
        let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix(announce) {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => Ok(Self { child, addr: a.parse()? }),
            Err(_) => {
                terminate(&mut child);
                bail!("{:?} did not print {announce:?}", cmd.get_program())
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(&mut self.child);
        }
    }
}

/// Debian's nginx with a generated config, in the foreground.
pub(super) struct Nginx {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl Nginx {
    /// The master process's id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn start(work: &Path, name: &str, server: impl Fn(u16) -> String) -> Result<Self> {
        let dir = work.join(format!("nginx-{name}"));
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = free_port()?;
        let conf = format!(
            "worker_processes auto;\nerror_log {dir}/logs/error.log warn;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  default_type application/octet-stream;\n\
             client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;\n\
             uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n  {}\n}}\n",
            server(port),
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let mut child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("nginx exited ({status}): {err}");
            }
            if Instant::now() > end {
                terminate(&mut child);
                bail!("nginx did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, addr })
    }

    pub(super) fn stop(mut self) {
        // SIGTERM to the master: it stops its workers before exiting.
        terminate(&mut self.child);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(&mut self.child);
        }
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Wrk {
    pub(super) requests_per_s: f64,
    transfer_bytes_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p75_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: u64,
}

impl Wrk {
    pub(super) fn parse(text: &str) -> Result<Self> {
        let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim));
        let requests_per_s: f64 =
            field("Requests/sec:").context("wrk printed no Requests/sec")?.parse().context("Requests/sec")?;
        let transfer = field("Transfer/sec:").context("wrk printed no Transfer/sec")?;
        let pct = |p: &str| -> Result<f64> {
            let v = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
                .with_context(|| format!("wrk printed no {p} latency"))?;
            duration_ms(v)
        };
        let non_2xx = field("Non-2xx or 3xx responses:").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let socket_errors = field("Socket errors:")
            .map(|v| v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        Ok(Self {
            requests_per_s,
            transfer_bytes_per_s: size_bytes(transfer)?,
            p50_ms: pct("50%")?,
            p75_ms: pct("75%")?,
            p90_ms: pct("90%")?,
            p99_ms: pct("99%")?,
            errors: non_2xx + socket_errors,
        })
    }

    /// Segment payload goodput.
    fn gbps(&self) -> f64 {
        self.requests_per_s * OBJECT_BYTES as f64 * 8.0 / 1e9
    }

    fn to_json(&self) -> Value {
        json!({
            "requests_per_s": self.requests_per_s,
            "gbps": self.gbps(),
            "wrk_transfer_gbps": self.transfer_bytes_per_s * 8.0 / 1e9,
            "p50_ms": self.p50_ms, "p75_ms": self.p75_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "errors": self.errors,
        })
    }
}

/// wrk's `1.23ms` / `450.00us` / `1.02s` / `2.00m` in milliseconds.
fn duration_ms(v: &str) -> Result<f64> {
    let units = [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)];
    for (suffix, scale) in units {
        if let Some(n) = v.strip_suffix(suffix) {
            if let Ok(x) = n.parse::<f64>() {
                return Ok(x * scale);
            }
        }
    }
    bail!("cannot read wrk duration {v:?}")
}

/// wrk's `1.50GB` / `300.2MB` / `12KB` / `10B` in bytes.
fn size_bytes(v: &str) -> Result<f64> {
    let units = [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("TB", 1 << 40), ("B", 1)];
    for (suffix, scale) in units {
        if let Some(n) = v.strip_suffix(suffix) {
            if let Ok(x) = n.parse::<f64>() {
                return Ok(x * scale as f64);
            }
        }
    }
    bail!("cannot read wrk size {v:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n\
        Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    20.00ms    5.00ms  80.00ms   70.00%\n\
        Req/Sec   800.00    100.00     1.00k    60.00%\n  Latency Distribution\n     50%   19.50ms\n\
        75%   22.00ms\n     90%  900.00us\n     99%    1.20s\n  16000 requests in 10.00s, 31.25GB read\n\
        Non-2xx or 3xx responses: 3\nRequests/sec:   1600.00\nTransfer/sec:      3.13GB\n";

    #[test]
    fn reads_wrk_output() {
        let w = Wrk::parse(SAMPLE).unwrap();
        assert_eq!(w.requests_per_s, 1600.0);
        assert_eq!((w.p50_ms, w.p90_ms, w.p99_ms), (19.5, 0.9, 1200.0));
        assert_eq!(w.errors, 3);
        assert!((w.transfer_bytes_per_s - 3.13 * (1u64 << 30) as f64).abs() < 1.0);
        assert!((w.gbps() - 1600.0 * 2.0 * 1048576.0 * 8.0 / 1e9).abs() < 1e-9);
    }
}
