//! Real players in a real browser: encode a generated title, serve it from
//! origin + two edges + steering on loopback, and run the Node suite in
//! `tests/browser` (playwright-core driving Debian's chromium) that plays it
//! with hls.js and dash.js through the steering redirect URLs. Broken copies
//! of the title (garbage segments, audio only, nothing published) must fail
//! the same checks. With content steering, killing the edge a player uses
//! must move it to the other edge.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stack::{bin, Service};

const SECRET: &str = "browser-test-secret";
const HEARTBEAT_TOKEN: &str = "browser-test-heartbeat";
const WAIT: Duration = Duration::from_secs(30);
/// The whole Node suite (every case, both players) must finish within this.
const SUITE_DEADLINE: Duration = Duration::from_secs(170);
const TITLE: &str = "clip";
const CLIP_SECONDS: u32 = 40;
/// Longest stall a player may have when its edge dies (steering notices within ~1.5 s).
const MAX_FAILOVER_STALL_MS: u64 = 8000;
/// The tests of this file each start a browser and a stack: one at a time on small CI machines.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn s(x: &str) -> String {
    x.to_owned()
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Where screenshots and the run's report go: `target/browser/` (created).
fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap_or(dir)
}

fn require_tools() {
    for b in ["encoder", "origin", "edge", "steering"] {
        assert!(
            bin(b).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            bin(b).display()
        );
    }
    assert!(
        browser_dir().join("node_modules/playwright-core").exists()
            && browser_dir().join("node_modules/hls.js").exists()
            && browser_dir().join("node_modules/dashjs").exists(),
        "tests/browser/node_modules is missing: run `cargo xtask deps` (or `npm ci` in tests/browser)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "/usr/bin/chromium is missing: run `cargo xtask deps` (Debian package `chromium`)"
    );
}

/// Encodes a generated clip into `store` and returns the ladder's heights.
fn encode(work: &Path, store: &Path) -> Vec<u64> {
    stack::encode_generated(work, store, TITLE, (CLIP_SECONDS, 640, 360), 2).unwrap_or_else(|e| panic!("{e}"));
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(format!("titles/{TITLE}/catalog.json"))).unwrap()).unwrap();
    let mut heights: Vec<u64> = catalog["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "video")
        .filter_map(|r| r["height"].as_u64())
        .collect();
    heights.sort_unstable();
    heights.dedup();
    assert!(heights.len() >= 3, "expected a ladder of at least 3 rungs: {catalog}");
    heights
}

/// Copies the published title to `name` (manifests are relative, so they work as they are).
fn copy_title(store: &Path, name: &str) -> PathBuf {
    let to = store.join("titles").join(name);
    stack::copy_dir(&store.join("titles").join(TITLE), &to).unwrap();
    to
}

/// `garbage`: every video segment replaced by noise of the same size.
fn make_garbage_title(store: &Path, heights: &[u64]) {
    let dir = copy_title(store, "garbage");
    let cat: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).unwrap()).unwrap();
    let mut x: u32 = 0x9e37_79b9;
    let mut replaced = 0;
    for r in cat["renditions"].as_array().unwrap().iter().filter(|r| r["kind"] == "video") {
        let rdir = dir.join(r["id"].as_str().unwrap());
        for e in std::fs::read_dir(&rdir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "m4s") {
                let len = std::fs::metadata(&p).unwrap().len() as usize;
                let noise: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                std::fs::write(&p, noise).unwrap();
                replaced += 1;
            }
        }
    }
    assert!(replaced >= heights.len(), "no video segments to corrupt in {}", dir.display());
}

/// `audioonly`: manifests that list only the audio rendition.
fn make_audio_only_title(store: &Path) {
    let dir = copy_title(store, "audioonly");
    let cat: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).unwrap()).unwrap();
    let audio =
        cat["renditions"].as_array().unwrap().iter().find(|r| r["kind"] == "audio").expect("an audio rendition");
    let (id, bw, codecs) =
        (audio["id"].as_str().unwrap(), audio["bandwidth_bps"].as_u64().unwrap(), audio["codecs"].as_str().unwrap());
    std::fs::write(
        dir.join("hls/master.m3u8"),
        format!("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH={bw},CODECS=\"{codecs}\"\n{id}.m3u8\n"),
    )
    .unwrap();
    let mpd = std::fs::read_to_string(dir.join("dash/manifest.mpd")).unwrap();
    let start = mpd.find("<AdaptationSet").expect("an AdaptationSet");
    assert!(mpd[start..].contains("contentType=\"video\""), "the first AdaptationSet should be video:\n{mpd}");
    let end = start + mpd[start..].find("</AdaptationSet>").unwrap() + "</AdaptationSet>".len();
    let without_video = format!("{}{}", &mpd[..start], mpd[end..].trim_start_matches('\n'));
    assert!(!without_video.contains("contentType=\"video\""));
    std::fs::write(dir.join("dash/manifest.mpd"), without_video).unwrap();
}

