//! Captured output: log files (separate and merged), rotation, timestamps
//! and run markers, `logs -n`, `logs -f` across a restart, `reopen-logs`,
//! a flood that never slows the daemon, and a full disk.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

/// Program keys for a piped program (daemon = true: timestamps, markers,
/// rotation and drop counting apply) that is up at once and never restarted.
const PIPED: &str = "start_secs = \"0s\"\nrestart = \"never\"\ndaemon = true";

#[test]
fn stdout_and_stderr_go_to_their_own_files_or_one_merged_file() {
    let script = "echo to-out; echo to-err >&2; sleep 300";
    let cfg = prog("sep", &["sh", "-c", script], PIPED)
        + &prog(
            "merged",
            &["sh", "-c", script],
            &format!("{PIPED}\nredirect_stderr = true"),
        );
    let supd = Supd::start(&cfg);
    poll("both lines in sep's files", DEADLINE, || {
        (supd.log_file("sep.out.log").contains("to-out")
            && supd.log_file("sep.err.log").contains("to-err"))
        .then_some(())
    });
    assert!(!supd.log_file("sep.out.log").contains("to-err"));
    assert!(!supd.log_file("sep.err.log").contains("to-out"));
    poll("both lines in merged.log", DEADLINE, || {
        let text = supd.log_file("merged.log");
        (text.contains("to-out") && text.contains("to-err")).then_some(())
    });
    assert!(!supd.log_dir().join("merged.out.log").exists());
    assert!(!supd.log_dir().join("merged.err.log").exists());
}

#[test]
fn a_log_file_rotates_at_its_size_limit_keeping_log_backups_files() {
    let script = "i=0; while [ $i -lt 300 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; sleep 300";
    let cfg = prog(
        "rot",
        &["sh", "-c", script],
        &format!("{PIPED}\nlog_max_bytes = \"1KB\"\nlog_backups = 2"),
    );
    let supd = Supd::start(&cfg);
    poll("the last line in rot.out.log", DEADLINE, || {
        supd.log_file("rot.out.log")
            .contains("line-299-")
            .then_some(())
    });
    let dir = supd.log_dir();
    for f in ["rot.out.log", "rot.out.log.1", "rot.out.log.2"] {
        let len = std::fs::metadata(dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .len();
        assert!(
            len > 0 && len <= 1000,
            "{f} is {len} bytes, over log_max_bytes"
        );
    }
    assert!(
        !dir.join("rot.out.log.3").exists(),
        "more than log_backups files kept"
    );
    // The newest backup ends where the current file begins.
    let current = supd.log_file("rot.out.log");
    let backup = supd.log_file("rot.out.log.1");
    let first: u32 = current.lines().next().unwrap()["line-".len()..]
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let last: u32 = backup.lines().last().unwrap()["line-".len()..]
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        first,
        last + 1,
        "a line was lost or repeated across rotation"
    );
}

#[test]
fn timestamps_prefix_each_line_and_markers_frame_each_run() {
    let cfg = prog(
        "job",
        &["sh", "-c", "echo hello; exit 3"],
        &format!("{PIPED}\nlog_timestamps = true\nautostart = false"),
    );
    let supd = Supd::start(&cfg);
    let (code, _, err) = supd.ctl_text(&["start", "job"]);
    assert_eq!(code, 0, "{err}");
    let pid = supd
        .client()
        .wait("job", Some(10.0))
        .expect("wait")
        .pid
        .unwrap();
    let text = poll("the end marker", DEADLINE, || {
        let t = supd.log_file("job.out.log");
        t.contains("--- supd: exited").then_some(t)
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let rest: Vec<&str> = lines
        .iter()
        .map(|l| {
            let (time, rest) = l.split_once(' ').expect("a timestamp, then the line");
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "not an RFC 3339 time: {time:?}"
            );
            rest
        })
        .collect();
    assert_eq!(rest[0], format!("--- supd: started pid {pid} ---"));
    assert_eq!(rest[1], "hello");
    assert_eq!(
        rest[2],
        format!("--- supd: exited pid {pid} returncode 3 ---")
    );
}

#[test]
fn logs_n_prints_the_last_n_lines() {
    let script =
        "i=1; while [ $i -le 50 ]; do echo n$i; i=$((i+1)); done; echo oops >&2; sleep 300";
    let supd = Supd::start(&prog("many", &["sh", "-c", script], PIPED));
    // Each stream has its own drain: wait for the end of both.
    poll("the last lines of both streams", DEADLINE, || {
        (supd.log_file("many.err.log").contains("oops")
            && supd.log_file("many.out.log").contains("n50"))
        .then_some(())
    });
    let (code, out, _) = supd.ctl_text(&["logs", "many", "-n", "5", "--stdout"]);
    assert_eq!(code, 0);
    assert_eq!(out, "n46\nn47\nn48\nn49\nn50\n");
    let (_, out, err) = supd.ctl_text(&["logs", "many", "-n", "2"]);
    assert_eq!(out, "n50\n");
    assert_eq!(err, "oops\n");
    let (_, out, _) = supd.ctl_text(&["--json", "logs", "many", "-n", "1", "--stderr"]);
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["name"], "many");
    assert_eq!(v["stream"], "stderr");
    assert_eq!(v["line"], "oops");
    assert!(v["time"].is_string());
}

