//! Defects of issue 11 in dependencies, scaling, fatal logging, group
//! signals of adopted programs and reload's lookups:
//! - a queued start whose dependency ends `exited` or `stopped` fails with
//!   the dependency named (it used to stay `starting`, and `start` hung);
//!   one whose dependency is `stopping` starts it again once it stopped;
//! - `scale` down then up at once: the member still stopping is started
//!   again once stopped, never doubled, never forgotten;
//! - supd's own log says when and why a program went `fatal`;
//! - `signal --group` of an adopted program that died answers `not_running`;
//! - `reload` reads (and resolves) the configuration off the supervisor's
//!   thread: `status` answers while the read is stuck.

use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

/// `sh -c SCRIPT` as a program.
fn sh(name: &str, script: &str, extra: &str) -> String {
    prog(name, &["sh", "-c", script], extra)
}

/// A shell loop that takes `secs` to stop after SIGTERM.
fn slow_stopper(secs: &str) -> String {
    format!("trap 'sleep {secs}; exit 0' TERM; while :; do sleep 0.05; done")
}

/// Waits up to `deadline` for a child to exit; returns (code, stdout,
/// stderr), or `None` if it is still running then (it is left running).
fn finished_within(child: &mut Child, deadline: Duration) -> Option<(i32, String, String)> {
    use std::io::Read;
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    Some((status.code().unwrap_or(-1), out, err))
}

/// Runs supctl in the background and waits for it within [`DEADLINE`];
/// fails the test (with supd's log) when it does not return.
fn ctl_bounded(supd: &Supd, args: &[&str]) -> (i32, String, String) {
    let mut child = KillOnDrop(supd.ctl_spawn(args));
    finished_within(&mut child.0, DEADLINE).unwrap_or_else(|| {
        panic!(
            "supctl {args:?} did not return within {DEADLINE:?}; status: {:?}\nsupd's log:\n{}",
            supd.status_all(),
            supd.log()
        )
    })
}

/// The events of a subscription, read by a thread.
struct Events {
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    fn subscribe(supd: &Supd) -> Events {
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
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// Receives until an event satisfies `pred`; everything received so far.
    fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> &[Value] {
        let end = Instant::now() + DEADLINE;
        while !self.seen.iter().any(&pred) {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(_) => panic!("no event {what} within {DEADLINE:?}; seen: {:?}", self.seen),
            }
        }
        &self.seen
    }
}

// ------------------------------------------------------------- depends_on

/// `db` (autostart off, with `db_extra`) and `web` depending on it.
fn db_and_web(db: &str, db_extra: &str) -> String {
    sh("db", db, &format!("autostart = false\n{db_extra}"))
        + &prog(
            "web",
            &["sleep", "300"],
            "start_secs = \"0s\"\ndepends_on = [\"db\"]\nautostart = false",
        )
}

#[test]
fn a_start_fails_when_its_dependency_exits_before_it_is_running() {
    // db exits 0 within its start_secs: its own start is done (its job was
    // done), but it never was `running`, so web cannot start.
    let supd = Supd::start(&db_and_web("sleep 0.3; exit 0", "start_secs = \"5s\""));
    let (code, out, err) = ctl_bounded(&supd, &["start", "web"]);
    assert_eq!(code, 1, "start web: {out}{err}");
    assert!(
        err.contains("db") && err.contains("exit"),
        "the error names the dependency and how it ended: {err}"
    );
    assert_eq!(supd.status("db").state.as_str(), "exited");
    let web = supd.status("web");
    assert_eq!(web.state.as_str(), "fatal", "{web:?}");
    assert_eq!(web.pid, None, "{web:?}");
    assert!(
        web.error.as_deref().is_some_and(|e| e.contains("db")),
        "{web:?}"
    );
}

