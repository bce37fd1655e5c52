//! CPU time and children of a process, from Linux `/proc/PID/stat`.

/// `(ppid, utime + stime in clock ticks)` of `pid`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)` (which may hold spaces): state, ppid, ..., utime (11th), stime (12th).
    let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    Some((ppid, rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?))
}

/// `pid` and its direct children (nginx's workers are children of its master).
pub(super) fn with_children(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let Ok(dir) = std::fs::read_dir("/proc") else { return all };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if stat(p).is_some_and(|(ppid, _)| ppid == pid) {
            all.push(p);
        }
    }
    all
}

/// User + system CPU seconds so far of `pid` and its direct children; None
/// when `pid` is gone.
pub(super) fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let own = stat(pid)?.1;
    let children: u64 = with_children(pid)[1..].iter().filter_map(|&p| stat(p)).map(|(_, t)| t).sum();
    Some((own + children) as f64 / ticks_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_this_process_are_found() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let found = with_children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found[0], std::process::id());
        assert!(found.contains(&child.id()), "{found:?} lacks {}", child.id());
    }

    #[test]
    fn cpu_time_grows_with_work_and_a_gone_process_has_none() {
        let before = tree_cpu_seconds(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = tree_cpu_seconds(std::process::id()).unwrap();
        assert!(after - before >= 0.1, "{before} → {after}");
        assert_eq!(tree_cpu_seconds(u32::MAX - 1), None);
    }
}
