//! Deploying under systemd: the unit file passes `systemd-analyze verify`,
//! supd speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING), and its own
//! logs go to journald, with structured fields, when `JOURNAL_STREAM` says
//! stderr is the journal.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/supd.service");

/// `systemd-analyze`, which this module's verify test needs: CI installs it
/// (`.ci/run`). Missing, the test fails, unless SUP_SKIP_SYSTEMD_VERIFY=1
/// says explicitly to do without it.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("SUP_SKIP_SYSTEMD_VERIFY").as_deref() == Ok("1"),
            "systemd-analyze is not installed (apt-get install systemd, as .ci/run does); \
             set SUP_SKIP_SYSTEMD_VERIFY=1 to skip this check knowingly"
        );
        eprintln!("SUP_SKIP_SYSTEMD_VERIFY=1: not verifying systemd/supd.service");
    }
    found
}

/// Runs `systemd-analyze verify` on `unit` with the man pages in `manpath`;
/// returns (exit status, everything it printed).
fn verify(analyze: &Path, unit: &Path, manpath: &Path) -> (i32, String) {
    let out = Command::new(analyze)
        .arg("verify")
        .arg(unit)
        .env("MANPATH", manpath)
        .env("SYSTEMD_LOG_COLOR", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // verify wants the ExecStart/ExecReload binaries to exist and the
    // Documentation= man pages to resolve: point them at the ones just built.
    let text = std::fs::read_to_string(UNIT).expect("read the unit");
    assert!(text.contains("/usr/local/bin/supd --config /etc/sup/supd.toml"));
    assert!(text.contains("/usr/local/bin/supctl reload"));
    let local = text
        .replace("/usr/local/bin/supd", SUPD)
        .replace("/usr/local/bin/supctl", SUPCTL);
    let unit = write_file(dir.path(), "supd.service", &local);
    let man1 = dir.path().join("man/man1");
    let out = Command::new(SUPCTL)
        .arg("man")
        .arg("--out")
        .arg(&man1)
        .output()
        .expect("supctl man");
    assert!(out.status.success(), "{out:?}");

    let (code, text) = verify(&analyze, &unit, &dir.path().join("man"));
    assert_eq!(code, 0, "systemd-analyze verify failed:\n{text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned:\n{text}"
    );

    // The check above has teeth: a misspelt key or value is reported.
    let broken = local
        .replace("KillMode=process", "KilMode=process")
        .replace("Type=notify", "Type=notfy");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let unit2 = write_file(dir2.path(), "supd.service", &broken);
    let (_, text) = verify(&analyze, &unit2, &dir.path().join("man"));
    assert!(
        text.contains("KilMode") && text.contains("notfy"),
        "verify did not notice the typos:\n{text}"
    );
}

/// The `[Service]` settings of the unit, as `(key, value)` pairs.
fn service_settings() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(UNIT).expect("read the unit");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn the_unit_file_has_what_a_deployment_relies_on() {
    let settings = service_settings();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "/usr/local/bin/supd --config /etc/sup/supd.toml",
        ),
        ("ExecReload", "/usr/local/bin/supctl reload"),
        ("KillMode", "process"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "supd"),
        ("StateDirectory", "supd"),
        ("LogsDirectory", "supd"),
        ("WatchdogSec", "30"),
    ] {
        assert_eq!(get(key), vec![value], "{key}= in systemd/supd.service");
    }
    // Sandboxing that would break ordinary supervised programs stays off.
    for key in [
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "PrivateDevices",
        "MemoryDenyWriteExecute",
        "DeviceAllow",
        "ProtectClock",
    ] {
        assert!(
            get(key).is_empty(),
            "{key}= must not be set: {:?}",
            get(key)
        );
    }
    // supctl's default socket for root is the RuntimeDirectory's.
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            sup::client::default_socket_path(),
            PathBuf::from("/run/supd/supd.sock")
        );
    }
}

/// A configuration with one long sleep named `name` (`daemon = false`), and
/// a short `shutdown_timeout`: a shutdown waits that long for the sleep
/// before it stops it, and the default (30 s) would be each test's length.
fn sleeper(name: &str) -> String {
    format!(
        "[supd]\nshutdown_timeout = \"300ms\"\n\n[program.{name}]\ncommand = [\"sleep\", \"300\"]\nstart_secs = \"100ms\"\nstop_timeout = \"2s\"\n"
    )
}

