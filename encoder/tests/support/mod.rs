//! Shared by the queue and fleet tests: running the real `encoder` binary,
//! worker processes stopped by PID, a PostgreSQL server of the test's own,
//! and reading job status straight from the queue.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use encoder::queue::{JobState, JobStatus, Queue};

/// The `encoder` binary under test.
pub fn encoder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_encoder"))
}

/// Runs `encoder args…`; returns (success, stdout, stderr).
pub fn encoder(args: &[&str]) -> (bool, String, String) {
    encoder_env(args, &[])
}

/// Runs `encoder args…` with extra environment variables.
pub fn encoder_env(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let out = Command::new(encoder_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("running encoder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A runtime for talking to the queue from a synchronous test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The status of job `id`, read from the queue.
pub fn status(rt: &tokio::runtime::Runtime, queue: &Queue, id: &str) -> JobStatus {
    rt.block_on(queue.status(id)).expect("job status")
}

/// Polls job `id` until `cond` holds; panics with the last status after `timeout`.
pub fn wait_job(
    rt: &tokio::runtime::Runtime,
    queue: &Queue,
    id: &str,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&JobStatus) -> bool,
) -> JobStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(rt, queue, id);
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; job status: {s:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a job to end (succeeded, failed or cancelled).
pub fn wait_finished(rt: &tokio::runtime::Runtime, queue: &Queue, id: &str, timeout: Duration) -> JobStatus {
    wait_job(rt, queue, id, timeout, "the job to finish", |s| {
        matches!(s.state, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    })
}

/// An `encoder worker` process; killed (SIGKILL) and reaped on drop.
pub struct Worker {
    pub name: String,
    child: Child,
    log: PathBuf,
}

/// Worker flags that keep tests fast: short leases, quick polls, short backoff.
pub const FAST: &[&str] =
    &["--lease-ms", "1500", "--heartbeat-ms", "150", "--poll-ms", "50", "--backoff-ms", "100", "--threads", "1"];

impl Worker {
    /// Starts `encoder worker --queue Q --staging S --name NAME extra…`, logging to `log_dir/NAME.log`.
    pub fn start(name: &str, queue: &str, staging: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(name, queue, staging, log_dir, extra, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_env(
        name: &str,
        queue: &str,
        staging: &Path,
        log_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(encoder_bin())
            .args(["worker", "--queue", queue, "--name", name, "--staging"])
            .arg(staging)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting a worker");
        Self { name: name.to_owned(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as a service manager stopping the worker would.
    pub fn term(&self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the worker to exit on its own; true if it did successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server in a temp dir on a free port, stopped by PID on drop.
/// As root it runs as the `postgres` user (initdb and postgres refuse root).
pub struct Postgres {
    pub url: String,
    dir: tempfile::TempDir,
    child: Child,
}

fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; `cargo xtask deps` installs Debian's postgresql")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Postgres {
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        // Under /tmp when root: the postgres user must reach it, and $TMPDIR may sit under /root.
        let mut builder = tempfile::Builder::new();
        builder.prefix("encoder-pg-");
        let dir = if is_root() { builder.tempdir_in("/tmp") } else { builder.tempdir() }.expect("temp dir");
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown of the PostgreSQL temp dir to postgres failed");
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "enc", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("postgres log");
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-F", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let mut pg = Self { url: String::new(), dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "enc", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if let Ok(Some(s)) = pg.child.try_wait() {
                panic!("postgres exited ({s}): {}", pg.log());
            }
            assert!(Instant::now() < deadline, "postgres not ready within 30 s: {}", pg.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "enc", "queue"])
            .output()
            .expect("running createdb");
        assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        pg.url = format!("postgres://enc@127.0.0.1:{port}/queue");
        pg
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's own PID (the child may be `runuser`).
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends sessions and exits.
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: signalling the server this guard started, by its PID.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: as above; it did not stop in time.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, as (relative path, bytes), sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.strip_prefix(base).unwrap_or(&p).display().to_string(), bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// moto's S3-compatible server (PyPI `moto[server]`) on a free port, stopped by PID on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto, or returns `None` (after saying why) when python3 or moto is missing.
    pub fn start() -> Option<Self> {
        let has_moto = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_moto {
            let why = "python3 with moto[server] is not installed (`cargo xtask test` pip-installs it)";
            assert!(std::env::var_os("VOD_TESTS_REQUIRE_TOOLS").is_none(), "{why}");
            eprintln!("SKIP: {why}");
            return None;
        }
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let mut moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = moto.child.try_wait() {
                panic!("moto exited with {s}");
            }
            assert!(Instant::now() < deadline, "moto did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    /// The environment the encoder needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Creates `bucket` and uploads `file` as `key` (with boto3, which moto depends on).
    pub fn upload(&self, bucket: &str, key: &str, file: &Path) {
        let script = "import sys, boto3\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
            aws_access_key_id='test', aws_secret_access_key='test')\n\
            s3.create_bucket(Bucket=sys.argv[2])\n\
            s3.upload_file(sys.argv[4], sys.argv[2], sys.argv[3])\n";
        let out = Command::new("python3")
            .args(["-c", script, &self.endpoint, bucket, key])
            .arg(file)
            .output()
            .expect("running python3");
        assert!(out.status.success(), "upload to moto failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
