//! `ram_dir`: RAM-tier bodies in unlinked files on a tmpfs, ideally one
//! mounted with huge pages.
//!
//! A memfd's pages come from the kernel's internal shmem mount, which follows
//! `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (often `never`): 4 KiB
//! pages, each looked up on its own when `sendfile` reads a body. A tmpfs
//! mounted with `huge=always` or `huge=within_size` backs a 2 MiB body with
//! one huge page, and the same sends then cost less CPU. A body here is an
//! `O_TMPFILE` (never linked, so nothing else can open it), written once,
//! reopened read-only and mapped read-only, and registered with
//! `svc::zerocopy` exactly like a memfd body; its pages are freed when the
//! last clone is dropped and no socket still holds them.
//!
//! The directory must be a tmpfs: on a disk file system the "RAM" tier would
//! write every body to disk, so `RamDir::open` refuses anything else.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::error::EdgeError;

/// `statfs(2)`'s `f_type` of a tmpfs (linux/magic.h).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether a tmpfs gives its files huge pages, as far as this process can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugePages {
    /// The mount's `huge=` option: `always`, `within_size`, `advise` or `never` (the default).
    Mount(String),
    /// `shmem_enabled` is `deny`: no tmpfs gets huge pages, whatever its options.
    Denied,
    /// `shmem_enabled` is `force`: every tmpfs gets huge pages.
    Forced,
    /// The mount was not found in `/proc/self/mountinfo`.
    Unknown,
}

impl HugePages {
    /// The huge-page setting of the tmpfs holding `dir` (an existing directory).
    pub fn of(dir: &Path) -> Self {
        let system = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").unwrap_or_default();
        if system.contains("[deny]") {
            return Self::Denied;
        }
        if system.contains("[force]") {
            return Self::Forced;
        }
        let Ok(dir) = dir.canonicalize() else { return Self::Unknown };
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return Self::Unknown };
        match mount_options(&mountinfo, &dir) {
            Some((fstype, options)) if fstype == "tmpfs" => {
                Self::Mount(options.split(',').find_map(|o| o.strip_prefix("huge=")).unwrap_or("never").to_owned())
            }
            _ => Self::Unknown,
        }
    }

    /// True when files written there get huge pages (`advise` counts: the
    /// operator asked for them, though only madvised mappings get them).
    pub fn enabled(&self) -> bool {
        match self {
            Self::Mount(m) => matches!(m.as_str(), "always" | "within_size" | "advise"),
            Self::Forced => true,
            Self::Denied | Self::Unknown => false,
        }
    }

    /// For logs and `edge doctor`.
    pub fn describe(&self) -> String {
        match self {
            Self::Mount(m) => format!("huge={m}"),
            Self::Denied => "huge pages denied (shmem_enabled = deny)".into(),
            Self::Forced => "huge pages forced (shmem_enabled = force)".into(),
            Self::Unknown => "huge-page setting unknown (mount not in /proc/self/mountinfo)".into(),
        }
    }
}

/// The file system type and super-block options of the mount that holds
/// `path` (canonical), from the text of `/proc/self/mountinfo`: the longest
/// mount point that contains it, the last one listed if several are stacked.
pub fn mount_options(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(point) = left.split(' ').nth(4).map(unescape_mount_path) else { continue };
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let point = PathBuf::from(point);
        if !path.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            best = Some((depth, fstype.to_owned(), options.to_owned()));
        }
    }
    best.map(|(_, fstype, options)| (fstype, options))
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a directory cannot hold RAM-tier bodies.
pub fn check_tmpfs(dir: &Path) -> Result<(), String> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: statfs into a zeroed struct we own, with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(format!("{}: {}", dir.display(), io::Error::last_os_error()));
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    let fs_type = st.f_type as i64;
    if fs_type != TMPFS_MAGIC {
        return Err(format!(
            "{} is not a tmpfs (file system type {fs_type:#x}): RAM-tier bodies would be written to disk; \
             mount one there (mount -t tmpfs -o huge=within_size,size=... tmpfs DIR) or leave ram_dir unset",
            dir.display()
        ));
    }
    Ok(())
}

/// A tmpfs directory that RAM-tier bodies are written to.
#[derive(Debug)]
pub struct RamDir {
    path: PathBuf,
    huge: HugePages,
    /// Set once a body could not be written there (logged once as a warning).
    failed: AtomicBool,
}