/// Polls until a notify line satisfies `pred`; returns every line so far.
fn wait_notification(supd: &Supd, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
    poll(what, DEADLINE, || {
        let lines = supd.notifications();
        lines.iter().any(|l| pred(l)).then_some(lines)
    })
}

#[test]
fn ready_comes_with_a_status_summary_that_follows_state_changes() {
    let config = sleeper("web")
        + "[program.once]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nrestart = \"never\"\nstart_secs = \"0s\"\n";
    let supd = Supd::start(&config);
    let lines = supd.notifications();
    let ready = lines.iter().position(|l| l == "READY=1").expect("READY=1");
    assert!(
        lines[ready + 1..]
            .iter()
            .any(|l| l.starts_with("STATUS=2 programs: ")),
        "a STATUS= with READY=1: {lines:?}"
    );
    supd.wait_state("web", "running");
    supd.wait_state("once", "exited");
    wait_notification(&supd, "STATUS= with web running and once exited", |l| {
        l == "STATUS=2 programs: 1 running, 1 exited"
    });

    // It follows changes made through supctl too.
    let (code, _, err) = supd.ctl_text(&["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    let lines = wait_notification(&supd, "STATUS= after the stop", |l| {
        l == "STATUS=2 programs: 1 stopped, 1 exited"
    });
    // No watchdog was asked for, so none is pinged.
    assert!(!lines.iter().any(|l| l == "WATCHDOG=1"), "{lines:?}");
}

#[test]
fn stopping_is_sent_when_shutdown_begins_and_before_exit() {
    // A program that ignores the stop signal, with a long stop_timeout:
    // shutdown waits for it, so supd is still up when STOPPING=1 must
    // already have been sent.
    let config = r#"
[program.web]
command = ["sh", "-c", "trap '' TERM; exec sleep 300"]
start_secs = "100ms"
stop_timeout = "60s"
"#;
    let mut supd = Supd::start(config);
    supd.wait_state("web", "running");
    assert!(!supd.notifications().iter().any(|l| l == "STOPPING=1"));

    supd.signal_daemon(libc::SIGTERM);
    wait_notification(&supd, "STOPPING=1 after SIGTERM", |l| l == "STOPPING=1");
    let still_up = supd
        .child
        .as_mut()
        .expect("supd")
        .try_wait()
        .expect("try_wait")
        .is_none();
    assert!(
        still_up,
        "supd should still be waiting for web (it ignores SIGTERM; stop_timeout 60s)"
    );
    // A second request ends it at once (SIGKILL to what is left).
    supd.signal_daemon(libc::SIGTERM);
    assert_eq!(supd.wait_exit(DEADLINE), 0);
}

#[test]
fn stopping_is_sent_on_shutdown_through_supctl() {
    let mut supd = Supd::start(&sleeper("web"));
    supd.wait_state("web", "running");
    let (code, _, err) = supd.ctl_text(&["shutdown"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(supd.wait_exit(DEADLINE), 0);
    let lines = supd.notifications();
    let ready = lines.iter().position(|l| l == "READY=1").expect("READY=1");
    let stopping = lines
        .iter()
        .position(|l| l == "STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1 in {lines:?}"));
    assert!(ready < stopping, "{lines:?}");
}

#[test]
fn the_watchdog_is_pinged_at_half_of_watchdog_usec_when_it_is_ours() {
    // Started first: its WATCHDOG_PID names another process, so the
    // variables are not meant for it and it must not ping.
    let foreign = Supd::start_with_env(
        &sleeper("web"),
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let ours = Supd::start_with_env(&sleeper("web"), &[("WATCHDOG_USEC", "200000")]);
    // Every 100 ms: several pings come well within the deadline.
    poll("four WATCHDOG=1 pings", DEADLINE, || {
        let pings = ours
            .notifications()
            .iter()
            .filter(|l| *l == "WATCHDOG=1")
            .count();
        (pings >= 4).then_some(())
    });
    // Those four took at least 300 ms; the foreign one had the same time.
    let foreign_lines = foreign.notifications();
    assert!(
        !foreign_lines.iter().any(|l| l == "WATCHDOG=1"),
        "pinged although WATCHDOG_PID is not ours: {foreign_lines:?}"
    );
    assert!(foreign_lines.iter().any(|l| l == "READY=1"));
}

// ---- journald ----

/// One journald native-protocol record (systemd's "journal export"-like
/// datagram): `KEY=value\n`, or `KEY\n` + 64-bit little-endian length +
/// bytes + `\n` for values with newlines.
fn parse_journal_record(mut bytes: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let nl = bytes.iter().position(|&b| b == b'\n').expect("field ends");
        let head = &bytes[..nl];
        if let Some(eq) = head.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                String::from_utf8_lossy(&head[eq + 1..]).into_owned(),
            ));
            bytes = &bytes[nl + 1..];
        } else {
            let rest = &bytes[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
            let value = &rest[8..8 + len];
            fields.push((
                String::from_utf8_lossy(head).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            bytes = &rest[8 + len + 1..];
        }
    }
    fields
}

/// supd started in a private mount namespace whose `/run` is a folder of
/// the test's (so `/run/systemd/journal/socket` is whatever the test put
/// there), with stderr to a file and `JOURNAL_STREAM` set as systemd would.
struct JournaledSupd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    socket: PathBuf,
    notify: UnixDatagram,
    journal: Option<UnixDatagram>,
    marker: String,
}

