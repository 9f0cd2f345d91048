//! The control protocol: JSON-RPC 2.0 over a Unix stream socket, one message
//! a line. Both binaries use these types; nothing else defines the wire.
//!
//! # A conversation
//!
//! ```text
//! -> {"jsonrpc":"2.0","id":1,"method":"version"}
//! <- {"jsonrpc":"2.0","id":1,"result":{"version":"0.1.0","protocol":3}}
//! -> {"jsonrpc":"2.0","id":2,"method":"start","params":{"names":["web"]}}
//! <- {"jsonrpc":"2.0","id":2,"result":{"programs":[{"name":"web","state":"running","pid":4242,...}]}}
//! -> {"jsonrpc":"2.0","id":3,"method":"start","params":{"names":["web"]}}
//! <- {"jsonrpc":"2.0","id":3,"error":{"code":-32002,"message":"web: already running (pid 4242)",
//!     "data":{"kind":"already_running","results":[...]}}}
//! -> {"jsonrpc":"2.0","id":4,"method":"stop","params":{"names":["web"]}}
//! <- {"jsonrpc":"2.0","id":4,"result":{"programs":[{"name":"web","state":"stopped","returncode":-15,"escalated":false,...}]}}
//! ```
//!
//! Framing ([`framing`]): UTF-8 text, `\n` ends a message, at most
//! [`MAX_LINE`] bytes a line. A line over the cap is answered with
//! `invalid_request` and skipped; the connection stays usable.
//!
//! JSON-RPC 2.0 to the letter: a batch (a JSON array) gets an array of
//! answers, a notification (no `id`) never gets one, and an `id` comes back
//! as the very text it was sent as ([`Response::id`] is raw JSON).
//!
//! Compatibility: changes are additive only. New fields may appear in any
//! object; clients ignore what they do not know. [`PROTOCOL_VERSION`] is
//! raised when a method or a capability is added.

pub mod framing;
mod status;
mod types;

pub use status::*;
pub use types::*;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest message, in bytes, including its `\n` (1 MiB, SPEC §5).
pub const MAX_LINE: usize = 1024 * 1024;

/// Raised whenever a method, field or capability is added (never for a
/// removal: there are none). 1: the first; 2: `logs`, `reopen_logs`,
/// `run`; 3: batches, ids echoed exactly as sent, `names` with `all`
/// refused. `docs/protocol.md` states it (a test holds them equal).
pub const PROTOCOL_VERSION: u32 = 3;

/// A JSON-RPC 2.0 request (or notification, when `id` is absent) as read off the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// A number or string chosen by the client, echoed in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// A `supctl` verb (`status`, `start`, ...) or `version`.
    pub method: String,
    /// The verb's arguments, an object such as `{"names": ["web"]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

impl Request {
    /// Builds a request for `method` with `params` serialised as its object.
    pub fn new(id: u64, method: &str, params: impl Serialize) -> Self {
        Request {
            jsonrpc: "2.0".into(),
            id: Some(Value::from(id)),
            method: method.into(),
            params: serde_json::to_value(params).ok(),
        }
    }
}

/// A JSON-RPC 2.0 response: exactly one of `result` and `error` is present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id as the JSON text it was sent as (a number beyond
    /// 64 bits, `1.5` or `"x"` comes back unchanged), or `null` when the
    /// request's id could not be read.
    pub id: Box<serde_json::value::RawValue>,
    /// The method's result on success, as JSON text: the daemon serialises
    /// a result once, straight to text, never through a `Value` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// The failure otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    /// The `null` id, for an answer to a request whose id could not be read.
    pub fn null_id() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::NULL.to_owned()
    }

    /// A success answer.
    pub fn ok(
        id: Box<serde_json::value::RawValue>,
        result: Box<serde_json::value::RawValue>,
    ) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            id,
            result: Some(result),
            error: None,
        }
    }

    /// A failure answer.
    pub fn err(id: Box<serde_json::value::RawValue>, error: RpcError) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            id,
            result: None,
            error: Some(error),
        }
    }

    /// Appends the start of a success answer, `{"jsonrpc":"2.0","id":ID,"result":`,
    /// to `out`: the result's text follows it, then [`Response::TAIL`]. How
    /// a large result (`status`) is written straight into the answer's
    /// buffer; the text is what serde makes of [`Response::ok`].
    pub fn write_head(out: &mut Vec<u8>, id: &serde_json::value::RawValue) {
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        out.extend_from_slice(id.get().as_bytes());
        out.extend_from_slice(br#","result":"#);
    }

    /// What ends an answer begun with [`Response::write_head`], its line's
    /// `\n` included.
    pub const TAIL: &[u8] = b"}\n";
}

