//! Surviving the daemon's own death, and the other hard cases of the
//! process model (SPEC §2; DESIGN "Reaping", "Signalling", "Surviving the
//! daemon's own death", "Containers"), black-box through `supctl`, the
//! protocol and `/proc`:
//! - adoption after a SIGKILL of supd (same pid, `adopted`, one copy; stop
//!   and `wait` of an adopted program); daemon programs replaced;
//! - the output of an adopted program keeps flowing;
//! - stale and corrupt state files adopt nothing and signal nothing;
//! - supd as PID 1 of a pid namespace;
//! - `orphans = "keep"` and the default `"kill"`;
//! - 200 SIGKILLs of supd while it starts a daemon program;
//! - pid reuse after a program's exit;
//! - a bounded fork storm is stopped in bounded time.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sup::client::Client;

use crate::util::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_string()
}

/// Whether `pid` is stopped (SIGSTOP, or traced).
fn stopped(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('T' | 't', _)))
}

/// Polls until no pid of `pids` exists at all (not even as a zombie).
fn wait_all_reaped(what: &str, pids: &[u32], deadline: Duration) {
    poll(what, deadline, || {
        pids.iter().all(|&p| proc_stat(p).is_none()).then_some(())
    });
}

/// Live children of `parent` whose command line is exactly `argv`, once
/// there are `n` of them (a child seen between fork and exec still shows
/// its parent's command line, so the count settles only after the execs).
fn wait_children_running(parent: u32, argv: &[&str], n: usize) -> Vec<u32> {
    poll(
        &format!("{n} children {argv:?} of pid {parent}"),
        DEADLINE,
        || {
            let kids: Vec<u32> = children_of(parent)
                .into_iter()
                .filter(|&(p, s)| s != 'Z' && cmdline(p) == argv)
                .map(|(p, _)| p)
                .collect();
            (kids.len() == n).then_some(kids)
        },
    )
}

