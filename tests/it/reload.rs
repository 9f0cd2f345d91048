//! `supctl reload` and SIGHUP: the difference applied, a bad config changing
//! nothing; `include`; per-program user, group, umask and limits observed
//! from inside the program.

use serde_json::Value;

use crate::util::*;

fn sleeper(name: &str, extra: &str) -> String {
    format!(
        "[program.{name}]\ncommand = [\"sleep\", \"300\"]\nstart_secs = \"0s\"\ndaemon = true\n{extra}\n"
    )
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reload_applies_each_kind_of_difference() {
    let supd = Supd::start(
        &(sleeper("same", "")
            + &sleeper("edited", "")
            + &sleeper("dropped", "")
            + &sleeper("idle", "autostart = false")),
    );
    let same = running_pid(&supd, "same");
    let edited = running_pid(&supd, "edited");
    let dropped = running_pid(&supd, "dropped");

    std::fs::write(
        &supd.config,
        sleeper("same", "")
            + "[program.edited]\ncommand = [\"sleep\", \"301\"]\nstart_secs = \"0s\"\ndaemon = true\n"
            + &sleeper("idle", "autostart = false\nstop_timeout = \"3s\"")
            + &sleeper("fresh", ""),
    )
    .expect("rewrite config");
    let (code, v, err) = ctl_json(&supd, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "added"), ["fresh"]);
    assert_eq!(names(&v, "removed"), ["dropped"]);
    assert_eq!(names(&v, "changed"), ["edited", "idle"]);
    assert_eq!(names(&v, "unchanged"), ["same"]);

    // Unchanged: the same process.
    assert_eq!(supd.status("same").pid, Some(same));
    // Changed and running: restarted with the new command.
    let new_edited = running_pid(&supd, "edited");
    assert_ne!(new_edited, edited);
    assert!(!alive(edited), "the old edited process is gone");
    let cmdline = std::fs::read(format!("/proc/{new_edited}/cmdline")).expect("cmdline");
    assert!(cmdline.ends_with(b"301\0"), "{cmdline:?}");
    // Changed but stopped: still stopped.
    assert_eq!(supd.status("idle").state.as_str(), "stopped");
    // Removed: stopped and forgotten.
    poll("dropped's process to end", DEADLINE, || {
        (!alive(dropped)).then_some(())
    });
    let (code, _, _) = supd.ctl_text(&["status", "dropped"]);
    assert_eq!(code, 4, "dropped is unknown now");
    // Added: started.
    running_pid(&supd, "fresh");
}

#[test]
fn a_bad_config_changes_nothing_and_names_every_error() {
    let supd = Supd::start(&(sleeper("a", "") + &sleeper("b", "")));
    let a = running_pid(&supd, "a");
    let b = running_pid(&supd, "b");
    std::fs::write(
        &supd.config,
        "[program.a]\ncommand = [\"sleep\", \"1\"]\ncomand = 1\n[program.c]\nstop_timeout = 5\n",
    )
    .expect("rewrite config");
    let (code, out, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1, "{out}");
    let path = supd.config.display().to_string();
    assert!(
        err.contains(&format!("{path}:3:1: unknown key \"comand\"")),
        "{err}"
    );
    assert!(err.contains(&format!("{path}:5:16:")), "{err}");
    assert!(err.contains("[program.c] has no \"command\""), "{err}");
    assert_eq!(supd.status("a").pid, Some(a));
    assert_eq!(supd.status("b").pid, Some(b));
    let all = supd.status_all();
    assert_eq!(all.len(), 2, "{all:?}");
    // A vanished file is refused whole too.
    std::fs::remove_file(&supd.config).expect("remove config");
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the configuration"), "{err}");
    assert_eq!(supd.status("a").pid, Some(a));
}

#[test]
fn sighup_reloads() {
    let supd = Supd::start(&sleeper("a", ""));
    let a = running_pid(&supd, "a");
    std::fs::write(&supd.config, sleeper("a", "") + &sleeper("b", "")).expect("rewrite");
    supd.signal_daemon(libc::SIGHUP);
    poll("b to be added by the reload", DEADLINE, || {
        supd.status_all()
            .iter()
            .any(|s| s.name == "b" && s.state.as_str() == "running")
            .then_some(())
    });
    assert_eq!(supd.status("a").pid, Some(a));
}

#[test]
fn a_pool_resized_by_reload_gains_and_loses_members() {
    let supd = Supd::start(&sleeper("w", "instances = 3"));
    let w0 = running_pid(&supd, "w:0");
    running_pid(&supd, "w:2");
    std::fs::write(&supd.config, sleeper("w", "instances = 2")).expect("rewrite");
    let (code, v, err) = ctl_json(&supd, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "changed"), ["w"]);
    let rows: Vec<String> = supd.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(rows, ["w:0", "w:1"]);
    // The members kept are restarted with the new definition.
    assert_ne!(running_pid(&supd, "w:0"), w0);
}

