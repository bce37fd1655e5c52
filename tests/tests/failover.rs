//! Failover end to end with the real binaries: two edges of one site
//! heartbeat to steering; player sessions stream through both; one edge is
//! SIGKILLed mid-stream. Steering must mark it out within 3 s with its
//! default settings, every session must keep playing from the other edge
//! without a stall longer than one segment, and the killed edge, restarted on
//! the same disk, must get players again. Also: the content steering real
//! players get (HLS master tag, DASH MPD with one BaseURL per edge).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stack::{bin, wait_until, Service};

const SECRET: &str = "failover-secret";
const HEARTBEAT_TOKEN: &str = "failover-heartbeats";
const WAIT: Duration = Duration::from_secs(30);
const SEGMENT_SECONDS: u32 = 2;
/// A client of site-a (the coverage file maps 10.1.0.0/16 there).
const CLIENT: &str = "10.1.2.3";

fn s(x: &str) -> String {
    x.to_owned()
}

fn require_bins() {
    for b in ["encoder", "origin", "edge", "steering", "player-sim"] {
        assert!(
            bin(b).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            bin(b).display()
        );
    }
}

struct Stack {
    dir: tempfile::TempDir,
    store: PathBuf,
    logs: PathBuf,
    origin: Service,
    steering: Service,
}

impl Stack {
    /// Encodes a `seconds` long clip as title `clip`, starts the origin and a steering that
    /// knows no edge (edges register by heartbeat) with default probe and heartbeat timing.
    fn start(seconds: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let logs = dir.path().join("logs");
        stack::encode_generated(dir.path(), &store, "clip", (seconds, 426, 240), SEGMENT_SECONDS)
            .unwrap_or_else(|e| panic!("{e}"));
        let origin = Service::origin(&store, &logs, WAIT).unwrap();
        let coverage = dir.path().join("coverage.csv");
        std::fs::write(&coverage, "prefix,site\n10.1.0.0/16,site-a\n2001:db8:a::/48,site-a\n").unwrap();
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\ntoken_secret = \"{SECRET}\"\ntrust_forwarded_for = true\n\
             heartbeat_token = \"{HEARTBEAT_TOKEN}\"\ncoverage_file = \"{}\"\n",
            coverage.display()
        );
        let cfg_path = dir.path().join("steering.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let steering = Service::steering(&cfg_path, &logs, WAIT).unwrap();
        Self { dir, store, logs, origin, steering }
    }

    /// An edge of site-a that heartbeats to steering, with a disk tier under the work dir.
    fn edge(&self, name: &str) -> Service {
        let disk = self.dir.path().join(format!("disk-{name}"));
        Service::start(
            name,
            &bin("edge"),
            &[
                s("serve"),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--upstream"),
                self.origin.url(),
                s("--ram-bytes"),
                s("50000000"),
                s("--disk-path"),
                disk.display().to_string(),
                s("--disk-bytes"),
                s("200000000"),
                s("--name"),
                s(name),
                s("--token-secret"),
                s(SECRET),
                s("--steering"),
                self.steering.url(),
                s("--heartbeat-token"),
                s(HEARTBEAT_TOKEN),
                s("--site"),
                s("site-a"),
            ],
            &self.logs,
            WAIT,
        )
        .unwrap()
    }

    /// Publishes the encoded clip under another title id too (same objects, another prefix).
    fn copy_title(&self, title: &str) {
        stack::copy_dir(&self.store.join("titles/clip"), &self.store.join("titles").join(title)).unwrap();
    }

    fn edges(&self) -> serde_json::Value {
        http().get(format!("{}/v1/edges", self.steering.url())).send().unwrap().json().unwrap()
    }

    /// Whether steering offers `name` to players right now.
    fn available(&self, name: &str) -> bool {
        self.edges()["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == name && e["available"].as_bool() == Some(true))
    }

    fn play(&self, title: &str, format: &str) -> serde_json::Value {
        let r = http()
            .get(format!("{}/v1/play/{title}?format={format}", self.steering.url()))
            .header("x-forwarded-for", CLIENT)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "play {title}");
        r.json().unwrap()
    }

    fn first_edge(&self, title: &str) -> String {
        self.play(title, "hls")["urls"][0]["edge"].as_str().unwrap().to_owned()
    }