impl JournaledSupd {
    /// `fake_journald`: bind a socket where journald's would be.
    /// `stream_matches`: JOURNAL_STREAM names our stderr file (else another file).
    fn start(config: &str, fake_journald: bool, stream_matches: bool) -> JournaledSupd {
        let dir = tempfile::Builder::new()
            .prefix("supd-journal-")
            .tempdir()
            .expect("tempdir");
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("systemd/journal")).expect("mkdir");
        let journal = fake_journald.then(|| {
            let j = UnixDatagram::bind(run.join("systemd/journal/socket")).expect("bind journal");
            j.set_nonblocking(true).expect("non-blocking");
            j
        });
        let config_path = write_file(dir.path(), "supd.toml", config);
        let socket = dir.path().join("supd.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let other = std::fs::File::create(dir.path().join("other")).expect("other file");
        let id = if stream_matches { &stderr } else { &other }
            .metadata()
            .expect("fstat");
        let marker = format!("journal-{}-{}", std::process::id(), dir.path().display());
        // unshare(1) execs sh, which execs supd: the child's pid is supd's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /run && exec "$@""#)
            .arg(&run)
            .arg(SUPD)
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("JOURNAL_STREAM", format!("{}:{}", id.dev(), id.ino()))
            .env("SUP_TEST_MARKER", &marker)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut supd = JournaledSupd {
            dir,
            child,
            socket,
            notify,
            journal,
            marker,
        };
        supd.wait_ready();
        supd
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        poll("READY=1 from supd in its namespace", DEADLINE, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "supd (or unshare) exited with {status}; it needs root for a mount \
                     namespace. stderr:\n{}",
                    self.stderr()
                );
            }
            ready_notified(&self.notify)
        });
    }

    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let (code, _, err) = output_text(&supctl_at(&self.socket, args));
        (code, err)
    }

    /// Records received on the fake journald socket so far.
    fn records(&self, into: &mut Vec<Vec<(String, String)>>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = journal.recv(&mut buf) {
            if n > 0 {
                into.push(parse_journal_record(&buf[..n]));
            }
        }
    }

    fn shutdown(&mut self) {
        let (code, err) = self.ctl(&["shutdown"]);
        assert_eq!(code, 0, "{err}");
        let status = poll("supd to exit", DEADLINE, || {
            self.child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "{status}");
    }
}

impl Drop for JournaledSupd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_marked(&self.marker);
    }
}

