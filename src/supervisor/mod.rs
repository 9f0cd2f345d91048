//! The supervisor: one task that owns every program's state, fed by a
//! channel of [`Msg`]s from control connections, the reaper's SIGCHLD and
//! its own timers. Nothing else holds program state, so no lock exists and
//! no two tasks can race on one program.
//!
//! Requests that finish later (`start` waits for `running`, `stop` for the
//! exit, `wait` for the end of the run) are answered at once with oneshot
//! receivers that the supervisor completes when the program gets there; the
//! connection task awaits them, so the supervisor never blocks.
//!
//! After each message, the transitions it caused are settled in order: each
//! is broadcast as an [`Event`], a program that became `running` releases
//! the starts queued behind it (`depends_on`), one that became `fatal` fails
//! them, and during shutdown the next programs in reverse dependency order
//! are asked to stop.

mod adopt;
mod handle;
pub mod machine;
mod orphans;
mod program;
mod reload;
mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::logs::{ProgramOutput, Stream};

pub use handle::Handle;
use machine::{Action, Input, backoff_delay};
pub use program::rfc3339;
use program::{LastExit, Program, wait_result};
pub use run::RUN_STOP_TIMEOUT;

use crate::config::{Config, ProgramConfig};
use crate::protocol::{
    ErrorKind, Event, NamesParams, Outcome, ProgramStatus, RpcError, State, StatusRow, WaitResult,
    write_status_result,
};
use crate::signals::Sig;
use crate::spawn;
use crate::state::{Desired, StateFile};

type Reply<T> = oneshot::Sender<Result<T, RpcError>>;

/// How long a scan for orphans is reused by `status`.
pub const ORPHAN_SCAN_TTL: Duration = Duration::from_millis(500);

/// Where the answer to a `run` goes once its program is spawned.
pub type RunReply = Reply<RunStarted>;

/// What `supctl run` asks for: a transient program.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// argv.
    pub command: Vec<String>,
    /// Its name; `run-N` when none is given.
    pub name: Option<String>,
    /// Variables added to supd's environment.
    pub env: BTreeMap<String, String>,
    /// Its working folder.
    pub cwd: Option<PathBuf>,
    /// The `[pool.NAME]` to queue it in.
    pub pool: Option<String>,
}

/// A run that was spawned: what the connection streams back.
#[derive(Debug)]
pub struct RunStarted {
    /// Its name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// Its output, from before its first line.
    pub output: broadcast::Receiver<crate::logs::OutputEvent>,
    /// How it ended, once it has.
    pub exit: oneshot::Receiver<WaitResult>,
    /// The write end of its stdin.
    pub stdin: Option<std::os::fd::OwnedFd>,
    /// Stops the run when dropped, unless disarmed: a run whose answer or
    /// stream is abandoned (the client hung up, at whatever moment) is
    /// never left behind.
    pub guard: RunGuard,
}

/// See [`RunStarted::guard`].
#[derive(Debug)]
pub struct RunGuard {
    name: String,
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

impl RunGuard {
    /// The run ended as it should: nothing to stop.
    pub fn disarm(&mut self) {
        self.tx = None;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Msg::Stop {
                select: NamesParams {
                    names: vec![self.name.clone()],
                    all: false,
                },
                kill: false,
                reply,
            });
        }
    }
}

/// Events kept for a subscriber that has not read them yet; one that falls
/// further behind is dropped.
pub const EVENT_QUEUE: usize = 1024;

/// A per-program answer that arrives when the program gets where it was
/// asked to go.
pub type Pending = oneshot::Receiver<Outcome>;

/// The answer to `wait`: already known, or to come.
#[derive(Debug)]
pub enum WaitTicket {
    /// The program is not running; this is how its last run ended.
    Done(WaitResult),
    /// The program is running as this pid; this completes when the run ends.
    Pending(Option<u32>, oneshot::Receiver<WaitResult>),
}

