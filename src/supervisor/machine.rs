//! A program's lifecycle as a pure state machine (SPEC §3): one function
//! takes the state and an input to the next state and the actions the
//! supervisor must carry out. Nothing here spawns, signals or sleeps, so every
//! transition is unit-tested without processes.
//!
//! ```text
//!            Start/Retry           Spawned(+start_secs)
//!  stopped ──────────────► starting ───────────────► running
//!  exited  ◄── exit, no restart ─┤  │ exit, retries left      │ exit, restart
//!  fatal   ◄── SpawnFailed/retries used up       ▼            ▼
//!                                   backoff ◄────────────────┘
//!  starting/running ── Stop ──► stopping ── exit ──► stopped
//!                               (StopTimeout: SIGKILL, escalated)
//!
//!  stopped ── Queue ──► starting, waiting (no process) ── DepsReady ──► Spawn
//!                          │ DepFailed (a dependency fatal or exited) ──► fatal
//!                          └ DepStopped, Stop, Kill ──────────────────► stopped
//! ```

use std::time::Duration;

use crate::config::{ProgramConfig, RestartPolicy, Retries};
use crate::protocol::{ExitStatus, State};

/// What happened to a program.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// A user asked to start it (`supctl start`, autostart).
    Start,
    /// The spawn asked for by [`Action::Spawn`] succeeded.
    Spawned,
    /// The spawn failed (exec error, bad cwd).
    SpawnFailed,
    /// `start_secs` passed since the spawn.
    StartSecsElapsed,
    /// The main process ended after running for `ran_for`.
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// How long it ran.
        ran_for: Duration,
    },
    /// A user asked to stop it (`supctl stop`, shutdown).
    Stop,
    /// A user asked to kill it (`supctl kill`, a second shutdown signal).
    Kill,
    /// `stop_timeout` passed since the stop signal.
    StopTimeout,
    /// The backoff delay passed.
    Retry,
    /// A user asked to start it, but a dependency is not `running` yet:
    /// it is `starting`, waiting, with no process.
    Queue,
    /// Every dependency is `running` now.
    DepsReady,
    /// A dependency it was waiting for ended without being `running`: it
    /// became `fatal`, or `exited` (within its `start_secs`, or after a run
    /// while another dependency was not up yet). The start failed: `fatal`.
    DepFailed,
    /// A dependency it was waiting for was stopped (`supctl stop` or
    /// `kill`) before it was `running`: the start is
    /// called off, as systemd's `Requires=` carries a stop over to the
    /// units that need it: `stopped`.
    DepStopped,
    /// At start-up, a process this program had under an earlier supd was
    /// found alive and adopted: it is `running`.
    Adopted,
}

/// What the supervisor must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec the program; answer with `Spawned` or `SpawnFailed`.
    Spawn,
    /// Arm the `start_secs` timer.
    ArmStartTimer,
    /// Send the stop signal (and SIGCONT) to the process group.
    SendStopSignal,
    /// Arm the `stop_timeout` timer.
    ArmStopTimer,
    /// Send SIGKILL to the process group.
    SendKill,
    /// Arm the backoff timer for the `step`-th consecutive restart
    /// (the delay is [`backoff_delay`] of it).
    ArmRetry {
        /// 0 for the first restart.
        step: u32,
    },
    /// Cancel whatever timer is armed.
    CancelTimer,
}

/// A program's lifecycle state and the counters its transitions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The state.
    pub state: State,
    /// Failed tries since the last `Start` or the last time it was running.
    pub retries: u32,
    /// Consecutive restarts since the last run of `backoff_reset` or more.
    pub backoff_step: u32,
    /// Whether the current stop escalated to SIGKILL.
    pub escalated: bool,
    /// `starting` without a process: waiting for dependencies.
    pub waiting: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            state: State::Stopped,
            retries: 0,
            backoff_step: 0,
            escalated: false,
            waiting: false,
        }
    }
}

/// Whether the restart policy starts the program again after `status`.
pub fn wants_restart(cfg: &ProgramConfig, status: &ExitStatus) -> bool {
    match cfg.restart {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !is_success(cfg, status),
    }
}

