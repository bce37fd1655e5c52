//! `edge doctor`: is this machine ready to run the edge its config describes?
//!
//! One line per check, `PASS|WARN|FAIL  check  detail`: the config, the cache
//! path (exists, writable, free space for the disk tier, write speed with
//! fsync), the listen port, each upstream and steering (HTTP GET `/health`),
//! the clock against their `Date` headers (signed requests allow +-60 s), the
//! BGP port or router when `[bgp]` is set, the RAM tier against the machine's (or the cgroup's) memory, and
//! `ram_dir` (a writable tmpfs, with huge pages), and `vm.max_map_count` against a RAM tier full of
//! the smallest bodies that get a mapping of their own. Every check is bounded in time. The verdicts are pure functions, tested directly.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::EdgeConfig;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's verdict and what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// Short name: `config`, `service-user`, `cache-path`, `disk-space`, `write-speed`, `listen`, `bgp`,
    /// `upstream`, `steering`, `clock`, `memory`, `ram_dir`, `mappings`.
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl CheckResult {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self { name, verdict, detail: detail.into() }
    }

    /// `PASS  name         detail`.
    pub fn line(&self) -> String {
        format!("{}  {:<12} {}", self.verdict.as_str(), self.name, self.detail)
    }
}

/// `edge doctor` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The edge's config file.
    #[arg(long, default_value = "/etc/vod-edge/edge.toml")]
    pub config: PathBuf,
    /// Write speed of the cache path below this (MB/s, with fsync) is a warning.
    #[arg(long, default_value_t = 100.0)]
    pub min_write_mbps: f64,
    /// Bytes the write test writes (at most a quarter of the free space).
    #[arg(long, default_value_t = 64 << 20)]
    pub write_test_bytes: u64,
    /// Time limit of each network check, milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// The user the service runs as (the package's unit: vod-edge); if it exists, can it read the
    /// config and write the cache path? Empty: skip that check.
    #[arg(long, default_value = "vod-edge")]
    pub service_user: String,
}

/// The write test stops after this long and reports the rate so far.
const WRITE_TEST_LIMIT: Duration = Duration::from_secs(10);

/// Runs every check; the config first, the others only if it is valid.
pub async fn run_checks(args: &DoctorArgs) -> Vec<CheckResult> {
    let cfg = match crate::config_check::check_file(&args.config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            return problems.into_iter().map(|p| CheckResult::new("config", Verdict::Fail, p)).collect();
        }
    };
    let mut out = vec![CheckResult::new("config", Verdict::Pass, format!("{} is valid", args.config.display()))];
    if !args.service_user.is_empty() {
        out.extend(service_user_check(&args.service_user, &args.config, cfg.disk_path.as_deref()));
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let disk = {
        let (cfg, args) = (cfg.clone(), args.clone());
        tokio::task::spawn_blocking(move || disk_checks(&cfg, &args))
    };
    let (listen, remote) = tokio::join!(listen_check(cfg.listen, timeout), remote_checks(&cfg, timeout));
    match disk.await {
        Ok(d) => out.extend(d),
        Err(e) => out.push(CheckResult::new("cache-path", Verdict::Fail, format!("check crashed: {e}"))),
    }
    out.push(listen);
    if let Some(bgp) = &cfg.bgp {
        out.push(bgp_check(bgp, timeout).await);
    }
    out.extend(remote);
    out.push(memory_check(cfg.ram_bytes));
    out.push(ram_dir_check(cfg.ram_dir.as_deref(), cfg.ram_bytes));
    out.push(mappings_check(cfg.ram_bytes));
    out
}

// ---- the service user ----------------------------------------------------

