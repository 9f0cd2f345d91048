//! Restart policies, backoff, start retries, pools (`instances`, `scale`),
//! dependencies (`depends_on`), desired state across a restart of supd, and
//! the event stream: black-box through `supctl`, the protocol client and
//! real processes. Timing is measured against bounds (from the events'
//! `time` stamps), never against exact sleeps.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::util::*;

// ---------------------------------------------------------------- helpers

/// `sh -c SCRIPT` as a program.
fn sh(name: &str, script: &str, extra: &str) -> String {
    prog(name, &["sh", "-c", script], extra)
}

/// Runs supctl and asserts it exits 0.
fn ctl_ok(supd: &Supd, args: &[&str]) -> String {
    let (code, out, err) = supd.ctl_text(args);
    assert_eq!(code, 0, "supctl {args:?}: {out}{err}");
    out
}

/// Clock ticks a second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// When process `pid` started, in seconds since boot (field 22).
fn start_time_secs(pid: u32) -> f64 {
    start_time(pid).expect("process exists") as f64 / clock_ticks() as f64
}

/// CPU time (utime + stime, fields 14 and 15) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid).expect("process exists");
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    utime + stime
}

/// An event's `time` field.
fn event_time(e: &Value) -> SystemTime {
    let t = e["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no time in {e}"));
    humantime::parse_rfc3339(t).unwrap_or_else(|err| panic!("time {t:?} is not RFC 3339: {err}"))
}

/// `b - a` in seconds (negative when b is earlier).
fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Whether `e` is `name` entering `to`.
fn is(e: &Value, name: &str, to: &str) -> bool {
    e["name"] == name && e["to"] == to
}

/// The events a subscriber has received, as JSON objects, read on a
/// background thread (from the protocol client, or from `supctl events`'
/// stdout). Everything received is kept in `seen`, in order.
struct EventLog {
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    closed: bool,
    child: Option<Child>,
}

impl EventLog {
    /// Subscribes through the protocol client; the subscription is in place
    /// when this returns (the daemon has answered `{"subscribed": true}`).
    fn subscribe(supd: &Supd) -> EventLog {
        let mut client = supd.client();
        let answer = client.call("events", json!({})).expect("events");
        assert_eq!(answer, json!({ "subscribed": true }));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(n)) = client.next_notification() {
                if n.method == "event" && tx.send(n.params).is_err() {
                    break;
                }
            }
        });
        EventLog {
            rx,
            seen: Vec::new(),
            closed: false,
            child: None,
        }
    }

    /// Runs `supctl [--json] events` in the background and reads its lines
    /// (JSON objects with `json`, else `{"line": TEXT}`).
    fn supctl(supd: &Supd, json: bool) -> EventLog {
        let args: &[&str] = if json {
            &["--json", "events"]
        } else {
            &["events"]
        };
        let mut child = supctl_cmd(&supd.socket, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn supctl events");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = if json {
                    serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("supctl --json events printed a non-JSON line {line:?}: {e}")
                    })
                } else {
                    json!({ "line": line })
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        EventLog {
            rx,
            seen: Vec::new(),
            closed: false,
            child: Some(child),
        }
    }

    /// Receives until an event satisfies `pred` (returns it), panicking
    /// after `deadline`.
    fn wait_for(&mut self, what: &str, deadline: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "timed out after {deadline:?} waiting for the event: {what}; seen:\n{}",
                    self.dump()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    panic!(
                        "the event stream ended before the event: {what}; seen:\n{}",
                        self.dump()
                    )
                }
            }
        }
    }

    /// Receives until the events seen so far satisfy `pred`.
    fn wait_seen(&mut self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !pred(&self.seen) {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(_) => panic!(
                    "no {what} within {DEADLINE:?} (or the stream ended); seen:\n{}",
                    self.dump()
                ),
            }
        }
    }

    /// Receives until `name` enters `to`.
    fn wait_to(&mut self, name: &str, to: &str) -> Value {
        self.wait_for(&format!("{name} -> {to}"), DEADLINE, |e| is(e, name, to))
    }

    /// Receives everything until the daemon closes the stream.
    fn until_closed(&mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        while !self.closed {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "the event stream was not closed within {deadline:?}; seen:\n{}",
                    self.dump()
                ),
            }
        }
    }

    /// Takes what has arrived so far without waiting.
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    /// Index in `seen` of the first event satisfying `pred`.
    fn position(&self, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
        self.seen
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no event {what} in:\n{}", self.dump()))
    }

    /// The events seen for `name`.
    fn of(&self, name: &str) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["name"] == name).collect()
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes sure a background `supctl events` is subscribed: restarts the
/// program `probe` until one of its events shows up in `log`, then forgets
/// what was seen so far (the running event is the restart's last).
fn sync_on_probe(supd: &Supd, log: &mut EventLog, json: bool) {
    let end = Instant::now() + DEADLINE;
    let probe_seen = |log: &EventLog| {
        log.seen.iter().any(|e| {
            if json {
                is(e, "probe", "running")
            } else {
                e["line"]
                    .as_str()
                    .is_some_and(|l| l.contains("probe: starting -> running"))
            }
        })
    };
    loop {
        ctl_ok(supd, &["restart", "probe"]);
        let round = Instant::now() + Duration::from_millis(300);
        while Instant::now() < round && !probe_seen(log) {
            if let Ok(e) = log.rx.recv_timeout(Duration::from_millis(20)) {
                log.seen.push(e);
            }
        }
        if probe_seen(log) {
            break;
        }
        assert!(
            Instant::now() < end,
            "supctl events never showed an event of probe"
        );
    }
    log.seen.clear();
}

/// The gaps (seconds) from each `to: backoff` event of `name` to the next
/// `to: starting` event, in order.
fn backoff_gaps(events: &[Value], name: &str) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut backoff_at = None;
    for e in events.iter().filter(|e| e["name"] == name) {
        if e["to"] == "backoff" {
            backoff_at = Some(event_time(e));
        } else if e["to"] == "starting" && e["from"] == "backoff" {
            let at = backoff_at.take().expect("a retry follows a backoff");
            gaps.push(secs_between(at, event_time(e)));
        }
    }
    gaps
}