#[test]
fn a_start_fails_when_its_dependency_is_stopped_meanwhile() {
    let supd = Supd::start(&db_and_web("exec sleep 300", "start_secs = \"30s\""));
    let mut start = KillOnDrop(supd.ctl_spawn(&["start", "web"]));
    supd.wait_for("web", "waiting for db", |s| {
        s.state.as_str() == "starting" && s.waiting_for == ["db"]
    });
    let (code, out, err) = ctl_bounded(&supd, &["stop", "db"]);
    assert_eq!(code, 0, "stop db: {out}{err}");
    let (code, out, err) = finished_within(&mut start.0, DEADLINE).unwrap_or_else(|| {
        panic!(
            "start web still waits after db stopped; status: {:?}",
            supd.status_all()
        )
    });
    assert_ne!(code, 0, "start web: {out}{err}");
    assert!(
        err.contains("db") && err.contains("stopped"),
        "the error names the dependency and says it was stopped: {err}"
    );
    let web = supd.status("web");
    assert_eq!((web.state.as_str(), web.pid), ("stopped", None), "{web:?}");
    assert!(web.waiting_for.is_empty(), "{web:?}");
}

#[test]
fn a_dependency_still_stopping_is_started_again_for_its_dependant() {
    let supd = Supd::start(&db_and_web(
        &slow_stopper("1"),
        "start_secs = \"0s\"\nstop_timeout = \"20s\"",
    ));
    let (code, out, err) = ctl_bounded(&supd, &["start", "db"]);
    assert_eq!(code, 0, "start db: {out}{err}");
    let old = running_pid(&supd, "db");
    wait_ignores_or_catches_term(old);
    let mut stop = KillOnDrop(supd.ctl_spawn(&["stop", "db"]));
    supd.wait_state("db", "stopping");
    let (code, out, err) = ctl_bounded(&supd, &["start", "web"]);
    assert_eq!(code, 0, "start web while db is stopping: {out}{err}");
    let db = supd.status("db");
    assert_eq!(db.state.as_str(), "running", "{db:?}");
    assert_ne!(db.pid, Some(old), "db runs again as a new process: {db:?}");
    assert!(!alive(old), "the old db is gone before the new one runs");
    assert_eq!(supd.status("web").state.as_str(), "running");
    let (code, out, err) = finished_within(&mut stop.0, DEADLINE).expect("stop db returned");
    assert_eq!(code, 0, "stop db: {out}{err}");
}

/// Waits until `pid` has a handler for SIGTERM (a shell's trap is set).
fn wait_ignores_or_catches_term(pid: u32) {
    poll(&format!("pid {pid} to trap TERM"), DEADLINE, || {
        sig_set(pid, "SigCgt").filter(|s| has_sig(*s, libc::SIGTERM))
    });
}

// ------------------------------------------------------------------ scale

/// Whether `pid` leads its process group (a program's main process does;
/// a fork of its shell, not yet exec'ing `sleep`, does not).
fn leads_its_group(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.get(2) == Some(&pid.to_string()))
}

/// Live `sh` main processes of pool members, by member name.
fn live_members(supd: &Supd) -> Vec<(String, u32)> {
    let mut found: Vec<(String, u32)> = supd
        .marked_processes()
        .into_iter()
        .filter(|&p| {
            alive(p)
                && !is_sentinel(p)
                && leads_its_group(p)
                && cmdline(p).first().is_some_and(|a| a == "sh")
        })
        .filter_map(|p| Some((environ_var(p, "SUP_PROGRAM")?, p)))
        .collect();
    found.sort();
    found
}

