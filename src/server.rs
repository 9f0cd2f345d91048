//! The control socket: creating it safely, checking who connects, and one
//! task per connection that reads JSON-RPC lines and answers them.
//!
//! - The socket is bound under umask 0177, so it never exists with wider
//!   permissions than 0600, even for a moment. With `socket_group` it is
//!   then given that group, and only then made 0660.
//! - Whether another `supd` owns the path is decided under an exclusive
//!   `flock` on `PATH.lock`: held, the start is refused; free, a stale socket
//!   file is replaced. A path that is not a socket is never unlinked. The
//!   lock is opened without following a symlink, and must be a regular
//!   file.
//! - Each connection's peer credentials (`SO_PEERCRED`) are checked before
//!   anything is read: root, supd's own user and `allow_users` only.
//! - Caps: [`MAX_LINE`] a message, [`FIRST_REQUEST_TIMEOUT`] of silence
//!   before the first request. Connections: [`MAX_CONNECTIONS_PER_USER`]
//!   from each user other than root and supd's own, [`MAX_CONNECTIONS_OTHERS`]
//!   from all of them together (at most half the budget), and a budget for
//!   all from the open-file limit ([`connection_budget`]): root and supd's
//!   own user are refused only when the descriptors run out, never because
//!   of other users' connections.
//! - A spare descriptor is kept in reserve: when `accept` fails with EMFILE
//!   it is given up to accept the waiting client and answer it ("out of
//!   file descriptors") rather than leave it hanging; with no reserve
//!   left, accepting backs off instead of spinning.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::logs::{OutputEvent, Stream};
use crate::protocol::framing::{Frame, FrameReader, write_message};
use crate::protocol::{
    ErrorKind, Event, MAX_LINE, NamesParams, Notification, PROTOCOL_VERSION, ProgramsResult,
    Response, RpcError, ScaleParams, SignalParams, VersionResult, WaitParams,
};
use crate::signals::parse_signal_value;
use crate::supervisor::{Handle, RunSpec, RunStarted, WaitTicket};

/// Connections one user other than root and supd's own may hold at once
/// (idle ones, `events`, `logs -f`, `wait` and `run` streams alike); more
/// are answered with an error naming the uid and closed.
pub const MAX_CONNECTIONS_PER_USER: usize = 64;

/// Connections all users other than root and supd's own may hold together;
/// also never more than half of [`connection_budget`].
pub const MAX_CONNECTIONS_OTHERS: usize = 1024;

/// Descriptors the connection budget leaves to everything else (programs'
/// pipes and pidfds, log files, the state file), at the least; a quarter
/// of the limit when that is more.
pub const FD_HEADROOM_MIN: u64 = 64;

/// Refused connections answered gracefully at once (the request read and
/// dropped first, for up to a second), in all and from one uid; past
/// these, a refusal is written and the connection closed at once, so that
/// refusals cannot pile up descriptors.
const MAX_REFUSING: usize = 256;

/// See [`MAX_REFUSING`].
const MAX_REFUSING_PER_USER: usize = 16;

/// How long `accept` pauses when the descriptor table is full and no
/// reserve is left.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a new connection may stay silent before its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live supd holds the lock beside the socket.
    #[error("another supd is running on {0} (stop it first, or choose another --socket)")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error(
        "{0} exists and is not a socket; refusing to replace it (remove it, or choose another --socket)"
    )]
    NotASocket(PathBuf),
    /// The lock file beside the socket is a symlink or not a regular file:
    /// supd, as root, would otherwise create or lock whatever it points to.
    #[error(
        "{path} is {what}, not a regular file; refusing to use it as supd's lock (remove it, or choose another --socket)"
    )]
    BadLock {
        /// The lock's path (`SOCKET.lock`).
        path: PathBuf,
        /// What is there: "a symbolic link", "a directory", ...
        what: &'static str,
    },
    /// Any other system error, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A bound control socket, and the lock that says this supd owns it.
#[derive(Debug)]
pub struct ControlSocket {
    /// The listening socket (blocking mode off; register with tokio).
    pub listener: std::os::unix::net::UnixListener,
    /// Its path.
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl ControlSocket {
    /// Creates the socket at `path` (and its folder, mode 0755, if
    /// missing): mode 0600, or 0660 with group `group` (`socket_group`,
    /// SPEC §5). Its lock, `PATH.lock`, is created 0600.
    ///
    /// # Errors
    /// [`BindError::InUse`] when a live supd holds it;
    /// [`BindError::NotASocket`] when a non-socket file is in the way;
    /// [`BindError::BadLock`] when the lock is a symlink or not a regular
    /// file; [`BindError::Io`] otherwise.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<ControlSocket, BindError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| BindError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(io_err(dir))?;
            }
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock_file = open_lock(&lock_path)?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                if errno == nix::errno::Errno::EWOULDBLOCK {
                    BindError::InUse(path.to_path_buf())
                } else {
                    BindError::Io {
                        path: lock_path.clone(),
                        source: errno.into(),
                    }
                }
            })?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                tracing::info!(path = %path.display(), "replacing a stale socket left by a dead supd");
                std::fs::remove_file(path).map_err(io_err(path))?;
            }
            Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io_err(path))?;
        listener.set_nonblocking(true).map_err(io_err(path))?;
        if let Some(gid) = group {
            share_with_group(path, gid).map_err(io_err(path))?;
        }
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Removes the socket file (at shutdown). The lock is released when
    /// `self` is dropped.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket");
        }
    }
}

