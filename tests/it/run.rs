//! `supctl run`: exit statuses, output, stdin, timeout, Ctrl-C, a client
//! that disappears, and pools that queue runs.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Runs `supctl ARGS...` with `input` on its stdin: (status, stdout, stderr).
fn ctl_with_input(supd: &Supd, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = supd.ctl_spawn_stdin(args, Stdio::piped());
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("supctl run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No program named like a run is left in status.
fn no_runs_left(supd: &Supd) {
    poll("runs to be forgotten", DEADLINE, || {
        supd.status_all()
            .iter()
            .all(|s| !s.name.starts_with("run-") && s.name != "named")
            .then_some(())
    });
}

#[test]
fn run_exits_with_the_program_status() {
    let supd = Supd::start("");
    assert_eq!(supd.ctl_text(&["run", "--", "true"]).0, 0);
    assert_eq!(supd.ctl_text(&["run", "--", "sh", "-c", "exit 7"]).0, 7);
    assert_eq!(
        supd.ctl_text(&["run", "--", "sh", "-c", "kill -TERM $$"]).0,
        128 + 15
    );
    assert_eq!(
        supd.ctl_text(&["run", "--", "sh", "-c", "kill -KILL $$"]).0,
        128 + 9
    );
    let (code, _, err) = supd.ctl_text(&["run", "--", "/nonexistent/binary"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/binary"), "{err}");
    no_runs_left(&supd);
}

#[test]
fn run_streams_stdout_and_stderr_to_its_own() {
    let supd = Supd::start("");
    let (code, out, err) = supd.ctl_text(&[
        "run",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo out-$GREETING; echo err >&2; printf tail",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out-hi\ntail");
    assert_eq!(err, "err\n");
    // A run's output goes back to its caller only: no log file is left.
    let files: Vec<_> = std::fs::read_dir(supd.log_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
}

#[test]
fn run_forwards_stdin_to_the_program() {
    let supd = Supd::start("");
    let (code, out, err) = ctl_with_input(&supd, &["run", "--", "wc", "-l"], b"data\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1");
    let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let (code, out, _) = ctl_with_input(&supd, &["run", "--", "cat"], text.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(out, text, "cat gave back what it was given");
}

#[test]
fn run_in_a_cwd_under_a_name_shows_in_status_while_it_runs() {
    let supd = Supd::start("");
    let dir = supd.dir.path().display().to_string();
    let mut child = KillOnDrop(supd.ctl_spawn_stdin(
        &[
            "run",
            "--name",
            "named",
            "--cwd",
            &dir,
            "--",
            "sh",
            "-c",
            "pwd; sleep 300",
        ],
        Stdio::null(),
    ));
    let lines = stdout_lines(&mut child.0);
    let pwd = lines.recv_timeout(DEADLINE).expect("pwd");
    assert_eq!(
        std::fs::canonicalize(pwd).unwrap(),
        std::fs::canonicalize(&dir).unwrap()
    );
    let row = supd.wait_state("named", "running");
    assert!(row.daemon, "a run dies with supd");
    supd.ctl_text(&["stop", "named"]);
    wait_child(&mut child.0, "supctl run", DEADLINE);
    no_runs_left(&supd);
}

/// The pid from `supctl --json run`'s first line.
fn run_pid(lines: &std::sync::mpsc::Receiver<String>) -> u32 {
    let first = lines.recv_timeout(DEADLINE).expect("the run's answer");
    let v: Value = serde_json::from_str(&first).expect("JSON");
    v["pid"].as_u64().expect("a pid") as u32
}

#[test]
fn run_timeout_stops_the_program_and_exits_124() {
    let supd = Supd::start("");
    let start = Instant::now();
    let mut child = KillOnDrop(supd.ctl_spawn_stdin(
        &[
            "--json",
            "run",
            "--timeout",
            "0.3",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 300",
        ],
        Stdio::null(),
    ));
    let lines = stdout_lines(&mut child.0);
    let pid = run_pid(&lines);
    let status = wait_child(&mut child.0, "supctl run --timeout", DEADLINE);
    assert_eq!(status.code(), Some(124));
    // TERM ignored: SIGKILL after the run's 2 s stop_timeout.
    assert!(
        start.elapsed() >= Duration::from_millis(2300),
        "{:?}",
        start.elapsed()
    );
    assert!(!alive(pid), "the timed-out program is gone");
    no_runs_left(&supd);
}

fn interrupted_client_stops_the_run(sig: i32) {
    let supd = Supd::start("");
    let mut child =
        KillOnDrop(supd.ctl_spawn_stdin(&["--json", "run", "--", "sleep", "300"], Stdio::piped()));
    let lines = stdout_lines(&mut child.0);
    let pid = run_pid(&lines);
    assert!(alive(pid));
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.0.id() as libc::pid_t, sig) };
    wait_child(&mut child.0, "supctl run", DEADLINE);
    poll("the run's process to be gone", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
    no_runs_left(&supd);
}

#[test]
fn ctrl_c_on_supctl_run_stops_the_program() {
    interrupted_client_stops_the_run(libc::SIGINT);
}

#[test]
fn a_client_that_disappears_gets_its_run_stopped() {
    interrupted_client_stops_the_run(libc::SIGKILL);
}

#[test]
fn a_pool_of_two_never_runs_more_than_two_and_queues_the_rest_in_order() {
    let supd = Supd::start("[pool.two]\nsize = 2\n");
    let record = supd.dir.path().join("record");
    let record_s = record.display().to_string();
    let mut children = Vec::new();
    for i in 0..5 {
        let script = format!("echo start {i} >> {record_s}; sleep 0.3; echo end {i} >> {record_s}");
        children.push(KillOnDrop(supd.ctl_spawn_stdin(
            &[
                "run",
                "--pool",
                "two",
                "--name",
                &format!("job{i}"),
                "--",
                "sh",
                "-c",
                &script,
            ],
            Stdio::null(),
        )));
        // Queue them in a known order.
        poll("the run to be known", DEADLINE, || {
            supd.status_all()
                .iter()
                .any(|s| s.name == format!("job{i}"))
                .then_some(())
        });
    }
    let queued = supd.status_all();
    assert!(
        queued.iter().any(|s| s.state.as_str() == "queued"),
        "some runs wait in the queue: {:?}",
        queued
            .iter()
            .map(|s| (&s.name, s.state))
            .collect::<Vec<_>>()
    );
    for c in &mut children {
        let status = wait_child(&mut c.0, "a pooled run", DEADLINE);
        assert_eq!(status.code(), Some(0));
    }
    let text = std::fs::read_to_string(&record).expect("record");
    let mut running = 0;
    let mut most = 0;
    let mut starts = Vec::new();
    for line in text.lines() {
        let (what, i) = line.split_once(' ').unwrap();
        if what == "start" {
            running += 1;
            starts.push(i.to_string());
        } else {
            running -= 1;
        }
        most = most.max(running);
    }
    assert_eq!(most, 2, "{text}");
    // First in, first out (two at a time start in either order).
    let mut pairs = [starts[0..2].to_vec(), starts[2..4].to_vec()];
    pairs[0].sort();
    pairs[1].sort();
    assert_eq!(pairs, [["0", "1"], ["2", "3"]], "{text}");
    assert_eq!(starts[4], "4", "{text}");
}

#[test]
fn a_client_that_only_closes_its_writing_side_has_closed_stdin_not_hung_up() {
    use std::io::{BufRead, BufReader};
    let supd = Supd::start("");
    let mut stream = std::os::unix::net::UnixStream::connect(&supd.socket).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"run\",\"params\":{\"command\":[\"cat\"]}}\n")
        .expect("send run");
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"stdin\",\"params\":{\"data\":\"half\\n\",\"eof\":false}}\n")
        .expect("send stdin");
    // No eof notification: shutting down the writing side is the end of stdin.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut reader = BufReader::new(stream);
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "no run.exited; saw {seen:?}");
        let mut line = String::new();
        if reader.read_line(&mut line).expect("a line") == 0 {
            panic!("closed without run.exited; saw {seen:?}");
        }
        let v: Value = serde_json::from_str(&line).expect("JSON");
        if v["method"] == "run.exited" {
            assert_eq!(
                v["params"]["returncode"], 0,
                "cat saw end of file and exited 0"
            );
            break;
        }
        seen.push(v);
    }
    assert!(
        seen.iter()
            .any(|v| v["method"] == "output" && v["params"]["data"] == "half\n"),
        "{seen:?}"
    );
}

/// Polls until a program named `name` is listed in `state`.
fn wait_listed(supd: &Supd, name: &str, state: &str) {
    poll(&format!("{name} to be {state}"), DEADLINE, || {
        supd.status_all()
            .iter()
            .any(|s| s.name == name && s.state.as_str() == state)
            .then_some(())
    });
}

#[test]
fn stopping_a_queued_run_drops_it_before_it_runs() {
    let supd = Supd::start("[pool.one]\nsize = 1\n");
    let mut first = KillOnDrop(supd.ctl_spawn_stdin(
        &[
            "run", "--pool", "one", "--name", "busy", "--", "sleep", "300",
        ],
        Stdio::null(),
    ));
    wait_listed(&supd, "busy", "running");
    let mut second = KillOnDrop(supd.ctl_spawn_stdin(
        &[
            "run", "--pool", "one", "--name", "waiting", "--", "sleep", "300",
        ],
        Stdio::null(),
    ));
    wait_listed(&supd, "waiting", "queued");
    let (code, _, err) = supd.ctl_text(&["stop", "waiting"]);
    assert_eq!(code, 0, "{err}");
    let status = wait_child(&mut second.0, "the queued supctl run", DEADLINE);
    assert_eq!(status.code(), Some(1), "it never ran");
    assert!(supd.status_all().iter().all(|s| s.name != "waiting"));
    supd.ctl_text(&["stop", "busy"]);
    wait_child(&mut first.0, "the running supctl run", DEADLINE);
}

#[test]
fn a_reload_that_grows_a_run_pool_starts_queued_runs() {
    let supd = Supd::start("[pool.p]\nsize = 1\n");
    let _a = KillOnDrop(supd.ctl_spawn_stdin(
        &["run", "--pool", "p", "--name", "a", "--", "sleep", "300"],
        Stdio::null(),
    ));
    wait_listed(&supd, "a", "running");
    let _b = KillOnDrop(supd.ctl_spawn_stdin(
        &["run", "--pool", "p", "--name", "b", "--", "sleep", "300"],
        Stdio::null(),
    ));
    wait_listed(&supd, "b", "queued");
    std::fs::write(&supd.config, "[pool.p]\nsize = 2\n").expect("new config");
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 0, "{err}");
    wait_listed(&supd, "b", "running");
}

#[test]
fn a_reload_leaves_runs_alone() {
    let supd = Supd::start("");
    let mut child =
        KillOnDrop(supd.ctl_spawn_stdin(&["--json", "run", "--", "sleep", "300"], Stdio::null()));
    let lines = stdout_lines(&mut child.0);
    let pid = run_pid(&lines);
    let (code, out, err) = supd.ctl_text(&["--json", "reload"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    assert!(alive(pid), "the run was not stopped by the reload");
}

#[test]
fn a_reload_that_would_take_the_name_of_a_live_run_changes_nothing() {
    let supd = Supd::start("");
    let _run = KillOnDrop(supd.ctl_spawn_stdin(
        &["run", "--name", "job", "--", "sleep", "300"],
        Stdio::null(),
    ));
    wait_listed(&supd, "job", "running");
    let pid = supd.status("job").pid.unwrap();
    std::fs::write(
        &supd.config,
        "[program.job]\ncommand = [\"sleep\", \"100\"]\n",
    )
    .expect("new config");
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("job"), "{err}");
    assert_eq!(supd.status("job").pid, Some(pid), "the run is untouched");
}
