//! What supd reads from `/proc`: its own children (to find adopted
//! orphans), a process's start time and session (to tell a process from a
//! later one that reused its pid), a variable of its environment (to tell
//! which program an orphan came from), and the boot id.
//!
//! Every reader returns `None` for a process that is gone or unreadable;
//! callers treat that as "not ours".

use std::path::Path;

/// `/proc/sys/kernel/random/boot_id`: changes at every boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The fields of `/proc/PID/stat` supd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// The process group.
    pub pgid: u32,
    /// The session.
    pub sid: u32,
    /// Start time in clock ticks since boot (field 22): with the pid, it
    /// names one process for the whole boot.
    pub start_time: u64,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip to
    // the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The children of this process, from `/proc/self/task/*/children`.
pub fn own_children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The value of `key` in the environment `pid` started with.
pub fn environ_var(pid: u32, key: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    bytes.split(|&b| b == 0).find_map(|var| {
        let eq = var.iter().position(|&b| b == b'=')?;
        (&var[..eq] == key.as_bytes()).then(|| String::from_utf8_lossy(&var[eq + 1..]).into_owned())
    })
}

/// Every pid on the system.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(Path::new("/proc")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(s.start_time > 0);
        assert!(boot_id().is_some_and(|b| b.len() >= 32));
        assert_eq!(
            environ_var(me, "PATH"),
            std::env::var("PATH").ok(),
            "PATH as this process started with it"
        );
        assert!(all_pids().contains(&me));
    }
}
