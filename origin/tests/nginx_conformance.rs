//! Conformance against nginx: Debian's nginx and our origin serve the same
//! store directory; every request of the matrix goes to both over raw TCP and
//! the answers must agree (status, Content-Length, Content-Range,
//! Content-Type, body), except where this table says we differ on purpose.
//!
//! | request | nginx | ours | why |
//! |---|---|---|---|
//! | `Range: bytes=5-1` (last < first) | 416 | 200 | RFC 9110 §14.2: an invalid range set is ignored, so the whole object |
//! | `Range: bytes=x-1` (bad syntax) | 416 | 200 | same rule |
//! | multiple ranges `bytes=0-1,5-6` | 206 `multipart/byteranges` | 200 whole object | players never ask for several ranges; answering with the whole object is allowed and cannot be abused for amplification |
//! | `If-Modified-Since` later than Last-Modified | 200 (`if_modified_since exact`) | 304 | RFC 9110 §13.1.3: not modified *since* that date |
//! | dot segments `/titles/../titles/t/…` | 200 (normalised) | 400 | keys have one spelling; dot segments are rejected, never resolved |
//! | `%2e%2e`, `%2f`, any `%`-escape | 404 or 200 (decoded) | 400 | same: escapes in keys are refused before the store is touched |
//! | empty segment `/titles//t/…` | 200 (`merge_slashes`) | 400 | same |
//! | backslashes | 404 | 400 | same |
//! | `OPTIONS` | 405 | 204 with CORS headers | browsers' CORS preflight |
//! | ETag value | `"{mtime s hex}-{len hex}"` | `"{mtime ns hex}-{len hex}"` | nanoseconds tell apart two writes within a second; both are strong and stable across restarts |
//! | error bodies (404, 416, …) | HTML page | empty or one text line | machines read these |
//! | Content-Type of `.m4s`, `.m3u8`, `.mpd` | stock `mime.types` has no `.m4s` (`application/octet-stream`) | `video/iso.segment` etc. | the test gives nginx our `types`, so the header is compared |
//!
//! The test is skipped, with a message, only when nginx is not installed.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{request, RawResponse, TestOrigin};
use origin::{LocalStore, ServerLimits};
use vod::ObjectKey;

const NGINX: &str = "/usr/sbin/nginx";

/// nginx started by this test; killed (by PID) and reaped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The nginx.conf both this test and the benchmark need: one server, the
/// store as root, our Content-Types.
fn nginx_conf(dir: &Path, root: &Path, port: u16) -> String {
    let d = dir.display();
    // As root, nginx's workers would drop to `nobody`, who cannot read a private temp dir.
    let user = if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 { "user root;" } else { "" };
    format!(
        "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    types {{
        video/iso.segment m4s; video/mp4 mp4; application/json json;
        application/vnd.apple.mpegurl m3u8; application/dash+xml mpd;
    }}
    default_type application/octet-stream;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
",
        root = root.display()
    )
}

