//! The control socket: creating it safely, checking who connects, and one
//! task per connection that reads JSON-RPC lines and answers them.
//!
//! - The socket is bound under umask 0177, so it never exists with wider
//!   permissions than 0600, even for a moment.
//! - Whether another `supd` owns the path is decided under an exclusive
//!   `flock` on `PATH.lock`: held, the start is refused; free, a stale socket
//!   file is replaced. A path that is not a socket is never unlinked.
//! - Each connection's peer credentials (`SO_PEERCRED`) are checked before
//!   anything is read: root, supd's own user and `allow_users` only.
//! - Caps: [`MAX_LINE`] a message, [`MAX_CONNECTIONS`] at once,
//!   [`FIRST_REQUEST_TIMEOUT`] of silence before the first request. `accept`
//!   failing with EMFILE backs off instead of spinning.

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
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use crate::logs::{OutputEvent, Stream};
use crate::protocol::framing::{Frame, FrameReader, write_message};
use crate::protocol::{
    ErrorKind, Event, MAX_LINE, NamesParams, Notification, PROTOCOL_VERSION, ProgramsResult,
    Response, RpcError, ScaleParams, SignalParams, VersionResult, WaitParams,
};
use crate::signals::parse_signal_value;
use crate::supervisor::{Handle, RunSpec, RunStarted, WaitTicket};

/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 512;

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
    /// Creates the socket at `path` (and its folder, mode 0755, if missing).
    ///
    /// # Errors
    /// [`BindError::InUse`] when a live supd holds it;
    /// [`BindError::NotASocket`] when a non-socket file is in the way;
    /// [`BindError::Io`] otherwise.
    pub fn bind(path: &Path) -> Result<ControlSocket, BindError> {
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
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
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

/// Serves connections on `listener` until `shutdown` completes.
/// `allowed_uids` are let in besides root and supd's own user.
pub async fn serve(
    listener: UnixListener,
    handle: Handle,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()>,
) {
    let mut allowed = allowed_uids;
    allowed.push(0);
    allowed.push(nix::unistd::geteuid().as_raw());
    let allowed: Arc<[u32]> = allowed.into();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                let errno = e.raw_os_error();
                if errno == Some(libc::EMFILE) || errno == Some(libc::ENFILE) {
                    tracing::warn!(error = %e, "out of file descriptors; pausing accept for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::warn!(error = %e, "accept failed");
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
            );
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(
                stream,
                RpcError::new(
                    ErrorKind::Internal,
                    format!("too many connections (at most {MAX_CONNECTIONS}); try again"),
                ),
            );
            continue;
        };
        let handle = handle.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            if let Err(e) = connection(stream, handle, closing).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
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

/// Answers a refused connection with one error line, then closes it. The
/// client's request is read and dropped first (for at most a second), so
/// the close is an orderly end of stream rather than a reset that could
/// discard the answer. A short-lived task, not counted against the cap.
fn refuse(stream: UnixStream, error: RpcError) {
    let response = Response::err(Response::null_id(), error);
    let Ok(mut bytes) = serde_json::to_vec(&response) else {
        return;
    };
    bytes.push(b'\n');
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

/// Streams a run: its output as `output` notifications, the client's
/// `stdin` notifications into its stdin, and at the end `run.exited` (or
/// `run.timeout` after stopping it) with how it ended. A client that hangs
/// up (POLLHUP, or a failed write) gets its run stopped; one that only
/// shuts down its writing side has closed the program's stdin.
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
    let outcome: io::Result<()> = async {
        while !(ended && result.is_some()) {
            if input.eof && input.queued.is_empty() {
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
                frame = input.next(), if !input.eof || !input.queued.is_empty() => match frame {
                    Ok(Some(Frame::Line(line))) => {
                        if let Some((data, eof)) = stdin_message(&line) {
                            if let Some(tx) = &stdin_tx {
                                if !data.is_empty() {
                                    let _ = tx.send(data).await;
                                }
                            }
                            if eof {
                                stdin_tx = None;
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