impl RamDir {
    /// Checks that `path` is a writable tmpfs directory (config key `ram_dir`).
    pub fn open(path: &Path) -> Result<Self, EdgeError> {
        check_tmpfs(path).map_err(|e| EdgeError::Config(format!("ram_dir {:?}: {e}", path.display().to_string())))?;
        tmpfile(path).map_err(|e| {
            EdgeError::Config(format!("ram_dir {:?}: cannot create a file there: {e}", path.display().to_string()))
        })?;
        Ok(Self { path: path.to_owned(), huge: HugePages::of(path), failed: AtomicBool::new(false) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its huge-page setting, read at `open`.
    pub fn huge_pages(&self) -> &HugePages {
        &self.huge
    }

    /// A copy of `data` in an unlinked file here, mapped read-only and
    /// registered for zero-copy sends.
    pub fn body(&self, data: &[u8]) -> io::Result<Bytes> {
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        let mut file = tmpfile(&self.path)?;
        // The final size first: with `huge=within_size` the kernel gives a
        // huge page only to a range inside the file's size.
        file.set_len(data.len() as u64)?;
        file.write_all(data)?;
        // From here on only a read-only descriptor exists: the bytes a
        // socket may still reference cannot change through this process.
        let read_only = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        drop(file);
        crate::memory::mapped_body(read_only, data.len())
    }

    /// Logs (once as a warning, then at debug) that a body went to a memfd instead.
    pub fn note_failure(&self, e: &io::Error) {
        if self.failed.swap(true, Ordering::Relaxed) {
            tracing::debug!(dir = %self.path.display(), error = %e, "ram_dir: body kept in a memfd instead");
        } else {
            tracing::warn!(dir = %self.path.display(), error = %e, "ram_dir: cannot write bodies there; using memfds");
        }
    }
}

/// An unnamed, unlinkable-by-others file in `dir`.
fn tmpfile(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).mode(0o600).open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        30 22 0:26 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=8g\n\
        40 22 0:40 / /run/vod\\040edge/ram rw,relatime - tmpfs tmpfs rw,size=1g,huge=within_size\n\
        41 40 0:41 / /run/vod\\040edge/ram rw,relatime - tmpfs tmpfs rw,size=2g,huge=always\n";

    #[test]
    fn the_innermost_last_mount_holding_a_path_gives_its_options() {
        let at = |p: &str| mount_options(MOUNTINFO, Path::new(p));
        assert_eq!(at("/var/cache/x"), Some(("ext4".into(), "rw".into())));
        assert_eq!(at("/dev/shm/a"), Some(("tmpfs".into(), "rw,size=8g".into())));
        assert_eq!(at("/dev/shmx"), Some(("ext4".into(), "rw".into())), "a mount point is a whole component");
        assert_eq!(at("/run/vod edge/ram/x"), Some(("tmpfs".into(), "rw,size=2g,huge=always".into())));
    }

    #[test]
    fn huge_page_modes_that_count() {
        for (m, on) in [("always", true), ("within_size", true), ("advise", true), ("never", false)] {
            assert_eq!(HugePages::Mount(m.into()).enabled(), on, "{m}");
        }
        assert!(!HugePages::Denied.enabled() && HugePages::Forced.enabled() && !HugePages::Unknown.enabled());
    }

    #[test]
    fn a_disk_directory_is_refused_with_the_key_named() {
        // The crate's own directory is on the build machine's disk, not a tmpfs.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let e = RamDir::open(dir).unwrap_err().to_string();
        assert!(e.contains("ram_dir") && e.contains("is not a tmpfs"), "{e}");
        let e = RamDir::open(Path::new("/nonexistent/ram")).unwrap_err().to_string();
        assert!(e.contains("ram_dir") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn a_body_in_dev_shm_is_a_registered_read_only_unlinked_file() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm here; skipped");
            return;
        };
        let ram = RamDir::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let body = ram.body(&data).unwrap();
        assert!(body[..] == data[..]);
        let span = svc::zerocopy::file_of(&body).expect("registered");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", span.fd)).unwrap();
        assert!(link.starts_with(dir.path()) && link.to_string_lossy().ends_with("(deleted)"), "{}", link.display());
        // SAFETY: fcntl on a descriptor the body holds open.
        let flags = unsafe { libc::fcntl(span.fd, libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no name in the directory");
    }
}
