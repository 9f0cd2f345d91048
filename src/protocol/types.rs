//! Params and results of each method, and the shapes scripts read from
//! `supctl --json`.

use serde::{Deserialize, Serialize};

/// A program's lifecycle state (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never started, or stopped on request.
    Stopped,
    /// Spawned, not yet up for `start_secs`.
    Starting,
    /// Up.
    Running,
    /// Exited while starting (or crashed); a retry is pending.
    Backoff,
    /// The stop signal was sent; waiting for the exit.
    Stopping,
    /// Ended on its own; the restart policy does not restart it.
    Exited,
    /// Could not be started: exec failed, or `start_retries` were used up.
    Fatal,
    /// A `supctl run --pool` waiting for a free place in its pool.
    Queued,
}

impl State {
    /// The snake_case name shown in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Fatal => "fatal",
            State::Queued => "queued",
        }
    }

    /// Whether a process exists for the program in this state.
    pub fn has_process(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended, in both of the kernel's forms: an exit code, or a
/// signal (with a core dump or not). See wait(2), `WIFEXITED`/`WIFSIGNALED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The code passed to exit(2), when it exited.
    pub code: Option<i32>,
    /// The signal number that ended it, when it was killed.
    pub signal: Option<i32>,
    /// Whether a core dump was written.
    #[serde(default)]
    pub core_dumped: bool,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitStatus {
            code: Some(code),
            signal: None,
            core_dumped: false,
        }
    }

    /// Killed by signal `sig`.
    pub fn signaled(sig: i32, core_dumped: bool) -> Self {
        ExitStatus {
            code: None,
            signal: Some(sig),
            core_dumped,
        }
    }

    /// The status of a process supd adopted after a restart: it is not
    /// supd's child, so how it ended cannot be known.
    pub fn unknown() -> Self {
        ExitStatus {
            code: None,
            signal: None,
            core_dumped: false,
        }
    }

    /// Whether the status is known (see [`ExitStatus::unknown`]).
    pub fn is_known(&self) -> bool {
        self.code.is_some() || self.signal.is_some()
    }

    /// Python's `Popen.returncode`: the code, or `-N` after signal N;
    /// `None` when unknown.
    pub fn returncode(&self) -> Option<i32> {
        match (self.code, self.signal) {
            (Some(code), _) => Some(code),
            (None, Some(sig)) => Some(-sig),
            (None, None) => None,
        }
    }

    /// A shell's `$?` for this status: the code, or 128+N after signal N;
    /// 255 when unknown.
    pub fn shell_status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }

    /// The signal's name, such as `"SIGTERM"`, when it was killed.
    pub fn signal_name(&self) -> Option<String> {
        self.signal.map(crate::signals::signal_name)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => {
                write!(f, "killed by {}", crate::signals::signal_name(sig))?;
                if self.core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            (None, None) => f.write_str("exit status unknown (not supd's child)"),
        }
    }
}

/// Params of `status`, `start`, `stop`, `restart`, `kill`, `remove`:
/// `{"names": ["web", "worker"]}` or `{"all": true}`. No names and no `all`
/// means every program for `status`, and is `invalid_params` for the rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesParams {
    /// Program names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Every program.
    #[serde(default)]
    pub all: bool,
}

/// Params of `signal`: `{"names": ["web"], "signal": "HUP"}`. The signal is a
/// name (`"HUP"`, `"SIGHUP"`) or a number (`1` or `"1"`). With `"group":
/// true` it goes to the program's whole process group, else to its main
/// process only (supervisord's `signal`, `Popen.send_signal`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalParams {
    /// Program names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Every program.
    #[serde(default)]
    pub all: bool,
    /// The signal, by name or number.
    pub signal: serde_json::Value,
    /// Send to the process group instead of the main process.
    #[serde(default)]
    pub group: bool,
}

/// Params of `wait`: `{"name": "job", "timeout": 2.5}` (seconds; absent or
/// `null` waits for ever), like `Process.join([timeout])`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// The program.
    pub name: String,
    /// Seconds to wait at most.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// The result of `version`: `{"version": "0.1.0", "protocol": 3, "pid": 4242}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResult {
    /// The daemon's crate version.
    pub version: String,
    /// [`super::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The daemon's own pid.
    pub pid: u32,
}