/// Opens (creating it 0600 if missing) the lock file at `path` without
/// following a symlink there (`O_NOFOLLOW`), nor blocking on a FIFO
/// (`O_NONBLOCK`), and checks that it is a regular file: otherwise supd,
/// as root, would create or open whatever a symlink planted there names.
fn open_lock(path: &Path) -> Result<File, BindError> {
    let bad = |what| BindError::BadLock {
        path: path.to_path_buf(),
        what,
    };
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP)
                    if std::fs::symlink_metadata(path)
                        .is_ok_and(|m| m.file_type().is_symlink()) =>
                {
                    bad("a symbolic link")
                }
                Some(libc::EISDIR) => bad("a directory"),
                _ => BindError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            });
        }
    };
    let kind = file
        .metadata()
        .map_err(|source| BindError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    if kind.is_file() {
        Ok(file)
    } else if kind.is_fifo() {
        Err(bad("a FIFO"))
    } else if kind.is_socket() {
        Err(bad("a socket"))
    } else {
        Err(bad("a device"))
    }
}

/// Gives the freshly bound socket at `path` (mode 0600) the group `gid`,
/// then mode 0660: its permissions are never wider than that, even for a
/// moment. Neither step follows a symlink.
fn share_with_group(path: &Path, gid: u32) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
    nix::unistd::fchownat(
        AT_FDCWD,
        path,
        None,
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    fchmodat(
        AT_FDCWD,
        path,
        Mode::from_bits_truncate(0o660),
        FchmodatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// The open-file limit (the soft `RLIMIT_NOFILE`), read at each accept so
/// that a change (`prlimit`) is followed. 1024 when it cannot be read.
fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Connections supd holds at once for an open-file limit of `limit`: the
/// limit less a quarter of it (at least [`FD_HEADROOM_MIN`]), which stays
/// for programs, logs and state. 15,000 for a limit of 20,000; 49,152 for
/// systemd's `LimitNOFILE=65536` of the shipped unit.
pub fn connection_budget(limit: u64) -> usize {
    let headroom = (limit / 4).max(FD_HEADROOM_MIN);
    usize::try_from(limit.saturating_sub(headroom))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Connections open now: in all, from other users, and by uid.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    others: usize,
    by_uid: std::collections::HashMap<u32, usize>,
}

/// The connection counts, shared by the accept loop and the slots.
type Tally = Arc<std::sync::Mutex<Counts>>;

fn lock(tally: &Tally) -> std::sync::MutexGuard<'_, Counts> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection's place in the counts, given back when it is dropped.
struct Slot {
    tally: Tally,
    /// The uid, for a user other than root and supd's own.
    other: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.tally);
        counts.total -= 1;
        if let Some(uid) = self.other {
            counts.others -= 1;
            if let Some(n) = counts.by_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    counts.by_uid.remove(&uid);
                }
            }
        }
    }
}

/// Takes a slot for a connection of `uid`, or says why not. `privileged`
/// (root, supd's own user) is limited only by the descriptor budget.
fn admit(tally: &Tally, uid: u32, privileged: bool, limit: u64) -> Result<Slot, String> {
    let budget = connection_budget(limit);
    let mut counts = lock(tally);
    if counts.total >= budget {
        return Err(format!(
            "too many connections: supd holds {} (its open-file limit of {limit} allows {budget}); try again, or raise supd's LimitNOFILE",
            counts.total
        ));
    }
    if !privileged {
        let mine = counts.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_USER {
            return Err(format!(
                "too many connections from uid {uid}: it holds {mine}, the most a user other than root may hold is {MAX_CONNECTIONS_PER_USER} (each events, logs -f, wait and run keeps one open); close some"
            ));
        }
        let cap = MAX_CONNECTIONS_OTHERS.min(budget / 2);
        if counts.others >= cap {
            return Err(format!(
                "too many connections from users other than root: {} open, at most {cap}; try again",
                counts.others
            ));
        }
        counts.others += 1;
        *counts.by_uid.entry(uid).or_insert(0) += 1;
    }
    counts.total += 1;
    Ok(Slot {
        tally: tally.clone(),
        other: (!privileged).then_some(uid),
    })
}