/// SIGKILL to `pid`, but only if it is still the process that started at
/// `start` (so a cleanup never hits a process that reused the pid).
fn kill_if_same(pid: u32, start: Option<u64>) {
    if start.is_some() && start_time(pid) == start {
        // SAFETY: kill(2) on a pid whose start time was just checked.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Processes this test made itself (not through supd): killed and waited
/// for on drop, whatever the test's outcome.
#[derive(Default)]
struct Spawned {
    children: Vec<Child>,
    /// Stray pids (not our children) with their start times.
    pids: Vec<(u32, Option<u64>)>,
}

impl Spawned {
    fn add(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn add_pid(&mut self, pid: u32) {
        self.pids.push((pid, start_time(pid)));
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &(pid, start) in &self.pids {
            kill_if_same(pid, start);
        }
    }
}

/// A python process that records every catchable signal it receives as a
/// line (the signal's number) in `log`, and creates `log.ready` once its
/// handlers are installed.
struct Recorder {
    pid: u32,
    log: PathBuf,
}

const RECORDER: &str = r#"
import os, signal, sys
log = sys.argv[1]
def record(n, _frame):
    with open(log, "a") as f:
        f.write(f"{n}\n")
for s in signal.valid_signals():
    if s in (signal.SIGKILL, signal.SIGSTOP):
        continue
    try:
        signal.signal(s, record)
    except (OSError, ValueError, RuntimeError):
        pass
open(log + ".ready", "w").close()
while True:
    signal.pause()
"#;

impl Recorder {
    fn command(log: &Path) -> Command {
        let mut cmd = Command::new(python());
        cmd.args(["-c", RECORDER, path_str(log)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd
    }

    fn start(log: &Path, guard: &mut Spawned) -> Recorder {
        let child = Recorder::command(log).spawn().expect("spawn recorder");
        let pid = guard.add(child);
        let r = Recorder {
            pid,
            log: log.to_path_buf(),
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let ready = PathBuf::from(format!("{}.ready", self.log.display()));
        poll("the signal recorder to be ready", DEADLINE, || {
            ready.exists().then_some(())
        });
    }

    /// Signal numbers received so far.
    fn received(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Checks that the recorder is alive, not stopped, and received no
    /// signal but `ours` (the probes this test sent). A new probe (SIGUSR1)
    /// is sent and awaited first: a signal sent to it before the probe has
    /// been handled by then.
    fn assert_untouched(&self, ours: &mut Vec<i32>, what: &str) {
        assert!(alive(self.pid), "{what}: pid {} was killed", self.pid);
        assert!(!stopped(self.pid), "{what}: pid {} was stopped", self.pid);
        // SAFETY: kill(2) on our own, unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGUSR1) };
        ours.push(libc::SIGUSR1);
        let n = ours.len();
        poll(&format!("{what}: the probe signal"), DEADLINE, || {
            (self
                .received()
                .iter()
                .filter(|&&s| s == libc::SIGUSR1)
                .count()
                >= n)
                .then_some(())
        });
        assert_eq!(
            &self.received(),
            ours,
            "{what}: pid {} received signals it was not sent by the test",
            self.pid
        );
        assert!(alive(self.pid) && !stopped(self.pid), "{what}");
    }
}

// ---------------------------------------------------------------------------
// 1. Adoption after a SIGKILL of supd
// ---------------------------------------------------------------------------

/// Processes with the fixture's marker that run `argv` for program `name`
/// (sentinels left out).
fn copies_of(supd: &Supd, name: &str, argv: &[&str]) -> Vec<u32> {
    supd.marked_processes()
        .into_iter()
        .filter(|&p| {
            alive(p)
                && !is_sentinel(p)
                && environ_var(p, "SUP_PROGRAM").as_deref() == Some(name)
                && cmdline(p) == argv
        })
        .collect()
}

/// SIGKILLs supd, waits for it to be gone, and starts it again on the same
/// folder (so it reads the state file the dead one left).
fn crash_and_restart(supd: &mut Supd) {
    supd.signal_daemon(libc::SIGKILL);
    supd.wait_exit(DEADLINE);
    supd.restart_daemon();
}

#[test]
fn sigkilled_supd_adopts_survivors_and_replaces_daemon_programs() {
    // SPEC §2: daemon = false "keeps running, and the next supd adopts it
    // again instead of starting a second copy"; daemon = true "dies with
    // supd even when supd is killed with SIGKILL. Nothing it spawned
    // outlives it."
    let mut supd = Supd::start(
        r#"
[program.keeper]
command = ["sleep", "300"]
start_secs = "0s"

[program.guarded]
command = ["sh", "-c", "sleep 300 & sleep 300 & wait"]
start_secs = "0s"
daemon = true
"#,
    );
    let keeper = running_pid(&supd, "keeper");
    let guarded = running_pid(&supd, "guarded");
    let guarded_kids = wait_children_running(guarded, &["sleep", "300"], 2);
    assert!(!supd.status("keeper").adopted);

    crash_and_restart(&mut supd);

    // The survivor is adopted: same pid, running, flagged, one copy.
    let s = supd.wait_state("keeper", "running");
    assert_eq!(s.pid, Some(keeper), "the survivor was not adopted: {s:?}");
    assert!(s.adopted, "status does not say adopted: {s:?}");
    assert!(alive(keeper));
    assert_eq!(
        copies_of(&supd, "keeper", &["sleep", "300"]),
        vec![keeper],
        "exactly one copy of keeper must run"
    );

    // The daemon program and its descendants died with the old supd; the
    // new supd started a fresh copy.
    wait_all_dead(
        "the old daemon program and its children to be gone",
        &[&[guarded][..], &guarded_kids].concat(),
        DEADLINE,
    );
    let g = supd.wait_state("guarded", "running");
    let fresh = g.pid.expect("pid");
    assert_ne!(fresh, guarded, "the daemon program was not started afresh");
    assert!(!g.adopted, "a daemon program must never be adopted: {g:?}");
    wait_children_running(fresh, &["sleep", "300"], 2);
    assert!(
        !guarded_kids.contains(&fresh),
        "the fresh copy reused an old pid"
    );
    // Still exactly one copy of keeper once everything settled.
    assert_eq!(copies_of(&supd, "keeper", &["sleep", "300"]), vec![keeper]);
}

#[test]
fn adopted_program_can_be_stopped_and_waited_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let got_term = tmp.path().join("got-term");
    let mut supd = Supd::start(&format!(
        r#"
[program.stoppable]
command = {}
start_secs = "0s"
stop_timeout = "60s"

[program.waited]
command = ["sleep", "300"]
start_secs = "0s"
restart = "never"
"#,
        argv(&[
            "sh",
            "-c",
            r#"trap 'echo TERM > "$0"; exit 0' TERM; while :; do sleep 0.05; done"#,
            path_str(&got_term),
        ])
    ));
    let stoppable = running_pid(&supd, "stoppable");
    let waited = running_pid(&supd, "waited");

    crash_and_restart(&mut supd);
    for (name, pid) in [("stoppable", stoppable), ("waited", waited)] {
        let s = supd.wait_state(name, "running");
        assert_eq!((s.pid, s.adopted), (Some(pid), true), "{name}: {s:?}");
    }

    // stop: the stop signal (SIGTERM) reaches the adopted process, which
    // exits on it long before the 60 s stop_timeout.
    let t0 = Instant::now();
    let (code, out, err) = ctl_json(&supd, &["stop", "stoppable"]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "stop of an adopted program: {out} {err}");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let escalated = out
        .as_array()
        .and_then(|a| a.first())
        .and_then(|o| o.get("escalated"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assert!(!escalated, "the stop was escalated: {out}");
    assert_eq!(
        std::fs::read_to_string(&got_term)
            .unwrap_or_default()
            .trim(),
        "TERM",
        "the adopted program did not get SIGTERM"
    );
    wait_all_dead("the stopped adopted program", &[stoppable], DEADLINE);
    let s = supd.status("stoppable");
    assert_eq!((s.state.as_str(), s.pid), ("stopped", None), "{s:?}");

    // wait: an adopted program killed from outside ends with an unknown
    // status (it is not supd's child).
    let mut background = Spawned::default();
    let mut ctl_wait = supd.ctl_spawn(&["wait", "waited"]);
    background.add_pid(ctl_wait.id());
    // The same through the protocol, on a thread so that a missing answer
    // fails the test at the deadline instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = supd.socket.clone();
    std::thread::spawn(move || {
        let mut client = Client::connect(&socket).expect("connect");
        let answer = client.call("wait", json!({ "name": "waited" }));
        let _ = tx.send(answer.map_err(|e| format!("{e:?}")));
        let n = client.next_notification();
        let _ = tx.send(
            n.map_err(|e| format!("{e:?}"))
                .and_then(|n| n.ok_or_else(|| "the stream closed".to_string()))
                .map(|n| json!({ "method": n.method, "params": n.params })),
        );
    });
    let answer = rx
        .recv_timeout(DEADLINE)
        .expect("an answer to wait")
        .expect("wait");
    assert_eq!(answer["running"], true, "{answer}");
    assert_eq!(answer["pid"], waited, "{answer}");

    // SAFETY: kill(2) on the adopted program's pid, alive just now.
    unsafe { libc::kill(waited as libc::pid_t, libc::SIGTERM) };

    let n = rx
        .recv_timeout(DEADLINE)
        .expect("the wait notification")
        .expect("a notification");
    assert_eq!(n["method"], "wait.exited", "{n}");
    assert_eq!(n["params"]["pid"], waited, "{n}");
    for key in ["returncode", "exit_code", "signal"] {
        assert_eq!(n["params"][key], Value::Null, "{key} must be unknown: {n}");
    }

    let status = poll("supctl wait to return", DEADLINE, || {
        ctl_wait.try_wait().expect("try_wait")
    });
    let output = ctl_wait.wait_with_output().expect("supctl wait output");
    assert_eq!(output.status, status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(255),
        "supctl wait of an adopted program: stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(
        format!("{stdout}{stderr}").contains("unknown"),
        "supctl wait must say the status is unknown: stdout {stdout:?} stderr {stderr:?}"
    );
    let s = supd.wait_for("waited", "its run to have ended", |s| s.pid.is_none());
    assert_eq!(s.returncode, None, "{s:?}");
    assert_eq!(s.state.as_str(), "exited", "{s:?}");
    assert!(!alive(waited));
}

// ---------------------------------------------------------------------------
// 2. Output keeps flowing
// ---------------------------------------------------------------------------

/// Ticks in the program's own log file (a `daemon = false` program writes
/// it itself, so it keeps growing while no supd runs).
fn ticks(supd: &Supd) -> usize {
    supd.log_file("ticker.out.log")
        .lines()
        .filter(|l| *l == "tick-tock")
        .count()
}

#[test]
fn adopted_program_output_keeps_flowing_after_the_crash() {
    // DESIGN: "A surviving program's stdout/stderr must not be a pipe whose
    // only reader was the dead daemon: its next write would kill it with
    // SIGPIPE."
    let mut supd = Supd::start(
        r#"
[program.ticker]
command = ["sh", "-c", "while :; do echo tick-tock; sleep 0.05; done"]
start_secs = "0s"
"#,
    );
    let pid = running_pid(&supd, "ticker");
    poll("the first ticks in the log", DEADLINE, || {
        (ticks(&supd) >= 3).then_some(())
    });
    supd.signal_daemon(libc::SIGKILL);
    supd.wait_exit(DEADLINE);

    // About a second of output (20 ticks at 50 ms) written with no supd.
    let at_kill = ticks(&supd);
    let log = supd.log_dir().join("ticker.out.log");
    let size_at_kill = std::fs::metadata(&log).expect("log").len();
    poll("20 more ticks after supd's death", DEADLINE, || {
        (ticks(&supd) >= at_kill + 20).then_some(())
    });
    assert!(alive(pid), "the program died after supd (SIGPIPE?)");
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size > size_at_kill, "the log stopped growing");

    // The next supd adopts it, and it still writes.
    supd.restart_daemon();
    let s = supd.wait_state("ticker", "running");
    assert_eq!((s.pid, s.adopted), (Some(pid), true), "{s:?}");
    let after_restart = ticks(&supd);
    poll("more ticks once adopted", DEADLINE, || {
        (ticks(&supd) >= after_restart + 5).then_some(())
    });
    assert!(alive(pid));
}

// ---------------------------------------------------------------------------
// 3 and 4. Stale and corrupt state files
// ---------------------------------------------------------------------------

const TWO_PROGRAMS: &str = r#"
[program.keeper]
command = ["sleep", "300"]
start_secs = "0s"

[program.guarded]
command = ["sleep", "300"]
start_secs = "0s"
daemon = true
"#;

/// Ends supd cleanly (its daemon = false program stopped first, so the
/// shutdown does not wait for it), puts `bytes` in place of its state file,
/// and starts it again.
fn restart_with_state_file(supd: &mut Supd, bytes: &[u8]) {
    let (code, _, err) = supd.ctl_text(&["stop", "keeper"]);
    assert_eq!(code, 0, "stop keeper: {err}");
    let (code, _, err) = supd.ctl_text(&["shutdown"]);
    assert_eq!(code, 0, "shutdown: {err}");
    assert_eq!(
        supd.wait_exit(DEADLINE),
        0,
        "supd exit; log:\n{}",
        supd.log()
    );
    std::fs::write(supd.dir.path().join("supd-state.json"), bytes).expect("write state file");
    supd.restart_daemon();
}

/// Both programs run as fresh, non-adopted processes that are not `decoys`.
fn assert_started_afresh(supd: &Supd, decoys: &[&Recorder], what: &str) {
    for name in ["keeper", "guarded"] {
        let s = supd.wait_state(name, "running");
        let pid = s.pid.expect("pid");
        assert!(!s.adopted, "{what}: {name} was adopted: {s:?}");
        assert!(
            decoys.iter().all(|d| d.pid != pid),
            "{what}: {name} claims a process that is not supd's: {s:?}"
        );
        assert_eq!(
            environ_var(pid, "SUP_PROGRAM").as_deref(),
            Some(name),
            "{what}: {name}'s pid {pid} is not a process supd started"
        );
    }
}

fn record(pid: u32, start_time: u64, daemon: bool) -> Value {
    json!({ "pid": pid, "start_time": start_time, "daemon": daemon, "marker": "1.1" })
}

#[test]
fn stale_state_file_adopts_nothing_and_signals_nothing() {
    // DESIGN: a recorded process is adopted only if "its pid still has the
    // same start time"; "after a reboot nothing is adopted". A pid whose
    // start time differs is another process: never adopted or signalled.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut guard = Spawned::default();
    let plain = Recorder::start(&tmp.path().join("plain"), &mut guard);
    let daemon = Recorder::start(&tmp.path().join("daemon"), &mut guard);
    let (plain_start, daemon_start) = (
        start_time(plain.pid).expect("start time"),
        start_time(daemon.pid).expect("start time"),
    );
    let mut plain_sigs = Vec::new();
    let mut daemon_sigs = Vec::new();

    let mut supd = Supd::start(TWO_PROGRAMS);
    let processes = json!({
        "keeper": record(plain.pid, plain_start, false),
        "guarded": record(daemon.pid, daemon_start, true),
    });
    let wrong_start = json!({
        "keeper": record(plain.pid, plain_start + 1, false),
        "guarded": record(daemon.pid, daemon_start + 1, true),
    });
    let cases = [
        (
            "wrong start times",
            json!({"version": 1, "boot_id": boot_id(), "processes": wrong_start}),
        ),
        (
            "another boot",
            json!({"version": 1, "boot_id": "00000000-0000-4000-8000-000000000000", "processes": processes}),
        ),
        ("no boot id", json!({"version": 1, "processes": processes})),
    ];
    for (what, state) in cases {
        restart_with_state_file(&mut supd, state.to_string().as_bytes());
        assert_started_afresh(&supd, &[&plain, &daemon], what);
        plain.assert_untouched(&mut plain_sigs, what);
        daemon.assert_untouched(&mut daemon_sigs, what);
    }
}

#[test]
fn corrupt_state_file_adopts_nothing_and_signals_nothing() {
    // DESIGN: "A corrupt state file adopts nothing and signals nothing."
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut guard = Spawned::default();
    let plain = Recorder::start(&tmp.path().join("plain"), &mut guard);
    let daemon = Recorder::start(&tmp.path().join("daemon"), &mut guard);
    let mut plain_sigs = Vec::new();
    let mut daemon_sigs = Vec::new();

    // Right boot id, right start times, but cut short: not JSON.
    let full = json!({
        "version": 1,
        "boot_id": boot_id(),
        "processes": {
            "keeper": record(plain.pid, start_time(plain.pid).expect("start"), false),
            "guarded": record(daemon.pid, start_time(daemon.pid).expect("start"), true),
        },
    })
    .to_string();
    let truncated = full.as_bytes()[..full.len() - 2].to_vec();
    // Garbage: bytes of every value, invalid UTF-8 and NULs included.
    let mut garbage = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        garbage.push((x >> 24) as u8);
    }
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage bytes", garbage),
        ("truncated JSON", truncated),
        (
            "JSON of the wrong shape",
            br#"{"processes": [1, 2, 3], "boot_id": 7}"#.to_vec(),
        ),
    ];

    let mut supd = Supd::start(TWO_PROGRAMS);
    for (what, bytes) in cases {
        restart_with_state_file(&mut supd, &bytes);
        assert_started_afresh(&supd, &[&plain, &daemon], what);
        plain.assert_untouched(&mut plain_sigs, what);
        daemon.assert_untouched(&mut daemon_sigs, what);
        // It runs its programs normally: a stop and a start work, and a
        // good state file replaces the corrupt one.
        let (code, _, err) = supd.ctl_text(&["restart", "keeper", "guarded"]);
        assert_eq!(code, 0, "{what}: restart: {err}");
        let state: Value = serde_json::from_slice(
            &std::fs::read(supd.dir.path().join("supd-state.json")).expect("state file"),
        )
        .unwrap_or_else(|e| panic!("{what}: the state file is still corrupt: {e}"));
        for name in ["keeper", "guarded"] {
            let pid = supd.status(name).pid.expect("pid");
            assert_eq!(
                state["processes"][name]["pid"], pid,
                "{what}: state file {state}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 5. PID 1 in a container
// ---------------------------------------------------------------------------

/// supd as PID 1 of a new pid namespace, under `unshare --pid --fork
/// --mount-proc`.
struct Contained {
    dir: tempfile::TempDir,
    socket: PathBuf,
    unshare: Option<Child>,
    /// supd's pid as seen from outside the namespace.
    supd: u32,
    marker: String,
}

impl Contained {
    fn start(config: &str) -> Contained {
        let dir = tempfile::Builder::new()
            .prefix("supd-ns-")
            .tempdir()
            .expect("tempdir");
        let cfg = write_file(dir.path(), "supd.toml", config);
        let socket = dir.path().join("supd.sock");
        let log = std::fs::File::create(dir.path().join("supd.log")).expect("log");
        let marker = format!("ns-{}-{}", std::process::id(), dir.path().display());
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(SUPD)
            .arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&socket)
            .arg("-v")
            .env("SUP_TEST_MARKER", &marker)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("unshare(1) is needed by this test (util-linux)");
        let outer = unshare.id();
        let mut me = Contained {
            dir,
            socket,
            unshare: Some(unshare),
            supd: 0,
            marker,
        };
        me.supd = poll("supd to start inside the namespace", DEADLINE, || {
            children_of(outer)
                .into_iter()
                .map(|(p, _)| p)
                .find(|&p| cmdline(p).first().is_some_and(|a| a.ends_with("supd")))
        });
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("supd.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        output_text(&supctl_at(&self.socket, args))
    }

    /// Waits for `unshare` to exit; returns its exit code.
    fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let child = self.unshare.as_mut().expect("unshare");
        let status = poll("unshare (and supd in it) to exit", deadline, || {
            child.try_wait().expect("try_wait")
        });
        self.unshare = None;
        status.code().unwrap_or(-1)
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(mut child) = self.unshare.take() {
            // SIGKILL to the namespace's init takes the whole namespace down.
            // SAFETY: kill(2) on supd, unshare's unreaped child.
            unsafe { libc::kill(self.supd as libc::pid_t, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker);
    }
}

fn nspids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn supd_as_pid_1(how: impl FnOnce(&Contained)) {
    // DESIGN "Containers": as PID 1, the same code reaps every orphan and
    // handles SIGTERM/SIGINT as shutdown (PID 1 has no default signal
    // actions).
    let tmp = tempfile::tempdir().expect("tempdir");
    let forked = tmp.path().join("forked");
    let mut c = Contained::start(&format!(
        r#"
[supd]
shutdown_timeout = "1s"

[program.forker]
command = {}
start_secs = "0s"
daemon = true

[program.worker]
command = ["sleep", "300"]
start_secs = "0s"
"#,
        argv(&[
            "sh",
            "-c",
            r#"for i in $(seq 20); do (sleep 2 &); done; : > "$0"; exec sleep 300"#,
            path_str(&forked),
        ])
    ));
    assert_eq!(
        nspids(c.supd),
        vec![c.supd, 1],
        "supd is not PID 1 of its namespace"
    );

    // The control socket works across the namespace boundary.
    poll(
        "supctl status to answer with both running",
        DEADLINE,
        || (c.ctl(&["status"]).0 == 0).then_some(()),
    );
    let (_, out, _) = c.ctl(&["status"]);
    assert!(
        out.contains("forker") && out.contains("worker"),
        "status: {out}"
    );

    // The double-forked grandchildren are orphans: their parent is supd
    // (init of the namespace and subreaper), which reaps them when they end.
    poll("the fork loop to finish", DEADLINE, || {
        forked.exists().then_some(())
    });
    let grandchildren: Vec<u32> = children_of(c.supd)
        .into_iter()
        .filter(|&(p, s)| s != 'Z' && cmdline(p) == ["sleep", "2"])
        .map(|(p, _)| p)
        .collect();
    assert!(
        !grandchildren.is_empty(),
        "no orphaned grandchild under supd"
    );
    wait_all_reaped(
        "every grandchild to end and be reaped",
        &grandchildren,
        Duration::from_secs(10),
    );
    poll("no zombie left under supd", DEADLINE, || {
        zombies_of(c.supd).is_empty().then_some(())
    });

    let programs = processes_with_env("SUP_TEST_MARKER", &c.marker)
        .into_iter()
        .filter(|&p| p != c.supd && !is_sentinel(p))
        .collect::<Vec<_>>();
    assert!(programs.len() >= 2, "programs: {programs:?}");

    how(&c);
    let code = c.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0, "supd as PID 1 exit status; log:\n{}", c.log());
    wait_all_dead("every program to be gone", &programs, DEADLINE);
    assert!(
        processes_with_env("SUP_TEST_MARKER", &c.marker).is_empty(),
        "processes of the namespace survived"
    );
    assert!(
        c.log().contains("supd stopped"),
        "supd did not stop cleanly; log:\n{}",
        c.log()
    );
}

// `unshare --fork` blocks SIGTERM and SIGINT while it waits (util-linux),
// so they go straight to PID 1, as a container runtime sends them.

#[test]
fn supd_as_pid_1_shuts_down_on_sigterm() {
    supd_as_pid_1(|c| {
        // SAFETY: kill(2) on supd, unshare's unreaped child.
        let rc = unsafe { libc::kill(c.supd as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
    });
}

#[test]
fn supd_as_pid_1_shuts_down_on_sigint() {
    supd_as_pid_1(|c| {
        // SAFETY: kill(2) on supd, unshare's unreaped child.
        let rc = unsafe { libc::kill(c.supd as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0);
    });
}

#[test]
fn supd_as_pid_1_shuts_down_on_supctl_shutdown() {
    supd_as_pid_1(|c| {
        let (code, out, err) = c.ctl(&["shutdown"]);
        assert_eq!(code, 0, "shutdown: {out} {err}");
    });
}

// ---------------------------------------------------------------------------
// 6. orphans = "keep" and "kill"
// ---------------------------------------------------------------------------

/// The `n` orphans (`sleep 300`) that supd adopted for a program whose main
/// is `main`, sorted.
fn find_orphans(supd: &Supd, main: u32, n: usize) -> Vec<u32> {
    poll(&format!("{n} adopted orphans"), DEADLINE, || {
        let mut found: Vec<u32> = children_of(supd.pid())
            .into_iter()
            .filter(|&(p, s)| p != main && s != 'Z' && cmdline(p) == ["sleep", "300"])
            .map(|(p, _)| p)
            .collect();
        found.sort_unstable();
        (found.len() == n).then_some(found)
    })
}

#[test]
fn orphans_keep_survive_the_stop_of_their_program() {
    // config: "keep": leave them running; they are listed under the
    // program's `orphans` in status, and still reaped by supd when they end
    // (as opposed to "kill": "SIGKILL them when the main process ends (and
    // with the program's stop)").
    let tmp = tempfile::tempdir().expect("tempdir");
    let (supd, main) = start_leaver(tmp.path(), TWO_ORPHANS, "orphans = \"keep\"");
    // One stayed in the program's process group, one left it (setsid).
    let orphans = find_orphans(&supd, main, 2);
    let mut guard = Spawned::default();
    for &o in &orphans {
        guard.add_pid(o);
    }
    supd.wait_for("leaver", "the orphans listed", |s| s.orphans == orphans);

    let (code, _, err) = supd.ctl_text(&["stop", "leaver"]);
    assert_eq!(code, 0, "{err}");
    wait_all_dead("the main process to be stopped", &[main], DEADLINE);
    let s = supd.status("leaver");
    assert_eq!(s.state.as_str(), "stopped", "{s:?}");
    let dead: Vec<u32> = orphans.iter().copied().filter(|&o| !alive(o)).collect();
    assert!(
        dead.is_empty(),
        "orphans {dead:?} of an orphans = \"keep\" program were killed by the stop"
    );
    assert_eq!(s.orphans, orphans, "the kept orphans are no longer listed");

    // Our own cleanup: supd reaps them and forgets them.
    for &o in &orphans {
        // SAFETY: kill(2) on supd's unreaped child, alive just now.
        unsafe { libc::kill(o as libc::pid_t, libc::SIGKILL) };
    }
    wait_all_reaped("supd to reap the kept orphans", &orphans, DEADLINE);
    supd.wait_for("leaver", "no orphan listed", |s| s.orphans.is_empty());
}

/// Runs a program (with `extra` config lines) whose main process leaves an
/// orphan in its group, then exits 0 on its own once the orphan is listed in
/// status. Returns supd, the orphan, and a guard that kills it.
fn main_exits_leaving_an_orphan(extra: &str) -> (Supd, u32, Spawned, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let go = tmp.path().join("go");
    // An orphan in its group, then a wait for `go`.
    let script = format!(
        r#"(sleep 300 &); : > "$0"; while [ ! -e {} ]; do sleep 0.02; done"#,
        path_str(&go)
    );
    let (supd, main) = start_leaver(
        tmp.path(),
        &script,
        &format!("restart = \"never\"\n{extra}"),
    );
    let orphan = find_orphans(&supd, main, 1)[0];
    let mut guard = Spawned::default();
    guard.add_pid(orphan);
    supd.wait_for("leaver", "the orphan listed", |s| s.orphans == [orphan]);

    std::fs::write(&go, "").expect("go");
    let s = supd.wait_state("leaver", "exited");
    assert_eq!(s.returncode, Some(0), "{s:?}");
    wait_all_reaped("the main process to be reaped", &[main], DEADLINE);
    (supd, orphan, guard, tmp)
}

#[test]
fn orphans_die_with_a_main_that_exits_on_its_own() {
    // config: "kill" (default): SIGKILL them when the main process ends.
    let (supd, orphan, _guard, _tmp) = main_exits_leaving_an_orphan("");
    wait_all_reaped(
        "the orphan to die with its main and be reaped",
        &[orphan],
        DEADLINE,
    );
    assert!(supd.status("leaver").orphans.is_empty());
}

#[test]
fn orphans_keep_survive_a_main_that_exits_on_its_own() {
    let (supd, orphan, _guard, _tmp) = main_exits_leaving_an_orphan("orphans = \"keep\"");
    // The kill would have come with the reap of the main process, which is
    // done by now (the program is `exited`).
    assert!(alive(orphan), "a kept orphan died with its main process");
    assert_eq!(supd.status("leaver").orphans, [orphan]);
    // SAFETY: kill(2) on supd's unreaped child, alive just now.
    unsafe { libc::kill(orphan as libc::pid_t, libc::SIGKILL) };
    wait_all_reaped("supd to reap the kept orphan", &[orphan], DEADLINE);
    supd.wait_for("leaver", "no orphan listed", |s| s.orphans.is_empty());
}

// ---------------------------------------------------------------------------
// 7. SIGKILL of supd while it starts a daemon program, 200 times
// ---------------------------------------------------------------------------

/// Every process carrying `SUP_TEST_MARKER=marker` is SIGKILLed on drop.
struct MarkerSweep(String);

impl Drop for MarkerSweep {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

#[test]
fn two_hundred_sigkills_during_start_leave_no_daemon_program_behind() {
    // SPEC §2: daemon = true "dies with supd even when supd is killed with
    // SIGKILL", whatever moment the SIGKILL hits: before, during or after
    // the spawn (DESIGN: PDEATHSIG, the getppid() check, the sentinel).
    const ROUNDS: usize = 200;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write_file(
        tmp.path(),
        "supd.toml",
        r#"
[program.guarded]
command = ["sleep", "300"]
start_secs = "0s"
daemon = true
"#,
    );
    let marker = format!("storm-{}-{}", std::process::id(), tmp.path().display());
    let _sweep = MarkerSweep(marker.clone());
    let t0 = Instant::now();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut spawned = 0;
    for round in 0..ROUNDS {
        let dir = tmp.path().join(format!("r{round}"));
        std::fs::create_dir(&dir).expect("round dir");
        let mut child = Command::new(SUPD)
            .arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(dir.join("supd.sock"))
            .env("SUP_TEST_MARKER", &marker)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn supd");
        // A delay from 0 to 8 ms (supd records the spawn about 5 ms in).
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_micros((seed >> 33) % 8000);
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL supd");
        child.wait().expect("reap supd");
        if std::fs::read_to_string(dir.join("supd-state.json"))
            .is_ok_and(|s| s.contains("\"guarded\""))
        {
            spawned += 1;
        }
    }
    let rounds_took = t0.elapsed();
    eprintln!("{ROUNDS} rounds in {rounds_took:?}; the program was spawned in {spawned}");
    assert!(
        spawned > 0,
        "no round got as far as spawning the program: the test proves nothing"
    );
    assert!(
        rounds_took < Duration::from_secs(50),
        "the rounds took {rounds_took:?}"
    );
    let survivors = poll_survivors(&marker, Duration::from_secs(10));
    assert!(
        survivors.is_empty(),
        "processes outlived their SIGKILLed supd: {survivors:?}"
    );
}

/// Polls until no process carries `marker` and returns the empty list, or
/// returns the survivors (with their command lines) at the deadline.
fn poll_survivors(marker: &str, deadline: Duration) -> Vec<(u32, Vec<String>)> {
    let end = Instant::now() + deadline;
    loop {
        let left: Vec<(u32, Vec<String>)> = processes_with_env("SUP_TEST_MARKER", marker)
            .into_iter()
            .filter(|&p| alive(p))
            .map(|p| (p, cmdline(p)))
            .collect();
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// 8. PID reuse
// ---------------------------------------------------------------------------

/// Starts a [`Recorder`] whose pid is `pid`, reusing it: the kernel's next
/// pid is set through `/proc/sys/kernel/ns_last_pid` (root). Other forks on
/// the machine may take it first, so a few tries are made.
fn recorder_with_pid(pid: u32, log: &Path, guard: &mut Spawned) -> Recorder {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (needs root)");
        let child = Recorder::command(log).spawn().expect("spawn recorder");
        let got = guard.add(child);
        if got == pid {
            let r = Recorder {
                pid,
                log: log.to_path_buf(),
            };
            r.wait_ready();
            return r;
        }
        let mut c = guard.children.pop().expect("child");
        let _ = c.kill();
        let _ = c.wait();
    }
    panic!("could not get pid {pid} again for the recorder");
}

#[test]
fn signals_after_the_program_exits_never_reach_a_reused_pid() {
    // DESIGN "Signalling without hitting the wrong process": a pid can be
    // reused the moment its zombie is reaped.
    let tmp = tempfile::tempdir().expect("tempdir");
    let supd = Supd::start(
        r#"
[program.brief]
command = ["sleep", "300"]
start_secs = "0s"
restart = "never"
"#,
    );
    let pid = running_pid(&supd, "brief");
    // It ends on its own (SIGTERM from outside: an exit supd did not cause).
    // SAFETY: kill(2) on the program's pid, alive just now.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let s = supd.wait_state("brief", "exited");
    assert_eq!((s.pid, s.returncode), (None, Some(-libc::SIGTERM)), "{s:?}");
    wait_all_reaped("the program to be reaped", &[pid], DEADLINE);

    let mut guard = Spawned::default();
    let recorder = recorder_with_pid(pid, &tmp.path().join("rec"), &mut guard);
    let mut sigs = Vec::new();

    let (code, out, err) = supd.ctl_text(&["signal", "brief", "HUP"]);
    assert_eq!(code, 1, "signal of an exited program: {out} {err}");
    assert!(err.contains("not running"), "{err}");
    let (code, out, err) = supd.ctl_text(&["kill", "brief"]);
    assert_eq!(code, 1, "kill of an exited program: {out} {err}");
    assert!(err.contains("not running"), "{err}");
    for (method, params) in [
        ("signal", json!({"names": ["brief"], "signal": "HUP"})),
        ("kill", json!({"names": ["brief"]})),
    ] {
        let e = supd
            .call(method, params)
            .expect_err("an exited program has no process");
        let text = format!("{e:?}");
        assert!(
            text.contains("not_running") || text.contains("NotRunning"),
            "{method}: {text}"
        );
    }
    recorder.assert_untouched(&mut sigs, "a process that reused the program's pid");
    let s = supd.status("brief");
    assert_eq!((s.state.as_str(), s.pid), ("exited", None), "{s:?}");
}

// ---------------------------------------------------------------------------
// 9. A bounded fork storm
// ---------------------------------------------------------------------------

/// Starts a program that runs `n` copies of `sleep 300` in the background
/// (with `prefix` before each: `setsid`, say), after `setup` (shell code),
/// stops it, and checks that the stop ends within `stop_timeout` + 2 s with
/// every sleep gone. Returns whether the stop was escalated.
fn fork_storm(n: usize, setup: &str, prefix: &str, stop_timeout: Duration) -> bool {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ready = tmp.path().join("ready");
    let supd = Supd::start(&format!(
        "[program.storm]\ncommand = {}\nstart_secs = \"0s\"\nstop_timeout = \"{}ms\"\n",
        argv(&[
            "sh",
            "-c",
            &format!(
                r#"{setup} for i in $(seq {n}); do {prefix} sleep 300 & done; : > "$0"; wait"#
            ),
            path_str(&ready),
        ]),
        stop_timeout.as_millis()
    ));
    let main = running_pid(&supd, "storm");
    poll("the storm to be spawned", DEADLINE, || {
        ready.exists().then_some(())
    });
    let sleeps = wait_children_running(main, &["sleep", "300"], n);

    let t0 = Instant::now();
    let (code, out, err) = ctl_json(&supd, &["stop", "storm"]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "stop: {out} {err}");
    let bound = stop_timeout + Duration::from_secs(2);
    assert!(took <= bound, "stop took {took:?}, more than {bound:?}");
    wait_all_dead(
        "every sleep of the storm to be gone",
        &sleeps,
        Duration::from_secs(2),
    );
    wait_all_reaped("every sleep reaped", &sleeps, DEADLINE);
    assert!(zombies_of(supd.pid()).is_empty());
    escalated(&out[0])
}

#[test]
fn fork_storm_of_200_is_stopped_within_stop_timeout() {
    let escalated = fork_storm(200, "", "", Duration::from_secs(5));
    assert!(!escalated, "SIGTERM should have been enough");
}

#[test]
fn term_ignoring_fork_storm_of_200_is_killed_at_stop_timeout() {
    // The ignored disposition is inherited by each sleep: only the SIGKILL
    // at stop_timeout ends them, all at once.
    let escalated = fork_storm(200, "trap '' TERM;", "", Duration::from_secs(1));
    assert!(escalated, "the stop should have been escalated");
}

#[test]
fn fork_storm_that_leaves_the_process_group_is_stopped_too() {
    // DESIGN: "A process group misses a descendant that called setsid()"
    // ... "otherwise kill the group and every adopted orphan by pidfd".
    fork_storm(50, "", "setsid", Duration::from_secs(2));
}