/// Checks measured backoff delays against the expected ones (±10 % jitter,
/// plus a tolerance for timer and spawn latency on a busy machine).
fn assert_delays(gaps: &[f64], expected_ms: &[u64]) {
    assert!(
        gaps.len() >= expected_ms.len(),
        "{} delays measured, {} expected: {gaps:?}",
        gaps.len(),
        expected_ms.len()
    );
    eprintln!(
        "backoff delays (ms): measured {:?}, expected {expected_ms:?}",
        gaps.iter()
            .map(|g| (g * 1000.0).round())
            .collect::<Vec<_>>()
    );
    for (i, (&gap, &exp)) in gaps.iter().zip(expected_ms).enumerate() {
        let exp = exp as f64 / 1000.0;
        let low = exp * 0.85;
        let high = exp * 1.1 + 0.15;
        assert!(
            (low..=high).contains(&gap),
            "delay #{i} was {:.0} ms, expected {:.0} ms (from {:.0} to {:.0} ms); all: {:?}",
            gap * 1000.0,
            exp * 1000.0,
            low * 1000.0,
            high * 1000.0,
            gaps.iter()
                .map(|g| (g * 1000.0).round())
                .collect::<Vec<_>>()
        );
    }
}

// ------------------------------------------------------- restart policies

#[test]
fn always_restarts_after_a_clean_exit() {
    let supd = Supd::start(&sh(
        "clean",
        "exit 0",
        "restart = \"always\"\nstart_secs = \"0s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"",
    ));
    let mut log = EventLog::subscribe(&supd);
    let s = supd.wait_for("clean", "3 restarts", |s| s.restarts >= 3);
    assert!(
        !matches!(s.state.as_str(), "exited" | "fatal"),
        "a clean exit is restarted: {s:?}"
    );
    // Each run ended with 0, and was started again anyway.
    let e = log.wait_to("clean", "backoff");
    assert_eq!(
        (&e["returncode"], &e["exit_code"]),
        (&json!(0), &json!(0)),
        "{e}"
    );
    log.wait_for("clean restarted", DEADLINE, |e| {
        e["name"] == "clean" && e["from"] == "backoff" && e["to"] == "starting"
    });
    ctl_ok(&supd, &["stop", "clean"]);
    assert_eq!(supd.status("clean").state.as_str(), "stopped");
}

#[test]
fn on_failure_restarts_after_a_failing_exit() {
    let supd = Supd::start(&sh(
        "fails",
        "exit 1",
        "restart = \"on-failure\"\nstart_secs = \"0s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"",
    ));
    let s = supd.wait_for("fails", "3 restarts", |s| s.restarts >= 3);
    assert!(
        !matches!(s.state.as_str(), "exited" | "fatal"),
        "a failing exit is restarted: {s:?}"
    );
    let mut log = EventLog::subscribe(&supd);
    let e = log.wait_to("fails", "backoff");
    assert_eq!(
        (&e["returncode"], &e["exit_code"]),
        (&json!(1), &json!(1)),
        "{e}"
    );
}

#[test]
fn on_failure_does_not_restart_a_listed_exit_code() {
    let extra = "restart = \"on-failure\"\nstart_secs = \"0s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"";
    let supd = Supd::start(
        &(sh("listed", "exit 3", &format!("{extra}\nexit_codes = [0, 3]"))
            + &sh("zero", "exit 0", extra)
            + &sh(
                "unlisted",
                "exit 4",
                &format!("{extra}\nexit_codes = [0, 3]"),
            )
            + &sh(
                "zero_not_listed",
                "exit 0",
                &format!("{extra}\nexit_codes = [3]"),
            )),
    );
    // Listed codes (3 here, 0 by default) end the program: exited, no restart.
    let s = supd.wait_state("listed", "exited");
    assert_eq!(
        (s.returncode, s.exit_code, s.restarts),
        (Some(3), Some(3), 0),
        "{s:?}"
    );
    let s = supd.wait_state("zero", "exited");
    assert_eq!((s.returncode, s.restarts), (Some(0), 0), "{s:?}");
    // A code not in the list is a failure, even 0 when the list leaves it out.
    supd.wait_for("unlisted", "2 restarts", |s| s.restarts >= 2);
    supd.wait_for("zero_not_listed", "2 restarts", |s| s.restarts >= 2);
    // And the exited ones stay exited.
    assert_eq!(supd.status("listed").restarts, 0);
    assert_eq!(supd.status("listed").state.as_str(), "exited");
}

#[test]
fn never_does_not_restart_even_a_failure() {
    let extra = "restart = \"never\"\nstart_secs = \"0s\"\nbackoff_initial = \"50ms\"";
    let supd = Supd::start(&(sh("fail", "exit 1", extra) + &sh("ok", "exit 0", extra)));
    let s = supd.wait_state("fail", "exited");
    assert_eq!(
        (s.returncode, s.exit_code, s.restarts),
        (Some(1), Some(1), 0),
        "{s:?}"
    );
    assert!(s.exited_at.is_some(), "{s:?}");
    let s = supd.wait_state("ok", "exited");
    assert_eq!((s.returncode, s.restarts), (Some(0), 0), "{s:?}");
    // A new run (by hand) is allowed, and ends the same way.
    let mut log = EventLog::subscribe(&supd);
    supd.ctl_text(&["start", "fail"]);
    log.wait_for("fail exits again", DEADLINE, |e| {
        e["name"] == "fail" && e["from"] == "running" && e["to"] == "exited"
    });
    assert_eq!(supd.status("fail").restarts, 0);
}

#[test]
fn death_by_a_signal_counts_as_failure() {
    // Even with 9 and 137 listed as good exit codes: a signal is no exit code.
    let supd = Supd::start(&sh(
        "killed",
        "kill -KILL $$",
        "restart = \"on-failure\"\nexit_codes = [0, 9, 137]\nstart_secs = \"0s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"",
    ));
    let s = supd.wait_for("killed", "2 restarts", |s| s.restarts >= 2);
    assert!(!matches!(s.state.as_str(), "exited" | "fatal"), "{s:?}");
    let mut log = EventLog::subscribe(&supd);
    let e = log.wait_to("killed", "backoff");
    assert_eq!(e["returncode"], -9, "{e}");
    assert_eq!(e["exit_code"], Value::Null, "{e}");
    assert_eq!(e["signal"], "SIGKILL", "{e}");
}

// ---------------------------------------------- start_secs, retries, fatal