/// A descriptor held in reserve (`/dev/null`), given up to accept a client
/// when the table is full; `None` when it cannot be had.
fn reserve_fd() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Serves connections on `listener` until `shutdown` completes.
/// `allowed_uids` are let in besides root and supd's own user.
pub async fn serve(
    listener: UnixListener,
    handle: Handle,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()>,
) {
    use futures_util::FutureExt;
    let own = nix::unistd::geteuid().as_raw();
    let mut allowed = allowed_uids;
    allowed.push(0);
    allowed.push(own);
    let allowed: Arc<[u32]> = allowed.into();
    let tally: Tally = Arc::default();
    let refusing = Refusing::default();
    let mut reserve = reserve_fd();
    // Whether the last accept failed for want of descriptors (logged once
    // a spell, not each time).
    let mut starved = false;
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        if reserve.is_none() {
            reserve = reserve_fd();
        }
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                starved = false;
                stream
            }
            Err(e) => {
                let errno = e.raw_os_error();
                if errno != Some(libc::EMFILE) && errno != Some(libc::ENFILE) {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
                let limit = open_file_limit();
                if !starved {
                    tracing::warn!(error = %e, limit, "out of file descriptors: answering from the reserve, then accepting more slowly");
                    starved = true;
                }
                // Give up the reserve: the client waiting first takes its
                // place, is told, and is closed.
                if reserve.take().is_some() {
                    if let Some(Ok((stream, _))) = listener.accept().now_or_never() {
                        refuse(
                            stream,
                            RpcError::new(
                                ErrorKind::Internal,
                                format!(
                                    "supd is out of file descriptors (its open-file limit is {limit}); try again, or raise supd's LimitNOFILE"
                                ),
                            ),
                            &refusing,
                        );
                        continue;
                    }
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; closing");
                continue;
            }
        };
        if !allowed.contains(&uid) {
            tracing::warn!(uid, "connection refused: uid not allowed");
            refuse(
                stream,
                RpcError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "uid {uid} may not control this supd (add it to allow_users in [supd])"
                    ),
                ),
                &refusing,
            );
            continue;
        }
        let privileged = uid == 0 || uid == own;
        let slot = match admit(&tally, uid, privileged, open_file_limit()) {
            Ok(slot) => slot,
            Err(message) => {
                tracing::debug!(uid, %message, "connection refused");
                refuse(
                    stream,
                    RpcError::new(ErrorKind::Internal, message),
                    &refusing,
                );
                continue;
            }
        };
        let handle = handle.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            if let Err(e) = connection(stream, handle, closing).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // Idle connections close now; streams end as their sources do (events
    // when the supervisor is gone). Whatever is still busy after a moment is cut.
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Refusals under way, in all and by uid ([`MAX_REFUSING`]).
#[derive(Debug, Default, Clone)]
struct Refusing(Arc<std::sync::Mutex<(usize, std::collections::HashMap<u32, usize>)>>);

/// A refusal's place in [`Refusing`], given back when dropped.
struct RefusingSlot(Refusing, u32);

impl Refusing {
    fn take(&self, uid: u32) -> Option<RefusingSlot> {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_uid) = &mut *guard;
        let mine = by_uid.entry(uid).or_insert(0);
        if *total >= MAX_REFUSING || *mine >= MAX_REFUSING_PER_USER {
            if *mine == 0 {
                by_uid.remove(&uid);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(RefusingSlot(self.clone(), uid))
    }
}

impl Drop for RefusingSlot {
    fn drop(&mut self) {
        let mut guard = self
            .0
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_uid) = &mut *guard;
        *total -= 1;
        if let Some(n) = by_uid.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                by_uid.remove(&self.1);
            }
        }
    }
}

/// Answers a refused connection with one error line, then closes it. The
/// client's request is read and dropped first (for at most a second), so
/// that a client that writes its request after the answer was sent does
/// not fail on a closed connection before it reads the answer. Only
/// [`MAX_REFUSING`] refusals wait so ([`MAX_REFUSING_PER_USER`] of one
/// uid); past that, the answer is written (it fits a fresh socket's
/// buffer) and the connection closed at once: a client that writes after
/// that gets EPIPE, but the answer is still there for it to read.
fn refuse(stream: UnixStream, error: RpcError, refusing: &Refusing) {
    let response = Response::err(Response::null_id(), error);
    let Ok(mut bytes) = serde_json::to_vec(&response) else {
        return;
    };
    bytes.push(b'\n');
    let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
    let Some(permit) = refusing.take(uid) else {
        let _ = stream.try_write(&bytes);
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// What follows an answer on the same connection.
enum Follow {
    /// Nothing: the next request.
    Nothing,
    /// `events`: a notification per state change until the daemon stops.
    Events(broadcast::Receiver<Event>),
    /// `wait`: one notification when the run ends (or the timeout passes).
    Wait {
        name: String,
        ticket: WaitTicket,
        timeout: Option<Duration>,
    },
    /// `logs` with `follow`: a `log` notification per new line.
    Logs {
        rx: broadcast::Receiver<OutputEvent>,
        only: Option<Stream>,
    },
    /// `run`: `output` notifications, then `run.exited` (or `run.timeout`);
    /// `stdin` notifications from the client go to the program.
    Run {
        started: RunStarted,
        timeout: Option<Duration>,
    },
}

/// What `dispatch` produced: the result as JSON text, or the whole answer.
enum Reply {
    Value(Box<RawValue>),
    Stream(Box<RawValue>, Follow),
    /// The whole answer line, written in place (`status`).
    Line(Vec<u8>),
}

/// An answer ready to go out.
enum Answer {
    /// Serialised as it is written.
    Message(Response),
    /// A whole line already, `\n` included.
    Line(Vec<u8>),
}

impl Answer {
    async fn write(&self, writer: &mut OwnedWriteHalf) -> io::Result<()> {
        match self {
            Answer::Message(response) => write_message(writer, response).await,
            Answer::Line(line) => {
                writer.write_all(line).await?;
                writer.flush().await
            }
        }
    }
}

/// The read side of a connection, read ahead while a request is served so
/// that a client hanging up is noticed (and its request abandoned) while
/// pipelined requests are kept for later.
struct ReadAhead {
    frames: FrameReader<BufReader<OwnedReadHalf>>,
    queued: VecDeque<Frame>,
    queued_bytes: usize,
    /// The client has closed its side (fully, or only for writing).
    eof: bool,
}

impl ReadAhead {
    /// The next request: a read-ahead one first. `None` at end of stream.
    async fn next(&mut self) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.queued.pop_front() {
            if let Frame::Line(line) = &frame {
                self.queued_bytes -= line.len();
            }
            return Ok(Some(frame));
        }
        if self.eof {
            return Ok(None);
        }
        let frame = self.frames.next().await?;
        self.eof = frame.is_none();
        Ok(frame)
    }

    /// Runs `work` to completion while reading ahead. Returns `None` when
    /// the client hung up completely meanwhile: the answer has no reader, so
    /// the work (a `wait`, say) is abandoned; what it set in motion goes on.
    /// A client that only shut down its writing side still gets its answer.
    async fn run_while<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let room = self.queued_bytes < MAX_LINE && self.queued.len() < 64;
            tokio::select! {
                out = &mut work => return Some(out),
                frame = self.frames.next(), if !self.eof && room => match frame {
                    Ok(Some(frame)) => {
                        if let Frame::Line(line) = &frame {
                            self.queued_bytes += line.len();
                        }
                        self.queued.push_back(frame);
                    }
                    Ok(None) => {
                        self.eof = true;
                        if hung_up(self.frames.get_ref().get_ref().as_ref()) {
                            return None;
                        }
                    }
                    Err(_) => return None,
                },
            }
        }
    }
}

