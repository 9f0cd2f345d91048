//! Every `supctl` verb, black-box through the real binary (and the JSON-RPC
//! client where the wire's `data.kind` matters): what it does and the exit
//! status SPEC §4 fixes for it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sup::client::ClientError;
use sup::protocol::{ErrorKind, RpcError};

use crate::util::*;

// ---------------------------------------------------------------- helpers

/// A `sleep 300` that counts as running at once and is never restarted.
fn sleeper(name: &str) -> String {
    prog(
        name,
        &["sleep", "300"],
        "start_secs = \"0s\"\nrestart = \"never\"",
    )
}

/// The same, not started with supd.
fn idle_sleeper(name: &str) -> String {
    prog(
        name,
        &["sleep", "300"],
        "start_secs = \"0s\"\nrestart = \"never\"\nautostart = false",
    )
}

/// A shell program that waits for the file `go` (relative to the fixture's
/// temp folder, the config's folder, which `cwd = "."` names) to appear,
/// then exits `code`.
fn exit_on_file(name: &str, go: &str, code: i32) -> String {
    let script = format!("while [ ! -e '{go}' ]; do sleep 0.05; done; exit {code}");
    prog(
        name,
        &["sh", "-c", &script],
        "start_secs = \"0s\"\nrestart = \"never\"\ncwd = \".\"",
    )
}

/// Calls `method` and expects a JSON-RPC error answer.
fn rpc_error(supd: &Supd, method: &str, params: Value) -> RpcError {
    match supd.call(method, params) {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("{method}: expected an error answer, got {other:?}"),
    }
}

/// `supctl --json status ARGS...`: (exit status, parsed stdout).
fn status_json(supd: &Supd, names: &[&str]) -> (i32, Value) {
    let (code, v, _) = ctl_json(supd, &[&["status"], names].concat());
    (code, v)
}

/// The one row for `name` in `supctl --json status`.
fn json_row(supd: &Supd, name: &str) -> Value {
    let (_, v) = status_json(supd, &[name]);
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{v}");
    rows[0].clone()
}

/// A `supctl` process running in the background; killed if still alive when
/// dropped.
struct Bg(Option<Child>);

impl Bg {
    fn spawn(supd: &Supd, args: &[&str]) -> Bg {
        Bg(Some(supd.ctl_spawn(args)))
    }

    fn still_running(&mut self) -> bool {
        self.0
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
            .is_none()
    }

