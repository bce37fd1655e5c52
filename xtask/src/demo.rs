//! `cargo xtask demo [--serve]`: encode a real clip, start origin, steering
//! and two edges in two sites on loopback; the edges register by heartbeat and
//! prefill the title from their fill plans (steering plans it from a launch
//! hint); then play sessions from clients of both sites through steering and
//! print QoE, edge hits and the edge/origin share of the bytes.

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
/// Disk tier of each edge, where prefill puts the planned objects.
const EDGE_DISK_BYTES: u64 = 256 << 20;
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
    let heartbeat_token = random_secret()?;
    // Steering first: the edges register with it by heartbeat, and pull their
    // fill plans from it. Its state directory holds the launch hint for the
    // title, so the plans put the title on the edges before the first viewer.
    let state = work.join("steering-state");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("hints.json"), launch_hint(store)?)?;
    let coverage = work.join("coverage.csv");
    let mut csv = s("prefix,site\n");
    for (_, site, prefix) in SITES {
        csv.push_str(&format!("{prefix},{site}\n"));
    }
    std::fs::write(&coverage, csv)?;
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_key_id = \"k1\"\ntoken_secret = \"{secret}\"\ntoken_ttl_s = 3600\n\
         trust_forwarded_for = true\nprobe_interval_ms = 1000\nprobe_timeout_ms = 500\n\
         heartbeat_token = \"{heartbeat_token}\"\ncoverage_file = \"{}\"\npopularity_dir = \"{}\"\n",
        coverage.display(),
        state.display()
    );
    let cfg_path = work.join("steering.toml");
    std::fs::write(&cfg_path, cfg)?;
    let steering = Service::start(
        "steering",
        &bins.join("steering"),
        &[s("serve"), s("--config"), cfg_path.display().to_string(), s("--listen"), any.clone()],
        &logs,
        wait,
    )?;
    let mut edges = Vec::new();
    for (name, site, _) in SITES {
        let disk = work.join(format!("{name}-disk"));
        if disk.exists() {
            std::fs::remove_dir_all(&disk).with_context(|| format!("clearing {}", disk.display()))?;
        }
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
                s("--disk-path"),
                disk.display().to_string(),
                s("--disk-bytes"),
                EDGE_DISK_BYTES.to_string(),
                s("--name"),
                s(*name),
                s("--site"),
                s(*site),
                s("--token-secret"),
                secret.clone(),
                s("--token-key-id"),
                s("k1"),
                s("--steering"),
                steering.url(),
                s("--heartbeat-token"),
                heartbeat_token.clone(),
                s("--prefill"),
                format!("{}/v1/fill-plan/{name}?edge_bytes={EDGE_DISK_BYTES}", steering.url()),
                s("--request-log"),
                work.join(format!("{name}-requests.csv")).display().to_string(),
            ],
            &logs,
            wait,
        )?);
    }
    Ok(Stack { steering, edges, origin })
}

/// Steering's launch hints (`hints.json`): the demo title's segments and init
/// segments, expected to take the whole of each site's viewing.
fn launch_hint(store: &Path) -> Result<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<serde_json::Value>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&path, root, out)?;
            } else if let Ok(rel) = path.strip_prefix(root) {
                // Segments and init segments: what edges keep on disk (playlists are refreshed, not stored).
                let key = rel.to_string_lossy().replace('\\', "/");
                if key.ends_with(".m4s") || key.ends_with(".mp4") {
                    out.push(serde_json::json!({ "key": key, "bytes": entry.metadata()?.len() }));
                }
            }
        }
        Ok(())
    }
    let mut objects = Vec::new();
    walk(&store.join("titles").join(TITLE), store, &mut objects)?;
    Ok(serde_json::to_string(&serde_json::json!([{ "title": TITLE, "expected_share": 1.0, "objects": objects }]))?)
}

/// Cache counters of one edge, read from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeCounters {
    hits: f64,
    misses: f64,
    segment_misses: f64,
    upstream_bytes: f64,
    served_bytes: f64,
    prefill_bytes: f64,
}