/// Whether the peer closed the connection completely (POLLHUP), as opposed
/// to shutting down only its writing side (then it still reads answers).
fn hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor we own; a zero timeout
    // returns at once.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

async fn connection(
    stream: UnixStream,
    handle: Handle,
    mut closing: watch::Receiver<bool>,
) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut input = ReadAhead {
        frames: FrameReader::new(BufReader::new(reader), MAX_LINE),
        queued: VecDeque::new(),
        queued_bytes: 0,
        eof: false,
    };
    let mut first = true;
    loop {
        // Only the first request has a deadline: no timer is set for the
        // others.
        let next = async {
            if first {
                tokio::time::timeout(FIRST_REQUEST_TIMEOUT, input.next())
                    .await
                    .ok()
            } else {
                Some(input.next().await)
            }
        };
        let frame = tokio::select! {
            frame = next => match frame {
                Some(frame) => frame?,
                None => return Ok(()),
            },
            // The daemon is going away: an idle connection is closed.
            _ = closing.wait_for(|c| *c) => return Ok(()),
        };
        first = false;
        let line = match frame {
            None => return Ok(()),
            Some(Frame::TooLong) => {
                let error = RpcError::new(
                    ErrorKind::InvalidRequest,
                    format!("message longer than {MAX_LINE} bytes; it was discarded"),
                );
                write_message(&mut writer, &Response::err(Response::null_id(), error)).await?;
                continue;
            }
            Some(Frame::Line(line)) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = match std::str::from_utf8(&line) {
            Ok(text) => text,
            Err(e) => {
                let error = RpcError::new(ErrorKind::ParseError, format!("not UTF-8: {e}"));
                write_message(&mut writer, &Response::err(Response::null_id(), error)).await?;
                continue;
            }
        };
        if text
            .trim_start_matches([' ', '\t', '\r', '\n'])
            .starts_with('[')
        {
            match input
                .run_while(serve_batch(text, &handle, &mut writer))
                .await
            {
                None => return Ok(()),
                Some(result) => result?,
            }
            continue;
        }
        let follow = match input.run_while(answer(text, &handle)).await {
            None => return Ok(()),
            Some(None) => continue, // a notification: no answer
            Some(Some((answer, follow))) => {
                answer.write(&mut writer).await?;
                follow
            }
        };
        match follow {
            Follow::Nothing => {}
            Follow::Events(rx) => {
                return input
                    .run_while(stream_events(rx, &mut writer))
                    .await
                    .unwrap_or(Ok(()));
            }
            Follow::Wait {
                name,
                ticket,
                timeout,
            } => match input
                .run_while(finish_wait(name, ticket, timeout, &mut writer))
                .await
            {
                None => return Ok(()),
                Some(result) => result?,
            },
            Follow::Logs { rx, only } => {
                return input
                    .run_while(stream_logs(rx, only, &mut writer))
                    .await
                    .unwrap_or(Ok(()));
            }
            Follow::Run { started, timeout } => {
                return serve_run(started, timeout, &mut input, &mut writer, &handle).await;
            }
        }
    }
}

/// How long one notification may take to write before the client counts
/// as not reading and is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

async fn notify<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    method: &str,
    params: impl serde::Serialize,
) -> io::Result<()> {
    let n = Notification {
        jsonrpc: "2.0".into(),
        method: method.into(),
        params: serde_json::to_value(params).map_err(io::Error::other)?,
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write_message(writer, &n)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its notifications",
        )),
    }
}