    /// `player-sim live` for `title`, started in the background, JSON on stdout.
    fn player(&self, title: &str, sessions: usize, max_buffer_s: f64, speed: f64) -> Child {
        Command::new(bin("player-sim"))
            .args(["live", "--steering", &self.steering.url(), "--title", title, "--sessions"])
            .arg(sessions.to_string())
            .args(["--client-ip", CLIENT, "--max-buffer-s", &max_buffer_s.to_string(), "--timeout-s", "2"])
            .args(["--speed", &speed.to_string(), "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build().unwrap()
}

/// Waits (bounded) for a player-sim run and parses its report; kills it at the deadline.
fn report(mut child: Child, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("player-sim did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("player-sim printed no report ({e}): {text}"))
}

/// Bytes an edge has sent to clients, from its Prometheus text.
fn bytes_served(edge: &Service) -> u64 {
    let Ok(r) = http().get(format!("{}/metrics", edge.url())).send() else { return 0 };
    r.text()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("edge_bytes_served_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `n` title ids that `edge` is the rendezvous owner of (steering does not check that titles exist).
fn titles_owned_by(stack: &Stack, edge: &str, n: usize) -> Vec<String> {
    let owned: Vec<String> =
        (0..64).map(|i| format!("movie{i}")).filter(|t| stack.first_edge(t) == edge).take(n).collect();
    assert_eq!(owned.len(), n, "too few titles hash to {edge}");
    owned
}

#[test]
fn sessions_survive_a_sigkilled_edge_and_it_comes_back() {
    require_bins();
    let stack = Stack::start(20);
    let mut edge_a = stack.edge("edge-a");
    let edge_b = stack.edge("edge-b");
    assert!(
        wait_until(WAIT, || stack.available("edge-a") && stack.available("edge-b")),
        "edges did not register by heartbeat: {}",
        stack.edges()
    );
    let owned_by_a = titles_owned_by(&stack, "edge-a", 2);
    let (title_a, later_a) = (&owned_by_a[0], &owned_by_a[1]);
    let title_b = &titles_owned_by(&stack, "edge-b", 1)[0];
    for t in [title_a, later_a, title_b] {
        stack.copy_title(t);
    }
    let ranked: Vec<String> = stack.play(title_a, "hls")["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["edge"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ranked, ["edge-a", "edge-b"], "both edges of the site are offered, the owner first");

    // Real time, with a small buffer, so the sessions are mid-stream when the edge dies.
    let players_a = stack.player(title_a, 3, 6.0, 1.0);
    let players_b = stack.player(title_b, 3, 6.0, 1.0);
    assert!(
        wait_until(WAIT, || bytes_served(&edge_a) > 300_000 && bytes_served(&edge_b) > 300_000),
        "sessions did not start streaming through both edges"
    );

    edge_a.kill();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || !stack.available("edge-a")), "edge-a never marked out");
    let detected = killed.elapsed();
    assert!(detected < Duration::from_secs(3), "steering took {detected:?} to mark the killed edge out");
    assert_eq!(stack.first_edge(title_a), "edge-b");

    let a = report(players_a, Duration::from_secs(120));
    let b = report(players_b, Duration::from_secs(120));
    for (r, moved) in [(&a, true), (&b, false)] {
        assert_eq!(r["failed"], 0, "a session failed: {r}");
        for session in r["per_session"].as_array().unwrap() {
            let stall_ms = session["stall_ms"].as_f64().unwrap();
            assert!(
                stall_ms <= f64::from(SEGMENT_SECONDS) * 1000.0,
                "a session stalled {stall_ms} ms, more than one segment: {session}"
            );
            if moved {
                assert!(session["failovers"].as_u64().unwrap() >= 1, "no failover: {session}");
                assert_eq!(session["edge"], "edge-b", "{session}");
                assert!(session["bytes_by_edge"]["edge-a"].as_u64().unwrap() > 0, "{session}");
            } else {
                assert_eq!(session["failovers"], 0, "{session}");
            }
            assert!(session["bytes_by_edge"]["edge-b"].as_u64().unwrap() > 0, "{session}");
        }
    }
    eprintln!("killed edge marked out after {detected:?}; failovers {}", a["failovers"]);

    // Same name, same disk: it registers again (on a new port) and gets players again. (Titles
    // edge-b now holds stay there: holding a title outranks hash ownership.)
    let edge_a = stack.edge("edge-a");
    assert!(wait_until(WAIT, || stack.available("edge-a")), "restarted edge-a never came back: {}", stack.edges());
    assert_eq!(stack.first_edge(later_a), "edge-a");
    let again = report(stack.player(later_a, 1, 25.0, 8.0), Duration::from_secs(60));
    assert_eq!(again["failed"], 0, "{again}");
    assert!(again["bytes_by_edge"]["edge-a"].as_u64().unwrap() > 0, "{again}");
    assert!(bytes_served(&edge_a) > 0);
}

#[test]
fn players_get_content_steering_for_hls_and_dash() {
    require_bins();
    let stack = Stack::start(4);
    let _a = stack.edge("edge-a");
    let _b = stack.edge("edge-b");
    assert!(wait_until(WAIT, || stack.available("edge-a") && stack.available("edge-b")), "{}", stack.edges());
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();

    // HLS: the redirect goes to an edge, whose master playlist points at steering.
    let r = no_redirects
        .get(format!("{}/v1/redirect/clip/hls/master.m3u8", stack.steering.url()))
        .header("x-forwarded-for", CLIENT)
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let master_url = r.headers()["location"].to_str().unwrap().to_owned();
    let master = http().get(&master_url).send().unwrap().text().unwrap();
    let tag = format!(
        "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{}/v1/steering/clip?format=hls\",PATHWAY-ID=\"base\"",
        stack.steering.url()
    );
    assert!(master.contains(&tag), "{master}");
    assert!(master.contains("PATHWAY-ID=\"base\"\n") || master.contains("PATHWAY-ID=\"base\"\r\n"), "{master}");
    let manifest: serde_json::Value = http()
        .get(format!("{}/v1/steering/clip?format=hls&_HLS_pathway=base", stack.steering.url()))
        .header("x-forwarded-for", CLIENT)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let clones = manifest["PATHWAY-CLONES"].as_array().unwrap();
    assert_eq!(clones.len(), 2, "{manifest}");
    // Every pathway clone names each variant of the master (by its STABLE-VARIANT-ID) with a
    // whole URI on that edge, served by that edge with the same token.
    let variant = master.lines().find(|l| !l.is_empty() && !l.starts_with('#')).unwrap();
    let stable = variant.trim_end_matches(".m3u8");
    assert!(master.contains(&format!("STABLE-VARIANT-ID=\"{stable}\"")), "{master}");
    for clone in clones {
        let cloned = clone["URI-REPLACEMENT"]["PER-VARIANT-URIS"][stable].as_str().unwrap_or_else(|| panic!("{clone}"));
        assert!(cloned.ends_with(&format!("/titles/clip/hls/{variant}")), "{cloned}");
        let media = http().get(cloned).send().unwrap();
        assert_eq!(media.status(), 200, "{cloned}");
        assert_eq!(media.headers()["x-served-by"], clone["ID"].as_str().unwrap());
    }

    // DASH: the redirect goes to steering's steered MPD with one signed BaseURL per edge.
    let r = no_redirects
        .get(format!("{}/v1/redirect/clip/dash/manifest.mpd", stack.steering.url()))
        .header("x-forwarded-for", CLIENT)
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    let mpd_url =
        reqwest::Url::parse(&stack.steering.url()).unwrap().join(r.headers()["location"].to_str().unwrap()).unwrap();
    let mpd = http().get(mpd_url.clone()).header("x-forwarded-for", CLIENT).send().unwrap();
    assert_eq!(mpd.status(), 200);
    assert_eq!(mpd.headers()["access-control-allow-origin"], "*");
    let mpd = mpd.text().unwrap();
    assert!(mpd.contains("<ContentSteering defaultServiceLocation=\""), "{mpd}");
    assert!(mpd.contains("/v1/steering/clip?format=dash</ContentSteering>"), "{mpd}");
    let bases: Vec<&str> = mpd
        .split("<BaseURL serviceLocation=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\">")?.1.split_once("</BaseURL>").map(|(u, _)| u))
        .collect();
    assert_eq!(bases.len(), 2, "{mpd}");
    let rendition = mpd.split("<Representation id=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    for base in bases {
        let init = reqwest::Url::parse(base).unwrap().join(&format!("../{rendition}/init.mp4")).unwrap();
        assert!(base.contains("/t/") && base.ends_with("/titles/clip/dash/"), "{base}");
        assert_eq!(http().get(init.clone()).send().unwrap().status(), 200, "{init}");
    }
    // A forged token is refused by the edge.
    let forged = master_url.replacen("/t/", "/t/AAAA", 1);
    assert_eq!(http().get(forged).send().unwrap().status(), 403);
}