#[test]
fn logs_n_reads_older_lines_from_the_file_after_a_restart_of_supd() {
    let script = "i=1; while [ $i -le 20 ]; do echo f$i; i=$((i+1)); done; sleep 300";
    let mut supd = Supd::start(&prog(
        "old",
        &["sh", "-c", script],
        "start_secs = \"0s\"\nrestart = \"never\"\ndaemon = true\nautostart = false",
    ));
    supd.ctl_text(&["start", "old"]);
    poll("f20 in the file", DEADLINE, || {
        supd.log_file("old.out.log").contains("f20").then_some(())
    });
    supd.ctl_text(&["shutdown"]);
    supd.wait_exit(DEADLINE);
    supd.restart_daemon();
    let (code, out, err) = supd.ctl_text(&["logs", "old", "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    // The ring of the new supd is empty: the lines come from the file
    // (ending with the run's end marker when shutdown wrote it).
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("f20\n"), "{out}");
}

#[test]
fn logs_follow_continues_across_a_restart_of_the_program() {
    follow_across_restarts(PIPED);
}

#[test]
fn logs_follow_continues_across_a_restart_of_a_program_writing_its_own_file() {
    follow_across_restarts("start_secs = \"0s\"\nrestart = \"never\"");
}

fn follow_across_restarts(keys: &str) {
    let supd = Supd::start(&prog("gen", &["sh", "-c", "echo gen-$$; sleep 300"], keys));
    supd.wait_state("gen", "running");
    let mut follower = KillOnDrop(
        supd.ctl_spawn_stdin(&["--json", "logs", "-f", "gen", "-n", "0"], Stdio::null()),
    );
    let lines = stdout_lines(&mut follower.0);
    // The follower is subscribed once `logs` has answered: restart after a
    // status round trip through the same daemon and poll the follower.
    let first_pid = supd.status("gen").pid.unwrap();
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut restarts = 0;
    while Instant::now() < end && seen.len() < 2 {
        let (code, _, err) = supd.ctl_text(&["restart", "gen"]);
        assert_eq!(code, 0, "{err}");
        restarts += 1;
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(v["name"], "gen");
            let text = v["line"].as_str().unwrap().to_string();
            // (A program writing its own file has its run markers there too.)
            if text.starts_with("gen-") {
                seen.push(text);
            }
        }
    }
    assert!(
        seen.len() >= 2,
        "the follower saw {seen:?} over {restarts} restarts"
    );
    assert_ne!(seen[0], seen[1], "two runs, two pids");
    assert!(
        !seen.contains(&format!("gen-{first_pid}")),
        "-n 0 printed an old line"
    );
}

