//! What a process costs, read from `/proc`: CPU time and memory.

use std::time::Duration;

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`;
/// 100 on Linux).
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time a process has used so far (threads included).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields restart after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / CLOCK_TICKS_PER_SECOND))
}

/// Proportional set size in bytes (shared pages split between the processes
/// sharing them, so nginx's workers and shared zones are not counted twice).
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident set size in bytes (`VmRSS` in `/proc/<pid>/status`): what the
/// churn soak tracks, as an operator's `top` or a container limit would.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The first process named `name` among `pid` and its descendants: the real
/// proxy when it runs under a wrapper such as `heaptrack`.
pub fn find_named(pid: u32, name: &str) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(next) = queue.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{next}/comm")).unwrap_or_default();
        if comm.trim() == name {
            return Some(next);
        }
        queue.extend(children(next));
    }
    None
}

/// The sum of [`cpu_time`] over several processes.
pub fn total_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p)).sum()
}

/// The sum of [`pss_bytes`] over several processes.
pub fn total_pss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| pss_bytes(*p)).sum()
}

/// The children of `pid` (nginx's workers), from `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    children
}

/// Established TCP connections to `port` on 127.0.0.1, as `ss` counts them.
pub fn established_to_port(port: u16) -> Option<usize> {
    let output = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count(),
    )
}
