//! `cargo xtask bench steering`: wrk on loopback against steering's
//! `/v1/redirect/{title}/hls/master.m3u8` making the real decision, side by
//! side with nginx answering a fixed `return 302`.
//!
//! Steering runs its release build with a generated coverage table
//! (`STEERING_BENCH_PREFIXES`, default 200,000 prefixes, one in five IPv6)
//! over 333 sites, 1,000 configured edges (three per site, each site listing
//! its next three as nearby; all probed every second, answered by a small
//! nginx), and `127.0.0.1` as a trusted proxy. A wrk Lua script sends each
//! request with an `X-Forwarded-For` client address drawn from the covered
//! prefixes (plus some uncovered ones) and one of 1,000 titles; nginx gets the
//! same script. Headline: requests/s, ours / nginx's (target ≥ 0.7); p99 in
//! details (target ≤ 2× nginx's). Then `steering bench-decide`: per-call
//! latency of lookup + decision with 1M prefixes and 1,000 edges (target p99
//! < 10 µs).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::edge::{free_port, nginx_version, set_mode, Nginx, Proc, Wrk};
use super::BenchResult;
use crate::env;

const EDGES: usize = 1000;
const SITES: usize = EDGES / 3;
const TITLES: usize = 1000;
const CLIENTS: usize = 20_000;
const CONNECTIONS: u32 = 64;

/// A xorshift generator, so every run uses the same table.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A prefix as (text, a client address inside it).
fn prefix(rng: &mut Rng) -> (String, String) {
    if rng.next().is_multiple_of(5) {
        let len = 32 + (rng.next() % 17) as u32;
        let raw = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let net = ((raw & !(0b111u128 << 125)) | (1u128 << 125)) & (u128::MAX << (128 - len));
        let host = net | (u128::from(rng.next()) & !(u128::MAX << (128 - len)));
        (format!("{}/{len}", std::net::Ipv6Addr::from(net)), std::net::Ipv6Addr::from(host).to_string())
    } else {
        let len = 16 + (rng.next() % 9) as u32;
        let net = (rng.next() as u32) & (u32::MAX << (32 - len));
        let host = net | (rng.next() as u32 & !(u32::MAX << (32 - len)));
        (format!("{}/{len}", std::net::Ipv4Addr::from(net)), std::net::Ipv4Addr::from(host).to_string())
    }
}

/// Writes the coverage CSV, the steering config and the wrk script; returns (config, script).
fn write_inputs(dir: &Path, prefixes: usize, health_port: u16) -> Result<(PathBuf, PathBuf)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut csv = String::with_capacity(prefixes * 28);
    csv.push_str("prefix,site\n");
    let mut clients = Vec::with_capacity(CLIENTS);
    // A coverage file names each prefix once.
    let mut seen = std::collections::HashSet::with_capacity(prefixes);
    for i in 0..prefixes {
        let (net, host) = loop {
            let (net, host) = prefix(&mut rng);
            if seen.insert(net.clone()) {
                break (net, host);
            }
        };
        let _ = writeln!(csv, "{net},s{}", rng.next() as usize % SITES);
        if i.is_multiple_of((prefixes / CLIENTS).max(1)) && clients.len() < CLIENTS {
            clients.push(host);
        }
    }
    // Some clients no prefix covers (they fall back to every site).
    for _ in 0..CLIENTS / 20 {
        clients.push(prefix(&mut rng).1);
    }
    let coverage = dir.join("coverage.csv");
    std::fs::write(&coverage, csv)?;
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_secret = \"bench-secret\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         coverage_file = \"{}\"\n\n[nearby]\n",
        coverage.display()
    );
    for s in 0..SITES {
        let _ = writeln!(cfg, "s{s} = [\"s{}\", \"s{}\", \"s{}\"]", (s + 1) % SITES, (s + 2) % SITES, (s + 3) % SITES);
    }
    for e in 0..EDGES {
        let _ = write!(
            cfg,
            "\n[[edges]]\nname = \"e{e}\"\nurl = \"http://127.0.0.1:{health_port}/e{e}\"\nsite = \"s{}\"\n\
             max_load_bps = 10000000000\n",
            e % SITES
        );
    }
    let config = dir.join("steering.toml");
    std::fs::write(&config, cfg)?;
    let mut lua = String::from("local ips = {\n");
    for c in &clients {
        let _ = writeln!(lua, "\"{c}\",");
    }
    lua.push_str("}\nlocal n = 0\nrequest = function()\n  n = n + 1\n");
    let _ = write!(
        lua,
        "  local ip = ips[(n * 7919) % #ips + 1]\n  local t = (n * 104729) % {TITLES}\n  \
         return wrk.format(\"GET\", \"/v1/redirect/t\" .. t .. \"/hls/master.m3u8\", {{[\"X-Forwarded-For\"] = ip}})\n\
         end\n"
    );
    let script = dir.join("redirect.lua");
    std::fs::write(&script, lua)?;
    Ok((config, script))
}

