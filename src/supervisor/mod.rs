//! The supervisor: one task that owns every program's state, fed by a
//! channel of [`Msg`]s from control connections, the reaper's SIGCHLD and
//! its own timers. Nothing else holds program state, so no lock exists and
//! no two tasks can race on one program.
//!
//! Requests that finish later (`start` waits for `running`, `stop` for the
//! exit, `wait` for the end of the run) are answered at once with oneshot
//! receivers that the supervisor completes when the program gets there; the
//! connection task awaits them, so the supervisor never blocks.

mod handle;
pub mod machine;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

pub use handle::Handle;
use machine::{Action, Input, Machine, backoff_delay};

use crate::config::{Config, ProgramConfig};
use crate::protocol::{
    ErrorKind, ExitStatus, NamesParams, Outcome, OutcomeError, ProgramStatus, RpcError, State,
    WaitResult,
};
use crate::signals::Sig;
use crate::spawn::{self, Child};

type Reply<T> = oneshot::Sender<Result<T, RpcError>>;

/// A per-program answer that arrives when the program gets where it was
/// asked to go.
pub type Pending = oneshot::Receiver<Outcome>;

/// The answer to `wait`: already known, or to come.
#[derive(Debug)]
pub enum WaitTicket {
    /// The program is not running; this is how its last run ended.
    Done(WaitResult),
    /// The program is running; this completes when the run ends.
    Pending(oneshot::Receiver<WaitResult>),
}

