//! The only spawn in the daemon, and the pidfd that every later signal to
//! the process goes through.
//!
//! A child is made with `clone(CLONE_VM | CLONE_VFORK)` on a small stack of
//! its own, as `posix_spawn(3)` does, never with `fork()` (nor with tokio's
//! own `Command`, which reaps its own children behind the reaper's back).
//! `fork()` copies supd's page tables, which grow with the programs it holds,
//! and the exec then tears the copy down: with 500 programs that was most of
//! a spawn's 1.7 ms. Here the child shares supd's memory until it execs, and
//! supd's thread is suspended meanwhile.
//!
//! So everything the child needs is prepared before the clone: argv, envp,
//! the paths to try for the executable (execvp(3)'s search of the child's
//! `PATH`), the cwd, ids, limits and the descriptors for stdin, stdout and
//! stderr. The child allocates nothing, takes no lock, and makes only raw
//! system calls, not glibc's wrappers: it runs with supd's thread pointer,
//! so glibc's `setuid` would try to change the credentials of every supd
//! thread, and `raise` would signal supd's thread instead of the child. It
//! never returns: it execs, or it stores the errno and the step that failed
//! in memory supd reads once the clone returns, and exits with status 127
//! (supd reaps it at once). So a missing binary comes back as an errno, not
//! as an instant exit.
//!
//! Every signal is blocked in supd's thread around the clone, so the child
//! never runs one of supd's handlers; it resets every disposition before it
//! unblocks them. In the child, in this order:
//! 1. stdin, stdout and stderr are put in place (`dup3`), and the `cwd` is
//!    entered.
//! 2. `setsid()`: the program leads its own session and process group, so a
//!    stop reaches every process of the group, and no terminal signal from
//!    supd's terminal reaches it.
//! 3. the default disposition for every catchable signal, then an empty
//!    signal mask: a child of a `nohup supd` (SIGHUP ignored) or of
//!    signal-hook's blocked mask can still be stopped (rust-lang/rust#101077).
//! 4. limits, umask, groups, gid, then uid (after it, no way back).
//! 5. for `daemon = true`, `PR_SET_PDEATHSIG(SIGKILL)`, then a check that the
//!    parent is still the daemon, closing the race where the daemon died
//!    between clone and prctl. PDEATHSIG fires when the spawning *thread*
//!    ends, so spawns happen only on the daemon's main thread.
//! 6. `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`: every descriptor above
//!    stderr is closed at exec.
//! 7. the run's start marker, for a program that writes its log files itself.
//! 8. `execve` of each path to try, as execvp(3) does (a file without a `#!`
//!    line is run by `/bin/sh`, as execvp(3) runs it).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString, c_char, c_int, c_long, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
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
    /// When it was spawned.
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

/// A pipe whose both ends are close-on-exec in supd (the child's `dup3` onto
/// 0, 1 or 2 makes a copy without the flag).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// `/dev/null`, close-on-exec, for reading (stdin) or for writing.
fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(OwnedFd::from(file))
}

/// `fd` itself, or a close-on-exec copy of it numbered 3 or above when it
/// is 0, 1 or 2 (supd started with those closed): the child's `dup3` onto
/// 0, 1 and 2 must not overwrite a descriptor it has yet to copy.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; it returns a new
    // descriptor (or -1) and touches no memory.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
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
    /// A step of the new process's set-up before exec failed (the kernel
    /// refused what supd checked it may do).
    #[error("[program.{program}]: {step} failed in the new process: {source}")]
    Setup {
        /// The program.
        program: String,
        /// The step, and the key of the config it comes from.
        step: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// exec failed: missing binary, not executable, bad interpreter, ...
    #[error("cannot run \"{path}\": {source} (check \"command\" in [program.{program}])")]
    Exec {
        /// The program.
        program: String,
        /// `argv[0]`.
        path: String,
        /// The errno from exec (or from clone).
        source: io::Error,
    },
}