async fn start_nginx(dir: &Path, root: &Path) -> Nginx {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, root, port)).unwrap();
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        // One process, so killing it by PID leaves no worker behind.
        .args(["-g", "daemon off; master_process off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    let mut nginx = Nginx { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
    // Ready when the port accepts; give up (with nginx's own log) after a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(nginx.addr).await.is_err() {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!(
                "nginx exited with {status}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "nginx did not listen on {}", nginx.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nginx
}

/// One request of the matrix. `{etag}` and `{lm}` in header values are
/// replaced by the ETag / Last-Modified that server gave for the segment.
struct Case {
    name: &'static str,
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    /// `Some((nginx, ours))`: a documented difference in status.
    differs: Option<(u16, u16)>,
}

fn case(name: &'static str, method: &'static str, target: &str, headers: &[(&'static str, &str)]) -> Case {
    Case {
        name,
        method,
        target: target.to_owned(),
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        differs: None,
    }
}

fn differs(mut c: Case, nginx: u16, ours: u16) -> Case {
    c.differs = Some((nginx, ours));
    c
}

fn matrix() -> Vec<Case> {
    let seg = "/titles/t/v1/1.m4s";
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let earlier = "Thu, 01 Jan 1998 00:00:00 GMT";
    let many: Vec<String> = (0..200).map(|i| format!("{i}-{i}")).collect();
    let many = format!("bytes={}", many.join(","));
    vec![
        case("plain GET", "GET", seg, &[]),
        case("init segment", "GET", "/titles/t/v1/init.mp4", &[]),
        case("catalog", "GET", "/titles/t/catalog.json", &[]),
        case("master playlist", "GET", "/titles/t/hls/master.m3u8", &[]),
        case("dash manifest", "GET", "/titles/t/dash/manifest.mpd", &[]),
        case("HEAD", "HEAD", seg, &[]),
        case("HEAD with range", "HEAD", seg, &[("Range", "bytes=0-9")]),
        case("closed range", "GET", seg, &[("Range", "bytes=100-199")]),
        case("first byte", "GET", seg, &[("Range", "bytes=0-0")]),
        case("open range", "GET", seg, &[("Range", "bytes=9000-")]),
        case("suffix range", "GET", seg, &[("Range", "bytes=-10")]),
        case("suffix longer than object", "GET", seg, &[("Range", "bytes=-20000")]),
        case("end past the end", "GET", seg, &[("Range", "bytes=9990-20000")]),
        case("start past the end", "GET", seg, &[("Range", "bytes=10000-")]),
        case("start far past the end", "GET", seg, &[("Range", "bytes=20000-30000")]),
        case("zero suffix", "GET", seg, &[("Range", "bytes=-0")]),
        case("other unit", "GET", seg, &[("Range", "items=0-1")]),
        differs(case("last before first", "GET", seg, &[("Range", "bytes=5-1")]), 416, 200),
        differs(case("bad syntax", "GET", seg, &[("Range", "bytes=x-1")]), 416, 200),
        differs(case("two ranges", "GET", seg, &[("Range", "bytes=0-1,5-6")]), 206, 200),
        differs(case("200 ranges", "GET", seg, &[("Range", &many)]), 206, 200),
        case("If-None-Match current", "GET", seg, &[("If-None-Match", "{etag}")]),
        case("If-None-Match list", "GET", seg, &[("If-None-Match", "\"x\", {etag}")]),
        case("If-None-Match star", "GET", seg, &[("If-None-Match", "*")]),
        case("If-None-Match stale", "GET", seg, &[("If-None-Match", "\"stale\"")]),
        case("HEAD If-None-Match", "HEAD", seg, &[("If-None-Match", "{etag}")]),
        case("If-Modified-Since exact", "GET", seg, &[("If-Modified-Since", "{lm}")]),
        case("If-Modified-Since earlier", "GET", seg, &[("If-Modified-Since", earlier)]),
        differs(case("If-Modified-Since later", "GET", seg, &[("If-Modified-Since", later)]), 200, 304),
        case("If-Modified-Since garbage", "GET", seg, &[("If-Modified-Since", "yesterday")]),
        case(
            "If-None-Match stale beats IMS",
            "GET",
            seg,
            &[("If-None-Match", "\"stale\""), ("If-Modified-Since", "{lm}")],
        ),
        case("If-Match current", "GET", seg, &[("If-Match", "{etag}")]),
        case("If-Match stale", "GET", seg, &[("If-Match", "\"stale\"")]),
        case("If-Unmodified-Since earlier", "GET", seg, &[("If-Unmodified-Since", earlier)]),
        case("If-Range etag current", "GET", seg, &[("Range", "bytes=0-99"), ("If-Range", "{etag}")]),
        case("If-Range etag stale", "GET", seg, &[("Range", "bytes=0-99"), ("If-Range", "\"stale\"")]),
        case("If-Range date current", "GET", seg, &[("Range", "bytes=0-99"), ("If-Range", "{lm}")]),
        case("If-Range date stale", "GET", seg, &[("Range", "bytes=0-99"), ("If-Range", earlier)]),
        case("unknown segment", "GET", "/titles/t/v1/99.m4s", &[]),
        case("unknown title", "GET", "/titles/nope/catalog.json", &[]),
        case("not an object name", "GET", "/titles/t/v1/1.txt", &[]),
        case("outside titles/", "GET", "/etc/passwd", &[]),
        case("query string", "GET", "/titles/t/v1/1.m4s?session=1", &[]),
        case("POST", "POST", seg, &[]),
        case("traversal above root", "GET", "/../../etc/passwd", &[]),
        differs(case("dot segments", "GET", "/titles/../titles/t/v1/1.m4s", &[]), 200, 400),
        differs(case("encoded dots", "GET", "/titles/t/%2e%2e/%2e%2e/etc/passwd", &[]), 404, 400),
        differs(case("encoded slash", "GET", "/titles/t/v1%2f1.m4s", &[]), 200, 400),
        differs(case("encoded digit", "GET", "/titles/t/v1/%31.m4s", &[]), 200, 400),
        differs(case("empty segment", "GET", "/titles//t/v1/1.m4s", &[]), 200, 400),
        differs(case("backslashes", "GET", "/titles/t/v1\\..\\1.m4s", &[]), 404, 400),
        differs(case("OPTIONS preflight", "OPTIONS", seg, &[]), 405, 204),
    ]
}

/// Fills `root` with the objects the matrix asks for.
fn publish(root: &Path) {
    let s = LocalStore::new(root);
    let seg: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let objects: [(&str, &[u8]); 5] = [
        ("titles/t/v1/1.m4s", &seg),
        ("titles/t/v1/init.mp4", &seg[..700]),
        ("titles/t/catalog.json", b"{\"title\":\"t\"}\n"),
        ("titles/t/hls/master.m3u8", b"#EXTM3U\n"),
        ("titles/t/dash/manifest.mpd", b"<MPD/>\n"),
    ];
    for (k, body) in objects {
        s.put_blocking(&ObjectKey::parse(k).unwrap(), body).unwrap();
    }
}

fn fill(v: &str, validators: &(String, String)) -> String {
    v.replace("{etag}", &validators.0).replace("{lm}", &validators.1)
}

async fn ask(addr: SocketAddr, c: &Case, validators: &(String, String)) -> RawResponse {
    let headers: Vec<(&str, String)> = c.headers.iter().map(|(k, v)| (*k, fill(v, validators))).collect();
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(addr, c.method, &c.target, &refs).await
}

/// The entity headers and body that must agree when the statuses do.
fn entity(r: &RawResponse, method: &str) -> Vec<(String, Option<String>)> {
    let mut out = vec![("status".to_owned(), Some(r.status.to_string()))];
    let mut names = vec![];
    if matches!(r.status, 200 | 206) {
        names.extend(["content-length", "content-range", "content-type", "last-modified"]);
        if method != "HEAD" {
            out.push(("body".to_owned(), Some(format!("{:?}", &r.body))));
        }
    }
    if r.status == 304 {
        names.push("last-modified");
    }
    if r.status == 416 {
        names.push("content-range");
    }
    for n in names {
        out.push((n.to_owned(), r.header(n).map(str::to_owned)));
    }
    out
}

fn validators(r: &RawResponse) -> (String, String) {
    (r.header("etag").unwrap().to_owned(), r.header("last-modified").unwrap().to_owned())
}

#[tokio::test]
async fn origin_agrees_with_nginx_except_where_documented() {
    if !Path::new(NGINX).exists() {
        let why = format!("{NGINX} is not installed (apt-get install nginx, or `cargo xtask test`)");
        assert!(std::env::var_os("VOD_TESTS_REQUIRE_TOOLS").is_none(), "{why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("store");
    publish(&root);
    let nginx = start_nginx(&dir.path().join("nginx"), &root).await;
    let ours = TestOrigin::start(Arc::new(LocalStore::new(&root)), ServerLimits::default()).await;
    let seg = "/titles/t/v1/1.m4s";
    let theirs_v = validators(&request(nginx.addr, "HEAD", seg, &[]).await);
    let ours_v = validators(&request(ours.addr, "HEAD", seg, &[]).await);
    assert_eq!(theirs_v.1, ours_v.1, "both read the same file, so Last-Modified must agree");

    let mut failures = Vec::new();
    for c in matrix() {
        let n = ask(nginx.addr, &c, &theirs_v).await;
        let o = ask(ours.addr, &c, &ours_v).await;
        eprintln!("{:<32} nginx {} ours {}", c.name, n.status, o.status);
        match c.differs {
            Some((want_n, want_o)) => {
                if (n.status, o.status) != (want_n, want_o) {
                    failures.push(format!(
                        "{}: documented nginx {want_n} / ours {want_o}, got nginx {} / ours {}",
                        c.name, n.status, o.status
                    ));
                }
            }
            None => {
                let (en, eo) = (entity(&n, c.method), entity(&o, c.method));
                if en != eo {
                    let diff: Vec<String> = en
                        .iter()
                        .zip(&eo)
                        .filter(|(a, b)| a != b)
                        .map(|(a, b)| format!("{} nginx={:?} ours={:?}", a.0, a.1, b.1))
                        .collect();
                    let diff = if diff.is_empty() { format!("nginx {en:?} / ours {eo:?}") } else { diff.join("; ") };
                    failures.push(format!("{}: {}", c.name, diff.chars().take(400).collect::<String>()));
                }
            }
        }
        // Deliberate differences never put a body where a status says there is none.
        if o.status == 200 && c.method == "GET" {
            assert_eq!(o.body.len().to_string(), o.header("content-length").unwrap_or(""), "{}", c.name);
        }
    }
    ours.stop().await;
    drop(nginx);
    assert!(failures.is_empty(), "disagreements with nginx:\n{}", failures.join("\n"));
}
