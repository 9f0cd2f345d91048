use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("/etc/sup/app.toml"))
}

fn messages(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("expected errors")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_full_program_is_read_with_its_values() {
    let c = parse(
        r#"
[supd]
socket = "run/supd.sock"
shutdown_timeout = "5s"

[program.web]
command = ["python3", "-m", "http.server", "8080"]
cwd = "/srv/www"
env = { PYTHONUNBUFFERED = "1" }
autostart = false
restart = "always"
exit_codes = [0, 2]
start_secs = "500ms"
start_retries = "infinite"
stop_signal = "INT"
stop_timeout = "2m"
daemon = true
"#,
    )
    .expect("valid");
    assert_eq!(c.supd.socket, Some(PathBuf::from("/etc/sup/run/supd.sock")));
    assert_eq!(c.supd.shutdown_timeout, Duration::from_secs(5));
    let web = &c.programs["web"];
    assert_eq!(web.command, ["python3", "-m", "http.server", "8080"]);
    assert_eq!(web.cwd, Some(PathBuf::from("/srv/www")));
    assert_eq!(web.env["PYTHONUNBUFFERED"], "1");
    assert!(!web.autostart);
    assert_eq!(web.restart, RestartPolicy::Always);
    assert_eq!(web.exit_codes, [0, 2]);
    assert_eq!(web.start_secs, Duration::from_millis(500));
    assert_eq!(web.start_retries, Retries::Infinite);
    assert_eq!(web.stop_signal, Sig(libc::SIGINT));
    assert_eq!(web.stop_timeout, Duration::from_secs(120));
    assert!(web.daemon);
    // backoff_reset defaults to 10 x start_secs, at least 10 s.
    assert_eq!(web.backoff_reset, Duration::from_secs(10));
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = parse("[program.a]\ncommand = [\"true\"]\n").expect("valid");
    let a = &c.programs["a"];
    assert!(a.autostart);
    assert!(!a.daemon);
    assert_eq!(a.restart, RestartPolicy::OnFailure);
    assert_eq!(a.start_secs, Duration::from_secs(1));
    assert_eq!(a.start_retries, Retries::Limited(3));
    assert_eq!(a.stop_signal, Sig(libc::SIGTERM));
    assert_eq!(a.stop_timeout, Duration::from_secs(10));
    assert_eq!(c.supd.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.supd.socket, None);
}

#[test]
fn an_unknown_key_is_named_with_its_place_and_a_suggestion() {
    let m = messages("[program.app]\ncommand = [\"true\"]\ncomand = 1\n");
    assert_eq!(
        m,
        [
            "/etc/sup/app.toml:3:1: unknown key \"comand\" in [program.app] (did you mean \"command\"?)"
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let m = messages(
        r#"[supd]
shutdown_timeout = 30
colour = true

[program.a]
command = "sleep 1"
stop_signal = "TERMINATE"
autostart = "yes"

[program.b]
stop_timeout = "ten seconds"
"#,
    );
    assert_eq!(m.len(), 7, "{m:#?}");
    assert!(m[0].starts_with("/etc/sup/app.toml:2:20: \"shutdown_timeout\" must be a duration string with a unit, such as \"30s\""), "{}", m[0]);
    assert!(
        m[1].starts_with("/etc/sup/app.toml:3:1: unknown key \"colour\""),
        "{}",
        m[1]
    );
    assert!(
        m[2].starts_with("/etc/sup/app.toml:6:11: \"command\" must be an array"),
        "{}",
        m[2]
    );
    assert!(
        m[3].starts_with("/etc/sup/app.toml:7:15: \"stop_signal\": unknown signal"),
        "{}",
        m[3]
    );
    assert!(
        m[4].starts_with("/etc/sup/app.toml:8:13: \"autostart\" must be true or false"),
        "{}",
        m[4]
    );
    assert!(
        m[5].starts_with("/etc/sup/app.toml:10:10: [program.b] has no \"command\""),
        "{}",
        m[5]
    );
    assert!(
        m[6].starts_with("/etc/sup/app.toml:11:16: \"stop_timeout\": invalid duration"),
        "{}",
        m[6]
    );
}

#[test]
fn syntax_errors_have_a_place() {
    let m = messages("[program.a]\ncommand = [\"true\"\n");
    assert_eq!(m.len(), 1);
    assert!(m[0].starts_with("/etc/sup/app.toml:2:"), "{}", m[0]);
    assert!(m[0].contains("invalid TOML"), "{}", m[0]);
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        ("command = []", "\"command\" is empty"),
        ("command = [\"a\", 1]", "must hold only strings"),
        (
            "command = [\"a\"]\nrestart = \"sometimes\"",
            "\"restart\" must be",
        ),
        (
            "command = [\"a\"]\nstart_retries = -1",
            "must be a count of 0 or more, or \"infinite\"",
        ),
        (
            "command = [\"a\"]\nstart_retries = \"lots\"",
            "\"infinite\"",
        ),
        ("command = [\"a\"]\nexit_codes = [256]", "from 0 to 255"),
        (
            "command = [\"a\"]\nenv = { A = 1 }",
            "\"env.A\" must be a string",
        ),
        ("command = [\"a\"]\nstop_timeout = \"10\"", "has no unit"),
    ];
    for (body, expected) in cases {
        let m = messages(&format!("[program.p]\n{body}\n"));
        assert!(
            m.iter().any(|e| e.contains(expected)),
            "{body:?}: expected {expected:?} in {m:?}"
        );
    }
    let m = messages("[program.\"a:b\"]\ncommand = [\"x\"]\n");
    assert!(m[0].contains("invalid program name"), "{m:?}");
}

#[test]
fn durations_need_units() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("soon").is_err());
}