/// Spawns `cfg.command` with the hygiene described in this module's doc.
/// `extra_env` is added after the config's `env`.
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
/// [`SpawnError::Cwd`] when `cwd` is not a folder;
/// [`SpawnError::Privilege`] when `user`, `group` or a limit is beyond
/// supd's rights; [`SpawnError::Exec`] when clone or exec fails (the errno
/// is kept); [`SpawnError::Setup`] when another step before exec fails.
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
    let creds = Creds::for_program(cfg)?;

    let mut pipes = Pipes::default();
    let stdin = if stdin_pipe {
        let (r, w) = cloexec_pipe().map_err(exec_err)?;
        pipes.stdin = Some(w);
        r
    } else {
        dev_null(false).map_err(exec_err)?
    };
    // Which of fds 1 and 2 get the run's start marker from the child itself
    // (a program that writes its log file directly): written before exec,
    // so it comes before anything the program prints.
    let mut marker_fds: u8 = 0;
    let (stdout, stderr) = if let Some((out, err)) = files {
        marker_fds = if err.is_some() { 0b11 } else { 0b01 };
        let err = match err {
            Some(err) => err,
            None => out.try_clone().map_err(exec_err)?,
        };
        (OwnedFd::from(out), OwnedFd::from(err))
    } else if cfg.output.mode == crate::config::OutputMode::Null {
        let null = dev_null(true).map_err(exec_err)?;
        (null.try_clone().map_err(exec_err)?, null)
    } else {
        let (r, w) = cloexec_pipe().map_err(exec_err)?;
        pipes.stdout = Some(r);
        let err = if cfg.output.redirect_stderr {
            w.try_clone().map_err(exec_err)?
        } else {
            let (er, ew) = cloexec_pipe().map_err(exec_err)?;
            pipes.stderr = Some(er);
            ew
        };
        (w, err)
    };
    let stdio = [
        above_stdio(stdin).map_err(exec_err)?,
        above_stdio(stdout).map_err(exec_err)?,
        above_stdio(stderr).map_err(exec_err)?,
    ];

    let env = child_env(cfg, extra_env);
    let nul = |_| {
        exec_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        ))
    };
    let candidates = exec_candidates(
        OsStr::new(&cfg.command[0]),
        env.get(OsStr::new("PATH")).map(OsString::as_os_str),
    )
    .map_err(nul)?;
    let argv = cfg
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let envp = env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let cwd = cfg
        .cwd
        .as_ref()
        .map(|c| CString::new(c.as_os_str().as_bytes()))
        .transpose()
        .map_err(nul)?;

    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    // `/bin/sh FILE ARGS...` for a file without a `#!` line; slot 1 is
    // filled in by the child with the path that failed with ENOEXEC.
    let mut sh_argv: Vec<*const c_char> = Vec::with_capacity(argv.len() + 2);
    sh_argv.push(SH.as_ptr());
    sh_argv.push(std::ptr::null());
    sh_argv.extend(argv.iter().skip(1).map(|a| a.as_ptr()));
    sh_argv.push(std::ptr::null());

    let pinned = PinnedToCpu::new();
    let plan = ChildPlan {
        affinity: pinned.as_ref().map(|p| p.original),
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        cwd: cwd.as_deref(),
        creds: &creds,
        daemon: cfg.daemon,
        parent: std::process::id() as libc::pid_t,
        marker_fds,
        candidates: &candidates,
        argv: argv_ptrs.as_ptr(),
        sh_argv: sh_argv.as_mut_ptr(),
        envp: envp_ptrs.as_ptr(),
        failed_step: AtomicU8::new(0),
        failed_errno: AtomicI32::new(0),
    };
    let started = Instant::now();
    let pid = clone_vfork(&plan).map_err(exec_err)?;
    drop(pinned);
    let errno = plan.failed_errno.load(Ordering::Acquire);
    if errno != 0 {
        reap_failed(pid);
        let source = io::Error::from_raw_os_error(errno);
        let step = Step::from_u8(plan.failed_step.load(Ordering::Acquire));
        tracing::debug!(program = %cfg.name, step = step.what(), error = %source, "the new process failed before exec");
        return Err(match step {
            Step::Cwd => SpawnError::Cwd {
                program: cfg.name.clone(),
                path: cfg
                    .cwd
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string(),
                source,
            },
            Step::Stdio | Step::Exec => exec_err(source),
            _ => SpawnError::Setup {
                program: cfg.name.clone(),
                step: step.what(),
                source,
            },
        });
    }
    let pid = pid as u32;
    // The pid cannot have been reused yet: only this thread reaps, and it is
    // busy here, so the child is alive or a zombie we have not collected.
    let pidfd = pidfd_open(pid).map_err(exec_err)?;
    // The child's ends of the pipes (in `stdio`) close here, so supd sees end
    // of file once the program (and whatever inherited them) is gone.
    drop(stdio);
    Ok((
        Child {
            pid,
            pidfd,
            started,
        },
        pipes,
    ))
}

