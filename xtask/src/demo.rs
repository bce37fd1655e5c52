//! `cargo xtask demo [--serve]`: encode a real clip, start origin, two edges
//! in two sites and steering on loopback, play sessions from clients of both
//! sites through steering, print QoE and where the bytes came from.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stack::Service;

use crate::env;

const TITLE: &str = "bbb";
const SESSIONS: u32 = 24;
/// Simulated client addresses: one ISP per site.
const SITES: &[(&str, &str, &str)] = &[("edge-a", "isp-a", "10.1.0.0/16"), ("edge-b", "isp-b", "10.2.0.0/16")];
const CLIENTS: &[&str] = &["10.1.0.10", "10.2.0.20"];

fn s(x: impl Into<String>) -> String {
    x.into()
}

fn random_secret() -> Result<String> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A minimal HTTP/1.1 GET for the demo's own probes (loopback only).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned()))
}

/// Sums every sample of a Prometheus metric family whose name starts with `name`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Stack {
    // Field order is drop order: steering, edges, origin.
    steering: Service,
    edges: Vec<Service>,
    origin: Service,
}

fn start_stack(bins: &Path, work: &Path, store: &Path) -> Result<Stack> {
    let logs = work.join("logs");
    let wait = Duration::from_secs(30);
    let any = s("127.0.0.1:0");
    let origin = Service::start(
        "origin",
        &bins.join("origin"),
        &[s("serve"), s("--root"), store.display().to_string(), s("--listen"), any.clone()],
        &logs,
        wait,
    )?;
    let secret = random_secret()?;
    let mut edges = Vec::new();
    for (name, _, _) in SITES {
        edges.push(Service::start(
            name,
            &bins.join("edge"),
            &[
                s("serve"),
                s("--listen"),
                any.clone(),
                s("--upstream"),
                origin.url(),
                s("--ram-bytes"),
                s("268435456"),
                s("--name"),
                s(*name),
                s("--token-secret"),
                secret.clone(),
                s("--request-log"),
                work.join(format!("{name}-requests.csv")).display().to_string(),
            ],
            &logs,
            wait,
        )?);
    }
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_key_id = \"k1\"\ntoken_secret = \"{secret}\"\ntoken_ttl_s = 3600\n\
         trust_forwarded_for = true\nprobe_interval_ms = 1000\nprobe_timeout_ms = 500\n"
    );
    for ((name, site, prefix), edge) in SITES.iter().zip(&edges) {
        cfg.push_str(&format!(
            "\n[[edges]]\nname = \"{name}\"\nurl = \"{}\"\nsite = \"{site}\"\nprefixes = [\"{prefix}\"]\n",
            edge.url()
        ));
    }
    let cfg_path = work.join("steering.toml");
    std::fs::write(&cfg_path, cfg)?;
    let steering = Service::start(
        "steering",
        &bins.join("steering"),
        &[s("serve"), s("--config"), cfg_path.display().to_string(), s("--listen"), any],
        &logs,
        wait,
    )?;
    Ok(Stack { steering, edges, origin })
}

