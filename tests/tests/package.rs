//! The vod-edge Debian package on this machine: `cargo xtask deb` builds it
//! (from the debug `edge` the suite already built, so CI pays for no second
//! optimised build), `dpkg -i` installs it, the files, the service user and
//! the permissions are checked, `systemd-analyze verify` accepts the unit,
//! `edge config check` judges the shipped config, the service user can write
//! its cache, and `dpkg --purge` leaves the machine as it was. Needs root
//! (CI runs as root); otherwise it says why it skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn installed() -> bool {
    String::from_utf8_lossy(&sh("dpkg-query", &["-W", "-f=${Status}", "vod-edge"]).stdout).contains("install ok")
}

/// Everything the package leaves in systemd's directories (enable symlinks, helper state).
fn systemd_traces() -> Vec<String> {
    let out = sh("find", &["/etc/systemd", "/var/lib/systemd", "-name", "*vod-edge*"]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Purges the package even when an assertion fails half way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let out = sh("dpkg", &["--purge", "vod-edge"]);
        if !out.status.success() {
            eprintln!("dpkg --purge vod-edge failed: {}", text(&out));
        }
    }
}

#[test]
fn the_edge_package_installs_verifies_and_purges_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the_edge_package_installs_verifies_and_purges_cleanly: dpkg -i needs root");
        println!("SKIPPED: dpkg -i needs root");
        return;
    }
    if installed() {
        eprintln!("SKIPPED the_edge_package_installs_verifies_and_purges_cleanly: vod-edge is installed here already");
        println!("SKIPPED: vod-edge is installed on this machine; not touching it");
        return;
    }
    for tool in ["dpkg-deb", "dpkg-shlibdeps", "strip", "adduser", "systemd-analyze"] {
        assert!(
            sh("sh", &["-c", &format!("command -v {tool}")]).status.success(),
            "{tool} is missing: `cargo xtask deps` installs it"
        );
    }
    let users_before = std::fs::read_to_string("/etc/passwd").unwrap();
    let groups_before = std::fs::read_to_string("/etc/group").unwrap();
    let traces_before = systemd_traces();

    let out_dir = tempfile::tempdir().unwrap();
    let build = sh(
        stack::bin("xtask").to_str().unwrap(),
        &["deb", "--fast", "--binary", stack::bin("edge").to_str().unwrap(), "--out", out_dir.path().to_str().unwrap()],
    );
    assert!(build.status.success(), "cargo xtask deb failed: {}", text(&build));
    let deb = String::from_utf8_lossy(&build.stdout).trim().to_owned();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "{deb}");
    let control = text(&sh("dpkg-deb", &["--field", &deb, "Package", "Depends"]));
    assert!(control.contains("Package: vod-edge") && control.contains("libc6"), "{control}");
    assert!(!control.contains("libav"), "the edge needs no FFmpeg: {control}");

    let _purge = Purge;
    let install = sh("dpkg", &["-i", &deb]);
    assert!(install.status.success(), "dpkg -i: {}", text(&install));

    // Files, user, permissions.
    let bin = std::fs::metadata("/usr/bin/edge").unwrap();
    assert_eq!(bin.permissions().mode() & 0o777, 0o755);
    let passwd = text(&sh("getent", &["passwd", "vod-edge"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {passwd}");
    assert!(fields[6].ends_with("nologin"), "{passwd}");
    for dir in ["/var/cache/vod-edge", "/var/log/vod-edge"] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.permissions().mode() & 0o777), (uid, 0o750), "{dir}");
    }
    let cfg = std::fs::metadata("/etc/vod-edge/edge.toml").unwrap();
    assert_eq!((cfg.uid(), cfg.permissions().mode() & 0o777), (0, 0o640), "the config holds secrets");
    let conffiles = text(&sh("dpkg-query", &["-W", "-f=${Conffiles}", "vod-edge"]));
    assert!(conffiles.contains("/etc/vod-edge/edge.toml"), "{conffiles}");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/vod-edge.service").exists(),
        "enabled without a running systemd"
    );

    // The unit: systemd accepts it, and it is the hardened one.
    let verify = sh("systemd-analyze", &["verify", "/lib/systemd/system/vod-edge.service"]);
    assert!(verify.status.success(), "systemd-analyze verify: {}", text(&verify));
    assert!(!text(&verify).contains("vod-edge.service:"), "warnings about the unit: {}", text(&verify));
    let unit = std::fs::read_to_string("/lib/systemd/system/vod-edge.service").unwrap();
    for line in [
        "User=vod-edge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecStart=/usr/bin/edge serve --config /etc/vod-edge/edge.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }

    // The shipped config: only the key an operator must fill is missing.
    let check = sh("/usr/bin/edge", &["config", "check", "/etc/vod-edge/edge.toml"]);
    assert!(!check.status.success());
    let problems = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(problems.lines().count(), 1, "{problems}");
    assert!(problems.contains("key `upstream`: missing"), "{problems}");
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let filled = work.path().join("edge.toml");
    let shipped = std::fs::read_to_string("/etc/vod-edge/edge.toml").unwrap();
    std::fs::write(&filled, shipped.replace("#upstream = ", "upstream = ")).unwrap();
    std::fs::set_permissions(&filled, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = sh("/usr/bin/edge", &["config", "check", filled.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));

    // The service user can use its cache directory (doctor as vod-edge; the upstream is fictional).
    let doctor = Command::new("/usr/bin/edge")
        .args(["doctor", "--timeout-ms", "300", "--write-test-bytes", "1048576", "--config"])
        .arg(&filled)
        .uid(uid)
        .gid(std::fs::metadata("/var/cache/vod-edge").unwrap().gid())
        .output()
        .unwrap();
    let report = text(&doctor);
    assert!(report.lines().any(|l| l.starts_with("PASS  cache-path")), "{report}");
    assert!(report.lines().any(|l| l.starts_with("FAIL  upstream")), "{report}");

    // Run as root, the doctor judges the files by what the service user may do with them.
    std::fs::write("/etc/vod-edge/edge.toml", shipped.replace("#upstream = ", "upstream = ")).unwrap();
    let as_root = |what: &str| {
        let out = sh("/usr/bin/edge", &["doctor", "--timeout-ms", "300", "--write-test-bytes", "1048576"]);
        let report = text(&out);
        report.lines().find(|l| l.contains("service-user")).unwrap_or_else(|| panic!("{what}: {report}")).to_owned()
    };
    let ok = as_root("packaged modes");
    assert!(ok.starts_with("PASS"), "{ok}");
    std::fs::set_permissions("/etc/vod-edge/edge.toml", std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = as_root("config 0600");
    assert!(bad.starts_with("FAIL") && bad.contains("cannot read /etc/vod-edge/edge.toml"), "{bad}");

    // Purge: nothing of the package is left.
    drop(_purge);
    assert!(!installed());
    for gone in ["/usr/bin/edge", "/etc/vod-edge", "/var/cache/vod-edge", "/var/log/vod-edge"] {
        assert!(!Path::new(gone).exists(), "{gone} survived the purge");
    }
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), users_before);
    assert_eq!(std::fs::read_to_string("/etc/group").unwrap(), groups_before);
    assert_eq!(systemd_traces(), traces_before);
}