/// Sends each event as an `event` notification until the supervisor is
/// gone, the client hangs up, or it falls [`crate::supervisor::EVENT_QUEUE`]
/// events behind (then it is dropped; the daemon never waits for it).
async fn stream_events(
    mut rx: broadcast::Receiver<Event>,
    writer: &mut OwnedWriteHalf,
) -> io::Result<()> {
    loop {
        match rx.recv().await {
            Ok(event) => notify(writer, "event", &event).await?,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "dropping an events subscriber that does not keep up"
                );
                return Ok(());
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends the one notification a `wait` promised: `wait.exited` with a
/// [`crate::protocol::WaitResult`], `wait.timeout`, or `wait.error`.
async fn finish_wait(
    name: String,
    ticket: WaitTicket,
    timeout: Option<Duration>,
    writer: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let rx = match ticket {
        WaitTicket::Done(result) => return notify(writer, "wait.exited", &result).await,
        WaitTicket::Pending(_, rx) => rx,
    };
    let limit = timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(result)) => notify(writer, "wait.exited", &result).await,
        Ok(Err(_)) => {
            let error = RpcError::new(
                ErrorKind::ShuttingDown,
                format!("{name}: supd went away before the run ended"),
            );
            notify(writer, "wait.error", &error).await
        }
        Err(_) => {
            let secs = limit.as_secs_f64();
            let error = RpcError::new(
                ErrorKind::Timeout,
                format!("{name}: still running after {secs}s (it keeps running)"),
            );
            notify(writer, "wait.timeout", &error).await
        }
    }
}

/// Sends each new line as a `log` notification, until the client hangs
/// up or supd exits. A follower that falls behind is told how many lines
/// it missed (`log.missed`) and goes on.
async fn stream_logs(
    mut rx: broadcast::Receiver<OutputEvent>,
    only: Option<Stream>,
    writer: &mut OwnedWriteHalf,
) -> io::Result<()> {
    loop {
        match rx.recv().await {
            Ok(OutputEvent::Line(line)) => {
                if only.is_none_or(|s| s == line.stream) {
                    notify(writer, "log", &line).await?;
                }
            }
            Ok(OutputEvent::Ended { .. }) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                notify(writer, "log.missed", json!({ "missed": missed })).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Stops a run whose client is gone or whose time is up, without waiting.
fn stop_run(handle: &Handle, name: &str) {
    let handle = handle.clone();
    let select = NamesParams {
        names: vec![name.to_string()],
        all: false,
    };
    tokio::spawn(async move {
        let _ = handle.stop(select, false).await;
    });
}

/// How many `stdin` chunks wait for the program to read them before
/// supd stops reading the client (the client then waits, not supd).
const STDIN_QUEUE: usize = 16;

/// While a run's stdin is full (the client is not read), how often supd
/// looks whether the client hung up.
const STALLED_HANGUP_CHECK: Duration = Duration::from_millis(200);

/// Streams a run: its output as `output` notifications, the client's
/// `stdin` notifications into its stdin, and at the end `run.exited` (or
/// `run.timeout` after stopping it) with how it ended. A client that hangs
/// up (POLLHUP, or a failed write) gets its run stopped; one that only
/// shuts down its writing side has closed the program's stdin. Forwarding
/// stdin never blocks the loop: when the program does not read it, the
/// client is no longer read, while the timeout, the output and a hang-up
/// are still served.
async fn serve_run(
    started: RunStarted,
    timeout: Option<Duration>,
    input: &mut ReadAhead,
    writer: &mut OwnedWriteHalf,
    handle: &Handle,
) -> io::Result<()> {
    let RunStarted {
        name,
        pid,
        output: mut rx,
        exit: mut exit_rx,
        stdin,
        mut guard,
    } = started;
    let mut stdin_tx = stdin.and_then(|fd| {
        let (tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok()?;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = chunks.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    // The program closed its stdin: the rest is discarded.
                    while chunks.recv().await.is_some() {}
                    return;
                }
            }
        });
        Some(tx)
    });
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = false;
    let mut ended = false;
    let mut result = None;
    // A chunk of stdin the program has no room for yet (and whether its
    // stdin closes after it). While one waits, the client is not read (it
    // waits, not supd), and a hang-up is looked for every so often instead.
    let mut stalled: Option<(Vec<u8>, bool)> = None;
    let mut hangup_check = tokio::time::interval(STALLED_HANGUP_CHECK);
    hangup_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome: io::Result<()> = async {
        while !(ended && result.is_some()) {
            if input.eof && input.queued.is_empty() && stalled.is_none() {
                // The client shut down its writing side (possibly while the
                // answer was on its way): that is the end of stdin.
                stdin_tx = None;
            }
            tokio::select! {
                ev = rx.recv(), if !ended => match ev {
                    Ok(OutputEvent::Line(line)) => {
                        let mut data = line.line;
                        if line.newline {
                            data.push('\n');
                        }
                        notify(writer, "output", json!({ "stream": line.stream, "data": data })).await?;
                    }
                    Ok(OutputEvent::Ended { pid: p }) => ended = p == pid,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        notify(writer, "output.missed", json!({ "missed": missed })).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => ended = true,
                },
                r = &mut exit_rx, if result.is_none() => match r {
                    Ok(r) => result = Some(r),
                    Err(_) => {
                        let error = RpcError::new(
                            ErrorKind::ShuttingDown,
                            format!("{name}: supd went away before the run ended"),
                        );
                        return notify(writer, "run.error", &error).await;
                    }
                },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if !timed_out && result.is_none() => {
                    timed_out = true;
                    stop_run(handle, &name);
                }
                permit = async {
                    match stdin_tx.clone() {
                        Some(tx) => tx.reserve_owned().await.ok(),
                        None => None,
                    }
                }, if stalled.is_some() => {
                    let (data, eof) = stalled.take().unwrap_or_default();
                    match permit {
                        Some(permit) => {
                            permit.send(data);
                            if eof {
                                stdin_tx = None;
                            }
                        }
                        // The program closed its stdin: the rest is discarded.
                        None => stdin_tx = None,
                    }
                }
                _ = hangup_check.tick(), if stalled.is_some() => {
                    if hung_up(input.frames.get_ref().get_ref().as_ref()) {
                        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "client hung up"));
                    }
                }
                frame = input.next(), if stalled.is_none() && (!input.eof || !input.queued.is_empty()) => match frame {
                    Ok(Some(Frame::Line(line))) => {
                        if let Some((data, eof)) = stdin_message(&line) {
                            match &stdin_tx {
                                Some(tx) if !data.is_empty() => match tx.try_send(data) {
                                    Ok(()) => {
                                        if eof {
                                            stdin_tx = None;
                                        }
                                    }
                                    Err(tokio::sync::mpsc::error::TrySendError::Full(data)) => {
                                        stalled = Some((data, eof));
                                    }
                                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                                        stdin_tx = None;
                                    }
                                },
                                _ => {
                                    if eof {
                                        stdin_tx = None;
                                    }
                                }
                            }
                        }
                    }
                    Ok(Some(Frame::TooLong)) => {}
                    Ok(None) => {
                        stdin_tx = None;
                        if hung_up(input.frames.get_ref().get_ref().as_ref()) {
                            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "client hung up"));
                        }
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        let method = if timed_out { "run.timeout" } else { "run.exited" };
        notify(writer, method, result.as_ref()).await
    }
    .await;
    if result.is_some() {
        guard.disarm();
    } else {
        tracing::info!(program = %name, "the client of a run went away; stopping the run");
    }
    // Dropped armed, the guard stops the run.
    drop(guard);
    outcome
}

