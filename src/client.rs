//! A blocking client of the control protocol: what `supctl` and the tests
//! use. One request at a time on one connection; notifications that arrive
//! before the answer are handed to a callback.

use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{MAX_LINE, Notification, Request, RpcError, WaitResult};

/// The socket used when none is given: `$XDG_RUNTIME_DIR/supd.sock` for a
/// user, `/run/supd/supd.sock` for root (the `RuntimeDirectory=` of the
/// systemd unit).
pub fn default_socket_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/supd/supd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("supd.sock"),
        None => PathBuf::from(format!("/tmp/supd-{}/supd.sock", nix::unistd::geteuid())),
    }
}

/// Sends a JSON-RPC notification (no answer comes) on `writer`: how
/// `supctl run` forwards its stdin (`stdin` with `data` and `eof`).
///
/// # Errors
/// I/O errors.
pub fn send_notification(
    writer: &mut impl Write,
    method: &str,
    params: impl Serialize,
) -> Result<(), ClientError> {
    let n = serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params });
    let mut line = serde_json::to_vec(&n).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    writer.write_all(&line)?;
    Ok(())
}

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there.
    #[error(
        "cannot connect to supd at {path}: {source} (is supd running? pass --socket or set SUPD_SOCKET)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The path names something that is not a socket (a folder, a file).
    #[error(
        "cannot connect to supd at {path}: it is {what}, not a socket (pass supd's socket file itself, such as {example}, with --socket or SUPD_SOCKET)"
    )]
    NotASocket {
        /// The path given.
        path: PathBuf,
        /// What is there: "a directory", "a regular file", ...
        what: &'static str,
        /// A socket path to suggest.
        example: String,
    },
    /// The connection broke.
    #[error("lost the connection to supd: {0}")]
    Io(#[from] io::Error),
    /// The daemon closed the connection before answering.
    #[error("supd closed the connection without answering (did it shut down?)")]
    Closed,
    /// The daemon sent something that is not a JSON-RPC answer.
    #[error("supd sent an unreadable answer: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
}

/// An answer, decoded in one pass: `result` straight into `T` (which may
/// borrow from the line), `error` into an [`RpcError`]; other members
/// (`jsonrpc`, `id`) are skipped.
struct Answer<T> {
    result: Option<T>,
    error: Option<RpcError>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Answer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Member {
            Result,
            Error,
            #[serde(other)]
            Other,
        }

        struct Members<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Members<T> {
            type Value = Answer<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON-RPC answer (an object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Answer<T>, A::Error> {
                let mut answer = Answer {
                    result: None,
                    error: None,
                };
                while let Some(member) = map.next_key()? {
                    match member {
                        Member::Result => answer.result = Some(map.next_value()?),
                        Member::Error => answer.error = Some(map.next_value()?),
                        Member::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(answer)
            }
        }

        deserializer.deserialize_map(Members(PhantomData))
    }
}

/// What tells a notification from an answer: a `method` and no `id`.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

/// The start of every answer supd writes (a number or string id follows):
/// such a line is known to be an answer without reading it through.
const ANSWER_HEAD: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

/// `line` as a notification; `None` when it is an answer.
fn as_notification(line: &[u8]) -> Result<Option<Notification>, ClientError> {
    if line
        .strip_prefix(ANSWER_HEAD)
        .is_some_and(|rest| rest.first().is_some_and(|&b| b != b'n'))
    {
        return Ok(None);
    }
    let probe: Probe = serde_json::from_slice(line).map_err(protocol)?;
    Ok(match (probe.id, probe.method) {
        (None, Some(method)) => Some(Notification {
            jsonrpc: "2.0".into(),
            method,
            params: probe.params.unwrap_or(Value::Null),
        }),
        _ => None,
    })
}

fn protocol(e: serde_json::Error) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// The buffer lines are read into at first: room for a status of about 800
/// programs without growing. Zero pages are mapped lazily, so a small
/// answer touches one.
const FIRST_BUFFER: usize = 256 * 1024;

/// The reading side of a connection: lines read into one buffer, each
/// decoded where it lies (a status of 500 programs is ~150 KB: read in a
/// few large reads, never copied). The buffer grows to the longest line.
#[derive(Debug)]
struct LineReader {
    stream: UnixStream,
    /// Bytes read; `buf[start..end]` is what is not consumed yet. Its
    /// whole length is initialised (zeros), so reads go straight into it.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl LineReader {
    fn new(stream: UnixStream) -> Self {
        LineReader {
            stream,
            buf: vec![0; FIRST_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// The next line's place in `buf`, without its `\n` (a last line
    /// without one counts); `None` at end of stream.
    ///
    /// # Errors
    /// I/O errors; a line over [`MAX_LINE`] is a protocol error.
    fn next_line(&mut self) -> Result<Option<std::ops::Range<usize>>, ClientError> {
        let mut scanned = self.start;
        loop {
            // The portable memchr: the CPU-specific one first asks the CPU
            // what it supports (cpuid), which costs more in a VM than
            // scanning a whole status does.
            if let Some(i) =
                memchr::arch::all::memchr::One::new(b'\n').find(&self.buf[scanned..self.end])
            {
                let line = self.start..scanned + i;
                self.start = scanned + i + 1;
                return if line.len() > MAX_LINE {
                    Err(too_long())
                } else {
                    Ok(Some(line))
                };
            }
            if self.end - self.start > MAX_LINE {
                return Err(too_long());
            }
            // Make room: start over when all is consumed, else move the
            // partial line to the front, else grow.
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.end == self.buf.len() && self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            scanned = self.end;
            let n = match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.start == self.end {
                    return Ok(None);
                }
                let line = self.start..self.end;
                self.start = self.end;
                return Ok(Some(line));
            }
            self.end += n;
        }
    }

    /// Reads and drops everything up to the end of the stream.
    fn drain(&mut self) -> io::Result<()> {
        (self.start, self.end) = (0, 0);
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn too_long() -> ClientError {
    ClientError::Protocol("an answer longer than 1 MiB".into())
}

/// Why connecting to `path` failed: [`ClientError::NotASocket`] when
/// something other than a socket is there (connect(2) says only
/// "Connection refused"), else [`ClientError::Connect`].
fn connect_error(path: &Path, source: io::Error) -> ClientError {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
    };
    let kind = meta.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        return ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
    } else {
        "a device"
    };
    let example = if kind.is_dir() {
        path.join("supd.sock").display().to_string()
    } else {
        default_socket_path().display().to_string()
    };
    ClientError::NotASocket {
        path: path.to_path_buf(),
        what,
        example,
    }
}

/// A connection to `supd`.
#[derive(Debug)]
pub struct Client {
    reader: LineReader,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the path.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| connect_error(path, source))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: LineReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Calls `method` with `params` and returns its result.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with the daemon's error; the others for transport faults.
    pub fn call(&mut self, method: &str, params: impl Serialize) -> Result<Value, ClientError> {
        self.call_in_place(method, params, |_| {})
    }

    /// Like [`Client::call`], handing each notification that arrives before
    /// the answer to `on_notification`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_streaming(
        &mut self,
        method: &str,
        params: impl Serialize,
        on_notification: impl FnMut(Notification),
    ) -> Result<Value, ClientError> {
        self.call_in_place(method, params, on_notification)
    }

