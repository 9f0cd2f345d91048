//! The supervisor's handle: what control connections call. Each method sends
//! one [`Msg`] and awaits the answer, so a slow program keeps only its own
//! caller waiting.

use futures_util::future::join_all;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{Msg, Pending, WaitTicket};
use crate::protocol::{
    ErrorKind, Event, NamesParams, Outcome, ProgramStatus, ReloadResult, RpcError,
};
use crate::signals::Sig;

/// A cheap, cloneable sender to the supervisor.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    config_path: std::sync::Arc<std::path::PathBuf>,
}

fn gone() -> RpcError {
    RpcError::new(
        ErrorKind::ShuttingDown,
        "supd is shutting down and no longer takes requests",
    )
}

/// Turns per-program outcomes into the verb's answer: all fine is `Ok`;
/// any failure is an error of the first failure's kind, with every
/// outcome under `data.results`.
fn settle(outcomes: Vec<Outcome>) -> Result<Vec<Outcome>, RpcError> {
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let Some(first) = failures.first().and_then(|o| o.error.as_ref()) else {
        return Ok(outcomes);
    };
    let message = failures
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| e.message.as_str()))
        .collect::<Vec<_>>()
        .join("; ");
    Err(RpcError::new(first.kind, message).with_results(outcomes))
}

async fn collect(pending: Vec<Pending>) -> Result<Vec<Outcome>, RpcError> {
    let mut outcomes = Vec::with_capacity(pending.len());
    for result in join_all(pending).await {
        outcomes.push(result.map_err(|_| gone())?);
    }
    Ok(outcomes)
}

/// Reads and validates the configuration file on a thread of its own:
/// `user`, `group` and `allow_users` are looked up through NSS (LDAP, SSSD:
/// the network, at worst), and the file itself may be slow to read. The
/// runtime's only thread, where the supervisor answers every request, never
/// waits for either. A plain thread rather than tokio's blocking pool: a
/// lookup that never returns must not hold up supd's exit (dropping the
/// runtime waits for blocking-pool tasks; a detached thread ends with the
/// process).
///
/// # Errors
/// `config` with the file's problems; `internal` if the thread cannot be
/// started or dies.
async fn load_config(path: &std::path::Path) -> Result<crate::config::Config, RpcError> {
    let (tx, rx) = oneshot::channel();
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("supd-config".into())
        .spawn(move || {
            let _ = tx.send(crate::config::Config::load(&path));
        })
        .map_err(|e| {
            RpcError::new(
                ErrorKind::Internal,
                format!("cannot start a thread to read the configuration: {e}"),
            )
        })?;
    rx.await
        .map_err(|_| {
            RpcError::new(
                ErrorKind::Internal,
                "the thread reading the configuration died; see supd's log",
            )
        })?
        .map_err(|e| RpcError::new(ErrorKind::Config, e.to_string()))
}

impl Handle {
    pub(super) fn new(tx: mpsc::UnboundedSender<Msg>, config_path: std::path::PathBuf) -> Self {
        Handle {
            tx,
            config_path: std::sync::Arc::new(config_path),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RpcError>>) -> Msg,
    ) -> Result<T, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Tells the supervisor that SIGCHLD arrived.
    pub fn reap(&self) {
        let _ = self.tx.send(Msg::Reap);
    }

    /// Begins shutdown; a second call sends SIGKILL to what is left.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }

    /// `status`: rows for `names`, or every program when empty.
    ///
    /// # Errors
    /// `not_found` for an unknown name.
    pub async fn status(&self, names: Vec<String>) -> Result<Vec<ProgramStatus>, RpcError> {
        self.ask(|reply| Msg::Status { names, reply }).await
    }

    /// `status` as JSON text, `{"programs":[...]}`, appended to `out`
    /// (which comes back): the supervisor writes the answer straight into
    /// the connection's buffer, without an owned copy of any row.
    ///
    /// # Errors
    /// `not_found` for an unknown name.
    pub async fn status_json(&self, names: Vec<String>, out: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        self.ask(|reply| Msg::StatusJson { names, out, reply })
            .await
    }

    /// `start`: returns once each program is `running` (or has exited cleanly
    /// during `start_secs`), or has failed.
    ///
    /// # Errors
    /// `not_found` (nothing done); else the first failure's kind
    /// (`already_running`, `spawn`, ...) with every outcome.
    pub async fn start(&self, select: NamesParams) -> Result<Vec<Outcome>, RpcError> {
        let pending = self.ask(|reply| Msg::Start { select, reply }).await?;
        settle(collect(pending).await?)
    }

    /// `stop` (or `kill`): returns once each program's process has exited.
    ///
    /// # Errors
    /// `not_found`; `not_running` for `kill` of a program with no process.
    pub async fn stop(&self, select: NamesParams, kill: bool) -> Result<Vec<Outcome>, RpcError> {
        let pending = self
            .ask(|reply| Msg::Stop {
                select,
                kill,
                reply,
            })
            .await?;
        settle(collect(pending).await?)
    }

