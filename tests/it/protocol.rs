//! The control protocol's promises (SPEC §5, DESIGN "The control socket"):
//! every bad message gets a clear error answer, never stops the daemon,
//! never disturbs another connection and never touches a managed program;
//! framing, notifications, pipelining, vanishing clients, many clients at
//! once; the socket file's mode, ownership by one live supd, stale and
//! foreign files at its path; config errors at start-up and
//! `--check-config`; supctl usage errors.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sup::client::ClientError;

use crate::util::*;

/// `sleeper` runs from the start; `idle` is never started by itself.
const CONFIG: &str = r#"
[program.sleeper]
command = ["sleep", "300"]
start_secs = "0s"

[program.idle]
command = ["sleep", "300"]
autostart = false
start_secs = "0s"
"#;

/// The MAX_LINE of SPEC §5: 1 MiB a line.
const MIB: usize = 1024 * 1024;

/// A raw connection to the control socket, with timeouts on both directions
/// so that no test can hang on it.
struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let stream = UnixStream::connect(socket).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(DEADLINE))
            .expect("write timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone stream"));
        Conn { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to supd");
    }

    fn send_json(&mut self, v: &Value) {
        let mut line = serde_json::to_vec(v).expect("serialise");
        line.push(b'\n');
        self.send(&line);
    }

    /// The next line, or `None` at end of stream. Panics on a read timeout.
    fn recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(e) => panic!("no answer from supd within {DEADLINE:?}: {e}"),
        }
    }

    /// The next answer, as JSON.
    fn recv(&mut self) -> Value {
        let line = self
            .recv_line()
            .expect("supd closed the connection instead of answering");
        assert!(
            line.ends_with('\n'),
            "answer not ended by a newline: {line:?}"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
    }

    /// Sends `request` as one line and reads one answer.
    fn call(&mut self, request: &Value) -> Value {
        self.send_json(request);
        self.recv()
    }

    /// Bytes written on this connection that supd has not read yet
    /// (SIOCOUTQ on a Unix stream socket).
    fn unread_by_peer(&self) -> i32 {
        let mut n: libc::c_int = 0;
        // SAFETY: ioctl(TIOCOUTQ) on a socket fd we own, writing one c_int
        // into a live local.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert_eq!(
            rc,
            0,
            "ioctl(SIOCOUTQ): {}",
            std::io::Error::last_os_error()
        );
        n
    }

    /// Waits until supd has read every byte sent so far.
    fn wait_consumed(&self) {
        poll("supd to read what was sent", DEADLINE, || {
            (self.unread_by_peer() == 0).then_some(())
        });
    }
}

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// Asserts `answer` is a JSON-RPC error of `code`/`kind` for `id`, with a
/// message for a person; returns the error object.
fn assert_error(answer: &Value, code: i64, kind: &str, id: &Value) -> Value {
    assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
    assert!(
        answer.get("result").is_none(),
        "an error answer has no result: {answer}"
    );
    let err = answer
        .get("error")
        .unwrap_or_else(|| panic!("expected an error answer, got {answer}"));
    assert_eq!(err["code"], code, "{answer}");
    assert_eq!(err["data"]["kind"], kind, "{answer}");
    let message = err["message"].as_str().unwrap_or("");
    assert!(
        !message.trim().is_empty(),
        "the error has no message: {answer}"
    );
    assert_eq!(answer.get("id"), Some(id), "id in {answer}");
    err.clone()
}

/// Asserts `answer` is a success for `id` and returns its result.
fn assert_ok(answer: &Value, id: &Value) -> Value {
    assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
    assert!(
        answer.get("error").is_none(),
        "expected success, got {answer}"
    );
    assert_eq!(answer.get("id"), Some(id), "id in {answer}");
    answer
        .get("result")
        .unwrap_or_else(|| panic!("a success answer has a result: {answer}"))
        .clone()
}

/// Starts supd on [`CONFIG`] and returns it with sleeper's pid.
fn start_with_sleeper() -> (Supd, u32) {
    let supd = Supd::start(CONFIG);
    let pid = supd
        .wait_state("sleeper", "running")
        .pid
        .expect("sleeper has a pid");
    (supd, pid)
}

/// The daemon is alive and answers a fresh connection; sleeper still runs
/// with the same pid; idle was not started.
fn assert_undisturbed(supd: &Supd, sleeper_pid: u32) {
    assert!(alive(supd.pid()), "supd died; its log:\n{}", supd.log());
    let s = supd.status("sleeper");
    assert_eq!(s.state.as_str(), "running", "{s:?}");
    assert_eq!(s.pid, Some(sleeper_pid), "sleeper was restarted: {s:?}");
    assert_eq!(s.restarts, 0, "{s:?}");
    assert!(alive(sleeper_pid), "sleeper's process is gone");
    let idle = supd.status("idle");
    assert_eq!(idle.state.as_str(), "stopped", "{idle:?}");
    assert_eq!(idle.pid, None, "{idle:?}");
}

/// A bystander: a connection opened before the trouble, that must still be
/// served afterwards.
fn assert_bystander_served(conn: &mut Conn, supd: &Supd) {
    let a = conn.call(&req(json!("bystander"), "version", json!({})));
    let r = assert_ok(&a, &json!("bystander"));
    assert_eq!(r["pid"], supd.pid(), "{a}");
}

/// `supd ARGS...` with no notify socket, run to completion.
fn run_supd(args: &[&std::ffi::OsStr], marker: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(SUPD);
    cmd.args(args).env_remove("NOTIFY_SOCKET");
    if let Some(m) = marker {
        cmd.env("SUP_TEST_MARKER", m);
    }
    run_bounded(&mut cmd, DEADLINE)
}