    /// Like [`Client::call`], decoding the result straight from its text
    /// into `T` (no intermediate `Value`: a status of 1,000 programs is
    /// parsed once).
    ///
    /// # Errors
    /// As [`Client::call`]; a result that is not a `T` is a protocol error.
    pub fn call_typed<T: DeserializeOwned>(
        &mut self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        self.call_in_place(method, params, |_| {})
    }

    /// Like [`Client::call_typed`], for a `T` that borrows from the answer
    /// (`#[serde(borrow)] name: Cow<'a, str>`): its strings are not copied
    /// out of the line they came in. It lives until the next call.
    ///
    /// # Errors
    /// As [`Client::call_typed`].
    pub fn call_borrowed<'a, T: Deserialize<'a>>(
        &'a mut self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        self.call_in_place(method, params, |_| {})
    }

    /// Sends a request, hands the notifications that come before its
    /// answer to `on_notification`, and decodes the answer in one pass,
    /// where it lies in the read buffer.
    fn call_in_place<'a, T: Deserialize<'a>>(
        &'a mut self,
        method: &str,
        params: impl Serialize,
        mut on_notification: impl FnMut(Notification),
    ) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::new(id, method, params);
        let mut line = serde_json::to_vec(&request).map_err(protocol)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let answer = loop {
            let line = self.reader.next_line()?.ok_or(ClientError::Closed)?;
            match as_notification(&self.reader.buf[line.clone()])? {
                Some(n) => on_notification(n),
                None => break line,
            }
        };
        // One check that the line is UTF-8, rather than one a string.
        let text = std::str::from_utf8(&self.reader.buf[answer])
            .map_err(|e| ClientError::Protocol(format!("an answer that is not UTF-8: {e}")))?;
        let answer: Answer<T> = serde_json::from_str(text).map_err(protocol)?;
        match (answer.result, answer.error) {
            (_, Some(error)) => Err(ClientError::Rpc(error)),
            (Some(result), None) => Ok(result),
            (None, None) => Err(ClientError::Protocol(
                "an answer with neither result nor error".into(),
            )),
        }
    }

