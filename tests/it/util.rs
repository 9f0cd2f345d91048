//! Test fixtures: a real `supd` in a temporary folder, driven through
//! `supctl` and the socket. Synchronisation is on `READY=1` (a notify
//! socket the fixture binds) and on polled conditions with a deadline; never
//! on a bare sleep. Dropping a [`Supd`] shuts it down and kills every
//! process that carries its marker in its environment.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sup::client::{Client, ClientError};
use sup::protocol::{ProgramStatus, StatusResult};

pub const SUPD: &str = env!("CARGO_BIN_EXE_supd");
pub const SUPCTL: &str = env!("CARGO_BIN_EXE_supctl");

/// The default deadline for a condition that should come true promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Polls `f` every few milliseconds until it returns `Some`, or panics with
/// `what` after `deadline`.
pub fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A running `supd` under test.
pub struct Supd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    notify: UnixDatagram,
    /// Every line received on the notify socket so far, in order.
    notified: Mutex<Vec<String>>,
    /// Variables added to supd's environment (`WATCHDOG_USEC`, ...).
    pub extra_env: Vec<(String, String)>,
    pub marker: String,
}

/// Builds a config file body: `[supd]` extras, then the programs.
pub fn config(programs: &str) -> String {
    programs.to_string()
}

impl Supd {
    /// Starts supd on `config` (TOML text) and waits for `READY=1`.
    pub fn start(config: &str) -> Supd {
        let supd = Supd::spawn(config);
        supd.wait_ready();
        supd
    }