fn field<'a>(record: &'a [(String, String)], key: &str) -> Option<&'a str> {
    record
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn logs_go_to_journald_with_structured_fields_when_stderr_is_the_journal() {
    let mut supd = JournaledSupd::start(&sleeper("web"), true, true);
    let mut records = Vec::new();
    // The spawn of web is logged with its program and pid.
    let spawned = poll("a journald record of web's spawn", DEADLINE, || {
        supd.records(&mut records);
        records
            .iter()
            .find(|r| field(r, "MESSAGE") == Some("spawned") && field(r, "PROGRAM") == Some("web"))
            .cloned()
    });
    let pid = field(&spawned, "PID").expect("PID field");
    assert!(pid.parse::<u32>().is_ok(), "PID={pid}");
    assert_eq!(field(&spawned, "PRIORITY"), Some("6"), "info is 6");
    assert_eq!(field(&spawned, "SYSLOG_IDENTIFIER"), Some("supd"));
    assert!(field(&spawned, "TARGET").is_some());

    // Its end, with how it ended.
    let (code, err) = supd.ctl(&["kill", "web"]);
    assert_eq!(code, 0, "{err}");
    let exited = poll("a journald record of web's exit", DEADLINE, || {
        supd.records(&mut records);
        records
            .iter()
            .find(|r| field(r, "MESSAGE") == Some("exited") && field(r, "PROGRAM") == Some("web"))
            .cloned()
    });
    assert_eq!(field(&exited, "PID"), Some(pid));
    assert_eq!(field(&exited, "STATUS"), Some("killed by SIGKILL"));

    supd.shutdown();
    supd.records(&mut records);
    assert!(
        records
            .iter()
            .any(|r| field(r, "MESSAGE") == Some("supd stopped")),
        "{records:?}"
    );
    // Nothing of it on stderr.
    let stderr = supd.stderr();
    assert!(!stderr.contains("spawned"), "{stderr}");
}

#[test]
fn logs_go_to_stderr_when_journald_is_not_there() {
    let mut supd = JournaledSupd::start(&sleeper("web"), false, true);
    poll("web's spawn on stderr", DEADLINE, || {
        supd.stderr().contains("spawned").then_some(())
    });
    let stderr = supd.stderr();
    assert!(
        stderr.contains("journald's socket is not reachable; logging to stderr"),
        "{stderr}"
    );
    // stderr is the journal: no timestamp of our own (the journal adds it).
    let line = stderr
        .lines()
        .find(|l| l.contains("spawned"))
        .expect("spawned line");
    assert!(
        line.trim_start().starts_with("INFO"),
        "no timestamp expected: {line}"
    );
    supd.shutdown();
}

#[test]
fn logs_go_to_stderr_with_timestamps_when_journal_stream_is_another_file() {
    // journald is there, but JOURNAL_STREAM names a file that is not our
    // stderr (stderr was redirected after systemd set the variable).
    let mut supd = JournaledSupd::start(&sleeper("web"), true, false);
    poll("web's spawn on stderr", DEADLINE, || {
        supd.stderr().contains("spawned").then_some(())
    });
    supd.shutdown();
    let mut records = Vec::new();
    supd.records(&mut records);
    assert!(records.is_empty(), "nothing for journald: {records:?}");
    let stderr = supd.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("spawned"))
        .expect("spawned line");
    // An RFC 3339 timestamp first: 2026-11-21T08:00:00.123456Z
    let year = &line.trim_start()[..4];
    assert!(
        year.chars().all(|c| c.is_ascii_digit()),
        "timestamp expected: {line}"
    );
    assert!(line.contains("program=web"), "{line}");
}

#[test]
fn stdout_journal_sends_each_line_to_journald_under_the_program_name() {
    let config = "[program.chatty]\ncommand = [\"sh\", \"-c\", \"echo hello-journal; echo oops-journal >&2; sleep 300\"]\nstdout = \"journal\"\nstart_secs = \"0s\"\ndaemon = true\n";
    let mut supd = JournaledSupd::start(config, true, true);
    let mut records = Vec::new();
    let find = |records: &Vec<Vec<(String, String)>>, message: &str| {
        records
            .iter()
            .find(|r| field(r, "MESSAGE") == Some(message))
            .cloned()
    };
    let out = poll("chatty's stdout line in the journal", DEADLINE, || {
        supd.records(&mut records);
        find(&records, "hello-journal")
    });
    assert_eq!(field(&out, "SYSLOG_IDENTIFIER"), Some("chatty"));
    assert_eq!(field(&out, "PRIORITY"), Some("6"));
    let err = poll("chatty's stderr line in the journal", DEADLINE, || {
        supd.records(&mut records);
        find(&records, "oops-journal")
    });
    assert_eq!(field(&err, "SYSLOG_IDENTIFIER"), Some("chatty"));
    assert_eq!(field(&err, "PRIORITY"), Some("3"));
    // No log file for it: the journal holds its output.
    assert!(!supd.dir.path().join("logs/chatty.out.log").exists());
    supd.shutdown();
}