#[test]
fn reopen_logs_starts_a_new_file_after_the_old_one_was_moved_away() {
    let script = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.02; done";
    let supd = Supd::start(&prog("ticker", &["sh", "-c", script], PIPED));
    let path = supd.log_dir().join("ticker.out.log");
    poll("ticks in the file", DEADLINE, || {
        supd.log_file("ticker.out.log")
            .contains("tick-")
            .then_some(())
    });
    let moved = supd.log_dir().join("ticker.out.log.moved");
    std::fs::rename(&path, &moved).expect("move the log away");
    let (code, _, err) = supd.ctl_text(&["reopen-logs"]);
    assert_eq!(code, 0, "{err}");
    let text = poll("a new file with ticks", DEADLINE, || {
        let t = supd.log_file("ticker.out.log");
        t.contains("tick-").then_some(t)
    });
    let last_moved: u64 = std::fs::read_to_string(&moved)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .max()
        .expect("ticks in the moved file");
    let first_new: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .min()
        .unwrap();
    assert!(
        first_new > last_moved,
        "the new file continues after the moved one"
    );
    // SIGUSR1 does the same.
    std::fs::rename(&path, &moved).expect("move the log away again");
    supd.signal_daemon(libc::SIGUSR1);
    poll("a new file after SIGUSR1", DEADLINE, || {
        supd.log_file("ticker.out.log")
            .contains("tick-")
            .then_some(())
    });
}

#[test]
fn a_program_flooding_output_does_not_slow_status() {
    // One piped, one writing its own file that supd follows.
    let supd = Supd::start(
        &(prog(
            "flood",
            &["yes"],
            &format!("{PIPED}\nlog_max_bytes = \"2MiB\"\nlog_backups = 1"),
        ) + &prog(
            "own",
            &["yes"],
            "start_secs = \"0s\"\nrestart = \"never\"\nlog_max_bytes = \"2MiB\"\nlog_backups = 1",
        )),
    );
    poll("the flood in the log", DEADLINE, || {
        (std::fs::metadata(supd.log_dir().join("flood.out.log")).map_or(0, |m| m.len()) > 100_000)
            .then_some(())
    });
    let mut client = supd.client();
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let t = Instant::now();
        client.call("status", json!({})).expect("status");
        slowest = slowest.max(t.elapsed());
    }
    // A blocked daemon would take seconds; 500 ms leaves room for a debug
    // build on a 2-core machine running the rest of the suite.
    assert!(
        slowest < Duration::from_millis(500),
        "a status took {slowest:?}"
    );
    assert_eq!(supd.status("flood").state.as_str(), "running");
    assert_eq!(supd.status("own").state.as_str(), "running");
    poll("the followed flood in logs -n", DEADLINE, || {
        let (_, out, _) = supd.ctl_text(&["logs", "own", "-n", "3", "--stdout"]);
        out.lines().any(|l| l == "y").then_some(())
    });
}

/// A tmpfs mounted for a test, unmounted (lazily) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("supd-tmpfs-")
            .tempdir()
            .ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Bytes a process has written so far (`wchar` in /proc/PID/io).
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_full_disk_drops_and_counts_output_without_blocking_the_program() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmpfs = Tmpfs::mount("1m").expect("mount a 1 MiB tmpfs");
    let logs = tmpfs.0.path().to_path_buf();
    let cfg = format!("[supd]\nlog_dir = {:?}\n\n", logs.display().to_string())
        + &prog(
            "flood",
            &["yes"],
            &format!("{PIPED}\nlog_max_bytes = \"100MiB\""),
        );
    let supd = Supd::start(&cfg);
    let pid = supd.wait_state("flood", "running").pid.unwrap();
    let dropped = supd.wait_for("flood", "log_dropped_bytes > 0", |s| {
        s.log_dropped_bytes > 0
    });
    // The program is not blocked: it keeps writing (its pipe is drained).
    let before = written(pid);
    poll("the program to write 4 MiB more", DEADLINE, || {
        (written(pid) > before + 4 * 1024 * 1024).then_some(())
    });
    let later = supd.status("flood");
    assert!(
        later.log_dropped_bytes > dropped.log_dropped_bytes,
        "drops keep being counted"
    );
    // Space returns: the next line opens a new file and writing resumes.
    std::fs::remove_file(logs.join("flood.out.log")).expect("delete the full log");
    poll("a new log file that grows", DEADLINE, || {
        (std::fs::metadata(logs.join("flood.out.log")).map_or(0, |m| m.len()) > 0).then_some(())
    });
    drop(supd);
    drop(tmpfs);
}