/// The shell that runs a file exec refuses as not an executable format.
const SH: &CStr = c"/bin/sh";

/// The environment a program gets, as `std::process::Command` would build
/// it from the same calls: supd's own, without [`PRIVATE_ENV`], then the
/// config's `env`, `extra_env`, `SUP_PROGRAM` and `SUP_DAEMON`, and for a
/// `user` their `HOME`, `USER` and `LOGNAME` (the config's `env` still wins
/// over those). Sorted by name.
fn child_env(cfg: &ProgramConfig, extra_env: &[(String, String)]) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for var in PRIVATE_ENV {
        env.remove(OsStr::new(var));
    }
    let set = |env: &mut BTreeMap<OsString, OsString>, k: &str, v: &OsStr| {
        env.insert(OsString::from(k), v.to_owned());
    };
    for (k, v) in &cfg.env {
        set(&mut env, k, OsStr::new(v));
    }
    for (k, v) in extra_env {
        set(&mut env, k, OsStr::new(v));
    }
    set(&mut env, "SUP_PROGRAM", OsStr::new(&cfg.name));
    if cfg.daemon {
        set(&mut env, crate::sentinel::DAEMON_VAR, OsStr::new("1"));
    } else {
        env.remove(OsStr::new(crate::sentinel::DAEMON_VAR));
    }
    if let Some(user) = &cfg.user {
        set(&mut env, "HOME", user.home.as_os_str());
        set(&mut env, "USER", OsStr::new(&user.name));
        set(&mut env, "LOGNAME", OsStr::new(&user.name));
        for (k, v) in &cfg.env {
            set(&mut env, k, OsStr::new(v));
        }
    }
    env
}

/// The paths execvp(3) tries for `program`: itself when it has a `/`, else
/// each folder of `path` (the child's `PATH`; glibc's default
/// `/bin:/usr/bin` without one) joined with it, an empty folder meaning the
/// current one. None for an empty name (the child then fails with ENOENT).
fn exec_candidates(
    program: &OsStr,
    path: Option<&OsStr>,
) -> Result<Vec<CString>, std::ffi::NulError> {
    let file = program.as_bytes();
    if file.is_empty() {
        return Ok(Vec::new());
    }
    if file.contains(&b'/') {
        return Ok(vec![CString::new(file)?]);
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStrExt::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + file.len());
            if !dir.is_empty() {
                full.extend_from_slice(dir);
                full.push(b'/');
            }
            full.extend_from_slice(file);
            CString::new(full)
        })
        .collect()
}

/// Pointers to `strings`, then a null pointer, as execve(2) takes them.
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A step of the child's set-up, as it reports which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Affinity = 1,
    Stdio,
    Cwd,
    Session,
    Limits,
    Groups,
    Gid,
    Uid,
    DeathSignal,
    Exec,
}

impl Step {
    fn from_u8(n: u8) -> Step {
        [
            Step::Affinity,
            Step::Stdio,
            Step::Cwd,
            Step::Session,
            Step::Limits,
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::DeathSignal,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == n)
        .unwrap_or(Step::Exec)
    }

