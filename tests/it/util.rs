//! Test fixtures: a real `supd` in a temporary folder, driven through
//! `supctl` and the socket. Synchronisation is on `READY=1` (a notify
//! socket the fixture binds) and on polled conditions with a deadline; never
//! on a bare sleep. Dropping a [`Supd`] shuts it down and kills every
//! process that carries its marker in its environment.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
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
        Command::new(SUPCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run supctl")
    }

    /// Runs supctl and returns (exit status, stdout, stderr).
    pub fn ctl_text(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ctl(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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
        for pid in self.marked_processes() {
            // SAFETY: kill(2) with a pid read from /proc just now; the marker
            // in its environment says it is one of ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Pids of processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ")) {
            if env.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// `(state, ppid)` of a process from `/proc/PID/stat`, or `None` once it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
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
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                if let Some((state, ppid)) = proc_stat(pid) {
                    if ppid == parent && !is_sentinel(pid) {
                        out.push((pid, state));
                    }
                }
            }
        }
    }
    out
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

/// One `[program.NAME]` table running `argv`, with `extra` keys.
pub fn program(name: &str, argv: &[&str], extra: &str) -> String {
    // A JSON array of strings is a valid TOML inline array.
    let command = serde_json::to_string(argv).expect("argv as JSON");
    format!("[program.{name}]\ncommand = {command}\n{extra}\n")
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

    /// Starts `supctl --socket S ARGS...` with stdout piped and stdin `stdin`,
    /// without waiting.
    pub fn ctl_spawn(&self, args: &[&str], stdin: Stdio) -> Child {
        Command::new(SUPCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
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