impl EdgeCounters {
    fn read(edge: &Service) -> Self {
        let m = http_get(edge.addr, "/metrics").unwrap_or_default();
        let requests = |result: &str| {
            m.lines()
                .filter(|l| l.starts_with("edge_requests_total{") && l.contains(&format!("result=\"{result}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        Self {
            hits: requests("hit") + requests("disk_hit") + requests("stale"),
            misses: requests("miss"),
            segment_misses: metric(&m, "edge_segment_misses_total"),
            upstream_bytes: metric(&m, "edge_upstream_bytes_total"),
            served_bytes: metric(&m, "edge_bytes_served_total"),
            prefill_bytes: metric(&m, "edge_prefill_fetched_bytes_total"),
        }
    }
}

/// Waits until every edge has pulled its fill plan and holds all of it (or
/// gives up after a minute, saying so), and until steering lists every edge.
/// Returns the edges' counters at that point: the baseline playback is measured from.
fn wait_for_prefill(stack: &Stack) -> Result<Vec<EdgeCounters>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let t = Instant::now();
    for e in &stack.edges {
        loop {
            let m = http_get(e.addr, "/metrics").unwrap_or_default();
            let done = m
                .lines()
                .any(|l| l.starts_with("edge_prefill_state{") && l.contains("state=\"done\"") && l.ends_with(" 1"));
            if done {
                let (objects, bytes) = (metric(&m, "edge_prefill_held_objects"), metric(&m, "edge_prefill_held_bytes"));
                let planned = metric(&m, "edge_prefill_planned_objects");
                eprintln!(
                    "demo: {} prefilled {objects:.0} of {planned:.0} planned objects ({bytes:.0} B) in {:.1}s",
                    e.name,
                    t.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not finish its prefill within a minute (see {}'s log)", e.name, e.name);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    loop {
        let listed = http_get(stack.steering.addr, "/v1/edges").unwrap_or_default();
        if stack.edges.iter().all(|e| listed.contains(&format!("\"{}\"", e.name))) {
            break;
        }
        if Instant::now() > deadline {
            bail!("steering does not list every edge after a minute: {listed}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(stack.edges.iter().map(EdgeCounters::read).collect())
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

fn summary(report: &serde_json::Value, stack: &Stack, before: &[EdgeCounters]) -> Result<()> {
    let f = |k: &str| report.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    println!("== QoE over {} sessions ({} failed)", f("sessions"), f("failed"));
    println!("  startup          {:>10.0} ms (mean)", f("startup_ms"));
    println!("  average bitrate  {:>10.0} kbps", f("avg_bitrate_kbps"));
    println!("  rebuffer ratio   {:>10.4}", f("rebuffer_ratio"));
    println!("  rebuffer events  {:>10.2} per session", f("rebuffer_events"));
    println!("  switches         {:>10.2} per session", f("switches"));
    println!("== bytes (prefilled from the launch hint before the first viewer, then played)");
    let (mut prefill_bytes, mut play_origin, mut play_served, mut hits, mut misses) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut segment_misses = 0.0;
    for (e, b) in stack.edges.iter().zip(before) {
        let a = EdgeCounters::read(e);
        let (served, from_origin) = (a.served_bytes - b.served_bytes, a.upstream_bytes - b.upstream_bytes);
        let (h, m, sm) = (a.hits - b.hits, a.misses - b.misses, a.segment_misses - b.segment_misses);
        let to_players =
            report.pointer(&format!("/bytes_by_edge/{}", e.name)).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        println!(
            "  {:<8} prefilled {:>11.0} B | served {:>11.0} B to players ({:>11.0} B counted by players), \
             {h:.0} hits, {m:.0} misses ({sm:.0} on segments), {from_origin:.0} B from origin while playing",
            e.name, b.prefill_bytes, served, to_players
        );
        prefill_bytes += b.prefill_bytes;
        play_origin += from_origin;
        play_served += served;
        hits += h;
        misses += m;
        segment_misses += sm;
    }
    println!("  origin   {prefill_bytes:>12.0} B for prefill (off-peak), {play_origin:>12.0} B while playing");
    if hits + misses > 0.0 {
        println!(
            "  edge hits     {:5.1}% of {:.0} player requests; segment misses {segment_misses:.0} \
             (the other misses are playlists, refreshed from the origin by TTL)",
            100.0 * hits / (hits + misses),
            hits + misses
        );
    }
    if play_served > 0.0 {
        let edge_share = (1.0 - play_origin / play_served).clamp(0.0, 1.0);
        println!(
            "  byte share    {:5.1}% from edge caches, {:5.1}% from the origin",
            100.0 * edge_share,
            100.0 * (1.0 - edge_share)
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
    let before = wait_for_prefill(&stack)?;
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
        let result = summary(&report, &stack, &before);
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