#[test]
fn fatal_after_start_retries_and_start_exits_1() {
    let supd = Supd::start(
        &(sh(
            "flaky",
            "exit 1",
            "start_secs = \"1s\"\nstart_retries = 2\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"\nautostart = false",
        ) + &sh(
            "once",
            "exit 1",
            "start_secs = \"1s\"\nstart_retries = 0\nautostart = false",
        )),
    );
    let mut log = EventLog::subscribe(&supd);
    let started = Instant::now();
    let (code, out, err) = supd.ctl_text(&["start", "flaky"]);
    assert_eq!(
        code, 1,
        "start of a program that never comes up: {out}{err}"
    );
    assert!(err.contains("flaky"), "the error names it: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start answered only after {:?}",
        started.elapsed()
    );
    let s = supd.status("flaky");
    assert_eq!(s.state.as_str(), "fatal", "{s:?}");
    assert_eq!(s.restarts, 2, "the first try and 2 retries: {s:?}");
    assert!(s.error.is_some(), "fatal says why: {s:?}");
    assert_eq!(s.returncode, Some(1), "{s:?}");
    // starting -> backoff twice, then starting -> fatal; never running.
    log.wait_to("flaky", "fatal");
    let tos: Vec<&str> = log
        .of("flaky")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        tos,
        [
            "starting", "backoff", "starting", "backoff", "starting", "fatal"
        ],
        "{}",
        log.dump()
    );

    // start_retries = 0: fatal at the first failure.
    let (code, out, err) = supd.ctl_text(&["start", "once"]);
    assert_eq!(code, 1, "{out}{err}");
    let s = supd.status("once");
    assert_eq!((s.state.as_str(), s.restarts), ("fatal", 0), "{s:?}");
}

#[test]
fn infinite_start_retries_never_become_fatal() {
    let supd = Supd::start(&sh(
        "forever",
        "exit 1",
        "start_secs = \"1s\"\nstart_retries = \"infinite\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"20ms\"",
    ));
    let mut log = EventLog::subscribe(&supd);
    let s = supd.wait_for("forever", "more than 5 restarts", |s| {
        assert_ne!(s.state.as_str(), "fatal", "{s:?}");
        s.restarts > 5
    });
    assert!(matches!(s.state.as_str(), "starting" | "backoff"), "{s:?}");
    log.drain();
    assert!(
        !log.seen.iter().any(|e| e["to"] == "fatal"),
        "{}",
        log.dump()
    );
    // Past the default 3 retries, past 5 here: still going.
    let before = supd.status("forever").restarts;
    supd.wait_for("forever", "still restarting", |s| s.restarts >= before + 2);
}

#[test]
fn start_secs_decides_between_a_crash_and_a_failed_start() {
    // Up for longer than start_secs: running, so its exit is a crash that is
    // restarted even with start_retries = 0.
    // Not up for start_secs: a failed start, fatal with start_retries = 0.
    let script = "sleep 0.4; exit 1";
    let supd = Supd::start(
        &(sh(
            "crashes",
            script,
            "start_secs = \"100ms\"\nstart_retries = 0\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"",
        ) + &sh(
            "slow",
            script,
            "start_secs = \"3s\"\nstart_retries = 0\nbackoff_initial = \"50ms\"",
        )),
    );
    supd.wait_state("crashes", "running");
    let s = supd.wait_for("crashes", "a restart", |s| s.restarts >= 1);
    assert_ne!(s.state.as_str(), "fatal", "{s:?}");
    let s = supd.wait_state("slow", "fatal");
    assert_eq!(s.restarts, 0, "{s:?}");
}

#[test]
fn status_in_backoff_shows_the_last_exit_and_the_next_retry() {
    let supd = Supd::start(&sh(
        "wait5",
        "exit 7",
        "start_secs = \"0s\"\nbackoff_initial = \"5s\"\nbackoff_max = \"5s\"",
    ));
    let s = supd.wait_state("wait5", "backoff");
    let next = s.next_retry_secs.expect("next_retry_secs in backoff");
    assert!(next > 0.0 && next <= 5.0, "next_retry_secs {next}: {s:?}");
    assert_eq!(s.pid, None, "{s:?}");
    assert_eq!(
        (s.returncode, s.exit_code, s.signal.as_deref()),
        (Some(7), Some(7), None),
        "{s:?}"
    );
    let at = humantime::parse_rfc3339(s.exited_at.as_deref().expect("exited_at"))
        .expect("exited_at is RFC 3339");
    let age = secs_between(at, SystemTime::now());
    assert!(
        (-1.0..10.0).contains(&age),
        "exited_at is {age} s ago: {s:?}"
    );
    // The JSON form carries the same fields.
    let (_, out, _) = supd.ctl_text(&["--json", "status", "wait5"]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let row = &v[0];
    assert!(row["next_retry_secs"].as_f64().is_some(), "{row}");
    assert!(row["exited_at"].is_string(), "{row}");
    // A countdown: it shrinks.
    let later = supd.wait_for("wait5", "the countdown to move", |t| {
        t.next_retry_secs.is_some_and(|n| n < next - 0.05)
    });
    assert_eq!(later.state.as_str(), "backoff");
    // Stopping during backoff: stopped at once, no retry pending.
    ctl_ok(&supd, &["stop", "wait5"]);
    let s = supd.status("wait5");
    assert_eq!(s.state.as_str(), "stopped", "{s:?}");
    assert_eq!(s.next_retry_secs, None, "{s:?}");
}

// ---------------------------------------------------------------- backoff

#[test]
fn backoff_doubles_up_to_backoff_max() {
    let supd = Supd::start(&prog(
        "bo",
        &["true"],
        "restart = \"always\"\nstart_retries = \"infinite\"\nstart_secs = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\nautostart = false",
    ));
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["start", "bo"]);
    let expected = [100, 200, 400, 400, 400];
    for i in 0..expected.len() {
        log.wait_for(&format!("retry #{i}"), DEADLINE, |e| {
            e["name"] == "bo" && e["from"] == "backoff" && e["to"] == "starting"
        });
    }
    let gaps = backoff_gaps(&log.seen, "bo");
    assert_delays(&gaps, &expected);
    // Never above backoff_max, as status shows it too.
    let s = supd.wait_for("bo", "in backoff", |s| s.next_retry_secs.is_some());
    assert!(s.next_retry_secs.unwrap() <= 0.4, "{s:?}");
    ctl_ok(&supd, &["stop", "bo"]);
}

