//! What this host offers: memory and CPU, from /proc and the cgroup limits (v2, then v1) of the
//! process, whichever is smaller.

use orion_types::Resources;

pub fn detect() -> Resources {
    let mut memory = meminfo_total().unwrap_or(0);
    if let Some(limit) = cgroup_memory_limit() {
        memory = if memory == 0 {
            limit
        } else {
            memory.min(limit)
        };
    }
    // std honours cgroup CPU quotas and affinity masks on Linux.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    Resources {
        memory_bytes: memory,
        cpu_millis: cpus * 1000,
    }
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cgroup_memory_limit() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            // "max" (v2) or a huge number (v1) mean no limit.
            if let Ok(v) = text.trim().parse::<u64>()
                && v < (1 << 50)
            {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_something_plausible() {
        let r = super::detect();
        assert!(r.memory_bytes > 64 << 20, "{r:?}");
        assert!(r.cpu_millis >= 1000, "{r:?}");
    }
}
