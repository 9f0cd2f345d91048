//! The README's promise in one test: supd runs programs, supctl sees them.

use crate::util::*;

#[test]
fn supd_runs_programs_and_supctl_lists_them() {
    let supd = Supd::start(
        r#"
[program.sleeper]
command = ["sleep", "300"]
start_secs = "0s"
"#,
    );
    let s = supd.wait_state("sleeper", "running");
    let pid = s.pid.expect("a pid");
    assert!(alive(pid));
    let (code, out, _) = supd.ctl_text(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().next().unwrap_or("").starts_with("NAME"),
        "{out}"
    );
    assert!(out.contains("sleeper") && out.contains("running"), "{out}");
}