/// What the supervisor is asked to do.
#[derive(Debug)]
pub enum Msg {
    /// `status`: rows for `names` (every program when empty).
    Status {
        /// Program or pool names.
        names: Vec<String>,
        /// The rows.
        reply: Reply<Vec<ProgramStatus>>,
    },
    /// `status` as JSON text: `{"programs":[...]}` appended to `out`, which
    /// comes back in the reply (the answer's buffer, its head written).
    StatusJson {
        /// Program or pool names.
        names: Vec<String>,
        /// Where the text goes.
        out: Vec<u8>,
        /// `out`, with the result appended.
        reply: Reply<Vec<u8>>,
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
    /// `scale`: resize a pool.
    Scale {
        /// The pool.
        name: String,
        /// Its new size.
        instances: u32,
        /// Outcomes to come, for the members started or stopped.
        reply: Reply<Vec<Pending>>,
    },
    /// `reload`: apply a new, already validated configuration.
    Reload {
        /// The new configuration.
        config: Box<Config>,
        /// What changed, and the outcomes to come.
        reply: Reply<(crate::protocol::ReloadResult, Vec<Pending>)>,
    },
    /// `events`: a receiver of every state change from now on.
    Subscribe {
        /// The receiver.
        reply: oneshot::Sender<broadcast::Receiver<Event>>,
    },
    /// `logs`: the output of a program.
    Logs {
        /// The program.
        name: String,
        /// Its output.
        reply: Reply<Arc<ProgramOutput>>,
    },
    /// `reopen_logs` (and SIGUSR1): close every log file, to be opened again.
    ReopenLogs {
        /// How many programs' files were reopened.
        reply: oneshot::Sender<usize>,
    },
    /// `run`: a transient program.
    Run {
        /// What to run.
        spec: RunSpec,
        /// Answered once it is spawned (or could not be).
        reply: RunReply,
    },
    /// Begin shutdown (`supctl shutdown`, SIGTERM, SIGINT); a second one
    /// sends SIGKILL to whatever is left.
    Shutdown,
    /// SIGCHLD arrived: reap.
    Reap,
    /// `shutdown_timeout` passed since shutdown began.
    ShutdownTimeout,
    /// An adopted process (not supd's child) ended.
    AdoptedExit {
        /// The program.
        name: String,
        /// The process.
        pid: u32,
    },
    /// A program's timer fired.
    Timer {
        /// The program.
        name: String,
        /// The timer's generation; a stale one is ignored.
        generation: u64,
    },
}

/// The supervisor actor. Build it with [`Supervisor::new`], start the
/// autostart programs with [`Supervisor::autostart`], then drive it with
/// [`Supervisor::run`].
pub struct Supervisor {
    /// Boxed: a B-tree node holds eleven entries, and most of a node of
    /// 720-byte programs would be slack.
    programs: BTreeMap<String, Box<Program>>,
    /// Base configurations of pools, by pool name.
    pools: BTreeMap<String, ProgramConfig>,
    /// For each `[program]` name, the ones that depend on it.
    dependents: HashMap<String, Vec<String>>,
    by_pid: HashMap<u32, String>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    events: broadcast::Sender<Event>,
    /// Programs that changed state and whose consequences are pending.
    transitions: VecDeque<(String, State)>,
    waiting: usize,
    shutting_down: bool,
    random: RandomState,
    draws: u64,
    state_path: Option<PathBuf>,
    state: StateFile,
    /// The state file needs writing.
    state_dirty: bool,
    /// ... and fsync'ing (a change users asked for).
    state_durable: bool,
    /// This boot's id, read once.
    boot_id: Option<String>,
    /// The last scan for orphans, and when it was made.
    orphan_scan: Option<(Instant, HashMap<String, Vec<u32>>)>,
    /// `SUP_SUPD` given to every program: `supd pid.start time`.
    marker: String,
    shutdown_timeout: Duration,
    /// `shutdown_timeout` passed: `daemon = false` programs are stopped too.
    shutdown_forced: bool,
    /// Where log files go.
    log_dir: PathBuf,
    /// Each program's captured output, by name; kept across its runs.
    outputs: HashMap<String, Arc<ProgramOutput>>,
    /// `[pool.NAME]` sizes, for `run --pool`.
    run_pools: BTreeMap<String, u32>,
    /// Queued runs of each pool, first in first out.
    run_queues: HashMap<String, VecDeque<String>>,
    /// The number of the next `run-N`.
    next_run: u64,
}

fn member_name(group: &str, instance: u32) -> String {
    format!("{group}:{instance}")
}

fn member_config(base: &ProgramConfig, instance: u32) -> ProgramConfig {
    let mut cfg = base.clone();
    cfg.name = member_name(&base.name, instance);
    cfg.env.insert("SUP_INSTANCE".into(), instance.to_string());
    cfg
}

impl Supervisor {
    /// A supervisor for `config`'s programs, all `stopped`, and the handle
    /// that talks to it. `state_path` is the state file (desired states, pool
    /// sizes, live processes): read now, written as they change. Processes
    /// recorded there by an earlier supd are adopted or finished off now
    /// (see [`Supervisor::autostart`]).
    /// Output goes to log files in `log_dir` (created here if missing).
    pub fn new(
        config: &Config,
        state_path: Option<PathBuf>,
        log_dir: PathBuf,
    ) -> (Supervisor, Handle) {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&log_dir)
        {
            tracing::error!(dir = %log_dir.display(), error = %e, "cannot create the log folder; output will be dropped until it exists");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let state = state_path
            .as_deref()
            .map(StateFile::load)
            .unwrap_or_default();
        let mut programs = BTreeMap::new();
        let mut pools = BTreeMap::new();
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for cfg in config.programs.values() {
            for dep in &cfg.depends_on {
                dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(cfg.name.clone());
            }
            match cfg.instances {
                None => {
                    programs.insert(cfg.name.clone(), Program::new(cfg.clone(), &cfg.name, None));
                }
                Some(n) => {
                    let n = state.scale.get(&cfg.name).copied().unwrap_or(n);
                    for i in 0..n {
                        let member = member_config(cfg, i);
                        programs.insert(
                            member.name.clone(),
                            Program::new(member, &cfg.name, Some(i)),
                        );
                    }
                    pools.insert(cfg.name.clone(), cfg.clone());
                }
            }
        }
        let sup = Supervisor {
            programs,
            pools,
            dependents,
            by_pid: HashMap::new(),
            tx: tx.clone(),
            rx,
            events,
            transitions: VecDeque::new(),
            waiting: 0,
            shutting_down: false,
            random: RandomState::new(),
            draws: 0,
            state_path,
            state,
            state_dirty: false,
            state_durable: false,
            boot_id: crate::procfs::boot_id(),
            orphan_scan: None,
            marker: format!(
                "{}.{}",
                std::process::id(),
                crate::procfs::stat(std::process::id()).map_or(0, |s| s.start_time)
            ),
            shutdown_timeout: config.supd.shutdown_timeout,
            shutdown_forced: false,
            log_dir,
            outputs: HashMap::new(),
            run_pools: config.run_pools.clone(),
            run_queues: HashMap::new(),
            next_run: 1,
        };
        (sup, Handle::new(tx, config.path.clone()))
    }

    /// The `SUP_SUPD` marker every program of this supd carries.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Starts every program with `autostart = true`, or that a user had
    /// started, unless a user had stopped it (the state file). Dependencies
    /// come first; independent programs start together. Spawns happen here,
    /// on the calling thread, which must be the daemon's main thread.
    pub fn autostart(&mut self) {
        self.recover();
        let names: Vec<String> = self
            .programs
            .values()
            .filter(|p| match self.state.desired.get(p.name()) {
                Some(Desired::Started) => true,
                Some(Desired::Stopped) => false,
                None => p.cfg.autostart,
            })
            .map(|p| p.name().to_string())
            .collect();
        for name in names {
            if !self.programs[&name].state().has_process() && !self.programs[&name].machine.waiting
            {
                self.start_one(&name);
            }
        }
        self.settle();
        self.flush_state();
    }