#[test]
fn backoff_resets_after_a_run_of_backoff_reset() {
    // Runs 1 to 3 exit at once (delays 100, 200, 400 ms); run 4 lasts
    // 400 ms, longer than backoff_reset, so the next delay is 100 ms again
    // (not 800), then 200.
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
                  if [ $n -eq 4 ]; then sleep 0.4; fi; exit 1";
    let supd = Supd::start(&sh(
        "reset",
        script,
        "cwd = \".\"\nrestart = \"always\"\nstart_retries = \"infinite\"\nstart_secs = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"800ms\"\nbackoff_reset = \"300ms\"\nautostart = false",
    ));
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["start", "reset"]);
    let expected = [100, 200, 400, 100, 200];
    for i in 0..expected.len() {
        log.wait_for(&format!("retry #{i}"), DEADLINE, |e| {
            e["name"] == "reset" && e["from"] == "backoff" && e["to"] == "starting"
        });
    }
    assert_delays(&backoff_gaps(&log.seen, "reset"), &expected);
    ctl_ok(&supd, &["stop", "reset"]);
}

// ------------------------------------------------------ instances, scale

/// `(name, state, pid)` of every status row.
fn rows(supd: &Supd) -> Vec<(String, String, Option<u32>)> {
    supd.status_all()
        .into_iter()
        .map(|s| (s.name, s.state.as_str().to_string(), s.pid))
        .collect()
}

#[test]
fn a_pool_runs_numbered_instances_with_sup_instance() {
    let supd = Supd::start(&prog(
        "x",
        &["sleep", "300"],
        "instances = 3\nstart_secs = \"0s\"\nrestart = \"never\"",
    ));
    let mut pids = Vec::new();
    for i in 0..3 {
        let name = format!("x:{i}");
        let pid = running_pid(&supd, &name);
        assert_eq!(
            environ_var(pid, "SUP_INSTANCE").as_deref(),
            Some(i.to_string().as_str()),
            "{name} (pid {pid})"
        );
        pids.push(pid);
    }
    let names: Vec<String> = rows(&supd).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["x:0", "x:1", "x:2"]);
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "distinct pids: {pids:?}");

    // The pool's name addresses every member: status, stop, start, restart.
    let (code, out, err) = supd.ctl_text(&["status", "x"]);
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..3 {
        assert!(out.contains(&format!("x:{i}")), "{out}");
    }
    ctl_ok(&supd, &["stop", "x"]);
    for (name, state, pid) in rows(&supd) {
        assert_eq!((state.as_str(), pid), ("stopped", None), "{name}");
    }
    for pid in &pids {
        poll("old pool member gone", DEADLINE, || {
            (!alive(*pid)).then_some(())
        });
    }
    ctl_ok(&supd, &["start", "x:1"]);
    let states: Vec<(String, String)> = rows(&supd).into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        states,
        [
            ("x:0".to_string(), "stopped".to_string()),
            ("x:1".to_string(), "running".to_string()),
            ("x:2".to_string(), "stopped".to_string())
        ]
    );
    ctl_ok(&supd, &["stop", "x:1"]);
    ctl_ok(&supd, &["start", "x"]);
    let before: Vec<u32> = (0..3)
        .map(|i| running_pid(&supd, &format!("x:{i}")))
        .collect();
    ctl_ok(&supd, &["restart", "x"]);
    for (i, old) in before.iter().enumerate() {
        let pid = running_pid(&supd, &format!("x:{i}"));
        assert_ne!(pid, *old, "x:{i} restarted");
    }
}

#[test]
fn scale_grows_and_shrinks_highest_first() {
    let supd = Supd::start(&prog(
        "x",
        &["sleep", "300"],
        "instances = 3\nstart_secs = \"0s\"\nrestart = \"never\"",
    ));
    for i in 0..3 {
        running_pid(&supd, &format!("x:{i}"));
    }
    ctl_ok(&supd, &["scale", "x", "5"]);
    let names: Vec<String> = rows(&supd).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["x:0", "x:1", "x:2", "x:3", "x:4"]);
    let mut pids = Vec::new();
    for i in 0..5 {
        let pid = running_pid(&supd, &format!("x:{i}"));
        assert_eq!(
            environ_var(pid, "SUP_INSTANCE"),
            Some(i.to_string()),
            "x:{i}"
        );
        pids.push(pid);
    }

    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["scale", "x", "2"]);
    let names: Vec<String> = poll("the pool to shrink to 2", DEADLINE, || {
        let names: Vec<String> = rows(&supd).into_iter().map(|r| r.0).collect();
        (names.len() == 2).then_some(names)
    });
    assert_eq!(names, ["x:0", "x:1"]);
    log.wait_seen("x:4, x:3 and x:2 stopped", |seen| {
        ["x:4", "x:3", "x:2"]
            .iter()
            .all(|n| seen.iter().any(|e| is(e, n, "stopped")))
    });
    let order: Vec<usize> = ["x:4", "x:3", "x:2"]
        .iter()
        .map(|n| log.position(&format!("{n} stopping"), |e| is(e, n, "stopping")))
        .collect();
    assert!(
        order[0] < order[1] && order[1] < order[2],
        "highest-numbered first: {}",
        log.dump()
    );
    for pid in &pids[2..] {
        poll("removed member's process gone", DEADLINE, || {
            (!alive(*pid)).then_some(())
        });
    }
    assert!(alive(pids[0]) && alive(pids[1]), "the kept ones still run");
    assert_eq!(running_pid(&supd, "x:0"), pids[0]);
    // A removed member is unknown now.
    let (code, out, err) = supd.ctl_text(&["status", "x:2"]);
    assert_eq!(code, 4, "{out}{err}");
}