struct Stack {
    // Field order is drop order.
    steering: Service,
    edges: Vec<Service>,
    _origin: Service,
}

fn start_stack(store: &Path, logs: &Path, work: &Path) -> Stack {
    let origin = Service::origin(store, logs, WAIT).unwrap();
    let edges: Vec<Service> = ["edge-a", "edge-b"]
        .iter()
        .map(|name| {
            Service::start(
                name,
                &bin("edge"),
                &[
                    s("serve"),
                    s("--listen"),
                    s("127.0.0.1:0"),
                    s("--upstream"),
                    origin.url(),
                    s("--ram-bytes"),
                    s("200000000"),
                    s("--name"),
                    s(name),
                    s("--token-secret"),
                    s(SECRET),
                ],
                logs,
                WAIT,
            )
            .unwrap()
        })
        .collect();
    // The browser's requests come from 127.0.0.1: edge-a's site covers it, edge-b is the other site.
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_secret = \"{SECRET}\"\nprobe_interval_ms = 300\nprobe_timeout_ms = 300\nprobe_failures_to_down = 1\n"
    );
    for (e, (site, prefix)) in edges.iter().zip([("isp-a", "127.0.0.0/8"), ("isp-b", "10.2.0.0/16")]) {
        cfg.push_str(&format!(
            "\n[[edges]]\nname = \"{}\"\nurl = \"{}\"\nsite = \"{site}\"\nprefixes = [\"{prefix}\"]\n",
            e.name,
            e.url()
        ));
    }
    let path = work.join("steering.toml");
    std::fs::write(&path, cfg).unwrap();
    let steering = Service::steering(&path, logs, WAIT).unwrap();
    Stack { steering, edges, _origin: origin }
}

/// Steering first, then edges that register themselves by heartbeats and
/// steer the master playlists they serve at it (content steering).
fn start_steered_stack(store: &Path, logs: &Path, work: &Path) -> Stack {
    let origin = Service::origin(store, logs, WAIT).unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_secret = \"{SECRET}\"\nheartbeat_token = \"{HEARTBEAT_TOKEN}\"\n\
         heartbeat_timeout_ms = 1200\nprobe_interval_ms = 300\nprobe_timeout_ms = 300\nprobe_failures_to_down = 1\n\
         steering_ttl_s = 1\n"
    );
    let path = work.join("steering-hb.toml");
    std::fs::write(&path, cfg).unwrap();
    let steering = Service::steering(&path, logs, WAIT).unwrap();
    let start_edge = |name: &str, site: &str, listen: &str| {
        Service::start(
            name,
            &bin("edge"),
            &[
                s("serve"),
                s("--listen"),
                s(listen),
                s("--upstream"),
                origin.url(),
                s("--ram-bytes"),
                s("200000000"),
                s("--name"),
                s(name),
                s("--token-secret"),
                s(SECRET),
                s("--steering"),
                steering.url(),
                s("--heartbeat-token"),
                s(HEARTBEAT_TOKEN),
                s("--heartbeat-interval-ms"),
                s("300"),
                s("--site"),
                s(site),
            ],
            logs,
            WAIT,
        )
    };
    // Both edges on one host, told apart by port only: hls.js reaches the other pathway
    // through the per-variant URIs of steering's pathway clones.
    let edges = vec![
        start_edge("edge-a", "isp-a", "127.0.0.1:0").unwrap(),
        start_edge("edge-b", "isp-b", "127.0.0.1:0").unwrap(),
    ];
    let registered = stack::wait_until(WAIT, || {
        let Ok(r) = reqwest::blocking::get(format!("{}/v1/edges", steering.url())) else { return false };
        let Ok(v) = r.json::<serde_json::Value>() else { return false };
        let list = v.as_array().or_else(|| v["edges"].as_array()).cloned().unwrap_or_default();
        edges.iter().all(|e| list.iter().any(|x| x["name"] == e.name.as_str() && x["available"] == true))
    });
    assert!(registered, "the edges did not register with steering by heartbeats:\n{}", steering.log());
    Stack { steering, edges, _origin: origin }
}

/// What the Node suite reported, plus what it printed to stderr.
struct SuiteRun {
    report: serde_json::Value,
    stderr: String,
    kills: Vec<String>,
}

