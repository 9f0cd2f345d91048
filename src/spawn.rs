//! The only fork/exec in the daemon, and the pidfd that every later signal
//! to the process goes through.
//!
//! A child is made with `std::process::Command` and a `pre_exec` hook (never
//! tokio's own `Command`, which reaps its own children behind the reaper's back).
//! std reports a failed `chdir` or `exec` through a close-on-exec pipe, so a
//! missing binary comes back here as an errno, not as an instant exit.
//!
//! Between fork and exec the hook makes only async-signal-safe calls:
//! 1. `setsid()`: the program leads its own session and process group, so a
//!    stop reaches every process of the group, and no terminal signal from
//!    supd's terminal reaches it.
//! 2. an empty signal mask and the default disposition for every catchable
//!    signal: a child of a `nohup supd` (SIGHUP ignored) or of signal-hook's
//!    blocked mask can still be stopped (rust-lang/rust#101077).
//! 3. for `daemon = true`, `PR_SET_PDEATHSIG(SIGKILL)`, then a check that
//!    the parent is still the daemon, closing the race where the daemon died
//!    between fork and prctl. PDEATHSIG fires when the forking *thread* ends,
//!    so spawns happen only on the daemon's main thread.
//! 4. `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`: every descriptor above
//!    stderr is closed at exec (marked, not closed, so std's own
//!    exec-error pipe still works until the exec succeeds).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::ProgramConfig;

/// Variables of supd's own environment that belong to supd (systemd's
/// notify and socket-activation protocol) and are never passed on.
const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// A started process: its pid and a pidfd that refers to it for as long as
/// the pidfd is open, even after the pid is reused.
#[derive(Debug)]
pub struct Child {
    /// The process id (also its process group id and session id).
    pub pid: u32,
    /// `pidfd_open(pid)`, opened before the process can have been reaped.
    pub pidfd: OwnedFd,
    /// When it was forked.
    pub started: Instant,
}

/// supd's ends of a new process's pipes: read ends of its stdout and
/// stderr (`None` when the output is discarded, or stderr is merged into
/// stdout), and the write end of its stdin (only when asked for). All are
/// close-on-exec, so no later child inherits them.
#[derive(Debug, Default)]
pub struct Pipes {
    /// Read end of the program's stdout (and of its stderr, when merged).
    pub stdout: Option<OwnedFd>,
    /// Read end of the program's stderr.
    pub stderr: Option<OwnedFd>,
    /// Write end of the program's stdin.
    pub stdin: Option<OwnedFd>,
}

/// A pipe whose both ends are close-on-exec in supd (std's dup2 onto
/// 0, 1 or 2 in the child clears the flag on the child's copy).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The working folder is missing or not usable.
    #[error("cannot use cwd \"{path}\": {source} (check \"cwd\" in [program.{program}])")]
    Cwd {
        /// The program.
        program: String,
        /// The folder.
        path: String,
        /// The errno.
        source: io::Error,
    },
    /// `user`, `group` or a limit that supd has not the privilege to set.
    #[error("[program.{program}]: {message}")]
    Privilege {
        /// The program.
        program: String,
        /// What was refused and how to fix it.
        message: String,
    },
    /// exec failed: missing binary, not executable, bad interpreter, ...
    #[error("cannot run \"{path}\": {source} (check \"command\" in [program.{program}])")]
    Exec {
        /// The program.
        program: String,
        /// `argv[0]`.
        path: String,
        /// The errno from exec (or from fork).
        source: io::Error,
    },
}