    /// `restart`: stop, then start. Each outcome says whether its stop
    /// escalated.
    ///
    /// # Errors
    /// As [`Handle::stop`], then as [`Handle::start`].
    pub async fn restart(&self, select: NamesParams) -> Result<Vec<Outcome>, RpcError> {
        let stopped = self.stop(select.clone(), false).await?;
        let started = self.start(select).await;
        let merge = |mut outs: Vec<Outcome>| {
            for (o, s) in outs.iter_mut().zip(&stopped) {
                o.escalated = s.escalated;
            }
            outs
        };
        match started {
            Ok(outs) => Ok(merge(outs)),
            Err(mut e) => {
                e.data.results = e.data.results.take().map(merge);
                Err(e)
            }
        }
    }

    /// `signal`: sends `sig` to each program's main process, or its group.
    ///
    /// # Errors
    /// `not_found`; `not_running` when a program has no process;
    /// `permission_denied` when the kernel refuses (EPERM).
    pub async fn signal(
        &self,
        select: NamesParams,
        sig: Sig,
        group: bool,
    ) -> Result<Vec<Outcome>, RpcError> {
        let outs = self
            .ask(|reply| Msg::Signal {
                select,
                sig,
                group,
                reply,
            })
            .await?;
        settle(outs)
    }

    /// `wait`: `Process.join()`. A ticket for the end of the current run,
    /// or the result of the last run when none is under way; the caller
    /// applies its own timeout (the program runs on).
    ///
    /// # Errors
    /// `not_found`; `not_running` for a program never started; `spawn` for one
    /// that could not be.
    pub async fn wait(&self, name: String) -> Result<WaitTicket, RpcError> {
        self.ask(|reply| Msg::Wait { name, reply }).await
    }

    /// `scale`: grows a pool (new members started) or shrinks it (the
    /// highest-numbered members stopped, then forgotten). Returns once each
    /// changed member got there.
    ///
    /// # Errors
    /// `not_found` for an unknown pool; `invalid_params` for a program that
    /// is not a pool or a size of 0; else as [`Handle::start`].
    pub async fn scale(&self, name: String, instances: u32) -> Result<Vec<Outcome>, RpcError> {
        let pending = self
            .ask(|reply| Msg::Scale {
                name,
                instances,
                reply,
            })
            .await?;
        settle(collect(pending).await?)
    }

    /// `events`: every state change from now on. The receiver holds
    /// [`super::EVENT_QUEUE`] events; a reader that falls further behind sees
    /// `Lagged` and is dropped by the server.
    ///
    /// # Errors
    /// `shutting_down` once the supervisor is gone.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Event>, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Subscribe { reply: tx })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// `reload`: reads the configuration file again and applies the
    /// difference (see `reload.rs`). Returns once removed programs have
    /// stopped and changed or added ones have started (or failed to);
    /// their outcomes are in the result. Tells systemd `RELOADING=1`, then
    /// `READY=1`.
    ///
    /// # Errors
    /// `config` with every problem as `file:line:col: message` (one a line)
    /// when the file is unreadable or invalid: then nothing changed.
    pub async fn reload(&self) -> Result<ReloadResult, RpcError> {
        crate::notify::send(&[crate::notify::NotifyState::Reloading]);
        let outcome = async {
            let config = load_config(&self.config_path).await?;
            let (mut result, pending) = self
                .ask(|reply| Msg::Reload {
                    config: Box::new(config),
                    reply,
                })
                .await?;
            result.programs = collect(pending).await?;
            Ok(result)
        }
        .await;
        crate::notify::send(&[crate::notify::NotifyState::Ready]);
        outcome
    }

    /// `logs`: the captured output of a program.
    ///
    /// # Errors
    /// `not_found` for an unknown program.
    pub async fn logs(
        &self,
        name: String,
    ) -> Result<std::sync::Arc<crate::logs::ProgramOutput>, RpcError> {
        self.ask(|reply| Msg::Logs { name, reply }).await
    }

    /// `reopen_logs` (SIGUSR1): every log file is closed, and opened again
    /// (created if it was moved away) at its next line. Returns how many
    /// programs' files were.
    pub async fn reopen_logs(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::ReopenLogs { reply: tx }).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// `run`: a transient program; answers once it is spawned (after a
    /// wait in its pool's queue).
    ///
    /// # Errors
    /// `invalid_params`, `not_found` (pool), `already_running` (name taken),
    /// `spawn`, `shutting_down`.
    pub async fn run(&self, spec: super::RunSpec) -> Result<super::RunStarted, RpcError> {
        self.ask(|reply| Msg::Run { spec, reply }).await
    }

    /// `remove`: forgets programs that have no process.
    ///
    /// # Errors
    /// `not_found`; `running` if any has a process (then none is removed).
    pub async fn remove(&self, select: NamesParams) -> Result<Vec<Outcome>, RpcError> {
        self.ask(|reply| Msg::Remove { select, reply }).await
    }
}
