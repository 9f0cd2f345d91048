//! The supervisor's own decisions, driven through [`Supervisor::feed`] and
//! its verbs without spawning the programs: a program "has a process" when a
//! test puts its machine in a state, and its exit is an `Exited` input.
//! (Only the spawn of a missing binary runs, which fails before exec and is
//! reaped by the spawn itself.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A supervisor over `toml`, with its log folder in `dir` and no state file.
fn supervisor(toml: &str, dir: &tempfile::TempDir) -> Supervisor {
    let config = Config::parse(toml, &dir.path().join("supd.toml")).expect("a valid config");
    Supervisor::new(&config, None, dir.path().join("logs")).0
}

/// `db` (autostart off, not spawnable) and `web`, which depends on it.
const DB_AND_WEB: &str = r#"
[program.db]
command = ["/nonexistent/sup-test-db"]
autostart = false
start_secs = "5s"

[program.web]
command = ["/nonexistent/sup-test-web"]
autostart = false
depends_on = ["db"]
"#;

fn names(n: &str) -> NamesParams {
    NamesParams {
        names: vec![n.to_string()],
        all: false,
    }
}

/// Puts `name` in `state` as if it had a process there.
fn pretend(sup: &mut Supervisor, name: &str, state: State) {
    sup.programs.get_mut(name).expect("program").machine.state = state;
}

fn exit(code: i32) -> Input {
    Input::Exited {
        status: crate::protocol::ExitStatus::exited(code),
        ran_for: Duration::ZERO,
    }
}

/// The one answer of a verb, which must be there already.
fn answer(mut pending: Vec<Pending>) -> Outcome {
    assert_eq!(pending.len(), 1);
    pending
        .remove(0)
        .try_recv()
        .expect("the start was answered")
}

/// Starts `web` while `db` is starting (spawned, within its start_secs):
/// web is queued, waiting for db.
fn web_waiting_for_starting_db(sup: &mut Supervisor) -> Vec<Pending> {
    pretend(sup, "db", State::Starting);
    let pending = sup.start(&names("web")).expect("start web");
    sup.settle();
    let web = &sup.programs["web"];
    assert_eq!(web.state(), State::Starting);
    assert!(web.machine.waiting);
    assert_eq!(sup.unmet_dependencies("web"), ["db"]);
    pending
}

#[tokio::test]
async fn a_dependency_that_exits_before_running_fails_the_queued_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(DB_AND_WEB, &dir);
    let mut pending = web_waiting_for_starting_db(&mut sup);
    // Exit 0 within start_secs: db's own start is done, db is `exited`.
    sup.feed("db", exit(0));
    sup.settle();
    assert_eq!(sup.programs["db"].state(), State::Exited);
    let web = &sup.programs["web"];
    assert_eq!(web.state(), State::Fatal);
    assert!(!web.machine.waiting);
    assert_eq!(sup.waiting, 0);
    let out = answer(std::mem::take(&mut pending));
    let err = out.error.expect("the start failed");
    assert_eq!(err.kind, ErrorKind::Spawn);
    assert!(err.message.contains("dependency db"), "{}", err.message);
    assert!(web.error.as_deref().is_some_and(|e| e.contains("db")));
}