/// Where the service's user exists (and we may be someone else, e.g. root):
/// can it read the config and write the cache path? `edge enroll` writes the
/// config 0600 for whoever ran it.
fn service_user_check(user: &str, config: &Path, disk_path: Option<&Path>) -> Option<CheckResult> {
    let (uid, gid) = lookup_user(user)?;
    let mut problems = Vec::new();
    let mut shown = vec![config.display().to_string()];
    if !may_access(config, uid, gid, 0o4) {
        problems.push(format!("cannot read {} ({})", config.display(), owner_mode(config)));
    }
    if let Some(dir) = disk_path.filter(|d| d.exists()) {
        shown.push(dir.display().to_string());
        if !may_access(dir, uid, gid, 0o7) {
            problems.push(format!("cannot write {} ({})", dir.display(), owner_mode(dir)));
        }
    }
    Some(if problems.is_empty() {
        CheckResult::new("service-user", Verdict::Pass, format!("{user} can use {}", shown.join(" and ")))
    } else {
        CheckResult::new(
            "service-user",
            Verdict::Fail,
            format!(
                "{user}, the service's user, {} (e.g. chown root:{user} FILE; chmod 0640 FILE)",
                problems.join("; ")
            ),
        )
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

/// Whether `uid`/`gid` (primary group only) gets `want` (rwx bits, e.g. 0o4) on `path` by its mode.
fn may_access(path: &Path, uid: u32, gid: u32, want: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else { return false };
    let mode = m.mode();
    let bits = if m.uid() == uid {
        (mode >> 6) & 0o7
    } else if m.gid() == gid {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    bits & want == want
}

fn owner_mode(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or_else(
        |e| e.to_string(),
        |m| format!("owner {} group {} mode {:04o}", m.uid(), m.gid(), m.mode() & 0o7777),
    )
}

// ---- cache path ----------------------------------------------------------

fn disk_checks(cfg: &EdgeConfig, args: &DoctorArgs) -> Vec<CheckResult> {
    let (Some(dir), Some(disk_bytes)) = (&cfg.disk_path, cfg.disk_bytes) else {
        return vec![CheckResult::new("cache-path", Verdict::Pass, "no disk tier configured (RAM tier only)")];
    };
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![CheckResult::new(
                "cache-path",
                Verdict::Fail,
                format!("{shown} does not exist (create it, owned by the user the edge runs as)"),
            )]
        }
        Err(e) => return vec![CheckResult::new("cache-path", Verdict::Fail, format!("{shown}: {e}"))],
        Ok(m) if !m.is_dir() => {
            return vec![CheckResult::new("cache-path", Verdict::Fail, format!("{shown} is not a directory"))]
        }
        Ok(_) => {}
    }
    if let Err(e) = probe_write(dir) {
        return vec![CheckResult::new("cache-path", Verdict::Fail, format!("{shown} is not writable: {e}"))];
    }
    let mut out = vec![CheckResult::new("cache-path", Verdict::Pass, format!("{shown} exists and is writable"))];
    // The store file is sparse: only the blocks it already holds are spoken for.
    let held = std::fs::metadata(dir.join("store.bin")).map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    let free = match free_bytes(dir) {
        Ok(f) => f,
        Err(e) => {
            out.push(CheckResult::new("disk-space", Verdict::Fail, format!("statvfs {shown}: {e}")));
            return out;
        }
    };
    let need = disk_bytes.saturating_sub(held);
    out.push(CheckResult::new(
        "disk-space",
        space_verdict(free, need),
        format!(
            "{} free, the disk tier needs {} more (disk_bytes {}, {} already held)",
            human(free),
            human(need),
            human(disk_bytes),
            human(held)
        ),
    ));
    let bytes = args.write_test_bytes.min(free / 4);
    out.push(match write_speed(dir, bytes, WRITE_TEST_LIMIT) {
        Ok((written, took)) => {
            let mbps = written as f64 / 1e6 / took.as_secs_f64().max(1e-6);
            let cut = if written < bytes { ", stopped at the time limit" } else { "" };
            CheckResult::new(
                "write-speed",
                speed_verdict(mbps, args.min_write_mbps),
                format!(
                    "{mbps:.0} MB/s ({} written and fsynced in {:.2} s{cut}; warning below {} MB/s)",
                    human(written),
                    took.as_secs_f64(),
                    args.min_write_mbps
                ),
            )
        }
        Err(e) => CheckResult::new("write-speed", Verdict::Fail, format!("writing to {shown}: {e}")),
    });
    out
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".doctor-probe-{}", std::process::id()));
    let result =
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).and_then(|mut f| f.write_all(b"x"));
    let _ = std::fs::remove_file(&path);
    result
}

