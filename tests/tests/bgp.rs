//! Client prefixes over BGP end to end: a real routing daemon (Debian's
//! `bird2`, configured in a temp dir) peers with an edge on loopback and
//! announces static routes; the edge reports them in its heartbeats and
//! steering sends clients inside them to that edge (`site-match`). A withdrawn
//! route (config rewritten, `birdc configure`) sends its clients elsewhere; when
//! the daemon stops, the prefixes stay for the edge's grace period, then go.
//! The edge's `static_prefixes` hold throughout.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stack::{bin, wait_until, Service};

const HEARTBEAT_TOKEN: &str = "bgp-heartbeats";
const WAIT: Duration = Duration::from_secs(30);
const GRACE_MS: u64 = 3000;
const LOCAL_AS: u32 = 64_512;
const ROUTER_AS: u32 = 65_001;

fn s(x: &str) -> String {
    x.to_owned()
}

/// `bird` in the foreground with its own config and control socket; SIGTERM on drop.
struct Bird {
    child: Child,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    fn start(dir: &Path, config_text: &str) -> Self {
        let config = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        let log = dir.join("bird.log");
        std::fs::write(&config, config_text).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        // As root bird keeps root (no -u/-g needed); -f stays in the foreground, -s names our own socket.
        let child = Command::new("bird")
            .args(["-f", "-c"])
            .arg(&config)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting bird (Debian package bird2; `cargo xtask deps` installs it)");
        let bird = Self { child, config, socket, log };
        assert!(
            wait_until(WAIT, || bird.birdc(&["show", "status"]).is_some_and(|o| o.contains("Daemon is up"))),
            "bird did not come up; its log:\n{}",
            bird.log()
        );
        bird
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `birdc -s SOCKET ARGS…`; its output when it succeeded.
    fn birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).args(args).stdin(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a new config and tells bird to load it.
    fn reconfigure(&self, config_text: &str) {
        std::fs::write(&self.config, config_text).unwrap();
        let out = self.birdc(&["configure"]).unwrap_or_default();
        assert!(out.contains("Reconfigured"), "birdc configure: {out}\n{}", self.log());
    }

    /// SIGTERM (bird closes its sessions with a Cease) and reap, SIGKILL after 5 s.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        if !wait_until(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free right now (bird needs a listening port of its own; it cannot take port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A bird config announcing `routes` (IPv4 and IPv6 static routes) to the edge at `edge_port`.
fn bird_config(own_port: u16, edge_port: u16, routes: &[&str]) -> String {
    let (v6, v4): (Vec<&str>, Vec<&str>) = routes.iter().partition(|r| r.contains(':'));
    let statics = |list: &[&str]| list.iter().map(|r| format!("  route {r} blackhole;\n")).collect::<String>();
    // `multihop`: a loopback neighbour is not on a directly connected network as bird sees it;
    // explicit next hops, since bird refuses one equal to the neighbour's address.
    format!(
        "router id 192.0.2.254;\n\
         log stderr all;\n\
         protocol device {{ }}\n\
         protocol static s4 {{\n  ipv4;\n{}}}\n\
         protocol static s6 {{\n  ipv6;\n{}}}\n\
         protocol bgp edge {{\n\
           local 127.0.0.1 port {own_port} as {ROUTER_AS};\n\
           neighbor 127.0.0.1 port {edge_port} as {LOCAL_AS};\n\
           multihop;\n\
           hold time 9;\n\
           connect delay time 1;\n\
           connect retry time 1;\n\
           ipv4 {{ import none; export all; next hop address 198.51.100.1; }};\n\
           ipv6 {{ import none; export all; next hop address 2001:db8:ffff::1; }};\n\
         }}\n",
        statics(&v4),
        statics(&v6),
    )
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

/// The first edge steering offers `client_ip` for a title, with its reasons; empty while
/// steering has no edge to offer (503 until the first heartbeats arrive).
fn first_choice(steering: &Service, client_ip: &str) -> (String, Vec<String>) {
    let resp =
        http().get(format!("{}/v1/play/clip", steering.url())).header("x-forwarded-for", client_ip).send().unwrap();
    if resp.status() == 503 {
        return (String::new(), Vec::new());
    }
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    let first = &body["urls"][0];
    let reasons = first["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap_or("").to_owned()).collect();
    (first["edge"].as_str().unwrap_or("").to_owned(), reasons)
}

/// True when `client_ip` goes to the BGP edge first because its site covers the client.
fn goes_to_bgp_edge(steering: &Service, client_ip: &str) -> bool {
    let (edge, reasons) = first_choice(steering, client_ip);
    edge == "edge-bgp" && reasons.iter().any(|r| r == "site-match")
}

/// True when `client_ip` falls back to the other site's edge (no prefix covers it).
fn falls_back(steering: &Service, client_ip: &str) -> bool {
    let (edge, reasons) = first_choice(steering, client_ip);
    edge == "edge-other" && !reasons.iter().any(|r| r == "site-match")
}

#[test]
fn prefixes_announced_by_a_bird_router_steer_clients_to_the_edge() {
    for b in ["edge", "steering"] {
        assert!(bin(b).exists(), "{} is missing: `cargo build --workspace --bins` first", bin(b).display());
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let steering_cfg = dir.path().join("steering.toml");
    std::fs::write(
        &steering_cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ntoken_secret = \"s\"\ntrust_forwarded_for = true\n\
             heartbeat_token = \"{HEARTBEAT_TOKEN}\"\nfallback_sites = [\"isp-other\"]\n"
        ),
    )
    .unwrap();
    let steering = Service::steering(&steering_cfg, &logs, WAIT).unwrap();
    let edge_cfg = dir.path().join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nram_bytes = 10000000\nname = \"edge-bgp\"\n\
             steering = \"{}\"\nheartbeat_token = \"{HEARTBEAT_TOKEN}\"\nsite = \"isp-bgp\"\n\
             static_prefixes = [\"192.0.2.0/24\"]\n\n\
             [bgp]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1\"\nlocal_as = {LOCAL_AS}\npeer_as = {ROUTER_AS}\n\
             router_id = \"192.0.2.1\"\nhold_time_s = 9\ngrace_ms = {GRACE_MS}\n",
            steering.url()
        ),
    )
    .unwrap();
    let edge = Service::start(
        "edge-bgp",
        &bin("edge"),
        &[s("serve"), s("--config"), edge_cfg.display().to_string()],
        &logs,
        WAIT,
    )
    .unwrap();
    let _other = Service::start(
        "edge-other",
        &bin("edge"),
        &[
            s("serve"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--upstream"),
            s("http://127.0.0.1:9"),
            s("--ram-bytes"),
            s("10000000"),
            s("--name"),
            s("edge-other"),
            s("--steering"),
            steering.url(),
            s("--heartbeat-token"),
            s(HEARTBEAT_TOKEN),
            s("--site"),
            s("isp-other"),
        ],
        &logs,
        WAIT,
    )
    .unwrap();

    // The edge's BGP port, from its log.
    let mut bgp_port = None;
    wait_until(WAIT, || {
        bgp_port = edge.log().lines().find_map(|l| {
            let addr = l.split("bgp listening on ").nth(1)?.split_whitespace().next()?;
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        });
        bgp_port.is_some()
    });
    let bgp_port = bgp_port.unwrap_or_else(|| panic!("no `bgp listening on` in the edge log:\n{}", edge.log()));

    // Before any route: static prefixes only; 100.64.0.0/16 belongs to no one.
    assert!(wait_until(WAIT, || goes_to_bgp_edge(&steering, "192.0.2.9") && falls_back(&steering, "100.64.1.1")));

    let routes = ["100.64.0.0/16", "100.65.0.0/16", "2001:db8:a::/48"];
    let own_port = free_port();
    let started = Instant::now();
    let mut bird = Bird::start(dir.path(), &bird_config(own_port, bgp_port, &routes));
    let learned = wait_until(WAIT, || {
        goes_to_bgp_edge(&steering, "100.64.1.1")
            && goes_to_bgp_edge(&steering, "100.65.0.1")
            && goes_to_bgp_edge(&steering, "2001:db8:a::1")
    });
    assert!(learned, "announced prefixes never reached steering\nedge:\n{}\nbird:\n{}", edge.log(), bird.log());
    eprintln!("bgp: bird start -> clients steered to the edge in {:?}", started.elapsed());
    let session = bird.birdc(&["show", "protocols", "edge"]).unwrap_or_default();
    assert!(session.contains("Established"), "{session}");
    let metrics = http().get(format!("{}/metrics", edge.url())).send().unwrap().text().unwrap();
    assert!(metrics.contains("edge_bgp_session_established{edge=\"edge-bgp\"} 1\n"), "{metrics}");
    assert!(metrics.contains("edge_bgp_prefixes{edge=\"edge-bgp\"} 3\n"), "{metrics}");

    // The router withdraws 100.65.0.0/16: its clients go elsewhere, the others stay.
    let withdrawn_at = Instant::now();
    bird.reconfigure(&bird_config(own_port, bgp_port, &["100.64.0.0/16", "2001:db8:a::/48"]));
    assert!(wait_until(WAIT, || falls_back(&steering, "100.65.0.1")), "withdrawal not seen\n{}", edge.log());
    eprintln!("bgp: withdrawal -> client elsewhere in {:?}", withdrawn_at.elapsed());
    assert!(goes_to_bgp_edge(&steering, "100.64.1.1") && goes_to_bgp_edge(&steering, "2001:db8:a::1"));

    // The router stops: the prefixes stay for the grace period, then go; static ones stay.
    // Timed from the signal: the session ends after it, so the grace cannot end sooner.
    let stopped = Instant::now();
    bird.stop();
    assert!(goes_to_bgp_edge(&steering, "100.64.1.1"), "dropped at once, without the grace period");
    assert!(wait_until(WAIT, || falls_back(&steering, "100.64.1.1") && falls_back(&steering, "2001:db8:a::1")));
    let gone = stopped.elapsed();
    eprintln!("bgp: router stopped -> prefixes gone after {gone:?} (grace {GRACE_MS} ms)");
    assert!(gone >= Duration::from_millis(GRACE_MS), "gone after {gone:?}, before the grace");
    assert!(goes_to_bgp_edge(&steering, "192.0.2.9"), "static prefixes must stay");
    let edges: Value = http().get(format!("{}/v1/edges", steering.url())).send().unwrap().json().unwrap();
    let me = edges["edges"].as_array().unwrap().iter().find(|e| e["name"] == "edge-bgp").unwrap();
    assert_eq!(me["reported_prefixes"], serde_json::json!(["192.0.2.0/24"]));
    let log = edge.log();
    assert!(log.contains("session established") && log.contains("closed by the peer"), "{log}");
}

/// Reads one whole BGP message from a blocking socket (None when it closed).
fn read_msg(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut msg = vec![0u8; bgp::codec::HEADER_LEN];
    s.read_exact(&mut msg).ok()?;
    let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
    msg.resize(len.max(bgp::codec::HEADER_LEN), 0);
    s.read_exact(&mut msg[bgp::codec::HEADER_LEN..]).ok()?;
    Some(msg)
}

/// Opens a session to `addr` (through Established when `establish`), sends `bytes`, and
/// returns the NOTIFICATION the edge answers with; checks the edge then closes.
fn notification_for(addr: std::net::SocketAddr, establish: bool, bytes: &[u8]) -> bgp::Notification {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let open = read_msg(&mut s).expect("no OPEN from the edge");
    assert!(matches!(bgp::codec::parse(&open, false), Ok(bgp::Message::Open(_))));
    if establish {
        let router = bgp::codec::Open::new(ROUTER_AS, 90, std::net::Ipv4Addr::new(198, 51, 100, 1));
        s.write_all(&router.encode()).unwrap();
        assert_eq!(bgp::codec::parse(&read_msg(&mut s).unwrap(), true), Ok(bgp::Message::Keepalive));
        s.write_all(&bgp::codec::keepalive()).unwrap();
    }
    s.write_all(bytes).unwrap();
    loop {
        let msg = read_msg(&mut s).expect("the edge closed without a NOTIFICATION");
        match bgp::codec::parse(&msg, true) {
            Ok(bgp::Message::Keepalive) => continue,
            Ok(bgp::Message::Notification(n)) => {
                let mut rest = Vec::new();
                assert!(s.read_to_end(&mut rest).is_ok(), "the session stays open after the NOTIFICATION");
                return n;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

#[test]
fn malformed_bgp_messages_close_the_session_with_the_right_notification_and_the_edge_keeps_serving() {
    assert!(bin("edge").exists(), "{} is missing: `cargo build --workspace --bins` first", bin("edge").display());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nram_bytes = 10000000\n\n\
             [bgp]\nlisten = \"127.0.0.1:0\"\nlocal_as = {LOCAL_AS}\npeer_as = {ROUTER_AS}\nrouter_id = \"192.0.2.1\"\n"
        ),
    )
    .unwrap();
    let edge = Service::start(
        "edge",
        &bin("edge"),
        &[s("serve"), s("--config"), cfg.display().to_string()],
        &dir.path().join("logs"),
        WAIT,
    )
    .unwrap();
    let mut addr = None;
    wait_until(WAIT, || {
        addr = edge
            .log()
            .lines()
            .find_map(|l| l.split("bgp listening on ").nth(1)?.split_whitespace().next()?.parse().ok());
        addr.is_some()
    });
    let addr: std::net::SocketAddr = addr.unwrap_or_else(|| panic!("no BGP address in the log:\n{}", edge.log()));

    use bgp::codec::err;
    let ka = bgp::codec::keepalive();
    let mut bad_marker = ka.clone();
    bad_marker[5] = 0;
    assert_eq!(notification_for(addr, false, &bad_marker), bgp::Notification::new(err::HEADER, 1, vec![]));
    let mut bad_length = ka.clone();
    bad_length[16..18].copy_from_slice(&9000u16.to_be_bytes());
    assert_eq!(notification_for(addr, true, &bad_length), bgp::Notification::new(err::HEADER, 2, vec![0x23, 0x28]));
    let mut bad_type = ka.clone();
    bad_type[18] = 77;
    assert_eq!(notification_for(addr, true, &bad_type), bgp::Notification::new(err::HEADER, 3, vec![77]));
    let wrong_as = bgp::codec::Open::new(65_999, 90, std::net::Ipv4Addr::new(198, 51, 100, 1)).encode();
    assert_eq!(notification_for(addr, false, &wrong_as), bgp::Notification::new(err::OPEN, 2, vec![]));
    // An UPDATE with an attribute type nobody knows, flagged well-known.
    let attrs = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 198, 51, 100, 1, 0x40, 250, 1, 9];
    let mut body = vec![0, 0, 0, attrs.len() as u8];
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[16, 100, 64]);
    let update = bgp::codec::frame(bgp::codec::msg_type::UPDATE, &body);
    assert_eq!(notification_for(addr, true, &update), bgp::Notification::new(err::UPDATE, 2, vec![0x40, 250, 1, 9]));

    // The edge is still up: it serves HTTP and takes a good session.
    let health = http().get(format!("{}/health", edge.url())).send().unwrap();
    assert_eq!(health.status(), 200);
    let mut ok = std::net::TcpStream::connect(addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(read_msg(&mut ok).is_some_and(|m| matches!(bgp::codec::parse(&m, false), Ok(bgp::Message::Open(_)))));
}
