//! Recovery at start-up from the processes an earlier supd recorded in the
//! state file (DESIGN.md, "Surviving the daemon's own death"):
//! - nothing is touched after a reboot (the boot id differs), nor a pid whose
//!   start time differs from the record (it is another process now);
//! - a `daemon = false` program that is still alive is adopted: watched
//!   through a pidfd (it is not supd's child), shown as `adopted`, never
//!   started a second time; its exit status will be unknown;
//! - what is left of `daemon = true` programs (PDEATHSIG kills the main
//!   process; its descendants carry the old supd's `SUP_SUPD` marker) is
//!   killed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::machine::Input;
use super::{Msg, Supervisor};
use crate::procfs;
use crate::protocol::ExitStatus;
use crate::spawn::{self, Child};

/// How long ago a process started, from its start time in clock ticks.
fn age(start_time: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Duration::from_secs_f64((uptime - start_time as f64 / ticks).max(0.0))
}

impl Supervisor {
    /// Adopts or finishes off the processes of the state file.
    pub(super) fn recover(&mut self) {
        let records = std::mem::take(&mut self.state.processes);
        if records.is_empty() {
            return;
        }
        self.state_dirty = true;
        if self.boot_id.is_none() || self.state.boot_id != self.boot_id {
            tracing::info!("the state file's processes are from another boot: adopting none");
            return;
        }
        let mut sweep = BTreeSet::new();
        for (name, rec) in records {
            if rec.daemon {
                sweep.insert((rec.marker.clone(), name.clone()));
            }
            // Open the pidfd first, then check the start time: the pidfd then
            // refers to the recorded process, or the check fails.
            let Ok(pidfd) = spawn::pidfd_open(rec.pid) else {
                continue;
            };
            match procfs::stat(rec.pid) {
                Some(st) if st.start_time == rec.start_time && st.state != 'Z' => {}
                _ => continue,
            }
            if rec.daemon {
                tracing::warn!(program = %name, pid = rec.pid, "a daemon program outlived the previous supd; killing it");
                let _ = spawn::pidfd_send_signal(&pidfd, libc::SIGKILL);
                continue;
            }
            let Some(p) = self.programs.get_mut(&name) else {
                tracing::warn!(program = %name, pid = rec.pid, "a program of the previous supd is still running but is no longer configured; leaving it alone");
                continue;
            };
            if p.child.is_some() {
                continue;
            }
            let watch = match pidfd.try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::error!(program = %name, error = %e, "cannot watch an adoptable process");
                    continue;
                }
            };
            tracing::info!(program = %name, pid = rec.pid, "adopted a process left running by the previous supd");
            p.child = Some(Child {
                pid: rec.pid,
                pidfd,
                started: Instant::now()
                    .checked_sub(age(rec.start_time))
                    .unwrap_or_else(Instant::now),
            });
            p.adopted = true;
            let output_cfg = p.cfg.output.clone();
            // It still writes its own log file: follow it from its end.
            let out = self.output(&name, &output_cfg);
            out.configure(&output_cfg, true);
            out.follow_direct();
            let pid = rec.pid;
            self.state.processes.insert(name.clone(), rec);
            self.watch_adopted(name.clone(), pid, watch);
            self.feed(&name, Input::Adopted);
        }
        self.sweep(&sweep);
    }

    /// A pidfd turns readable when its process ends.
    fn watch_adopted(&self, name: String, pid: u32, fd: std::os::fd::OwnedFd) {
        let tx = self.tx.clone();
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open
        // and names the same pidfd for the AsyncFd's whole life.
        match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(afd) => {
                tokio::spawn(async move {
                    let _ = afd.readable().await;
                    let _ = tx.send(Msg::AdoptedExit { name, pid });
                });
            }
            Err(e) => {
                tracing::error!(program = %name, pid, error = %e, "cannot watch an adopted process")
            }
        }
    }

    /// An adopted process ended: its status is unknown (it was not our child).
    pub(super) fn adopted_exit(&mut self, name: &str, pid: u32) {
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        if !p.adopted || p.pid() != Some(pid) {
            return;
        }
        let ran_for = p
            .child
            .take()
            .map(|c| c.started.elapsed())
            .unwrap_or_default();
        let last = super::program::LastExit {
            status: ExitStatus::unknown(),
            pid,
            at: std::time::SystemTime::now(),
        };
        p.last_exit = Some(last);
        tracing::info!(program = %name, pid, "an adopted process ended (its exit status is unknown)");
        for w in p.exit_waiters.drain(..) {
            let _ = w.send(super::program::wait_result(name, last));
        }
        if self.state.processes.get(name).is_some_and(|r| r.pid == pid) {
            self.state.processes.remove(name);
            self.state_dirty = true;
        }
        self.feed(
            name,
            Input::Exited {
                status: ExitStatus::unknown(),
                ran_for,
            },
        );
    }

    /// Kills every process that descends from a `daemon = true` program of an
    /// earlier supd: its environment carries that supd's marker and the
    /// program's name.
    fn sweep(&self, targets: &BTreeSet<(String, String)>) {
        if targets.is_empty() {
            return;
        }
        for pid in procfs::all_pids() {
            if pid == std::process::id() {
                continue;
            }
            let Ok(pidfd) = spawn::pidfd_open(pid) else {
                continue;
            };
            let (Some(marker), Some(program)) = (
                procfs::environ_var(pid, "SUP_SUPD"),
                procfs::environ_var(pid, "SUP_PROGRAM"),
            ) else {
                continue;
            };
            if targets.contains(&(marker, program.clone())) {
                tracing::warn!(program = %program, pid, "killing what a daemon program of the previous supd left behind");
                let _ = spawn::pidfd_send_signal(&pidfd, libc::SIGKILL);
            }
        }
    }
}