/// Writes up to `bytes` in 1 MiB chunks and fsyncs, stopping at `limit`; returns what was written and the time.
fn write_speed(dir: &Path, bytes: u64, limit: Duration) -> std::io::Result<(u64, Duration)> {
    let path = dir.join(format!(".doctor-write-test-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        // Not zeros: some filesystems compress or skip them.
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let started = Instant::now();
        let mut written = 0u64;
        while written < bytes && started.elapsed() < limit {
            let n = (bytes - written).min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            written += n as u64;
        }
        f.sync_all()?;
        Ok((written, started.elapsed()))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs only writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Free space against what the disk tier still needs: short is a failure, a thin margin (< 5%) a warning.
pub fn space_verdict(free: u64, need: u64) -> Verdict {
    if free < need {
        Verdict::Fail
    } else if free - need < need / 20 {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

/// Write speed against the threshold.
pub fn speed_verdict(mbps: f64, min_mbps: f64) -> Verdict {
    if mbps < min_mbps {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

// ---- listen port -----------------------------------------------------------

async fn listen_check(addr: SocketAddr, timeout: Duration) -> CheckResult {
    if addr.port() == 0 {
        return CheckResult::new("listen", Verdict::Pass, format!("{addr}: port 0, the kernel picks a free port"));
    }
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            CheckResult::new("listen", Verdict::Pass, format!("{addr} can be bound"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let mut probe = addr;
            if probe.ip().is_unspecified() {
                probe.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
            }
            let url = format!("http://{probe}/healthz");
            match get(&url, timeout).await {
                Ok(seen) if seen.status == 200 => CheckResult::new(
                    "listen",
                    Verdict::Pass,
                    format!("{addr} is served by a running edge (it answers /healthz)"),
                ),
                _ => CheckResult::new(
                    "listen",
                    Verdict::Fail,
                    format!("{addr} is in use by another process (not an edge answering /healthz)"),
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => CheckResult::new(
            "listen",
            Verdict::Fail,
            format!("{addr}: {e} (ports below 1024 need CAP_NET_BIND_SERVICE; the systemd unit grants it)"),
        ),
        Err(e) => CheckResult::new("listen", Verdict::Fail, format!("{addr}: {e}")),
    }
}

/// The BGP side: the port the router connects to is free, or the router answers on TCP.
async fn bgp_check(bgp: &crate::bgp::BgpConfig, timeout: Duration) -> CheckResult {
    if let Some(addr) = bgp.listen {
        return match std::net::TcpListener::bind(addr) {
            Ok(_) => CheckResult::new("bgp", Verdict::Pass, format!("{addr} can be bound for the router's session")),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => CheckResult::new(
                "bgp",
                Verdict::Fail,
                format!("{addr}: {e} (port 179 needs CAP_NET_BIND_SERVICE; the systemd unit grants it)"),
            ),
            Err(e) => CheckResult::new("bgp", Verdict::Fail, format!("{addr}: {e}")),
        };
    }
    let Some(peer) = bgp.peer.as_deref() else {
        return CheckResult::new("bgp", Verdict::Fail, "neither bgp.listen nor bgp.peer is set");
    };
    let addr = match peer.parse::<SocketAddr>().or_else(|_| peer.parse().map(|ip| SocketAddr::new(ip, 179))) {
        Ok(a) => a,
        Err(_) => return CheckResult::new("bgp", Verdict::Fail, format!("bgp.peer {peer:?} is not IP or IP:PORT")),
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => CheckResult::new("bgp", Verdict::Pass, format!("router {addr} accepts TCP connections")),
        // The session keeps retrying, and static prefixes still work: a warning.
        Ok(Err(e)) => {
            CheckResult::new("bgp", Verdict::Warn, format!("router {addr}: {e} (the session keeps retrying)"))
        }
        Err(_) => CheckResult::new(
            "bgp",
            Verdict::Warn,
            format!("router {addr}: no answer within {} ms (the session keeps retrying)", timeout.as_millis()),
        ),
    }
}

// ---- upstreams, steering, clock ------------------------------------------------

/// What a GET saw.
struct Seen {
    status: u16,
    took: Duration,
    /// Server clock minus ours, seconds, from the `Date` header.
    skew_s: Option<f64>,
}

async fn get(url: &str, timeout: Duration) -> Result<Seen, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let sent = unix_now();
    let started = Instant::now();
    let resp = client.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer within {} ms", timeout.as_millis())
        } else if e.is_connect() {
            format!("cannot connect: {}", root_cause(&e))
        } else {
            root_cause(&e)
        }
    })?;
    let took = started.elapsed();
    let received = unix_now();
    let skew_s = resp
        .headers()
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| skew_from_date(d.as_secs(), sent, received));
    Ok(Seen { status: resp.status().as_u16(), took, skew_s })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The smallest skew consistent with a `Date` of `date_s` (whole seconds,
/// truncated) answered between our `sent` and `received`: 0 when the
/// server's second overlaps that interval, else the gap, positive when the
/// server is ahead.
pub fn skew_from_date(date_s: u64, sent: f64, received: f64) -> f64 {
    let (lo, hi) = (date_s as f64, date_s as f64 + 1.0);
    if lo > received {
        lo - received
    } else if hi < sent {
        hi - sent
    } else {
        0.0
    }
}

/// Clock skew: signed requests and tokens allow +-60 s, so over 30 s fails and over 1 s warns.
pub fn skew_verdict(skew_s: f64) -> Verdict {
    let s = skew_s.abs();
    if s > 30.0 {
        Verdict::Fail
    } else if s > 1.0 {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

async fn remote_checks(cfg: &EdgeConfig, timeout: Duration) -> Vec<CheckResult> {
    let upstreams: Vec<String> = cfg.all_upstreams().into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
    let steering = cfg.steering_base().map(str::to_owned);
    let up_futs = upstreams.iter().map(|u| async move { (u.clone(), get(&format!("{u}/health"), timeout).await) });
    let steer_fut = async {
        match &steering {
            Some(s) => Some((s.clone(), get(&format!("{s}/health"), timeout).await)),
            None => None,
        }
    };
    let (ups, steer) = tokio::join!(futures::future::join_all(up_futs), steer_fut);
    let mut out = Vec::new();
    let mut clocks = Vec::new();
    for (url, seen) in ups {
        out.push(reach_result("upstream", &url, &seen));
        if let Ok(s) = seen {
            clocks.push((url, s.skew_s));
        }
    }
    match steer {
        None => out.push(CheckResult::new(
            "steering",
            Verdict::Warn,
            "not configured: no heartbeats, so steering sends no players here",
        )),
        Some((url, seen)) => {
            out.push(reach_result("steering", &url, &seen));
            if let Ok(s) = seen {
                clocks.push((url, s.skew_s));
            }
        }
    }
    for (url, skew) in clocks {
        out.push(match skew {
            Some(s) => CheckResult::new(
                "clock",
                skew_verdict(s),
                format!("{s:+.1} s against {url} (its Date header; signed requests allow +-60 s)"),
            ),
            None => CheckResult::new("clock", Verdict::Warn, format!("{url} sent no Date header to compare with")),
        });
    }
    out
}

fn reach_result(name: &'static str, url: &str, seen: &Result<Seen, String>) -> CheckResult {
    match seen {
        Ok(s) if s.status < 500 => CheckResult::new(
            name,
            Verdict::Pass,
            format!("{url} reachable (GET /health: {} in {} ms)", s.status, s.took.as_millis()),
        ),
        Ok(s) => CheckResult::new(name, Verdict::Warn, format!("{url} answers, but GET /health gave {}", s.status)),
        Err(e) => CheckResult::new(name, Verdict::Fail, format!("{url} unreachable: {e}")),
    }
}

// ---- memory ------------------------------------------------------------------

fn memory_check(ram_bytes: u64) -> CheckResult {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let (Some(total), available) = (field("MemTotal:"), field("MemAvailable:")) else {
        return CheckResult::new("memory", Verdict::Warn, "cannot read /proc/meminfo");
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let limit = cgroup.map_or(total, |c| c.min(total));
    let verdict = ram_verdict(ram_bytes, limit, available.unwrap_or(limit));
    let scope = if limit < total { "the cgroup's memory.max" } else { "system memory" };
    CheckResult::new(
        "memory",
        verdict,
        format!(
            "RAM tier {} of {} {scope} ({} available now)",
            human(ram_bytes),
            human(limit),
            human(available.unwrap_or(limit))
        ),
    )
}

/// The RAM tier against the memory limit: 90% or more leaves no room for the
/// process, sockets and page cache (fail); over 75% or over what is free now warns.
pub fn ram_verdict(ram_bytes: u64, limit: u64, available: u64) -> Verdict {
    if ram_bytes as f64 >= limit as f64 * 0.9 {
        Verdict::Fail
    } else if ram_bytes as f64 > limit as f64 * 0.75 || ram_bytes > available {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

// ---- mappings -------------------------------------------------------------------

fn mappings_check(ram_bytes: u64) -> CheckResult {
    match crate::memory::max_map_count() {
        Some(limit) => {
            let (verdict, detail) = mappings_verdict(ram_bytes, limit);
            CheckResult::new("mappings", verdict, detail)
        }
        None => CheckResult::new("mappings", Verdict::Warn, "cannot read /proc/sys/vm/max_map_count"),
    }
}

/// Each RAM-tier body of `MEMFD_MIN_BYTES` or more is one mapping: pass
/// when `vm.max_map_count` leaves room for a tier full of the smallest such
/// bodies; warn otherwise (bodies beyond the limit are kept on the heap and
/// copied into sockets, which works but costs CPU).
pub fn mappings_verdict(ram_bytes: u64, max_map_count: u64) -> (Verdict, String) {
    let need = crate::memory::mappings_needed(ram_bytes);
    let bodies = ram_bytes / crate::memory::MEMFD_MIN_BYTES as u64;
    if max_map_count >= need {
        (Verdict::Pass, format!("vm.max_map_count {max_map_count} covers up to {bodies} RAM-tier bodies"))
    } else {
        (
            Verdict::Warn,
            format!(
                "vm.max_map_count {max_map_count} is below the {need} mappings a RAM tier of {} full of 64 KiB \
                 bodies takes (one each); bodies beyond it stay on the heap and are copied into sockets. Raise it: \
                 `sysctl -w vm.max_map_count={need}` and the same in /etc/sysctl.d/",
                human(ram_bytes)
            ),
        )
    }
}

// ---- ram_dir --------------------------------------------------------------------

fn ram_dir_check(dir: Option<&Path>, ram_bytes: u64) -> CheckResult {
    let Some(dir) = dir else {
        return CheckResult::new("ram_dir", Verdict::Pass, "not set: large RAM-tier bodies in memfds");
    };
    let shown = dir.display();
    if !dir.exists() {
        // The packaged unit mounts its own tmpfs there (TemporaryFileSystem=), seen only inside the service.
        return CheckResult::new(
            "ram_dir",
            Verdict::Warn,
            format!(
                "{shown} does not exist here: fine if the service's unit mounts a tmpfs there \
                 (TemporaryFileSystem=), else `edge serve` refuses to start"
            ),
        );
    }
    if let Err(e) = crate::ram_dir::check_tmpfs(dir) {
        return CheckResult::new("ram_dir", Verdict::Fail, e);
    }
    if let Err(e) = probe_write(dir) {
        return CheckResult::new("ram_dir", Verdict::Fail, format!("{shown} is not writable: {e}"));
    }
    let huge = crate::ram_dir::HugePages::of(dir);
    let size = fs_size(dir).ok();
    let verdict = ram_dir_verdict(&huge, size, ram_bytes);
    let size_note = match size {
        Some(s) if s < ram_bytes => format!("; its size {} is below the RAM tier's {}", human(s), human(ram_bytes)),
        Some(s) => format!(", size {}", human(s)),
        None => String::new(),
    };
    let advice = if huge.enabled() { "" } else { " (remount with huge=within_size for faster sends)" };
    CheckResult::new("ram_dir", verdict, format!("{shown} is a tmpfs, {}{size_note}{advice}", huge.describe()))
}

/// A writable tmpfs: pass with huge pages, warn without them or when it is
/// smaller than the RAM tier (bodies beyond its size go to memfds).
pub fn ram_dir_verdict(huge: &crate::ram_dir::HugePages, size: Option<u64>, ram_bytes: u64) -> Verdict {
    if huge.enabled() && size.is_none_or(|s| s >= ram_bytes) {
        Verdict::Pass
    } else {
        Verdict::Warn
    }
}

/// The total size of the file system holding `dir`.
fn fs_size(dir: &Path) -> std::io::Result<u64> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs into a zeroed struct we own, with a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// `1.5 GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_zero_within_the_dates_second_and_signed_outside_it() {
        assert_eq!(skew_from_date(1000, 1000.2, 1000.3), 0.0);
        assert_eq!(skew_from_date(1000, 999.9, 1000.05), 0.0);
        assert!((skew_from_date(1005, 1000.0, 1000.5) - 4.5).abs() < 1e-9);
        assert!((skew_from_date(990, 1000.0, 1000.5) + 9.0).abs() < 1e-9);
        assert_eq!(skew_verdict(0.0), Verdict::Pass);
        assert_eq!(skew_verdict(-1.5), Verdict::Warn);
        assert_eq!(skew_verdict(30.5), Verdict::Fail);
        assert_eq!(skew_verdict(-45.0), Verdict::Fail);
    }

    #[test]
    fn space_speed_and_ram_verdicts() {
        assert_eq!(space_verdict(100, 200), Verdict::Fail);
        assert_eq!(space_verdict(200, 195), Verdict::Warn);
        assert_eq!(space_verdict(1000, 200), Verdict::Pass);
        assert_eq!(space_verdict(0, 0), Verdict::Pass);
        assert_eq!(speed_verdict(50.0, 100.0), Verdict::Warn);
        assert_eq!(speed_verdict(150.0, 100.0), Verdict::Pass);
        assert_eq!(ram_verdict(95, 100, 100), Verdict::Fail);
        assert_eq!(ram_verdict(80, 100, 100), Verdict::Warn);
        assert_eq!(ram_verdict(50, 100, 40), Verdict::Warn);
        assert_eq!(ram_verdict(50, 100, 90), Verdict::Pass);
    }

    #[test]
    fn lines_have_verdict_name_and_detail() {
        let r = CheckResult::new("listen", Verdict::Fail, "0.0.0.0:80 in use");
        assert_eq!(r.line(), "FAIL  listen       0.0.0.0:80 in use");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }

    #[test]
    fn access_follows_owner_group_and_other_bits() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("edge.toml");
        std::fs::write(&f, "x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let (owner, group) = (m.uid(), m.gid());
        let set = |mode| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        set(0o600);
        assert!(may_access(&f, owner, 12345, 0o4));
        assert!(!may_access(&f, owner + 1, group, 0o4));
        set(0o640);
        assert!(may_access(&f, owner + 1, group, 0o4));
        assert!(!may_access(&f, owner + 1, group + 1, 0o4));
        assert!(!may_access(&dir.path().join("missing"), owner, group, 0o4));
    }

    #[test]
    fn the_write_test_writes_fsyncs_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (written, took) = write_speed(dir.path(), 3 << 20, WRITE_TEST_LIMIT).unwrap();
        assert_eq!(written, 3 << 20);
        assert!(took < WRITE_TEST_LIMIT);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn mappings_pass_when_a_tier_of_the_smallest_large_bodies_fits() {
        let (v, d) = mappings_verdict(1 << 30, 65530);
        assert_eq!(v, Verdict::Pass, "{d}");
        assert!(d.contains("16384 RAM-tier bodies"), "{d}");
        let (v, d) = mappings_verdict(64 << 30, 65530);
        assert_eq!(v, Verdict::Warn, "{d}");
        assert!(d.contains("vm.max_map_count=1052672") && d.contains("64.0 GiB"), "{d}");
        assert_eq!(mappings_verdict(64 << 30, 1052672).0, Verdict::Pass);
        assert_eq!(mappings_verdict(64 << 30, 1052671).0, Verdict::Warn);
    }

    #[test]
    fn ram_dir_passes_only_with_huge_pages_and_room_for_the_tier() {
        use crate::ram_dir::HugePages;
        let huge = HugePages::Mount("within_size".into());
        assert_eq!(ram_dir_verdict(&huge, Some(2 << 30), 1 << 30), Verdict::Pass);
        assert_eq!(ram_dir_verdict(&huge, None, 1 << 30), Verdict::Pass);
        assert_eq!(ram_dir_verdict(&huge, Some(1 << 29), 1 << 30), Verdict::Warn);
        assert_eq!(ram_dir_verdict(&HugePages::Mount("never".into()), Some(2 << 30), 1 << 30), Verdict::Warn);
        assert_eq!(ram_dir_verdict(&HugePages::Denied, Some(2 << 30), 1 << 30), Verdict::Warn);
        assert_eq!(ram_dir_check(None, 1).verdict, Verdict::Pass);
        let c = ram_dir_check(Some(Path::new(env!("CARGO_MANIFEST_DIR"))), 1);
        assert!(c.verdict == Verdict::Fail && c.detail.contains("is not a tmpfs"), "{}", c.line());
    }
}