#[test]
fn long_lines_are_cut_and_invalid_utf8_stays_bytes_in_files_and_valid_json() {
    let script = "head -c 200000 /dev/zero | tr '\\0' x; echo; printf 'bad\\377byte\\n'; sleep 300";
    let supd = Supd::start(&prog("wide", &["sh", "-c", script], PIPED));
    poll("the last line in the file", DEADLINE, || {
        std::fs::read(supd.log_dir().join("wide.out.log"))
            .ok()
            .filter(|b| b.windows(9).any(|w| w == b"bad\xffbyte\n"))
    });
    let (code, out, err) = supd.ctl_text(&["--json", "logs", "wide", "-n", "10"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON a line"))
        .collect();
    let texts: Vec<&str> = lines.iter().map(|v| v["line"].as_str().unwrap()).collect();
    assert_eq!(texts.last(), Some(&"bad\u{FFFD}byte"));
    let xs = &texts[..texts.len() - 1];
    assert!(
        xs.iter()
            .all(|t| t.len() <= 64 * 1024 && t.bytes().all(|b| b == b'x'))
    );
    assert_eq!(xs.iter().map(|t| t.len()).sum::<usize>(), 200_000);
    assert_eq!(xs.len(), 4, "200,000 bytes in pieces of 64 KiB");
}

#[test]
fn a_daemon_false_program_writes_its_log_itself_and_survives_supd_being_killed() {
    let script = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.02; done";
    let mut supd = Supd::start(&prog(
        "ticker",
        &["sh", "-c", script],
        "start_secs = \"0s\"\nrestart = \"never\"",
    ));
    let pid = supd.wait_state("ticker", "running").pid.unwrap();
    // Its stdout is the log file itself, not a pipe to supd.
    let target = std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("fd 1");
    assert_eq!(target, supd.log_dir().join("ticker.out.log"));
    // supd follows the file: the ring and `logs` see the lines.
    poll("ticks through logs", DEADLINE, || {
        supd.ctl_text(&["logs", "ticker", "-n", "2"])
            .1
            .contains("tick-")
            .then_some(())
    });
    supd.signal_daemon(libc::SIGKILL);
    supd.wait_exit(DEADLINE);
    let size = |supd: &Supd| {
        std::fs::metadata(supd.log_dir().join("ticker.out.log")).map_or(0, |m| m.len())
    };
    let at_death = size(&supd);
    poll(
        "the program to keep writing after supd died",
        DEADLINE,
        || (size(&supd) > at_death + 200).then_some(()),
    );
    assert!(alive(pid), "no SIGPIPE: the program lives on");
    supd.restart_daemon();
    assert!(supd.wait_state("ticker", "running").adopted);
    let mut follower = KillOnDrop(supd.ctl_spawn_stdin(
        &["--json", "logs", "-f", "ticker", "-n", "0"],
        Stdio::null(),
    ));
    let lines = stdout_lines(&mut follower.0);
    let line = lines
        .recv_timeout(DEADLINE)
        .expect("a line followed after adoption");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["line"].as_str().unwrap().starts_with("tick-"), "{line}");
    // `logs -n` joins the file's older lines and the followed ones without
    // repeating any.
    let (_, out, _) = supd.ctl_text(&["--json", "logs", "ticker", "-n", "20", "--stdout"]);
    let ticks: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["line"].as_str()?.strip_prefix("tick-")?.parse().ok()
        })
        .collect();
    assert_eq!(ticks.len(), 20, "{out}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
}

#[test]
fn a_daemon_false_log_is_rotated_by_copy_and_truncate() {
    let script = "i=0; while [ $i -lt 60 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); sleep 0.01; done; sleep 300";
    let supd = Supd::start(&prog(
        "rot",
        &["sh", "-c", script],
        "start_secs = \"0s\"\nrestart = \"never\"\nlog_max_bytes = \"1KB\"\nlog_backups = 2",
    ));
    let dir = supd.log_dir();
    poll("a rotation", DEADLINE, || {
        dir.join("rot.out.log.2").exists().then_some(())
    });
    poll("the last line", DEADLINE, || {
        let all = [
            supd.log_file("rot.out.log"),
            supd.log_file("rot.out.log.1"),
            supd.log_file("rot.out.log.2"),
        ];
        all.iter().any(|t| t.contains("line-59-")).then_some(())
    });
    assert!(
        !dir.join("rot.out.log.3").exists(),
        "more than log_backups files kept"
    );
}

