//! Golden JSON shapes: what scripts read from `supctl --json` and from the
//! socket, pinned in `tests/golden/*.json`. Values that differ from run to
//! run (pids, times, uptimes, messages for people, the version) are
//! replaced by their type (`"<integer>"`, `"<number>"`, `"<string>"`);
//! everything else (keys, states, codes, kinds, nulls) is compared as it
//! is. A change here is a change of the contract: additive only (see
//! docs/protocol.md). After an intended change, rewrite the files with
//! `SUP_UPDATE_GOLDEN=1 cargo nextest run golden` and review the diff.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;

use serde_json::{Map, Value, json};

use crate::util::*;

/// Keys whose values vary between runs.
const VOLATILE: [&str; 9] = [
    "pid",
    "uptime_secs",
    "since",
    "time",
    "exited_at",
    "next_retry_secs",
    "message",
    "version",
    "orphans",
];

fn type_name(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::Bool(_) => json!("<boolean>"),
        Value::Number(n) if n.is_f64() => json!("<number>"),
        Value::Number(_) => json!("<integer>"),
        Value::String(_) => json!("<string>"),
        Value::Array(items) => Value::Array(items.iter().map(type_name).collect()),
        Value::Object(_) => json!("<object>"),
    }
}

/// `v` with every volatile value replaced by its type name.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, val) in obj {
                let val = if VOLATILE.contains(&k.as_str()) {
                    type_name(val)
                } else {
                    normalise(val)
                };
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Compares `live` (normalised) with `tests/golden/NAME.json`, or rewrites
/// the file when SUP_UPDATE_GOLDEN=1.
fn check(name: &str, live: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let live = normalise(live);
    let text = serde_json::to_string_pretty(&live).expect("serialise") + "\n";
    if std::env::var("SUP_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with SUP_UPDATE_GOLDEN=1 cargo nextest run golden",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&golden).expect("golden file is JSON");
    assert!(
        expected == live,
        "the JSON shape of {name} changed.\nexpected ({}):\n{golden}\nlive:\n{text}\n\
         If the change is intended (and additive), rerun with SUP_UPDATE_GOLDEN=1.",
        path.display()
    );
}

const CONFIG: &str = r#"
[program.web]
command = ["sleep", "300"]
start_secs = "100ms"
stop_timeout = "5s"

[program.job]
command = ["sh", "-c", "read line < go.fifo; exit 3"]
cwd = "."
autostart = false
start_secs = "0s"
restart = "never"
"#;

#[test]
fn supctl_json_status_stop_and_wait() {
    let supd = Supd::start(CONFIG);
    supd.wait_state("web", "running");

    let (code, status, _) = ctl_json(&supd, &["status", "web"]);
    assert_eq!(code, 0);
    check("status", &status);

    let (code, stop, _) = ctl_json(&supd, &["stop", "web"]);
    assert_eq!(code, 0);
    check("stop", &stop);

    // A job that exits 3 once released; wait reports how it ended.
    start_job(&supd);
    let waiter = supd.ctl_spawn(&["--json", "wait", "job"]);
    release_job(&supd);
    let out = waiter.wait_with_output().expect("supctl wait");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    check("wait", &serde_json::from_slice(&out.stdout).expect("JSON"));
}

/// Starts `job`, which then blocks reading its FIFO.
fn start_job(supd: &Supd) {
    let fifo = supd.dir.path().join("go.fifo");
    if !fifo.exists() {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
    }
    let (code, _, err) = supd.ctl_text(&["start", "job"]);
    assert_eq!(code, 0, "{err}");
}

/// Lets `job` exit (with 3): a line into its FIFO, once it reads it.
fn release_job(supd: &Supd) {
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = supd.dir.path().join("go.fifo");
    // Non-blocking: fails (ENXIO) until job has the FIFO open.
    let mut w = poll("job to open its FIFO", DEADLINE, || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .ok()
    });
    w.write_all(b"go\n").expect("write the FIFO");
}

#[test]
fn supctl_json_events_line() {
    let supd = Supd::start(CONFIG);
    supd.wait_state("web", "running");
    let mut events = supctl_cmd(&supd.socket, &["--json", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("supctl events");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Stop and start web until the stream (subscribed at some point) shows
    // a stop: running -> stopping -> stopped.
    let line = poll("a stopping -> stopped event", DEADLINE, || {
        let (code, _, err) = supd.ctl_text(&["stop", "web"]);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = supd.ctl_text(&["start", "web"]);
        assert_eq!(code, 0, "{err}");
        rx.try_iter().find(|l| {
            let v: Value = serde_json::from_str(l).expect("one JSON object a line");
            v["from"] == "stopping" && v["to"] == "stopped"
        })
    });
    let _ = events.kill();
    let _ = events.wait();
    let _ = reader.join();
    check("events", &serde_json::from_str(&line).expect("JSON"));
}

/// Sends each request line on one connection and reads one answer each.
fn exchange(supd: &Supd, requests: &[&str]) -> Vec<Value> {
    let stream = UnixStream::connect(&supd.socket).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    requests
        .iter()
        .map(|req| {
            writer.write_all(req.as_bytes()).expect("write");
            writer.write_all(b"\n").expect("write");
            let mut line = String::new();
            reader.read_line(&mut line).expect("answer");
            serde_json::from_str(&line).expect("JSON answer")
        })
        .collect()
}

#[test]
fn json_rpc_answers_on_the_wire() {
    let supd = Supd::start(CONFIG);
    supd.wait_state("web", "running");
    let answers = exchange(
        &supd,
        &[
            r#"{"jsonrpc":"2.0","id":1,"method":"version"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"status","params":{"names":["nope"]}}"#,
            r#"{"jsonrpc":"2.0","id":"three","method":"start","params":{"names":["web"]}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"frobnicate"}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"stop","params":{"names":"web"}}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":"#,
        ],
    );
    let cases = [
        "answer_version",
        "error_not_found",
        "error_already_running",
        "error_method_not_found",
        "error_invalid_params",
        "error_parse_error",
    ];
    let pinned: Map<String, Value> = cases.iter().map(|c| c.to_string()).zip(answers).collect();
    check("rpc", &Value::Object(pinned));

    // wait: the answer, then one notification that ends it.
    check(
        "rpc_wait_timeout",
        &wait_conversation(&supd, r#"{"name":"web","timeout":0.05}"#, || {}),
    );
    start_job(&supd);
    check(
        "rpc_wait_exited",
        &wait_conversation(&supd, r#"{"name":"job"}"#, || release_job(&supd)),
    );
}

/// Sends a `wait` with `params`, reads the answer, calls `then`, and reads
/// the notification.
fn wait_conversation(supd: &Supd, params: &str, then: impl FnOnce()) -> Value {
    let stream = UnixStream::connect(&supd.socket).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let request = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"wait","params":{params}}}"#);
    writer
        .write_all(format!("{request}\n").as_bytes())
        .expect("write");
    let mut read = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        serde_json::from_str::<Value>(&line).expect("JSON")
    };
    let answer = read();
    then();
    Value::Array(vec![answer, read()])
}