/// One row of `status` (and of `supctl status --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgramStatus {
    /// The program's name.
    pub name: String,
    /// Its lifecycle state.
    pub state: State,
    /// The main process's pid; `null` when it has none.
    pub pid: Option<u32>,
    /// The last run's `returncode`: `null` while running or never run, the
    /// exit code, or `-N` after signal N.
    pub returncode: Option<i32>,
    /// The last run's exit code, `null` if it was killed or has not ended.
    pub exit_code: Option<i32>,
    /// The name of the signal that ended the last run (`"SIGTERM"`), or `null`.
    pub signal: Option<String>,
    /// How many times supd started it again on its own (restart policy).
    pub restarts: u64,
    /// Seconds since the current process started; `null` when there is none.
    pub uptime_secs: Option<f64>,
    /// The `daemon` flag (SPEC §2).
    pub daemon: bool,
    /// Pids of adopted descendants that outlived their parent.
    pub orphans: Vec<u32>,
    /// When the program entered its state (RFC 3339).
    pub since: String,
    /// Why it is `fatal` or `exited`, for a person; `null` otherwise.
    pub error: Option<String>,
    /// When the last run ended (RFC 3339); `null` if none has.
    #[serde(default)]
    pub exited_at: Option<String>,
    /// In `backoff`: seconds until the next try; `null` otherwise.
    #[serde(default)]
    pub next_retry_secs: Option<f64>,
    /// Dependencies a queued start is waiting for (`starting`, no pid).
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// Whether the process was adopted from an earlier supd (it survived a
    /// crash or restart of supd). Its exit status will be unknown.
    #[serde(default)]
    pub adopted: bool,
    /// Bytes of its output dropped because writing the log failed (a full
    /// or failing disk).
    #[serde(default)]
    pub log_dropped_bytes: u64,
}

/// One state change, as `events` streams it (a notification with method
/// `"event"`), and as `supctl events --json` prints it, one a line:
/// `{"name": "web", "from": "starting", "to": "running", "pid": 4242,
/// "returncode": null, "exit_code": null, "signal": null, "escalated": false,
/// "time": "2026-11-21T08:00:00.123Z"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The program.
    pub name: String,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Its main process, or the one that just ended.
    pub pid: Option<u32>,
    /// When a run just ended: its `returncode`.
    pub returncode: Option<i32>,
    /// When a run just ended by exiting: the code.
    pub exit_code: Option<i32>,
    /// When a run just ended by a signal: its name.
    pub signal: Option<String>,
    /// Whether the stop that ended it escalated to SIGKILL.
    pub escalated: bool,
    /// When (RFC 3339, UTC).
    pub time: String,
}

/// Params of `scale`: `{"name": "worker", "instances": 4}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    /// The pool (a program with `instances`).
    pub name: String,
    /// Its new size, from 1.
    pub instances: u32,
}

/// The outcome for one program of `start`, `stop`, `restart`, `kill`,
/// `signal` or `remove`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// The program's name.
    pub name: String,
    /// Its state once the verb was done with it.
    pub state: State,
    /// Its pid then (`null` when it has no process).
    pub pid: Option<u32>,
    /// For verbs that end a process: its `returncode` (see [`ProgramStatus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returncode: Option<i32>,
    /// For verbs that end a process: the signal name that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// For `stop`/`restart`: whether the stop signal was not enough and
    /// SIGKILL was sent after `stop_timeout`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
    /// The failure for this program, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OutcomeError>,
}

/// A failure for one program inside a many-program answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutcomeError {
    /// As `data.kind` of a whole-request error.
    pub kind: super::ErrorKind,
    /// For a person.
    pub message: String,
}

/// The result of the many-program verbs: `{"programs": [Outcome, ...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramsResult {
    /// One outcome a program, in the order asked.
    pub programs: Vec<Outcome>,
}

/// The result of `status`: `{"programs": [ProgramStatus, ...]}`, sorted by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResult {
    /// One row a program.
    pub programs: Vec<ProgramStatus>,
}

/// The result of `wait`: how the run ended.
/// `{"name": "job", "pid": 4242, "returncode": -9, "exit_code": null,
/// "signal": "SIGKILL", "core_dumped": false}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitResult {
    /// The program.
    pub name: String,
    /// The pid of the run that ended.
    pub pid: Option<u32>,
    /// Its `returncode`; `null` when unknown (a process adopted after a
    /// restart of supd is not its child, so its status cannot be read).
    pub returncode: Option<i32>,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal's name, if it was killed.
    pub signal: Option<String>,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

impl WaitResult {
    /// The shell status `supctl wait` exits with: the code, 128+N after
    /// signal N, 255 when unknown.
    pub fn shell_status(&self) -> i32 {
        match (self.exit_code, self.returncode) {
            (Some(code), _) => code,
            (None, Some(rc)) if rc < 0 => 128 - rc,
            (None, Some(rc)) => rc,
            (None, None) => 255,
        }
    }
}

/// The result of `reload`: program (or pool) names by what happened to
/// them, and the outcome of every stop, restart and start it caused.
/// `{"added": ["new"], "removed": ["old"], "changed": ["web"],
/// "unchanged": ["db"], "programs": [Outcome, ...]}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadResult {
    /// Defined now, not before: created (started if `autostart`).
    pub added: Vec<String>,
    /// Defined before, not now: stopped and forgotten.
    pub removed: Vec<String>,
    /// Defined differently: restarted with the new definition if up.
    pub changed: Vec<String>,
    /// The same: left alone.
    pub unchanged: Vec<String>,
    /// Outcomes of what was stopped, restarted or started.
    #[serde(default)]
    pub programs: Vec<Outcome>,
}
