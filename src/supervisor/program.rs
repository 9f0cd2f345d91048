//! One supervised program as the supervisor keeps it: its configuration, its
//! state machine, its process, its timer and who waits on it.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::Msg;
use super::machine::Machine;
use crate::config::ProgramConfig;
use crate::protocol::{ErrorKind, ExitStatus, Outcome, OutcomeError, State, StatusRow, WaitResult};
use crate::spawn::Child;

/// How the last run ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastExit {
    pub status: ExitStatus,
    pub pid: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
pub(super) struct Program {
    /// Its configuration; `cfg.name` is the program's own name (`web:2` in a pool).
    pub cfg: ProgramConfig,
    /// The `[program.NAME]` it comes from (`web` for `web:2`).
    pub group: String,
    /// Its index in a pool.
    pub instance: Option<u32>,
    pub machine: Machine,
    pub child: Option<Child>,
    pub last_exit: Option<LastExit>,
    pub restarts: u64,
    /// When it entered its state, as RFC 3339 text (formatted once, at the
    /// transition, not at every `status`).
    pub since: String,
    pub error: Option<String>,
    pub timer: Option<AbortHandle>,
    pub timer_generation: u64,
    /// When the armed backoff timer fires (state `backoff` only).
    pub retry_at: Option<Instant>,
    /// Forget the program once it has stopped (a pool shrinking).
    pub remove_when_stopped: bool,
    /// Start it again once it has stopped: a queued start of a program that
    /// depends on it came while it was stopping.
    pub start_when_stopped: bool,
    /// Shutdown has asked it to stop.
    pub shutdown_sent: bool,
    /// Its process was adopted from an earlier supd (not our child).
    pub adopted: bool,
    /// A reload changed its definition: once stopped, it takes this one and
    /// starts again, answering the sender.
    /// (Boxed: a definition is large, and rarely pending.)
    pub pending_restart: Option<Box<(ProgramConfig, oneshot::Sender<Outcome>)>>,
    pub start_waiters: Vec<oneshot::Sender<Outcome>>,
    pub stop_waiters: Vec<oneshot::Sender<Outcome>>,
    pub exit_waiters: Vec<oneshot::Sender<WaitResult>>,
    /// A `supctl run`: forgotten once its process is gone.
    pub transient: bool,
    /// The `[pool.NAME]` a run belongs to.
    pub run_pool: Option<String>,
    /// A queued run, waiting for a place in its pool; the answer to its
    /// `run` request goes here once it is spawned.
    pub queued: Option<super::RunReply>,
    /// The write end of the program's stdin (a run), until the `run`
    /// request takes it.
    pub stdin: Option<std::os::fd::OwnedFd>,
}

impl Program {
    /// Boxed, as the supervisor keeps it.
    pub fn new(cfg: ProgramConfig, group: &str, instance: Option<u32>) -> Box<Self> {
        Box::new(Program {
            cfg,
            group: group.to_string(),
            instance,
            machine: Machine::default(),
            child: None,
            last_exit: None,
            restarts: 0,
            since: rfc3339(SystemTime::now()),
            error: None,
            timer: None,
            timer_generation: 0,
            retry_at: None,
            remove_when_stopped: false,
            start_when_stopped: false,
            shutdown_sent: false,
            adopted: false,
            pending_restart: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            exit_waiters: Vec::new(),
            transient: false,
            run_pool: None,
            queued: None,
            stdin: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn state(&self) -> State {
        if self.queued.is_some() {
            State::Queued
        } else {
            self.machine.state
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// The last exit, when no run is under way.
    fn ended(&self) -> Option<LastExit> {
        if self.child.is_none() {
            self.last_exit
        } else {
            None
        }
    }

    pub fn outcome(&self) -> Outcome {
        let last = self.ended();
        Outcome {
            name: self.cfg.name.clone(),
            state: self.state(),
            pid: self.pid(),
            returncode: last.and_then(|l| l.status.returncode()),
            signal: last.and_then(|l| l.status.signal_name()),
            escalated: self.machine.escalated,
            error: None,
        }
    }

    pub fn failed(&self, kind: ErrorKind, message: String) -> Outcome {
        Outcome {
            error: Some(OutcomeError { kind, message }),
            ..self.outcome()
        }
    }

    /// Its `status` row, borrowing its strings; `now` is the one instant
    /// every row of an answer is measured from.
    pub fn status_row<'a>(
        &'a self,
        now: Instant,
        waiting_for: Vec<String>,
        orphans: &'a [u32],
        log_dropped_bytes: u64,
    ) -> StatusRow<'a> {
        let last = self.ended();
        StatusRow {
            name: &self.cfg.name,
            state: self.state(),
            pid: self.pid(),
            returncode: last.and_then(|l| l.status.returncode()),
            exit_code: last.and_then(|l| l.status.code),
            signal: last.and_then(|l| l.status.signal_name()),
            restarts: self.restarts,
            uptime_secs: self
                .child
                .as_ref()
                .map(|c| millis(now.saturating_duration_since(c.started))),
            daemon: self.cfg.daemon,
            orphans,
            since: &self.since,
            error: self.error.as_deref(),
            exited_at: last.map(|l| rfc3339(l.at)),
            next_retry_secs: match (self.state(), self.retry_at) {
                (State::Backoff, Some(at)) => Some(millis(at.saturating_duration_since(now))),
                _ => None,
            },
            waiting_for,
            adopted: self.adopted && self.child.is_some(),
            log_dropped_bytes,
        }
    }

    pub fn cancel_timer(&mut self) {
        self.timer_generation += 1;
        self.retry_at = None;
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }

    pub fn arm_timer(&mut self, delay: Duration, tx: &mpsc::UnboundedSender<Msg>) {
        self.cancel_timer();
        let generation = self.timer_generation;
        let name = self.cfg.name.clone();
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The supervisor may be gone at shutdown; nothing to do then.
            let _ = tx.send(Msg::Timer { name, generation });
        });
        self.timer = Some(task.abort_handle());
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Formats a time as RFC 3339 in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

pub(super) fn wait_result(name: &str, last: LastExit) -> WaitResult {
    WaitResult {
        name: name.to_string(),
        pid: Some(last.pid),
        returncode: last.status.returncode(),
        exit_code: last.status.code,
        signal: last.status.signal_name(),
        core_dumped: last.status.core_dumped,
    }
}
