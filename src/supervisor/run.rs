//! `supctl run`: transient programs, started at once or queued in a
//! `[pool.NAME]`, forgotten once their process is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::machine::Input;
use super::program::Program;
use super::{RunReply, RunSpec, RunStarted, Supervisor};
use crate::config::{OutputConfig, ProgramConfig, RestartPolicy, Retries};
use crate::logs::ProgramOutput;
use crate::protocol::{ErrorKind, RpcError};

/// A run's `stop_timeout`: the stop signal, then SIGKILL this much later.
pub const RUN_STOP_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// The output of `name`, created on first use.
    pub(super) fn output(&mut self, name: &str, cfg: &OutputConfig) -> Arc<ProgramOutput> {
        self.outputs
            .entry(name.to_string())
            .or_insert_with(|| ProgramOutput::new(name, &self.log_dir, cfg, false))
            .clone()
    }

    /// `run`: makes a transient program and starts it, or queues it when
    /// its pool is full.
    pub(super) fn run_transient(&mut self, spec: RunSpec, reply: RunReply) {
        let refuse = |kind, message: String| Err(RpcError::new(kind, message));
        if self.shutting_down {
            let _ = reply.send(refuse(
                ErrorKind::ShuttingDown,
                "supd is shutting down and starts nothing".into(),
            ));
            return;
        }
        if spec.command.is_empty() || spec.command[0].is_empty() {
            let _ = reply.send(refuse(
                ErrorKind::InvalidParams,
                "run: no command given (supctl run -- CMD ARGS...)".into(),
            ));
            return;
        }
        if let Some(pool) = &spec.pool {
            if !self.run_pools.contains_key(pool) {
                let pools = self.run_pools.keys().map(String::as_str);
                let e = match crate::config::closest_name(pool, pools) {
                    Some(close) => {
                        let mut e = RpcError::new(
                            ErrorKind::NotFound,
                            format!("no such pool: {pool} (did you mean \"{close}\"?)"),
                        );
                        e.data.suggestions =
                            Some([(pool.clone(), close.to_string())].into_iter().collect());
                        e
                    }
                    None => RpcError::new(
                        ErrorKind::NotFound,
                        format!(
                            "no such pool: {pool} (add [pool.{pool}] size = N to the configuration)"
                        ),
                    ),
                };
                let _ = reply.send(Err(e));
                return;
            }
        }
        let name = match spec.name {
            Some(n) => {
                if let Some(problem) = crate::config::name_problem(&n) {
                    let _ = reply.send(refuse(
                        ErrorKind::InvalidParams,
                        format!("invalid name \"{n}\": {problem}"),
                    ));
                    return;
                }
                if self.programs.contains_key(&n) || self.pools.contains_key(&n) {
                    let _ = reply.send(refuse(
                        ErrorKind::AlreadyRunning,
                        format!("{n}: a program of that name exists (choose another --name)"),
                    ));
                    return;
                }
                n
            }
            None => loop {
                let n = format!("run-{}", self.next_run);
                self.next_run += 1;
                if !self.programs.contains_key(&n) {
                    break n;
                }
            },
        };
        let mut cfg = ProgramConfig::new(&name, spec.command);
        cfg.env = spec.env;
        cfg.cwd = spec.cwd;
        cfg.autostart = false;
        cfg.restart = RestartPolicy::Never;
        cfg.start_secs = Duration::ZERO;
        cfg.start_retries = Retries::Limited(0);
        cfg.stop_timeout = RUN_STOP_TIMEOUT;
        cfg.daemon = true;
        cfg.output.files = false;
        let mut p = Program::new(cfg, &name, None);
        p.transient = true;
        p.run_pool = spec.pool.clone();
        p.queued = Some(reply);
        self.programs.insert(name.clone(), p);
        match spec.pool {
            Some(pool) => {
                self.run_queues
                    .entry(pool.clone())
                    .or_default()
                    .push_back(name);
                self.release_pool(&pool);
            }
            None => self.launch_run(&name),
        }
    }

    /// Starts queued runs of `pool` while it has room.
    pub(super) fn release_pool(&mut self, pool: &str) {
        let size = self.run_pools.get(pool).copied().unwrap_or(1) as usize;
        loop {
            let running = self
                .programs
                .values()
                .filter(|p| p.run_pool.as_deref() == Some(pool) && p.queued.is_none())
                .count();
            if running >= size || self.shutting_down {
                return;
            }
            let Some(name) = self.run_queues.get_mut(pool).and_then(|q| q.pop_front()) else {
                return;
            };
            let gone = self
                .programs
                .get(&name)
                .and_then(|p| p.queued.as_ref())
                .is_none_or(|r| r.is_closed());
            if gone {
                // Its client hung up while it waited.
                self.forget(&name);
                continue;
            }
            self.launch_run(&name);
        }
    }

    /// Spawns the run `name` (queued until now) and answers its request.
    fn launch_run(&mut self, name: &str) {
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        let Some(reply) = p.queued.take() else {
            return;
        };
        let cfg = p.cfg.output.clone();
        let output = self.output(name, &cfg).subscribe();
        self.feed(name, Input::Start);
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        match &p.child {
            Some(child) => {
                let (tx, exit) = oneshot::channel();
                p.exit_waiters.push(tx);
                let started = RunStarted {
                    name: name.to_string(),
                    pid: child.pid,
                    output,
                    exit,
                    stdin: p.stdin.take(),
                    guard: super::RunGuard {
                        name: name.to_string(),
                        tx: Some(self.tx.clone()),
                    },
                };
                // Its client may be gone: then the answer is dropped, and
                // its guard stops the run.
                let _ = reply.send(Ok(started));
            }
            None => {
                let why = p
                    .error
                    .clone()
                    .unwrap_or_else(|| "could not be started".into());
                let _ = reply.send(Err(RpcError::new(ErrorKind::Spawn, why)));
            }
        }
    }
}