    /// What it does, and the config key it comes from.
    fn what(self) -> &'static str {
        match self {
            Step::Affinity => "sched_setaffinity (back to supd's own CPUs)",
            Step::Stdio => "putting stdin, stdout and stderr in place",
            Step::Cwd => "chdir to \"cwd\"",
            Step::Session => "setsid",
            Step::Limits => "setrlimit (\"limit_nofile\" or \"limit_core\")",
            Step::Groups => "setgroups (\"user\" or \"group\")",
            Step::Gid => "setgid (\"user\" or \"group\")",
            Step::Uid => "setuid (\"user\")",
            Step::DeathSignal => "PR_SET_PDEATHSIG (\"daemon = true\")",
            Step::Exec => "exec",
        }
    }
}

/// What the child reads, prepared by supd before the clone, and where the
/// child writes why it failed. Lives on supd's stack for the whole clone:
/// supd's thread is suspended until the child has exec'ed or exited.
struct ChildPlan<'a> {
    /// supd's CPUs, to give back to the child, when supd's thread is pinned
    /// to one CPU for the clone (see [`PinnedToCpu`]).
    affinity: Option<libc::cpu_set_t>,
    /// Descriptors for 0, 1 and 2, all numbered 3 or above.
    stdio: [RawFd; 3],
    cwd: Option<&'a CStr>,
    creds: &'a Creds,
    daemon: bool,
    /// supd's pid, for the PDEATHSIG race check.
    parent: libc::pid_t,
    /// Bit 0: write the start marker to fd 1; bit 1: to fd 2.
    marker_fds: u8,
    /// The paths to exec, in order.
    candidates: &'a [CString],
    /// Null-terminated, pointing into strings that outlive the clone.
    argv: *const *const c_char,
    /// `/bin/sh`, a slot for the path, `argv[1..]`, null.
    sh_argv: *mut *const c_char,
    envp: *const *const c_char,
    /// The [`Step`] that failed (0: none).
    failed_step: AtomicU8,
    /// Its errno (0: the exec succeeded).
    failed_errno: AtomicI32,
}

/// The size of the child's stack (plus one guard page below it). The child
/// only makes system calls from a few small frames; glibc's `posix_spawn`
/// gives its child 32 KiB and its arguments.
const CHILD_STACK: usize = 64 * 1024;

/// An anonymous mapping for the child's stack, with a guard page at its
/// low end. Unmapped on drop, once the child has left it.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping we just made; nothing refers
        // to it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The top of the stack (it grows down), 16-byte aligned.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping; page-aligned, so
        // 16-byte aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing uses any more: the child has
        // exec'ed or exited before the clone returned.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// supd's thread pinned to the CPU it is on, for the time of a clone, and
/// its own CPUs back on drop.
///
/// The kernel places a new process on the least busy CPU, which is seldom
/// the spawning one, since supd runs there. But with CLONE_VFORK supd then
/// sleeps until the child has exec'ed: its own CPU idles while the child
/// waits for another, behind whatever runs there (up to a time slice, 6 ms
/// and more on a loaded machine, for every program). Pinned, the child
/// inherits the one CPU, runs on it at once as supd sleeps, and gives
/// itself supd's CPUs back before anything else (so the program runs where
/// supd may).
struct PinnedToCpu {
    /// supd's thread's CPUs before.
    original: libc::cpu_set_t,
}

impl PinnedToCpu {
    /// Pins the calling thread, or does nothing (None) if the CPUs cannot
    /// be read or set (a seccomp filter, more than 1,024 CPUs).
    fn new() -> Option<PinnedToCpu> {
        // SAFETY: a cpu_set_t is plain bits; all zero is an empty set.
        let mut original: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: sched_getaffinity writes at most `size` bytes into `original`.
        if unsafe { libc::sched_getaffinity(0, size, &mut original) } < 0 {
            return None;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        if cpu >= libc::CPU_SETSIZE as usize {
            return None;
        }
        // SAFETY: all zero is an empty set; CPU_SET sets bit `cpu`, which
        // is inside the set (checked above).
        let one = unsafe {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            one
        };
        // SAFETY: sched_setaffinity reads `size` bytes of `one`.
        if unsafe { libc::sched_setaffinity(0, size, &one) } < 0 {
            return None;
        }
        Some(PinnedToCpu { original })
    }
}

impl Drop for PinnedToCpu {
    fn drop(&mut self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: sched_setaffinity reads `size` bytes of `original`.
        if unsafe { libc::sched_setaffinity(0, size, &self.original) } < 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot give supd's thread its CPUs back after a spawn; it stays on one CPU");
        }
    }
}