/// More programs writing their own files than one user may have inotify
/// instances (`fs.inotify.max_user_instances`, 128 by default): each file
/// is still followed, as its copy-and-truncate rotation and `logs -f` show.
#[test]
fn every_daemon_false_log_is_followed_past_the_inotify_instance_limit() {
    const N: usize = 200;
    let script = "i=0; while [ $i -lt 30 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; exec sleep 300";
    let mut programs = String::new();
    for i in 0..N {
        programs.push_str(&format!(
            "[program.w{i:03}]\ncommand = {}\nstart_secs = \"0s\"\nrestart = \"never\"\nlog_max_bytes = \"1KB\"\nlog_backups = 1\n\n",
            serde_json::to_string(&["sh", "-c", script]).expect("json"),
        ));
    }
    let supd = Supd::start(&config(&programs));
    let dir = supd.log_dir();
    // Each program wrote about 1.8 KB, past its 1 KB limit: only a
    // follower rotates a file the program writes itself.
    let unrotated = || -> Vec<usize> {
        (0..N)
            .filter(|i| !dir.join(format!("w{i:03}.out.log.1")).exists())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !unrotated().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = unrotated();
    assert!(
        left.is_empty(),
        "not rotated: {left:?}; first: {:?}; supd's log:\n{}",
        left.first()
            .map(|i| supd.log_file(&format!("w{i:03}.out.log"))),
        supd.log()
    );
    let last = format!("w{:03}", N - 1);
    let mut follower = KillOnDrop(
        supd.ctl_spawn_stdin(&["--json", "logs", "-f", &last, "-n", "0"], Stdio::null()),
    );
    let lines = stdout_lines(&mut follower.0);
    // Appended by hand until the follower (subscribed once `logs` has
    // answered, at a moment the test cannot see) shows one.
    let path = dir.join(format!("{last}.out.log"));
    let got = poll("the follower sees an appended line", DEADLINE, || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"by-hand\n"))
            .expect("append to the log file");
        lines
            .recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|l| l.contains("by-hand"))
    });
    let v: Value = serde_json::from_str(&got).expect("one JSON object");
    assert_eq!(v["name"], last.as_str());
    assert_eq!(v["line"], "by-hand");
}

#[test]
fn a_follower_that_falls_behind_is_told_how_many_lines_it_missed() {
    use std::io::{BufRead, BufReader, Write};
    let supd = Supd::start(&prog(
        "flood",
        &["yes"],
        &format!("{PIPED}\nlog_max_bytes = \"4MiB\"\nlog_backups = 1"),
    ));
    supd.wait_state("flood", "running");
    let mut stream = std::os::unix::net::UnixStream::connect(&supd.socket).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"logs\",\"params\":{\"name\":\"flood\",\"lines\":0,\"follow\":true}}\n",
        )
        .expect("send");
    // Not reading while the flood goes on: far more than the 4,096-line
    // backlog and the socket's buffer pass by.
    let size = |supd: &Supd| {
        let dir = supd.log_dir();
        ["flood.out.log", "flood.out.log.1"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let start = size(&supd);
    poll("2 MB more of the flood", DEADLINE, || {
        let now = size(&supd);
        (now > start + 2_000_000 || now < start).then_some(())
    });
    let mut reader = BufReader::new(stream);
    let end = Instant::now() + DEADLINE;
    let mut line = String::new();
    let missed = loop {
        assert!(Instant::now() < end, "no log.missed notification");
        line.clear();
        reader.read_line(&mut line).expect("a line");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        if v["method"] == "log.missed" {
            break v["params"]["missed"].as_u64().expect("a count");
        }
    };
    assert!(missed > 0);
    // And it goes on following.
    line.clear();
    reader.read_line(&mut line).expect("a line after the gap");
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert!(
        v["method"] == "log" || v["method"] == "log.missed",
        "{line}"
    );
}

#[test]
fn a_daemon_false_log_frames_each_run_with_markers_in_order() {
    let supd = Supd::start(&prog(
        "once",
        &["sh", "-c", "echo first; echo second >&2; exit 4"],
        "start_secs = \"0s\"\nrestart = \"never\"\nredirect_stderr = true",
    ));
    let text = poll("the end marker", DEADLINE, || {
        let t = supd.log_file("once.log");
        t.contains("--- supd: exited").then_some(t)
    });
    let pid = supd
        .client()
        .wait("once", Some(10.0))
        .expect("wait")
        .pid
        .expect("its pid");
    assert_eq!(
        text,
        format!(
            "--- supd: started pid {pid} ---\nfirst\nsecond\n--- supd: exited pid {pid} returncode 4 ---\n"
        )
    );
}