// ---------------------------------------------------------------------------
// Bad messages
// ---------------------------------------------------------------------------

#[test]
fn malformed_json_is_a_parse_error_with_a_null_id() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let cases: &[&[u8]] = &[
        b"{\n",
        b"not json at all\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"} trailing\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\",}\n",
        b"{'jsonrpc':'2.0','id':1,'method':'version'}\n",
        // Not UTF-8.
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}\n",
        b"\xc3\x28\n",
    ];
    // Each on a fresh connection...
    for case in cases {
        let answer = raw_exchange(&supd.socket, case);
        assert_error(&answer, -32700, "parse_error", &Value::Null);
    }
    // ...and all on one connection, which stays usable after each.
    let mut conn = Conn::open(&supd.socket);
    for (i, case) in cases.iter().enumerate() {
        conn.send(case);
        let answer = conn.recv();
        assert_error(&answer, -32700, "parse_error", &Value::Null);
        let id = json!(100 + i);
        assert_ok(&conn.call(&req(id.clone(), "version", json!({}))), &id);
    }
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let depth = 100_000;
    let mut line = "[".repeat(depth).into_bytes();
    line.extend_from_slice("]".repeat(depth).as_bytes());
    line.push(b'\n');
    let mut conn = Conn::open(&supd.socket);
    conn.send(&line);
    // A batch of one element that is not a request: an array of one
    // invalid_request (or a parse error, had the depth been refused).
    let answer = conn.recv();
    let error = answer.get(0).unwrap_or(&answer);
    let code = error["error"]["code"].as_i64();
    assert!(
        code == Some(-32700) || code == Some(-32600),
        "a 100,000-deep array is a parse error or an invalid request: {answer}"
    );
    assert_eq!(error["id"], Value::Null, "{answer}");
    assert_ok(&conn.call(&req(json!(2), "version", json!({}))), &json!(2));
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn json_that_is_not_a_request_is_an_invalid_request() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    // Not an object at all: the id cannot be known, so it is null.
    let not_objects = [
        json!(42),
        json!("status"),
        json!(null),
        json!(true),
        // An empty batch (batches themselves: server_defects.rs).
        json!([]),
    ];
    let mut conn = Conn::open(&supd.socket);
    for bad in &not_objects {
        let answer = conn.call(bad);
        assert_error(&answer, -32600, "invalid_request", &Value::Null);
    }
    // Objects that are not JSON-RPC 2.0 requests: the id is echoed when it
    // could be read, else null.
    let not_requests = [
        (json!({ "id": 3, "method": "version" }), json!(3)),
        (
            json!({ "jsonrpc": "1.0", "id": 4, "method": "version" }),
            json!(4),
        ),
        (
            json!({ "jsonrpc": 2.0, "id": 5, "method": "version" }),
            json!(5),
        ),
        (json!({ "jsonrpc": "2.0", "id": 6 }), json!(6)),
        (json!({ "jsonrpc": "2.0", "id": 7, "method": 7 }), json!(7)),
        (
            json!({ "jsonrpc": "2.0", "id": 8, "method": null }),
            json!(8),
        ),
        (json!({ "jsonrpc": "2.0", "id": null }), Value::Null),
        // Without "id" these would be notifications, never answered even
        // when invalid (server_defects.rs).
    ];
    for (bad, id) in &not_requests {
        let answer = conn.call(bad);
        assert_eq!(answer["error"]["code"], -32600, "{bad} -> {answer}");
        assert_eq!(
            answer["error"]["data"]["kind"], "invalid_request",
            "{bad} -> {answer}"
        );
        let got = answer.get("id").cloned().unwrap_or(json!("<missing>"));
        assert!(
            got == *id || got == Value::Null,
            "{bad} -> id {got} (want {id} or null): {answer}"
        );
        assert!(answer.get("result").is_none(), "{answer}");
    }
    assert_ok(
        &conn.call(&req(json!(99), "version", json!({}))),
        &json!(99),
    );
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn unknown_method_is_method_not_found_and_echoes_the_id() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let mut conn = Conn::open(&supd.socket);
    let cases = [
        (json!(7), "frobnicate"),
        (json!("req-abc"), "frobnicate"),
        (json!(0), "Status"),
        (json!(""), "STOP"),
        (json!(-12), ""),
        (json!(18_446_744_073_709_551_615u64), "stop "),
        (json!("with \"quotes\" and ünïcödé"), "rpc.discover"),
        (json!(1.5), "kill_all"),
    ];
    for (id, method) in &cases {
        let answer = conn.call(&req(id.clone(), method, json!({ "names": ["sleeper"] })));
        assert_error(&answer, -32601, "method_not_found", id);
    }
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn bad_params_are_invalid_params() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let mut conn = Conn::open(&supd.socket);
    let cases = [
        ("stop", json!({ "names": "sleeper" })),
        ("stop", json!({ "names": ["sleeper"], "force": true })),
        ("stop", json!({ "names": [1] })),
        ("stop", json!({})),
        ("stop", json!(["sleeper"])),
        ("stop", json!("sleeper")),
        ("kill", json!({ "names": "sleeper" })),
        ("kill", json!({ "name": "sleeper" })),
        ("restart", json!({ "names": ["sleeper"], "all": "yes" })),
        ("status", json!({ "names": "sleeper" })),
        ("status", json!({ "verbose": true })),
        ("start", json!({ "names": [null] })),
        ("remove", json!({ "names": {"sleeper": true} })),
        ("signal", json!({ "names": ["sleeper"] })),
        ("signal", json!({ "names": ["sleeper"], "signal": "NOPE" })),
        ("signal", json!({ "names": ["sleeper"], "signal": "" })),
        ("signal", json!({ "names": ["sleeper"], "signal": 0 })),
        ("signal", json!({ "names": ["sleeper"], "signal": 65 })),
        ("signal", json!({ "names": ["sleeper"], "signal": -9 })),
        ("signal", json!({ "names": ["sleeper"], "signal": 9.5 })),
        ("signal", json!({ "names": ["sleeper"], "signal": true })),
        (
            "signal",
            json!({ "names": ["sleeper"], "signal": ["TERM"] }),
        ),
        (
            "signal",
            json!({ "names": ["sleeper"], "signal": "TERM", "pid": 1 }),
        ),
        ("wait", json!({ "name": "sleeper", "timeout": -1 })),
        ("wait", json!({ "name": "sleeper", "timeout": -0.001 })),
        ("wait", json!({ "name": "sleeper", "timeout": 1e300 })),
        ("wait", json!({ "name": "sleeper", "timeout": "5" })),
        ("wait", json!({ "timeout": 1 })),
        ("wait", json!({})),
        ("wait", json!({ "name": ["sleeper"] })),
        ("wait", json!({ "names": ["sleeper"] })),
    ];
    for (i, (method, params)) in cases.iter().enumerate() {
        let id = json!(i);
        let answer = conn.call(&req(id.clone(), method, params.clone()));
        let err = answer.get("error").cloned().unwrap_or_default();
        assert_eq!(err["code"], -32602, "{method} {params} -> {answer}");
        assert_eq!(
            err["data"]["kind"], "invalid_params",
            "{method} {params} -> {answer}"
        );
        assert_eq!(answer["id"], id, "{answer}");
        assert!(
            !err["message"].as_str().unwrap_or("").is_empty(),
            "{method} {params} -> {answer}"
        );
        // Nothing was signalled, stopped or restarted.
        let s = supd.status("sleeper");
        assert_eq!(
            s.pid,
            Some(sleeper),
            "{method} {params} touched sleeper: {s:?}"
        );
        assert_eq!(s.state.as_str(), "running", "{method} {params}: {s:?}");
    }
    // `wait` without a timeout but with bad params must not block: the
    // connection answered every one above. And it still serves.
    assert_ok(
        &conn.call(&req(json!("last"), "version", json!({}))),
        &json!("last"),
    );
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn project_errors_carry_their_kind() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let mut conn = Conn::open(&supd.socket);
    let cases = [
        // not_found: an unknown program, alone or among known ones (then
        // nothing is done to the known ones).
        ("status", json!({ "names": ["ghost"] }), -32001, "not_found"),
        ("start", json!({ "names": ["ghost"] }), -32001, "not_found"),
        (
            "stop",
            json!({ "names": ["sleeper", "ghost"] }),
            -32001,
            "not_found",
        ),
        (
            "kill",
            json!({ "names": ["ghost", "sleeper"] }),
            -32001,
            "not_found",
        ),
        (
            "restart",
            json!({ "names": ["sleeper", "ghost"] }),
            -32001,
            "not_found",
        ),
        (
            "signal",
            json!({ "names": ["sleeper", "ghost"], "signal": "KILL" }),
            -32001,
            "not_found",
        ),
        ("remove", json!({ "names": ["ghost"] }), -32001, "not_found"),
        ("wait", json!({ "name": "ghost" }), -32001, "not_found"),
        // already_running: start twice.
        (
            "start",
            json!({ "names": ["sleeper"] }),
            -32002,
            "already_running",
        ),
        // not_running: a program with no process.
        ("kill", json!({ "names": ["idle"] }), -32003, "not_running"),
        (
            "signal",
            json!({ "names": ["idle"], "signal": "HUP" }),
            -32003,
            "not_running",
        ),
        ("wait", json!({ "name": "idle" }), -32003, "not_running"),
        // running: remove of a program that has a process.
        ("remove", json!({ "names": ["sleeper"] }), -32004, "running"),
        (
            "remove",
            json!({ "names": ["idle", "sleeper"] }),
            -32004,
            "running",
        ),
    ];
    for (i, (method, params, code, kind)) in cases.iter().enumerate() {
        let id = json!(format!("p{i}"));
        let answer = conn.call(&req(id.clone(), method, params.clone()));
        let err = answer.get("error").cloned().unwrap_or_default();
        assert_eq!(err["code"], *code, "{method} {params} -> {answer}");
        assert_eq!(err["data"]["kind"], *kind, "{method} {params} -> {answer}");
        assert_eq!(answer["id"], id, "{answer}");
        assert!(answer.get("result").is_none(), "{answer}");
        let s = supd.status("sleeper");
        assert_eq!(
            s.pid,
            Some(sleeper),
            "{method} {params} touched sleeper: {s:?}"
        );
    }
    // `remove` refused as a whole: idle was not forgotten either.
    let all: Vec<String> = supd.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(
        all,
        ["idle", "sleeper"],
        "remove of a running program removed something"
    );
    // The library client sees the same kind.
    match supd.call("start", json!({ "names": ["sleeper"] })) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.kind().as_str(), "already_running", "{e}"),
        other => panic!("start of a running program: {other:?}"),
    }
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

