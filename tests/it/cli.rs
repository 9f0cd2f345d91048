//! The finished CLI: completions, man pages, help with examples, colour
//! only on a terminal and never with NO_COLOR, and a closed pipe that is
//! not an error.

use std::os::fd::OwnedFd;
use std::process::{Command, Output, Stdio};

use crate::util::*;

const VERBS: [&str; 12] = [
    "status", "start", "stop", "restart", "kill", "signal", "wait", "scale", "events", "remove",
    "shutdown", "version",
];

/// Runs supctl with no daemon anywhere near (these verbs need none).
fn supctl(args: &[&str]) -> Output {
    Command::new(SUPCTL)
        .args(args)
        .env("SUPD_SOCKET", "/nonexistent/supd.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run supctl")
}

#[test]
fn completions_for_each_shell_name_every_verb() {
    for shell in ["bash", "zsh", "fish"] {
        let out = supctl(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(script.len() > 500, "{shell}: too short:\n{script}");
        for verb in VERBS {
            assert!(script.contains(verb), "{shell}: no {verb}");
        }
        assert!(
            script.contains("--json") || script.contains("-l json"),
            "{shell}"
        );
    }
    // bash accepts what it is given.
    let out = supctl(&["completions", "bash"]);
    let check = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(&out.stdout)?;
            c.wait_with_output()
        })
        .expect("bash -n");
    assert!(check.status.success(), "{check:?}");
    // An unknown shell is a usage error.
    assert_eq!(supctl(&["completions", "tcsh"]).status.code(), Some(2));
}

fn assert_man_page(text: &str, name: &str) {
    assert!(text.contains(&format!(".TH {name} 1")), "{name}: no title");
    assert!(text.contains(".SH NAME"), "{name}: no NAME");
    assert!(text.contains(".SH SYNOPSIS"), "{name}: no SYNOPSIS");
    assert!(text.contains(".SH DESCRIPTION"), "{name}: no DESCRIPTION");
    assert!(text.contains("Examples:"), "{name}: no examples");
}

#[test]
fn man_prints_supctl_and_supd_pages() {
    let out = supctl(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).expect("UTF-8");
    assert_man_page(&page, "supctl");
    for verb in VERBS {
        assert!(page.contains(&format!("supctl\\-{verb}(1)")), "no {verb}");
    }

    let out = supctl(&["man", "supd"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).expect("UTF-8");
    assert_man_page(&page, "supd");
    assert!(page.contains("\\-\\-check\\-config"), "{page}");
}

#[test]
fn man_out_writes_every_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("man1");
    let out = supctl(&["man", "--out", out_dir.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).expect("UTF-8");
    for name in ["supctl", "supd"] {
        let path = out_dir.join(format!("{name}.1"));
        assert!(listed.contains(&path.display().to_string()), "{listed}");
        assert_man_page(&std::fs::read_to_string(&path).expect(name), name);
    }
    for verb in VERBS {
        let page = std::fs::read_to_string(out_dir.join(format!("supctl-{verb}.1")))
            .unwrap_or_else(|e| panic!("supctl-{verb}.1: {e}"));
        assert_man_page(&page, &format!("supctl-{verb}"));
    }
}

#[test]
fn each_verb_has_help_with_examples() {
    for verb in VERBS {
        let out = supctl(&[verb, "--help"]);
        assert!(out.status.success(), "{verb}: {out:?}");
        let help = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(help.contains("Examples:"), "{verb}:\n{help}");
        assert!(
            help.contains(&format!("supctl {verb}"))
                || help.contains(&format!("supctl --json {verb}")),
            "{verb}: the examples use it:\n{help}"
        );
    }
    let out = Command::new(SUPD).arg("--help").output().expect("supd");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        help.contains("Examples:") && help.contains("--check-config"),
        "{help}"
    );
}

fn config() -> String {
    r#"
[program.web]
command = ["sleep", "300"]
start_secs = "100ms"

[program.broken]
command = ["/nonexistent/program"]
"#
    .into()
}

/// Quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `supctl ARGS` on a pseudo-terminal (script(1)), so that its stdout
/// is a terminal, with NO_COLOR set to `no_color` (or unset); returns what
/// it printed.
fn on_a_terminal(supd: &Supd, args: &[&str], no_color: Option<&str>) -> String {
    let mut line = format!(
        "{} --socket {}",
        sh_quote(SUPCTL),
        sh_quote(&supd.socket.display().to_string())
    );
    for a in args {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_is_coloured_only_on_a_terminal_and_never_with_no_color() {
    let supd = Supd::start(&config());
    supd.wait_state("web", "running");
    supd.wait_state("broken", "fatal");

    let tty = on_a_terminal(&supd, &["status"], None);
    assert!(tty.contains("\x1b[32mrunning\x1b[0m"), "{tty:?}");
    assert!(tty.contains("\x1b[31mfatal\x1b[0m"), "{tty:?}");

    let no_color = on_a_terminal(&supd, &["status"], Some("1"));
    assert!(no_color.contains("running"), "{no_color:?}");
    assert!(!no_color.contains('\x1b'), "{no_color:?}");

    // A pipe, as in `supctl status | grep`: plain, NO_COLOR or not.
    let out = Command::new(SUPCTL)
        .arg("--socket")
        .arg(&supd.socket)
        .arg("status")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .output()
        .expect("supctl");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.contains("running") && !text.contains('\x1b'),
        "{text:?}"
    );
    // JSON is never coloured, on a terminal either.
    let json = on_a_terminal(&supd, &["--json", "status"], None);
    assert!(
        json.contains("\"state\"") && !json.contains('\x1b'),
        "{json:?}"
    );
}

/// A pipe whose reading end is already closed: every write to the other
/// end fails with EPIPE, as `supctl status | head -0` does once head exits.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    write
}

fn with_closed_stdout(supd: &Supd, args: &[&str]) -> Output {
    supctl_cmd(&supd.socket, args)
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::piped())
        .output()
        .expect("supctl")
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let supd = Supd::start(
        r#"
[program.web]
command = ["sleep", "300"]
start_secs = "100ms"
"#,
    );
    supd.wait_state("web", "running");
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["version"],
        &["man"],
        &["completions", "bash"],
    ] {
        let out = with_closed_stdout(&supd, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn events_ends_quietly_when_its_reader_goes_away() {
    let supd = Supd::start(
        r#"
[program.web]
command = ["sleep", "300"]
start_secs = "0s"
"#,
    );
    supd.wait_state("web", "running");
    let mut child = supctl_cmd(&supd.socket, &["events"])
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("supctl events");
    // Make events until supctl has tried to print one and given up.
    let status = poll("supctl events to end", DEADLINE, || {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        let _ = supd.call("restart", serde_json::json!({ "names": ["web"] }));
        None
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