/// Whether `status` counts as a clean exit: a code listed in `exit_codes`.
pub fn is_success(cfg: &ProgramConfig, status: &ExitStatus) -> bool {
    status
        .code
        .is_some_and(|code| cfg.exit_codes.contains(&code))
}

/// The delay before the `step`-th consecutive restart: `backoff_initial`
/// doubled `step` times, at most `backoff_max`, then spread by ±10 % with
/// `jitter` (a sample from 0.0 to 1.0), and never above `backoff_max`.
pub fn backoff_delay(cfg: &ProgramConfig, step: u32, jitter: f64) -> Duration {
    let base = cfg
        .backoff_initial
        .saturating_mul(1u32 << step.min(30))
        .min(cfg.backoff_max);
    let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
    // Not `mul_f64`, which panics when the product does not fit.
    Duration::try_from_secs_f64(base.as_secs_f64() * factor)
        .unwrap_or(base)
        .min(cfg.backoff_max)
}

impl Machine {
    /// Takes `input` in the current state to the next one, returning the
    /// actions to carry out. An input that makes no sense in the state (a
    /// stale timer, a stop of a stopped program) changes nothing.
    pub fn step(&mut self, input: Input, cfg: &ProgramConfig) -> Vec<Action> {
        use Action::*;
        use State::*;
        if self.waiting {
            return self.step_waiting(input);
        }
        match (self.state, input) {
            (Stopped | Exited | Fatal | Backoff, Input::Start | Input::Queue) => {
                self.retries = 0;
                self.backoff_step = 0;
                self.escalated = false;
                self.state = Starting;
                if input == Input::Queue {
                    self.waiting = true;
                    vec![CancelTimer]
                } else {
                    vec![CancelTimer, Spawn]
                }
            }
            (Stopped, Input::Adopted) => {
                self.state = Running;
                vec![]
            }
            (Backoff, Input::Retry) => {
                self.escalated = false;
                self.state = Starting;
                vec![Spawn]
            }
            (Starting, Input::Spawned) => {
                if cfg.start_secs.is_zero() {
                    self.became_running();
                    vec![]
                } else {
                    vec![ArmStartTimer]
                }
            }
            (Starting, Input::SpawnFailed) => {
                self.state = Fatal;
                vec![CancelTimer]
            }
            (Starting, Input::StartSecsElapsed) => {
                self.became_running();
                vec![]
            }
            (Stopping, Input::Exited { .. }) => {
                self.state = Stopped;
                vec![CancelTimer]
            }
            (Starting, Input::Exited { status, .. }) => {
                if !wants_restart(cfg, &status) {
                    self.state = Exited;
                    return vec![CancelTimer];
                }
                let retries_left = match cfg.start_retries {
                    Retries::Infinite => true,
                    Retries::Limited(n) => self.retries < n,
                };
                if retries_left {
                    self.retries += 1;
                    self.backoff()
                } else {
                    self.state = Fatal;
                    vec![CancelTimer]
                }
            }
            (Running, Input::Exited { status, ran_for }) => {
                if ran_for >= cfg.backoff_reset {
                    self.backoff_step = 0;
                }
                if wants_restart(cfg, &status) {
                    self.backoff()
                } else {
                    self.state = Exited;
                    vec![CancelTimer]
                }
            }
            (Starting | Running, Input::Stop) => {
                self.state = Stopping;
                self.escalated = false;
                vec![SendStopSignal, ArmStopTimer]
            }
            (Backoff, Input::Stop | Input::Kill) => {
                self.state = Stopped;
                vec![CancelTimer]
            }
            (Starting | Running | Stopping, Input::Kill) => {
                if self.state != Stopping {
                    self.escalated = false;
                }
                self.state = Stopping;
                vec![CancelTimer, SendKill]
            }
            (Stopping, Input::StopTimeout) => {
                self.escalated = true;
                vec![SendKill]
            }
            _ => vec![],
        }
    }