#[test]
fn a_line_over_the_cap_is_refused_and_the_connection_stays_usable() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let mut conn = Conn::open(&supd.socket);

    // A request padded to 1 MiB + 100 bytes: a stop of sleeper, that must
    // not happen. Then a valid request in the same write.
    let head = br#"{"jsonrpc":"2.0","id":1,"method":"stop","params":{"names":["sleeper"]},"pad":""#;
    let mut bytes = head.to_vec();
    bytes.resize(MIB + 100, b'a');
    bytes.extend_from_slice(b"\"}\n");
    bytes.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"status\",\"params\":{\"names\":[\"sleeper\"]}}\n");
    conn.send(&bytes);
    let first = conn.recv();
    assert_error(&first, -32600, "invalid_request", &Value::Null);
    let second = conn.recv();
    let result = assert_ok(&second, &json!(2));
    assert_eq!(result["programs"][0]["name"], "sleeper", "{second}");
    assert_eq!(result["programs"][0]["pid"], sleeper, "{second}");

    // Over the cap with no JSON at all, sent in pieces.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..20 {
        conn.send(&chunk);
    }
    conn.send(b"\n");
    assert_error(&conn.recv(), -32600, "invalid_request", &Value::Null);

    // Just under the cap (1 MiB with its newline, minus one byte) is a
    // normal message.
    let mut under = br#"{"jsonrpc":"2.0","id":3,"method":"version"}"#.to_vec();
    under.resize(MIB - 2, b' ');
    under.push(b'\n');
    conn.send(&under);
    let r = assert_ok(&conn.recv(), &json!(3));
    assert_eq!(r["pid"], supd.pid());

    assert_ok(&conn.call(&req(json!(4), "version", json!({}))), &json!(4));
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn a_notification_gets_no_answer_but_the_next_request_does() {
    let (supd, sleeper) = start_with_sleeper();
    let mut conn = Conn::open(&supd.socket);
    // Notifications: a success, an unknown method, bad params; none answered.
    conn.send_json(&json!({ "jsonrpc": "2.0", "method": "version" }));
    conn.send_json(&json!({ "jsonrpc": "2.0", "method": "frobnicate" }));
    conn.send_json(&json!({ "jsonrpc": "2.0", "method": "wait", "params": { "name": "sleeper", "timeout": -1 } }));
    conn.send_json(
        &json!({ "jsonrpc": "2.0", "method": "status", "params": { "names": ["ghost"] } }),
    );
    // A notification is still carried out: it starts idle.
    conn.send_json(
        &json!({ "jsonrpc": "2.0", "method": "start", "params": { "names": ["idle"] } }),
    );
    let answer = conn.call(&req(json!(9), "version", json!({})));
    assert_ok(&answer, &json!(9));
    let idle = supd.wait_state("idle", "running");
    assert!(idle.pid.is_some_and(alive), "{idle:?}");
    // Nothing else is waiting on the connection: the next answer is the
    // next request's.
    let answer = conn.call(&req(
        json!("ten"),
        "status",
        json!({ "names": ["sleeper"] }),
    ));
    let r = assert_ok(&answer, &json!("ten"));
    assert_eq!(r["programs"][0]["pid"], sleeper, "{answer}");
    let s = supd.status("sleeper");
    assert_eq!(s.pid, Some(sleeper), "{s:?}");
}