/// Reads a `stdin` notification: `{"method": "stdin", "params": {"data":
/// TEXT, "eof": BOOL}}`. `None` for anything else (ignored).
fn stdin_message(line: &[u8]) -> Option<(Vec<u8>, bool)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    if v.get("method")?.as_str()? != "stdin" {
        return None;
    }
    let params = v.get("params")?;
    let data = params
        .get("data")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let eof = params.get("eof").and_then(Value::as_bool).unwrap_or(false);
    Some((data, eof))
}

/// A request's members as they were sent, read without building a tree.
/// A member that is present is `Some`, even when it is `null`: an `id` of
/// `null` makes a request, no `id` a notification.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The methods that stream notifications after their answer; they are
/// refused inside a batch (its answer is one array, with nothing after it).
fn is_stream(method: &str, params: Option<&Value>) -> bool {
    match method {
        "events" | "wait" | "run" => true,
        "logs" => params
            .and_then(|p| p.get("follow"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        _ => false,
    }
}

/// An error answer with no stream after it.
fn error_answer(
    id: Box<RawValue>,
    kind: ErrorKind,
    message: impl Into<String>,
) -> (Answer, Follow) {
    (
        Answer::Message(Response::err(id, RpcError::new(kind, message))),
        Follow::Nothing,
    )
}

/// Answers one line that is not a batch: `None` for a notification.
async fn answer(text: &str, handle: &Handle) -> Option<(Answer, Follow)> {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(request) => answer_request(request, handle, false).await,
        Err(e) => Some(error_answer(
            Response::null_id(),
            ErrorKind::ParseError,
            format!("not valid JSON: {e}"),
        )),
    }
}

/// Answers one request (a whole line, or an element of a batch): `None`
/// for a notification, a request without `id`, which is carried out when
/// it is valid and never answered, even when it is not (JSON-RPC 2.0 §4.1).
/// The answer's `id` is the request's, as the very text it was sent as.
async fn answer_request(
    request: &RawValue,
    handle: &Handle,
    in_batch: bool,
) -> Option<(Answer, Follow)> {
    let text = request.get();
    if !text.starts_with('{') {
        return Some(error_answer(
            Response::null_id(),
            ErrorKind::InvalidRequest,
            "a request must be a JSON object",
        ));
    }
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            // A duplicate member, say: whether it had an id is unknown.
            return Some(error_answer(
                Response::null_id(),
                ErrorKind::InvalidRequest,
                format!("not a JSON-RPC 2.0 request: {e}"),
            ));
        }
    };
    let Some(id) = envelope.id else {
        // A notification: carried out if valid, never answered.
        if let Ok((method, params)) = request_parts(&envelope, in_batch) {
            let _ = dispatch(&method, params, RawValue::NULL, handle).await;
        }
        return None;
    };
    // Only a string, a number or null may be echoed (JSON-RPC 2.0 §5).
    let scalar = matches!(
        id.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9' | b'n')
    );
    let reply_id = if scalar {
        id.to_owned()
    } else {
        Response::null_id()
    };
    if !scalar {
        return Some(error_answer(
            reply_id,
            ErrorKind::InvalidRequest,
            "\"id\" must be a number, a string or null",
        ));
    }
    let (method, params) = match request_parts(&envelope, in_batch) {
        Ok(parts) => parts,
        Err(error) => {
            return Some((
                Answer::Message(Response::err(reply_id, error)),
                Follow::Nothing,
            ));
        }
    };
    Some(match dispatch(&method, params, &reply_id, handle).await {
        Ok(Reply::Value(v)) => (Answer::Message(Response::ok(reply_id, v)), Follow::Nothing),
        Ok(Reply::Stream(v, follow)) => (Answer::Message(Response::ok(reply_id, v)), follow),
        Ok(Reply::Line(line)) => (Answer::Line(line), Follow::Nothing),
        Err(e) => (Answer::Message(Response::err(reply_id, e)), Follow::Nothing),
    })
}