#[test]
fn scale_of_a_program_that_is_not_a_pool_fails() {
    let supd = Supd::start(&prog(
        "single",
        &["sleep", "300"],
        "start_secs = \"0s\"\nrestart = \"never\"",
    ));
    let pid = running_pid(&supd, "single");
    let (code, out, err) = supd.ctl_text(&["scale", "single", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("single"), "{err}");
    let (code, out, err) = supd.ctl_text(&["scale", "nosuch", "3"]);
    assert_ne!(code, 0, "{out}{err}");
    // Nothing changed.
    assert_eq!(
        rows(&supd),
        [("single".to_string(), "running".to_string(), Some(pid))]
    );
}

#[test]
fn a_scaled_pool_keeps_its_size_across_a_restart_of_supd() {
    let mut supd = Supd::start(&format!(
        "[supd]\nshutdown_timeout = \"3s\"\n{}",
        prog(
            "x",
            &["sleep", "300"],
            "instances = 2\nstart_secs = \"0s\"\nrestart = \"never\"",
        )
    ));
    ctl_ok(&supd, &["scale", "x", "4"]);
    ctl_ok(&supd, &["shutdown"]);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    supd.restart_daemon();
    let names: Vec<String> = rows(&supd).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["x:0", "x:1", "x:2", "x:3"]);
    for i in 0..4 {
        running_pid(&supd, &format!("x:{i}"));
    }
}

// ----------------------------------------------------------- depends_on

#[test]
fn a_dependent_starts_only_once_its_dependency_is_running() {
    let supd = Supd::start(
        &(prog("db", &["sleep", "300"], "start_secs = \"1s\"")
            + &prog(
                "web",
                &["sleep", "300"],
                "start_secs = \"0s\"\ndepends_on = [\"db\"]",
            )),
    );
    // db spends 1 s starting; meanwhile web waits, with no process.
    let web = supd.status("web");
    let db = supd.status("db");
    assert_eq!(db.state.as_str(), "starting", "{db:?}");
    assert!(db.pid.is_some(), "{db:?}");
    assert_eq!(web.state.as_str(), "starting", "{web:?}");
    assert_eq!(web.pid, None, "web is not spawned yet: {web:?}");
    assert_eq!(web.waiting_for, ["db"], "{web:?}");
    let (_, out, _) = supd.ctl_text(&["--json", "status", "web"]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v[0]["waiting_for"], json!(["db"]), "{v}");

    let web_pid = running_pid(&supd, "web");
    let db_pid = running_pid(&supd, "db");
    let gap = start_time_secs(web_pid) - start_time_secs(db_pid);
    assert!(
        gap >= 0.9,
        "web was spawned {gap:.2} s after db; db needs 1 s to be running"
    );
    assert!(supd.status("web").waiting_for.is_empty());
}

#[test]
fn autostart_follows_a_chain_of_dependencies() {
    // Listed in reverse order on purpose; each needs 300 ms to be running.
    let supd = Supd::start(
        &(prog(
            "c",
            &["sleep", "300"],
            "start_secs = \"300ms\"\ndepends_on = [\"b\"]",
        ) + &prog(
            "b",
            &["sleep", "300"],
            "start_secs = \"300ms\"\ndepends_on = [\"a\"]",
        ) + &prog("a", &["sleep", "300"], "start_secs = \"300ms\"")),
    );
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|n| running_pid(&supd, n))
        .collect();
    let t: Vec<f64> = pids.iter().map(|p| start_time_secs(*p)).collect();
    assert!(
        t[1] - t[0] >= 0.25 && t[2] - t[1] >= 0.25,
        "a, b, c spawned at {t:?} (s since boot); each must wait for the one before to run for 300 ms"
    );
}

#[test]
fn a_pool_as_a_dependency_means_every_member_running() {
    let supd = Supd::start(
        &(prog(
            "db",
            &["sleep", "300"],
            "instances = 2\nstart_secs = \"300ms\"",
        ) + &prog(
            "web",
            &["sleep", "300"],
            "start_secs = \"0s\"\ndepends_on = [\"db\"]",
        )),
    );
    let web = supd.status("web");
    assert_eq!(web.pid, None, "{web:?}");
    assert_eq!(web.waiting_for, ["db:0", "db:1"], "{web:?}");
    let web_pid = running_pid(&supd, "web");
    for m in ["db:0", "db:1"] {
        let pid = running_pid(&supd, m);
        let gap = start_time_secs(web_pid) - start_time_secs(pid);
        assert!(gap >= 0.25, "web spawned {gap:.2} s after {m}");
    }
}

#[test]
fn shutdown_during_a_queued_start_stops_both() {
    let mut supd = Supd::start(
        &("[supd]\nshutdown_timeout = \"5s\"\n".to_string()
            + &prog(
                "db",
                &["sleep", "300"],
                "start_secs = \"5s\"\ndaemon = true",
            )
            + &prog(
                "web",
                &["sleep", "300"],
                "start_secs = \"0s\"\ndepends_on = [\"db\"]",
            )),
    );
    let db = supd.status("db").pid.expect("db spawned");
    assert_eq!(supd.status("web").pid, None);
    let started = Instant::now();
    ctl_ok(&supd, &["shutdown"]);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    poll("db's process gone", DEADLINE, || (!alive(db)).then_some(()));
    assert!(supd.marked_processes().is_empty(), "web was never spawned");
}

#[test]
fn start_of_a_dependent_starts_its_dependency_first() {
    let supd = Supd::start(
        &(prog(
            "db",
            &["sleep", "300"],
            "start_secs = \"300ms\"\nautostart = false",
        ) + &prog(
            "web",
            &["sleep", "300"],
            "start_secs = \"0s\"\ndepends_on = [\"db\"]\nautostart = false",
        )),
    );
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["start", "web"]);
    assert_eq!(supd.status("web").state.as_str(), "running");
    assert_eq!(supd.status("db").state.as_str(), "running");
    log.wait_to("web", "running");
    let db_running = log.position("db running", |e| is(e, "db", "running"));
    let web_pid = log.position("web with a pid", |e| {
        e["name"] == "web" && !e["pid"].is_null()
    });
    assert!(
        db_running < web_pid,
        "db is running before web has a process:\n{}",
        log.dump()
    );
    // The queued start shows as starting without a pid.
    let first_web = log.of("web")[0].clone();
    assert_eq!(first_web["to"], "starting", "{first_web}");
    assert_eq!(first_web["pid"], Value::Null, "{first_web}");
    let web_pid = supd.status("web").pid.unwrap();
    let db_pid = supd.status("db").pid.unwrap();
    assert!(start_time_secs(web_pid) - start_time_secs(db_pid) >= 0.25);
}