#[test]
fn include_merges_program_files_and_refuses_a_program_defined_twice() {
    let supd = Supd::start(&sleeper("main", ""));
    let dir = supd.dir.path();
    std::fs::create_dir(dir.join("conf.d")).expect("conf.d");
    write_file(&dir.join("conf.d"), "a.toml", &sleeper("extra", ""));
    std::fs::write(
        &supd.config,
        "[supd]\ninclude = [\"conf.d/*.toml\"]\n".to_string() + &sleeper("main", ""),
    )
    .expect("rewrite");
    let (code, v, err) = ctl_json(&supd, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "added"), ["extra"]);
    running_pid(&supd, "extra");

    // The same program in two files: both places are named, nothing changes.
    write_file(
        &dir.join("conf.d"),
        "b.toml",
        &format!("\n{}", sleeper("main", "")),
    );
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1);
    let b = dir.join("conf.d/b.toml").display().to_string();
    let main = supd.config.display().to_string();
    assert!(
        err.contains(&format!(
            "{b}:2:10: program \"main\" is defined twice: here and at {main}:"
        )),
        "{err}"
    );
    // [supd] has no place in an included file.
    std::fs::remove_file(dir.join("conf.d/b.toml")).expect("rm");
    write_file(&dir.join("conf.d"), "c.toml", "[supd]\nsocket = \"x\"\n");
    let (code, _, err) = supd.ctl_text(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("[supd] belongs in the main configuration file"),
        "{err}"
    );
}

/// A program that writes what it sees of itself to `out`, then sleeps.
fn reporter(out: &std::path::Path, extra: &str) -> String {
    format!(
        "[program.who]\ncommand = [\"sh\", \"-c\", \"{{ id -u; id -g; id -G; umask; ulimit -n; ulimit -c; echo $HOME; }} > {}; exec sleep 300\"]\nstart_secs = \"0s\"\ndaemon = true\n{extra}\n",
        out.display()
    )
}

fn read_report(path: &std::path::Path) -> Vec<String> {
    poll("the program's report", DEADLINE, || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        (lines.len() >= 7).then_some(lines)
    })
}

#[test]
fn user_group_umask_and_limits_are_set_before_exec() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CI and the development machines run as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("user nobody");
    let out_dir = tempfile::tempdir().expect("tempdir");
    // nobody must be able to write the report.
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let out = out_dir.path().join("report");
    let supd = Supd::start(&reporter(
        &out,
        "user = \"nobody\"\numask = \"027\"\nlimit_nofile = 123\nlimit_core = 0",
    ));
    running_pid(&supd, "who");
    let r = read_report(&out);
    assert_eq!(r[0], nobody.uid.to_string(), "uid: {r:?}");
    assert_eq!(r[1], nobody.gid.to_string(), "gid: {r:?}");
    let groups: Vec<&str> = r[2].split_whitespace().collect();
    assert!(
        !groups.contains(&"0"),
        "root's groups must not leak to the program: {r:?}"
    );
    assert_eq!(r[3], "0027", "umask: {r:?}");
    assert_eq!(r[4], "123", "ulimit -n: {r:?}");
    assert_eq!(r[5], "0", "ulimit -c: {r:?}");
    assert_eq!(r[6], nobody.dir.display().to_string(), "HOME: {r:?}");

    // A group alone, by gid.
    let out2 = out_dir.path().join("report2");
    let supd2 = Supd::start(&reporter(&out2, "group = 65534"));
    running_pid(&supd2, "who");
    let r = read_report(&out2);
    assert_eq!(r[0], "0", "still root: {r:?}");
    assert_eq!(r[1], "65534", "gid: {r:?}");
    assert_eq!(r[2], "65534", "only that group: {r:?}");
}

#[test]
fn an_unknown_user_or_group_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_file(
        dir.path(),
        "bad.toml",
        "[program.p]\ncommand = [\"true\"]\nuser = \"no-such-user-here\"\ngroup = \"no-such-group-here\"\numask = \"999\"\nlimit_nofile = -1\n",
    );
    let out = std::process::Command::new(SUPD)
        .arg("--check-config")
        .arg(&cfg)
        .output()
        .expect("run supd");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = cfg.display().to_string();
    assert!(
        err.contains(&format!("{path}:3:8: unknown user \"no-such-user-here\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:4:9: unknown group \"no-such-group-here\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:5:9: \"umask\" must be an octal mode")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:6:16: \"limit_nofile\" must be 0 or more")),
        "{err}"
    );
}

#[test]
fn a_reload_restarting_a_program_reports_it_and_keeps_dependents_ordered() {
    let supd = Supd::start(&(sleeper("db", "") + &sleeper("web", "depends_on = [\"db\"]")));
    let db = running_pid(&supd, "db");
    let web = running_pid(&supd, "web");
    std::fs::write(
        &supd.config,
        sleeper("db", "stop_timeout = \"2s\"") + &sleeper("web", "depends_on = [\"db\"]"),
    )
    .expect("rewrite");
    let (code, v, err) = ctl_json(&supd, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "changed"), ["db"]);
    assert_eq!(names(&v, "unchanged"), ["web"]);
    let outcomes = v["programs"].as_array().cloned().unwrap_or_default();
    assert!(
        outcomes
            .iter()
            .any(|o| o["name"] == "db" && o["state"] == "running"),
        "{v}"
    );
    assert_ne!(running_pid(&supd, "db"), db);
    assert_eq!(supd.status("web").pid, Some(web));
}