/// A request's method and params, once its `jsonrpc`, `method` and
/// `params` members are checked; a stream is refused inside a batch.
fn request_parts(
    envelope: &Envelope<'_>,
    in_batch: bool,
) -> Result<(String, Option<Value>), RpcError> {
    let invalid = |message: &str| RpcError::new(ErrorKind::InvalidRequest, message);
    let jsonrpc = envelope
        .jsonrpc
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    if jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid("a request must have \"jsonrpc\": \"2.0\""));
    }
    let Some(method) = envelope
        .method
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    else {
        return Err(invalid("a request must have a \"method\" string"));
    };
    let params = match envelope.params {
        None => None,
        Some(p) if p.get().starts_with('{') => Some(
            serde_json::from_str::<Value>(p.get())
                .map_err(|e| RpcError::new(ErrorKind::InvalidParams, e.to_string()))?,
        ),
        Some(_) => {
            return Err(RpcError::new(
                ErrorKind::InvalidParams,
                "\"params\" must be an object",
            ));
        }
    };
    if in_batch && is_stream(&method, params.as_ref()) {
        return Err(invalid(&format!(
            "{method} streams notifications after its answer, which a batch cannot carry: send it as a request of its own"
        )));
    }
    Ok((method, params))
}

/// Answers a batch (a line that is a JSON array): one array of answers, in
/// the order of the requests, written as each is served; nothing at all
/// when every element is a notification; a single `invalid_request` (not
/// an array) for an empty batch. The elements are served one after the
/// other; streams among them are refused ([`is_stream`]).
async fn serve_batch(text: &str, handle: &Handle, writer: &mut OwnedWriteHalf) -> io::Result<()> {
    let elements: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(elements) => elements,
        Err(e) => {
            let (answer, _) = error_answer(
                Response::null_id(),
                ErrorKind::ParseError,
                format!("not valid JSON: {e}"),
            );
            return answer.write(writer).await;
        }
    };
    if elements.is_empty() {
        let (answer, _) = error_answer(
            Response::null_id(),
            ErrorKind::InvalidRequest,
            "an empty batch: a batch holds at least one request",
        );
        return answer.write(writer).await;
    }
    let mut opened = false;
    for element in elements {
        let Some((answer, _)) = answer_request(element, handle, true).await else {
            continue;
        };
        let mut bytes = vec![if opened { b',' } else { b'[' }];
        opened = true;
        match answer {
            Answer::Message(response) => {
                serde_json::to_writer(&mut bytes, &response).map_err(io::Error::other)?;
            }
            Answer::Line(line) => {
                bytes.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(&line));
            }
        }
        writer.write_all(&bytes).await?;
    }
    if opened {
        writer.write_all(b"]\n").await?;
        writer.flush().await?;
    }
    Ok(())
}

/// `logs` params.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    name: String,
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    stream: Option<String>,
}

/// `run` params.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunParams {
    command: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

/// A `timeout` param in seconds: absent for none; NaN, negative or huge
/// ones are `invalid_params`.
fn timeout_param(method: &str, secs: Option<f64>) -> Result<Option<Duration>, RpcError> {
    match secs {
        None => Ok(None),
        Some(t) if t.is_finite() && (0.0..1e9).contains(&t) => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(RpcError::new(
            ErrorKind::InvalidParams,
            format!("invalid params for {method}: timeout {t} must be seconds from 0 up"),
        )),
    }
}

fn params<T: DeserializeOwned + Default>(
    method: &str,
    params: Option<Value>,
) -> Result<T, RpcError> {
    match params {
        None => Ok(T::default()),
        Some(p) => required(method, Some(p)),
    }
}

/// The params of a verb over programs: names, or `all`, not both.
fn names(method: &str, p: Option<Value>) -> Result<NamesParams, RpcError> {
    let sel: NamesParams = params(method, p)?;
    not_both(method, &sel.names, sel.all)?;
    Ok(sel)
}

/// `names` together with `all` is ambiguous: `invalid_params`.
fn not_both(method: &str, names: &[String], all: bool) -> Result<(), RpcError> {
    if all && !names.is_empty() {
        return Err(RpcError::new(
            ErrorKind::InvalidParams,
            format!("invalid params for {method}: give program names or \"all\": true, not both"),
        ));
    }
    Ok(())
}

fn required<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, RpcError> {
    serde_json::from_value(params.unwrap_or_else(|| json!({}))).map_err(|e| {
        RpcError::new(
            ErrorKind::InvalidParams,
            format!("invalid params for {method}: {e}"),
        )
    })
}