#[test]
fn a_start_fails_when_its_dependency_is_fatal() {
    let supd = Supd::start(
        &(prog("db", &["/nonexistent/db"], "autostart = false")
            + &prog(
                "web",
                &["sleep", "300"],
                "start_secs = \"0s\"\ndepends_on = [\"db\"]\nautostart = false",
            )),
    );
    let (code, out, err) = supd.ctl_text(&["start", "web"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("db"), "the error names the dependency: {err}");
    assert_eq!(supd.status("db").state.as_str(), "fatal");
    let web = supd.status("web");
    assert_eq!(web.state.as_str(), "fatal", "{web:?}");
    assert_eq!(web.pid, None, "{web:?}");
}

#[test]
fn shutdown_stops_dependents_before_their_dependencies() {
    // web takes a while to stop (its TERM trap), so an early stop of db would show.
    let mut supd = Supd::start(
        &("[supd]\nshutdown_timeout = \"5s\"\n".to_string()
            + &prog("db", &["sleep", "300"], "start_secs = \"0s\"")
            + &sh(
                "web",
                "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done",
                "start_secs = \"0s\"\ndepends_on = [\"db\"]",
            )
            + &sh(
                "front",
                "trap 'exit 0' TERM; while :; do sleep 0.05; done",
                "start_secs = \"0s\"\ndepends_on = [\"web\"]",
            )),
    );
    for name in ["db", "web", "front"] {
        running_pid(&supd, name);
    }
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["shutdown"]);
    log.until_closed(DEADLINE);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    let pos = |n: &str, to: &str| log.position(&format!("{n} -> {to}"), |e| is(e, n, to));
    assert!(
        pos("front", "stopped") < pos("web", "stopping"),
        "front stops before web is asked to:\n{}",
        log.dump()
    );
    assert!(
        pos("web", "stopped") < pos("db", "stopping"),
        "web stops before db is asked to:\n{}",
        log.dump()
    );
    pos("db", "stopped");
}

/// Runs `supd --config` (and `--check-config`) on `text`, written to
/// `dir/bad.toml`; both must exit 1 with the same report. Returns supd's
/// stderr and the config's path.
fn rejected_config(dir: &std::path::Path, text: &str) -> (String, std::path::PathBuf) {
    let path = write_file(dir, "bad.toml", text);
    let socket = dir.join("supd.sock");
    let (code, out, err) = run_bounded(
        Command::new(SUPD)
            .arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(&socket),
        DEADLINE,
    );
    assert_eq!(code, 1, "supd on a bad config: {out}{err}");
    assert!(!socket.exists(), "no socket for a bad config");
    let (code, out, err2) = run_bounded(
        Command::new(SUPD).arg("--check-config").arg(&path),
        DEADLINE,
    );
    assert_eq!(code, 1, "--check-config: {out}{err2}");
    assert_eq!(
        err, err2,
        "the same report from --config and --check-config"
    );
    (err, path)
}

/// `line:col` (1-based) of the first `needle` after the line containing `after`.
fn place(text: &str, after: &str, needle: &str) -> (usize, usize) {
    let start = text.find(after).expect("anchor in text");
    let at = start + text[start..].find(needle).expect("needle after anchor");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn a_dependency_cycle_is_a_config_error_with_its_place() {
    let text = "[program.a]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"b\"]\n\n\
                [program.b]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"a\"]\n\n\
                [program.c]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"d\"]\n\n\
                [program.d]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"e\"]\n\n\
                [program.e]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"c\"]\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let (err, path) = rejected_config(dir.path(), text);
    let (line, col) = place(text, "[program.b]", "\"a\"");
    let want = format!(
        "{}:{line}:{col}: dependency cycle: a -> b -> a",
        path.display()
    );
    assert!(
        err.lines().any(|l| l.starts_with(&want)),
        "expected a line starting {want:?} in:\n{err}"
    );
    let (line, col) = place(text, "[program.e]", "\"c\"");
    let want = format!(
        "{}:{line}:{col}: dependency cycle: c -> d -> e -> c",
        path.display()
    );
    assert!(
        err.lines().any(|l| l.starts_with(&want)),
        "expected a line starting {want:?} in:\n{err}"
    );
    assert_eq!(err.lines().count(), 2, "one line a cycle:\n{err}");
}

#[test]
fn an_unknown_dependency_is_a_config_error_with_its_place() {
    let text = "[program.web]\ncommand = [\"sleep\", \"300\"]\ndepends_on = [\"ghost\"]\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let (err, path) = rejected_config(dir.path(), text);
    let (line, col) = place(text, "depends_on", "\"ghost\"");
    assert_eq!((line, col), (3, 15));
    let want = format!("{}:{line}:{col}: ", path.display());
    let l = err
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("expected a line starting {want:?} in:\n{err}"));
    assert!(l.contains("web") && l.contains("\"ghost\""), "{l}");
}

// --------------------------------------------------------- desired state

#[test]
fn desired_state_survives_a_restart_of_supd() {
    let mut supd = Supd::start(
        &("[supd]\nshutdown_timeout = \"3s\"\n".to_string()
            + &prog(
                "a",
                &["sleep", "300"],
                "start_secs = \"0s\"\nrestart = \"never\"",
            )
            + &prog(
                "b",
                &["sleep", "300"],
                "start_secs = \"0s\"\nrestart = \"never\"\nautostart = false",
            )
            + &prog(
                "c",
                &["sleep", "300"],
                "start_secs = \"0s\"\nrestart = \"never\"",
            )),
    );
    running_pid(&supd, "a");
    running_pid(&supd, "c");
    assert_eq!(supd.status("b").state.as_str(), "stopped");
    ctl_ok(&supd, &["stop", "a"]);
    ctl_ok(&supd, &["start", "b"]);
    assert!(
        supd.dir.path().join("supd-state.json").exists(),
        "the state file is in the socket's folder"
    );
    ctl_ok(&supd, &["shutdown"]);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    assert!(supd.marked_processes().is_empty(), "everything stopped");

    supd.restart_daemon();
    let a = supd.status("a");
    assert_eq!(
        (a.state.as_str(), a.pid),
        ("stopped", None),
        "stopped by hand: {a:?}"
    );
    running_pid(&supd, "b");
    running_pid(&supd, "c");
    assert_eq!(supd.status("a").state.as_str(), "stopped");
}