/// Runs [`child_main`] with `plan` in a new process that shares supd's
/// memory until it execs; returns its pid once it has exec'ed or exited
/// (look at `plan.failed_errno` to tell which).
fn clone_vfork(plan: &ChildPlan<'_>) -> io::Result<libc::pid_t> {
    let stack = ChildStack::new()?;
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask on this thread with valid 8-byte sets. The raw
    // call (not pthread_sigmask) blocks glibc's own signals 32 and 33 too.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child runs `child_main` on `stack`, which stays mapped until
    // after this returns, with `plan`, which outlives the call; CLONE_VFORK
    // suspends this thread until the child has exec'ed or exited, so nothing
    // here runs while the child uses the shared memory. With every signal
    // blocked, the child cannot run one of supd's handlers before it resets
    // them. No CLONE_SIGHAND or CLONE_FILES: the child's dispositions and
    // descriptors are its own copies.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *const ChildPlan<'_> as *mut c_void,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: as above; puts back the mask saved before the clone.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    drop(stack);
    if pid < 0 { Err(clone_err) } else { Ok(pid) }
}

/// Reaps a child that failed before exec (it has exited, or is about to:
/// the clone returns as it releases supd's memory, a moment before it is a
/// zombie), so its status never reaches the reaper as an unknown pid.
fn reap_failed(pid: libc::pid_t) {
    let pid = nix::unistd::Pid::from_raw(pid);
    while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
}

/// One raw system call: its result, or the errno. Safe in the child: no
/// allocation, no lock; glibc's `syscall` only sets errno, which lives in
/// supd's suspended thread's memory and is read back at once.
///
/// # Safety
/// `nr` and `args` must make a system call whose pointer arguments are
/// valid for it.
unsafe fn sys(nr: c_long, args: [c_long; 5]) -> Result<c_long, c_int> {
    // SAFETY: the caller's promise.
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) };
    if rc < 0 {
        // SAFETY: __errno_location always returns this thread's errno.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(rc)
    }
}

