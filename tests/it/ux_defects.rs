//! Issue 11, the user-facing defects: durations without a bound, names `.`
//! and `..`, messages that did not say what is allowed, no suggestion for a
//! misspelt program name, `reload` and `remove` saying the wrong thing, and
//! the quick start's example configuration.
//!
//! A panic in supd now ends it through a hook that logs it (src/main.rs);
//! with durations bounded no panic is reachable from outside (the
//! `Instant + Duration` one the huge durations caused is what
//! `huge_durations_are_refused_when_the_config_is_read` and
//! `the_longest_durations_are_safe_at_runtime` cover), so no test here
//! makes supd panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sup::client::ClientError;

use super::util::*;

/// `supd --check-config` on `text` (a file `supd.toml` in `dir`):
/// (exit status, stdout, stderr).
fn check_config(dir: &Path, text: &str) -> (i32, String, String) {
    let path = write_file(dir, "supd.toml", text);
    run_bounded(
        Command::new(SUPD).arg("--check-config").arg(&path),
        DEADLINE,
    )
}

#[test]
fn huge_durations_are_refused_when_the_config_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value) in [
        // Passed --check-config, then panicked supd at the first restart.
        ("backoff_initial", "500000000000y"),
        // Panicked --check-config itself (start_secs * 10).
        ("start_secs", "100000000000y"),
        ("backoff_max", "366d"),
        ("stop_timeout", "1y 1s"),
    ] {
        let text = format!("[program.web]\ncommand = [\"true\"]\n{key} = \"{value}\"\n");
        let (code, out, err) = check_config(dir.path(), &text);
        assert_eq!(code, 1, "{key} = {value:?}: {out}{err}");
        let place = format!("supd.toml:3:{}: ", key.len() + 4);
        assert!(
            err.contains(&place)
                && err.contains(key)
                && err.contains(value)
                && err.contains("one year (\"1y\")"),
            "{key} = {value:?}: the error names the place, the key, the value and the bound: {err}"
        );
    }
    let (code, _, err) = check_config(
        dir.path(),
        "[supd]\nshutdown_timeout = \"1000y\"\n[program.web]\ncommand = [\"true\"]\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("supd.toml:2:20: ") && err.contains("one year (\"1y\")"),
        "{err}"
    );
    let (code, _, err) = check_config(
        dir.path(),
        "[program.web]\ncommand = [\"true\"]\nlog_max_bytes = \"2048GiB\"\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("supd.toml:3:17: ") && err.contains("1 TiB"),
        "{err}"
    );

    // At the bound, it is valid.
    let (code, out, err) = check_config(
        dir.path(),
        "[program.web]\ncommand = [\"true\"]\nstart_secs = \"1y\"\nbackoff_initial = \"365d\"\n",
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_longest_durations_are_safe_at_runtime() {
    // Every duration at its bound, one year: start_secs (backoff_reset ten
    // times that), and a restart delayed by a year. supd arms the retry and
    // goes on answering; the program can still be stopped.
    let mut supd = Supd::start(&prog(
        "crash",
        &["sh", "-c", "exit 3"],
        "start_secs = \"1y\"\nstart_retries = \"infinite\"\nbackoff_initial = \"1y\"\nbackoff_max = \"1y\"\nstop_timeout = \"1y\"\ndaemon = true",
    ));
    let s = supd.wait_state("crash", "backoff");
    let year = sup::config::MAX_DURATION.as_secs_f64();
    let next = s.next_retry_secs.expect("next_retry_secs in backoff");
    assert!(
        next > 0.85 * year && next <= year,
        "the retry is about a year away: {next}"
    );
    let (code, _, err) = supd.ctl_text(&["stop", "crash"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(supd.status("crash").state.as_str(), "stopped");
    let (code, _, err) = supd.ctl_text(&["shutdown"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(supd.wait_exit(DEADLINE), 0, "{}", supd.log());
    assert!(!supd.log().contains("panicked"), "{}", supd.log());
}

#[test]
fn negative_durations_and_counts_say_what_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = check_config(
        dir.path(),
        "[program.web]\ncommand = [\"true\"]\nstop_timeout = \"-5s\"\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("supd.toml:3:16: ")
            && err.contains("negative")
            && err.contains("0 or more")
            && err.contains("\"5s\"")
            && !err.contains("expected number"),
        "{err}"
    );
    for value in ["-1", "\"forever\""] {
        let (code, _, err) = check_config(
            dir.path(),
            &format!("[program.web]\ncommand = [\"true\"]\nstart_retries = {value}\n"),
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("supd.toml:3:17: ")
                && err.contains("0 or more")
                && err.contains("\"infinite\""),
            "start_retries = {value}: {err}"
        );
    }
}

#[test]
fn dot_and_dotdot_are_not_program_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = check_config(
        dir.path(),
        "[program.\".\"]\ncommand = [\"true\"]\n[program.\"..\"]\ncommand = [\"true\"]\n[pool.\"..\"]\nsize = 1\n",
    );
    assert_eq!(code, 1, "{err}");
    for place in ["supd.toml:1:10: ", "supd.toml:3:10: ", "supd.toml:5:7: "] {
        assert!(err.contains(place), "an error at {place}: {err}");
    }
    assert!(err.contains("invalid program name \"..\""), "{err}");

    let supd = Supd::start(&prog("web", &["sleep", "300"], "daemon = true"));
    for name in [".", ".."] {
        let (code, out, err) = supd.ctl_text(&["run", "--name", name, "--", "true"]);
        assert_eq!(code, 1, "run --name {name}: {out}{err}");
        assert!(
            err.contains(&format!("invalid name \"{name}\"")),
            "run --name {name}: {err}"
        );
    }
    assert_eq!(supd.status_all().len(), 1, "no run was created");
}

#[test]
fn an_unknown_name_gets_the_closest_one_suggested() {
    let config = format!(
        "{}{}[pool.encoders]\nsize = 1\n",
        prog(
            "web",
            &["sleep", "300"],
            "daemon = true\nstart_secs = \"0s\""
        ),
        prog(
            "workers",
            &["sleep", "300"],
            "daemon = true\nstart_secs = \"0s\"\ninstances = 2"
        ),
    );
    let supd = Supd::start(&config);
    supd.wait_state("web", "running");
    let verbs: &[&[&str]] = &[
        &["start", "wbe"],
        &["stop", "wbe"],
        &["restart", "wbe"],
        &["kill", "wbe"],
        &["signal", "wbe", "HUP"],
        &["wait", "wbe"],
        &["remove", "wbe"],
        &["logs", "wbe"],
        &["status", "wbe"],
        &["scale", "wrokers", "3"],
        &["run", "--pool", "encoder", "--", "true"],
    ];
    for args in verbs {
        let (code, out, err) = supd.ctl_text(args);
        let want = if args[0] == "status" { 4 } else { 1 };
        assert_eq!(code, want, "supctl {args:?}: {out}{err}");
        let close = match args[0] {
            "scale" => "workers",
            "run" => "encoders",
            _ => "web",
        };
        assert!(
            err.contains(&format!("did you mean \"{close}\"?")),
            "supctl {args:?}: {err}"
        );
    }
    // A member of a pool is found by its pool's name too.
    let (_, _, err) = supd.ctl_text(&["stop", "worker"]);
    assert!(err.contains("did you mean \"workers\"?"), "{err}");

    // On the wire: data.suggestions, by unknown name; none when nothing is close.
    match supd.call("stop", json!({ "names": ["wbe", "zzzzzzzz"] })) {
        Err(ClientError::Rpc(e)) => {
            let data = serde_json::to_value(&e.data).expect("data");
            assert_eq!(data["kind"], "not_found");
            assert_eq!(data["suggestions"], json!({ "wbe": "web" }), "{data}");
            assert!(
                e.message.contains("wbe (did you mean \"web\"?)") && e.message.contains("zzzzzzzz"),
                "{}",
                e.message
            );
        }
        other => panic!("stop of unknown names: {other:?}"),
    }
    match supd.call("stop", json!({ "names": ["zzzzzzzz"] })) {
        Err(ClientError::Rpc(e)) => {
            let data = serde_json::to_value(&e.data).expect("data");
            assert_eq!(data.get("suggestions"), None, "{data}");
            assert!(
                e.message.contains("supctl status lists them"),
                "{}",
                e.message
            );
        }
        other => panic!("stop of an unknown name: {other:?}"),
    }
}

#[test]
fn reload_that_adds_programs_exits_0() {
    let base = prog(
        "web",
        &["sleep", "300"],
        "daemon = true\nstart_secs = \"0s\"",
    );
    let supd = Supd::start(&base);
    supd.wait_state("web", "running");
    let added = format!(
        "{base}{}{}",
        prog(
            "extra",
            &["sleep", "300"],
            "daemon = true\nstart_secs = \"0s\""
        ),
        // Fails at once: reload has applied the configuration all the same.
        prog(
            "broken",
            &["sh", "-c", "exit 3"],
            "daemon = true\nstart_retries = 0\nstart_secs = \"10s\""
        ),
    );
    std::fs::write(&supd.config, added).expect("write config");
    let (code, out, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 0, "the configuration was applied: {out}{err}");
    assert!(out.contains("added: broken, extra"), "{out}");
    assert!(
        err.contains("broken") && err.contains("exit status 3"),
        "the program that failed is named on stderr: {err}"
    );
    supd.wait_state("extra", "running");
    supd.wait_state("broken", "fatal");

    // A bad configuration still exits 1 (nothing changed).
    std::fs::write(&supd.config, "[program.web]\ncomand = []\n").expect("write config");
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing changed"), "{err}");
}

#[test]
fn remove_says_removed() {
    let config = format!(
        "{}{}",
        prog(
            "web",
            &["sleep", "300"],
            "daemon = true\nstart_secs = \"0s\""
        ),
        prog(
            "extra",
            &["sleep", "300"],
            "daemon = true\nstart_secs = \"0s\""
        ),
    );
    let supd = Supd::start(&config);
    supd.wait_state("extra", "running");
    let (code, _, err) = supd.ctl_text(&["stop", "extra"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = supd.ctl_text(&["remove", "extra"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "extra: removed\n", "{err}");
    let names: Vec<String> = supd.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["web"]);
}

/// The repository's `config/` folder.
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn the_example_web_serves_only_a_folder_of_its_own() {
    let example = config_dir().join("example.toml");
    let config = sup::config::Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    let cwd = config.programs["web"].cwd.clone().expect("web has a cwd");
    let cwd = cwd.canonicalize().expect("web's folder exists");
    assert_ne!(cwd, config_dir().canonicalize().expect("config/"));
    let files: Vec<String> = std::fs::read_dir(&cwd)
        .expect("read web's folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        ["index.html"],
        "web's folder holds a page, nothing else"
    );
}

#[test]
fn the_example_ticker_goes_on_after_sighup() {
    let supd = Supd::start_file(&config_dir().join("example.toml"));
    let pid = running_pid(&supd, "ticker");
    // A tick before the signal, so the trap is set.
    poll("a tick from ticker", DEADLINE, || {
        let (_, out, _) = supd.ctl_text(&["logs", "ticker", "-n", "5"]);
        out.contains("tick").then_some(())
    });
    let (code, out, err) = supd.ctl_text(&["signal", "ticker", "HUP"]);
    assert_eq!(code, 0, "{out}{err}");
    // It says so, and ticks on after it.
    let after = poll("a tick after \"reloaded\"", DEADLINE, || {
        let (_, out, _) = supd.ctl_text(&["logs", "ticker", "-n", "20"]);
        let after = out.split_once("reloaded\n")?.1.to_string();
        after.contains("tick").then_some(after)
    });
    let s = supd.status("ticker");
    assert_eq!(
        (s.state.as_str(), s.pid, s.restarts),
        ("running", Some(pid), 0),
        "the same run goes on: {after}"
    );
    // Its lines are in its log file, not on supd's stdout.
    let log = poll("ticker.out.log", DEADLINE, || {
        let text = std::fs::read_to_string(supd.dir.path().join("logs/ticker.out.log")).ok()?;
        text.contains("reloaded").then_some(text)
    });
    assert!(log.contains("tick 1"), "{log}");
    assert!(!supd.log().contains("tick 1"), "{}", supd.log());
}

#[test]
fn the_example_config_is_valid() {
    let (code, out, err) = run_bounded(
        Command::new(SUPD)
            .arg("--check-config")
            .arg(config_dir().join("example.toml")),
        DEADLINE,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid (3 programs)"), "{out}");
}
