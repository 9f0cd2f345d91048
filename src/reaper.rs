//! The subreaper and the only `waitpid` in the daemon.
//!
//! supd marks itself a child subreaper (`PR_SET_CHILD_SUBREAPER`, prctl(2)),
//! so descendants orphaned by a program are re-parented to it instead of
//! init. On every SIGCHLD the supervisor calls [`reap`], which collects every
//! exited child until none is left: nothing stays a zombie.
//!
//! Each exited child is first *peeked at* with `waitid(WNOWAIT)`: while it is
//! still a zombie its pid (and so its process-group id) cannot be reused, so
//! the caller may still signal its process group safely, and only then is it
//! reaped.

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::protocol::ExitStatus;

/// Makes this process a child subreaper.
///
/// # Errors
/// The errno from prctl(2) (only on kernels older than 3.4).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Collects every child that has exited. For each, `before_reap(pid)` runs
/// while the child is still a zombie (so its pid and process group are still
/// reserved), then the child is reaped and `(pid, status)` is returned.
pub fn reap(mut before_reap: impl FnMut(u32)) -> Vec<(u32, ExitStatus)> {
    let mut out = Vec::new();
    loop {
        let peeked = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peeked {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitid failed");
                break;
            }
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => break,
            },
        };
        let raw = pid.as_raw() as u32;
        before_reap(raw);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => out.push((raw, ExitStatus::exited(code))),
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                out.push((raw, ExitStatus::signaled(sig as i32, core)))
            }
            Ok(other) => tracing::warn!(pid = raw, status = ?other, "unexpected wait status"),
            Err(e) => {
                tracing::error!(pid = raw, error = %e, "waitpid failed after waitid");
                break;
            }
        }
    }
    out
}

/// Reaps `pid` if it has exited, without peeking first. For a child whose
/// exit must be collected right now (e.g. after a failed setup).
pub fn try_reap(pid: u32) -> Option<ExitStatus> {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::exited(code)),
        Ok(WaitStatus::Signaled(_, sig, core)) => Some(ExitStatus::signaled(sig as i32, core)),
        _ => None,
    }
}