/// The child's entry point: carries out the plan, and only comes back from
/// [`child_run`] if a step failed, which it records before exiting 127.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildPlan` that `clone_vfork` passed, alive and
    // unmoved while supd's thread is suspended.
    let plan = unsafe { &*(arg as *const ChildPlan<'_>) };
    // SAFETY: called once, in the new process, before exec.
    let (step, errno) = unsafe { child_run(plan) };
    plan.failed_step.store(step as u8, Ordering::Release);
    plan.failed_errno.store(
        if errno == 0 { libc::EIO } else { errno },
        Ordering::Release,
    );
    // SAFETY: exit_group ends only this process (no CLONE_THREAD), without
    // running any of supd's exit handlers.
    unsafe { libc::syscall(libc::SYS_exit_group, 127 as c_long) };
    127
}

/// The set-up between clone and exec (see the module's doc for the order).
/// Returns only if a step fails: which one, and its errno.
///
/// # Safety
/// Only in the child of [`clone_vfork`]: makes only raw system calls and
/// reads `plan`; allocates nothing, takes no lock, cannot panic.
unsafe fn child_run(plan: &ChildPlan<'_>) -> (Step, c_int) {
    let sys = |nr: c_long, a: c_long, b: c_long, c: c_long, d: c_long| {
        // SAFETY: each call below passes integers, or pointers to locals or
        // to `plan`'s data, valid for the call.
        unsafe { sys(nr, [a, b, c, d, 0]) }
    };
    if let Some(cpus) = &plan.affinity {
        if let Err(e) = sys(
            libc::SYS_sched_setaffinity,
            0,
            std::mem::size_of::<libc::cpu_set_t>() as c_long,
            cpus as *const libc::cpu_set_t as c_long,
            0,
        ) {
            return (Step::Affinity, e);
        }
    }
    for (target, &fd) in (0 as c_long..).zip(plan.stdio.iter()) {
        loop {
            match sys(libc::SYS_dup3, fd as c_long, target, 0, 0) {
                Ok(_) => break,
                Err(libc::EINTR) => continue,
                Err(e) => return (Step::Stdio, e),
            }
        }
    }
    if let Some(cwd) = plan.cwd {
        if let Err(e) = sys(libc::SYS_chdir, cwd.as_ptr() as c_long, 0, 0, 0) {
            return (Step::Cwd, e);
        }
    }
    if let Err(e) = sys(libc::SYS_setsid, 0, 0, 0, 0) {
        return (Step::Session, e);
    }
    // The kernel's own sigaction (handler, flags, restorer, mask), all zero:
    // SIG_DFL, for every signal, 32 and 33 too (glibc's sigaction() refuses
    // those two). Before the mask is emptied: until then every signal is
    // blocked, so none runs supd's handler here.
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = sys(
                libc::SYS_rt_sigaction,
                sig as c_long,
                dfl.as_ptr() as c_long,
                0,
                8,
            );
        }
    }
    let empty: u64 = 0;
    if let Err(e) = sys(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK as c_long,
        &empty as *const u64 as c_long,
        0,
        8,
    ) {
        return (Step::Session, e);
    }
    // Limits first (raising a hard limit needs root), then the mask, then
    // groups and ids (the uid last: after it, no way back).
    for (resource, limit) in &plan.creds.limits {
        if let Err(e) = sys(
            libc::SYS_prlimit64,
            0,
            *resource as c_long,
            limit as *const libc::rlimit as c_long,
            0,
        ) {
            return (Step::Limits, e);
        }
    }
    if let Some(mask) = plan.creds.umask {
        let _ = sys(libc::SYS_umask, mask as c_long, 0, 0, 0);
    }
    if let Some(groups) = &plan.creds.groups {
        if let Err(e) = sys(
            libc::SYS_setgroups,
            groups.len() as c_long,
            groups.as_ptr() as c_long,
            0,
            0,
        ) {
            return (Step::Groups, e);
        }
    }
    if let Some(gid) = plan.creds.gid {
        if let Err(e) = sys(libc::SYS_setgid, gid as c_long, 0, 0, 0) {
            return (Step::Gid, e);
        }
    }
    if let Some(uid) = plan.creds.uid {
        if let Err(e) = sys(libc::SYS_setuid, uid as c_long, 0, 0, 0) {
            return (Step::Uid, e);
        }
    }
    // After the ids: a change of credentials clears the parent-death signal.
    if plan.daemon {
        if let Err(e) = sys(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as c_long,
            libc::SIGKILL as c_long,
            0,
            0,
        ) {
            return (Step::DeathSignal, e);
        }
        if sys(libc::SYS_getppid, 0, 0, 0, 0) != Ok(plan.parent as c_long) {
            // The daemon died before the prctl took effect.
            if let Ok(me) = sys(libc::SYS_getpid, 0, 0, 0, 0) {
                let _ = sys(libc::SYS_kill, me, libc::SIGKILL as c_long, 0, 0);
            }
        }
    }
    // CLOSE_RANGE_CLOEXEC (Linux 5.11): every descriptor above stderr is
    // closed at exec, whichever of the paths to try succeeds.
    const CLOSE_RANGE_CLOEXEC: c_long = 1 << 2;
    if sys(
        libc::SYS_close_range,
        3,
        c_long::from(u32::MAX),
        CLOSE_RANGE_CLOEXEC,
        0,
    )
    .is_err()
    {
        mark_fds_cloexec_slowly();
    }
    write_start_marker(plan.marker_fds);
    exec(plan)
}