#[test]
fn durations_are_from_0_to_one_year() {
    assert_eq!(parse_duration("1y"), Ok(MAX_DURATION));
    assert_eq!(
        parse_duration("365d"),
        Ok(Duration::from_secs(365 * 86_400))
    );
    for long in [
        "1y 1s",
        "366d",
        "500000000000y",
        "100000000000y",
        "99999999999999999999999s",
    ] {
        let e = parse_duration(long).expect_err(long);
        assert!(
            e.contains("too long") && e.contains("one year (\"1y\")"),
            "{long}: {e}"
        );
    }
    let e = parse_duration("-5s").expect_err("negative");
    assert!(e.contains("negative") && e.contains("\"5s\""), "{e}");
    // start_secs at the bound: the default backoff_reset is ten times it.
    let c = parse("[program.a]\ncommand = [\"a\"]\nstart_secs = \"1y\"\n").expect("valid");
    assert_eq!(c.programs["a"].backoff_reset, MAX_DURATION * 10);
}

#[test]
fn dot_and_dotdot_are_not_names() {
    for name in [".", ".."] {
        assert!(name_problem(name).is_some(), "{name}");
    }
    for name in ["web", "a.b", "...", "web-2_x", ".hidden"] {
        assert_eq!(name_problem(name), None, "{name}");
    }
}

#[test]
fn the_closest_name_is_a_likely_misspelling_only() {
    let names = ["web", "worker", "database"];
    assert_eq!(closest_name("wbe", names), Some("web"));
    assert_eq!(closest_name("databsae", names), Some("database"));
    assert_eq!(closest_name("zzz", names), None);
}

#[test]
fn pools_and_dependencies_are_read() {
    let c = parse(
        r#"
[program.db]
command = ["sleep", "1"]
[program.web]
command = ["sleep", "1"]
instances = 3
depends_on = ["db"]
"#,
    )
    .expect("valid");
    assert_eq!(c.programs["web"].instances, Some(3));
    assert_eq!(c.programs["web"].depends_on, ["db"]);
    assert_eq!(c.programs["db"].instances, None);
}

#[test]
fn unknown_dependencies_and_cycles_are_named_with_their_place() {
    let m = messages(
        r#"[program.a]
command = ["x"]
depends_on = ["b"]
[program.b]
command = ["x"]
depends_on = ["c"]
[program.c]
command = ["x"]
depends_on = ["a", "ghost"]
"#,
    );
    assert_eq!(m.len(), 2, "{m:#?}");
    assert_eq!(
        m[0],
        "/etc/sup/app.toml:9:15: dependency cycle: a -> b -> c -> a (remove one of these depends_on entries)"
    );
    assert!(
        m[1].starts_with(
            "/etc/sup/app.toml:9:20: c depends on \"ghost\", which is not a program here"
        ),
        "{}",
        m[1]
    );
    let m = messages("[program.a]\ncommand = [\"x\"]\ndepends_on = [\"a\"]\n");
    assert!(m[0].contains("a cannot depend on itself"), "{m:?}");
    let m = messages("[program.a]\ncommand = [\"x\"]\ninstances = 0\n");
    assert!(m[0].contains("\"instances\" must be from 1"), "{m:?}");
}

#[test]
fn output_keys_log_dir_and_run_pools_are_read() {
    let c = parse(
        r#"
[supd]
log_dir = "logs"

[program.web]
command = ["web"]
stdout = "journal"
redirect_stderr = true
log_max_bytes = "500KB"
log_backups = 2
log_timestamps = true

[program.quiet]
command = ["q"]
stdout = "null"
log_max_bytes = 4096

[pool.encoders]
size = 3
"#,
    )
    .expect("valid");
    assert_eq!(c.supd.log_dir, Some(PathBuf::from("/etc/sup/logs")));
    let web = &c.programs["web"].output;
    assert_eq!(web.mode, OutputMode::Journal);
    assert!(web.redirect_stderr && web.timestamps);
    assert_eq!((web.max_bytes, web.backups), (500_000, 2));
    let quiet = &c.programs["quiet"].output;
    assert_eq!((quiet.mode, quiet.max_bytes), (OutputMode::Null, 4096));
    assert_eq!(c.run_pools["encoders"], 3);
    let default = OutputConfig::default();
    assert_eq!((default.max_bytes, default.backups), (10 * 1024 * 1024, 5));
}

#[test]
fn bad_output_keys_and_pools_are_refused_with_their_place() {
    let m = messages(
        r#"[program.a]
command = ["a"]
stdout = "file"
log_max_bytes = "ten"
log_backups = -1

[pool.p]
sizee = 2

[pool.q]
size = 0
"#,
    );
    assert_eq!(m.len(), 5, "{m:#?}");
    assert!(
        m[0].starts_with("/etc/sup/app.toml:3:10: \"stdout\" must be"),
        "{}",
        m[0]
    );
    assert!(
        m[1].starts_with("/etc/sup/app.toml:4:17: \"log_max_bytes\": invalid size"),
        "{}",
        m[1]
    );
    assert!(
        m[2].starts_with("/etc/sup/app.toml:5:15: \"log_backups\""),
        "{}",
        m[2]
    );
    assert!(
        m[3].contains("unknown key \"sizee\" in [pool.p]"),
        "{}",
        m[3]
    );
    assert!(
        m[4].starts_with("/etc/sup/app.toml:11:8: \"size\" must be from 1"),
        "{}",
        m[4]
    );
    let m = messages("[pool.empty]\n");
    assert!(m[0].contains("[pool.empty] has no \"size\""), "{}", m[0]);
}
