//! A harness that runs the real service binaries on loopback: start one with
//! `--listen 127.0.0.1:0`, read the address it bound from its
//! `… listening on ADDR` line, stop it by PID. The end-to-end tests and
//! `cargo xtask demo` both use it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Directory holding the workspace binaries: `$STACK_BIN_DIR`, else the
/// target directory of this build's profile.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STACK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(if cfg!(debug_assertions) { "debug" } else { "release" })
}

/// Path of one workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A running service process; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

/// Why a service did not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure touches no Rust state.
    // If the harness dies without cleaning up, the kernel stops the service.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

impl Service {
    /// Starts `program args…` and waits (up to `timeout`) for the line
    /// `<anything> listening on <addr>` on its stderr. All of its stderr is
    /// copied to `log_dir/<name>.log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(log_dir).map_err(|e| StartError(format!("creating {}: {e}", log_dir.display())))?;
        let log = log_dir.join(format!("{name}.log"));
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| StartError(format!("starting {}: {e}", program.display())))?;
        let stderr = child.stderr.take().ok_or_else(|| StartError("no stderr pipe".into()))?;
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let log2 = log.clone();
        std::thread::spawn(move || copy_log(stderr, &log2, tx));
        let addr = match rx.recv_timeout(timeout) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(StartError(format!(
                    "{name} did not report its address within {timeout:?}; its log:\n{tail}"
                )));
            }
        };
        Ok(Self { name: name.to_owned(), addr, child, log })
    }

    /// `origin serve --root STORE` on 127.0.0.1, port 0, logging to `log_dir/origin.log`.
    pub fn origin(store: &Path, log_dir: &Path, timeout: Duration) -> Result<Self, StartError> {
        let args = ["serve", "--root", &store.display().to_string(), "--listen", "127.0.0.1:0"].map(String::from);
        Self::start("origin", &bin("origin"), &args, log_dir, timeout)
    }

    /// `steering serve --config CONFIG` (the config sets where it listens), logging to `log_dir/steering.log`.
    pub fn steering(config: &Path, log_dir: &Path, timeout: Duration) -> Result<Self, StartError> {
        let args = ["serve", "--config", &config.display().to_string()].map(String::from);
        Self::start("steering", &bin("steering"), &args, log_dir, timeout)
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the service wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL), as a crash or a power cut would, and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Sends SIGTERM and waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn copy_log(stderr: impl Read, log: &Path, tx: mpsc::Sender<SocketAddr>) {
    let Ok(mut out) = std::fs::File::create(log) else { return };
    let mut sent = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if !sent {
            if let Some(addr) = line.split(" listening on ").nth(1).and_then(|a| a.trim().parse().ok()) {
                let _ = tx.send(addr);
                sent = true;
            }
        }
        use std::io::Write;
        let _ = writeln!(out, "{line}");
    }
}

/// Runs a command to completion, returning (status, stdout, stderr).
pub fn run(program: &Path, args: &[String]) -> std::io::Result<(ExitStatus, String, String)> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output()?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits until `cond` holds, polling every 50 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a test clip with ffmpeg's lavfi sources: `seconds` of `testsrc2` at
/// `width`x`height`, 25 fps, with a sine tone.
pub fn generate_clip(out: &Path, seconds: u32, width: u32, height: u32) -> Result<(), StartError> {
    generate_clip_with(out, seconds, width, height, 25, true)
}

/// Like `generate_clip`, with a frame rate and the tone optional.
pub fn generate_clip_with(
    out: &Path,
    seconds: u32,
    width: u32,
    height: u32,
    fps: u32,
    audio: bool,
) -> Result<(), StartError> {
    let mut args: Vec<String> = vec!["-hide_banner".into(), "-loglevel".into(), "error".into(), "-y".into()];
    let video = format!("testsrc2=size={width}x{height}:rate={fps}");
    args.extend(["-f", "lavfi", "-i", &video].map(String::from));
    if audio {
        args.extend(
            ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-c:a", "aac", "-shortest"].map(String::from),
        );
    }
    args.extend(["-t", &seconds.to_string()].map(String::from));
    // faststart puts the index first, so a truncated copy still opens (as a cut upload would).
    args.extend(
        ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"].map(String::from),
    );
    args.push(out.display().to_string());
    let (status, _, err) = run(Path::new("ffmpeg"), &args).map_err(|e| StartError(format!("running ffmpeg: {e}")))?;
    if !status.success() {
        return Err(StartError(format!("ffmpeg failed to generate {}: {err}", out.display())));
    }
    Ok(())
}

/// Generates a `seconds` long `width`x`height` clip under `work` and publishes it as
/// `title` into the directory store `store` with `encoder encode` (`segment_seconds`
/// long segments). The error carries the encoder's output.
pub fn encode_generated(
    work: &Path,
    store: &Path,
    title: &str,
    (seconds, width, height): (u32, u32, u32),
    segment_seconds: u32,
) -> Result<(), StartError> {
    let clip = work.join(format!("{title}-source.mp4"));
    generate_clip(&clip, seconds, width, height)?;
    let args: Vec<String> = vec![
        "encode".into(),
        "--input".into(),
        clip.display().to_string(),
        "--title".into(),
        title.into(),
        "--store".into(),
        store.display().to_string(),
        "--segment-seconds".into(),
        segment_seconds.to_string(),
    ];
    let (status, out, err) = run(&bin("encoder"), &args).map_err(|e| StartError(format!("running encoder: {e}")))?;
    if !status.success() {
        return Err(StartError(format!("encoder failed ({status}): {out}\n{err}")));
    }
    Ok(())
}

/// Copies the directory tree `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