/// What the supervisor is asked to do.
#[derive(Debug)]
pub enum Msg {
    /// `status`: rows for `names` (every program when empty).
    Status {
        /// Program names.
        names: Vec<String>,
        /// The rows.
        reply: Reply<Vec<ProgramStatus>>,
    },
    /// `start`: one pending outcome a program.
    Start {
        /// Which programs.
        select: NamesParams,
        /// Outcomes to come.
        reply: Reply<Vec<Pending>>,
    },
    /// `stop` (or `kill` when `kill` is set).
    Stop {
        /// Which programs.
        select: NamesParams,
        /// SIGKILL now instead of the stop signal.
        kill: bool,
        /// Outcomes to come.
        reply: Reply<Vec<Pending>>,
    },
    /// `signal`: send `sig` to each program's main process (or group).
    Signal {
        /// Which programs.
        select: NamesParams,
        /// The signal.
        sig: Sig,
        /// To the whole process group.
        group: bool,
        /// One outcome a program.
        reply: Reply<Vec<Outcome>>,
    },
    /// `wait`: the end of the current (or last) run.
    Wait {
        /// The program.
        name: String,
        /// The ticket.
        reply: Reply<WaitTicket>,
    },
    /// `remove`: forget programs that have no process.
    Remove {
        /// Which programs.
        select: NamesParams,
        /// One outcome a program.
        reply: Reply<Vec<Outcome>>,
    },
    /// Begin shutdown (`supctl shutdown`, SIGTERM, SIGINT); a second one
    /// sends SIGKILL to whatever is left.
    Shutdown,
    /// SIGCHLD arrived: reap.
    Reap,
    /// A program's timer fired.
    Timer {
        /// The program.
        name: String,
        /// The timer's generation; a stale one is ignored.
        generation: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct LastExit {
    status: ExitStatus,
    pid: u32,
}

#[derive(Debug)]
struct Program {
    cfg: ProgramConfig,
    machine: Machine,
    child: Option<Child>,
    last_exit: Option<LastExit>,
    restarts: u64,
    since: SystemTime,
    error: Option<String>,
    timer: Option<AbortHandle>,
    timer_generation: u64,
    start_waiters: Vec<oneshot::Sender<Outcome>>,
    stop_waiters: Vec<oneshot::Sender<Outcome>>,
    exit_waiters: Vec<oneshot::Sender<WaitResult>>,
}

impl Program {
    fn new(cfg: ProgramConfig) -> Self {
        Program {
            cfg,
            machine: Machine::default(),
            child: None,
            last_exit: None,
            restarts: 0,
            since: SystemTime::now(),
            error: None,
            timer: None,
            timer_generation: 0,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            exit_waiters: Vec::new(),
        }
    }

    fn state(&self) -> State {
        self.machine.state
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    fn outcome(&self) -> Outcome {
        let last = if self.child.is_none() {
            self.last_exit
        } else {
            None
        };
        Outcome {
            name: self.cfg.name.clone(),
            state: self.state(),
            pid: self.pid(),
            returncode: last.map(|l| l.status.returncode()),
            signal: last.and_then(|l| l.status.signal_name()),
            escalated: self.machine.escalated,
            error: None,
        }
    }

    fn failed(&self, kind: ErrorKind, message: String) -> Outcome {
        Outcome {
            error: Some(OutcomeError { kind, message }),
            ..self.outcome()
        }
    }

    fn status(&self) -> ProgramStatus {
        let last = if self.child.is_none() {
            self.last_exit
        } else {
            None
        };
        ProgramStatus {
            name: self.cfg.name.clone(),
            state: self.state(),
            pid: self.pid(),
            returncode: last.map(|l| l.status.returncode()),
            exit_code: last.and_then(|l| l.status.code),
            signal: last.and_then(|l| l.status.signal_name()),
            restarts: self.restarts,
            uptime_secs: self
                .child
                .as_ref()
                .map(|c| (c.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
            daemon: self.cfg.daemon,
            orphans: Vec::new(),
            since: rfc3339(self.since),
            error: self.error.clone(),
        }
    }

    fn cancel_timer(&mut self) {
        self.timer_generation += 1;
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }

    fn arm_timer(&mut self, delay: Duration, tx: &mpsc::UnboundedSender<Msg>) {
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

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// The supervisor actor. Build it with [`Supervisor::new`], start the
/// autostart programs with [`Supervisor::autostart`], then drive it with
/// [`Supervisor::run`].
pub struct Supervisor {
    programs: BTreeMap<String, Program>,
    by_pid: HashMap<u32, String>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    shutting_down: bool,
    random: RandomState,
    draws: u64,
}

impl Supervisor {
    /// A supervisor for `config`'s programs, all `stopped`, and the handle
    /// that talks to it.
    pub fn new(config: &Config) -> (Supervisor, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let programs = config
            .programs
            .values()
            .map(|p| (p.name.clone(), Program::new(p.clone())))
            .collect();
        let sup = Supervisor {
            programs,
            by_pid: HashMap::new(),
            tx: tx.clone(),
            rx,
            shutting_down: false,
            random: RandomState::new(),
            draws: 0,
        };
        (sup, Handle::new(tx))
    }

    /// Starts every program with `autostart = true` (spawns happen here, on
    /// the calling thread, which must be the daemon's main thread).
    pub fn autostart(&mut self) {
        let names: Vec<String> = self
            .programs
            .values()
            .filter(|p| p.cfg.autostart)
            .map(|p| p.cfg.name.clone())
            .collect();
        for name in names {
            self.feed(&name, Input::Start);
        }
    }

    /// Runs until shutdown has stopped every program. Must run on the
    /// daemon's main thread (a `current_thread` runtime), where it spawns.
    pub async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            self.handle(msg);
            if self.shutting_down && self.programs.values().all(|p| p.child.is_none()) {
                break;
            }
        }
        for p in self.programs.values_mut() {
            p.cancel_timer();
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Status { names, reply } => {
                let _ = reply.send(self.status(&names));
            }
            Msg::Start { select, reply } => {
                let _ = reply.send(self.start(&select));
            }
            Msg::Stop {
                select,
                kill,
                reply,
            } => {
                let _ = reply.send(self.stop(&select, kill));
            }
            Msg::Signal {
                select,
                sig,
                group,
                reply,
            } => {
                let _ = reply.send(self.signal(&select, sig, group));
            }
            Msg::Wait { name, reply } => {
                let _ = reply.send(self.wait(&name));
            }
            Msg::Remove { select, reply } => {
                let _ = reply.send(self.remove(&select));
            }
            Msg::Shutdown => self.shutdown(),
            Msg::Reap => self.reap(),
            Msg::Timer { name, generation } => self.timer(&name, generation),
        }
    }

    /// Resolves a selection to program names, all known, or fails with
    /// `not_found` naming the unknown ones (then nothing is done).
    fn select(&self, select: &NamesParams, empty_means_all: bool) -> Result<Vec<String>, RpcError> {
        if select.all || (empty_means_all && select.names.is_empty()) {
            return Ok(self.programs.keys().cloned().collect());
        }
        if select.names.is_empty() {
            return Err(RpcError::new(
                ErrorKind::InvalidParams,
                "no program named: give one or more names, or \"all\": true",
            ));
        }
        let unknown: Vec<&str> = select
            .names
            .iter()
            .filter(|n| !self.programs.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let plural = if unknown.len() > 1 { "s" } else { "" };
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!(
                    "no such program{plural}: {} (supctl status lists them)",
                    unknown.join(", ")
                ),
            ));
        }
        let mut names = Vec::new();
        for n in &select.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        Ok(names)
    }

    fn status(&self, names: &[String]) -> Result<Vec<ProgramStatus>, RpcError> {
        let select = NamesParams {
            names: names.to_vec(),
            all: false,
        };
        let names = self.select(&select, true)?;
        Ok(names.iter().map(|n| self.programs[n].status()).collect())
    }

    fn start(&mut self, select: &NamesParams) -> Result<Vec<Pending>, RpcError> {
        let names = self.select(select, false)?;
        let mut pending = Vec::new();
        for name in names {
            let (tx, rx) = oneshot::channel();
            pending.push(rx);
            let Some(p) = self.programs.get_mut(&name) else {
                continue;
            };
            if self.shutting_down {
                let _ = tx.send(p.failed(
                    ErrorKind::ShuttingDown,
                    format!("{name}: supd is shutting down and starts nothing"),
                ));
                continue;
            }
            match p.state() {
                State::Starting | State::Running => {
                    let pid = p.pid().map(|pid| format!(" (pid {pid})")).unwrap_or_default();
                    let _ = tx.send(p.failed(
                        ErrorKind::AlreadyRunning,
                        format!("{name}: already {}{pid}", p.state()),
                    ));
                }
                State::Stopping => {
                    let _ = tx.send(p.failed(
                        ErrorKind::AlreadyRunning,
                        format!("{name}: still stopping; start it once it has stopped"),
                    ));
                }
                _ => {
                    p.start_waiters.push(tx);
                    self.feed(&name, Input::Start);
                }
            }
        }
        Ok(pending)
    }

    fn stop(&mut self, select: &NamesParams, kill: bool) -> Result<Vec<Pending>, RpcError> {
        let names = self.select(select, false)?;
        let mut pending = Vec::new();
        for name in names {
            let (tx, rx) = oneshot::channel();
            pending.push(rx);
            let Some(p) = self.programs.get_mut(&name) else {
                continue;
            };
            let state = p.state();
            if kill && !state.has_process() {
                let _ = tx.send(p.failed(
                    ErrorKind::NotRunning,
                    format!("{name}: not running ({state}), nothing to kill"),
                ));
                continue;
            }
            match state {
                State::Starting | State::Running | State::Stopping => {
                    p.stop_waiters.push(tx);
                    self.feed(&name, if kill { Input::Kill } else { Input::Stop });
                }
                State::Backoff => {
                    p.stop_waiters.push(tx);
                    self.feed(&name, Input::Stop);
                }
                // Stopping what has no process is done already (as `systemctl stop`).
                State::Stopped | State::Exited | State::Fatal => {
                    let _ = tx.send(p.outcome());
                }
            }
        }
        Ok(pending)
    }

    fn signal(
        &mut self,
        select: &NamesParams,
        sig: Sig,
        group: bool,
    ) -> Result<Vec<Outcome>, RpcError> {
        let names = self.select(select, false)?;
        let mut out = Vec::new();
        for name in names {
            let p = &self.programs[&name];
            let Some(child) = &p.child else {
                out.push(p.failed(
                    ErrorKind::NotRunning,
                    format!("{name}: not running ({}), no process to signal", p.state()),
                ));
                continue;
            };
            let sent = if group {
                spawn::kill_group(child.pid, sig.0)
            } else {
                spawn::pidfd_send_signal(&child.pidfd, sig.0)
            };
            out.push(match sent {
                Ok(()) => p.outcome(),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => p.failed(
                    ErrorKind::PermissionDenied,
                    format!("{name}: not allowed to send {}: {e}", sig.name()),
                ),
                Err(e) => p.failed(
                    ErrorKind::NotRunning,
                    format!("{name}: could not send {}: {e}", sig.name()),
                ),
            });
        }
        Ok(out)
    }

    fn wait(&mut self, name: &str) -> Result<WaitTicket, RpcError> {
        let Some(p) = self.programs.get_mut(name) else {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no such program: {name} (supctl status lists them)"),
            ));
        };
        if p.child.is_some() {
            let (tx, rx) = oneshot::channel();
            p.exit_waiters.push(tx);
            return Ok(WaitTicket::Pending(rx));
        }
        if let Some(last) = p.last_exit {
            return Ok(WaitTicket::Done(wait_result(name, last)));
        }
        if p.state() == State::Fatal {
            let why = p.error.clone().unwrap_or_else(|| "could not be started".into());
            return Err(RpcError::new(ErrorKind::Spawn, format!("{name}: {why}")));
        }
        Err(RpcError::new(
            ErrorKind::NotRunning,
            format!("{name}: has not been started, so there is nothing to wait for (supctl start {name})"),
        ))
    }

    fn remove(&mut self, select: &NamesParams) -> Result<Vec<Outcome>, RpcError> {
        let names = self.select(select, false)?;
        let busy: Vec<String> = names
            .iter()
            .filter(|n| self.programs[n.as_str()].state().has_process())
            .map(|n| {
                let p = &self.programs[n.as_str()];
                format!("{n} is {} (pid {})", p.state(), p.pid().unwrap_or(0))
            })
            .collect();
        if !busy.is_empty() {
            return Err(RpcError::new(
                ErrorKind::Running,
                format!("{}: stop it first (supctl stop)", busy.join(", ")),
            ));
        }
        let mut out = Vec::new();
        for name in names {
            if let Some(mut p) = self.programs.remove(&name) {
                p.cancel_timer();
                let removed = p.failed(ErrorKind::NotFound, format!("{name}: removed"));
                for w in std::mem::take(&mut p.start_waiters) {
                    let _ = w.send(removed.clone());
                }
                out.push(p.outcome());
            }
        }
        Ok(out)
    }

    fn shutdown(&mut self) {
        let names: Vec<String> = self.programs.keys().cloned().collect();
        let input = if self.shutting_down {
            tracing::warn!("second shutdown request: sending SIGKILL to every program left");
            Input::Kill
        } else {
            tracing::info!("shutting down: stopping every program");
            Input::Stop
        };
        self.shutting_down = true;
        for name in names {
            self.feed(&name, input);
        }
    }

    fn timer(&mut self, name: &str, generation: u64) {
        let Some(p) = self.programs.get(name) else {
            return;
        };
        if p.timer_generation != generation {
            return;
        }
        let input = match p.state() {
            State::Starting => Input::StartSecsElapsed,
            State::Stopping => Input::StopTimeout,
            State::Backoff if !self.shutting_down => Input::Retry,
            _ => return,
        };
        if let Some(p) = self.programs.get_mut(name) {
            p.timer = None;
        }
        self.feed(name, input);
    }

    fn reap(&mut self) {
        let by_pid = &self.by_pid;
        let exits = crate::reaper::reap(|pid| {
            if by_pid.contains_key(&pid) {
                // The leader is a zombie, so its group id is still reserved:
                // whatever is left of the group goes with it.
                let _ = spawn::kill_group(pid, libc::SIGKILL);
            }
        });
        for (pid, status) in exits {
            let Some(name) = self.by_pid.remove(&pid) else {
                tracing::debug!(pid, %status, "reaped an orphaned descendant");
                continue;
            };
            let Some(p) = self.programs.get_mut(&name) else {
                continue;
            };
            let ran_for = p
                .child
                .take()
                .map(|c| c.started.elapsed())
                .unwrap_or_default();
            let last = LastExit { status, pid };
            p.last_exit = Some(last);
            tracing::info!(program = %name, pid, %status, "exited");
            for w in p.exit_waiters.drain(..) {
                let _ = w.send(wait_result(&name, last));
            }
            self.feed(&name, Input::Exited { status, ran_for });
        }
    }

    fn jitter(&mut self) -> f64 {
        self.draws += 1;
        let bits = self.random.hash_one(self.draws);
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Feeds `input` to a program's machine and carries out the actions,
    /// including the inputs they produce in turn (a spawn's result).
    fn feed(&mut self, name: &str, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let jitter = self.jitter();
            let Some(p) = self.programs.get_mut(name) else {
                return;
            };
            let from = p.state();
            let actions = p.machine.step(input, &p.cfg);
            if input == Input::Retry && p.state() == State::Starting {
                p.restarts += 1;
            }
            for action in actions {
                match action {
                    Action::Spawn => match spawn::spawn(&p.cfg, &[]) {
                        Ok(child) => {
                            tracing::info!(program = %name, pid = child.pid, "spawned");
                            self.by_pid.insert(child.pid, name.to_string());
                            p.child = Some(child);
                            p.error = None;
                            queue.push_back(Input::Spawned);
                        }
                        Err(e) => {
                            tracing::error!(program = %name, error = %e, "spawn failed");
                            p.error = Some(e.to_string());
                            queue.push_back(Input::SpawnFailed);
                        }
                    },
                    Action::ArmStartTimer => p.arm_timer(p.cfg.start_secs, &self.tx),
                    Action::ArmStopTimer => p.arm_timer(p.cfg.stop_timeout, &self.tx),
                    Action::ArmRetry { step } => {
                        let delay = backoff_delay(&p.cfg, step, jitter);
                        p.arm_timer(delay, &self.tx);
                    }
                    Action::CancelTimer => p.cancel_timer(),
                    Action::SendStopSignal => {
                        if let Some(child) = &p.child {
                            send_group(name, child.pid, p.cfg.stop_signal.0);
                            send_group(name, child.pid, libc::SIGCONT);
                        }
                    }
                    Action::SendKill => {
                        if let Some(child) = &p.child {
                            send_group(name, child.pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let to = p.state();
            if from != to {
                p.since = SystemTime::now();
                if to == State::Fatal && p.error.is_none() {
                    let how = p
                        .last_exit
                        .map_or_else(|| "exited".to_string(), |l| l.status.to_string());
                    p.error = Some(format!(
                        "{how} within start_secs ({:?}) on every try; gave up after {} retries",
                        p.cfg.start_secs, p.machine.retries
                    ));
                }
                tracing::debug!(program = %name, %from, %to, "state");
                settle_waiters(p, to);
            }
        }
    }
}

fn send_group(name: &str, pid: u32, sig: i32) {
    if let Err(e) = spawn::kill_group(pid, sig) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(program = %name, pid, signal = sig, error = %e, "could not signal the process group");
        }
    }
}

/// Answers the `start` and `stop` waiters that the new state settles.
fn settle_waiters(p: &mut Program, to: State) {
    let outcome = p.outcome();
    let start_answer = match to {
        State::Running => Some(outcome.clone()),
        State::Fatal => Some(p.failed(
            ErrorKind::Spawn,
            match &p.error {
                Some(e) => format!("{}: {e}", p.cfg.name),
                None => format!("{}: could not be started", p.cfg.name),
            },
        )),
        State::Exited => Some(match p.last_exit {
            Some(last) if !machine::is_success(&p.cfg, &last.status) => p.failed(
                ErrorKind::Spawn,
                format!("{}: {} within start_secs", p.cfg.name, last.status),
            ),
            _ => outcome.clone(),
        }),
        State::Stopped => Some(p.failed(
            ErrorKind::NotRunning,
            format!("{}: stopped before it was running", p.cfg.name),
        )),
        _ => None,
    };
    if let Some(answer) = start_answer {
        for w in std::mem::take(&mut p.start_waiters) {
            let _ = w.send(answer.clone());
        }
    }
    // A stop is done once there is no process; one that raced with the
    // program's own exit (exited, fatal) is done too.
    if matches!(to, State::Stopped | State::Exited | State::Fatal) {
        for w in std::mem::take(&mut p.stop_waiters) {
            let _ = w.send(outcome.clone());
        }
    }
}

fn wait_result(name: &str, last: LastExit) -> WaitResult {
    WaitResult {
        name: name.to_string(),
        pid: Some(last.pid),
        returncode: last.status.returncode(),
        exit_code: last.status.code,
        signal: last.status.signal_name(),
        core_dumped: last.status.core_dumped,
    }
}