    /// Waits (bounded) for it to end: (exit status, stdout, stderr).
    fn finish(mut self) -> (i32, String, String) {
        let mut child = self.0.take().expect("child");
        poll("background supctl to exit", DEADLINE, || {
            child.try_wait().expect("try_wait")
        });
        output_text(&child.wait_with_output().expect("output"))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// stderr is exactly one non-empty line.
fn assert_one_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr should be one line: {stderr:?}");
    assert!(!lines[0].trim().is_empty(), "stderr line is empty");
}

// ----------------------------------------------------------------- status

#[test]
fn status_exits_0_when_every_listed_program_is_running() {
    let supd = Supd::start(&(sleeper("a") + &sleeper("b")));
    running_pid(&supd, "a");
    running_pid(&supd, "b");
    for args in [&["status"][..], &["status", "a"], &["status", "a", "b"]] {
        let (code, out, err) = supd.ctl_text(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
}

#[test]
fn status_exits_3_when_any_listed_program_is_not_running() {
    let supd = Supd::start(&(sleeper("up") + &idle_sleeper("down")));
    running_pid(&supd, "up");
    assert_eq!(supd.status("down").state.as_str(), "stopped");

    let (code, out, err) = supd.ctl_text(&["status"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("up") && out.contains("down"), "{out}");
    let (code, out, err) = supd.ctl_text(&["status", "down"]);
    assert_eq!(code, 3, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["status", "up", "down"]);
    assert_eq!(code, 3, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["status", "up"]);
    assert_eq!(code, 0, "{out}{err}");
    // The JSON form keeps the same exit status.
    let (code, v) = status_json(&supd, &["down"]);
    assert_eq!(code, 3, "{v}");
}

#[test]
fn status_exits_4_for_an_unknown_name() {
    let supd = Supd::start(&sleeper("known"));
    running_pid(&supd, "known");
    for args in [
        &["status", "nosuch"][..],
        &["status", "known", "nosuch"],
        &["--json", "status", "nosuch"],
    ] {
        let (code, out, err) = supd.ctl_text(args);
        assert_eq!(code, 4, "{args:?}: {out}{err}");
        assert_one_line(&err);
        assert!(err.contains("nosuch"), "stderr should name it: {err}");
    }
}

#[test]
fn status_table_has_the_spec_header_and_aligned_columns() {
    let supd = Supd::start(&(sleeper("a") + &idle_sleeper("a_much_longer_name")));
    running_pid(&supd, "a");
    let (code, out, err) = supd.ctl_text(&["status"]);
    assert_eq!(code, 3, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {out}");
    let header = lines[0];
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        &words[..6],
        ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RETURNCODE"],
        "{out}"
    );
    assert!(header.starts_with("NAME"), "{out}");
    // Every cell starts where its column's title starts.
    let starts: Vec<usize> = words[1..6]
        .iter()
        .map(|w| header.find(w).expect("title in header"))
        .collect();
    for row in &lines[1..] {
        let bytes = row.as_bytes();
        for (&col, title) in starts.iter().zip(&words[1..6]) {
            assert!(
                bytes.len() > col && bytes[col] != b' ' && bytes[col - 1] == b' ',
                "column {title} (at {col}) is not aligned in {row:?}\n{out}"
            );
        }
    }
    let row_a = lines.iter().find(|l| l.starts_with("a ")).expect("row a");
    let cells: Vec<&str> = row_a.split_whitespace().collect();
    assert_eq!(cells[1], "running", "{row_a}");
    assert_eq!(
        cells[2],
        supd.status("a").pid.unwrap().to_string(),
        "{row_a}"
    );
    let row_b = lines
        .iter()
        .find(|l| l.starts_with("a_much_longer_name"))
        .expect("row of the stopped one");
    assert_eq!(row_b.split_whitespace().nth(1), Some("stopped"), "{row_b}");
}

#[test]
fn status_json_rows_have_every_spec_field() {
    let supd = Supd::start(
        &(sleeper("run")
            + &prog(
                "dmn",
                &["sleep", "300"],
                "start_secs = \"0s\"\ndaemon = true",
            )
            + &idle_sleeper("idle")),
    );
    let pid = running_pid(&supd, "run");
    running_pid(&supd, "dmn");
    let (code, v) = status_json(&supd, &[]);
    assert_eq!(code, 3, "idle is not running: {v}");
    let rows = v.as_array().expect("status --json is an array");
    assert_eq!(rows.len(), 3, "{v}");
    for row in rows {
        for field in [
            "name",
            "state",
            "pid",
            "returncode",
            "exit_code",
            "signal",
            "restarts",
            "uptime_secs",
            "daemon",
            "orphans",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        assert!(row["orphans"].is_array(), "{row}");
        assert!(row["restarts"].is_u64(), "{row}");
        assert!(row["daemon"].is_boolean(), "{row}");
    }
    let run = rows.iter().find(|r| r["name"] == "run").expect("run row");
    assert_eq!(run["state"], "running");
    assert_eq!(run["pid"], json!(pid));
    assert!(
        run["uptime_secs"].as_f64().is_some_and(|u| u >= 0.0),
        "{run}"
    );
    assert_eq!(run["returncode"], Value::Null, "{run}");
    assert_eq!(run["exit_code"], Value::Null, "{run}");
    assert_eq!(run["signal"], Value::Null, "{run}");
    assert_eq!(run["restarts"], 0);
    assert_eq!(run["daemon"], false);
    let dmn = rows.iter().find(|r| r["name"] == "dmn").expect("dmn row");
    assert_eq!(dmn["daemon"], true, "{dmn}");
    let idle = rows.iter().find(|r| r["name"] == "idle").expect("idle row");
    assert_eq!(idle["state"], "stopped");
    assert_eq!(idle["pid"], Value::Null, "{idle}");
    assert_eq!(idle["uptime_secs"], Value::Null, "{idle}");
    assert_eq!(idle["returncode"], Value::Null, "never run: {idle}");
}

#[test]
fn status_json_returncode_forms_after_exit_and_signals() {
    let supd = Supd::start(
        &(sleeper("running")
            + &prog(
                "exits3",
                &["sh", "-c", "exit 3"],
                "start_secs = \"0s\"\nrestart = \"never\"",
            )
            + &sleeper("termed")
            + &sleeper("killed")
            + &sleeper("usr1")),
    );
    for name in ["running", "termed", "killed", "usr1"] {
        running_pid(&supd, name);
    }
    supd.wait_state("exits3", "exited");
    let (code, out, err) = supd.ctl_text(&["stop", "termed"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["kill", "killed"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["signal", "usr1", "USR1"]);
    assert_eq!(code, 0, "{out}{err}");
    supd.wait_state("usr1", "exited");

    let row = json_row(&supd, "running");
    assert_eq!(
        (&row["returncode"], &row["exit_code"], &row["signal"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "{row}"
    );

    let row = json_row(&supd, "exits3");
    assert_eq!(row["state"], "exited", "{row}");
    assert_eq!(row["returncode"], 3, "{row}");
    assert_eq!(row["exit_code"], 3, "{row}");
    assert_eq!(row["signal"], Value::Null, "{row}");
    assert_eq!(row["pid"], Value::Null, "{row}");
    assert_eq!(row["uptime_secs"], Value::Null, "{row}");

    let row = json_row(&supd, "termed");
    assert_eq!(row["state"], "stopped", "{row}");
    assert_eq!(row["returncode"], -15, "{row}");
    assert_eq!(row["exit_code"], Value::Null, "{row}");
    assert_eq!(row["signal"], "SIGTERM", "{row}");

    let row = json_row(&supd, "killed");
    assert_eq!(row["state"], "stopped", "{row}");
    assert_eq!(row["returncode"], -9, "{row}");
    assert_eq!(row["exit_code"], Value::Null, "{row}");
    assert_eq!(row["signal"], "SIGKILL", "{row}");

    let row = json_row(&supd, "usr1");
    assert_eq!(row["state"], "exited", "{row}");
    assert_eq!(row["returncode"], -libc::SIGUSR1, "{row}");
    assert_eq!(row["exit_code"], Value::Null, "{row}");
    assert_eq!(row["signal"], "SIGUSR1", "{row}");
}

// ------------------------------------------------------------------ start

#[test]
fn start_returns_once_running_and_a_second_start_is_already_running() {
    // start_secs is not zero: `start` must not return while it is `starting`.
    let supd = Supd::start(&prog(
        "p",
        &["sleep", "300"],
        "start_secs = \"300ms\"\nrestart = \"never\"\nautostart = false",
    ));
    assert_eq!(supd.status("p").state.as_str(), "stopped");
    let (code, out, err) = supd.ctl_text(&["start", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    let s = supd.status("p");
    assert_eq!(s.state.as_str(), "running", "start returned before running");
    let pid = s.pid.expect("pid");
    assert!(alive(pid));

    let (code, out, err) = supd.ctl_text(&["start", "p"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_one_line(&err);
    assert!(err.contains("already"), "{err}");

    let e = rpc_error(&supd, "start", json!({ "names": ["p"] }));
    assert_eq!(e.kind(), ErrorKind::AlreadyRunning, "{e:?}");
    // On the wire: data.kind is the snake_case string.
    let v = raw_exchange(
        &supd.socket,
        b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"start\",\"params\":{\"names\":[\"p\"]}}\n",
    );
    assert_eq!(v["id"], 7, "{v}");
    assert_eq!(v["error"]["data"]["kind"], "already_running", "{v}");
    // Nothing changed: the same process runs on.
    assert_eq!(supd.status("p").pid, Some(pid));
    assert!(alive(pid));
}

#[test]
fn start_of_a_program_that_cannot_start_exits_1_with_the_reason() {
    let supd = Supd::start(
        &(prog(
            "missing",
            &["/nonexistent/definitely-not-here"],
            "autostart = false",
        ) + &prog(
            "fails",
            &["sh", "-c", "exit 1"],
            "autostart = false\nstart_secs = \"2s\"\nstart_retries = 0",
        )),
    );
    for name in ["missing", "fails"] {
        let (code, out, err) = supd.ctl_text(&["start", name]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert_one_line(&err);
        assert!(err.contains(name), "{name}: the reason names it: {err}");
        assert_eq!(supd.status(name).state.as_str(), "fatal", "{name}");
    }
}

#[test]
fn start_all_and_stop_all_act_on_every_program() {
    let supd = Supd::start(&(idle_sleeper("a") + &idle_sleeper("b") + &idle_sleeper("c")));
    let (code, out, err) = supd.ctl_text(&["start", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut pids = Vec::new();
    for s in supd.status_all() {
        assert_eq!(s.state.as_str(), "running", "{}", s.name);
        let pid = s.pid.expect("pid");
        assert!(alive(pid));
        pids.push(pid);
    }
    assert_eq!(pids.len(), 3);
    let (code, out, err) = supd.ctl_text(&["status"]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = supd.ctl_text(&["stop", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    for s in supd.status_all() {
        assert_eq!(s.state.as_str(), "stopped", "{}", s.name);
        assert_eq!(s.returncode, Some(-15), "{}", s.name);
        assert_eq!(s.pid, None, "{}", s.name);
    }
    for pid in pids {
        assert!(!alive(pid), "{pid} outlived stop --all");
    }
    let (code, out, err) = supd.ctl_text(&["status"]);
    assert_eq!(code, 3, "{out}{err}");
}

// ------------------------------------------------------------------- stop

#[test]
fn stop_ends_the_program_with_sigterm_and_returns_after_the_exit() {
    let supd = Supd::start(&sleeper("p"));
    let pid = running_pid(&supd, "p");
    let (code, out, err) = supd.ctl_text(&["stop", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("p") && out.contains("stopped"), "{out}");
    // `stop` returns once the process has exited: no polling needed.
    assert!(!alive(pid), "pid {pid} still alive after stop returned");
    let s = supd.status("p");
    assert_eq!(s.state.as_str(), "stopped");
    assert_eq!(s.returncode, Some(-15));
    assert_eq!(s.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(s.pid, None);
    // A stopped program stays stopped (no restart).
    let (code, out, _) = supd.ctl_text(&["status", "p"]);
    assert_eq!(code, 3, "{out}");
}

// ---------------------------------------------------------------- restart

#[test]
fn restart_runs_a_new_process() {
    let supd = Supd::start(&sleeper("p"));
    let old = running_pid(&supd, "p");
    let (code, out, err) = supd.ctl_text(&["restart", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    let s = supd.status("p");
    assert_eq!(
        s.state.as_str(),
        "running",
        "restart returned before running"
    );
    let new = s.pid.expect("a pid");
    assert_ne!(new, old, "restart kept the old process");
    assert!(alive(new));
    assert!(!alive(old), "old pid {old} still alive");
    // The program is up again, and `status` exits 0 for it.
    let (code, out, _) = supd.ctl_text(&["status", "p"]);
    assert_eq!(code, 0, "{out}");
}

// ------------------------------------------------------------------- kill

#[test]
fn kill_sends_sigkill_and_kill_of_a_stopped_program_is_not_running() {
    // The program ignores TERM: only a real SIGKILL ends it promptly.
    let supd = Supd::start(&prog(
        "p",
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        "start_secs = \"0s\"\nrestart = \"never\"",
    ));
    let pid = running_pid(&supd, "p");
    let started = Instant::now();
    let (code, out, err) = supd.ctl_text(&["kill", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "kill took {:?}: not SIGKILL at once?",
        started.elapsed()
    );
    assert!(!alive(pid));
    let s = supd.status("p");
    assert_eq!(s.state.as_str(), "stopped");
    assert_eq!(s.returncode, Some(-9));
    assert_eq!(s.signal.as_deref(), Some("SIGKILL"));

    let (code, out, err) = supd.ctl_text(&["kill", "p"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_one_line(&err);
    let e = rpc_error(&supd, "kill", json!({ "names": ["p"] }));
    assert_eq!(e.kind(), ErrorKind::NotRunning, "{e:?}");
}

// ----------------------------------------------------------------- signal

#[test]
fn signal_accepts_a_name_a_sig_name_and_a_number() {
    // The script's files are relative: `cwd = "."` is the config's folder,
    // the fixture's temp folder.
    let supd = Supd::start(&prog(
        "h",
        &[
            "sh",
            "-c",
            "trap 'echo got >> got' HUP; echo ready > ready; while :; do sleep 0.1; done",
        ],
        "start_secs = \"0s\"\nrestart = \"never\"\ncwd = \".\"",
    ));
    let got = supd.dir.path().join("got");
    let ready = supd.dir.path().join("ready");
    let pid = running_pid(&supd, "h");
    poll("the trap to be set", DEADLINE, || {
        ready.exists().then_some(())
    });
    let count = || {
        std::fs::read_to_string(&got)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for (n, sig) in ["HUP", "SIGHUP", "1"].into_iter().enumerate() {
        let (code, out, err) = supd.ctl_text(&["signal", "h", sig]);
        assert_eq!(code, 0, "signal {sig}: {out}{err}");
        poll(&format!("the trap to run after {sig}"), DEADLINE, || {
            (count() == n + 1).then_some(())
        });
    }
    let s = supd.status("h");
    assert_eq!(s.state.as_str(), "running");
    assert_eq!(s.pid, Some(pid), "HUP must not end or replace the program");
}

#[test]
fn signal_to_a_program_not_running_exits_1() {
    let supd = Supd::start(&(idle_sleeper("never") + &sleeper("stopped")));
    running_pid(&supd, "stopped");
    let (code, out, err) = supd.ctl_text(&["stop", "stopped"]);
    assert_eq!(code, 0, "{out}{err}");
    for name in ["never", "stopped"] {
        let (code, out, err) = supd.ctl_text(&["signal", name, "HUP"]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert_one_line(&err);
        assert!(err.contains(name), "{err}");
        let e = rpc_error(&supd, "signal", json!({ "names": [name], "signal": "HUP" }));
        assert_eq!(e.kind(), ErrorKind::NotRunning, "{e:?}");
    }
}

#[test]
fn signal_with_a_bad_signal_exits_1_with_a_clear_message() {
    let supd = Supd::start(&sleeper("p"));
    let pid = running_pid(&supd, "p");
    for bad in ["NOPE", "SIGNOPE", "0", "999", "-1"] {
        let (code, out, err) = supd.ctl_text(&["signal", "p", bad]);
        // "-1" could be taken for an option by the parser: a usage error (2)
        // is a fair answer for it too.
        let want: &[i32] = if bad.starts_with('-') { &[1, 2] } else { &[1] };
        assert!(
            want.contains(&code),
            "signal {bad}: exit {code}: {out}{err}"
        );
        assert!(!err.trim().is_empty(), "signal {bad}: no message");
        if code == 1 {
            assert_one_line(&err);
            assert!(
                err.contains(bad) && err.to_lowercase().contains("signal"),
                "signal {bad}: the message should name the bad signal: {err}"
            );
        }
    }
    let s = supd.status("p");
    assert_eq!(s.state.as_str(), "running");
    assert_eq!(s.pid, Some(pid));
    assert!(alive(pid));
}

// ------------------------------------------------------------------- wait

#[test]
fn wait_exits_with_the_program_exit_code() {
    let supd = Supd::start(&exit_on_file("job", "go", 7));
    let pid = running_pid(&supd, "job");
    let mut waiter = Bg::spawn(&supd, &["wait", "job"]);
    assert!(waiter.still_running(), "wait returned while job runs");
    std::fs::write(supd.dir.path().join("go"), "").expect("go");
    let (code, out, err) = waiter.finish();
    assert_eq!(code, 7, "{out}{err}");
    assert!(out.contains("job"), "{out}");
    let s = supd.status("job");
    assert_eq!(s.state.as_str(), "exited");
    assert_eq!(s.returncode, Some(7));
    assert!(!alive(pid));
}

#[test]
fn wait_exits_128_plus_n_when_the_program_is_killed_by_signal_n() {
    let supd = Supd::start(&(sleeper("usr1") + &sleeper("killed")));
    running_pid(&supd, "usr1");
    running_pid(&supd, "killed");
    let w1 = Bg::spawn(&supd, &["wait", "usr1"]);
    let w2 = Bg::spawn(&supd, &["wait", "killed"]);
    let (code, out, err) = supd.ctl_text(&["signal", "usr1", "USR1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["kill", "killed"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w1.finish();
    assert_eq!(code, 128 + libc::SIGUSR1, "{out}{err}");
    let (code, out, err) = w2.finish();
    assert_eq!(code, 128 + libc::SIGKILL, "{out}{err}");
}

#[test]
fn wait_timeout_exits_124_and_leaves_the_program_running() {
    let supd = Supd::start(&sleeper("p"));
    let pid = running_pid(&supd, "p");
    let began = Instant::now();
    let (code, out, err) = supd.ctl_text(&["wait", "p", "--timeout", "0.3"]);
    let took = began.elapsed();
    assert_eq!(code, 124, "{out}{err}");
    assert_one_line(&err);
    assert!(
        took >= Duration::from_millis(300),
        "gave up after {took:?}, before the 0.3 s timeout"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let s = supd.status("p");
    assert_eq!(s.state.as_str(), "running");
    assert_eq!(s.pid, Some(pid), "the program must keep running");
    assert!(alive(pid));
    let e = match supd.client().wait("p", Some(0.05)) {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected a timeout, got {other:?}"),
    };
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert_eq!(supd.status("p").pid, Some(pid));
}

#[test]
fn many_concurrent_waiters_all_get_the_result() {
    let supd = Supd::start(&exit_on_file("job", "go", 7));
    running_pid(&supd, "job");
    let mut waiters: Vec<Bg> = (0..5).map(|_| Bg::spawn(&supd, &["wait", "job"])).collect();
    // And one through the protocol, on its own connection.
    let client = supd.client();
    let rpc = std::thread::spawn(move || {
        let mut client = client;
        client.wait("job", None)
    });
    for w in &mut waiters {
        assert!(w.still_running(), "a waiter returned while job runs");
    }
    std::fs::write(supd.dir.path().join("go"), "").expect("go");
    for w in waiters {
        let (code, out, err) = w.finish();
        assert_eq!(code, 7, "{out}{err}");
    }
    poll("the protocol waiter", DEADLINE, || {
        rpc.is_finished().then_some(())
    });
    let v =
        serde_json::to_value(rpc.join().expect("thread").expect("wait answer")).expect("to JSON");
    assert_eq!(v["returncode"], 7, "{v}");
    assert_eq!(v["exit_code"], 7, "{v}");
    assert_eq!(v["name"], "job", "{v}");
}

#[test]
fn wait_on_a_program_never_started_exits_1() {
    let supd = Supd::start(&idle_sleeper("idle"));
    let (code, out, err) = supd.ctl_text(&["wait", "idle", "--timeout", "5"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_one_line(&err);
    assert!(err.contains("idle"), "{err}");
    let e = rpc_error(&supd, "wait", json!({ "name": "idle" }));
    assert_eq!(e.kind(), ErrorKind::NotRunning, "{e:?}");
}

#[test]
fn wait_on_an_ended_program_returns_its_last_status_at_once() {
    let supd = Supd::start(
        &(prog(
            "exits5",
            &["sh", "-c", "exit 5"],
            "start_secs = \"0s\"\nrestart = \"never\"",
        ) + &sleeper("stopped")),
    );
    supd.wait_state("exits5", "exited");
    running_pid(&supd, "stopped");
    let (code, out, err) = supd.ctl_text(&["stop", "stopped"]);
    assert_eq!(code, 0, "{out}{err}");
    // With a timeout: blocking would end in 124, not the last status.
    for _ in 0..2 {
        let (code, out, err) = supd.ctl_text(&["wait", "exits5", "--timeout", "5"]);
        assert_eq!(code, 5, "{out}{err}");
    }
    let (code, out, err) = supd.ctl_text(&["wait", "stopped", "--timeout", "5"]);
    assert_eq!(code, 128 + libc::SIGTERM, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["--json", "wait", "exits5"]);
    assert_eq!(code, 5, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("wait --json is JSON");
    assert_eq!(v["returncode"], 5, "{v}");
}

#[test]
fn wait_with_a_nan_timeout_is_refused_not_unbounded() {
    let supd = Supd::start(&sleeper("p"));
    let pid = running_pid(&supd, "p");
    let mut waiter = Bg::spawn(&supd, &["wait", "p", "--timeout", "nan"]);
    // A bad timeout is refused at once; the bug blocks for ever.
    poll(
        "supctl wait --timeout nan to be refused (not block)",
        Duration::from_secs(3),
        || (!waiter.still_running()).then_some(()),
    );
    let (code, out, err) = waiter.finish();
    assert!(
        code == 1 || code == 2,
        "want a usage (2) or request (1) error, got {code}: {out}{err}"
    );
    assert!(!err.trim().is_empty(), "no message");
    assert_eq!(supd.status("p").pid, Some(pid));
}

// ----------------------------------------------------------------- remove

#[test]
fn remove_refuses_a_running_program_and_forgets_a_stopped_one() {
    let supd = Supd::start(&(sleeper("p") + &sleeper("other")));
    let pid = running_pid(&supd, "p");
    running_pid(&supd, "other");
    let (code, out, err) = supd.ctl_text(&["remove", "p"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_one_line(&err);
    let e = rpc_error(&supd, "remove", json!({ "names": ["p"] }));
    assert_eq!(e.kind(), ErrorKind::Running, "{e:?}");
    let v = raw_exchange(
        &supd.socket,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"remove\",\"params\":{\"names\":[\"p\"]}}\n",
    );
    assert_eq!(v["error"]["data"]["kind"], "running", "{v}");
    let s = supd.status("p");
    assert_eq!(
        s.state.as_str(),
        "running",
        "a refused remove changes nothing"
    );
    assert_eq!(s.pid, Some(pid));

    let (code, out, err) = supd.ctl_text(&["stop", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["remove", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = supd.ctl_text(&["status", "p"]);
    assert_eq!(code, 4, "{out}{err}");
    let names: Vec<String> = supd.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["other"]);
    // Gone for the other verbs too.
    let (code, out, err) = supd.ctl_text(&["start", "p"]);
    assert_eq!(code, 1, "{out}{err}");
}

// --------------------------------------------------------------- shutdown

#[test]
fn shutdown_stops_programs_and_supd_exits_0_removing_its_socket() {
    let mut supd = Supd::start(&format!(
        "[supd]\nshutdown_timeout = \"2s\"\n\n{}{}",
        prog(
            "dmn",
            &["sleep", "300"],
            "start_secs = \"0s\"\ndaemon = true"
        ),
        prog(
            "plain",
            &["sleep", "300"],
            "start_secs = \"0s\"\nstop_timeout = \"1s\""
        ),
    ));
    let pids = [running_pid(&supd, "dmn"), running_pid(&supd, "plain")];
    assert!(supd.socket.exists());
    let (code, out, err) = supd.ctl_text(&["shutdown"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = supd.wait_exit(DEADLINE);
    assert_eq!(status, 0, "supd's exit status; log:\n{}", supd.log());
    assert!(!supd.socket.exists(), "the socket file is left behind");
    for pid in pids {
        assert!(!alive(pid), "program pid {pid} outlived supd");
    }
    // And supctl now reports the missing daemon.
    let (code, _, err) = supd.ctl_text(&["status"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn shutdown_waits_for_non_daemon_programs_to_finish() {
    let mut supd = Supd::start(&format!(
        "[supd]\nshutdown_timeout = \"30s\"\n\n{}{}",
        prog(
            "dmn",
            &["sleep", "300"],
            "start_secs = \"0s\"\ndaemon = true"
        ),
        prog(
            "job",
            &[
                "sh",
                "-c",
                "while [ ! -e go ]; do sleep 0.05; done; echo finished > done",
            ],
            "start_secs = \"0s\"\nrestart = \"never\"\ncwd = \".\"",
        ),
    ));
    let dmn = running_pid(&supd, "dmn");
    let job = running_pid(&supd, "job");
    let shutdown = Bg::spawn(&supd, &["shutdown"]);
    // The daemon program going away shows the shutdown is under way.
    poll("the daemon program to be stopped", DEADLINE, || {
        (!alive(dmn)).then_some(())
    });
    assert!(
        alive(job),
        "a daemon = false program was stopped at once instead of waited for"
    );
    std::fs::write(supd.dir.path().join("go"), "").expect("go");
    let (code, out, err) = shutdown.finish();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(supd.wait_exit(DEADLINE), 0, "{}", supd.log());
    assert!(
        supd.dir.path().join("done").exists(),
        "the job did not get to finish its work"
    );
}

// ---------------------------------------------------------------- version

#[test]
fn version_shows_the_daemon_version_protocol_and_pid() {
    let supd = Supd::start("");
    let (code, out, err) = supd.ctl_text(&["version"]);
    assert_eq!(code, 0, "{out}{err}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(out.contains(&format!("supd {version}")), "{out}");
    assert!(out.contains(&format!("pid {}", supd.pid())), "{out}");
    let (code, out, err) = supd.ctl_text(&["--json", "version"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("version --json is JSON");
    assert_eq!(v["version"], version, "{v}");
    assert_eq!(v["pid"], supd.pid(), "{v}");
    assert!(v["protocol"].as_u64().is_some_and(|p| p >= 1), "{v}");
}

// --------------------------------------------------- socket and CLI errors

#[test]
fn supd_socket_env_var_is_used_when_no_socket_option_is_given() {
    let supd = Supd::start(&sleeper("p"));
    running_pid(&supd, "p");
    let out = Command::new(SUPCTL)
        .env("SUPD_SOCKET", &supd.socket)
        .args(["status", "p"])
        .stdin(Stdio::null())
        .output()
        .expect("supctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("p") && text.contains("running"), "{text}");
    // --socket wins over the variable.
    let missing = supd.dir.path().join("absent.sock");
    let out = Command::new(SUPCTL)
        .env("SUPD_SOCKET", &missing)
        .arg("--socket")
        .arg(&supd.socket)
        .args(["status", "p"])
        .stdin(Stdio::null())
        .output()
        .expect("supctl");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_socket_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-supd-here.sock");
    let shown = missing.display().to_string();
    let by_option = Command::new(SUPCTL)
        .env_remove("SUPD_SOCKET")
        .arg("--socket")
        .arg(&missing)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .expect("supctl");
    let by_env = Command::new(SUPCTL)
        .env("SUPD_SOCKET", &missing)
        .args(["stop", "web"])
        .stdin(Stdio::null())
        .output()
        .expect("supctl");
    for out in [by_option, by_env] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_one_line(&err);
        assert!(err.contains(&shown), "stderr should name {shown}: {err}");
    }
}

#[test]
fn unknown_names_exit_1_for_every_verb_but_status() {
    let supd = Supd::start(&sleeper("p"));
    running_pid(&supd, "p");
    for args in [
        &["start", "ghost"][..],
        &["stop", "ghost"],
        &["restart", "ghost"],
        &["kill", "ghost"],
        &["signal", "ghost", "HUP"],
        &["wait", "ghost"],
        &["remove", "ghost"],
    ] {
        let (code, out, err) = supd.ctl_text(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_one_line(&err);
        assert!(err.contains("ghost"), "{args:?}: {err}");
    }
    let e = rpc_error(&supd, "stop", json!({ "names": ["ghost"] }));
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
    // Nothing happened to the program that exists.
    assert_eq!(supd.status("p").state.as_str(), "running");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("unused.sock");
    for args in [
        &[][..],
        &["frobnicate"],
        &["signal", "p"],
        &["wait"],
        &["start", "--all", "p"],
        &["wait", "p", "--timeout", "soon"],
    ] {
        let out = supctl_at(&sock, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