/// Forks and execs `cfg.command` with the hygiene described in this
/// module's doc. `extra_env` is added after the config's `env`.
///
/// Output: with `stdout = "null"` both streams go to `/dev/null`;
/// otherwise each is a pipe whose read end is returned in [`Pipes`] (one
/// pipe for both with `redirect_stderr`), unless `files` gives the log
/// files the program writes itself (`daemon = false`: no pipe whose reader
/// could die with supd). stdin is `/dev/null`, or a pipe when `stdin_pipe`
/// (for `supctl run`).
///
/// Must be called on the daemon's main thread (see `PR_SET_PDEATHSIG`).
///
/// # Errors
/// [`SpawnError::Cwd`] when `cwd` is not a folder; [`SpawnError::Exec`]
/// when fork or exec fails (the errno is kept).
pub fn spawn(
    cfg: &ProgramConfig,
    extra_env: &[(String, String)],
    stdin_pipe: bool,
    files: Option<(std::fs::File, Option<std::fs::File>)>,
) -> Result<(Child, Pipes), SpawnError> {
    if let Some(cwd) = &cfg.cwd {
        check_cwd(&cfg.name, cwd)?;
    }
    let exec_err = |source: io::Error| SpawnError::Exec {
        program: cfg.name.clone(),
        path: cfg.command[0].clone(),
        source,
    };

    let mut cmd = Command::new(&cfg.command[0]);
    cmd.args(&cfg.command[1..]);
    for var in PRIVATE_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(&cfg.env);
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    cmd.env("SUP_PROGRAM", &cfg.name);
    if cfg.daemon {
        cmd.env(crate::sentinel::DAEMON_VAR, "1");
    } else {
        cmd.env_remove(crate::sentinel::DAEMON_VAR);
    }
    if let Some(cwd) = &cfg.cwd {
        cmd.current_dir(cwd);
    }
    let mut pipes = Pipes::default();
    if stdin_pipe {
        let (r, w) = cloexec_pipe().map_err(exec_err)?;
        cmd.stdin(Stdio::from(r));
        pipes.stdin = Some(w);
    } else {
        cmd.stdin(Stdio::null());
    }
    // Which of fds 1 and 2 get the run's start marker from the child itself
    // (a program that writes its log file directly): written before exec,
    // so it comes before anything the program prints.
    let mut marker_fds: u8 = 0;
    if let Some((out, err)) = files {
        marker_fds = if err.is_some() { 0b11 } else { 0b01 };
        let err = match err {
            Some(err) => err,
            None => out.try_clone().map_err(exec_err)?,
        };
        cmd.stdout(Stdio::from(out));
        cmd.stderr(Stdio::from(err));
    } else if cfg.output.mode == crate::config::OutputMode::Null {
        cmd.stdout(Stdio::null());
        cmd.stderr(Stdio::null());
    } else {
        let (r, w) = cloexec_pipe().map_err(exec_err)?;
        if cfg.output.redirect_stderr {
            cmd.stderr(Stdio::from(w.try_clone().map_err(exec_err)?));
        } else {
            let (er, ew) = cloexec_pipe().map_err(exec_err)?;
            cmd.stderr(Stdio::from(ew));
            pipes.stderr = Some(er);
        }
        cmd.stdout(Stdio::from(w));
        pipes.stdout = Some(r);
    }

    let creds = Creds::for_program(cfg)?;
    if let Some(user) = &cfg.user {
        cmd.env("HOME", &user.home);
        cmd.env("USER", &user.name);
        cmd.env("LOGNAME", &user.name);
        // The config's own `env` still wins.
        cmd.envs(&cfg.env);
    }
    let daemon = cfg.daemon;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the forked child before exec and makes only
    // async-signal-safe calls (setsid, sigprocmask, rt_sigaction, setrlimit,
    // umask, setgroups, setgid, setuid, prctl, getppid, raise, close_range,
    // getpid, write);
    // it allocates nothing (`creds` was built before the fork) and takes no
    // lock.
    unsafe {
        cmd.pre_exec(move || {
            child_setup(daemon, parent, &creds)?;
            write_start_marker(marker_fds);
            Ok(())
        });
    }

    let started = Instant::now();
    let child = cmd.spawn().map_err(exec_err)?;
    let pid = child.id();
    // The pid cannot have been reused yet: only this thread reaps, and it is
    // busy here, so the child is alive or a zombie we have not collected.
    let pidfd = pidfd_open(pid).map_err(exec_err)?;
    // Dropping std's handle neither waits nor kills; the reaper owns the exit.
    drop(child);
    // The child's ends of the pipes close with `cmd`, so supd sees end of
    // file once the program (and whatever inherited them) is gone.
    drop(cmd);
    Ok((
        Child {
            pid,
            pidfd,
            started,
        },
        pipes,
    ))
}

fn check_cwd(program: &str, cwd: &Path) -> Result<(), SpawnError> {
    let err = |source| SpawnError::Cwd {
        program: program.to_string(),
        path: cwd.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(cwd).map_err(err)?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(err(io::Error::from_raw_os_error(libc::ENOTDIR)))
    }
}

/// Credentials and limits a program gets, prepared before the fork.
#[derive(Debug, Default)]
struct Creds {
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    groups: Option<Vec<libc::gid_t>>,
    umask: Option<libc::mode_t>,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
}

