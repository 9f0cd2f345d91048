//! Issue 11, the control socket under attack: JSON-RPC 2.0 to the letter
//! (batches, notifications, ids kept exactly as sent, `names` with `all`),
//! a user who opens many connections cannot lock root out (and 10,000 of
//! root's own are held), the reserve descriptor that answers when the table
//! is full, `socket_group`, a symlink at `SOCKET.lock`, a `run` whose
//! program never reads its stdin, and `--socket` naming a folder.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::util::*;

const SLEEPER: &str = r#"
[program.sleeper]
command = ["sleep", "300"]
start_secs = "0s"
"#;

/// The uid and gid of `nobody` / `nogroup`, the unprivileged peer of these
/// tests.
const NOBODY: u32 = 65534;

/// A raw connection with read and write timeouts.
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

    fn send(&mut self, text: &str) {
        self.stream
            .write_all(format!("{text}\n").as_bytes())
            .expect("write to supd");
    }

    /// The next line, without its `\n`; panics at end of stream or after
    /// the read timeout.
    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("supd closed the connection instead of answering"),
            Ok(_) => {
                assert!(line.ends_with('\n'), "{line:?} is not a whole line");
                line.pop();
                line
            }
            Err(e) => panic!("no answer from supd within {DEADLINE:?}: {e}"),
        }
    }

    fn recv(&mut self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    fn call(&mut self, text: &str) -> Value {
        self.send(text);
        self.recv()
    }
}

fn version(id: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"version"}}"#)
}

/// Asserts that `v` is an error answer of `code` with id `id`.
fn assert_error(v: &Value, code: i64, id: &Value) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(&v["id"], id, "{v}");
    assert!(v.get("result").is_none(), "{v}");
}

/// Asserts that `v` is a success answer with id `id`; returns its result.
fn assert_ok<'a>(v: &'a Value, id: &Value) -> &'a Value {
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!(&v["id"], id, "{v}");
    &v["result"]
}

/// The next line on `conn` is the answer to a `version` with id `id`: what
/// was sent before it was answered with nothing.
fn nothing_before(conn: &mut Conn, id: &str) {
    let v = conn.call(&version(id));
    let want: Value = serde_json::from_str(id).expect("an id");
    assert!(
        v.get("result").is_some() && v["id"] == want,
        "expected the answer to {id} next, got {v}"
    );
}

// ---------------------------------------------------------------------------
// JSON-RPC 2.0: batches, notifications, ids, `names` with `all`.

#[test]
fn a_batch_gets_an_array_of_answers_in_order() {
    let supd = Supd::start(SLEEPER);
    let mut conn = Conn::open(&supd.socket);
    let answer = conn.call(concat!(
        r#"[{"jsonrpc":"2.0","id":1,"method":"version"},"#,
        r#"{"jsonrpc":"2.0","method":"version"},"#,
        r#"42,"#,
        r#"{"jsonrpc":"2.0","id":"s","method":"status","params":{"names":["sleeper"]}},"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"frobnicate"},"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"status","params":{"names":["ghost"]}}]"#
    ));
    let answers = answer.as_array().unwrap_or_else(|| panic!("{answer}"));
    // The notification has no answer; the others keep their order.
    assert_eq!(answers.len(), 5, "{answer}");
    assert_ok(&answers[0], &json!(1));
    assert_error(&answers[1], -32600, &Value::Null);
    let status = assert_ok(&answers[2], &json!("s"));
    assert_eq!(status["programs"][0]["name"], "sleeper", "{answer}");
    assert_error(&answers[3], -32601, &json!(3));
    assert_error(&answers[4], -32001, &json!(4));
    // The connection goes on.
    nothing_before(&mut conn, "5");
}