    /// Starts supd with extra environment variables and waits for `READY=1`.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Supd {
        let supd = Supd::spawn_with_env(config, env);
        supd.wait_ready();
        supd
    }

    /// Starts supd without waiting for readiness.
    pub fn spawn(config: &str) -> Supd {
        Supd::spawn_with_env(config, &[])
    }

    /// Starts supd with extra environment variables, without waiting.
    pub fn spawn_with_env(config: &str, env: &[(&str, &str)]) -> Supd {
        let dir = tempfile::Builder::new()
            .prefix("supd-test-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("supd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let socket = dir.path().join("supd.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        let marker = format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            dir.path().display()
        );
        let mut supd = Supd {
            socket,
            config: config_path,
            child: None,
            notify,
            notified: Mutex::new(Vec::new()),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            marker,
            dir,
        };
        supd.child = Some(supd.launch(&notify_path));
        supd
    }

    fn launch(&self, notify_path: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("supd.log"))
            .expect("log file");
        Command::new(SUPD)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("-v")
            .env("NOTIFY_SOCKET", notify_path)
            .env("SUP_TEST_MARKER", &self.marker)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn supd")
    }

    /// Starts supd again on the same folder, config and socket (after it
    /// died or was shut down).
    pub fn restart_daemon(&mut self) {
        let notify_path = self.dir.path().join("notify.sock");
        self.child = Some(self.launch(&notify_path));
        self.wait_ready();
    }

    /// supd's log so far (its stderr and its programs' output).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("supd.log")).unwrap_or_default()
    }

    /// Receives one datagram from the notify socket (waiting up to its
    /// 100 ms read timeout), records its lines and returns them.
    fn recv_notification(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let Ok(n) = self.notify.recv(&mut buf) else {
            return Vec::new();
        };
        let lines: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect();
        self.notified
            .lock()
            .expect("notify lines")
            .extend(lines.iter().cloned());
        lines
    }

    /// Every line supd has sent to its notify socket so far (`READY=1`,
    /// `STATUS=...`, `WATCHDOG=1`, ...), in order, including any that are
    /// waiting in the socket now.
    pub fn notifications(&self) -> Vec<String> {
        self.notify.set_nonblocking(true).expect("non-blocking");
        while !self.recv_notification().is_empty() {}
        self.notify.set_nonblocking(false).expect("blocking");
        self.notified.lock().expect("notify lines").clone()
    }

    /// Waits for `READY=1` on the notify socket.
    pub fn wait_ready(&self) {
        let end = Instant::now() + DEADLINE;
        loop {
            if self.recv_notification().iter().any(|l| l == "READY=1") {
                return;
            }
            assert!(
                Instant::now() < end,
                "supd did not send READY=1 within {DEADLINE:?}; its log:\n{}",
                self.log()
            );
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("supd child").id()
    }

    /// Runs `supctl --socket S ARGS...` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        supctl_at(&self.socket, args)
    }

    /// Starts `supctl --socket S ARGS...` in the background, stdin closed,
    /// stdout and stderr piped.
    pub fn ctl_spawn(&self, args: &[&str]) -> Child {
        supctl_cmd(&self.socket, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn supctl")
    }

    /// Runs supctl and returns (exit status, stdout, stderr).
    pub fn ctl_text(&self, args: &[&str]) -> (i32, String, String) {
        output_text(&self.ctl(args))
    }

    /// A protocol client on the socket.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to supd")
    }

    /// Calls a method through a fresh client.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.client().call(method, params)
    }

    /// The status row of `name`.
    pub fn status(&self, name: &str) -> ProgramStatus {
        let v = self
            .call("status", json!({ "names": [name] }))
            .expect("status");
        let mut s: StatusResult = serde_json::from_value(v).expect("status shape");
        s.programs.remove(0)
    }

    /// Every status row.
    pub fn status_all(&self) -> Vec<ProgramStatus> {
        let v = self.call("status", json!({})).expect("status");
        let s: StatusResult = serde_json::from_value(v).expect("status shape");
        s.programs
    }

    /// Polls `name`'s status until `pred` holds.
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&ProgramStatus) -> bool,
    ) -> ProgramStatus {
        poll(&format!("{name}: {what}"), DEADLINE, || {
            let s = self.status(name);
            pred(&s).then_some(s)
        })
    }

    /// Polls until `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: &str) -> ProgramStatus {
        self.wait_for(name, &format!("state {state}"), |s| {
            s.state.as_str() == state
        })
    }

    /// Waits for the daemon to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let child = self.child.as_mut().expect("supd child");
        let status = poll("supd to exit", deadline, || {
            child.try_wait().expect("try_wait")
        });
        self.child = None;
        status.code().unwrap_or(-1)
    }

    /// Sends `sig` to the daemon.
    pub fn signal_daemon(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which is unreaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill supd");
    }

    /// Pids of live processes that carry this fixture's marker.
    pub fn marked_processes(&self) -> Vec<u32> {
        processes_with_env("SUP_TEST_MARKER", &self.marker)
    }
}

impl Drop for Supd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: daemon programs stop, the others are waited for; a
            // second SIGTERM after a moment sends SIGKILL to what is left
            // (so a test's cleanup never waits for shutdown_timeout).
            let mut sent = 0;
            let start = Instant::now();
            loop {
                let due = match sent {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(500),
                    _ => Duration::from_secs(15),
                };
                if start.elapsed() >= due {
                    if sent < 2 {
                        // SAFETY: kill(2) on our own child's pid, which is unreaped.
                        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                        sent += 1;
                    } else {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        kill_marked(&self.marker);
    }
}

/// Pids of processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    proc_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every process whose environment carries `SUP_TEST_MARKER=marker`
/// (a fixture's cleanup).
pub fn kill_marked(marker: &str) {
    for pid in processes_with_env("SUP_TEST_MARKER", marker) {
        // SAFETY: kill(2) with a pid read from /proc just now; the marker
        // in its environment says it is one of ours.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Every pid in `/proc` now.
pub fn proc_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Fields of `/proc/PID/stat` after the command name, or `None` once it is
/// gone: index 0 is the state (field 3), 1 the ppid, 2 the process group,
/// 3 the session, 11 and 12 utime and stime, 19 the start time.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.get(text.rfind(')')? + 2..)?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// `(state, ppid)` of a process from `/proc/PID/stat`, or `None` once it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let f = stat_fields(pid)?;
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?))
}

/// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// `argv` of `pid` from `/proc/PID/cmdline`.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A variable of `pid`'s environment.
pub fn environ_var(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A hex signal-set line of `/proc/PID/status` ("SigBlk", "SigIgn", "SigCgt").
pub fn sig_set(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    u64::from_str_radix(line[field.len() + 1..].trim(), 16).ok()
}

/// Whether signal `sig` is in the signal set `set`.
pub fn has_sig(set: u64, sig: i32) -> bool {
    set & (1u64 << (sig - 1)) != 0
}

/// Waits until `pid` ignores `sig` (its handler is installed, so a test can
/// rely on it).
pub fn wait_ignores(pid: u32, sig: i32) {
    poll(
        &format!("pid {pid} to ignore signal {sig}"),
        DEADLINE,
        || sig_set(pid, "SigIgn").filter(|s| has_sig(*s, sig)),
    );
}

/// The open descriptors of `pid`, sorted.
pub fn fds_of(pid: u32) -> Option<Vec<u32>> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    Some(fds)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Whether `pid` is a supd sentinel (`supd --sentinel MARKER`, the
/// companion that outlives a SIGKILLed supd; see src/sentinel.rs).
pub fn is_sentinel(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == b"--sentinel"))
        .unwrap_or(false)
}

/// Children of `parent` (from /proc), with their states; supd's sentinel is
/// left out.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    proc_pids()
        .into_iter()
        .filter_map(|pid| match proc_stat(pid) {
            Some((state, ppid)) if ppid == parent && !is_sentinel(pid) => Some((pid, state)),
            _ => None,
        })
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    children_of(parent)
        .into_iter()
        .filter(|(_, s)| *s == 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Writes `text` to a file in the fixture's folder and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Sends raw bytes on a fresh connection and reads one answer line.
pub fn raw_exchange(socket: &Path, bytes: &[u8]) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream.write_all(bytes).expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
}

/// Polls until every pid in `pids` is gone (exited; a zombie counts as gone).
pub fn wait_all_dead(what: &str, pids: &[u32], deadline: Duration) {
    poll(what, deadline, || {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        left.is_empty().then_some(())
    });
}

/// The main pid of `name` once it is running.
pub fn running_pid(supd: &Supd, name: &str) -> u32 {
    supd.wait_state(name, "running")
        .pid
        .unwrap_or_else(|| panic!("{name} is running without a pid"))
}

/// `supctl --socket SOCKET ARGS...` with stdin closed, to be run.
pub fn supctl_cmd(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(SUPCTL);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `supctl --socket SOCKET ARGS...` to completion, stdin closed.
pub fn supctl_at(socket: &Path, args: &[&str]) -> Output {
    supctl_cmd(socket, args).output().expect("run supctl")
}

/// (exit status, stdout, stderr) of a finished command; -1 for a death by
/// a signal.
pub fn output_text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `supctl --json ARGS` and parses stdout: (exit status, the JSON,
/// stderr). Panics when stdout is not JSON.
pub fn ctl_json(supd: &Supd, args: &[&str]) -> (i32, Value, String) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (code, out, err) = supd.ctl_text(&full);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("supctl {args:?} printed no JSON ({e}): {out:?}; stderr {err:?}")
    });
    (code, v, err)
}

/// Whether a stop outcome (a row of `stop`'s answer) says the stop was
/// escalated to SIGKILL; `false` when it does not say.
pub fn escalated(o: &Value) -> bool {
    o.get("escalated").and_then(Value::as_bool).unwrap_or(false)
}