fn encode(bins: &Path, clip: &Path, store: &Path) -> Result<()> {
    if store.exists() {
        std::fs::remove_dir_all(store).with_context(|| format!("clearing {}", store.display()))?;
    }
    let t = Instant::now();
    let status = std::process::Command::new(bins.join("encoder"))
        .args(["encode", "--input"])
        .arg(clip)
        .args(["--title", TITLE, "--store"])
        .arg(store)
        .status()
        .context("running the encoder")?;
    if !status.success() {
        bail!("encoder failed ({status})");
    }
    eprintln!("demo: encoded {} in {:.1}s", clip.display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn play(bins: &Path, stack: &Stack) -> Result<serde_json::Value> {
    let mut args = vec![
        s("live"),
        s("--steering"),
        stack.steering.url(),
        s("--title"),
        s(TITLE),
        s("--sessions"),
        SESSIONS.to_string(),
        s("--json"),
    ];
    for c in CLIENTS {
        args.push(s("--client-ip"));
        args.push(s(*c));
    }
    let (status, out, err) = stack::run(&bins.join("player-sim"), &args)?;
    if !status.success() {
        bail!("player-sim live failed ({status}): {err}");
    }
    serde_json::from_str(&out).with_context(|| format!("player-sim printed no JSON: {out}"))
}

fn summary(report: &serde_json::Value, stack: &Stack) -> Result<()> {
    let f = |k: &str| report.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    println!("== QoE over {} sessions ({} failed)", f("sessions"), f("failed"));
    println!("  startup          {:>10.0} ms (mean)", f("startup_ms"));
    println!("  average bitrate  {:>10.0} kbps", f("avg_bitrate_kbps"));
    println!("  rebuffer ratio   {:>10.4}", f("rebuffer_ratio"));
    println!("  rebuffer events  {:>10.2} per session", f("rebuffer_events"));
    println!("  switches         {:>10.2} per session", f("switches"));
    println!("== bytes");
    let mut origin_bytes = 0.0;
    for e in &stack.edges {
        let m = http_get(e.addr, "/metrics").unwrap_or_default();
        let served = metric(&m, "edge_bytes_served_total");
        let upstream = metric(&m, "edge_upstream_bytes_total");
        origin_bytes += upstream;
        let to_players =
            report.pointer(&format!("/bytes_by_edge/{}", e.name)).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        println!(
            "  {:<8} served {:>12.0} B to players ({:>12.0} B counted by players), filled {:>10.0} B from origin",
            e.name, served, to_players, upstream
        );
    }
    let served_total: f64 = report
        .get("bytes_by_edge")
        .and_then(|m| m.as_object())
        .map_or(0.0, |m| m.values().filter_map(serde_json::Value::as_f64).sum());
    println!("  origin   {origin_bytes:>12.0} B in all");
    if served_total > 0.0 {
        println!(
            "  edge offload {:.1}% of player bytes came from edge caches",
            100.0 * (1.0 - origin_bytes / served_total).max(0.0)
        );
    }
    if f("failed") > 0.0 {
        bail!("{} sessions failed", f("failed"));
    }
    Ok(())
}

/// Starts the player page (`tests/browser/serve.mjs`: the page plus hls.js and
/// dash.js from `node_modules`) and returns it with the URL a person opens.
fn start_page(work: &Path, steering: &str) -> Result<(Service, String)> {
    let dir = env::root().join("tests/browser");
    let node = which("node").context("node is not on PATH")?;
    let page = Service::start(
        "page",
        &node,
        &[dir.join("serve.mjs").display().to_string(), s("--listen"), s("127.0.0.1:0")],
        &work.join("logs"),
        Duration::from_secs(15),
    )?;
    let url = format!("{}/?steering={steering}&title={TITLE}&titles={TITLE}&player=hls", page.url());
    Ok((page, url))
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs the demo; with `serve`, keeps the stack up until SIGTERM or SIGINT.
pub fn run(serve: bool) -> Result<()> {
    env::install_system_deps()?;
    let clip = env::bbb_clip()?;
    env::cargo(&[
        "build",
        "--release",
        "-p",
        "encoder",
        "-p",
        "origin",
        "-p",
        "edge",
        "-p",
        "steering",
        "-p",
        "player-sim",
    ])?;
    let started = Instant::now();
    let bins = env::target_dir().join("release");
    let work: PathBuf = env::target_dir().join("demo");
    std::fs::create_dir_all(&work)?;
    let store = work.join("store");
    encode(&bins, &clip, &store)?;
    let mut stack = start_stack(&bins, &work, &store)?;
    eprintln!(
        "demo: origin {} | {} {} | {} {} | steering {}",
        stack.origin.url(),
        stack.edges[0].name,
        stack.edges[0].url(),
        stack.edges[1].name,
        stack.edges[1].url(),
        stack.steering.url()
    );
    if serve {
        let stop = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
        let base = stack.steering.url();
        let mut page = start_page(&work, &base);
        println!(
            "PLAY hls={base}/v1/redirect/{TITLE}/hls/master.m3u8 dash={base}/v1/redirect/{TITLE}/dash/manifest.mpd"
        );
        if let Ok((_, url)) = &page {
            println!("PAGE {url}");
        }
        std::io::stdout().flush()?;
        if let Err(e) = &page {
            eprintln!("demo: no player page ({e:#}); the PLAY URLs work in any player");
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("demo: stopping");
        if let Ok((p, _)) = &mut page {
            p.stop(Duration::from_secs(5));
        }
    } else {
        let report = play(&bins, &stack)?;
        let result = summary(&report, &stack);
        eprintln!("demo: ran in {:.1}s after the build", started.elapsed().as_secs_f64());
        result?;
    }
    let grace = Duration::from_secs(5);
    stack.steering.stop(grace);
    for e in &mut stack.edges {
        e.stop(grace);
    }
    stack.origin.stop(grace);
    Ok(())
}