/// Serialises a result straight to JSON text.
fn to_value<T: serde::Serialize>(v: T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(&v)
        .map_err(|e| RpcError::new(ErrorKind::Internal, e.to_string()))
}

fn programs(outcomes: Vec<crate::protocol::Outcome>) -> Result<Box<RawValue>, RpcError> {
    to_value(ProgramsResult { programs: outcomes })
}

/// Runs `method`. `id` is the answer's, for a result written in place.
async fn dispatch(
    method: &str,
    p: Option<Value>,
    id: &RawValue,
    handle: &Handle,
) -> Result<Reply, RpcError> {
    match method {
        "status" => {
            let sel = names(method, p)?;
            let names = if sel.all { Vec::new() } else { sel.names };
            // The rows are written straight after the answer's head, in
            // the buffer that goes to the socket.
            let mut line = Vec::new();
            Response::write_head(&mut line, id);
            let mut line = handle.status_json(names, line).await?;
            line.extend_from_slice(Response::TAIL);
            Ok(Reply::Line(line))
        }
        "events" => {
            let _: NamesParams = params(method, p)?;
            let rx = handle.subscribe().await?;
            Ok(Reply::Stream(
                to_value(json!({ "subscribed": true }))?,
                Follow::Events(rx),
            ))
        }
        "wait" => {
            let wp: WaitParams = required(method, p)?;
            let timeout = timeout_param("wait", wp.timeout)?;
            let ticket = handle.wait(wp.name.clone()).await?;
            let (pid, running) = match &ticket {
                WaitTicket::Done(r) => (r.pid, false),
                WaitTicket::Pending(pid, _) => (*pid, true),
            };
            let answer = to_value(json!({ "name": wp.name, "running": running, "pid": pid }))?;
            Ok(Reply::Stream(
                answer,
                Follow::Wait {
                    name: wp.name,
                    ticket,
                    timeout,
                },
            ))
        }
        "logs" => {
            let lp: LogsParams = required(method, p)?;
            let only = match lp.stream.as_deref() {
                None | Some("both") => None,
                Some("stdout") => Some(Stream::Stdout),
                Some("stderr") => Some(Stream::Stderr),
                Some(other) => {
                    return Err(RpcError::new(
                        ErrorKind::InvalidParams,
                        format!(
                            "invalid params for logs: stream {other:?} must be \"stdout\", \"stderr\" or \"both\""
                        ),
                    ));
                }
            };
            let out = handle.logs(lp.name).await?;
            // Subscribe before reading the tail, so no line falls between.
            let rx = lp.follow.then(|| out.subscribe());
            let lines = out.tail(lp.lines.unwrap_or(10), only);
            let answer = to_value(json!({ "lines": lines }))?;
            Ok(match rx {
                Some(rx) => Reply::Stream(answer, Follow::Logs { rx, only }),
                None => Reply::Value(answer),
            })
        }
        "run" => {
            let rp: RunParams = required(method, p)?;
            let timeout = timeout_param("run", rp.timeout)?;
            let started = handle
                .run(RunSpec {
                    command: rp.command,
                    name: rp.name,
                    env: rp.env,
                    cwd: rp.cwd,
                    pool: rp.pool,
                })
                .await?;
            let answer = to_value(json!({ "name": started.name, "pid": started.pid }))?;
            Ok(Reply::Stream(answer, Follow::Run { started, timeout }))
        }
        _ => dispatch_value(method, p, handle).await.map(Reply::Value),
    }
}

async fn dispatch_value(
    method: &str,
    p: Option<Value>,
    handle: &Handle,
) -> Result<Box<RawValue>, RpcError> {
    match method {
        "version" => to_value(VersionResult {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
        }),
        "start" => programs(handle.start(names(method, p)?).await?),
        "stop" => programs(handle.stop(names(method, p)?, false).await?),
        "kill" => programs(handle.stop(names(method, p)?, true).await?),
        "restart" => programs(handle.restart(names(method, p)?).await?),
        "remove" => programs(handle.remove(names(method, p)?).await?),
        "signal" => {
            let sp: SignalParams = required(method, p)?;
            not_both(method, &sp.names, sp.all)?;
            let sig = parse_signal_value(&sp.signal)
                .map_err(|e| RpcError::new(ErrorKind::InvalidParams, e.to_string()))?;
            let sel = NamesParams {
                names: sp.names,
                all: sp.all,
            };
            programs(handle.signal(sel, sig, sp.group).await?)
        }
        "reload" => {
            let _: NamesParams = params(method, p)?;
            to_value(handle.reload().await?)
        }
        "scale" => {
            let sp: ScaleParams = required(method, p)?;
            programs(handle.scale(sp.name, sp.instances).await?)
        }
        "reopen_logs" => {
            let _: NamesParams = params(method, p)?;
            let n = handle.reopen_logs().await;
            to_value(json!({ "reopened": n }))
        }
        "shutdown" => {
            handle.shutdown();
            to_value(json!({ "shutting_down": true }))
        }
        other => Err(RpcError::new(
            ErrorKind::MethodNotFound,
            format!(
                "unknown method \"{other}\" (methods: version, status, start, stop, restart, kill, signal, wait, remove, scale, events, reload, logs, reopen_logs, run, shutdown)"
            ),
        )),
    }
}