/// Runs a command to completion within `deadline` (killed and failed
/// otherwise), stdin closed, its output in files (so a grandchild holding
/// them open cannot hang the test); returns (exit code, stdout, stderr).
pub fn run_bounded(cmd: &mut Command, deadline: Duration) -> (i32, String, String) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {deadline:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// Binds a notify socket (as `NOTIFY_SOCKET` names it) at `path`, with a
/// 100 ms read timeout.
pub fn notify_socket(path: &Path) -> UnixDatagram {
    let notify = UnixDatagram::bind(path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    notify
}

/// Receives one datagram on `notify` (waiting up to its read timeout):
/// `Some` when it has a `READY=1` line. For [`poll`].
pub fn ready_notified(notify: &UnixDatagram) -> Option<()> {
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .any(|l| l == "READY=1")
        .then_some(())
}

/// The real python interpreter (not a pyenv shim script), so a program's
/// pid is python's from the start.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!path.is_empty(), "python3 did not name its executable");
        path
    })
}

/// A TOML basic string for `s` (JSON string syntax is valid TOML).
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// A TOML array of strings.
pub fn argv(args: &[&str]) -> String {
    format!(
        "[{}]",
        args.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
    )
}

/// One `[program.NAME]` table running `argv`, with `extra` keys.
pub fn prog(name: &str, argv: &[&str], extra: &str) -> String {
    // A JSON array of strings is a valid TOML inline array.
    let command = serde_json::to_string(argv).expect("argv as JSON");
    format!("[program.{name}]\ncommand = {command}\n{extra}\n")
}

/// Shell code for [`start_leaver`]: leaves one orphan in its process group
/// and one in a session of its own (both `sleep 300`, adopted by supd once
/// their subshells exit), creates `$0`, then runs `sleep 300`.
pub const TWO_ORPHANS: &str = r#"(sleep 300 &); (setsid sleep 300 &); : > "$0"; exec sleep 300"#;

/// Starts supd with one program, `leaver`: `sh -c SCRIPT READY` with
/// `start_secs = "0s"` and the `extra` keys, where `READY` is a file in
/// `tmp` that the script creates (`: > "$0"`) once it has left its orphans.
/// Waits for it to run and for that file; returns supd and the main pid.
pub fn start_leaver(tmp: &Path, script: &str, extra: &str) -> (Supd, u32) {
    let ready = tmp.join("ready");
    let supd = Supd::start(&format!(
        "[program.leaver]\ncommand = {}\nstart_secs = \"0s\"\n{extra}\n",
        argv(&["sh", "-c", script, ready.to_str().expect("utf-8 path")])
    ));
    let main = running_pid(&supd, "leaver");
    poll("the leaver's orphans to be left", DEADLINE, || {
        ready.exists().then_some(())
    });
    (supd, main)
}

impl Supd {
    /// The default log folder: `logs` beside the socket (the state folder).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The text of log file `file` in the default log folder ("" if missing).
    pub fn log_file(&self, file: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_dir().join(file)).unwrap_or_default())
            .into_owned()
    }

    /// Starts `supctl --socket S ARGS...` with stdout and stderr piped and
    /// stdin `stdin`, without waiting.
    pub fn ctl_spawn_stdin(&self, args: &[&str], stdin: Stdio) -> Child {
        supctl_cmd(&self.socket, args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn supctl")
    }
}

/// The lines a child prints on stdout, as they come (read by a thread).
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to `deadline` for a child to exit; kills it and panics after.
pub fn wait_child(child: &mut Child, what: &str, deadline: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills a child on drop (a supctl a test started), so a failing test
/// leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Supd {
    /// Starts supd on an existing configuration file, used where it lies
    /// (relative paths in it are taken from its own folder), with the socket,
    /// state file and logs in a temporary folder; waits for `READY=1`.
    pub fn start_file(config: &Path) -> Supd {
        let dir = tempfile::Builder::new()
            .prefix("supd-test-")
            .tempdir()
            .expect("temp dir");
        let notify_path = dir.path().join("notify.sock");
        let marker = format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            dir.path().display()
        );
        let mut supd = Supd {
            socket: dir.path().join("supd.sock"),
            config: config.to_path_buf(),
            child: None,
            notify: notify_socket(&notify_path),
            notified: Mutex::new(Vec::new()),
            extra_env: Vec::new(),
            marker,
            dir,
        };
        supd.child = Some(supd.launch(&notify_path));
        supd.wait_ready();
        supd
    }
}
