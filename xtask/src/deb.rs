//! `cargo xtask deb [--binary PATH] [--out DIR] [--fast]`: the `vod-edge` Debian
//! package, built with dpkg's own tools (no cargo-deb): a release build of
//! `edge` (or the binary given), a staged tree with the systemd unit, the
//! example config as a conffile and the maintainer scripts from
//! `packaging/edge/`, `Depends` from `dpkg-shlibdeps`, then
//! `dpkg-deb --build --root-owner-group` (xz; `--fast`: gzip -1, for tests).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::env;

/// Parses the flags, builds the package, prints its path.
pub fn run(args: &[String]) -> Result<()> {
    let mut binary = None;
    let mut out = None;
    let mut fast = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--binary" => binary = Some(PathBuf::from(it.next().context("--binary needs a path")?)),
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            "--fast" => fast = true,
            other => {
                bail!("cargo xtask deb: unknown argument {other:?} (usage: deb [--binary PATH] [--out DIR] [--fast])")
            }
        }
    }
    let binary = match binary {
        Some(b) => b,
        None => {
            env::cargo(&["build", "--release", "--package", "edge", "--bin", "edge"])?;
            env::target_dir().join("release/edge")
        }
    };
    let out = out.unwrap_or_else(|| env::target_dir().join("debian"));
    let deb = build(&binary, &out, fast)?;
    println!("{}", deb.display());
    Ok(())
}

/// Stages and builds `out/vod-edge_{version}_{arch}.deb` around `binary`; `fast` compresses with gzip -1.
pub fn build(binary: &Path, out: &Path, fast: bool) -> Result<PathBuf> {
    let src = env::root().join("packaging/edge");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output("dpkg", &["--print-architecture"])?.trim().to_owned();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stage = out.join(format!("vod-edge_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }

    let bin = stage.join("usr/bin/edge");
    install(binary, &bin, 0o755)?;
    // Debug info stays out of the package (the release profile keeps line tables for backtraces).
    run_tool("strip", &["--strip-debug", &bin.display().to_string()])?;
    install(&src.join("vod-edge.service"), &stage.join("lib/systemd/system/vod-edge.service"), 0o644)?;
    install(&src.join("edge.toml"), &stage.join("etc/vod-edge/edge.toml"), 0o640)?;
    install(&src.join("README.Debian"), &stage.join("usr/share/doc/vod-edge/README.Debian"), 0o644)?;
    write(
        &stage.join("usr/share/doc/vod-edge/copyright"),
        "vod: an open video delivery system.\nLicense: Apache-2.0 (/usr/share/common-licenses/Apache-2.0)\n",
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&src.join(script), &stage.join("DEBIAN").join(script), 0o755)?;
    }
    write(&stage.join("DEBIAN/conffiles"), "/etc/vod-edge/edge.toml\n", 0o644)?;

    let depends = shlib_depends(&bin)?;
    let installed_kib = tree_bytes(&stage.join("usr"))? / 1024
        + tree_bytes(&stage.join("lib"))? / 1024
        + tree_bytes(&stage.join("etc"))? / 1024
        + 1;
    let control = format!(
        "Package: vod-edge\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: vod maintainers <vod@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}, adduser\n\
         Section: net\n\
         Priority: optional\n\
         Description: vod edge cache for deployment inside an ISP\n \
         Serves video segments to the ISP's clients from RAM and disk, fills misses\n \
         from parent edges or the origin, prefills off-peak from steering's fill\n \
         plan and reports health and load to steering. Runs as the hardened\n \
         systemd unit vod-edge.service; `edge doctor` checks the machine.\n"
    );
    write(&stage.join("DEBIAN/control"), &control, 0o644)?;

    let deb = out.join(format!("vod-edge_{version}_{arch}.deb"));
    let compression: &[&str] = if fast { &["-Zgzip", "-z1"] } else { &["-Zxz", "-z6"] };
    let mut args = vec!["--build", "--root-owner-group"];
    args.extend_from_slice(compression);
    let (stage_arg, deb_arg) = (stage.display().to_string(), deb.display().to_string());
    args.extend([stage_arg.as_str(), deb_arg.as_str()]);
    run_tool("dpkg-deb", &args)?;
    std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(deb)
}

/// `libc6 (>= 2.34), libgcc-s1 (>= 4.2)`: what `dpkg-shlibdeps` derives from the binary's shared libraries.
fn shlib_depends(bin: &Path) -> Result<String> {
    let dir = tempfile_dir()?;
    // dpkg-shlibdeps reads debian/control of the source package it runs in.
    write(&dir.join("debian/control"), "Source: vod\n\nPackage: vod-edge\nArchitecture: any\n", 0o644)?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(bin)
        .current_dir(&dir)
        .output()
        .context("running dpkg-shlibdeps (Debian package dpkg-dev: cargo xtask deps installs it)")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!("dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let deps = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(deps.trim().to_owned())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-deb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { tree_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

fn run_tool(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
