//! An equal CPU budget for the servers under test: a cgroup with the `cpu`
//! controller's quota (v1 `cpu.cfs_quota_us`, v2 `cpu.max`), so a server
//! moved into it can use at most that fraction of a core however many
//! threads it runs.
//!
//! On loopback with few cores, wrk's receive side (copying every byte out
//! of the socket) saturates before a sendfile server does, and every such
//! server then shows the same throughput. Capping each server at the same
//! budget, well below what wrk can take, makes the server the bottleneck,
//! so throughput then compares what each does with the same CPU time. The
//! loopback's TCP receive work runs in the sender's context and counts
//! against its budget: the same for every server.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A cgroup of our own; its processes go back to the parent on drop.
#[derive(Debug)]
pub(super) struct CpuCap {
    dir: PathBuf,
    parent: PathBuf,
}

const V2_ROOT: &str = "/sys/fs/cgroup";
const V1_CPU: &str = "/sys/fs/cgroup/cpu";
const PERIOD_US: u64 = 100_000;

impl CpuCap {
    /// A cgroup named after `name` and this process, capped at `cores` CPUs.
    pub(super) fn new(name: &str, cores: f64) -> Result<Self> {
        if !(0.01..=64.0).contains(&cores) {
            bail!("CPU cap {cores} is out of range (0.01–64 cores)");
        }
        let quota = (cores * PERIOD_US as f64).round() as u64;
        let leaf = format!("vod-bench-{}-{name}", std::process::id());
        let (parent, v2) = if Path::new(V2_ROOT).join("cgroup.controllers").exists() {
            (PathBuf::from(V2_ROOT), true)
        } else if Path::new(V1_CPU).join("cpu.cfs_quota_us").exists() {
            (PathBuf::from(V1_CPU), false)
        } else {
            bail!("no cgroup cpu controller at {V2_ROOT} (v2) or {V1_CPU} (v1)");
        };
        if v2 {
            // Let children of the root use the cpu controller (a no-op when they already may).
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = parent.join(leaf);
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let cap = Self { dir, parent };
        let set = if v2 {
            std::fs::write(cap.dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
        } else {
            std::fs::write(cap.dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
                .and_then(|()| std::fs::write(cap.dir.join("cpu.cfs_quota_us"), quota.to_string()))
        };
        set.with_context(|| format!("setting the CPU quota of {}", cap.dir.display()))?;
        Ok(cap)
    }

    /// Moves the processes `pids` (with all their threads) into the cgroup.
    pub(super) fn enter(&self, pids: &[u32]) -> Result<()> {
        for pid in pids {
            std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving process {pid} into {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Moves every process in the cgroup back to its parent.
    pub(super) fn leave_all(&self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // A process that has exited meanwhile cannot be moved; nothing to do then.
            let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
        }
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        self.leave_all();
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("xtask: removing cgroup {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_out_of_range_is_refused_before_touching_cgroups() {
        assert!(CpuCap::new("t", 0.0).unwrap_err().to_string().contains("out of range"));
        assert!(CpuCap::new("t", 1000.0).unwrap_err().to_string().contains("out of range"));
    }
}
