//! Captured output: each program's stdout and stderr, drained from pipes
//! without ever blocking the program, into log files (rotated by size),
//! journald, an in-memory ring (`logs -n`) and a broadcast channel
//! (`logs -f`, `run`).
//!
//! Ownership. The supervisor keeps one [`ProgramOutput`] per program name,
//! behind an `Arc`, for as long as supd runs (so followers keep following
//! across restarts). Each run of the program gets one drain task per pipe
//! ([`drain`]), which holds a clone of that `Arc`. The ring, the open log
//! files and the run markers are small leaf data behind one
//! `std::sync::Mutex`, taken only for the length of a synchronous append
//! and never held across an `.await` (STYLE.md habit 3, mini-redis
//! `db.rs`). Routing every line through the supervisor actor instead would
//! put a `yes` flood on the same queue as `status` and make every other
//! request wait behind it; with the lock, the actor only ever touches this
//! data at spawn, exit, `logs` and `reopen-logs`. The drain tasks and file
//! followers run on a thread of their own ([`spawn`]), so a flood keeps
//! that thread busy and not the one that supervises and answers.
//!
//! Speed. A read takes what the pipe holds (64 KiB; a pipe found full is
//! grown to `FLOOD_PIPE_BYTES` and read that much at a time), writes the
//! whole lines in it with one `write`, and keeps the buffer itself for the
//! ring, which cuts it into lines only when someone reads the ring.
//!
//! Never blocking. The pipes are non-blocking and registered with tokio;
//! the drain reads as fast as data comes and appends with plain `write`
//! calls to regular files. A write that fails (ENOSPC, EIO, a missing
//! folder) drops the line, adds its size to `dropped_bytes`, and closes
//! the file: the next line opens it again (a new file if it was deleted),
//! so writing resumes by itself once space returns. The program is never
//! made to wait for the disk.
//!
//! Programs that write their own file. A `daemon = false` program must
//! survive supd's death, so its stdout is not a pipe (whose only reader
//! would die with supd and leave it to SIGPIPE) but its log file itself,
//! opened for appending ([`ProgramOutput::files_for_child`]). supd follows
//! that file with inotify (`follow_files`, no polling; one instance for all
//! of them, [`crate::watch`]) to feed the ring and
//! followers, follows it again after adopting the program, and rotates it
//! by copy and truncate. No timestamps or drop counting there: the file
//! holds what the program wrote, between run markers.
//!
//! A disk that hangs (rather than fails) stalls the output thread inside
//! `write`, and the supervisor only where it then takes that program's
//! lock (its next spawn or exit).
//!
//! Bounds. A line is cut into chunks of at most [`MAX_LINE_BYTES`]; the ring
//! keeps the last [`RING_LINES`] lines or [`RING_BYTES`] bytes, whichever is
//! smaller; a follower that falls [`FOLLOW_QUEUE`] lines behind is told
//! how many it missed. Bytes that are not UTF-8 go to the files as they
//! are, and into JSON as U+FFFD.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::{OutputConfig, OutputMode};

/// The longest line kept whole; longer ones are cut into pieces this long.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines the ring keeps at most.
pub const RING_LINES: usize = 1000;
/// Bytes the ring keeps at most.
pub const RING_BYTES: usize = 256 * 1024;
/// Bytes asked for in one read of an output pipe: what a pipe holds by
/// default (pipe(7)).
const READ_BYTES: usize = 64 * 1024;
/// The size an output pipe is grown to once a read finds it full
/// (`F_SETPIPE_SZ`, fcntl(2); at most `/proc/sys/fs/pipe-max-size`).
const FLOOD_PIPE_BYTES: usize = 1024 * 1024;
/// Lines queued for a follower before it starts missing some.
pub const FOLLOW_QUEUE: usize = 4096;

/// Which of a program's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One line of output, as `logs` and `log` notifications carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// The program.
    pub name: String,
    /// `stdout` or `stderr`.
    pub stream: Stream,
    /// The text, without its newline; invalid UTF-8 as U+FFFD.
    pub line: String,
    /// When supd read it (RFC 3339); `null` for a line read back from a
    /// file written before this supd started.
    pub time: Option<String>,
    /// Whether the program ended it with a newline (false for a last
    /// line without one, or a piece of an over-long line).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub newline: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// What followers receive.
#[derive(Debug, Clone)]
pub enum OutputEvent {
    /// A line.
    Line(LogLine),
    /// A run ended: its process exited and its pipes reached end of file,
    /// so every line it wrote came before this.
    Ended {
        /// The run's process.
        pid: u32,
    },
}

/// One log file: where it is, its open descriptor (if any) and its size.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// Where the file's lines from before this supd (or before this
    /// follower) end: lines past it are in the ring too. `None` until the
    /// file is first opened or followed.
    older_end: Option<u64>,
    /// For a file the program writes itself: its inode and how far supd
    /// has read it, so the next run's follower picks up where the last
    /// one stopped.
    followed_to: Option<(u64, u64)>,
}

impl LogFile {
    fn new(path: PathBuf) -> Self {
        LogFile {
            path,
            file: None,
            size: 0,
            older_end: None,
            followed_to: None,
        }
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .custom_flags(libc::O_CLOEXEC)
                .open(&self.path)?;
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.older_end.get_or_insert(self.size);
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    /// Renames `path` -> `.1` -> `.2` ... (the oldest dropped), then
    /// starts a new file.
    fn rotate(&mut self, backups: u32) {
        self.file = None;
        if backups == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let numbered = |n: u32| {
                let mut p = self.path.as_os_str().to_owned();
                p.push(format!(".{n}"));
                PathBuf::from(p)
            };
            let _ = std::fs::remove_file(numbered(backups));
            for n in (1..backups).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            let _ = std::fs::rename(&self.path, numbered(1));
        }
        self.size = 0;
        self.older_end = Some(0);
    }