/// A notification sent by the daemon on a streaming connection (`wait`,
/// later `events`, `logs -f`, `run`): `{"jsonrpc":"2.0","method":..,"params":..}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// What is being reported, such as `event`.
    pub method: String,
    /// Its content.
    pub params: Value,
}

/// What went wrong, in machine-readable form: the `data.kind` of every error
/// answer. Each kind has a fixed JSON-RPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// -32700: the line is not JSON.
    ParseError,
    /// -32600: JSON, but not a JSON-RPC 2.0 request (or over [`MAX_LINE`]).
    InvalidRequest,
    /// -32601: no such method.
    MethodNotFound,
    /// -32602: the params do not fit the method.
    InvalidParams,
    /// -32603: a fault inside the daemon.
    Internal,
    /// -32001: no program by that name.
    NotFound,
    /// -32002: `start` of a program that is starting, running or stopping.
    AlreadyRunning,
    /// -32003: `signal`, `kill` or `wait` of a program with no process.
    NotRunning,
    /// -32004: `remove` of a program that still has a process.
    Running,
    /// -32005: the configuration is invalid (`reload`, `--check-config`).
    Config,
    /// -32006: the program could not be started (exec failed, or it kept exiting).
    Spawn,
    /// -32007: the peer is not allowed to use the socket, or a signal was refused.
    PermissionDenied,
    /// -32008: a `wait` or `run` timeout elapsed.
    Timeout,
    /// -32009: the daemon is shutting down and starts nothing new.
    ShuttingDown,
}

impl ErrorKind {
    /// The JSON-RPC error code that goes with this kind.
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal => -32603,
            ErrorKind::NotFound => -32001,
            ErrorKind::AlreadyRunning => -32002,
            ErrorKind::NotRunning => -32003,
            ErrorKind::Running => -32004,
            ErrorKind::Config => -32005,
            ErrorKind::Spawn => -32006,
            ErrorKind::PermissionDenied => -32007,
            ErrorKind::Timeout => -32008,
            ErrorKind::ShuttingDown => -32009,
        }
    }

    /// The snake_case name used in `data.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::Internal => "internal",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyRunning => "already_running",
            ErrorKind::NotRunning => "not_running",
            ErrorKind::Running => "running",
            ErrorKind::Config => "config",
            ErrorKind::Spawn => "spawn",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ShuttingDown => "shutting_down",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a response: `{"code": -32002, "message": "...",
/// "data": {"kind": "already_running", ...}}`. `data` always carries `kind`;
/// per-program outcomes of a many-program verb are under `data.results`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RpcError {
    /// The JSON-RPC code, fixed by `data.kind` ([`ErrorKind::code`]).
    pub code: i64,
    /// One line for a person: names the thing and what to do.
    pub message: String,
    /// Machine-readable detail.
    pub data: ErrorData,
}

/// The `data` member of an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorData {
    /// What went wrong.
    pub kind: ErrorKind,
    /// For verbs over many programs: each program's outcome, successes included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<Outcome>>,
    /// For `not_found`: each unknown name that is close to an existing one
    /// (a likely misspelling), with that name: `{"wbe": "web"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestions: Option<std::collections::BTreeMap<String, String>>,
}

impl RpcError {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            code: kind.code(),
            message: message.into(),
            data: ErrorData {
                kind,
                results: None,
                suggestions: None,
            },
        }
    }

    /// The same error carrying every program's outcome.
    pub fn with_results(mut self, results: Vec<Outcome>) -> Self {
        self.data.results = Some(results);
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.data.kind
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::PROTOCOL_VERSION;

    /// docs/protocol.md states the version the code speaks, in its header
    /// line and in every example of a `version` answer.
    #[test]
    fn the_documented_protocol_version_is_the_codes() {
        let doc = include_str!("../../docs/protocol.md");
        let stated: Vec<u32> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("Protocol version: **"))
            .filter_map(|rest| rest.split("**").next()?.parse().ok())
            .collect();
        assert_eq!(
            stated,
            vec![PROTOCOL_VERSION],
            "the header line of docs/protocol.md"
        );
        let mut examples = 0;
        for (i, _) in doc.match_indices("\"protocol\":") {
            let digits: String = doc[i + "\"protocol\":".len()..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(
                digits,
                PROTOCOL_VERSION.to_string(),
                "an example in docs/protocol.md"
            );
            examples += 1;
        }
        assert!(examples > 0, "docs/protocol.md shows a version answer");
    }
}
