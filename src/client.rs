//! A blocking client of the control protocol: what `supctl` and the tests
//! use. One request at a time on one connection; notifications that arrive
//! before the answer are handed to a callback.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

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

/// Any message from the daemon: an answer (`id`, `result` or `error`) or a
/// notification (`method`, `params`), read in one pass.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RpcError>,
}

/// A connection to `supd`.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the path.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Calls `method` with `params` and returns its result.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with the daemon's error; the others for transport faults.
    pub fn call(&mut self, method: &str, params: impl Serialize) -> Result<Value, ClientError> {
        self.call_streaming(method, params, |_| {})
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
        let raw = self.call_raw(method, params, on_notification)?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Protocol(e.to_string()))
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
        let raw = self.call_raw(method, params, |_| {})?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request and returns its result as JSON text.
    fn call_raw(
        &mut self,
        method: &str,
        params: impl Serialize,
        mut on_notification: impl FnMut(Notification),
    ) -> Result<Box<RawValue>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::new(id, method, params);
        let mut line =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let Some(line) = self.read_line()? else {
                return Err(ClientError::Closed);
            };
            let incoming: Incoming =
                serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if incoming.id.is_none() {
                if let Some(method) = incoming.method {
                    on_notification(Notification {
                        jsonrpc: "2.0".into(),
                        method,
                        params: incoming.params.unwrap_or(Value::Null),
                    });
                    continue;
                }
            }
            return match (incoming.result, incoming.error) {
                (_, Some(error)) => Err(ClientError::Rpc(error)),
                (Some(result), None) => Ok(result),
                (None, None) => Err(ClientError::Protocol(
                    "an answer with neither result nor error".into(),
                )),
            };
        }
    }

    /// Reads one line (at most [`MAX_LINE`] bytes); `None` at end of stream.
    ///
    /// # Errors
    /// I/O errors; an over-long line is a protocol error.
    pub fn read_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE {
            return Err(ClientError::Protocol("an answer longer than 1 MiB".into()));
        }
        Ok(Some(line))
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
        let protocol = |e: serde_json::Error| ClientError::Protocol(e.to_string());
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
        let Some(line) = self.read_line()? else {
            return Ok(None);
        };
        serde_json::from_slice(&line)
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
        let mut sink = Vec::new();
        match self.reader.read_to_end(&mut sink) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