    /// Appends `bytes` (one line with its newline), rotating first when it
    /// would pass `max`. On failure the file is closed (to be opened again
    /// by the next write) and the error returned.
    fn append(&mut self, bytes: &[u8], max: u64, backups: u32) -> io::Result<()> {
        self.open()?;
        if self.size > 0 && self.size + bytes.len() as u64 > max {
            self.rotate(backups);
            self.open()?;
        }
        let file = self.file.as_mut().expect("open");
        match file.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }
}

/// The ring of recent lines.
///
/// Lines from the fast path ([`ProgramOutput::plain_chunk`]) are kept as
/// the bytes they came in (`raw`), and cut into [`LogLine`]s only when the
/// ring is read or a line comes the slow way: a flood of short lines would
/// otherwise cost three allocations a line, most of them for lines the
/// next read pushes out again.
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// Lines pushed out since supd started (the ring no longer holds all).
    evicted: bool,
    /// Newer than every entry of `lines`, oldest first.
    raw: VecDeque<RawLines>,
    /// Lines and bytes (newlines included) in `raw`.
    raw_lines: usize,
    raw_bytes: usize,
}

/// Whole lines, each ending with its newline, read at `time`.
#[derive(Debug)]
struct RawLines {
    stream: Stream,
    time: SystemTime,
    bytes: Vec<u8>,
    lines: usize,
}

impl Ring {
    /// Adds one line. `name` is the program's (for lines still raw).
    fn push(&mut self, name: &str, line: LogLine) {
        self.settle(name);
        self.push_line(line);
    }

    fn push_line(&mut self, line: LogLine) {
        self.bytes += line.line.len();
        self.lines.push_back(line);
        while self.lines.len() > RING_LINES || self.bytes > RING_BYTES {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.line.len();
                    self.evicted = true;
                }
                None => break,
            }
        }
    }

    /// Adds `bytes`: `lines` whole lines, each ending with a newline, none
    /// longer than [`MAX_LINE_BYTES`].
    fn push_raw(&mut self, stream: Stream, time: SystemTime, bytes: Vec<u8>, lines: usize) {
        self.raw_lines += lines;
        self.raw_bytes += bytes.len();
        self.raw.push_back(RawLines {
            stream,
            time,
            bytes,
            lines,
        });
        // Older raw pieces the newer ones already fill the ring without.
        while let Some(front) = self.raw.front() {
            let rest_lines = self.raw_lines - front.lines;
            let rest_bytes = self.raw_bytes - front.bytes.len();
            if self.raw.len() > 1 && (rest_lines >= RING_LINES || rest_bytes >= RING_BYTES) {
                self.raw_lines = rest_lines;
                self.raw_bytes = rest_bytes;
                self.raw.pop_front();
                self.evicted = true;
            } else {
                break;
            }
        }
        if (self.raw_lines >= RING_LINES || self.raw_bytes >= RING_BYTES) && !self.lines.is_empty()
        {
            self.lines.clear();
            self.bytes = 0;
            self.evicted = true;
        }
    }

    /// Cuts the raw pieces into lines.
    fn settle(&mut self, name: &str) {
        while let Some(raw) = self.raw.pop_front() {
            let time = crate::supervisor::rfc3339(raw.time);
            // Only the lines the ring can keep.
            let kept = &raw.bytes[ring_tail(&raw.bytes)..];
            let body = kept.strip_suffix(b"\n").unwrap_or(kept);
            for line in body.split(|&b| b == b'\n') {
                self.push_line(LogLine {
                    name: name.to_string(),
                    stream: raw.stream,
                    line: String::from_utf8_lossy(line).into_owned(),
                    time: Some(time.clone()),
                    newline: true,
                });
            }
        }
        self.raw_lines = 0;
        self.raw_bytes = 0;
    }
}

#[derive(Debug)]
struct Inner {
    cfg: OutputConfig,
    /// `[stdout file, stderr file]`; one shared file with `redirect_stderr`
    /// (index 0), none when output is not logged.
    files: [Option<LogFile>; 2],
    ring: Ring,
    /// The current run: its number, its pid, pipes still open, and its
    /// end marker once its exit is known.
    run: u64,
    run_pid: u32,
    open_pipes: u8,
    pending_end: Option<String>,
    journal: Option<std::os::unix::net::UnixDatagram>,
    /// The program writes its log file(s) itself (`daemon = false`): supd
    /// only follows them, and rotates them by copy, then truncate.
    direct: bool,
    /// The task following those files.
    follower: Option<tokio::task::AbortHandle>,
}

/// Everything supd keeps of one program's output. See the module's doc.
#[derive(Debug)]
pub struct ProgramOutput {
    name: String,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Made on the first `subscribe`: a channel holds [`FOLLOW_QUEUE`]
    /// slots from the start, too much to keep for every program nobody
    /// follows.
    tx: std::sync::OnceLock<broadcast::Sender<OutputEvent>>,
    dropped: AtomicU64,
}

/// The log files a program writes itself, with their streams.
fn direct_paths(inner: &Inner) -> Vec<(Stream, PathBuf)> {
    inner
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let stream = if i == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            f.as_ref().map(|f| (stream, f.path.clone()))
        })
        .collect()
}

fn now() -> String {
    crate::supervisor::rfc3339(SystemTime::now())
}