/// execve(2) of each path to try, with execvp(3)'s rules: a file exec
/// refuses as not an executable format (ENOEXEC) is run by `/bin/sh`; a
/// path that is missing, or not allowed, or the like, passes on to the
/// next; EACCES is reported if any path gave it. Returns only on failure.
fn exec(plan: &ChildPlan<'_>) -> (Step, c_int) {
    let execve = |path: *const c_char, argv: *const *const c_char| {
        // SAFETY: a null-terminated path, and null-terminated arrays of
        // null-terminated strings, all alive while supd's thread waits.
        match unsafe {
            sys(
                libc::SYS_execve,
                [path as c_long, argv as c_long, plan.envp as c_long, 0, 0],
            )
        } {
            Ok(_) => libc::EIO, // execve returns only on failure
            Err(e) => e,
        }
    };
    let mut got_eacces = false;
    let mut last = libc::ENOENT;
    for path in plan.candidates {
        let mut err = execve(path.as_ptr(), plan.argv);
        if err == libc::ENOEXEC {
            // SAFETY: slot 1 of the array `sh_argv` points to (it has at least
            // three), in memory shared with supd, whose thread is suspended
            // and reads none of it until the child is gone.
            unsafe { plan.sh_argv.add(1).write(path.as_ptr()) };
            err = execve(SH.as_ptr(), plan.sh_argv);
        }
        match err {
            libc::EACCES => got_eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return (Step::Exec, err),
        }
        last = err;
    }
    (Step::Exec, if got_eacces { libc::EACCES } else { last })
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
        if cfg.limit_nofile.is_none() {
            // supd raised its own soft limit for its clients; the program
            // gets back the one supd was started with (daemon.rs).
            if let Some(given) = crate::daemon::inherited_nofile() {
                // SAFETY: getrlimit writes into the struct we pass.
                let mut now: libc::rlimit = unsafe { std::mem::zeroed() };
                // SAFETY: as above; a valid resource and pointer.
                if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } == 0
                    && given.rlim_cur < now.rlim_cur
                {
                    creds.limits.push((
                        libc::RLIMIT_NOFILE,
                        libc::rlimit {
                            rlim_cur: given.rlim_cur,
                            rlim_max: now.rlim_max,
                        },
                    ));
                }
            }
        }
        Ok(creds)
    }
}