/// The notification that ends a `wait` whose timeout passed.
fn assert_wait_timeout(n: &Value) {
    assert!(n.get("id").is_none(), "a notification has no id: {n}");
    assert_eq!(n["method"], "wait.timeout", "{n}");
    assert_eq!(n["params"]["data"]["kind"], "timeout", "{n}");
    assert_eq!(n["params"]["code"], -32008, "{n}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (supd, sleeper) = start_with_sleeper();
    let mut conn = Conn::open(&supd.socket);
    let mut batch = Vec::new();
    let requests = [
        req(json!(1), "version", json!({})),
        req(json!("two"), "status", json!({ "names": ["sleeper"] })),
        req(json!(3), "frobnicate", json!({})),
        json!({ "jsonrpc": "2.0", "method": "version" }), // no answer
        req(json!(4), "start", json!({ "names": ["idle"] })),
        req(json!(5), "status", json!({ "names": ["idle"] })),
        req(json!(6), "wait", json!({ "name": "idle", "timeout": 0.05 })),
        req(json!(7), "stop", json!({ "names": ["idle"] })),
        req(json!(8), "status", json!({})),
    ];
    for r in &requests {
        batch.extend_from_slice(&serde_json::to_vec(r).expect("json"));
        batch.push(b'\n');
    }
    batch.extend_from_slice(b"{oops\n");
    batch.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"version\"}\n");
    conn.send(&batch);

    let a = conn.recv();
    assert_eq!(assert_ok(&a, &json!(1))["pid"], supd.pid());
    let a = conn.recv();
    assert_eq!(
        assert_ok(&a, &json!("two"))["programs"][0]["pid"],
        sleeper,
        "{a}"
    );
    assert_error(&conn.recv(), -32601, "method_not_found", &json!(3));
    let a = conn.recv();
    assert_eq!(
        assert_ok(&a, &json!(4))["programs"][0]["state"],
        "running",
        "{a}"
    );
    let a = conn.recv();
    assert_eq!(
        assert_ok(&a, &json!(5))["programs"][0]["state"],
        "running",
        "{a}"
    );
    // `wait` is a stream (SPEC §5): an answer, then one notification.
    assert_eq!(assert_ok(&conn.recv(), &json!(6))["running"], true);
    assert_wait_timeout(&conn.recv());
    let a = conn.recv();
    assert_eq!(
        assert_ok(&a, &json!(7))["programs"][0]["state"],
        "stopped",
        "{a}"
    );
    let a = conn.recv();
    let rows = assert_ok(&a, &json!(8))["programs"].clone();
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{a}");
    assert_error(&conn.recv(), -32700, "parse_error", &Value::Null);
    assert_ok(&conn.recv(), &json!(10));
    assert_eq!(supd.status("sleeper").pid, Some(sleeper));
}