impl ProgramOutput {
    /// The output of program `name`, logged into `dir` as `cfg` says.
    pub fn new(name: &str, dir: &Path, cfg: &OutputConfig, direct: bool) -> Arc<ProgramOutput> {
        let tx = std::sync::OnceLock::new();
        let out = ProgramOutput {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                cfg: cfg.clone(),
                files: [None, None],
                ring: Ring::default(),
                run: 0,
                run_pid: 0,
                open_pipes: 0,
                pending_end: None,
                journal: None,
                direct: false,
                follower: None,
            }),
            tx,
            dropped: AtomicU64::new(0),
        };
        out.configure(cfg, direct);
        Arc::new(out)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave it half-updated in a way
        // that matters more than losing the output.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new configuration (a reload); files are opened again.
    /// `direct`: the program writes its log files itself (see
    /// [`ProgramOutput::files_for_child`]).
    pub fn configure(&self, cfg: &OutputConfig, direct: bool) {
        let mut inner = self.lock();
        let direct = direct && cfg.mode == OutputMode::Log;
        let fresh = inner.files.iter().all(Option::is_none) && inner.run == 0;
        if inner.cfg == *cfg && inner.direct == direct && !fresh {
            return;
        }
        inner.cfg = cfg.clone();
        inner.direct = direct;
        let file = |suffix: &str| {
            Some(LogFile::new(
                self.dir.join(format!("{}{suffix}", self.name)),
            ))
        };
        inner.files = match (cfg.mode, cfg.redirect_stderr) {
            _ if !cfg.files => [None, None],
            (OutputMode::Log, false) => [file(".out.log"), file(".err.log")],
            (OutputMode::Log, true) => [file(".log"), None],
            _ => [None, None],
        };
        inner.journal = None;
    }

    /// Bytes of output dropped because a write failed.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A receiver of every line (and run end) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<OutputEvent> {
        self.tx
            .get_or_init(|| broadcast::channel(FOLLOW_QUEUE).0)
            .subscribe()
    }

    /// A followed file at `path` starts again from empty (truncated by an
    /// outside copy-truncate, or by supd's own rotation): nothing older in
    /// it is left to read back.
    fn file_restarted(&self, path: &Path) {
        for f in self.lock().files.iter_mut().flatten() {
            if f.path == path {
                f.older_end = Some(0);
            }
        }
    }

    /// Sends to the followers, if anyone ever followed.
    fn publish(&self, event: OutputEvent) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(event);
        }
    }

    /// How many follow now.
    fn followers(&self) -> usize {
        self.tx.get().map_or(0, broadcast::Sender::receiver_count)
    }

    /// Closes every log file; each is opened again (created if it was
    /// moved away) at its next line.
    pub fn reopen(&self) {
        let mut inner = self.lock();
        if inner.direct {
            // The program holds its own descriptor; nothing to reopen.
            return;
        }
        for f in inner.files.iter_mut().flatten() {
            f.file = None;
            // A new file (if it was moved away) holds nothing older.
            f.older_end = None;
        }
    }

    /// A new run began as `pid` with `pipes` pipes to drain: writes the
    /// end marker of the last run if still pending, then this run's start
    /// marker. Returns the run's number for [`drain`].
    pub fn run_started(&self, pid: u32, pipes: u8) -> u64 {
        let mut inner = self.lock();
        if let Some(end) = inner.pending_end.take() {
            self.marker(&mut inner, &end);
        }
        inner.run += 1;
        inner.run_pid = pid;
        inner.open_pipes = pipes;
        if !inner.direct {
            // (A program writing its own file wrote this before its exec.)
            self.marker(&mut inner, &format!("--- supd: started pid {pid} ---"));
        }
        inner.run
    }

    /// The current run's process exited (`returncode`: the code or -N).
    /// Its end marker is written once its pipes are drained too.
    pub fn run_exited(&self, pid: u32, returncode: Option<i32>) {
        let mut inner = self.lock();
        if inner.run_pid != pid {
            return;
        }
        let rc = returncode.map_or_else(|| "unknown".to_string(), |rc| rc.to_string());
        let end = format!("--- supd: exited pid {pid} returncode {rc} ---");
        if inner.open_pipes == 0 {
            self.marker(&mut inner, &end);
            self.publish(OutputEvent::Ended { pid });
        } else {
            inner.pending_end = Some(end);
        }
    }

    /// A pipe of run `run` reached end of file.
    fn pipe_closed(&self, run: u64) {
        let mut inner = self.lock();
        if inner.run != run || inner.open_pipes == 0 {
            return;
        }
        inner.open_pipes -= 1;
        if inner.open_pipes == 0 {
            if let Some(end) = inner.pending_end.take() {
                self.marker(&mut inner, &end);
                self.publish(OutputEvent::Ended { pid: inner.run_pid });
            }
        }
    }

    /// Writes a marker line into each log file (not into the ring).
    fn marker(&self, inner: &mut Inner, text: &str) {
        if inner.cfg.mode != OutputMode::Log {
            return;
        }
        let mut line = Vec::with_capacity(text.len() + 40);
        if inner.cfg.timestamps {
            line.extend_from_slice(now().as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        let (max, backups) = (inner.cfg.max_bytes, inner.cfg.backups);
        let direct = inner.direct;
        for f in inner.files.iter_mut().flatten() {
            let written = if direct {
                // The program appends to this file too: a fresh append,
                // with no size bookkeeping (the follower rotates).
                open_append(&f.path).and_then(|mut file| file.write_all(&line))
            } else {
                f.append(&line, max, backups)
            };
            if written.is_err() {
                self.dropped.fetch_add(line.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Takes the lines (without their newlines; `true` when one ended it)
    /// read from `stream` in one chunk: one lock, one timestamp, and one
    /// `write` a file for the whole batch.
    fn lines(&self, stream: Stream, batch: &[(&[u8], bool)]) {
        self.take_lines(stream, batch, true);
    }

    /// As [`ProgramOutput::lines`]; `to_files` false for lines read back
    /// from a file the program writes itself.
    fn take_lines(&self, stream: Stream, batch: &[(&[u8], bool)], to_files: bool) {
        if batch.is_empty() {
            return;
        }
        let time = now();
        // Without followers only the last lines can end up in the ring:
        // the others go to the file and nowhere else.
        let followed = self.followers() > 0;
        let first = if followed {
            0
        } else {
            batch.len().saturating_sub(RING_LINES)
        };
        let entries: Vec<LogLine> = batch[first..]
            .iter()
            .map(|(bytes, newline)| LogLine {
                name: self.name.clone(),
                stream,
                line: String::from_utf8_lossy(bytes).into_owned(),
                time: Some(time.clone()),
                newline: *newline,
            })
            .collect();
        let mut inner = self.lock();
        let inner = &mut *inner;
        match inner.cfg.mode {
            OutputMode::Log if !to_files => {}
            OutputMode::Log => {
                let (max, backups, stamp) =
                    (inner.cfg.max_bytes, inner.cfg.backups, inner.cfg.timestamps);
                let idx = if inner.files[1].is_some() {
                    stream.index()
                } else {
                    0
                };
                if let Some(f) = inner.files[idx].as_mut() {
                    let mut buf = Vec::with_capacity(64 * 1024);
                    for (bytes, _) in batch {
                        let len = bytes.len() + 1 + if stamp { time.len() + 1 } else { 0 };
                        if !buf.is_empty() && f.size + (buf.len() + len) as u64 > max {
                            self.flush(f, &buf, max, backups);
                            buf.clear();
                        }
                        if stamp {
                            buf.extend_from_slice(time.as_bytes());
                            buf.push(b' ');
                        }
                        buf.extend_from_slice(bytes);
                        buf.push(b'\n');
                    }
                    self.flush(f, &buf, max, backups);
                }
            }
            OutputMode::Journal => {
                for (bytes, _) in batch {
                    if !journal_send(&mut inner.journal, &self.name, stream, bytes) {
                        self.dropped
                            .fetch_add(bytes.len() as u64 + 1, Ordering::Relaxed);
                    }
                }
            }
            OutputMode::Null => {}
        }
        if followed {
            for entry in &entries {
                inner.ring.push(&self.name, entry.clone());
            }
            for entry in entries {
                self.publish(OutputEvent::Line(entry));
            }
        } else {
            for entry in entries {
                inner.ring.push(&self.name, entry);
            }
        }
    }

    /// The fast path for a flood of plain lines: when the output goes to a
    /// log file without timestamps, nobody follows it and no rotation is
    /// due, `body` (whole lines, each with its newline, none longer than
    /// [`MAX_LINE_BYTES`]) is written as it came, in one write, and kept
    /// for the ring as it is (cut into lines only when the ring is read).
    /// Gives `body` back, having done nothing, when the path does not
    /// apply: then the caller goes line by line.
    fn plain_chunk(&self, stream: Stream, mut body: Vec<u8>) -> Result<(), Vec<u8>> {
        if !plain_lines(&body) || self.followers() > 0 {
            return Err(body);
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.cfg.mode != OutputMode::Log || inner.cfg.timestamps {
            return Err(body);
        }
        let (max, backups) = (inner.cfg.max_bytes, inner.cfg.backups);
        let idx = if inner.files[1].is_some() {
            stream.index()
        } else {
            0
        };
        let Some(f) = inner.files[idx].as_mut() else {
            return Err(body);
        };
        if f.size + body.len() as u64 > max {
            return Err(body);
        }
        self.flush(f, &body, max, backups);
        let lines = count_newlines(&body);
        // A small body is copied rather than kept with its whole read
        // buffer's capacity.
        if body.len() < body.capacity() / 4 {
            body.shrink_to_fit();
        }
        inner.ring.push_raw(stream, SystemTime::now(), body, lines);
        Ok(())
    }

    /// The fast path of a follower of a file the program writes itself:
    /// when nobody follows, `body` (as for [`ProgramOutput::plain_chunk`])
    /// only gives the ring its last lines, copied as bytes. `false`, having
    /// done nothing, when the path does not apply.
    fn ring_chunk(&self, stream: Stream, body: &[u8]) -> bool {
        if !plain_lines(body) || self.followers() > 0 {
            return false;
        }
        let tail = body[ring_tail(body)..].to_vec();
        let lines = count_newlines(&tail);
        self.lock()
            .ring
            .push_raw(stream, SystemTime::now(), tail, lines);
        true
    }

    /// Appends `buf` (whole lines) to `f`, counting it as dropped
    /// when the write fails.
    fn flush(&self, f: &mut LogFile, buf: &[u8], max: u64, backups: u32) {
        if buf.is_empty() {
            return;
        }
        match f.append(buf, max, backups) {
            Ok(()) => {}
            Err(_) => {
                self.dropped.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// For a program that writes its log file(s) itself: opens them for
    /// appending (the child's stdout, and its stderr unless merged), and
    /// (re)starts following them from their current end. `None` when this
    /// output is not written directly.
    pub fn files_for_child(self: &Arc<Self>) -> Option<io::Result<(File, Option<File>)>> {
        let paths: Vec<(Stream, PathBuf)> = {
            let inner = self.lock();
            if !inner.direct {
                return None;
            }
            direct_paths(&inner)
        };
        let opened = (|| {
            let out = open_append(&paths[0].1)?;
            let err = match paths.get(1) {
                Some((_, p)) => Some(open_append(p)?),
                None => None,
            };
            Ok((out, err))
        })();
        if opened.is_ok() {
            self.follow(paths);
        }
        Some(opened)
    }

    /// Follows this program's own log files from their current end (an
    /// adopted process, or a new run), replacing earlier followers.
    pub fn follow_direct(self: &Arc<Self>) {
        let paths: Vec<(Stream, PathBuf)> = {
            let inner = self.lock();
            if !inner.direct {
                return;
            }
            direct_paths(&inner)
        };
        self.follow(paths);
    }

    fn follow(self: &Arc<Self>, paths: Vec<(Stream, PathBuf)>) {
        let mut from = Vec::with_capacity(paths.len());
        for (stream, path) in paths {
            // From where the last follower of this same file stopped (it
            // may not have read the end of the last run yet), else from the
            // end as it is now, before the program can write more.
            use std::os::unix::fs::MetadataExt;
            let (ino, len) = std::fs::metadata(&path).map_or((0, 0), |m| (m.ino(), m.len()));
            let mut start = len;
            for f in self.lock().files.iter_mut().flatten() {
                if f.path == path {
                    if let Some((i, at)) = f.followed_to {
                        if i == ino && at <= len {
                            start = at;
                        }
                    }
                    f.older_end.get_or_insert(start);
                }
            }
            from.push((stream, path, start));
        }
        let task = spawn(follow_files(self.clone(), from));
        if let Some(old) = self.lock().follower.replace(task) {
            old.abort();
        }
    }

    /// Stops following (the program is forgotten).
    pub fn stop_following(&self) {
        if let Some(task) = self.lock().follower.take() {
            task.abort();
        }
    }

    /// The last `n` lines of `streams` (both when `None`): from the ring,
    /// and, when it holds fewer and has lost none, older ones from the log
    /// file(s) before them.
    pub fn tail(&self, n: usize, only: Option<Stream>) -> Vec<LogLine> {
        let mut inner = self.lock();
        inner.ring.settle(&self.name);
        let wanted = |l: &LogLine| only.is_none_or(|s| s == l.stream);
        let mut from_ring: Vec<LogLine> = inner
            .ring
            .lines
            .iter()
            .rev()
            .filter(|l| wanted(l))
            .take(n)
            .cloned()
            .collect();
        from_ring.reverse();
        if from_ring.len() >= n || inner.ring.evicted {
            return from_ring;
        }
        let missing = n - from_ring.len();
        let mut older = Vec::new();
        for (i, f) in inner.files.iter().enumerate() {
            let Some(f) = f else { continue };
            let stream = if i == 0 && inner.files[1].is_some() {
                Stream::Stdout
            } else if i == 1 {
                Stream::Stderr
            } else {
                // One merged file: its lines are both.
                Stream::Stdout
            };
            if only.is_some_and(|s| s != stream) && inner.files[1].is_some() {
                continue;
            }
            // Only what came before the ring began: the rest it holds.
            let end = f
                .older_end
                .unwrap_or_else(|| std::fs::metadata(&f.path).map_or(0, |m| m.len()));
            for line in tail_lines(&f.path, missing, end) {
                older.push(LogLine {
                    name: self.name.clone(),
                    stream,
                    line: String::from_utf8_lossy(&line).into_owned(),
                    time: None,
                    newline: true,
                });
            }
        }
        let skip = older.len().saturating_sub(missing);
        older.drain(..skip);
        older.extend(from_ring);
        older
    }
}

/// Where a read's whole lines end: the index of its last newline, when
/// what follows it (a line begun, carried to the next read) is shorter
/// than [`MAX_LINE_BYTES`].
fn whole_lines_end(data: &[u8]) -> Option<usize> {
    memchr::memrchr(b'\n', data).filter(|&nl| data.len() - (nl + 1) < MAX_LINE_BYTES)
}

/// Whether `body` is whole lines that the fast paths can take as they
/// are: it ends with a newline and has no line longer than
/// [`MAX_LINE_BYTES`]. Such a line holds a whole aligned window of half
/// that size with no newline: a few memchr calls find it (and may send a
/// line of between half and all of the limit the slow way, which is only
/// slower).
fn plain_lines(body: &[u8]) -> bool {
    let half = MAX_LINE_BYTES / 2;
    body.last() == Some(&b'\n')
        && !body
            .chunks(half)
            .any(|w| w.len() == half && memchr::memchr(b'\n', w).is_none())
}

/// Where the lines of `body` (whole lines, ending with a newline) that the
/// ring can keep begin: at most [`RING_LINES`] lines and about
/// [`RING_BYTES`] bytes. Counts backwards a block at a time (see
/// [`count_newlines`]), then a byte at a time in the block where it ends.
fn ring_tail(body: &[u8]) -> usize {
    let floor = body.len().saturating_sub(RING_BYTES);
    let mut end = body.len();
    let mut seen = 0;
    while end > floor {
        let start = end.saturating_sub(255).max(floor);
        let here = count_newlines(&body[start..end]);
        if seen + here > RING_LINES {
            // The newline before the first kept line is in this block.
            let mut need = RING_LINES + 1 - seen;
            for i in (start..end).rev() {
                if body[i] == b'\n' {
                    need -= 1;
                    if need == 0 {
                        return i + 1;
                    }
                }
            }
        }
        seen += here;
        end = start;
    }
    if floor == 0 {
        0
    } else {
        memchr::memchr(b'\n', &body[floor..]).map_or(body.len(), |p| floor + p + 1)
    }
}

/// How many newlines `bytes` holds. Counted in blocks of 255 bytes into
/// byte-wide sums, which the compiler turns into wide vector compares (a
/// plain `filter().count()` stays a byte at a time).
fn count_newlines(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|block| {
            block
                .iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from(b == b'\n'))) as usize
        })
        .sum()
}

/// The last `n` lines of the file at `path` before offset `end` (reads at
/// most 4 MiB before it).
fn tail_lines(path: &Path, n: usize, end: u64) -> Vec<Vec<u8>> {
    if n == 0 || end == 0 {
        return Vec::new();
    }
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0).min(end);
    let start = len.saturating_sub(4 * 1024 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if (&mut file).take(len - start).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<Vec<u8>> = buf
        .rsplit(|&b| b == b'\n')
        .take(n)
        .map(<[u8]>::to_vec)
        .collect();
    lines.reverse();
    lines
}

/// Sends one line to journald's native socket, without blocking. `false`
/// when it could not be sent.
fn journal_send(
    sock: &mut Option<std::os::unix::net::UnixDatagram>,
    name: &str,
    stream: Stream,
    line: &[u8],
) -> bool {
    const JOURNAL: &str = "/run/systemd/journal/socket";
    if sock.is_none() {
        let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
            return false;
        };
        if s.set_nonblocking(true).is_err() {
            return false;
        }
        *sock = Some(s);
    }
    let priority = match stream {
        Stream::Stdout => 6,
        Stream::Stderr => 3,
    };
    let mut msg = format!("SYSLOG_IDENTIFIER={name}\nPRIORITY={priority}\n").into_bytes();
    // The binary form of a field: its name, a newline, a 64-bit little
    // endian length, the value, a newline (a value may hold any byte).
    msg.extend_from_slice(b"MESSAGE\n");
    msg.extend_from_slice(&(line.len() as u64).to_le_bytes());
    msg.extend_from_slice(line);
    msg.push(b'\n');
    sock.as_ref()
        .is_some_and(|s| s.send_to(&msg, JOURNAL).is_ok())
}

/// Opens `path` for appending (created 0640 if missing), close-on-exec.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Rotates a file that a program appends to itself: the numbered backups
/// move up, the file is copied to `.1`, then truncated to zero (the
/// program's `O_APPEND` writes go on at the new end). Lines written between
/// the copy and the truncation are lost: the `copytruncate` trade-off.
fn copy_truncate(path: &Path, backups: u32, max: u64) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if backups > 0 {
        let _ = std::fs::remove_file(numbered(backups));
        for n in (1..backups).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        // Only the last `max` bytes: a file a flood has taken far past the
        // limit is not copied whole (that would hold up supd's one thread).
        let mut src = File::open(path)?;
        let len = src.metadata()?.len();
        io::Seek::seek(&mut src, io::SeekFrom::Start(len.saturating_sub(max)))?;
        let mut dst = File::create(numbered(1))?;
        io::copy(&mut io::Read::take(src, max), &mut dst)?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// One log file a program writes itself, as its follower reads it.
struct Followed {
    stream: Stream,
    path: PathBuf,
    watch: crate::watch::Watch,
    file: File,
    /// How far it has been read.
    offset: u64,
    /// A line begun but not ended at `offset`.
    partial: Vec<u8>,
}

/// Follows the log files a program writes itself (its stdout file, and its
/// stderr file unless merged), each from its `start` offset, in one task:
/// woken by inotify (`IN_MODIFY`; no polling), reads what was appended
/// since, and hands the lines to the ring and followers (not to the file
/// again). Rotates a file by copy and truncate once it passes
/// `log_max_bytes`.
async fn follow_files(out: Arc<ProgramOutput>, paths: Vec<(Stream, PathBuf, u64)>) {
    // Setting up fails when inotify is out of instances or watches, or
    // supd out of descriptors: tried again, less and less often, since
    // rotation depends on it.
    let mut retry = std::time::Duration::from_secs(1);
    let mut warned = false;
    let mut files: Vec<Followed> = Vec::with_capacity(paths.len());
    for (stream, path, start) in paths {
        let (watch, file) = loop {
            let setup = crate::watch::watch(&path).and_then(|w| Ok((w, File::open(&path)?)));
            match setup {
                Ok(s) => break s,
                Err(e) => {
                    if !warned {
                        tracing::warn!(program = %out.name, path = %path.display(), error = %e, "cannot follow the log file (until then logs -f does not show its new lines and it is not rotated); trying again");
                        warned = true;
                    }
                    // Boxed: only a follower that retries holds a timer.
                    Box::pin(tokio::time::sleep(retry)).await;
                    retry = (retry * 2).min(std::time::Duration::from_secs(30));
                }
            }
        };
        files.push(Followed {
            stream,
            path,
            watch,
            file,
            offset: start,
            partial: Vec::new(),
        });
    }
    if warned {
        tracing::info!(program = %out.name, "following the log files again");
    }
    loop {
        // Each pass reads every file to its end (the first, what was
        // written between `start` and the watch), so a wake-up that names
        // one file and not the other loses nothing.
        for f in &mut files {
            f.catch_up(&out).await;
        }
        match files.as_slice() {
            [a] => a.watch.changed().await,
            [a, b] => {
                tokio::select! {
                    () = a.watch.changed() => {}
                    () = b.watch.changed() => {}
                }
            }
            _ => return,
        }
    }
}

impl Followed {
    /// Reads the file from `offset` to its end, then rotates it if it has
    /// passed `log_max_bytes`.
    async fn catch_up(&mut self, out: &ProgramOutput) {
        use std::os::unix::fs::FileExt;
        let stream = self.stream;
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated (by logrotate's copytruncate, say).
            self.offset = 0;
            self.partial.clear();
            out.file_restarted(&self.path);
        }
        // Allocated while there is something to read, not for the life of
        // every quiet program.
        let mut buf = Vec::new();
        while self.offset < len {
            // What is there, at most FLOOD_PIPE_BYTES at a time (a quiet
            // program's few lines take a buffer of their size).
            let want = usize::try_from(len - self.offset)
                .unwrap_or(usize::MAX)
                .min(FLOOD_PIPE_BYTES);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let n = match self.file.read_at(&mut buf[..want], self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            {
                use std::os::unix::fs::MetadataExt;
                let ino = self.file.metadata().map_or(0, |m| m.ino());
                for f in out.lock().files.iter_mut().flatten() {
                    if f.path == self.path {
                        f.followed_to = Some((ino, self.offset));
                    }
                }
            }
            let data = &buf[..n];
            if self.partial.is_empty() {
                if let Some(nl) = whole_lines_end(data) {
                    if out.ring_chunk(stream, &data[..=nl]) {
                        self.partial.extend_from_slice(&data[nl + 1..]);
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
            }
            let mut batch: Vec<(Vec<u8>, bool)> = Vec::new();
            for &b in data {
                if b == b'\n' {
                    batch.push((std::mem::take(&mut self.partial), true));
                } else {
                    self.partial.push(b);
                    if self.partial.len() >= MAX_LINE_BYTES {
                        batch.push((std::mem::take(&mut self.partial), false));
                    }
                }
            }
            let refs: Vec<(&[u8], bool)> =
                batch.iter().map(|(l, nl)| (l.as_slice(), *nl)).collect();
            out.take_lines(stream, &refs, false);
            tokio::task::yield_now().await;
        }
        let (max, backups) = {
            let inner = out.lock();
            (inner.cfg.max_bytes, inner.cfg.backups)
        };
        if self.offset > max {
            if let Err(e) = copy_truncate(&self.path, backups, max) {
                tracing::warn!(program = %out.name, path = %self.path.display(), error = %e, "cannot rotate the log file");
            } else {
                self.offset = 0;
                self.partial.clear();
                out.file_restarted(&self.path);
            }
        }
    }
}

/// Runs `task` on the output thread: one thread of supd's, with a tokio
/// runtime of its own, that runs every [`drain`] and log follower. A
/// program flooding its output then keeps that thread busy, not the one
/// that answers `status` and supervises; and a disk that stalls a write
/// stalls only output. Falls back to the current runtime if the thread
/// cannot be started. Must be called inside a tokio runtime.
pub fn spawn<F>(task: F) -> tokio::task::AbortHandle
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    static OUTPUT: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    let handle = OUTPUT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("supd-output".to_string())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the output thread's runtime; output is drained on the main thread");
                        let _ = tx.send(None);
                        return;
                    }
                };
                let _ = tx.send(Some(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            });
        match started {
            Ok(_) => rx.recv().ok().flatten(),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the output thread; output is drained on the main thread");
                None
            }
        }
    });
    match handle {
        Some(h) => h.spawn(task).abort_handle(),
        None => tokio::spawn(task).abort_handle(),
    }
}

/// Drains one pipe of run `run` until end of file: splits it into lines
/// (pieces of at most [`MAX_LINE_BYTES`]) and hands each to `out`.
pub async fn drain(out: Arc<ProgramOutput>, stream: Stream, fd: OwnedFd, run: u64) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(program = %out.name, error = %e, "cannot register an output pipe");
            out.pipe_closed(run);
            return;
        }
    };
    let mut partial: Vec<u8> = Vec::new();
    let mut read_size = READ_BYTES;
    loop {
        if let Err(e) = pipe.readable().await {
            tracing::warn!(program = %out.name, error = %e, "reading output failed");
            break;
        }
        // As large as the pipe's buffer, and only while there is output: a
        // quiet program costs no buffer.
        let mut buf = Vec::with_capacity(read_size);
        match pipe.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if n == READ_BYTES && read_size == READ_BYTES {
                    // The pipe was full: a flood. A larger pipe halves the
                    // wake-ups (each a lock and a context switch on both
                    // sides) for every doubling; a program that only ever
                    // writes a little keeps the default size.
                    let grown = nix::fcntl::fcntl(
                        &pipe,
                        nix::fcntl::FcntlArg::F_SETPIPE_SZ(FLOOD_PIPE_BYTES as libc::c_int),
                    );
                    if let Ok(size) = grown {
                        read_size = usize::try_from(size).unwrap_or(READ_BYTES);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(program = %out.name, error = %e, "reading output failed");
                break;
            }
        };
        // A flood of plain lines: written as it came (see plain_chunk).
        if partial.is_empty() {
            if let Some(nl) = whole_lines_end(&buf) {
                partial.extend_from_slice(&buf[nl + 1..]);
                buf.truncate(nl + 1);
                match out.plain_chunk(stream, buf) {
                    Ok(()) => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(back) => {
                        // Whole again, as it was read.
                        buf = back;
                        buf.extend_from_slice(&partial);
                        partial.clear();
                    }
                }
            }
        }
        let data = &buf[..];
        // Else line by line; then the other tasks (the supervisor, control
        // connections) run before the next read, however fast the program
        // writes.
        cut_lines(&out, stream, &mut partial, data);
        tokio::task::yield_now().await;
    }
    if !partial.is_empty() {
        out.lines(stream, &[(&partial, false)]);
    }
    out.pipe_closed(run);
}