#[test]
fn an_empty_batch_is_one_invalid_request_and_a_batch_of_notifications_is_not_answered() {
    let supd = Supd::start(&format!(
        "{SLEEPER}\n[program.idle]\ncommand = [\"sleep\", \"300\"]\nautostart = false\nstart_secs = \"0s\"\n"
    ));
    let mut conn = Conn::open(&supd.socket);
    // Not an array: one error object.
    let v = conn.call("[]");
    assert!(v.is_object(), "{v}");
    assert_error(&v, -32600, &Value::Null);
    let v = conn.call(" [ ] ");
    assert_error(&v, -32600, &Value::Null);
    // Invalid elements: an array of errors, one each.
    let v = conn.call("[1,2,3]");
    let answers = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(answers.len(), 3, "{v}");
    for a in answers {
        assert_error(a, -32600, &Value::Null);
    }
    // Only notifications, valid or not: no answer at all. `idle` is
    // started by one of them.
    conn.send(concat!(
        r#"[{"jsonrpc":"2.0","method":"version"},"#,
        r#"{"jsonrpc":"2.0","method":"frobnicate"},"#,
        r#"{"jsonrpc":"2.0","method":"stop","params":{"names":["sleeper"],"all":true}},"#,
        r#"{"jsonrpc":"2.0","method":"start","params":{"names":["idle"]}}]"#
    ));
    nothing_before(&mut conn, "7");
    supd.wait_state("idle", "running");
    assert_eq!(supd.status("sleeper").state.as_str(), "running");
}

#[test]
fn streams_inside_a_batch_are_refused_and_not_carried_out() {
    let supd = Supd::start(SLEEPER);
    let mut conn = Conn::open(&supd.socket);
    let v = conn.call(concat!(
        r#"[{"jsonrpc":"2.0","id":1,"method":"events"},"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"wait","params":{"name":"sleeper"}},"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"logs","params":{"name":"sleeper","follow":true}},"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"run","params":{"command":["sleep","300"],"name":"batched"}},"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"logs","params":{"name":"sleeper"}},"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"version"}]"#
    ));
    let answers = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(answers.len(), 6, "{v}");
    for (i, a) in answers[..4].iter().enumerate() {
        assert_error(a, -32600, &json!(i + 1));
        let message = a["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("batch"), "{a}");
    }
    // `logs` without `follow` is a plain request.
    assert!(assert_ok(&answers[4], &json!(5))["lines"].is_array(), "{v}");
    assert_ok(&answers[5], &json!(6));
    // No run was started, and no notification follows.
    assert!(
        supd.status_all().iter().all(|s| s.name != "batched"),
        "the batched run was started"
    );
    nothing_before(&mut conn, "8");
}

#[test]
fn a_notification_is_never_answered_even_when_invalid() {
    let supd = Supd::start(SLEEPER);
    let mut conn = Conn::open(&supd.socket);
    for bad in [
        r#"{}"#,
        r#"{"jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"1.0","method":"version"}"#,
        r#"{"method":"version"}"#,
        r#"{"jsonrpc":"2.0","method":7}"#,
        r#"{"jsonrpc":"2.0","method":"status","params":[1]}"#,
        r#"{"jsonrpc":"2.0","method":"status","params":null}"#,
        r#"{"jsonrpc":"2.0","method":"stop","params":{"names":["sleeper"],"all":true}}"#,
        r#"{"jsonrpc":"2.0","method":"events","params":{"bogus":1}}"#,
    ] {
        conn.send(bad);
    }
    nothing_before(&mut conn, "1");
    // Not JSON, or not an object: no id could be read, so it is answered.
    assert_error(&conn.call("{oops"), -32700, &Value::Null);
    assert_error(&conn.call("17"), -32600, &Value::Null);
    assert_eq!(supd.status("sleeper").state.as_str(), "running");
}

/// The `id` member of an answer line, as the text it was written with.
fn raw_id(line: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    let id: Id<'_> = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    id.id.get().to_string()
}

#[test]
fn ids_come_back_exactly_as_sent() {
    let supd = Supd::start(SLEEPER);
    let mut conn = Conn::open(&supd.socket);
    let ids = [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",
        "1.5",
        "1.0",
        "-0",
        "1e400",
        "2.50E-3",
        r#""a \"quoted\" \u00e9 id""#,
        r#""""#,
        "null",
        "7",
    ];
    for id in ids {
        // A success written through serde, one written in place (status),
        // an error, and an element of a batch.
        for request in [
            version(id),
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"status"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"nope"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"status","params":{{"names":[1]}}}}"#),
        ] {
            conn.send(&request);
            let line = conn.line();
            assert_eq!(raw_id(&line), id, "{request} -> {line}");
            conn.send(&format!("[{request}]"));
            let line = conn.line();
            let element = line
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or_else(|| panic!("{line}"));
            assert_eq!(raw_id(element), id, "[{request}] -> {line}");
        }
    }
}