    /// Runs until shutdown has stopped every program. Must run on the
    /// daemon's main thread (a `current_thread` runtime), where it spawns.
    pub async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            self.handle(msg);
            self.settle();
            // Take whatever else is ready before writing the state file once.
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
                self.settle();
            }
            self.flush_state();
            if self.shutting_down && self.programs.values().all(|p| p.child.is_none()) {
                break;
            }
        }
        for p in self.programs.values_mut() {
            p.cancel_timer();
        }
        self.flush_state();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Status { names, reply } => {
                let _ = reply.send(self.status(&names));
            }
            Msg::StatusJson {
                names,
                mut out,
                reply,
            } => {
                let _ = reply.send(self.status_json(&names, &mut out).map(|()| out));
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
            Msg::Scale {
                name,
                instances,
                reply,
            } => {
                let _ = reply.send(self.scale(&name, instances));
            }
            Msg::Reload { config, reply } => {
                let _ = reply.send(self.reload(&config));
            }
            Msg::Subscribe { reply } => {
                let _ = reply.send(self.events.subscribe());
            }
            Msg::Logs { name, reply } => {
                let out = match self.programs.get(&name) {
                    Some(p) => Ok(self.output(&name, &p.cfg.output.clone())),
                    None => self
                        .outputs
                        .get(&name)
                        .cloned()
                        .ok_or_else(|| self.not_found("program", &[name.as_str()])),
                };
                let _ = reply.send(out);
            }
            Msg::ReopenLogs { reply } => {
                for out in self.outputs.values() {
                    out.reopen();
                }
                tracing::info!(programs = self.outputs.len(), "reopened the log files");
                let _ = reply.send(self.outputs.len());
            }
            Msg::Run { spec, reply } => self.run_transient(spec, reply),
            Msg::Shutdown => self.shutdown(),
            Msg::ShutdownTimeout => {
                if self.shutting_down && !self.shutdown_forced {
                    tracing::info!(timeout = ?self.shutdown_timeout, "shutdown_timeout passed: stopping the programs left");
                    self.shutdown_forced = true;
                    self.shutdown_step();
                }
            }
            Msg::AdoptedExit { name, pid } => self.adopted_exit(&name, pid),
            Msg::Reap => self.reap(),
            Msg::Timer { name, generation } => self.timer(&name, generation),
        }
    }

    /// Names of the members of `group` (a pool, or a single program), in
    /// instance order.
    fn members(&self, group: &str) -> Vec<String> {
        if !self.pools.contains_key(group) {
            return if self.programs.contains_key(group) {
                vec![group.to_string()]
            } else {
                Vec::new()
            };
        }
        let mut members: Vec<(u32, String)> = self
            .programs
            .values()
            .filter(|p| p.group == group)
            .map(|p| (p.instance.unwrap_or(0), p.name().to_string()))
            .collect();
        members.sort();
        members.into_iter().map(|(_, n)| n).collect()
    }

    /// Every program name, pools in instance order.
    fn all_names(&self) -> Vec<String> {
        self.programs_in_order()
            .into_iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    /// Every program, by name, pools in instance order.
    fn programs_in_order(&self) -> Vec<&Program> {
        let mut programs: Vec<&Program> = self.programs.values().map(|p| &**p).collect();
        // The map is by name, which is the order wanted unless pool members
        // (`web:10` after `web:9`) are there: a program outside a pool is
        // its own group.
        if programs.iter().any(|p| p.instance.is_some()) {
            programs.sort_by(|a, b| {
                (a.group.as_str(), a.instance.unwrap_or(0), a.name()).cmp(&(
                    b.group.as_str(),
                    b.instance.unwrap_or(0),
                    b.name(),
                ))
            });
        }
        programs
    }

    /// Resolves a selection to program names: a program's own name, or a
    /// pool's name for all its members. Fails with `not_found` naming the
    /// unknown ones (then nothing is done).
    fn select(&self, select: &NamesParams, empty_means_all: bool) -> Result<Vec<String>, RpcError> {
        if select.all || (empty_means_all && select.names.is_empty()) {
            return Ok(self.all_names());
        }
        if select.names.is_empty() {
            return Err(RpcError::new(
                ErrorKind::InvalidParams,
                "no program named: give one or more names, or \"all\": true",
            ));
        }
        let mut names = Vec::new();
        let mut unknown = Vec::new();
        for n in &select.names {
            let found = if self.programs.contains_key(n) {
                vec![n.clone()]
            } else {
                self.members(n)
            };
            if found.is_empty() && !self.pools.contains_key(n) {
                unknown.push(n.as_str());
            }
            for f in found {
                if !names.contains(&f) {
                    names.push(f);
                }
            }
        }
        if !unknown.is_empty() {
            return Err(self.not_found("program", &unknown));
        }
        Ok(names)
    }

    /// The `not_found` error for `unknown` names of programs (`what` is
    /// `"program"`) or pools (`"pool"`): each name that is close to an
    /// existing one gets "did you mean ...?" in the message and an entry in
    /// `data.suggestions`, as a misspelt key in the configuration does.
    fn not_found(&self, what: &str, unknown: &[&str]) -> RpcError {
        let pools = self.pools.keys().map(String::as_str);
        let mut suggestions = std::collections::BTreeMap::new();
        let mut named = Vec::new();
        for &name in unknown {
            let closest = if what == "pool" {
                crate::config::closest_name(name, pools.clone())
            } else {
                let programs = self.programs.values().filter(|p| !p.transient);
                crate::config::closest_name(name, programs.map(|p| p.name()).chain(pools.clone()))
            };
            match closest {
                Some(c) => {
                    named.push(format!("{name} (did you mean \"{c}\"?)"));
                    suggestions.insert(name.to_string(), c.to_string());
                }
                None => named.push(name.to_string()),
            }
        }
        let plural = if unknown.len() > 1 { "s" } else { "" };
        let mut message = format!("no such {what}{plural}: {}", named.join(", "));
        if suggestions.is_empty() {
            message.push_str(" (supctl status lists them)");
        }
        let mut e = RpcError::new(ErrorKind::NotFound, message);
        if !suggestions.is_empty() {
            e.data.suggestions = Some(suggestions);
        }
        e
    }

    /// Members of `name`'s dependencies that are not `running`.
    fn unmet_dependencies(&self, name: &str) -> Vec<String> {
        let Some(p) = self.programs.get(name) else {
            return Vec::new();
        };
        p.cfg
            .depends_on
            .iter()
            .flat_map(|dep| self.members(dep))
            .filter(|d| {
                self.programs
                    .get(d)
                    .is_some_and(|p| p.state() != State::Running)
            })
            .collect()
    }

    fn status(&mut self, names: &[String]) -> Result<Vec<ProgramStatus>, RpcError> {
        Ok(self
            .status_rows(names)?
            .map(|row| row.to_program_status())
            .collect())
    }

    /// `status` as JSON text (`{"programs":[...]}`), appended to `out`.
    fn status_json(&mut self, names: &[String], out: &mut Vec<u8>) -> Result<(), RpcError> {
        let rows = self.status_rows(names)?;
        // About 300 bytes a row: one allocation for the whole answer. Each
        // row is written as it is made, never collected.
        out.reserve(64 + rows.len() * 320);
        write_status_result(out, rows);
        Ok(())
    }

    /// The rows of `status` for `names` (every program when empty), in the
    /// order `select` gives, borrowing each program's strings.
    fn status_rows(
        &mut self,
        names: &[String],
    ) -> Result<impl ExactSizeIterator<Item = StatusRow<'_>>, RpcError> {
        let selected = if names.is_empty() {
            None
        } else {
            let select = NamesParams {
                names: names.to_vec(),
                all: false,
            };
            Some(self.select(&select, true)?)
        };
        self.orphans_seen();
        let this = &*self;
        let programs: Vec<&Program> = match &selected {
            Some(names) => names.iter().map(|n| &*this.programs[n]).collect(),
            None => this.programs_in_order(),
        };
        let orphans = this
            .orphan_scan
            .as_ref()
            .map(|(_, m)| m)
            .filter(|m| !m.is_empty());
        // Output a program dropped because its log writes failed: nearly
        // always none, so one pass over the outputs (no hashing) rather
        // than a lookup a row.
        let dropped: HashMap<&str, u64> = this
            .outputs
            .iter()
            .filter_map(|(name, o)| {
                let n = o.dropped_bytes();
                (n > 0).then_some((name.as_str(), n))
            })
            .collect();
        let now = Instant::now();
        Ok(programs.into_iter().map(move |p| {
            let name = p.name();
            let waiting_for = if p.machine.waiting {
                this.unmet_dependencies(name)
            } else {
                Vec::new()
            };
            let dropped = match dropped.is_empty() {
                true => 0,
                false => dropped.get(name).copied().unwrap_or(0),
            };
            let orphans = orphans
                .and_then(|m| m.get(name))
                .map_or(&[][..], Vec::as_slice);
            p.status_row(now, waiting_for, orphans, dropped)
        }))
    }

    fn remember(&mut self, names: &[String], desired: Desired) {
        for n in names {
            self.state.desired.insert(n.clone(), desired);
        }
        self.save_state();
    }

    /// Marks a change users asked for (desired state, pool size): written
    /// durably at the next flush.
    fn save_state(&mut self) {
        self.state_dirty = true;
        self.state_durable = true;
    }

    /// Writes the state file if anything in it changed.
    fn flush_state(&mut self) {
        if !self.state_dirty {
            return;
        }
        self.state_dirty = false;
        let durable = std::mem::take(&mut self.state_durable);
        if let Some(path) = &self.state_path {
            // The start times of the processes spawned since the last flush.
            // Read here rather than at each spawn: right after the clone the
            // new program is busy exec'ing, and /proc/PID/stat waits for its
            // memory map's lock. Its pid is still its own: only this thread
            // reaps, and a reaped process has no record any more.
            for rec in self.state.processes.values_mut() {
                if rec.start_time == 0 {
                    rec.start_time = crate::procfs::stat(rec.pid).map_or(0, |s| s.start_time);
                }
            }
            self.state.version = 1;
            self.state.boot_id.clone_from(&self.boot_id);
            if let Err(e) = self.state.save(path, durable) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the state file; desired states and live processes will not survive a restart of supd");
            }
        }
    }

    /// Starts `name` now, or queues it behind its dependencies (starting
    /// those that are not up or on their way). A dependency that is still
    /// stopping is started again once it has stopped (never two processes
    /// of one program), as systemd queues a start behind a running stop.
    fn start_one(&mut self, name: &str) {
        let unmet = self.unmet_dependencies(name);
        if unmet.is_empty() {
            self.feed(name, Input::Start);
            return;
        }
        self.feed(name, Input::Queue);
        for dep in unmet {
            let Some(d) = self.programs.get_mut(&dep) else {
                continue;
            };
            match d.state() {
                State::Stopped | State::Exited | State::Fatal => self.start_one(&dep),
                // A member a shrinking pool is removing is not waited for
                // once gone; one a reload restarts starts by itself.
                State::Stopping if !d.remove_when_stopped && d.pending_restart.is_none() => {
                    d.start_when_stopped = true;
                }
                _ => {}
            }
        }
    }

    fn start(&mut self, select: &NamesParams) -> Result<Vec<Pending>, RpcError> {
        let names = self.select(select, false)?;
        if !self.shutting_down {
            self.remember(&names, Desired::Started);
        }
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
                    let pid = p
                        .pid()
                        .map(|pid| format!(" (pid {pid})"))
                        .unwrap_or_default();
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
                    self.start_one(&name);
                }
            }
        }
        Ok(pending)
    }

    fn stop(&mut self, select: &NamesParams, kill: bool) -> Result<Vec<Pending>, RpcError> {
        let names = self.select(select, false)?;
        self.remember(&names, Desired::Stopped);
        let mut pending = Vec::new();
        for name in names {
            let (tx, rx) = oneshot::channel();
            pending.push(rx);
            if let Some(p) = self.programs.get_mut(&name) {
                // A user's stop wins over a start that a dependant queued.
                p.start_when_stopped = false;
                let state = p.state();
                if kill && !state.has_process() {
                    let _ = tx.send(p.failed(
                        ErrorKind::NotRunning,
                        format!("{name}: not running ({state}), nothing to kill"),
                    ));
                    continue;
                }
                self.stop_one(&name, kill, Some(tx));
            }
        }
        Ok(pending)
    }

    /// Stops (or kills) one program; `waiter` hears when it has no process.
    fn stop_one(&mut self, name: &str, kill: bool, waiter: Option<oneshot::Sender<Outcome>>) {
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        if p.queued.is_some() {
            // A queued run that is stopped never runs: its client hears so.
            let outcome = p.outcome();
            let pool = p.run_pool.clone();
            self.forget(name);
            if let Some(w) = waiter {
                let _ = w.send(Outcome {
                    state: State::Stopped,
                    ..outcome
                });
            }
            if let Some(pool) = pool {
                self.release_pool(&pool);
            }
            return;
        }
        let busy = p.state().has_process() || p.state() == State::Backoff || p.machine.waiting;
        if !busy {
            // Stopping what has no process is done already (as `systemctl stop`).
            if let Some(w) = waiter {
                let _ = w.send(p.outcome());
            }
            return;
        }
        if let Some(w) = waiter {
            p.stop_waiters.push(w);
        }
        let input = if kill && p.state().has_process() {
            Input::Kill
        } else {
            Input::Stop
        };
        self.feed(name, input);
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
            let sent = if group && p.adopted {
                // Not our child: no zombie holds its pid, so once it has
                // ended the group id may name other processes. Signal the
                // group only while its leader (the process the pidfd names)
                // is alive; a session leader cannot leave its group.
                spawn::pidfd_send_signal(&child.pidfd, 0)
                    .and_then(|()| spawn::kill_group(child.pid, sig.0))
            } else if group {
                // Our child: until it is reaped (by this task), its zombie
                // keeps the group id from being reused.
                spawn::kill_group(child.pid, sig.0)
            } else {
                spawn::pidfd_send_signal(&child.pidfd, sig.0)
            };
            out.push(match sent {
                Ok(()) => p.outcome(),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => p.failed(
                    ErrorKind::NotRunning,
                    format!(
                        "{name}: not running (its process {} has ended), nothing to signal",
                        child.pid
                    ),
                ),
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
            let hint = if self.pools.contains_key(name) {
                format!("{name} is a pool: wait for one member, such as {name}:0")
            } else {
                return Err(self.not_found("program", &[name]));
            };
            return Err(RpcError::new(ErrorKind::NotFound, hint));
        };
        if p.child.is_some() {
            let (tx, rx) = oneshot::channel();
            p.exit_waiters.push(tx);
            return Ok(WaitTicket::Pending(p.pid(), rx));
        }
        if let Some(last) = p.last_exit {
            return Ok(WaitTicket::Done(wait_result(name, last)));
        }
        if p.state() == State::Fatal {
            let why = p
                .error
                .clone()
                .unwrap_or_else(|| "could not be started".into());
            return Err(RpcError::new(ErrorKind::Spawn, format!("{name}: {why}")));
        }
        Err(RpcError::new(
            ErrorKind::NotRunning,
            format!(
                "{name}: has not been started, so there is nothing to wait for (supctl start {name})"
            ),
        ))
    }

    fn remove(&mut self, select: &NamesParams) -> Result<Vec<Outcome>, RpcError> {
        let names = self.select(select, false)?;
        let busy: Vec<String> = names
            .iter()
            .filter(|n| {
                let p = &self.programs[n.as_str()];
                p.state().has_process() || p.machine.waiting
            })
            .map(|n| {
                let p = &self.programs[n.as_str()];
                match p.pid() {
                    Some(pid) => format!("{n} is {} (pid {pid})", p.state()),
                    None => format!("{n} is {}", p.state()),
                }
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
            if let Some(p) = self.forget(&name) {
                out.push(p.outcome());
            }
        }
        Ok(out)
    }

    /// Drops a program that has no process.
    fn forget(&mut self, name: &str) -> Option<Box<Program>> {
        let mut p = self.programs.remove(name)?;
        p.cancel_timer();
        if let Some(out) = self.outputs.get(name) {
            out.stop_following();
        }
        if p.transient {
            self.outputs.remove(name);
        }
        if let Some(reply) = p.queued.take() {
            let _ = reply.send(Err(RpcError::new(
                ErrorKind::NotFound,
                format!("{name}: removed before it could run"),
            )));
        }
        let removed = p.failed(ErrorKind::NotFound, format!("{name}: removed"));
        for w in std::mem::take(&mut p.start_waiters) {
            let _ = w.send(removed.clone());
        }
        for w in std::mem::take(&mut p.stop_waiters) {
            let _ = w.send(p.outcome());
        }
        if self.state.desired.remove(name).is_some() {
            self.save_state();
        }
        Some(p)
    }

    fn scale(&mut self, pool: &str, instances: u32) -> Result<Vec<Pending>, RpcError> {
        let Some(base) = self.pools.get(pool).cloned() else {
            return Err(if self.programs.contains_key(pool) {
                RpcError::new(
                    ErrorKind::InvalidParams,
                    format!(
                        "{pool} is not a pool: set instances in [program.{pool}] to make it one"
                    ),
                )
            } else {
                self.not_found("pool", &[pool])
            });
        };
        if instances == 0 || instances > crate::config::MAX_INSTANCES {
            return Err(RpcError::new(
                ErrorKind::InvalidParams,
                format!(
                    "a pool has from 1 to {} instances, not {instances}",
                    crate::config::MAX_INSTANCES
                ),
            ));
        }
        if self.shutting_down {
            return Err(RpcError::new(
                ErrorKind::ShuttingDown,
                "supd is shutting down and starts nothing",
            ));
        }
        self.state.scale.insert(pool.to_string(), instances);
        self.save_state();
        let mut pending = Vec::new();
        // Grow: every missing index below the new size, started.
        for i in 0..instances {
            let name = member_name(pool, i);
            if let Some(p) = self.programs.get_mut(&name) {
                if p.remove_when_stopped {
                    // Still stopping from an earlier shrink: kept, and
                    // started again once its process is gone (never two
                    // processes for one member). A shrink or a retire
                    // answered any earlier pending restart, so none is lost.
                    p.remove_when_stopped = false;
                    let (tx, rx) = oneshot::channel();
                    pending.push(rx);
                    p.pending_restart = Some(Box::new((member_config(&base, i), tx)));
                }
                continue;
            }
            let mut p = Program::new(member_config(&base, i), pool, Some(i));
            let (tx, rx) = oneshot::channel();
            p.start_waiters.push(tx);
            pending.push(rx);
            self.programs.insert(name.clone(), p);
            self.start_one(&name);
        }
        // Shrink: the highest-numbered first.
        let mut extra: Vec<(u32, String)> = self
            .programs
            .values()
            .filter(|p| p.group == pool && p.instance.is_some_and(|i| i >= instances))
            .map(|p| (p.instance.unwrap_or(0), p.name().to_string()))
            .collect();
        extra.sort_by(|a, b| b.cmp(a));
        for (_, name) in extra {
            let (tx, rx) = oneshot::channel();
            pending.push(rx);
            let Some(p) = self.programs.get_mut(&name) else {
                continue;
            };
            if p.state().has_process() || p.state() == State::Backoff || p.machine.waiting {
                p.remove_when_stopped = true;
                p.start_when_stopped = false;
                cancel_restart(p, "the pool was scaled down again");
                self.stop_one(&name, false, Some(tx));
            } else if let Some(p) = self.forget(&name) {
                let _ = tx.send(p.outcome());
            }
        }
        // A queued start may have waited for a member that is gone now.
        self.release_waiting();
        Ok(pending)
    }

    fn shutdown(&mut self) {
        if self.shutting_down {
            tracing::warn!("second shutdown request: sending SIGKILL to every program left");
            let names: Vec<String> = self.programs.keys().cloned().collect();
            for name in names {
                self.stop_one(&name, true, None);
            }
            return;
        }
        tracing::info!(
            timeout = ?self.shutdown_timeout,
            "shutting down: stopping daemon programs, waiting for the others"
        );
        self.shutting_down = true;
        let tx = self.tx.clone();
        let timeout = self.shutdown_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tx.send(Msg::ShutdownTimeout);
        });
        self.shutdown_step();
    }

    /// Asks to stop each program that shutdown may stop now: a `daemon =
    /// true` one (any once `shutdown_timeout` has passed) that no live program
    /// depends on. Called again as programs stop. `daemon = false` programs
    /// are waited for until then, as `multiprocessing` waits for non-daemon
    /// children.
    fn shutdown_step(&mut self) {
        let forced = self.shutdown_forced;
        let ready: Vec<String> = self
            .programs
            .values()
            .filter(|p| !p.shutdown_sent)
            .filter(|p| {
                p.cfg.daemon
                    || forced
                    || matches!(p.state(), State::Backoff | State::Stopped)
                    || p.machine.waiting
            })
            .filter(|p| {
                self.dependents.get(&p.group).is_none_or(|deps| {
                    deps.iter().all(|d| {
                        self.members(d).iter().all(|m| {
                            self.programs
                                .get(m)
                                .is_none_or(|q| !q.state().has_process() && !q.machine.waiting)
                        })
                    })
                })
            })
            .map(|p| p.name().to_string())
            .collect();
        for name in ready {
            if let Some(p) = self.programs.get_mut(&name) {
                p.shutdown_sent = true;
            }
            self.stop_one(&name, false, None);
        }
    }

    fn timer(&mut self, name: &str, generation: u64) {
        let Some(p) = self.programs.get_mut(name) else {
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
        p.timer = None;
        p.retry_at = None;
        self.feed(name, input);
    }

    /// Orphans by program, as `status` shows them: a scan of supd's
    /// children, reused for up to [`ORPHAN_SCAN_TTL`] (the kernel's list of
    /// 1,000 children costs about 0.3 ms to read) and redone after any reap.
    /// Killing orphans never uses this: it scans afresh.
    fn orphans_seen(&mut self) {
        let fresh = self
            .orphan_scan
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < ORPHAN_SCAN_TTL);
        if !fresh {
            self.orphan_scan = Some((Instant::now(), orphans::by_program(&self.by_pid)));
        }
    }

    fn reap(&mut self) {
        self.orphan_scan = None;
        let by_pid = &self.by_pid;
        let programs = &self.programs;
        let exits = crate::reaper::reap(|pid| {
            let Some(name) = by_pid.get(&pid) else {
                return;
            };
            let keep = programs
                .get(name)
                .is_some_and(|p| p.cfg.orphans == crate::config::OrphanPolicy::Keep);
            if !keep {
                // The leader is a zombie, so its group id is still reserved:
                // whatever is left of the group goes with it, and so do the
                // descendants that left the group but were adopted by supd.
                let _ = spawn::kill_group(pid, libc::SIGKILL);
                orphans::signal_orphans(name, libc::SIGKILL, by_pid);
            }
        });
        for (pid, status) in exits {
            let Some(name) = self.by_pid.remove(&pid) else {
                tracing::debug!(pid, %status, "reaped an orphaned descendant");
                continue;
            };
            if self
                .state
                .processes
                .get(&name)
                .is_some_and(|r| r.pid == pid)
            {
                self.state.processes.remove(&name);
                self.state_dirty = true;
            }
            let Some(p) = self.programs.get_mut(&name) else {
                continue;
            };
            let ran_for = p
                .child
                .take()
                .map(|c| c.started.elapsed())
                .unwrap_or_default();
            let last = LastExit {
                status,
                pid,
                at: SystemTime::now(),
            };
            p.last_exit = Some(last);
            tracing::info!(program = %name, pid, %status, "exited");
            for w in p.exit_waiters.drain(..) {
                let _ = w.send(wait_result(&name, last));
            }
            if let Some(out) = self.outputs.get(&name) {
                out.run_exited(pid, status.returncode());
            }
            self.feed(&name, Input::Exited { status, ran_for });
        }
    }

    fn jitter(&mut self) -> f64 {
        self.draws += 1;
        let bits = self.random.hash_one(self.draws);
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Carries out the consequences of the transitions so far, until none
    /// is left: events, dependency releases and failures, shutdown order,
    /// pool members to forget.
    fn settle(&mut self) {
        while let Some((name, to)) = self.transitions.pop_front() {
            if matches!(to, State::Stopped | State::Exited | State::Fatal) {
                if let Some(p) = self.programs.get(&name).filter(|p| p.transient) {
                    let pool = p.run_pool.clone();
                    self.forget(&name);
                    if let Some(pool) = pool {
                        self.release_pool(&pool);
                    }
                    if self.shutting_down {
                        self.shutdown_step();
                    }
                    continue;
                }
            }
            match to {
                State::Running => self.release_waiting(),
                State::Stopped
                    if self
                        .programs
                        .get(&name)
                        .is_some_and(|p| p.remove_when_stopped) =>
                {
                    self.forget(&name);
                    // A pool that shrank may be all a queued start waited for.
                    self.release_waiting();
                }
                State::Stopped | State::Exited | State::Fatal => {
                    self.restart_redefined(&name);
                    self.start_again(&name);
                    self.dependency_ended(&name);
                }
                _ => {}
            }
            if self.shutting_down {
                self.shutdown_step();
            }
        }
    }

    /// Spawns the queued starts whose dependencies are all `running` now.
    fn release_waiting(&mut self) {
        if self.waiting == 0 || self.shutting_down {
            return;
        }
        let ready: Vec<String> = self
            .programs
            .values()
            .filter(|p| p.machine.waiting)
            .map(|p| p.name().to_string())
            .filter(|n| self.unmet_dependencies(n).is_empty())
            .collect();
        for name in ready {
            self.feed(&name, Input::DepsReady);
        }
    }

    /// A program that was stopping when a queued start needed it (see
    /// [`Supervisor::start_one`]) has stopped: it starts again now (after
    /// its own dependencies), unless supd is shutting down.
    fn start_again(&mut self, name: &str) {
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        if !std::mem::take(&mut p.start_when_stopped) || self.shutting_down {
            return;
        }
        if matches!(p.state(), State::Stopped | State::Exited | State::Fatal) {
            tracing::info!(program = %name, "stopped; starting it again for the programs that wait for it");
            self.start_one(name);
        }
    }

    /// `name` ended without being `running` and will not be on its own
    /// (`fatal`, `exited` or `stopped`, and not started again): the queued
    /// starts that wait for it fail (`fatal`), or are called off when it
    /// was stopped (`stopped`, as systemd's `Requires=` carries a stop over),
    /// each with the reason naming it. Without this they would wait forever.
    fn dependency_ended(&mut self, name: &str) {
        if self.waiting == 0 {
            return;
        }
        let Some(dep) = self.programs.get(name) else {
            return;
        };
        let (input, reason) = match dep.state() {
            State::Fatal => (
                Input::DepFailed,
                match &dep.error {
                    Some(e) => {
                        format!("its dependency {name} is fatal ({e}), so it was not started")
                    }
                    None => format!("its dependency {name} is fatal, so it was not started"),
                },
            ),
            State::Exited => (
                Input::DepFailed,
                format!(
                    "its dependency {name} ended ({}) and is not running, so it was not started",
                    dep.last_exit
                        .map_or_else(|| "exited".to_string(), |l| l.status.to_string())
                ),
            ),
            State::Stopped => (
                Input::DepStopped,
                format!(
                    "its dependency {name} was stopped before it was running, so it was not started"
                ),
            ),
            _ => return,
        };
        let group = dep.group.clone();
        let dependants: Vec<String> = self
            .programs
            .values()
            .filter(|p| p.machine.waiting && p.cfg.depends_on.contains(&group))
            .map(|p| p.name().to_string())
            .collect();
        for d in dependants {
            if input == Input::DepStopped {
                // (A failure is logged as the program goes fatal.)
                tracing::info!(program = %d, dependency = %name, "{reason}");
            }
            if let Some(p) = self.programs.get_mut(&d) {
                p.error = Some(reason.clone());
            }
            self.feed(&d, input);
        }
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
            let was_waiting = p.machine.waiting;
            let actions = p.machine.step(input, &p.cfg);
            if input == Input::Retry && p.state() == State::Starting {
                p.restarts += 1;
            }
            if from != State::Starting && from != State::Backoff && p.state() == State::Starting {
                // A new start: why an earlier one failed no longer applies.
                p.error = None;
            }
            for action in actions {
                match action {
                    Action::Spawn => {
                        let direct = !p.cfg.daemon && !p.transient;
                        let out = self
                            .outputs
                            .entry(name.to_string())
                            .or_insert_with(|| {
                                ProgramOutput::new(name, &self.log_dir, &p.cfg.output, direct)
                            })
                            .clone();
                        out.configure(&p.cfg.output, direct);
                        let files = match out.files_for_child() {
                            Some(Ok(files)) => Some(files),
                            Some(Err(e)) => {
                                tracing::error!(program = %name, error = %e, "cannot open the log file; its output goes through a pipe instead");
                                None
                            }
                            None => None,
                        };
                        match spawn::spawn(
                            &p.cfg,
                            &[("SUP_SUPD".to_string(), self.marker.clone())],
                            p.transient,
                            files,
                        ) {
                            Ok((child, pipes)) => {
                                let n = u8::from(pipes.stdout.is_some())
                                    + u8::from(pipes.stderr.is_some());
                                let run = out.run_started(child.pid, n);
                                if let Some(fd) = pipes.stdout {
                                    crate::logs::spawn(crate::logs::drain(
                                        out.clone(),
                                        Stream::Stdout,
                                        fd,
                                        run,
                                    ));
                                }
                                if let Some(fd) = pipes.stderr {
                                    crate::logs::spawn(crate::logs::drain(
                                        out,
                                        Stream::Stderr,
                                        fd,
                                        run,
                                    ));
                                }
                                p.stdin = pipes.stdin;
                                tracing::info!(program = %name, pid = child.pid, "spawned");
                                self.by_pid.insert(child.pid, name.to_string());
                                self.state.processes.insert(
                                    name.to_string(),
                                    crate::state::ProcessRecord {
                                        pid: child.pid,
                                        // Read at the next flush (see
                                        // `flush_state`), not now, mid-exec.
                                        start_time: 0,
                                        daemon: p.cfg.daemon,
                                        marker: self.marker.clone(),
                                    },
                                );
                                self.state_dirty = true;
                                p.adopted = false;
                                p.child = Some(child);
                                p.error = None;
                                queue.push_back(Input::Spawned);
                            }
                            Err(e) => {
                                tracing::error!(program = %name, error = %e, "spawn failed");
                                p.error = Some(e.to_string());
                                queue.push_back(Input::SpawnFailed);
                            }
                        }
                    }
                    Action::ArmStartTimer => p.arm_timer(p.cfg.start_secs, &self.tx),
                    Action::ArmStopTimer => p.arm_timer(p.cfg.stop_timeout, &self.tx),
                    Action::ArmRetry { step } => {
                        let delay = backoff_delay(&p.cfg, step, jitter);
                        if delay.is_zero() && !self.shutting_down {
                            // No timer for no delay: a timer still sleeps a
                            // whole tick (1 ms) of tokio's clock.
                            p.cancel_timer();
                            queue.push_back(Input::Retry);
                        } else {
                            p.arm_timer(delay, &self.tx);
                            // Checked: a delay from the configuration must
                            // never panic the supervisor (it is bounded when
                            // read; this holds whatever the bound).
                            p.retry_at = Instant::now().checked_add(delay);
                        }
                    }
                    Action::CancelTimer => p.cancel_timer(),
                    Action::SendStopSignal | Action::SendKill => {
                        let sig = match action {
                            Action::SendKill => libc::SIGKILL,
                            _ => p.cfg.stop_signal.0,
                        };
                        if let Some(child) = &p.child {
                            if p.cfg.orphans == crate::config::OrphanPolicy::Keep {
                                // Like systemd's KillMode=process: only the
                                // main process; what it started is kept.
                                signal_main(name, child, sig);
                            } else {
                                signal_program(name, child, p.adopted, sig);
                                orphans::signal_orphans(name, sig, &self.by_pid);
                            }
                            if sig != libc::SIGKILL {
                                signal_program(name, child, p.adopted, libc::SIGCONT);
                            }
                        }
                    }
                }
            }
            match (was_waiting, p.machine.waiting) {
                (false, true) => self.waiting += 1,
                (true, false) => self.waiting -= 1,
                _ => {}
            }
            let to = p.state();
            if from == to {
                continue;
            }
            p.since = rfc3339(SystemTime::now());
            if to == State::Fatal && p.error.is_none() {
                let how = p
                    .last_exit
                    .map_or_else(|| "exited".to_string(), |l| l.status.to_string());
                p.error = Some(format!(
                    "{how} within start_secs ({:?}) on every try; gave up after {} retries",
                    p.cfg.start_secs, p.machine.retries
                ));
            }
            if to == State::Fatal {
                tracing::error!(
                    program = %name,
                    reason = %p.error.as_deref().unwrap_or("unknown"),
                    "fatal: not started again until a user starts it"
                );
            }
            tracing::debug!(program = %name, %from, %to, "state");
            let ended = match input {
                Input::Exited { .. } => p.last_exit,
                _ => None,
            };
            let _ = self.events.send(Event {
                name: name.to_string(),
                from,
                to,
                pid: p.pid().or(ended.map(|l| l.pid)),
                returncode: ended.and_then(|l| l.status.returncode()),
                exit_code: ended.and_then(|l| l.status.code),
                signal: ended.and_then(|l| l.status.signal_name()),
                escalated: p.machine.escalated && ended.is_some(),
                time: p.since.clone(),
            });
            settle_waiters(p, to, input);
            self.transitions.push_back((name.to_string(), to));
        }
    }
}

