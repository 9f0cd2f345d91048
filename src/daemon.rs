//! Wiring: configuration, control socket, signals, the reaper, the
//! supervisor and sd_notify, in the order that keeps each promise:
//!
//! 1. supd raises its soft open-file limit to the hard one (each client
//!    connection is a descriptor; programs get back the limit supd was
//!    given, see [`inherited_nofile`]), becomes a child subreaper, then
//!    registers SIGCHLD/SIGTERM/SIGINT (signal-hook) before it spawns
//!    anything, so no exit is missed.
//! 2. The socket is bound (refused if another supd holds it).
//! 3. Autostart programs are spawned, on the main thread.
//! 4. `READY=1` goes to systemd (`NOTIFY_SOCKET`) with a `STATUS=` summary,
//!    then the supervisor runs until shutdown has stopped every program.
//!    Meanwhile (under systemd only) [`notify`] keeps `STATUS=` current and
//!    pings the watchdog when `WATCHDOG_USEC` asks for it.
//! 5. `STOPPING=1` (already sent when SIGTERM/SIGINT asked for the
//!    shutdown), the socket file is removed, and [`run`] returns.

use std::path::PathBuf;
use std::sync::OnceLock;

use futures_util::StreamExt;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;

use crate::client::default_socket_path;
use crate::config::Config;
use crate::notify::{self, NotifyState};
use crate::server::{self, BindError, ControlSocket};
use crate::supervisor::Supervisor;

/// What `supd` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration, already validated.
    pub config: Config,
    /// `--socket`, over the config's `socket` and the default.
    pub socket: Option<PathBuf>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The control socket could not be set up.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A system call at start-up failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The socket path for these options: `--socket`, else the config's
/// `socket`, else [`default_socket_path`].
pub fn socket_path(opts: &Options) -> PathBuf {
    opts.socket
        .clone()
        .or_else(|| opts.config.supd.socket.clone())
        .unwrap_or_else(default_socket_path)
}

/// The `RLIMIT_NOFILE` supd was started with, before [`raise_nofile`].
static INHERITED_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// The open-file limit (soft, hard) supd was started with, once it has
/// raised its own ([`raise_nofile`]); `None` before (or in a process that
/// is not supd). Programs without `limit_nofile` are given this soft limit
/// back, so raising supd's own changes nothing for them (a program using
/// `select(2)` keeps its 1024).
pub fn inherited_nofile() -> Option<libc::rlimit> {
    INHERITED_NOFILE.get().copied()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so that supd can
/// hold as many client connections as it is allowed to (systemd's
/// default soft limit is 1024; the shipped unit sets `LimitNOFILE=65536`).
/// Remembers the limit it was started with ([`inherited_nofile`]).
///
/// # Errors
/// getrlimit/setrlimit failures (then supd runs on with its limit).
pub fn raise_nofile() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = INHERITED_NOFILE.set(lim);
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    if raised.rlim_cur != lim.rlim_cur {
        // SAFETY: setrlimit reads the struct we pass; a soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(raised)
}

/// Runs the daemon in the foreground until shutdown. Blocks the calling
/// thread, which must be the process's main thread: programs are spawned
/// from it, and `PR_SET_PDEATHSIG` is tied to the thread that forks.
///
/// # Errors
/// [`DaemonError`] when start-up fails; nothing has been spawned then.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    match raise_nofile() {
        Ok(raised) => {
            let was = inherited_nofile().map_or(raised.rlim_cur, |l| l.rlim_cur);
            tracing::debug!(
                from = was,
                to = raised.rlim_cur,
                "open-file limit raised to the hard limit"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; client connections are limited by it")
        }
    }
    crate::reaper::become_subreaper().map_err(|e| DaemonError::Setup {
        what: "PR_SET_CHILD_SUBREAPER",
        source: e.into(),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Setup {
            what: "starting the runtime",
            source,
        })?;
    runtime.block_on(serve(opts))
}

async fn serve(mut opts: Options) -> Result<(), DaemonError> {
    let mut signals =
        Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(|source| {
            DaemonError::Setup {
                what: "registering signal handlers",
                source,
            }
        })?;
    let path = socket_path(&opts);
    let socket = ControlSocket::bind(&path, opts.config.supd.socket_group)?;
    let listener =
        tokio::net::UnixListener::from_std(socket.listener.try_clone().map_err(|source| {
            DaemonError::Setup {
                what: "registering the control socket",
                source,
            }
        })?)
        .map_err(|source| DaemonError::Setup {
            what: "registering the control socket",
            source,
        })?;

    let state_dir = crate::state::state_dir(opts.config.supd.state_dir.as_deref(), &path);
    let state_path = state_dir.join(crate::state::FILE_NAME);
    let log_dir = crate::logs::log_dir(opts.config.supd.log_dir.as_deref(), &state_dir);
    let (mut supervisor, handle) = Supervisor::new(&opts.config, Some(state_path), log_dir);
    // The supervisor holds its own copy of each program's definition, and a
    // reload reads the file again: these are not needed twice.
    let programs = std::mem::take(&mut opts.config.programs).len();
    let sentinel = match crate::sentinel::start(supervisor.marker()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the sentinel: descendants of daemon programs may outlive a SIGKILL of supd");
            None
        }
    };
    supervisor.autostart();

    let signal_handle = handle.clone();
    let signal_task = tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGCHLD => signal_handle.reap(),
                SIGTERM | SIGINT => {
                    tracing::info!(signal = %crate::signals::signal_name(sig), "shutdown requested");
                    notify::send(&[NotifyState::Stopping]);
                    signal_handle.shutdown();
                }
                SIGHUP => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let handle = signal_handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle.reload().await {
                            tracing::error!(error = %e, "reload refused; nothing changed");
                        }
                    });
                }
                SIGUSR1 => {
                    tracing::info!("SIGUSR1: reopening the log files");
                    let handle = signal_handle.clone();
                    tokio::spawn(async move { handle.reopen_logs().await });
                }
                _ => {}
            }
        }
    });
    // Children that exited before the handler was installed: collect them too.
    handle.reap();

    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve(
        listener,
        handle.clone(),
        opts.config.supd.allow_uids.clone(),
        async {
            let _ = server_stopped.await;
        },
    ));

    // systemd: READY=1 with a STATUS= summary, then STATUS= kept current and
    // the watchdog pinged. These tasks ask the supervisor, so they run
    // beside it; without NOTIFY_SOCKET there is no one to tell.
    tracing::info!(socket = %path.display(), programs, "supd ready");
    let mut systemd_tasks = Vec::new();
    if notify::enabled() {
        systemd_tasks.push(tokio::spawn(notify::ready_then_report(handle.clone())));
        if let Some(period) = notify::watchdog_period_from_env() {
            tracing::debug!(?period, "systemd watchdog enabled; pinging");
            systemd_tasks.push(tokio::spawn(notify::watchdog(handle.clone(), period)));
        }
    }

    supervisor.run().await;

    for task in systemd_tasks {
        task.abort();
    }
    notify::send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopped every program; exiting"),
    ]);
    let _ = stop_server.send(());
    let _ = server_task.await;
    signal_task.abort();
    socket.remove();
    // Closing the pipe lets the sentinel sweep (nothing is left) and exit.
    if let Some(sentinel) = sentinel {
        sentinel.finish();
    }
    tracing::info!("supd stopped");
    Ok(())
}