#[test]
fn a_state_dir_in_the_config_holds_the_state_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("mkdir");
    let mut supd = Supd::start(&format!(
        "[supd]\nshutdown_timeout = \"3s\"\nstate_dir = {:?}\n{}",
        state_dir.display().to_string(),
        prog(
            "a",
            &["sleep", "300"],
            "start_secs = \"0s\"\nrestart = \"never\"",
        )
    ));
    running_pid(&supd, "a");
    ctl_ok(&supd, &["stop", "a"]);
    assert!(state_dir.join("supd-state.json").exists());
    ctl_ok(&supd, &["shutdown"]);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    supd.restart_daemon();
    assert_eq!(supd.status("a").state.as_str(), "stopped");
}

// ---------------------------------------------------------- event stream

#[test]
fn events_json_for_start_crash_restart_and_stop() {
    let supd = Supd::start(
        &(prog(
            "probe",
            &["sleep", "300"],
            "start_secs = \"0s\"\nautostart = false",
        ) + &prog(
            "p",
            &["sleep", "300"],
            "start_secs = \"200ms\"\nbackoff_initial = \"100ms\"\nautostart = false",
        )),
    );
    let mut log = EventLog::supctl(&supd, true);
    sync_on_probe(&supd, &mut log, true);

    ctl_ok(&supd, &["start", "p"]);
    let pid1 = supd.status("p").pid.expect("pid");
    ctl_ok(&supd, &["kill", "p"]);
    // `kill` is a stop by hand; a crash is the process dying by itself.
    ctl_ok(&supd, &["start", "p"]);
    let pid2 = supd.status("p").pid.expect("pid");
    // SAFETY: kill(2) on a pid that supd reports as p's running process.
    unsafe { libc::kill(pid2 as libc::pid_t, libc::SIGUSR1) };
    let e = log.wait_for("p restarted", DEADLINE, |e| {
        e["name"] == "p"
            && e["from"] == "starting"
            && e["to"] == "running"
            && e["pid"] != pid2
            && e["pid"] != pid1
    });
    let pid3 = e["pid"].as_u64().expect("pid") as u32;
    ctl_ok(&supd, &["stop", "p"]);
    log.wait_to("p", "stopped");

    let evs: Vec<Value> = log.of("p").into_iter().cloned().collect();
    for e in &evs {
        for field in [
            "name",
            "from",
            "to",
            "pid",
            "returncode",
            "escalated",
            "time",
        ] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
        event_time(e);
        assert_eq!(e["escalated"], false, "{e}");
    }
    let seq: Vec<(String, String, Value, Value)> = evs
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
                e["pid"].clone(),
                e["returncode"].clone(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, pid: u32, rc: Value| (a.to_string(), b.to_string(), json!(pid), rc);
    let n = Value::Null;
    assert_eq!(
        seq,
        [
            s("stopped", "starting", pid1, n.clone()),
            s("starting", "running", pid1, n.clone()),
            s("running", "stopping", pid1, n.clone()),
            s("stopping", "stopped", pid1, json!(-9)),
            s("stopped", "starting", pid2, n.clone()),
            s("starting", "running", pid2, n.clone()),
            s("running", "backoff", pid2, json!(-10)),
            s("backoff", "starting", pid3, n.clone()),
            s("starting", "running", pid3, n.clone()),
            s("running", "stopping", pid3, n.clone()),
            s("stopping", "stopped", pid3, json!(-15)),
        ],
        "{}",
        log.dump()
    );
    assert_eq!(evs[6]["signal"], "SIGUSR1", "{}", evs[6]);
    // Times never go backwards, and the backoff delay (100 ms ±10 %) shows.
    for w in evs.windows(2) {
        assert!(
            secs_between(event_time(&w[0]), event_time(&w[1])) >= 0.0,
            "{} then {}",
            w[0],
            w[1]
        );
    }
    let delay = secs_between(event_time(&evs[6]), event_time(&evs[7]));
    assert!((0.085..=0.5).contains(&delay), "backoff delay {delay}");
    let up = secs_between(event_time(&evs[7]), event_time(&evs[8]));
    assert!((0.19..=1.0).contains(&up), "start_secs of 200 ms took {up}");
}

#[test]
fn events_show_an_escalated_stop() {
    let supd = Supd::start(&sh(
        "stubborn",
        "trap '' TERM; while :; do sleep 0.05; done",
        "start_secs = \"0s\"\nstop_timeout = \"300ms\"",
    ));
    let pid = running_pid(&supd, "stubborn");
    // Wait until the trap is in place (SIGTERM ignored).
    wait_ignores(pid, libc::SIGTERM);
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["stop", "stubborn"]);
    let stopping = log.wait_to("stubborn", "stopping");
    assert_eq!(stopping["escalated"], false, "{stopping}");
    let e = log.wait_to("stubborn", "stopped");
    assert_eq!(e["escalated"], true, "{e}");
    assert_eq!(e["returncode"], -9, "{e}");
    assert_eq!(e["pid"], pid, "{e}");
    let took = secs_between(event_time(&stopping), event_time(&e));
    assert!((0.25..3.0).contains(&took), "escalated after {took} s");
}

#[test]
fn events_human_lines_by_default() {
    let supd = Supd::start(
        &(prog(
            "probe",
            &["sleep", "300"],
            "start_secs = \"0s\"\nautostart = false",
        ) + &sh(
            "boom",
            "exit 5",
            "start_secs = \"0s\"\nrestart = \"never\"\nautostart = false",
        )),
    );
    let mut log = EventLog::supctl(&supd, false);
    sync_on_probe(&supd, &mut log, false);
    supd.ctl_text(&["start", "boom"]);
    let line = log.wait_for("boom exited", DEADLINE, |e| {
        e["line"]
            .as_str()
            .is_some_and(|l| l.contains("boom: running -> exited"))
    });
    let line = line["line"].as_str().unwrap().to_string();
    assert!(line.contains("(pid "), "{line}");
    assert!(line.contains("returncode 5"), "{line}");
    let time = line.split_whitespace().next().unwrap();
    humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{time:?} in {line:?}: {e}"));
    assert!(!line.trim_start().starts_with('{'), "not JSON: {line}");
}

