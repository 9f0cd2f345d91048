//! `reload`: apply a new configuration by its difference with the running
//! one. Programs are compared by their `[program.NAME]` definition:
//! - added: created, and started if `autostart`;
//! - removed: stopped, then forgotten;
//! - changed: stopped and started again with the new definition if they
//!   were up (starting, running, backoff), else given it quietly; a pool
//!   whose size changed gains or loses members like `scale`;
//! - unchanged: left alone (same pid).
//!
//! The new configuration was validated whole before it gets here (a bad one
//! changes nothing).

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::program::Program;
use super::{Pending, Supervisor, member_config, member_name};
use crate::config::{Config, ProgramConfig};
use crate::protocol::{ErrorKind, ReloadResult, RpcError, State};

impl Supervisor {
    /// The definitions in force, by `[program]` name.
    fn definitions(&self) -> BTreeMap<String, ProgramConfig> {
        let mut defs: BTreeMap<String, ProgramConfig> = self.pools.clone();
        for p in self.programs.values() {
            // Runs (`supctl run`) are no part of the configuration.
            if p.instance.is_none() && !p.transient {
                defs.insert(p.group.clone(), p.cfg.clone());
            }
        }
        defs
    }

    /// Applies `new`; answers what changed and the outcomes to come (stops
    /// of removed programs, restarts of changed ones, starts of added ones).
    pub(super) fn reload(
        &mut self,
        new: &Config,
    ) -> Result<(ReloadResult, Vec<Pending>), RpcError> {
        if self.shutting_down {
            return Err(RpcError::new(
                ErrorKind::ShuttingDown,
                "supd is shutting down; nothing was reloaded",
            ));
        }
        let taken: Vec<&str> = new
            .programs
            .keys()
            .filter(|n| self.programs.get(*n).is_some_and(|p| p.transient))
            .map(String::as_str)
            .collect();
        if !taken.is_empty() {
            return Err(RpcError::new(
                ErrorKind::Config,
                format!(
                    "{}: the name of a supctl run that has not ended; nothing was reloaded (try again once it has)",
                    taken.join(", ")
                ),
            ));
        }
        let old = self.definitions();
        let mut result = ReloadResult::default();
        let mut pending = Vec::new();
        for (name, cfg) in &new.programs {
            match old.get(name) {
                None => result.added.push(name.clone()),
                Some(o) if o == cfg => result.unchanged.push(name.clone()),
                Some(_) => result.changed.push(name.clone()),
            }
        }
        result.removed = old
            .keys()
            .filter(|n| !new.programs.contains_key(*n))
            .cloned()
            .collect();

        for name in &result.removed {
            for member in self.members(name) {
                pending.push(self.retire(&member));
            }
            self.pools.remove(name);
            self.state.scale.remove(name);
        }
        for name in &result.changed {
            let cfg = &new.programs[name];
            self.state.scale.remove(name);
            pending.extend(self.redefine(name, cfg));
        }
        for name in &result.added {
            let cfg = &new.programs[name];
            for (member, member_cfg, instance) in wanted_members(cfg) {
                let mut p = Program::new(member_cfg, name, instance);
                if cfg.autostart {
                    let (tx, rx) = oneshot::channel();
                    p.start_waiters.push(tx);
                    pending.push(rx);
                }
                self.programs.insert(member.clone(), p);
                if cfg.autostart {
                    self.start_one(&member);
                }
            }
            if cfg.instances.is_some() {
                self.pools.insert(name.clone(), cfg.clone());
            }
        }
        self.dependents.clear();
        for cfg in new.programs.values() {
            for dep in &cfg.depends_on {
                self.dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(cfg.name.clone());
            }
        }
        self.shutdown_timeout = new.supd.shutdown_timeout;
        // `[pool.NAME]` sizes for runs: a grown pool starts what it can now;
        // a removed one lets its queued runs through one at a time.
        self.run_pools = new.run_pools.clone();
        let pools: Vec<String> = self.run_queues.keys().cloned().collect();
        for pool in pools {
            self.release_pool(&pool);
        }
        self.save_state();
        tracing::info!(
            added = ?result.added,
            removed = ?result.removed,
            changed = ?result.changed,
            unchanged = result.unchanged.len(),
            "configuration reloaded"
        );
        Ok((result, pending))
    }