/// Runs `node run.mjs` on `spec`, answering its kill requests by SIGKILLing
/// the named edge; bounded by `SUITE_DEADLINE`.
fn run_suite(spec: &serde_json::Value, work: &Path, edges: &mut [Service]) -> SuiteRun {
    let spec_path = work.join("spec.json");
    let out_path = work.join("results.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    let stderr_path = work.join("node.log");
    let mut child = Command::new("node")
        .arg("run.mjs")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&out_path)
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("starting node (Node 18+ must be on PATH; `cargo xtask deps` installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + SUITE_DEADLINE;
    let mut kills = Vec::new();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if ev["event"] == "kill" {
                let host = ev["host"].as_str().unwrap_or_default().to_owned();
                let edge = edges.iter_mut().find(|e| e.addr.to_string() == host);
                let answer = match edge {
                    Some(e) => {
                        e.kill();
                        kills.push(format!("{} ({host})", e.name));
                        "killed"
                    }
                    None => "unknown-host",
                };
                let _ = writeln!(stdin, "{answer}");
            }
        }
    };
    drop(stdin);
    let _ = reader.join();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|| panic!("the browser suite did not finish within {SUITE_DEADLINE:?}; its log:\n{stderr}"));
    assert!(status.success(), "the browser suite failed to run ({status}):\n{stderr}");
    let report = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    SuiteRun { report, stderr, kills }
}

fn case<'a>(run: &'a SuiteRun, name: &str) -> &'a serde_json::Value {
    run.report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no result for case {name}:\n{}", run.stderr))
}

fn describe(c: &serde_json::Value) -> String {
    let console: Vec<&str> =
        c["console"].as_array().map(|a| a.iter().filter_map(|l| l.as_str()).collect()).unwrap_or_default();
    format!(
        "case {} ({}) {}\nfailures: {}\nmetrics: {}\npage console:\n  {}",
        c["name"],
        c["src"],
        if c["ok"] == true { "passed" } else { "failed" },
        c["failures"],
        c["metrics"],
        console.join("\n  ")
    )
}

#[test]
fn hls_js_and_dash_js_play_every_published_stream_in_chromium() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let store = work.join("store");
    let logs = work.join("logs");
    let t = Instant::now();
    let heights = encode(work, &store);
    eprintln!("encoded {CLIP_SECONDS} s into rungs {heights:?} in {:.1} s", t.elapsed().as_secs_f64());
    make_garbage_title(&store, &heights);
    make_audio_only_title(&store);
    let mut stack = start_stack(&store, &logs, work);
    let base = stack.steering.url();
    let src = |title: &str, player: &str| match player {
        "hls" => format!("{base}/v1/redirect/{title}/hls/master.m3u8"),
        _ => format!("{base}/v1/redirect/{title}/dash/manifest.mpd"),
    };
    let out = out_dir();
    let mut cases = Vec::new();
    for player in ["hls", "dash"] {
        cases.push(serde_json::json!({
            "name": format!("{player}-play"), "player": player, "src": src(TITLE, player),
            "checks": "full", "expectHeights": heights,
        }));
    }
    // The demo page, driven through its form.
    cases.push(serde_json::json!({
        "name": "demo-page", "player": "dash", "steering": base, "title": TITLE, "src": src(TITLE, "dash"), "checks": "page",
    }));
    // CORS on every answer a player may get, redirects and errors included.
    let play: serde_json::Value =
        reqwest::blocking::get(format!("{base}/v1/play/{TITLE}?format=hls")).unwrap().json().unwrap();
    let signed = play["urls"][0]["url"].as_str().expect("a signed URL").to_owned();
    let signed_dir = signed.trim_end_matches("hls/master.m3u8").to_owned();
    let edge_a = stack.edges[0].url();
    let cors: Vec<(String, u16)> = vec![
        (src(TITLE, "hls"), 200),
        (format!("{base}/v1/redirect/No.Such/hls/master.m3u8"), 400),
        (format!("{base}/v1/play/{TITLE}?format=flv"), 400),
        (format!("{base}/v1/nothing-here"), 404),
        (format!("{edge_a}/t/forged-token/titles/{TITLE}/hls/master.m3u8"), 403),
        (format!("{signed_dir}v360/9999.m4s"), 404),
    ];
    cases.push(serde_json::json!({
        "name": "cors", "player": "hls", "src": base, "checks": "cors",
        "urls": cors.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(),
    }));
    // Broken streams: each must fail the same checks.
    for (title, why) in [("garbage", "garbage"), ("audioonly", "audio-only"), ("ghost", "unpublished")] {
        for player in ["hls", "dash"] {
            cases.push(serde_json::json!({
                "name": format!("{player}-{why}"), "player": player, "src": src(title, player),
                "checks": "full", "expectHeights": heights, "startupTimeoutMs": 12000,
            }));
        }
    }
    let spec = serde_json::json!({ "outDir": out, "cases": cases });
    let t = Instant::now();
    let suite = run_suite(&spec, work, &mut stack.edges);
    let took = t.elapsed();
    std::fs::copy(work.join("results.json"), out.join("results.json")).unwrap();
    eprintln!("{}", suite.stderr);
    eprintln!("browser suite ran in {:.1} s; screenshots and results.json in {}", took.as_secs_f64(), out.display());
    assert!(suite.kills.is_empty(), "nothing asked for a kill: {:?}", suite.kills);
    let services = || {
        format!(
            "steering log:\n{}\nedge-a log:\n{}\nedge-b log:\n{}",
            stack.steering.log(),
            stack.edges[0].log(),
            stack.edges[1].log()
        )
    };
    for player in ["hls", "dash"] {
        let c = case(&suite, &format!("{player}-play"));
        assert!(c["ok"] == true, "{} must play:\n{}\n{}", player, describe(c), services());
        let m = &c["metrics"];
        let mut seen: Vec<u64> = m["rungsSeen"].as_array().unwrap().iter().filter_map(|h| h.as_u64()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, heights, "{player}: every rung must have been rendered:\n{}", describe(c));
        assert!(m["startupMs"].as_u64().is_some_and(|ms| ms > 0), "{player}: no startup time:\n{}", describe(c));
        eprintln!("{player}: startup {} ms, seek {} ms, rungs {:?}", m["startupMs"], m["seekMs"], seen);
    }
    let c = case(&suite, "cors");
    assert!(c["ok"] == true, "every answer must carry CORS headers:\n{}", describe(c));
    for ((url, want), got) in cors.iter().zip(c["metrics"]["fetches"].as_array().unwrap()) {
        assert_eq!(got["status"].as_u64(), Some(u64::from(*want)), "GET {url} from the page: {got}");
    }
    let c = case(&suite, "demo-page");
    assert!(c["ok"] == true, "the demo page must play and fill its stats:\n{}", describe(c));
    let edge = c["metrics"]["panel"]["edge in use"].as_str().unwrap_or_default();
    assert!(
        stack.edges.iter().any(|e| edge.contains(&e.addr.to_string())),
        "the demo page names no edge of ours: {edge:?}"
    );
    for why in ["garbage", "audio-only", "unpublished"] {
        for player in ["hls", "dash"] {
            let c = case(&suite, &format!("{player}-{why}"));
            assert!(c["ok"] == false, "a {why} stream must fail the checks with {player}:\n{}", describe(c));
            eprintln!("{player}-{why} failed as it must: {}", c["failures"]);
        }
    }
}