/// Sends `sig` to a program's main process only, through its pidfd.
fn signal_main(name: &str, child: &spawn::Child, sig: i32) {
    if let Err(e) = spawn::pidfd_send_signal(&child.pidfd, sig) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(program = %name, pid = child.pid, signal = sig, error = %e, "could not signal the main process");
        }
    }
}

/// Sends `sig` to a program's process group. For an adopted process (not
/// supd's child, so its zombie does not hold the group id) the main process
/// is signalled through its pidfd first, and the group only while the
/// leader is seen alive.
fn signal_program(name: &str, child: &spawn::Child, adopted: bool, sig: i32) {
    let result = if adopted {
        spawn::pidfd_send_signal(&child.pidfd, sig)
            .and_then(|()| spawn::pidfd_send_signal(&child.pidfd, 0))
            .and_then(|()| spawn::kill_group(child.pid, sig))
    } else {
        spawn::kill_group(child.pid, sig)
    };
    if let Err(e) = result {
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(program = %name, pid = child.pid, signal = sig, error = %e, "could not signal the process group");
        }
    }
}

/// Drops a restart a reload or a scale had planned for `p` once stopped,
/// answering whoever waits for it: `p` is being removed ("`why`").
fn cancel_restart(p: &mut Program, why: &str) {
    if let Some((_, tx)) = p.pending_restart.take().map(|b| *b) {
        let name = p.name().to_string();
        let _ = tx.send(p.failed(
            ErrorKind::NotFound,
            format!("{name}: removed before it started again ({why})"),
        ));
    }
}

/// Answers the `start` and `stop` waiters that the new state settles;
/// `input` is what brought it there.
fn settle_waiters(p: &mut Program, to: State, input: Input) {
    let outcome = p.outcome();
    let name = p.name().to_string();
    let start_answer = match to {
        State::Running => Some(outcome.clone()),
        State::Fatal => Some(p.failed(
            ErrorKind::Spawn,
            match &p.error {
                Some(e) => format!("{name}: {e}"),
                None => format!("{name}: could not be started"),
            },
        )),
        State::Exited => Some(match p.last_exit {
            Some(last) if !machine::is_success(&p.cfg, &last.status) => p.failed(
                ErrorKind::Spawn,
                format!("{name}: {} within start_secs", last.status),
            ),
            _ => outcome.clone(),
        }),
        State::Stopped => Some(p.failed(
            ErrorKind::NotRunning,
            match (&p.error, input) {
                (Some(e), Input::DepStopped) => format!("{name}: {e}"),
                _ => format!("{name}: stopped before it was running"),
            },
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