#[tokio::test]
async fn a_dependency_stopped_meanwhile_calls_the_queued_start_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(DB_AND_WEB, &dir);
    let pending = web_waiting_for_starting_db(&mut sup);
    let stopped = sup.stop(&names("db"), false).expect("stop db");
    sup.settle();
    assert_eq!(sup.programs["db"].state(), State::Stopping);
    assert!(
        sup.programs["web"].machine.waiting,
        "still waiting meanwhile"
    );
    sup.feed("db", exit(0));
    sup.settle();
    assert_eq!(sup.programs["db"].state(), State::Stopped);
    assert_eq!(answer(stopped).error, None);
    let web = &sup.programs["web"];
    assert_eq!(web.state(), State::Stopped);
    assert!(!web.machine.waiting);
    assert_eq!(sup.waiting, 0);
    let err = answer(pending).error.expect("the start failed");
    assert_eq!(err.kind, ErrorKind::NotRunning);
    assert!(
        err.message.contains("dependency db was stopped"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_dependency_stopping_at_the_start_is_started_again_once_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(DB_AND_WEB, &dir);
    pretend(&mut sup, "db", State::Stopping);
    let pending = sup.start(&names("web")).expect("start web");
    sup.settle();
    assert!(sup.programs["web"].machine.waiting);
    assert!(sup.programs["db"].start_when_stopped);
    // db's old process ends: db starts again. (Its binary is missing, so
    // that start fails, and web's with it: the reason shows db was tried.)
    sup.feed("db", exit(0));
    sup.settle();
    let db = &sup.programs["db"];
    assert_eq!(db.state(), State::Fatal);
    assert!(!db.start_when_stopped);
    assert!(
        db.error
            .as_deref()
            .is_some_and(|e| e.contains("/nonexistent/sup-test-db")),
        "db was spawned again: {:?}",
        db.error
    );
    assert_eq!(sup.programs["web"].state(), State::Fatal);
    let err = answer(pending).error.expect("the start failed");
    assert!(
        err.message.contains("dependency db is fatal"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_users_stop_of_a_stopping_dependency_wins_over_the_queued_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(DB_AND_WEB, &dir);
    pretend(&mut sup, "db", State::Stopping);
    let pending = sup.start(&names("web")).expect("start web");
    sup.settle();
    let _stopped = sup.stop(&names("db"), false).expect("stop db");
    assert!(!sup.programs["db"].start_when_stopped);
    sup.feed("db", exit(0));
    sup.settle();
    assert_eq!(sup.programs["db"].state(), State::Stopped);
    assert_eq!(sup.programs["web"].state(), State::Stopped);
    assert_eq!(
        answer(pending).error.map(|e| e.kind),
        Some(ErrorKind::NotRunning)
    );
}

#[tokio::test]
async fn a_shrinking_pool_member_taken_back_by_a_grow_starts_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(
        r#"
[program.web]
command = ["/nonexistent/sup-test-web"]
autostart = false
instances = 3
"#,
        &dir,
    );
    pretend(&mut sup, "web:2", State::Running);
    let down = sup.scale("web", 2).expect("scale 2");
    sup.settle();
    assert!(sup.programs["web:2"].remove_when_stopped);
    assert_eq!(sup.programs["web:2"].state(), State::Stopping);
    let up = sup.scale("web", 3).expect("scale 3");
    sup.settle();
    let p = &sup.programs["web:2"];
    assert!(!p.remove_when_stopped, "kept");
    assert!(p.pending_restart.is_some(), "to start once stopped");
    assert_eq!(p.state(), State::Stopping, "no second process meanwhile");
    sup.feed("web:2", exit(0));
    sup.settle();
    assert_eq!(answer(down).state, State::Stopped);
    // Started again (and failing here: the binary is missing).
    let p = &sup.programs["web:2"];
    assert_eq!(p.state(), State::Fatal);
    assert_eq!(sup.state.scale.get("web"), Some(&3));
    assert_eq!(answer(up).error.map(|e| e.kind), Some(ErrorKind::Spawn));
}

/// A process group whose leader has ended and been reaped, with one member
/// left (`sleep 30`): returns the leader's pid and a pidfd of the dead
/// leader, and a pidfd of the member.
fn group_without_its_leader() -> (u32, std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 30 & echo $!; read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut leader = cmd.spawn().expect("spawn sh");
    let mut line = String::new();
    BufReader::new(leader.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the member's pid");
    let member: u32 = line.trim().parse().expect("a pid");
    let member_fd = spawn::pidfd_open(member).expect("pidfd of the member");
    let leader_fd = spawn::pidfd_open(leader.id()).expect("pidfd of the leader");
    let mut stdin = leader.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    leader.wait().expect("the leader ends");
    (leader.id(), leader_fd, member_fd)
}

/// SIGKILLs the process a pidfd names when dropped (a test's leftover).
struct KillOnDrop(std::os::fd::OwnedFd);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = spawn::pidfd_send_signal(&self.0, libc::SIGKILL);
    }
}

#[tokio::test]
async fn signal_group_of_a_dead_adopted_leader_signals_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(
        "[program.keeper]\ncommand = [\"sleep\", \"300\"]\nautostart = false\n",
        &dir,
    );
    let (leader, leader_fd, member_fd) = group_without_its_leader();
    let member_fd = KillOnDrop(member_fd);
    // The adopted keeper's process has ended; supd has not heard yet (its
    // pidfd watch is a message away), and its pid is no zombie of ours.
    let p = sup.programs.get_mut("keeper").expect("keeper");
    p.child = Some(spawn::Child {
        pid: leader,
        pidfd: leader_fd,
        started: Instant::now(),
    });
    p.adopted = true;
    sup.feed("keeper", Input::Adopted);
    let outs = sup
        .signal(&names("keeper"), crate::signals::Sig(libc::SIGTERM), true)
        .expect("signal");
    assert!(
        spawn::pidfd_send_signal(&member_fd.0, 0).is_ok(),
        "the group was signalled after its leader died"
    );
    let err = outs[0].error.as_ref().expect("an error");
    assert_eq!(err.kind, ErrorKind::NotRunning, "{}", err.message);
}

#[tokio::test]
async fn a_queued_start_no_longer_waits_for_a_pool_member_scaled_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(
        r#"
[program.db]
command = ["/nonexistent/sup-test-db"]
autostart = false
instances = 2

[program.web]
command = ["/nonexistent/sup-test-web"]
autostart = false
depends_on = ["db"]
"#,
        &dir,
    );
    pretend(&mut sup, "db:0", State::Running);
    pretend(&mut sup, "db:1", State::Starting);
    let pending = sup.start(&names("web")).expect("start web");
    sup.settle();
    assert_eq!(sup.unmet_dependencies("web"), ["db:1"]);
    let _down = sup.scale("db", 1).expect("scale db 1");
    sup.settle();
    assert!(
        sup.programs["web"].machine.waiting,
        "db:1 is still stopping"
    );
    sup.feed("db:1", exit(0));
    sup.settle();
    assert!(!sup.programs.contains_key("db:1"));
    // web was spawned (and failed: its binary is missing).
    let web = &sup.programs["web"];
    assert!(!web.machine.waiting);
    assert!(
        web.error
            .as_deref()
            .is_some_and(|e| e.contains("/nonexistent/sup-test-web")),
        "{:?}",
        web.error
    );
    assert_eq!(
        answer(pending).error.map(|e| e.kind),
        Some(ErrorKind::Spawn)
    );
}