/// Cuts `data` into lines (completing the one begun in `partial`, keeping
/// an unfinished one there) and hands them to `out`.
fn cut_lines(out: &ProgramOutput, stream: Stream, partial: &mut Vec<u8>, data: &[u8]) {
    let mut data = data;
    // A line begun in an earlier read, completed (or cut) in this one.
    let mut first: Option<(Vec<u8>, bool)> = None;
    if !partial.is_empty() {
        match memchr::memchr(b'\n', data) {
            Some(pos) if partial.len() + pos <= MAX_LINE_BYTES => {
                partial.extend_from_slice(&data[..pos]);
                first = Some((std::mem::take(partial), true));
                data = &data[pos + 1..];
            }
            _ => {
                let take = MAX_LINE_BYTES.saturating_sub(partial.len()).min(data.len());
                partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if partial.len() >= MAX_LINE_BYTES {
                    first = Some((std::mem::take(partial), false));
                }
            }
        }
    }
    let mut batch: Vec<(&[u8], bool)> = Vec::new();
    if let Some((line, newline)) = &first {
        batch.push((line, *newline));
    }
    while !data.is_empty() {
        match memchr::memchr(b'\n', data) {
            Some(pos) if pos <= MAX_LINE_BYTES => {
                batch.push((&data[..pos], true));
                data = &data[pos + 1..];
            }
            _ if data.len() >= MAX_LINE_BYTES => {
                batch.push((&data[..MAX_LINE_BYTES], false));
                data = &data[MAX_LINE_BYTES..];
            }
            _ => {
                partial.extend_from_slice(data);
                data = &[];
            }
        }
    }
    out.lines(stream, &batch);
}