impl Creds {
    /// Builds them, refusing at once (with the reason) what the kernel
    /// would refuse in the child: a change of user or group when supd is
    /// not root, a limit above supd's own hard limit when it is not root.
    fn for_program(cfg: &ProgramConfig) -> Result<Creds, SpawnError> {
        let refuse = |message: String| SpawnError::Privilege {
            program: cfg.name.clone(),
            message,
        };
        let root = nix::unistd::geteuid().is_root();
        let mut creds = Creds::default();
        if let Some(user) = &cfg.user {
            if !root && user.uid != nix::unistd::geteuid().as_raw() {
                return Err(refuse(format!(
                    "cannot run as user \"{}\": supd runs as uid {}, not root (run supd as root, or remove \"user\")",
                    user.name,
                    nix::unistd::geteuid()
                )));
            }
            creds.uid = Some(user.uid);
            creds.gid = Some(user.gid);
            creds.groups = Some(user.groups.clone());
        }
        if let Some(gid) = cfg.group {
            if !root && gid != nix::unistd::getegid().as_raw() {
                return Err(refuse(format!(
                    "cannot run with group {gid}: supd is not root (run supd as root, or remove \"group\")"
                )));
            }
            creds.gid = Some(gid);
            match &mut creds.groups {
                Some(groups) if !groups.contains(&gid) => groups.push(gid),
                Some(_) => {}
                // No user: the group alone, not supd's own supplementary groups.
                None if root => creds.groups = Some(vec![gid]),
                None => {}
            }
        }
        creds.umask = cfg.umask.map(|m| m as libc::mode_t);
        for (resource, limit, key) in [
            (libc::RLIMIT_NOFILE, cfg.limit_nofile, "limit_nofile"),
            (libc::RLIMIT_CORE, cfg.limit_core, "limit_core"),
        ] {
            let Some(limit) = limit else { continue };
            let value = limit.unwrap_or(libc::RLIM_INFINITY);
            if !root {
                // SAFETY: getrlimit writes into the struct we pass.
                let mut current: libc::rlimit = unsafe { std::mem::zeroed() };
                // SAFETY: as above; a valid resource and pointer.
                if unsafe { libc::getrlimit(resource, &mut current) } == 0
                    && value > current.rlim_max
                {
                    return Err(refuse(format!(
                        "cannot raise {key} to {value}: supd's hard limit is {} and supd is not root",
                        current.rlim_max
                    )));
                }
            }
            creds.limits.push((
                resource,
                libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                },
            ));
        }
        Ok(creds)
    }
}

/// Runs in the child between fork and exec. Only async-signal-safe calls.
fn child_setup(daemon: bool, parent: libc::pid_t, creds: &Creds) -> io::Result<()> {
    // SAFETY: plain system calls on this process's own state, each
    // async-signal-safe (signal-safety(7)); pointers passed are to locals.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel's own sigaction (handler, flags, restorer, mask), all
        // zero: SIG_DFL. Through the raw system call, because glibc's
        // sigaction() refuses the two signals it reserves (32 and 33), which
        // would otherwise stay ignored if supd inherited them ignored.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        // Limits first (raising a hard limit needs root), then the mask,
        // then groups and ids (the uid last: after it, no way back).
        for (resource, limit) in &creds.limits {
            if libc::setrlimit(*resource, limit) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(mask) = creds.umask {
            libc::umask(mask);
        }
        if let Some(groups) = &creds.groups {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(gid) = creds.gid {
            if libc::setgid(gid) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(uid) = creds.uid {
            if libc::setuid(uid) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // After the ids: a change of credentials clears the parent-death signal.
        if daemon {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The daemon died before the prctl took effect.
                libc::raise(libc::SIGKILL);
            }
        }
        // CLOSE_RANGE_CLOEXEC (Linux 5.11): mark rather than close, so std's
        // exec-error pipe keeps working until the exec itself.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            mark_fds_cloexec_slowly();
        }
    }
    Ok(())
}

/// Writes `--- supd: started pid N ---` to fd 1 (bit 0 of `fds`) and fd 2
/// (bit 1), in the child before exec. Async-signal-safe: the line is built
/// in a stack buffer; only getpid and write are called.
fn write_start_marker(fds: u8) {
    if fds == 0 {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let mut line = [0u8; 64];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        line[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(b"--- supd: started pid ");
    for i in (0..n).rev() {
        put(&digits[i..=i]);
    }
    put(b" ---\n");
    for fd in [1, 2] {
        if fds & (1 << (fd - 1)) != 0 {
            // SAFETY: write(2) from a stack buffer of `len` valid bytes.
            unsafe { libc::write(fd, line.as_ptr().cast(), len) };
        }
    }
}

/// For kernels without `CLOSE_RANGE_CLOEXEC`: set FD_CLOEXEC on each
/// descriptor up to the soft limit. Async-signal-safe (fcntl only).
fn mark_fds_cloexec_slowly() {
    // SAFETY: getrlimit and fcntl are async-signal-safe; fcntl on a closed
    // descriptor fails with EBADF and changes nothing.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(65536) as RawFd
        } else {
            1024
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// `pidfd_open(2)`: a descriptor that stays bound to this process.
///
/// # Errors
/// The errno: ESRCH when no such process exists.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // pidfd_open sets O_CLOEXEC on the new descriptor itself.
    // SAFETY: the kernel just returned this descriptor to us; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: signals the process the pidfd refers to, or fails
/// with ESRCH once it has been reaped. Never reaches a process that reused
/// the pid.
///
/// # Errors
/// The errno (ESRCH: gone; EPERM: not allowed).
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call; a null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `killpg(2)`. Callers send to a group only while its leader is ours and
/// not yet reaped (alive or a zombie), which keeps the group id from being
/// reused.
///
/// # Errors
/// The errno (ESRCH: no member left).
pub fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: a plain system call with integer arguments.
    let rc = unsafe { libc::killpg(pgid as libc::pid_t, sig) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