#[test]
fn names_together_with_all_is_invalid_params() {
    let supd = Supd::start(SLEEPER);
    let pid = running_pid(&supd, "sleeper");
    let mut conn = Conn::open(&supd.socket);
    for (id, method, extra) in [
        (1, "status", ""),
        (2, "stop", ""),
        (3, "kill", ""),
        (4, "restart", ""),
        (5, "start", ""),
        (6, "remove", ""),
        (7, "signal", r#","signal":"TERM""#),
    ] {
        let v = conn.call(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{"names":["sleeper"],"all":true{extra}}}}}"#
        ));
        assert_error(&v, -32602, &json!(id));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("names") && message.contains("all"), "{v}");
    }
    // Nothing was carried out.
    assert_eq!(running_pid(&supd, "sleeper"), pid);
    assert!(alive(pid));
    // `all` alone and names alone still work.
    let v = conn.call(r#"{"jsonrpc":"2.0","id":8,"method":"status","params":{"all":true}}"#);
    assert_ok(&v, &json!(8));
}

// ---------------------------------------------------------------------------
// One client cannot lock everyone out.

/// Python run as uid/gid 65534 (nobody): opens `n` connections to the
/// socket in `argv[1]`, each subscribing to `events` (mode `events`) or
/// left idle (mode `idle`), then one more that asks for `version` (its
/// answer, or refusal, shows every earlier connection was accepted);
/// prints a JSON summary, then holds every connection until stdin closes.
const NOBODY_CLIENT: &str = r#"
import json, os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
held, accepted, refused, messages = [], 0, 0, set()
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    held.append(s)
    return s
def ask(s, method):
    try:
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode() + b"\n")
    except BrokenPipeError:
        pass  # refused and closed at once: the refusal is there to read
    line = s.makefile("rb").readline()
    return json.loads(line)
for i in range(n):
    s = connect()
    if mode == "events":
        a = ask(s, "events")
        if "result" in a:
            accepted += 1
        else:
            refused += 1
            messages.add(a["error"]["message"])
last = ask(connect(), "version")
print(json.dumps({"accepted": accepted, "refused": refused,
                  "messages": sorted(messages), "last": last}), flush=True)
sys.stdin.read()
"#;

/// Whether this test can play root and uid 65534; says it is skipped if not.
fn plays_root_and_nobody() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: playing uid 65534 needs root");
    }
    root
}