#[test]
fn scale_down_then_up_at_once_ends_with_the_new_size() {
    let supd = Supd::start(&sh(
        "web",
        &slow_stopper("1"),
        "instances = 3\nstart_secs = \"0s\"\nstop_timeout = \"20s\"",
    ));
    let old: Vec<u32> = (0..3)
        .map(|i| running_pid(&supd, &format!("web:{i}")))
        .collect();
    for &pid in &old {
        wait_ignores_or_catches_term(pid);
    }
    let mut events = Events::subscribe(&supd);
    let mut down = KillOnDrop(supd.ctl_spawn(&["scale", "web", "2"]));
    supd.wait_state("web:2", "stopping");
    let (code, out, err) = ctl_bounded(&supd, &["scale", "web", "3"]);
    assert_eq!(code, 0, "scale web 3: {out}{err}");
    let (code, out, err) = finished_within(&mut down.0, DEADLINE).expect("scale web 2 returned");
    assert_eq!(code, 0, "scale web 2: {out}{err}");

    // Three members run, web:2 as a new process, and nothing stops them now.
    let new2 = running_pid(&supd, "web:2");
    assert_ne!(new2, old[2], "web:2 was started again");
    assert!(!alive(old[2]), "the old web:2 is gone");
    let rows: Vec<(String, String)> = supd
        .status_all()
        .into_iter()
        .map(|s| (s.name, s.state.as_str().to_string()))
        .collect();
    let running = |n: &str| (n.to_string(), "running".to_string());
    assert_eq!(rows, [running("web:0"), running("web:1"), running("web:2")]);
    let live = live_members(&supd);
    assert_eq!(
        live,
        [
            ("web:0".to_string(), old[0]),
            ("web:1".to_string(), old[1]),
            ("web:2".to_string(), new2)
        ],
        "exactly three live members"
    );
    // Never two processes for web:2: the old one stopped before the new
    // one was spawned.
    let seen = events
        .until("web:2 with its new pid", |e| {
            e["name"] == "web:2" && e["pid"] == json!(new2)
        })
        .to_vec();
    let of2: Vec<&Value> = seen.iter().filter(|e| e["name"] == "web:2").collect();
    let stopped = of2.iter().position(|e| e["to"] == "stopped");
    let spawned = of2.iter().position(|e| e["pid"] == json!(new2));
    assert!(
        matches!((stopped, spawned), (Some(a), Some(b)) if a < b),
        "web:2 stopped before its new process: {of2:?}"
    );
    // The state file agrees.
    let state: Value = serde_json::from_slice(
        &std::fs::read(supd.dir.path().join("supd-state.json")).expect("state file"),
    )
    .expect("state JSON");
    assert_eq!(state["scale"]["web"], 3, "{state}");
    assert_eq!(state["processes"]["web:2"]["pid"], json!(new2), "{state}");
}

#[test]
fn scale_down_up_and_down_again_forgets_the_member_and_answers() {
    let supd = Supd::start(&sh(
        "web",
        &slow_stopper("1"),
        "instances = 3\nstart_secs = \"0s\"\nstop_timeout = \"20s\"",
    ));
    let old2 = running_pid(&supd, "web:2");
    for i in 0..3 {
        wait_ignores_or_catches_term(running_pid(&supd, &format!("web:{i}")));
    }
    let mut down = KillOnDrop(supd.ctl_spawn(&["scale", "web", "2"]));
    supd.wait_state("web:2", "stopping");
    let mut up = KillOnDrop(supd.ctl_spawn(&["scale", "web", "3"]));
    // The second scale has taken web:2 back before the third one comes.
    poll("the state file to say 3", DEADLINE, || {
        let text = std::fs::read(supd.dir.path().join("supd-state.json")).ok()?;
        let v: Value = serde_json::from_slice(&text).ok()?;
        (v["scale"]["web"] == 3).then_some(())
    });
    let (code, out, err) = ctl_bounded(&supd, &["scale", "web", "2"]);
    assert_eq!(code, 0, "scale web 2 again: {out}{err}");
    for child in [&mut down.0, &mut up.0] {
        let (_, out, err) = finished_within(child, DEADLINE).expect("an earlier scale returned");
        assert!(
            !err.contains("shutting down"),
            "an earlier scale was left without an answer: {out}{err}"
        );
    }
    assert!(!alive(old2));
    let names: Vec<String> = supd.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web:0", "web:1"]);
    assert_eq!(live_members(&supd).len(), 2, "{:?}", live_members(&supd));
}