#[test]
fn an_id_that_is_not_a_scalar_is_answered_with_a_null_id() {
    let (supd, sleeper) = start_with_sleeper();
    let mut conn = Conn::open(&supd.socket);
    for id in [json!({ "x": 1 }), json!([9]), json!(true)] {
        let request = json!({
            "jsonrpc": "2.0", "id": id, "method": "stop", "params": { "names": ["sleeper"] }
        });
        let answer = conn.call(&request);
        // Not carried out...
        assert_eq!(answer["error"]["code"], -32600, "{request} -> {answer}");
        assert_eq!(
            answer["error"]["data"]["kind"], "invalid_request",
            "{answer}"
        );
        assert_eq!(supd.status("sleeper").pid, Some(sleeper));
        // ...and answered with an id a JSON-RPC client can read.
        assert_eq!(answer["id"], Value::Null, "{request} -> {answer}");
    }
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let (supd, sleeper) = start_with_sleeper();
    // `printf '...\n' | socat - UNIX-CONNECT:sock` or `nc -N -U sock`: send,
    // half-close, read. The framing even accepts a last line without `\n`.
    // A `wait` with a short timeout takes 200 ms to answer, so the EOF is
    // always seen first; `status` needs the supervisor, a race it loses often.
    let wait =
        r#"{"jsonrpc":"2.0","id":1,"method":"wait","params":{"name":"sleeper","timeout":0.2}}"#;
    let status = r#"{"jsonrpc":"2.0","id":1,"method":"status","params":{"names":["sleeper"]}}"#;
    let mut cases = vec![format!("{wait}\n"), wait.to_string()];
    for _ in 0..20 {
        cases.push(format!("{status}\n"));
    }
    for text in &cases {
        let mut conn = Conn::open(&supd.socket);
        conn.send(text.as_bytes());
        conn.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
        let line = conn
            .recv_line()
            .unwrap_or_else(|| panic!("supd closed without answering {text:?}"));
        let answer: Value = serde_json::from_str(&line).expect("JSON answer");
        assert_eq!(answer["id"], 1, "{answer}");
        if text.contains("wait") {
            assert_eq!(assert_ok(&answer, &json!(1))["running"], true, "{answer}");
            let line = conn
                .recv_line()
                .unwrap_or_else(|| panic!("supd closed before the wait ended {text:?}"));
            assert_wait_timeout(&serde_json::from_str(&line).expect("JSON notification"));
        } else {
            assert_eq!(assert_ok(&answer, &json!(1))["programs"][0]["pid"], sleeper);
        }
    }
    assert_undisturbed(&supd, sleeper);
}

// ---------------------------------------------------------------------------
// Clients that misbehave, and many clients
// ---------------------------------------------------------------------------

#[test]
fn a_client_that_vanishes_mid_wait_disturbs_nothing() {
    let (supd, sleeper) = start_with_sleeper();

    // A well-behaved waiter on its own connection, blocked in `wait`.
    let socket = supd.socket.clone();
    let mut patient = Conn::open(&socket);
    patient.send_json(&req(json!("patient"), "wait", json!({ "name": "sleeper" })));
    patient.wait_consumed();

    // Clients that ask to wait and hang up before the answer.
    for _ in 0..5 {
        let mut rude = Conn::open(&supd.socket);
        rude.send_json(&req(json!(1), "wait", json!({ "name": "sleeper" })));
        rude.wait_consumed();
        drop(rude);
    }
    // One that hangs up in the middle of a pipelined sequence.
    let mut rude = Conn::open(&supd.socket);
    rude.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"wait\",\"params\":{\"name\":\"sleeper\"}}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"stop\",\"params\":{\"names\":[\"sleeper\"]}}\n");
    rude.wait_consumed();
    drop(rude);

    assert_undisturbed(&supd, sleeper);
    // sleeper is still running: a short wait times out.
    let answer = raw_exchange(
        &supd.socket,
        b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"wait\",\"params\":{\"name\":\"sleeper\",\"timeout\":0.1}}\n",
    );
    assert_eq!(assert_ok(&answer, &json!(5))["running"], true, "{answer}");

    // The patient waiter was not disturbed: it gets sleeper's end.
    let stopped = supd
        .call("stop", json!({ "names": ["sleeper"] }))
        .expect("stop sleeper");
    assert_eq!(stopped["programs"][0]["state"], "stopped", "{stopped}");
    let answer = patient.recv();
    assert_eq!(
        assert_ok(&answer, &json!("patient"))["running"],
        true,
        "{answer}"
    );
    let answer = patient.recv();
    assert_eq!(answer["method"], "wait.exited", "{answer}");
    let r = &answer["params"];
    assert_eq!(r["pid"], sleeper, "{answer}");
    assert_eq!(r["signal"], "SIGTERM", "{answer}");
    assert_eq!(r["returncode"], -15, "{answer}");
    assert!(alive(supd.pid()), "supd died; its log:\n{}", supd.log());
    assert_ok(
        &raw_exchange(
            &supd.socket,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}\n",
        ),
        &json!(1),
    );
}