#[test]
fn events_stream_ends_with_exit_0_when_supd_shuts_down() {
    // A short shutdown_timeout: shutdown waits that long for the probe
    // (daemon = false) before it stops it.
    let config = "[supd]\nshutdown_timeout = \"300ms\"\n\n".to_string()
        + &prog(
            "probe",
            &["sleep", "300"],
            "start_secs = \"0s\"\nautostart = false",
        );
    let mut supd = Supd::start(&config);
    let mut log = EventLog::supctl(&supd, true);
    sync_on_probe(&supd, &mut log, true);
    ctl_ok(&supd, &["shutdown"]);
    log.until_closed(DEADLINE);
    assert!(
        log.seen.iter().any(|e| is(e, "probe", "stopped")),
        "the last stop is streamed before the end:\n{}",
        log.dump()
    );
    let mut child = log.child.take().expect("child");
    let status = poll("supctl events to exit", DEADLINE, || {
        child.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(0));
    assert_eq!(supd.wait_exit(DEADLINE), 0);
}

#[test]
fn a_slow_events_reader_is_dropped_and_never_slows_the_daemon() {
    let supd = Supd::start(&prog(
        "loop",
        &["true"],
        "restart = \"always\"\nstart_retries = \"infinite\"\nstart_secs = \"0s\"\nbackoff_initial = \"0s\"\nbackoff_max = \"0s\"\nautostart = false",
    ));
    // A subscriber that never reads.
    let mut slow = UnixStream::connect(&supd.socket).expect("connect");
    slow.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events\",\"params\":{}}\n")
        .expect("write");
    // The subscription is in place once the daemon has answered (its first
    // bytes on the connection), which is seen without reading them.
    poll("the events answer to be sent", DEADLINE, || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a socket we own, into a local int.
        let rc = unsafe { libc::ioctl(slow.as_raw_fd(), libc::FIONREAD, &mut n) };
        (rc == 0 && n > 0).then_some(())
    });

    // And one that keeps up, which must not be dropped.
    let mut fast = EventLog::subscribe(&supd);

    ctl_ok(&supd, &["start", "loop"]);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut restarts = 0;
    // Three events a cycle (backoff, starting, running): > 5000 events.
    while restarts < 1800 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {restarts} restarts in {:?}",
            started.elapsed()
        );
        let t = Instant::now();
        let s = supd.status("loop");
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_millis(500),
            "status took {took:?} with a stuck subscriber (after {restarts} restarts)"
        );
        restarts = s.restarts;
        std::thread::sleep(Duration::from_millis(20));
    }
    let loop_secs = started.elapsed().as_secs_f64();
    ctl_ok(&supd, &["stop", "loop"]);
    fast.wait_to("loop", "stopped");
    let fast_count = fast.seen.len();
    assert!(
        fast_count as u64 >= restarts * 3,
        "the reader that keeps up got only {fast_count} events of at least {}",
        restarts * 3
    );

    // The daemon has closed the slow connection: what the kernel buffered
    // can be read, then end of file.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(slow);
    let mut lines = 0u64;
    let mut line = String::new();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => lines += 1,
            Err(e) => panic!("the slow subscriber was not dropped ({e}) after {lines} lines"),
        }
        assert!(Instant::now() < end, "still reading after {lines} lines");
    }
    let produced = restarts * 3;
    assert!(
        lines < produced,
        "the slow subscriber got {lines} lines of {produced} events: not dropped"
    );
    eprintln!(
        "slow reader: {restarts} restarts in {loop_secs:.1} s; slowest status {slowest:?}; the slow client got {lines} lines before EOF, the fast one {fast_count}"
    );
    // The daemon is fine.
    supd.status("loop");
}

// ------------------------------------------------------------ measurements

#[test]
#[ignore = "measurement: run with --run-ignored"]
fn measure_restart_latency_with_zero_backoff() {
    let supd = Supd::start(&prog(
        "zero",
        &["true"],
        "restart = \"always\"\nstart_retries = \"infinite\"\nstart_secs = \"0s\"\nbackoff_initial = \"0s\"\nbackoff_max = \"0s\"\nautostart = false",
    ));
    let mut log = EventLog::subscribe(&supd);
    ctl_ok(&supd, &["start", "zero"]);
    let mut samples = Vec::new();
    let mut backoff_at = None;
    while samples.len() < 50 {
        let e = log.wait_for("zero's next event", DEADLINE, |e| e["name"] == "zero");
        if e["to"] == "backoff" {
            backoff_at = Some(event_time(&e));
        } else if e["to"] == "running" {
            if let Some(at) = backoff_at.take() {
                samples.push(secs_between(at, event_time(&e)) * 1000.0);
            }
        }
    }
    ctl_ok(&supd, &["stop", "zero"]);
    samples.sort_by(f64::total_cmp);
    let median = (samples[24] + samples[25]) / 2.0;
    eprintln!(
        "MEASURE restart latency (backoff -> running, zero backoff), {} samples: median {median:.3} ms, min {:.3} ms, max {:.3} ms",
        samples.len(),
        samples[0],
        samples[samples.len() - 1]
    );
    assert!(median < 1000.0);
}

#[test]
#[ignore = "measurement: run with --run-ignored (takes 60 s)"]
fn measure_supd_cpu_with_20_crash_looping_programs() {
    let mut config = String::new();
    for i in 0..20 {
        config += &sh(
            &format!("crash{i}"),
            "exit 1",
            "restart = \"always\"\nstart_retries = \"infinite\"",
        );
    }
    let supd = Supd::start(&config);
    let pid = supd.pid();
    let before = cpu_ticks(pid);
    let started = Instant::now();
    let window = Duration::from_secs(60);
    // Stay responsive meanwhile: a status every second.
    while started.elapsed() < window {
        for s in supd.status_all() {
            assert_ne!(s.state.as_str(), "fatal", "{s:?}");
        }
        std::thread::sleep(Duration::from_secs(1).min(window.saturating_sub(started.elapsed())));
    }
    let ticks = cpu_ticks(pid) - before;
    let secs = started.elapsed().as_secs_f64();
    let restarts: u64 = supd.status_all().iter().map(|s| s.restarts).sum();
    eprintln!(
        "MEASURE supd CPU with 20 crash-looping programs over {secs:.1} s: {ticks} ticks = {:.2} s ({:.2} %); {restarts} restarts in all",
        ticks as f64 / clock_ticks() as f64,
        ticks as f64 / clock_ticks() as f64 / secs * 100.0
    );
}
