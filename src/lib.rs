//! sup: a process supervisor for Linux. This library holds everything the
//! two binaries share: `supd` (the daemon, `src/main.rs`) and `supctl` (its
//! control CLI, `ctl/main.rs`).
//!
//! Who owns what, who talks to whom:
//! - [`supervisor`] owns all program state, as one actor task fed by a
//!   channel; its lifecycle rules are the pure [`supervisor::machine`].
//! - [`spawn`] is the only fork/exec; [`reaper`] the only `waitpid`. Both
//!   run on the daemon's main thread, inside the supervisor.
//! - [`server`] accepts control connections and turns each JSON-RPC line
//!   ([`protocol`]) into a call on the supervisor's [`supervisor::Handle`].
//! - [`daemon`] wires config, socket, signals and supervisor together;
//!   [`notify`] tells systemd about it (readiness, status, watchdog).
//! - [`logs`] keeps programs' output: one task per pipe drains it into log
//!   files (rotated by size), a ring and a broadcast channel for `logs -f`
//!   and `run`; a `daemon = false` program writes its own file, which
//!   [`logs`] follows with inotify ([`watch`]: one instance for all).
//! - [`client`] is the blocking client `supctl` and the tests use.
//! - [`config`] turns TOML into a validated [`config::Config`].
//! - [`observability`] sends supd's own logs to journald or stderr;
//!   [`cli`] is supd's command line.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod logs;
pub mod notify;
pub mod observability;
pub mod procfs;
pub mod protocol;
pub mod reaper;
pub mod sentinel;
pub mod server;
pub mod signals;
pub mod spawn;
pub mod state;
pub mod supervisor;
pub mod watch;