/// Writes `--- supd: started pid N ---` to fd 1 (bit 0 of `fds`) and fd 2
/// (bit 1), in the child before exec. Safe there: the line is built in a
/// stack buffer; only getpid and write are called; nothing can panic.
fn write_start_marker(fds: u8) {
    if fds == 0 {
        return;
    }
    // SAFETY: getpid has no arguments.
    let Ok(pid) = (unsafe { sys(libc::SYS_getpid, [0; 5]) }) else {
        return;
    };
    let mut pid = pid as u64;
    let mut digits = [0u8; 20];
    let mut n = 0;
    for d in digits.iter_mut() {
        *d = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let mut line = [0u8; 64];
    let mut len = 0;
    let bytes = b"--- supd: started pid "
        .iter()
        .chain(digits.iter().take(n).rev())
        .chain(b" ---\n".iter());
    for (slot, &b) in line.iter_mut().zip(bytes) {
        *slot = b;
        len += 1;
    }
    for fd in [1, 2] {
        if fds & (1 << (fd - 1)) != 0 {
            // SAFETY: write(2) from a stack buffer of `len` valid bytes.
            let _ = unsafe {
                sys(
                    libc::SYS_write,
                    [fd, line.as_ptr() as c_long, len as c_long, 0, 0],
                )
            };
        }
    }
}

/// For kernels without `CLOSE_RANGE_CLOEXEC`: set FD_CLOEXEC on each
/// descriptor up to the soft limit. Safe in the child (raw prlimit64 and
/// fcntl only).
fn mark_fds_cloexec_slowly() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 reads this process's limit into a local.
    let got = unsafe {
        sys(
            libc::SYS_prlimit64,
            [
                0,
                libc::RLIMIT_NOFILE as c_long,
                0,
                &mut lim as *mut libc::rlimit as c_long,
                0,
            ],
        )
    };
    let max = if got.is_ok() {
        lim.rlim_cur.min(65536) as c_long
    } else {
        1024
    };
    for fd in 3..max {
        // SAFETY: fcntl on a closed descriptor fails with EBADF and changes
        // nothing.
        let _ = unsafe {
            sys(
                libc::SYS_fcntl,
                [
                    fd,
                    libc::F_SETFD as c_long,
                    libc::FD_CLOEXEC as c_long,
                    0,
                    0,
                ],
            )
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(command: &[&str]) -> ProgramConfig {
        let mut cfg = ProgramConfig::new("t", command.iter().map(|s| s.to_string()).collect());
        cfg.output.mode = crate::config::OutputMode::Null;
        cfg
    }

    fn script(dir: &Path, name: &str, text: &str, mode: u32) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path.to_str().expect("utf-8").to_string()
    }

    /// Waits for our own child and returns its exit code.
    fn exit_code(pid: u32) -> i32 {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        match nix::sys::wait::waitpid(pid, None).expect("waitpid") {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        }
    }

    fn errno(result: Result<(Child, Pipes), SpawnError>) -> i32 {
        match result {
            Err(SpawnError::Exec { source, .. }) => source.raw_os_error().expect("errno"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_without_a_shebang_line_is_run_by_the_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = script(dir.path(), "plain", "echo \"$1\" > out\n", 0o755);
        let mut cfg = config(&[&path, "hello"]);
        cfg.cwd = Some(dir.path().to_path_buf());
        let (child, _) = spawn(&cfg, &[], false, None).expect("spawn");
        assert_eq!(exit_code(child.pid), 0);
        let out = std::fs::read_to_string(dir.path().join("out")).expect("out");
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_bare_name_is_looked_up_in_the_programs_own_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        script(dir.path(), "tool", "#!/bin/sh\nexit 7\n", 0o755);
        let mut cfg = config(&["tool"]);
        let path = format!("/nonexistent:{}", dir.path().display());
        cfg.env.insert("PATH".into(), path);
        let (child, _) = spawn(&cfg, &[], false, None).expect("spawn");
        assert_eq!(exit_code(child.pid), 7);
    }

    #[test]
    fn exec_failures_keep_their_errno() {
        let dir = tempfile::tempdir().expect("tempdir");
        let noexec = script(dir.path(), "noexec", "#!/bin/sh\n", 0o644);
        assert_eq!(
            errno(spawn(&config(&["/nonexistent/x"]), &[], false, None)),
            libc::ENOENT
        );
        assert_eq!(
            errno(spawn(&config(&[&noexec]), &[], false, None)),
            libc::EACCES
        );
        // Not found anywhere on PATH, and not allowed in one folder of it.
        let mut cfg = config(&["noexec"]);
        let path = format!("/nonexistent:{}", dir.path().display());
        cfg.env.insert("PATH".into(), path);
        assert_eq!(errno(spawn(&cfg, &[], false, None)), libc::EACCES);
        cfg.command = vec!["no-such-program-here".into()];
        assert_eq!(errno(spawn(&cfg, &[], false, None)), libc::ENOENT);
    }

    #[test]
    fn the_environment_has_the_config_over_the_users_and_no_private_variable() {
        let mut cfg = config(&["true"]);
        cfg.env.insert("HOME".into(), "/elsewhere".into());
        cfg.env.insert("A".into(), "1".into());
        cfg.user = Some(crate::config::RunAs {
            name: "someone".into(),
            uid: 1234,
            gid: 1234,
            groups: Vec::new(),
            home: "/home/someone".into(),
        });
        let env = child_env(&cfg, &[("B".into(), "2".into())]);
        let get = |k: &str| env.get(OsStr::new(k)).and_then(|v| v.to_str());
        assert_eq!(get("HOME"), Some("/elsewhere"));
        assert_eq!(get("USER"), Some("someone"));
        assert_eq!((get("A"), get("B")), (Some("1"), Some("2")));
        assert_eq!(get("SUP_PROGRAM"), Some("t"));
        assert_eq!(get(crate::sentinel::DAEMON_VAR), None);
        for var in PRIVATE_ENV {
            assert_eq!(get(var), None, "{var}");
        }
    }
}