    /// `starting` with no process yet: only the dependency inputs and a stop
    /// mean anything.
    fn step_waiting(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::DepsReady => {
                self.waiting = false;
                vec![Action::Spawn]
            }
            Input::DepFailed => {
                self.waiting = false;
                self.state = State::Fatal;
                vec![]
            }
            Input::DepStopped => {
                self.waiting = false;
                self.state = State::Stopped;
                vec![]
            }
            Input::Stop | Input::Kill => {
                self.waiting = false;
                self.state = State::Stopped;
                vec![Action::CancelTimer]
            }
            _ => vec![],
        }
    }

    fn became_running(&mut self) {
        self.state = State::Running;
        self.retries = 0;
    }

    fn backoff(&mut self) -> Vec<Action> {
        let step = self.backoff_step;
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.state = State::Backoff;
        vec![Action::CancelTimer, Action::ArmRetry { step }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn cfg() -> ProgramConfig {
        ProgramConfig::new("p", vec!["true".into()])
    }

    fn exit(code: i32, secs: u64) -> Input {
        Input::Exited {
            status: ExitStatus::exited(code),
            ran_for: Duration::from_secs(secs),
        }
    }

    fn running(cfg: &ProgramConfig) -> Machine {
        let mut m = Machine::default();
        m.step(Input::Start, cfg);
        m.step(Input::Spawned, cfg);
        m.step(Input::StartSecsElapsed, cfg);
        assert_eq!(m.state, State::Running);
        m
    }

    #[test]
    fn start_spawns_then_runs_after_start_secs() {
        let c = cfg();
        let mut m = Machine::default();
        assert_eq!(m.step(Input::Start, &c), [CancelTimer, Spawn]);
        assert_eq!(m.state, State::Starting);
        assert_eq!(m.step(Input::Spawned, &c), [ArmStartTimer]);
        assert_eq!(m.state, State::Starting);
        assert_eq!(m.step(Input::StartSecsElapsed, &c), []);
        assert_eq!(m.state, State::Running);
    }

    #[test]
    fn zero_start_secs_is_running_at_once() {
        let mut c = cfg();
        c.start_secs = Duration::ZERO;
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        assert_eq!(m.step(Input::Spawned, &c), []);
        assert_eq!(m.state, State::Running);
    }

    #[test]
    fn a_spawn_failure_is_fatal() {
        let c = cfg();
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        m.step(Input::SpawnFailed, &c);
        assert_eq!(m.state, State::Fatal);
        // And a new start tries again from scratch.
        assert_eq!(m.step(Input::Start, &c), [CancelTimer, Spawn]);
        assert_eq!(m.state, State::Starting);
    }

    #[test]
    fn start_of_a_live_program_changes_nothing() {
        let c = cfg();
        let mut m = running(&c);
        let before = m.clone();
        assert_eq!(m.step(Input::Start, &c), []);
        assert_eq!(m, before);
    }

    #[test]
    fn stop_signals_then_escalates_after_the_timeout() {
        let c = cfg();
        let mut m = running(&c);
        assert_eq!(m.step(Input::Stop, &c), [SendStopSignal, ArmStopTimer]);
        assert_eq!(m.state, State::Stopping);
        assert_eq!(m.step(Input::StopTimeout, &c), [SendKill]);
        assert!(m.escalated);
        assert_eq!(m.step(exit(0, 1), &c), [CancelTimer]);
        assert_eq!(m.state, State::Stopped);
    }

    #[test]
    fn a_stopped_program_is_not_restarted_whatever_the_policy() {
        let mut c = cfg();
        c.restart = RestartPolicy::Always;
        let mut m = running(&c);
        m.step(Input::Stop, &c);
        m.step(
            Input::Exited {
                status: ExitStatus::signaled(15, false),
                ran_for: Duration::from_secs(1),
            },
            &c,
        );
        assert_eq!(m.state, State::Stopped);
        assert!(!m.escalated);
    }

    #[test]
    fn kill_sends_sigkill_at_once() {
        let c = cfg();
        let mut m = running(&c);
        assert_eq!(m.step(Input::Kill, &c), [CancelTimer, SendKill]);
        assert_eq!(m.state, State::Stopping);
        assert!(!m.escalated);
        // Kill during a graceful stop also goes through.
        let mut m = running(&c);
        m.step(Input::Stop, &c);
        assert_eq!(m.step(Input::Kill, &c), [CancelTimer, SendKill]);
    }

    #[test]
    fn stop_of_a_program_in_backoff_cancels_the_retry() {
        let c = cfg();
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        m.step(Input::Spawned, &c);
        m.step(exit(1, 0), &c);
        assert_eq!(m.state, State::Backoff);
        assert_eq!(m.step(Input::Stop, &c), [CancelTimer]);
        assert_eq!(m.state, State::Stopped);
        // A late retry timer is ignored.
        assert_eq!(m.step(Input::Retry, &c), []);
        assert_eq!(m.state, State::Stopped);
    }

    #[test]
    fn stop_of_a_program_without_a_process_changes_nothing() {
        let c = cfg();
        for state in [State::Stopped, State::Exited, State::Fatal] {
            let mut m = Machine {
                state,
                ..Machine::default()
            };
            assert_eq!(m.step(Input::Stop, &c), []);
            assert_eq!(m.step(Input::Kill, &c), []);
            assert_eq!(m.state, state);
        }
    }

    #[test]
    fn exits_while_starting_are_retried_then_fatal() {
        let c = cfg(); // start_retries = 3
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        for step in 0..3 {
            m.step(Input::Spawned, &c);
            assert_eq!(m.step(exit(1, 0), &c), [CancelTimer, ArmRetry { step }]);
            assert_eq!(m.state, State::Backoff);
            assert_eq!(m.step(Input::Retry, &c), [Spawn]);
        }
        m.step(Input::Spawned, &c);
        m.step(exit(1, 0), &c);
        assert_eq!(m.state, State::Fatal);
    }

    #[test]
    fn infinite_retries_never_end_in_fatal() {
        let mut c = cfg();
        c.start_retries = Retries::Infinite;
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        for _ in 0..1000 {
            m.step(Input::Spawned, &c);
            m.step(exit(1, 0), &c);
            assert_eq!(m.state, State::Backoff);
            m.step(Input::Retry, &c);
        }
    }

    #[test]
    fn on_failure_restarts_only_unlisted_exits() {
        let mut c = cfg();
        c.exit_codes = vec![0, 2];
        for (code, restarted) in [(0, false), (2, false), (1, true), (3, true)] {
            let mut m = running(&c);
            m.step(exit(code, 5), &c);
            let expected = if restarted {
                State::Backoff
            } else {
                State::Exited
            };
            assert_eq!(m.state, expected, "exit {code}");
        }
        let mut m = running(&c);
        m.step(
            Input::Exited {
                status: ExitStatus::signaled(9, false),
                ran_for: Duration::from_secs(5),
            },
            &c,
        );
        assert_eq!(m.state, State::Backoff, "a signal is a failure");
    }

    #[test]
    fn always_and_never() {
        let mut c = cfg();
        c.restart = RestartPolicy::Always;
        let mut m = running(&c);
        m.step(exit(0, 5), &c);
        assert_eq!(m.state, State::Backoff);
        c.restart = RestartPolicy::Never;
        let mut m = running(&c);
        m.step(exit(1, 5), &c);
        assert_eq!(m.state, State::Exited);
        // Never also holds during start_secs: no retry.
        let mut m = Machine::default();
        m.step(Input::Start, &c);
        m.step(Input::Spawned, &c);
        m.step(exit(1, 0), &c);
        assert_eq!(m.state, State::Exited);
    }

    #[test]
    fn backoff_steps_grow_and_reset_after_a_long_run() {
        let mut c = cfg();
        c.restart = RestartPolicy::Always;
        let mut m = running(&c);
        assert_eq!(m.step(exit(1, 0), &c)[1], ArmRetry { step: 0 });
        m.step(Input::Retry, &c);
        m.step(Input::Spawned, &c);
        m.step(Input::StartSecsElapsed, &c);
        assert_eq!(m.step(exit(1, 2), &c)[1], ArmRetry { step: 1 });
        m.step(Input::Retry, &c);
        m.step(Input::Spawned, &c);
        m.step(Input::StartSecsElapsed, &c);
        // A run of backoff_reset (10 s) or more starts over at step 0.
        assert_eq!(m.step(exit(1, 10), &c)[1], ArmRetry { step: 0 });
    }

    #[test]
    fn an_adopted_process_is_running_and_stops_like_any_other() {
        let c = cfg();
        let mut m = Machine::default();
        assert_eq!(m.step(Input::Adopted, &c), []);
        assert_eq!(m.state, State::Running);
        assert_eq!(m.step(Input::Stop, &c), [SendStopSignal, ArmStopTimer]);
        // Adoption means nothing to a program that already runs.
        let mut m = running(&c);
        assert_eq!(m.step(Input::Adopted, &c), []);
        assert_eq!(m.state, State::Running);
    }

    #[test]
    fn a_queued_start_waits_for_its_dependencies() {
        let c = cfg();
        let mut m = Machine::default();
        assert_eq!(m.step(Input::Queue, &c), [CancelTimer]);
        assert_eq!(m.state, State::Starting);
        assert!(m.waiting);
        // Nothing but the dependency inputs or a stop moves it.
        assert_eq!(m.step(Input::StartSecsElapsed, &c), []);
        assert_eq!(m.step(Input::Start, &c), []);
        assert_eq!(m.state, State::Starting);
        assert_eq!(m.step(Input::DepsReady, &c), [Spawn]);
        assert!(!m.waiting);
        assert_eq!(m.step(Input::Spawned, &c), [ArmStartTimer]);
    }

    #[test]
    fn a_queued_start_fails_with_its_dependency_or_is_stopped() {
        let c = cfg();
        let mut m = Machine::default();
        m.step(Input::Queue, &c);
        assert_eq!(m.step(Input::DepFailed, &c), []);
        assert_eq!(m.state, State::Fatal);
        let mut m = Machine::default();
        m.step(Input::Queue, &c);
        assert_eq!(m.step(Input::Stop, &c), [CancelTimer]);
        assert_eq!(m.state, State::Stopped);
        assert!(!m.waiting);
    }

    #[test]
    fn a_queued_start_is_called_off_when_its_dependency_is_stopped() {
        let c = cfg();
        let mut m = Machine::default();
        m.step(Input::Queue, &c);
        assert_eq!(m.step(Input::DepStopped, &c), []);
        assert_eq!(m.state, State::Stopped);
        assert!(!m.waiting);
        // It can be started again as usual.
        assert_eq!(m.step(Input::Start, &c), [CancelTimer, Spawn]);
        assert_eq!(m.state, State::Starting);
    }

    #[test]
    fn dependency_endings_mean_nothing_to_a_program_not_waiting() {
        let c = cfg();
        for input in [Input::DepFailed, Input::DepStopped, Input::DepsReady] {
            // Started with its own process, or running: not waiting.
            let mut m = Machine::default();
            m.step(Input::Start, &c);
            let before = m.clone();
            assert_eq!(m.step(input, &c), [], "{input:?} while starting");
            assert_eq!(m, before);
            let mut m = running(&c);
            let before = m.clone();
            assert_eq!(m.step(input, &c), [], "{input:?} while running");
            assert_eq!(m, before);
            // Nor to one without a process.
            let mut m = Machine::default();
            assert_eq!(m.step(input, &c), [], "{input:?} while stopped");
            assert_eq!(m.state, State::Stopped);
        }
    }

    #[test]
    fn backoff_delay_doubles_up_to_the_cap_with_bounded_jitter() {
        let c = cfg(); // 1 s .. 60 s
        assert_eq!(backoff_delay(&c, 0, 0.5), Duration::from_secs(1));
        assert_eq!(backoff_delay(&c, 3, 0.5), Duration::from_secs(8));
        assert_eq!(backoff_delay(&c, 10, 0.5), Duration::from_secs(60));
        assert_eq!(backoff_delay(&c, 1000, 1.0), Duration::from_secs(60));
        let low = backoff_delay(&c, 2, 0.0);
        let high = backoff_delay(&c, 2, 1.0);
        assert_eq!(low, Duration::from_millis(3600));
        assert_eq!(high, Duration::from_millis(4400));
        let mut z = cfg();
        z.backoff_initial = Duration::ZERO;
        assert_eq!(backoff_delay(&z, 5, 1.0), Duration::ZERO);
    }

    #[test]
    fn backoff_delay_of_the_largest_durations_does_not_panic() {
        let mut c = cfg();
        c.backoff_initial = Duration::MAX;
        c.backoff_max = Duration::MAX;
        assert_eq!(backoff_delay(&c, 3, 1.0), Duration::MAX);
    }
}