    /// Stops `member` and forgets it once stopped (at once if idle).
    fn retire(&mut self, member: &str) -> Pending {
        let (tx, rx) = oneshot::channel();
        let Some(p) = self.programs.get_mut(member) else {
            return rx;
        };
        if busy(p) {
            p.remove_when_stopped = true;
            p.start_when_stopped = false;
            super::cancel_restart(p, "its definition was removed");
            self.stop_one(member, false, Some(tx));
        } else if let Some(p) = self.forget(member) {
            let _ = tx.send(p.outcome());
        }
        rx
    }

    /// Gives the members of `name` the definition `cfg`: restarting those
    /// that were up, creating and retiring members as the pool's size says.
    fn redefine(&mut self, name: &str, cfg: &ProgramConfig) -> Vec<Pending> {
        let mut pending = Vec::new();
        let wanted = wanted_members(cfg);
        for member in self.members(name) {
            if !wanted.iter().any(|(m, _, _)| *m == member) {
                pending.push(self.retire(&member));
            }
        }
        for (member, member_cfg, instance) in wanted {
            let (tx, rx) = oneshot::channel();
            pending.push(rx);
            match self.programs.get_mut(&member) {
                Some(p) if busy(p) => {
                    // Wanted again if a shrink was removing it. An earlier
                    // reload's restart gives way to this one's: its caller
                    // hears where the program is now.
                    p.remove_when_stopped = false;
                    let outcome = p.outcome();
                    if let Some((_, earlier)) = p
                        .pending_restart
                        .replace(Box::new((member_cfg, tx)))
                        .map(|b| *b)
                    {
                        let _ = earlier.send(outcome);
                    }
                    self.stop_one(&member, false, None);
                }
                Some(p) => {
                    p.cfg = member_cfg;
                    let _ = tx.send(p.outcome());
                }
                None => {
                    let mut p = Program::new(member_cfg, name, instance);
                    if cfg.autostart {
                        p.start_waiters.push(tx);
                    } else {
                        let _ = tx.send(p.outcome());
                    }
                    self.programs.insert(member.clone(), p);
                    if cfg.autostart {
                        self.start_one(&member);
                    }
                }
            }
        }
        if cfg.instances.is_some() {
            self.pools.insert(name.to_string(), cfg.clone());
        } else {
            self.pools.remove(name);
        }
        pending
    }

    /// Called when a program stopped: a pending new definition takes over
    /// and the program starts again with it.
    pub(super) fn restart_redefined(&mut self, name: &str) {
        let Some(p) = self.programs.get_mut(name) else {
            return;
        };
        let Some((cfg, tx)) = p.pending_restart.take().map(|b| *b) else {
            return;
        };
        p.cfg = cfg;
        p.restarts = 0;
        p.start_waiters.push(tx);
        if !self.shutting_down {
            self.start_one(name);
        }
    }
}

/// Whether a program has a process or is about to.
fn busy(p: &Program) -> bool {
    p.state().has_process() || p.state() == State::Backoff || p.machine.waiting
}

/// The members a definition asks for: `(name, config, instance)`.
fn wanted_members(cfg: &ProgramConfig) -> Vec<(String, ProgramConfig, Option<u32>)> {
    match cfg.instances {
        None => vec![(cfg.name.clone(), cfg.clone(), None)],
        Some(n) => (0..n)
            .map(|i| (member_name(&cfg.name, i), member_config(cfg, i), Some(i)))
            .collect(),
    }
}