/// Lets uid 65534 reach the socket of `supd`: the folder searchable, the
/// socket writable by anyone (the peer check is what lets it in).
fn open_to_nobody(supd: &Supd) {
    std::fs::set_permissions(supd.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the folder");
    std::fs::set_permissions(&supd.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod the socket");
}

/// Starts [`NOBODY_CLIENT`] and waits for its summary line.
fn nobody_client(socket: &Path, mode: &str, n: usize) -> (KillOnDrop, Value) {
    let mut child = KillOnDrop(
        Command::new(python())
            .args(["-c", NOBODY_CLIENT])
            .arg(socket)
            .args([mode, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3"),
    );
    let lines = stdout_lines(&mut child.0);
    let summary = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the uid 65534 client ({mode}, {n}) gave no summary"));
    let v: Value = serde_json::from_str(&summary).expect("summary JSON");
    (child, v)
}

/// Runs `supctl status` as root; returns how long it took. Panics unless
/// it succeeded.
fn timed_root_status(supd: &Supd) -> Duration {
    let start = Instant::now();
    let (code, out, err) = run_bounded(&mut supctl_cmd(&supd.socket, &["status"]), DEADLINE);
    let took = start.elapsed();
    assert_eq!(code, 0, "root's status failed: {out}{err}");
    assert!(out.contains("sleeper"), "{out}");
    took
}

#[test]
fn a_user_with_many_subscribers_cannot_lock_out_root() {
    if !plays_root_and_nobody() {
        return;
    }
    let supd = Supd::start(&format!("[supd]\nallow_users = [{NOBODY}]\n{SLEEPER}"));
    open_to_nobody(&supd);
    // More subscribers than the old global cap of 512.
    let (_client, summary) = nobody_client(&supd.socket, "events", 600);
    assert_eq!(summary["accepted"], 64, "{summary}");
    assert_eq!(summary["refused"], 600 - 64, "{summary}");
    let messages = summary["messages"].to_string();
    assert!(
        messages.contains("uid 65534") && messages.contains("64"),
        "the refusal names the user and the cap: {summary}"
    );
    assert!(summary["last"].get("error").is_some(), "{summary}");
    let took = timed_root_status(&supd);
    eprintln!("root's supctl status with 64 subscribers and 536 refusals of uid 65534: {took:?}");
    // supd's own user (root here) is never refused either, on a raw
    // connection.
    let mut conn = Conn::open(&supd.socket);
    assert_ok(&conn.call(&version("1")), &json!(1));
}

#[test]
fn a_user_with_900_idle_connections_cannot_lock_out_root() {
    if !plays_root_and_nobody() {
        return;
    }
    let supd = Supd::start(&format!("[supd]\nallow_users = [{NOBODY}]\n{SLEEPER}"));
    open_to_nobody(&supd);
    let (_client, summary) = nobody_client(&supd.socket, "idle", 900);
    let last = &summary["last"];
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("uid 65534"),
        "the user's 901st connection is refused by its own cap: {summary}"
    );
    let took = timed_root_status(&supd);
    eprintln!("root's supctl status with 900 idle connections of uid 65534: {took:?}");
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, which must
/// be at least `want` (supd, its child, inherits both).
fn raise_own_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a live local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        assert!(
            lim.rlim_max >= want,
            "this test needs a hard RLIMIT_NOFILE of {want} at least, not {}",
            lim.rlim_max
        );
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Opens `n` connections that send nothing, then one that asks for
/// `version`: once that is answered, supd has accepted every one of them.
fn hold_idle(socket: &Path, n: usize) -> Vec<UnixStream> {
    let held: Vec<UnixStream> = (0..n)
        .map(|i| UnixStream::connect(socket).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let mut last = Conn::open(socket);
    assert_ok(&last.call(&version("\"last\"")), &json!("last"));
    held
}

#[test]
fn root_holds_ten_thousand_idle_connections_and_status_still_answers() {
    // 10,000 here, 10,000 in supd, whose budget is three quarters of it.
    raise_own_nofile(16_000);
    let supd = Supd::start(SLEEPER);
    let start = Instant::now();
    let held = hold_idle(&supd.socket, 10_000);
    eprintln!(
        "10,000 idle root connections accepted in {:?}",
        start.elapsed()
    );
    let fds = fds_of(supd.pid()).map_or(0, |f| f.len());
    assert!(fds > 10_000, "supd holds {fds} descriptors");
    let took = timed_root_status(&supd);
    let start = Instant::now();
    let mut client = supd.client();
    client.call("status", json!({})).expect("status");
    let raw = start.elapsed();
    eprintln!(
        "with 10,000 idle root connections: supctl status took {took:?} (process included), \
         a status call on a fresh connection {raw:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "status took {took:?} under the flood"
    );
    drop(held);
}

/// supd's RLIMIT_NOFILE: (soft, hard), from /proc.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

/// supd started by hand, for what the fixture cannot do: limits set
/// before exec, a folder prepared before it starts. Stopped (and every
/// process carrying its marker killed) on drop.
struct Bare {
    child: Option<Child>,
    socket: PathBuf,
    marker: String,
    dir: tempfile::TempDir,
}

impl Bare {
    fn new(config: &str) -> Bare {
        let dir = tempfile::Builder::new()
            .prefix("supd-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("supd.toml"), config).expect("config");
        let marker = format!("bare-{}-{}", std::process::id(), dir.path().display());
        Bare {
            child: None,
            socket: dir.path().join("supd.sock"),
            marker,
            dir,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(SUPD);
        cmd.arg("--config")
            .arg(self.dir.path().join("supd.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .env("SUP_TEST_MARKER", &self.marker)
            .env_remove("NOTIFY_SOCKET");
        cmd
    }

    /// Starts it with `cmd` and waits until it answers `version`.
    fn start(&mut self, mut cmd: Command) {
        let log = std::fs::File::create(self.dir.path().join("supd.log")).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn supd");
        self.child = Some(child);
        poll("supd to answer", DEADLINE, || {
            let mut c = sup::client::Client::connect(&self.socket).ok()?;
            c.call("version", json!({})).ok()
        });
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM, and a second one (SIGKILL to what is left) after a
            // moment, as the fixture does.
            let start = Instant::now();
            let mut sent = 0;
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < DEADLINE {
                if sent == 0 || (sent == 1 && start.elapsed() > Duration::from_millis(500)) {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker);
    }
}

#[test]
fn supd_raises_its_fd_limit_and_programs_keep_the_one_it_was_given() {
    let hard = {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a live local.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim.rlim_max
    };
    assert!(
        hard > 1024,
        "the test needs a hard RLIMIT_NOFILE above 1024"
    );
    let mut bare = Bare::new("");
    let out = bare.dir.path().join("limits");
    std::fs::write(
        bare.dir.path().join("supd.toml"),
        prog(
            "limits",
            &[
                "sh",
                "-c",
                "{ ulimit -Sn; ulimit -Hn; } > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 300",
                out.to_str().expect("utf-8"),
            ],
            "start_secs = \"0s\"",
        ),
    )
    .expect("config");
    let mut cmd = bare.command();
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    bare.start(cmd);
    assert_eq!(nofile_of(bare.pid()), (hard, hard), "supd's own limit");
    let text = poll("the program to write its limits", DEADLINE, || {
        std::fs::read_to_string(&out).ok()
    });
    assert_eq!(
        text,
        format!("1024\n{hard}\n"),
        "the program gets the limit supd was started with"
    );
}

/// Sets `pid`'s soft RLIMIT_NOFILE to `n` (its hard limit when `None`);
/// returns the soft limit it had.
fn set_nofile(pid: u32, n: Option<u64>) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on another process, reading into a live local; root may.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: n.unwrap_or(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a live local to read from.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid).expect("stat");
    // utime and stime: fields 14 and 15 of /proc/PID/stat, 1-based, where
    // stat_fields starts after the command's closing parenthesis (field 3).
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_full_descriptor_table_is_answered_from_the_reserve_and_accept_backs_off() {
    let supd = Supd::start(SLEEPER);
    let pid = supd.pid();
    // 300 connections held by subscriptions; then the table is made
    // smaller than what is open, so every accept fails with EMFILE.
    let mut held: Vec<Conn> = (0..300)
        .map(|_| {
            let mut c = Conn::open(&supd.socket);
            assert_ok(
                &c.call(r#"{"jsonrpc":"2.0","id":1,"method":"events"}"#),
                &json!(1),
            );
            c
        })
        .collect();
    set_nofile(pid, Some(200));
    // The reserve descriptor is given up to accept this one and answer it.
    let mut first = Conn::open(&supd.socket);
    let v = first.call(&version("1"));
    assert_error(&v, -32603, &Value::Null);
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("file descriptors"), "{v}");
    // While that one is held (up to a second) the reserve is gone: the
    // next one waits, and supd backs off rather than spinning on EMFILE.
    let mut second = Conn::open(&supd.socket);
    second.send(&version("2"));
    let before = cpu_ticks(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let measured = window.elapsed().as_secs_f64() * ticks_per_sec as f64;
    assert!(
        (spent as f64) < measured * 0.3,
        "supd used {spent} of {measured:.0} ticks while out of descriptors"
    );
    // Once the first one is gone, the second is answered in its turn.
    drop(first);
    let v = second.recv();
    assert_error(&v, -32603, &Value::Null);
    drop(second);
    // With room again, everything works as before.
    set_nofile(pid, None);
    held.truncate(10);
    poll("a newcomer to be served again", DEADLINE, || {
        let mut c = Conn::open(&supd.socket);
        c.call(&version("3")).get("result").map(|_| ())
    });
    let took = timed_root_status(&supd);
    eprintln!("status after the table was full: {took:?}");
}

// ---------------------------------------------------------------------------
// socket_group, and the lock file.

#[test]
fn socket_group_makes_the_socket_0660_with_that_group() {
    if !plays_root_and_nobody() {
        return;
    }
    for group in ["\"nogroup\"", "65534"] {
        let supd = Supd::start(&format!(
            "[supd]\nsocket_group = {group}\nallow_users = [{NOBODY}]\n{SLEEPER}"
        ));
        let meta = std::fs::symlink_metadata(&supd.socket).expect("socket");
        assert_eq!(meta.mode() & 0o7777, 0o660, "socket_group = {group}");
        assert_eq!(meta.gid(), NOBODY, "socket_group = {group}");
        // A member of the group who is allowed connects with no chmod of
        // the socket (only the test's own folder needs to be searchable).
        std::fs::set_permissions(supd.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the folder");
        let out = Command::new(python())
            .args([
                "-c",
                r#"
import json, os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"version"}\n')
print(s.makefile("rb").readline().decode().strip())
"#,
            ])
            .arg(&supd.socket)
            .output()
            .expect("python3");
        let (code, stdout, stderr) = output_text(&out);
        assert_eq!(code, 0, "{stderr}");
        let v: Value = serde_json::from_str(stdout.trim()).expect("answer");
        assert_ok(&v, &json!(1));
    }
    // A group that does not exist is a config error.
    let bad = Bare::new("[supd]\nsocket_group = \"no-such-group-here\"\n");
    let (code, _, err) = run_bounded(
        Command::new(SUPD)
            .arg("--check-config")
            .arg(bad.dir.path().join("supd.toml")),
        DEADLINE,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-group-here"), "{err}");
}

#[test]
fn a_symlink_or_a_non_file_at_the_lock_path_is_refused() {
    // A symlink to a file that does not exist: supd must not create it.
    let bare = Bare::new(SLEEPER);
    let victim = bare.dir.path().join("victim");
    let lock = bare.dir.path().join("supd.sock.lock");
    std::os::unix::fs::symlink(&victim, &lock).expect("symlink");
    let (code, out, err) = run_bounded(&mut bare.command(), DEADLINE);
    assert_ne!(code, 0, "supd started through a symlinked lock: {out}{err}");
    assert!(
        err.contains("supd.sock.lock") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&victim).is_err(),
        "supd created the symlink's target"
    );
    assert!(!bare.socket.exists(), "no socket was bound");

    // A symlink to an existing file: not touched.
    std::fs::write(&victim, "precious").expect("victim");
    let (code, _, err) = run_bounded(&mut bare.command(), DEADLINE);
    assert_ne!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    let mode = std::fs::metadata(&victim).expect("victim").mode() & 0o7777;
    assert_ne!(mode, 0o600, "the victim's mode was changed");

    // A FIFO or a folder: not a regular file.
    std::fs::remove_file(&lock).expect("rm lock");
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (code, _, err) = run_bounded(&mut bare.command(), DEADLINE);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_file(&lock).expect("rm fifo");
    std::fs::create_dir(&lock).expect("mkdir");
    let (code, _, err) = run_bounded(&mut bare.command(), DEADLINE);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    // A plain file, or none, is fine; the lock is created 0600.
    std::fs::remove_dir(&lock).expect("rmdir");
    let mut bare = bare;
    let cmd = bare.command();
    bare.start(cmd);
    let meta = std::fs::symlink_metadata(&lock).expect("lock");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o7777, 0o600);
}

// ---------------------------------------------------------------------------
// `run` with a stdin the program never reads.

/// `yes | supctl ARGS...`: supctl with an endless stdin that `sleep`
/// never reads. Both are killed on drop.
fn yes_into(supd: &Supd, args: &[&str]) -> (KillOnDrop, KillOnDrop) {
    let mut yes = KillOnDrop(
        Command::new("yes")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("yes"),
    );
    let pipe = yes.0.stdout.take().expect("yes stdout");
    let ctl = KillOnDrop(supd.ctl_spawn_stdin(args, Stdio::from(pipe)));
    (yes, ctl)
}

#[test]
fn a_run_with_unread_stdin_still_times_out() {
    let supd = Supd::start("");
    let start = Instant::now();
    let (_yes, mut ctl) = yes_into(&supd, &["run", "--timeout", "2", "--", "sleep", "12"]);
    let status = wait_child(&mut ctl.0, "yes | supctl run --timeout 2", DEADLINE);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(124), "after {took:?}");
    assert!(took < Duration::from_secs(6), "the timeout took {took:?}");
}

#[test]
fn a_run_with_unread_stdin_still_streams_output_and_notices_a_hang_up() {
    let supd = Supd::start("");
    let (_yes, mut ctl) = yes_into(
        &supd,
        &[
            "run",
            "--name",
            "deaf",
            "--",
            "sh",
            "-c",
            "sleep 0.5; echo hello; exec sleep 300",
        ],
    );
    let lines = stdout_lines(&mut ctl.0);
    let line = lines
        .recv_timeout(DEADLINE)
        .expect("the program's output while its stdin is full");
    assert_eq!(line, "hello");
    let pid = running_pid(&supd, "deaf");
    // supctl goes away: the run is stopped, not left until it exits.
    let _ = ctl.0.kill();
    let _ = ctl.0.wait();
    wait_all_dead("the abandoned run", &[pid], DEADLINE);
    poll("the run to be forgotten", DEADLINE, || {
        supd.status_all()
            .iter()
            .all(|s| s.name != "deaf")
            .then_some(())
    });
}

// ---------------------------------------------------------------------------
// supctl --socket naming something that is not a socket.

#[test]
fn supctl_says_when_socket_names_a_folder_or_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, _, err) = output_text(&supctl_at(dir.path(), &["status"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("is a directory") && err.contains("not a socket"),
        "{err}"
    );
    assert!(!err.contains("Connection refused"), "{err}");
    let file = write_file(dir.path(), "plain", "");
    let (code, _, err) = output_text(&supctl_at(&file, &["status"]));
    assert_ne!(code, 0);
    assert!(err.contains("not a socket"), "{err}");
    // A socket nobody listens on is still "is supd running?".
    let (_, _, err) = output_text(&supctl_at(&dir.path().join("none.sock"), &["status"]));
    assert!(err.contains("is supd running"), "{err}");
}