/// One GET with `X-Forwarded-For`; returns (status, Location).
fn probe_redirect(addr: SocketAddr, client: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET /v1/redirect/t1/hls/master.m3u8 HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {client}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let location = out
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim()))
        .unwrap_or("")
        .to_owned();
    Ok((status, location))
}

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    for tool in ["/usr/sbin/nginx", "/usr/bin/wrk"] {
        if !Path::new(tool).exists() {
            bail!("{tool} is missing: run `cargo xtask deps` (Debian packages nginx and wrk)");
        }
    }
    env::cargo(&["build", "--release", "-p", "steering"])?;
    let steering_bin = env::target_dir().join("release/steering");
    let prefixes: usize =
        std::env::var("STEERING_BENCH_PREFIXES").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000).max(1000);
    let seconds: u32 = std::env::var("STEERING_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let rounds: u32 = std::env::var("STEERING_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let work = std::env::temp_dir().join(format!("vod-steering-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    set_mode(&work, 0o755)?;
    let result = bench_in(&work, &steering_bin, prefixes, seconds, rounds);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn bench_in(work: &Path, steering_bin: &Path, prefixes: usize, seconds: u32, rounds: u32) -> Result<BenchResult> {
    // The edges' health endpoint (1,000 probes a second) and the baseline, on separate nginx instances.
    let health = Nginx::start(work, "health", |port| {
        format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}")
    })?;
    let fixed = "http://127.0.0.1:9/t/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/titles/t1/hls/master.m3u8";
    let nginx = Nginx::start(work, "redirect", |port| {
        format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ add_header Access-Control-Allow-Origin * always; \
             return 302 {fixed}; }} }}"
        )
    })?;
    let (config, script) = write_inputs(work, prefixes, health.addr.port())?;
    let steering_port = free_port()?;
    let started = std::time::Instant::now();
    let steering = Proc::spawn(
        Command::new(steering_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{steering_port}")]),
        "steering listening on ",
    )?;
    let load_s = started.elapsed().as_secs_f64();
    let (status, location) = probe_redirect(steering.addr, "10.0.0.1")?;
    if status != 302 || !location.contains("/t/") {
        bail!("steering answered {status} (Location {location:?}) instead of a signed 302");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.clamp(1, 4).to_string();
    let wrk = |addr: SocketAddr| -> Result<Wrk> {
        let out = Command::new("/usr/bin/wrk")
            .args(["-t", &threads, "-c", &CONNECTIONS.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}/"))
            .output()
            .context("running wrk")?;
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Wrk::parse(&String::from_utf8_lossy(&out.stdout))
    };
    let mut best: [Option<Wrk>; 2] = [None, None];
    for round in 0..rounds {
        for (i, (name, addr)) in [("steering", steering.addr), ("nginx", nginx.addr)].into_iter().enumerate() {
            let w = wrk(addr)?;
            eprintln!(
                "xtask: round {round} {name:<9} {:>9.0} req/s p50 {:>7.3} ms p99 {:>7.3} ms{}",
                w.requests_per_s,
                w.p50_ms,
                w.p99_ms,
                if w.errors > 0 { format!(" ERRORS {}", w.errors) } else { String::new() }
            );
            if best[i].as_ref().is_none_or(|b| w.requests_per_s > b.requests_per_s) {
                best[i] = Some(w);
            }
        }
    }
    let steering_rss_kb = rss_kb(steering.pid());
    steering.stop();
    nginx.stop();
    health.stop();
    let [Some(ours), Some(base)] = best else { bail!("no wrk rounds ran (STEERING_BENCH_ROUNDS=0?)") };

    // The decision alone, in its own process, on the 1M-prefix table.
    let out = Command::new(steering_bin)
        .args(["bench-decide", "--edges", &EDGES.to_string(), "--prefixes", "1000000", "--decisions", "1000000"])
        .output()
        .context("running steering bench-decide")?;
    if !out.status.success() {
        bail!("steering bench-decide failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let decide: Value = serde_json::from_slice(&out.stdout).context("bench-decide output")?;
    eprintln!("xtask: decide alone: {decide}");

    let ratio = if base.requests_per_s > 0.0 { ours.requests_per_s / base.requests_per_s } else { 0.0 };
    let p99_ratio = if base.p99_ms > 0.0 { ours.p99_ms / base.p99_ms } else { 0.0 };
    let run_json = |w: &Wrk| {
        json!({
            "requests_per_s": w.requests_per_s, "p50_ms": w.p50_ms, "p75_ms": w.p75_ms, "p90_ms": w.p90_ms,
            "p99_ms": w.p99_ms, "errors": w.errors,
        })
    };
    let details = json!({
        "prefixes": prefixes,
        "ipv6_share": 0.2,
        "edges": EDGES,
        "sites": SITES,
        "titles": TITLES,
        "client_addresses": CLIENTS + CLIENTS / 20,
        "connections": CONNECTIONS,
        "wrk_threads": threads,
        "cores": cores,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "steering": run_json(&ours),
        "nginx": run_json(&base),
        "p99_ratio_ours_over_nginx": p99_ratio,
        "targets": { "requests_ratio_min": 0.7, "p99_ratio_max": 2.0, "decide_p99_ns_max": 10_000 },
        "steering_start_s": load_s,
        "steering_rss_kb": steering_rss_kb,
        "decide": decide,
        "note": "best round of each; wrk, steering (with its 1,000 health probes a second) and nginx share the \
                 machine's cores on loopback; X-Forwarded-For from 127.0.0.1 is trusted; decide latency is \
                 lookup + ranking per call, clock read around each call",
    });
    Ok(BenchResult {
        name: "steering",
        unit: "requests/s",
        ours: ours.requests_per_s,
        baseline: base.requests_per_s,
        baseline_name: format!("nginx {} return 302", nginx_version()),
        ratio,
        details,
    })
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_prefixes_contain_their_client() {
        let mut rng = Rng(7);
        for _ in 0..200 {
            let (net, host) = prefix(&mut rng);
            let (addr, len) = net.split_once('/').unwrap();
            let len: u32 = len.parse().unwrap();
            match (addr.parse::<std::net::IpAddr>().unwrap(), host.parse::<std::net::IpAddr>().unwrap()) {
                (std::net::IpAddr::V4(n), std::net::IpAddr::V4(h)) => {
                    let mask = u32::MAX << (32 - len);
                    assert_eq!(u32::from(h) & mask, u32::from(n), "{net} {host}");
                }
                (std::net::IpAddr::V6(n), std::net::IpAddr::V6(h)) => {
                    let mask = u128::MAX << (128 - len);
                    assert_eq!(u128::from(h) & mask, u128::from(n), "{net} {host}");
                }
                _ => panic!("family mismatch {net} {host}"),
            }
        }
    }
}