// ------------------------------------------------------------------ fatal

#[test]
fn supd_logs_why_a_program_went_fatal() {
    let supd = Supd::start(
        &(prog("ghost", &["/nonexistent/ghost-binary"], "autostart = false")
            + &sh(
                "crasher",
                "exit 3",
                "autostart = false\nstart_secs = \"1s\"\nstart_retries = 1\nbackoff_initial = \"0s\"",
            )),
    );
    let (code, out, err) = ctl_bounded(&supd, &["start", "ghost"]);
    assert_eq!(code, 1, "{out}{err}");
    let (code, out, err) = ctl_bounded(&supd, &["start", "crasher"]);
    assert_eq!(code, 1, "{out}{err}");
    let log = supd.log();
    let fatal_line = |name: &str, why: &str| {
        log.lines().find(|l| {
            (l.contains("ERROR") || l.contains("WARN"))
                && l.contains("fatal")
                && l.contains(&format!("program={name}"))
                && l.contains(why)
        })
    };
    assert!(
        fatal_line("ghost", "/nonexistent/ghost-binary").is_some(),
        "no line saying ghost went fatal and why:\n{log}"
    );
    assert!(
        fatal_line("crasher", "exit status 3").is_some(),
        "no line saying crasher went fatal and why:\n{log}"
    );
}

// ------------------------------------------------------- signal --group

#[test]
fn signal_group_of_an_adopted_program_that_died_is_not_running() {
    let mut supd = Supd::start(&prog(
        "keeper",
        &["sleep", "300"],
        "start_secs = \"0s\"\nrestart = \"never\"",
    ));
    let pid = running_pid(&supd, "keeper");
    supd.signal_daemon(libc::SIGKILL);
    supd.wait_exit(DEADLINE);
    supd.restart_daemon();
    let s = supd.wait_state("keeper", "running");
    assert_eq!((s.pid, s.adopted), (Some(pid), true), "{s:?}");
    // SAFETY: kill(2) on the adopted program's pid, alive just now.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    wait_all_dead("the adopted program", &[pid], DEADLINE);
    let (code, out, err) = ctl_bounded(&supd, &["--json", "signal", "--group", "keeper", "TERM"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("not running"), "{out}{err}");
}

// ----------------------------------------------------------------- reload

/// Whether a thread of `pid` is blocked in `openat(2)` now.
fn blocked_in_open(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_openat.to_string()))
    })
}

#[test]
fn status_answers_while_reload_is_stuck_reading_the_configuration() {
    // NSS lookups (users and groups, over the network at worst) happen
    // while the configuration is read; a FIFO with no writer makes that
    // read as slow as we like.
    let config = prog("web", &["sleep", "300"], "start_secs = \"0s\"");
    let supd = Supd::start(&config);
    running_pid(&supd, "web");
    std::fs::remove_file(&supd.config).expect("remove the config");
    nix::unistd::mkfifo(
        &supd.config,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let mut reload = KillOnDrop(supd.ctl_spawn(&["reload"]));
    poll("supd to block opening the FIFO", DEADLINE, || {
        blocked_in_open(supd.pid()).then_some(())
    });
    let mut status = KillOnDrop(supd.ctl_spawn(&["status", "web"]));
    let answered = finished_within(&mut status.0, Duration::from_secs(3));
    // Let the reload through whatever happened (opening for writing meets
    // supd's open for reading).
    std::fs::write(&supd.config, &config).expect("write the FIFO");
    let (code, out, err) = answered.expect("status did not answer while reload read the config");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("running"), "{out}");
    let (code, out, err) = finished_within(&mut reload.0, DEADLINE).expect("reload returned");
    assert!(code == 0 || code == 1, "reload: {code} {out}{err}");
}