/// The folder for log files: `configured`, else `$LOGS_DIRECTORY`
/// (systemd's `LogsDirectory=`), else `logs` in `state_dir`.
pub fn log_dir(configured: Option<&Path>, state_dir: &Path) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if let Some(dirs) = std::env::var_os("LOGS_DIRECTORY") {
        if let Some(first) = dirs.to_string_lossy().split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    state_dir.join("logs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> LogLine {
        LogLine {
            name: "p".into(),
            stream: Stream::Stdout,
            line: s.into(),
            time: None,
            newline: true,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_lines_within_its_bounds() {
        let mut ring = Ring::default();
        for i in 0..1500 {
            ring.push("p", line(&i.to_string()));
        }
        assert_eq!(ring.lines.len(), RING_LINES);
        assert_eq!(ring.lines.back().unwrap().line, "1499");
        assert!(ring.evicted);
        let big = "x".repeat(60 * 1024);
        for _ in 0..10 {
            ring.push("p", line(&big));
        }
        assert!(ring.bytes <= RING_BYTES);
        assert_eq!(ring.lines.len(), 4);
    }

    fn raw(text: &str) -> (Vec<u8>, usize) {
        (text.as_bytes().to_vec(), count_newlines(text.as_bytes()))
    }

    #[test]
    fn raw_pieces_become_the_same_lines_in_order_when_read() {
        let mut ring = Ring::default();
        ring.push("p", line("first"));
        let (a, n) = raw("a1\na2\n");
        ring.push_raw(Stream::Stdout, SystemTime::now(), a, n);
        let (b, n) = raw("b1\n");
        ring.push_raw(Stream::Stderr, SystemTime::now(), b, n);
        // A line the slow way comes after the raw ones.
        ring.push("p", line("last"));
        let got: Vec<(&str, Stream)> = ring
            .lines
            .iter()
            .map(|l| (l.line.as_str(), l.stream))
            .collect();
        assert_eq!(
            got,
            [
                ("first", Stream::Stdout),
                ("a1", Stream::Stdout),
                ("a2", Stream::Stdout),
                ("b1", Stream::Stderr),
                ("last", Stream::Stdout)
            ]
        );
        assert!(ring.lines.iter().skip(1).take(3).all(|l| l.time.is_some()));
        assert!(!ring.evicted);
        assert!(ring.raw.is_empty());
    }

    #[test]
    fn raw_pieces_stay_within_the_ring_bounds() {
        let mut ring = Ring::default();
        ring.push("p", line("old"));
        // A flood: each piece alone fills the ring, so only the newest is
        // kept, and the older line is gone.
        for i in 0..50 {
            let text = format!("{i}\n").repeat(3 * RING_LINES);
            let (piece, n) = raw(&text);
            ring.push_raw(Stream::Stdout, SystemTime::now(), piece, n);
            assert_eq!(ring.raw.len(), 1);
            assert!(ring.lines.is_empty());
        }
        assert!(ring.evicted);
        ring.settle("p");
        assert_eq!(ring.lines.len(), RING_LINES);
        assert!(ring.lines.iter().all(|l| l.line == "49"));
        // Many small pieces: the ring keeps the last RING_LINES lines.
        for i in 0..3 * RING_LINES {
            let (piece, n) = raw(&format!("s{i}\n"));
            ring.push_raw(Stream::Stdout, SystemTime::now(), piece, n);
        }
        assert!(ring.raw_lines <= RING_LINES);
        ring.settle("p");
        assert_eq!(ring.lines.len(), RING_LINES);
        assert_eq!(
            ring.lines.back().map(|l| l.line.as_str()),
            Some(format!("s{}", 3 * RING_LINES - 1).as_str())
        );
        assert_eq!(
            ring.lines.front().map(|l| l.line.as_str()),
            Some(format!("s{}", 2 * RING_LINES).as_str())
        );
    }

    #[test]
    fn the_ring_tail_is_the_last_lines_within_the_bounds() {
        let many = b"y\n".repeat(3 * RING_LINES);
        let start = ring_tail(&many);
        assert_eq!(many.len() - start, 2 * RING_LINES);
        let few = b"a\nbb\nccc\n";
        assert_eq!(ring_tail(few), 0);
        let exact = b"z\n".repeat(RING_LINES);
        assert_eq!(ring_tail(&exact), 0);
        // Long lines: cut by bytes, at a line start.
        let line = format!("{}\n", "x".repeat(999));
        let long = line.repeat(2 * RING_BYTES / 1000);
        let start = ring_tail(long.as_bytes());
        assert_eq!(start % 1000, 0);
        assert!(long.len() - start <= RING_BYTES);
        assert!(long.len() - start > RING_BYTES - 1000);
    }

    #[test]
    fn newlines_are_counted_across_blocks() {
        assert_eq!(count_newlines(b""), 0);
        assert_eq!(count_newlines(&b"y\n".repeat(40_000)), 40_000);
        assert_eq!(count_newlines(&[b'\n'; 1000]), 1000);
        assert_eq!(count_newlines(&b"no newline here".repeat(100)), 0);
    }

    #[test]
    fn rotation_keeps_the_configured_backups() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = LogFile::new(dir.path().join("p.out.log"));
        for _ in 0..100 {
            f.append(b"0123456789\n", 50, 2).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["p.out.log", "p.out.log.1", "p.out.log.2"]);
        for n in &names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 50);
        }
    }

    #[test]
    fn sizes_take_units() {
        use crate::config::parse_size;
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("500KB"), Ok(500_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("10 parsecs").is_err());
    }
}
