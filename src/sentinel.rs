//! The sentinel: a small companion process that finishes what `daemon =
//! true` promises when supd itself is killed with SIGKILL.
//!
//! `PR_SET_PDEATHSIG` kills a daemon program's main process when supd dies,
//! but not what that process spawned. So at start-up supd runs itself again
//! as `supd --sentinel MARKER`, in a session of its own, with the read end
//! of a pipe as its stdin; supd keeps the write end (close-on-exec, so no
//! program inherits it). The sentinel blocks reading. End of file means supd
//! is gone, however it went: the sentinel then kills every process whose
//! environment carries this supd's marker (`SUP_SUPD`) and `SUP_DAEMON=1`
//! (the daemon programs and all their descendants, `setsid()` or not), and
//! exits. It ignores the signals a terminal or a service manager sends to a
//! group, so it outlives supd long enough to do this.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};

use crate::procfs;
use crate::spawn;

/// The environment variable that marks a `daemon = true` program and its
/// descendants.
pub const DAEMON_VAR: &str = "SUP_DAEMON";

/// supd's end of the sentinel's pipe: dropping it (or supd dying) triggers
/// the sweep.
#[derive(Debug)]
pub struct Sentinel {
    pipe: ChildStdin,
    /// The sentinel's pid.
    pub pid: u32,
}

impl Sentinel {
    /// At a clean shutdown: closes the pipe and waits (up to 2 s) for the
    /// sentinel to finish, so nothing of supd's outlives it. Only call this
    /// once the supervisor (the reaper) has stopped.
    pub fn finish(self) {
        drop(self.pipe);
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                _ => return,
            }
        }
    }
}

/// Starts the sentinel for `marker`.
///
/// # Errors
/// When `/proc/self/exe` cannot be run.
pub fn start(marker: &str) -> io::Result<Sentinel> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--sentinel").arg(marker);
    cmd.stdin(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the sentinel has no stdin pipe"))?;
    Ok(Sentinel {
        pipe,
        pid: child.id(),
    })
}

/// The sentinel's whole life: wait for supd to go, then sweep. Returns the
/// number of processes killed.
pub fn run(marker: &str) -> usize {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal to SIG_IGN in a single-threaded process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    sweep(marker)
}

/// Kills every process with `SUP_SUPD=marker` and `SUP_DAEMON=1`, again and
/// again until a pass finds none (a program forking meanwhile). Each is
/// opened as a pidfd before its environment is read, so a pid reused in
/// between is never signalled.
pub fn sweep(marker: &str) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..100 {
        let mut found = 0;
        for pid in procfs::all_pids() {
            if pid == me {
                continue;
            }
            let Ok(pidfd) = spawn::pidfd_open(pid) else {
                continue;
            };
            let ours = procfs::environ_var(pid, "SUP_SUPD").as_deref() == Some(marker)
                && procfs::environ_var(pid, DAEMON_VAR).as_deref() == Some("1");
            if ours && spawn::pidfd_send_signal(&pidfd, libc::SIGKILL).is_ok() {
                found += 1;
            }
        }
        killed += found;
        if found == 0 {
            break;
        }
    }
    killed
}