    /// Reads one line (at most [`MAX_LINE`] bytes); `None` at end of stream.
    ///
    /// # Errors
    /// I/O errors; an over-long line is a protocol error.
    pub fn read_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .reader
            .next_line()?
            .map(|line| self.reader.buf[line].to_vec()))
    }
    /// `wait`: `Process.join(timeout)`. Sends the request, then reads the one
    /// notification that ends it.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with kind `timeout` when `timeout` (seconds)
    /// passed first, or the request's own error (`not_found`, `not_running`).
    pub fn wait(&mut self, name: &str, timeout: Option<f64>) -> Result<WaitResult, ClientError> {
        self.call(
            "wait",
            serde_json::json!({ "name": name, "timeout": timeout }),
        )?;
        let n = self.next_notification()?.ok_or(ClientError::Closed)?;
        if n.method == "wait.exited" {
            serde_json::from_value(n.params).map_err(protocol)
        } else {
            Err(ClientError::Rpc(
                serde_json::from_value(n.params).map_err(protocol)?,
            ))
        }
    }

    /// Reads the next notification on a streaming connection; `None` when
    /// the daemon closed it.
    ///
    /// # Errors
    /// I/O errors; a line that is not a notification is a protocol error.
    pub fn next_notification(&mut self) -> Result<Option<Notification>, ClientError> {
        let Some(line) = self.reader.next_line()? else {
            return Ok(None);
        };
        serde_json::from_slice(&self.reader.buf[line])
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("expected a notification: {e}")))
    }

    /// Another handle on the connection's writing side, for a thread that
    /// sends notifications (`run` forwarding stdin) while this one reads.
    ///
    /// # Errors
    /// The errno of `dup`.
    pub fn try_clone_writer(&self) -> Result<UnixStream, ClientError> {
        Ok(self.writer.try_clone()?)
    }

    /// Blocks until the daemon closes the connection (used by `shutdown`).
    ///
    /// # Errors
    /// I/O errors other than the close itself.
    pub fn wait_closed(&mut self) -> Result<(), ClientError> {
        match self.reader.drain() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader whose peer writes `chunks` (one write each, so lines
    /// straddle reads), then closes.
    fn reader_of(chunks: Vec<Vec<u8>>) -> LineReader {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        std::thread::spawn(move || {
            for chunk in chunks {
                if theirs.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        LineReader::new(ours)
    }

    fn lines(mut r: LineReader) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        loop {
            match r.next_line() {
                Ok(Some(line)) => out.push(Ok(r.buf[line].to_vec())),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn lines_are_cut_across_reads_and_a_last_one_without_newline_counts() {
        let got = lines(reader_of(vec![
            b"ab\ncd".to_vec(),
            b"ef\n\ngh\n".to_vec(),
            b"tail".to_vec(),
        ]));
        let want: Vec<Result<Vec<u8>, String>> = [&b"ab"[..], b"cdef", b"", b"gh", b"tail"]
            .iter()
            .map(|l| Ok(l.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_line_longer_than_the_first_buffer_is_read_whole() {
        let long: Vec<u8> = (0..FIRST_BUFFER * 3)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut first = b"short\n".to_vec();
        first.extend_from_slice(&long[..1000]);
        let mut rest = long[1000..].to_vec();
        rest.extend_from_slice(b"\nnext\n");
        let got = lines(reader_of(vec![first, rest]));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok(b"short".to_vec()));
        assert!(
            got[1] == Ok(long),
            "the long line comes back as it was sent"
        );
        assert_eq!(got[2], Ok(b"next".to_vec()));
    }

    #[test]
    fn a_line_over_the_cap_is_an_error() {
        let mut at_cap = vec![b'x'; MAX_LINE];
        at_cap.push(b'\n');
        let got = lines(reader_of(vec![at_cap]));
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Ok(l) if l.len() == MAX_LINE));
        let over = vec![b'x'; MAX_LINE + 2];
        let got = lines(reader_of(vec![over]));
        assert_eq!(
            got,
            vec![Err(
                "supd sent an unreadable answer: an answer longer than 1 MiB".to_string()
            )]
        );
    }

    #[test]
    fn answers_are_told_from_notifications() {
        let answer = br#"{"jsonrpc":"2.0","id":7,"result":{"programs":[]}}"#;
        assert!(as_notification(answer).expect("readable").is_none());
        let null_id = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x","data":{"kind":"parse_error"}}}"#;
        assert!(as_notification(null_id).expect("readable").is_none());
        let other_order = br#"{"method":"event","params":{"name":"web"},"jsonrpc":"2.0"}"#;
        let n = as_notification(other_order)
            .expect("readable")
            .expect("a notification");
        assert_eq!(n.method, "event");
        assert_eq!(n.params["name"], "web");
        assert!(as_notification(b"{oops").is_err());
    }

    #[test]
    fn an_answer_is_decoded_in_one_pass_whatever_the_order_of_its_members() {
        let ok: Answer<Vec<u32>> =
            serde_json::from_str(r#"{"result":[1,2],"id":"x","jsonrpc":"2.0","extra":{"a":[]}}"#)
                .expect("an answer");
        assert_eq!(ok.result, Some(vec![1, 2]));
        assert!(ok.error.is_none());
        let err: Answer<Vec<u32>> = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"no such program: x","data":{"kind":"not_found"}}}"#,
        )
        .expect("an answer");
        assert!(err.result.is_none());
        assert_eq!(
            err.error.map(|e| e.kind()),
            Some(crate::protocol::ErrorKind::NotFound)
        );
    }
}