#[test]
fn clients_that_vanish_mid_wait_with_more_pipelined_do_not_use_up_the_daemon() {
    const CAP: usize = 512;
    let (supd, sleeper) = start_with_sleeper();
    let fds = || fds_of(supd.pid()).map_or(0, |f| f.len());
    let baseline = fds();
    for _ in 0..CAP {
        let mut rude = Conn::open(&supd.socket);
        rude.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"wait\",\"params\":{\"name\":\"sleeper\"}}\n\n");
        rude.wait_consumed();
        drop(rude);
    }
    // Every one of them has hung up: a newcomer is served...
    let end = Instant::now() + DEADLINE;
    loop {
        let answer = raw_exchange(
            &supd.socket,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}\n",
        );
        if answer.get("result").is_some() {
            break;
        }
        assert!(
            Instant::now() < end,
            "a newcomer is still refused {DEADLINE:?} after {CAP} clients left: {answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and the daemon let go of their connections.
    poll(
        "supd to close the connections of departed clients",
        DEADLINE,
        || (fds() <= baseline + 8).then_some(()),
    );
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn a_client_that_sends_half_a_line_disturbs_nothing() {
    let (supd, sleeper) = start_with_sleeper();
    let half = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stop\",\"params\":{\"names\":[\"slee";
    // Half a line, then gone.
    for _ in 0..5 {
        let mut c = Conn::open(&supd.socket);
        c.send(half);
        c.wait_consumed();
        drop(c);
    }
    // Half a line, then silence with the connection kept open; and one
    // trickling a huge line without ever ending it.
    let mut silent = Conn::open(&supd.socket);
    silent.send(half);
    silent.wait_consumed();
    let mut trickle = Conn::open(&supd.socket);
    let chunk = vec![b'z'; 256 * 1024];
    for _ in 0..8 {
        trickle.send(&chunk);
    }
    trickle.wait_consumed();

    // Everyone else is served promptly.
    for i in 0..10 {
        let id = json!(i);
        let answer = raw_exchange(
            &supd.socket,
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"status\"}}\n").as_bytes(),
        );
        let r = assert_ok(&answer, &id);
        assert_eq!(r["programs"].as_array().map(Vec::len), Some(2), "{answer}");
    }
    assert_undisturbed(&supd, sleeper);

    // The silent one finishes its line as a harmless request and is answered.
    silent.send(b"per\"],\"all\":\"no\"}}\n");
    assert_error(&silent.recv(), -32602, "invalid_params", &json!(1));
    // The trickler's line went over the cap: refused, not acted on.
    trickle.send(b"\n");
    assert_error(&trickle.recv(), -32600, "invalid_request", &Value::Null);
    drop(silent);
    drop(trickle);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn fifty_concurrent_clients_are_all_answered() {
    let (supd, sleeper) = start_with_sleeper();
    let n = 50;
    let barrier = Arc::new(Barrier::new(n));
    let socket: Arc<PathBuf> = Arc::new(supd.socket.clone());
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let socket = Arc::clone(&socket);
            std::thread::spawn(move || {
                let mut conn = Conn::open(&socket);
                barrier.wait();
                let mut rows = Vec::new();
                for k in 0..3 {
                    let id = json!(format!("c{i}-{k}"));
                    let answer = conn.call(&req(id.clone(), "status", json!({})));
                    let r = assert_ok(&answer, &id);
                    rows.push(r["programs"].clone());
                }
                rows
            })
        })
        .collect();
    for t in threads {
        let rows = t.join().expect("a client thread panicked");
        for programs in rows {
            let sleeper_row = programs
                .as_array()
                .and_then(|a| a.iter().find(|p| p["name"] == "sleeper"))
                .cloned()
                .unwrap_or_default();
            assert_eq!(sleeper_row["pid"], sleeper, "{programs}");
            assert_eq!(sleeper_row["state"], "running", "{programs}");
        }
    }
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn a_client_that_never_reads_its_answers_stalls_only_itself() {
    let (supd, sleeper) = start_with_sleeper();
    let mut flood = Conn::open(&supd.socket);
    flood.stream.set_nonblocking(true).expect("non-blocking");
    // Requests until the daemon stops reading (its answers fill our
    // receive buffer), or 64 MiB at most.
    let mut sent = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut stalled = false;
    while sent < 1_000_000 && Instant::now() < end {
        if pending.is_empty() {
            pending = format!("{{\"jsonrpc\":\"2.0\",\"id\":{sent},\"method\":\"status\"}}\n")
                .into_bytes();
            sent += 1;
        }
        match flood.stream.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalled = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(stalled, "supd kept reading {sent} unanswered requests");
    // Everyone else is served, and nothing was touched.
    for i in 0..5 {
        let answer = raw_exchange(
            &supd.socket,
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"version\"}}\n").as_bytes(),
        );
        assert_ok(&answer, &json!(i));
    }
    assert_undisturbed(&supd, sleeper);
    // The flooder, once it reads, finds its answers in order (or, if the
    // daemon dropped it, the end of the stream: never garbage).
    flood.stream.set_nonblocking(false).expect("blocking");
    for expected in 0..100u64 {
        let Some(line) = flood.recv_line() else { break };
        let answer: Value = serde_json::from_str(&line).expect("JSON answer");
        assert_ok(&answer, &json!(expected));
    }
    drop(flood);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn connections_over_the_cap_are_refused_with_an_answer_then_served_again() {
    // server.rs: connections are capped by a budget of three quarters of
    // supd's open-file limit (DESIGN: caps everywhere a client could make
    // the daemon grow). A soft limit of 400 makes the budget 300.
    const CAP: usize = 300;
    let (supd, sleeper) = start_with_sleeper();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a live local first.
    let rc = unsafe {
        libc::prlimit(
            supd.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: 400,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, setting the soft limit below the hard one.
    let rc = unsafe {
        libc::prlimit(
            supd.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut held = Vec::with_capacity(CAP);
    for i in 0..CAP {
        let mut c = Conn::open(&supd.socket);
        // Past the first-request timeout: each is a live, served client.
        assert_ok(&c.call(&req(json!(i), "version", json!({}))), &json!(i));
        held.push(c);
    }
    let mut extra = Conn::open(&supd.socket);
    extra.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stop\",\"params\":{\"all\":true}}\n");
    let refusal = extra.recv();
    assert!(refusal.get("error").is_some(), "over the cap: {refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too many connections"), "{refusal}");
    assert!(refusal.get("result").is_none(), "over the cap: {refusal}");
    assert!(
        refusal["error"]["data"]["kind"].is_string(),
        "the refusal has a kind: {refusal}"
    );
    // Closed (reset, since the request it sent was never read).
    let mut rest = String::new();
    match extra.reader.read_line(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the refused connection should be closed: {other:?} {rest:?}"),
    }
    // The held ones still work.
    let last = held.last_mut().expect("held");
    assert_ok(
        &last.call(&req(json!("still"), "version", json!({}))),
        &json!("still"),
    );
    // One leaves; a newcomer is served.
    drop(held.pop());
    poll(
        "a newcomer to be served once a slot is free",
        DEADLINE,
        || {
            let mut c = Conn::open(&supd.socket);
            let a = c.call(&req(json!("new"), "version", json!({})));
            a.get("result").is_some().then_some(())
        },
    );
    drop(held);
    assert_undisturbed(&supd, sleeper);
}

#[test]
fn version_reports_version_protocol_and_the_daemon_pid() {
    let (supd, sleeper) = start_with_sleeper();
    for params in [json!({}), Value::Null] {
        let request = if params.is_null() {
            json!({ "jsonrpc": "2.0", "id": "v", "method": "version" })
        } else {
            req(json!("v"), "version", params)
        };
        let answer = Conn::open(&supd.socket).call(&request);
        let r = assert_ok(&answer, &json!("v"));
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{answer}");
        assert!(r["protocol"].as_u64().is_some_and(|p| p >= 1), "{answer}");
        assert_eq!(r["pid"], supd.pid(), "{answer}");
    }
    let (code, out, err) = supd.ctl_text(&["--json", "version"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("supctl --json version");
    assert_eq!(v["pid"], supd.pid(), "{out}");
    assert_undisturbed(&supd, sleeper);
}

// ---------------------------------------------------------------------------
// The socket file
// ---------------------------------------------------------------------------

#[test]
fn the_socket_file_is_mode_0600() {
    let supd = Supd::start(CONFIG);
    let meta = std::fs::symlink_metadata(&supd.socket).expect("socket exists");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode {:o}",
        meta.permissions().mode()
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        nix::unistd::geteuid().as_raw(),
        "owned by supd's user"
    );
}

#[test]
fn a_second_supd_on_a_live_socket_is_refused() {
    let (supd, sleeper) = start_with_sleeper();
    let mut bystander = Conn::open(&supd.socket);
    let (code, out, err) = run_supd(
        &[
            "--config".as_ref(),
            supd.config.as_os_str(),
            "--socket".as_ref(),
            supd.socket.as_os_str(),
        ],
        Some(&supd.marker),
    );
    assert_ne!(
        code, 0,
        "a second supd on a live socket must fail; {out}{err}"
    );
    assert!(
        err.contains("another supd is running"),
        "the refusal says why: {err}"
    );
    assert!(
        err.contains(&supd.socket.display().to_string()),
        "the refusal names the socket: {err}"
    );
    // The first still owns its socket file and serves on it.
    let meta = std::fs::symlink_metadata(&supd.socket).expect("socket still there");
    assert!(meta.file_type().is_socket());
    assert_bystander_served(&mut bystander, &supd);
    assert_undisturbed(&supd, sleeper);
    // No second copy of sleeper was started by the refused supd.
    let sleepers: Vec<u32> = supd
        .marked_processes()
        .into_iter()
        .filter(|&p| p != supd.pid() && !is_sentinel(p))
        .collect();
    assert_eq!(sleepers, [sleeper], "processes carrying the marker");
}

#[test]
fn a_stale_socket_from_a_killed_supd_is_replaced() {
    let mut supd = Supd::start(
        r#"
[program.idle]
command = ["sleep", "300"]
autostart = false
"#,
    );
    let old_pid = supd.pid();
    supd.signal_daemon(libc::SIGKILL);
    supd.wait_exit(DEADLINE);
    // The file is left behind, and nobody listens on it.
    let meta = std::fs::symlink_metadata(&supd.socket).expect("stale socket left behind");
    assert!(meta.file_type().is_socket());
    let refused = UnixStream::connect(&supd.socket).expect_err("nobody listens");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    supd.restart_daemon();
    assert_ne!(supd.pid(), old_pid);
    let answer = raw_exchange(
        &supd.socket,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}\n",
    );
    assert_eq!(assert_ok(&answer, &json!(1))["pid"], supd.pid(), "{answer}");
    let meta = std::fs::symlink_metadata(&supd.socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(supd.status("idle").state.as_str(), "stopped");
}

#[test]
fn a_path_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(
        dir.path(),
        "supd.toml",
        "[program.idle]\ncommand = [\"sleep\", \"300\"]\nautostart = false\n",
    );
    let target = write_file(dir.path(), "precious.txt", "do not delete me\n");
    let regular = write_file(dir.path(), "regular.sock", "precious data\n");
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let folder = dir.path().join("folder.sock");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("inside"), "x").expect("file in folder");

    for path in [&regular, &link, &folder] {
        let (code, out, err) = run_supd(
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "--socket".as_ref(),
                path.as_os_str(),
            ],
            None,
        );
        assert_ne!(code, 0, "supd must refuse {}: {out}{err}", path.display());
        assert!(
            err.contains("not a socket"),
            "{}: the refusal says why: {err}",
            path.display()
        );
        assert!(
            err.contains(&path.display().to_string()),
            "the refusal names the path: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&regular).expect("regular file kept"),
        "precious data\n"
    );
    let link_meta = std::fs::symlink_metadata(&link).expect("symlink kept");
    assert!(link_meta.file_type().is_symlink());
    assert_eq!(
        std::fs::read_to_string(&target).expect("target kept"),
        "do not delete me\n"
    );
    assert!(folder.is_dir());
    assert_eq!(
        std::fs::read_to_string(folder.join("inside")).expect("kept"),
        "x"
    );
}

// ---------------------------------------------------------------------------
// Config errors, --check-config, supctl usage
// ---------------------------------------------------------------------------

/// Five problems: an unknown key with a near miss in [supd], a bad duration,
/// a string for a bool, a bare number for a duration, a misspelt key.
const BAD_CONFIG: &str = r#"[supd]
shutdown_timout = "5s"

[program.web]
command = ["sleep", "60"]
stop_timeout = "10 parsecs"
autostart = "yes"
start_secs = 5
restrat = "always"
"#;

/// (line, key column, value column, words the message must hold)
const BAD_CONFIG_PROBLEMS: &[(usize, usize, usize, &[&str])] = &[
    (
        2,
        1,
        19,
        &["shutdown_timout", "did you mean \"shutdown_timeout\""],
    ),
    (6, 1, 16, &["stop_timeout", "10 parsecs"]),
    (7, 1, 13, &["autostart", "true or false"]),
    (8, 1, 14, &["start_secs", "unit"]),
    (9, 1, 11, &["restrat", "did you mean \"restart\""]),
];

/// The `path:line:col: message` lines of `stderr` for `path`.
fn config_error_lines(stderr: &str, path: &Path) -> Vec<String> {
    let prefix = format!("{}:", path.display());
    stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Checks that `lines` name every problem of [`BAD_CONFIG`], in file order.
fn assert_every_problem_listed(lines: &[String], path: &Path, stderr: &str) {
    assert_eq!(
        lines.len(),
        BAD_CONFIG_PROBLEMS.len(),
        "one line a problem; stderr:\n{stderr}"
    );
    for (line_text, (line, key_col, value_col, words)) in lines.iter().zip(BAD_CONFIG_PROBLEMS) {
        let at_key = format!("{}:{line}:{key_col}: ", path.display());
        let at_value = format!("{}:{line}:{value_col}: ", path.display());
        assert!(
            line_text.starts_with(&at_key) || line_text.starts_with(&at_value),
            "expected {at_key:?} or {at_value:?}; got {line_text:?}; stderr:\n{stderr}"
        );
        for w in *words {
            assert!(line_text.contains(w), "{line_text:?} should mention {w:?}");
        }
    }
}

#[test]
fn config_errors_at_start_up_list_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(dir.path(), "bad.toml", BAD_CONFIG);
    let socket = dir.path().join("supd.sock");
    let marker = format!("protocol-config-{}", std::process::id());
    let (code, out, err) = run_supd(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ],
        Some(&marker),
    );
    assert_eq!(code, 1, "{out}{err}");
    let lines = config_error_lines(&err, &config);
    assert_every_problem_listed(&lines, &config, &err);
    assert!(!socket.exists(), "a bad config must not bind the socket");
    assert!(
        processes_with_env("SUP_TEST_MARKER", &marker).is_empty(),
        "a bad config started something"
    );
}

#[test]
fn check_config_accepts_a_valid_file_and_lists_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = write_file(
        dir.path(),
        "good.toml",
        r#"
[supd]
shutdown_timeout = "5s"

[program.web]
command = ["sleep", "60"]
stop_timeout = "10s"
autostart = false
"#,
    );
    let (code, out, err) = run_supd(&["--check-config".as_ref(), good.as_os_str()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid"), "{out}");

    let bad = write_file(dir.path(), "bad.toml", BAD_CONFIG);
    let (code, out, err) = run_supd(&["--check-config".as_ref(), bad.as_os_str()], None);
    assert_eq!(code, 1, "{out}{err}");
    let checked = config_error_lines(&err, &bad);
    assert_every_problem_listed(&checked, &bad, &err);

    // The same lines as a start-up with that file.
    let socket = dir.path().join("supd.sock");
    let (code, _, err2) = run_supd(
        &[
            "--config".as_ref(),
            bad.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ],
        None,
    );
    assert_eq!(code, 1, "{err2}");
    assert_eq!(config_error_lines(&err2, &bad), checked);

    // A missing file is an error with its place too.
    let missing = dir.path().join("missing.toml");
    let (code, out, err) = run_supd(&["--check-config".as_ref(), missing.as_os_str()], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{}:1:1: ", missing.display())),
        "{err}"
    );
}

#[test]
fn supctl_usage_errors_exit_2() {
    let (supd, sleeper) = start_with_sleeper();
    let socket = supd.socket.to_str().expect("utf-8 path");
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &[],
        &["wait"],
        &["wait", "sleeper", "--timeout", "soon"],
        &["signal", "sleeper"],
        &["signal"],
        &["remove"],
        &["stop", "--all", "sleeper"],
        &["status", "--bogus-flag"],
        &["kill", "--signal", "KILL", "sleeper"],
    ];
    for args in cases {
        let (code, out, err) = run_bounded(&mut supctl_cmd(Path::new(socket), args), DEADLINE);
        assert_eq!(code, 2, "supctl {args:?}: {out}{err}");
        assert!(!err.trim().is_empty(), "supctl {args:?} says what is wrong");
    }
    assert_undisturbed(&supd, sleeper);
}
