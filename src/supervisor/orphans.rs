//! Orphans: descendants of a program that outlived their parent and, since
//! supd is a child subreaper, were re-parented to supd. They are found among
//! supd's own children (`/proc/self/task/*/children`) that are not a
//! program's main process, and attributed to a program by the `SUP_PROGRAM`
//! variable they inherited (or, failing that, by their session, which is the
//! main process's pid unless they called `setsid()`).
//!
//! Being supd's children, they cannot be reaped, so their pids cannot be
//! reused, until supd itself reaps them on this thread: signalling them by
//! pid here is safe.

use std::collections::HashMap;

use crate::procfs;

/// Live orphans by program name.
pub(super) fn by_program(by_pid: &HashMap<u32, String>) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for pid in procfs::own_children() {
        if by_pid.contains_key(&pid) {
            continue;
        }
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.state == 'Z' {
            continue; // ended; the reaper collects it
        }
        let owner =
            procfs::environ_var(pid, "SUP_PROGRAM").or_else(|| by_pid.get(&stat.sid).cloned());
        if let Some(name) = owner {
            out.entry(name).or_default().push(pid);
        }
    }
    for pids in out.values_mut() {
        pids.sort_unstable();
    }
    out
}

/// Sends `sig` to every live orphan of `name`.
pub(super) fn signal_orphans(name: &str, sig: i32, by_pid: &HashMap<u32, String>) {
    let Some(pids) = by_program(by_pid).remove(name) else {
        return;
    };
    for pid in pids {
        // SAFETY: kill(2) on a child of this process that is not reaped yet
        // (only this thread reaps), so the pid still names that child.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc == 0 {
            tracing::debug!(program = %name, pid, signal = sig, "signalled an orphan");
        }
    }
}