/// Content steering: the edge `player` is fetching from is killed (SIGKILL)
/// mid-playback; the player must move to the other edge's pathway and keep
/// playing, with the stall bounded (the check's deadline) and reported.
fn failover(player: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let store = work.join("store");
    encode(work, &store);
    let out = out_dir();
    let mut stack = start_steered_stack(&store, &work.join("logs"), work);
    let base = stack.steering.url();
    let src = match player {
        "hls" => format!("{base}/v1/redirect/{TITLE}/hls/master.m3u8"),
        _ => format!("{base}/v1/redirect/{TITLE}/dash/manifest.mpd"),
    };
    let name = format!("{player}-failover");
    // Real time and a short buffer, so the player must fetch from the other edge to keep going.
    let spec = serde_json::json!({ "outDir": out, "cases": [{
        "name": name, "player": player, "src": src, "checks": "failover", "rate": 1, "maxBufferS": 4,
    }]});
    let suite = run_suite(&spec, work, &mut stack.edges);
    std::fs::copy(work.join("results.json"), out.join(format!("results-{name}.json"))).unwrap();
    eprintln!("{}", suite.stderr);
    let c = case(&suite, &name);
    let services = format!(
        "steering log:\n{}\nedge-a log:\n{}\nedge-b log:\n{}",
        stack.steering.log(),
        stack.edges[0].log(),
        stack.edges[1].log()
    );
    assert_eq!(suite.kills.len(), 1, "{player}: one edge must have been killed: {:?}\n{}", suite.kills, describe(c));
    assert!(c["ok"] == true, "{player} must survive its edge dying:\n{}\n{services}", describe(c));
    let f = &c["metrics"]["failover"];
    assert_ne!(f["from"], f["to"], "{player}: still on the killed edge:\n{}", describe(c));
    let stall = f["maxStallMs"].as_u64().unwrap_or(u64::MAX);
    assert!(
        stall <= MAX_FAILOVER_STALL_MS,
        "{player}: stalled {stall} ms on the way to the other edge:\n{}",
        describe(c)
    );
    eprintln!(
        "{player}: killed {}, first fragment from {} after {} ms (pathways {}), 2 s played past the kill after {} ms, \
         longest stall {stall} ms",
        suite.kills[0], f["to"], f["switchMs"], f["pathways"], f["recoveredMs"]
    );
}

#[test]
fn dash_js_moves_to_the_other_edge_when_its_edge_dies() {
    failover("dash");
}

#[test]
fn hls_js_moves_to_the_other_edge_when_its_edge_dies() {
    failover("hls");
}
