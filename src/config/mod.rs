//! The configuration: TOML text -> a validated [`Config`] with real
//! durations, signals and paths. Every problem is collected and reported at
//! once, each as `file:line:col: message` (SPEC §6).
//!
//! The TOML is parsed into a spanned tree ([`toml::de::DeTable`]) and walked
//! key by key, so an unknown key, a wrong type and a bad value are each
//! reported where they stand, with a suggestion for a misspelt key.

mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::signals::Sig;

pub use walk::{closest_name, name_problem, parse_duration, parse_size};

/// The whole configuration of one `supd`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The `[supd]` table.
    pub supd: SupdConfig,
    /// `[program.NAME]` tables, by name.
    pub programs: BTreeMap<String, ProgramConfig>,
    /// `[pool.NAME]` tables: pools for one-shot runs (`supctl run --pool`),
    /// by name, with their sizes.
    pub run_pools: BTreeMap<String, u32>,
}

/// The `[supd]` table: settings of the daemon itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SupdConfig {
    /// `socket`: the control socket's path (relative to the config file's
    /// folder). `None` leaves it to `--socket` or the default
    /// ([`crate::client::default_socket_path`]).
    pub socket: Option<PathBuf>,
    /// `shutdown_timeout` (default 30 s): how long shutdown waits for
    /// programs before SIGKILL of what is left.
    pub shutdown_timeout: Duration,
    /// `allow_users`: user names or uids, besides root and the daemon's own
    /// user, whose connections are accepted. Empty by default.
    pub allow_uids: Vec<u32>,
    /// `socket_group`: a group name or gid; the socket is then created
    /// mode 0660 with that group (else 0600), so that allowed users in it
    /// can connect.
    pub socket_group: Option<u32>,
    /// `state_dir`: where supd keeps its state file (desired states, pool
    /// sizes). Default: `$STATE_DIRECTORY` (systemd's `StateDirectory=`),
    /// else the control socket's folder.
    pub state_dir: Option<PathBuf>,
    /// `include`: glob patterns (relative to the config file's folder) of
    /// files whose `[program.NAME]` tables are merged in.
    pub include: Vec<String>,
    /// `log_dir`: where programs' log files go. Default: `$LOGS_DIRECTORY`
    /// (systemd's `LogsDirectory=`), else `logs` in the state folder.
    pub log_dir: Option<PathBuf>,
}

/// Where a program's output goes (the `stdout` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `"log"` (default): log files in `log_dir`, the ring, `logs -f`.
    Log,
    /// `"journal"`: journald, with the program's name as `SYSLOG_IDENTIFIER`
    /// (and the ring and `logs -f` too).
    Journal,
    /// `"null"`: `/dev/null`; nothing is kept.
    Null,
}

/// How a program's output is captured and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// `stdout` (default `"log"`): where stdout and stderr go.
    pub mode: OutputMode,
    /// `redirect_stderr` (default false): stderr goes where stdout goes
    /// (one file, `NAME.log`).
    pub redirect_stderr: bool,
    /// `log_max_bytes` (default 10 MiB): a log file is rotated before it
    /// would pass this size.
    pub max_bytes: u64,
    /// `log_backups` (default 5): rotated files kept (`NAME.out.log.1` ...).
    pub backups: u32,
    /// `log_timestamps` (default false): each line in the file starts with
    /// an RFC 3339 time.
    pub timestamps: bool,
    /// Whether log files are written at all (not a key: false for
    /// `supctl run`, whose output goes back to its caller, and to the ring,
    /// but leaves no file behind).
    pub files: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            mode: OutputMode::Log,
            redirect_stderr: false,
            max_bytes: 10 * 1024 * 1024,
            backups: 5,
            timestamps: false,
            files: true,
        }
    }
}

/// When a program is started again after its process ended (SPEC §6
/// `restart`; supervisord's `autorestart`, systemd's `Restart=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always, whatever the exit status.
    Always,
    /// Unless it exited with one of `exit_codes` (default).
    OnFailure,
    /// Never.
    Never,
}

/// What happens to a program's descendants that outlive its main process
/// (supervisord's `stopasgroup`/`killasgroup`, systemd's `KillMode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// `"kill"`: SIGKILL them when the main process ends (and with the
    /// program's stop), whether they stayed in its process group or not.
    Kill,
    /// `"keep"`: leave them running; they are listed under the program's
    /// `orphans` in status, and still reaped by supd when they end. A stop
    /// signals the main process only (systemd's `KillMode=process`).
    Keep,
}

/// How many times a program that keeps exiting during `start_secs` is tried
/// before it is `fatal` (supervisord's `startretries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// This many retries after the first try.
    Limited(u32),
    /// `"infinite"`: for ever (with backoff).
    Infinite,
}

/// One `[program.NAME]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramConfig {
    /// The table's name.
    pub name: String,
    /// `command`: argv; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// `cwd`: the working folder (relative to the config file's folder);
    /// default: supd's own.
    pub cwd: Option<PathBuf>,
    /// `env`: variables added to (or replacing) supd's environment.
    pub env: BTreeMap<String, String>,
    /// `autostart` (default true): started when supd starts.
    pub autostart: bool,
    /// `restart` (default `"on-failure"`).
    pub restart: RestartPolicy,
    /// `exit_codes` (default `[0]`): exits that count as success for `on-failure`.
    pub exit_codes: Vec<i32>,
    /// `start_secs` (default 1 s): up this long counts as started.
    pub start_secs: Duration,
    /// `start_retries` (default 3, or `"infinite"`).
    pub start_retries: Retries,
    /// `stop_signal` (default TERM).
    pub stop_signal: Sig,
    /// `stop_timeout` (default 10 s): then SIGKILL.
    pub stop_timeout: Duration,
    /// `daemon` (default false): see SPEC §2.
    pub daemon: bool,
    /// `orphans` (default `"kill"`): what happens to descendants that outlive
    /// the program's main process.
    pub orphans: OrphanPolicy,
    /// `backoff_initial` (default 1 s): the first delay before a restart.
    pub backoff_initial: Duration,
    /// `backoff_max` (default 60 s): the delay doubles up to this.
    pub backoff_max: Duration,
    /// `backoff_reset` (default 10 × `start_secs`, at least 10 s): a run this
    /// long resets the delay to `backoff_initial`.
    pub backoff_reset: Duration,
    /// `instances`: `Some(n)` makes the program a pool of n copies named
    /// `NAME:0` … `NAME:n-1` (`multiprocessing.Pool(n)`); `None` (the key
    /// absent) is a single program named `NAME`.
    pub instances: Option<u32>,
    /// `depends_on`: programs that must be `running` before this one starts;
    /// shutdown stops this one before them.
    pub depends_on: Vec<String>,
    /// `user` (a name or uid): run as this user, with its primary group and
    /// supplementary groups, and `HOME`, `USER`, `LOGNAME` set. Needs root.
    pub user: Option<RunAs>,
    /// `group` (a name or gid): the primary group, over the user's.
    pub group: Option<u32>,
    /// `umask` (`"022"` or `0o022`): the file mode creation mask.
    pub umask: Option<u32>,
    /// `limit_nofile`: RLIMIT_NOFILE, soft and hard (a number or `"infinity"`).
    pub limit_nofile: Option<Limit>,
    /// `limit_core`: RLIMIT_CORE in bytes, soft and hard (a number or `"infinity"`).
    pub limit_core: Option<Limit>,
    /// `stdout`, `redirect_stderr`, `log_max_bytes`, `log_backups`,
    /// `log_timestamps`: how its output is kept.
    pub output: OutputConfig,
}

/// The user a program runs as, resolved when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Every group it belongs to (getgrouplist(3)), primary included.
    pub groups: Vec<u32>,
    /// Its home folder.
    pub home: PathBuf,
}

/// A resource limit: a value, or `None` for RLIM_INFINITY (`"infinity"`).
pub type Limit = Option<u64>;

impl ProgramConfig {
    /// A program running `command` with every other key at its default;
    /// used by tests and by transient programs.
    pub fn new(name: &str, command: Vec<String>) -> Self {
        ProgramConfig {
            name: name.to_string(),
            command,
            cwd: None,
            env: BTreeMap::new(),
            autostart: true,
            restart: RestartPolicy::OnFailure,
            exit_codes: vec![0],
            start_secs: Duration::from_secs(1),
            start_retries: Retries::Limited(3),
            stop_signal: Sig(libc::SIGTERM),
            stop_timeout: Duration::from_secs(10),
            daemon: false,
            orphans: OrphanPolicy::Kill,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset: Duration::from_secs(10),
            instances: None,
            depends_on: Vec::new(),
            user: None,
            group: None,
            umask: None,
            limit_nofile: None,
            limit_core: None,
            output: OutputConfig::default(),
        }
    }
}

/// One problem in a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The most copies one pool may have.
pub const MAX_INSTANCES: u32 = 10_000;

/// The longest duration a configuration may give, for any key: one year
/// (`"1y"`, 365.25 days, as humantime counts it). Far beyond any sensible
/// timeout or delay, and small enough that no clock arithmetic on it
/// (`start_secs` × 10 for the default `backoff_reset`, a deadline of now +
/// `backoff_max`) can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// The largest `log_max_bytes`: 1 TiB (`"1024GiB"`), which is no limit in
/// practice.
pub const MAX_LOG_BYTES: u64 = 1 << 40;

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigErrors`]: the file cannot be read (`file:1:1: cannot read ...`),
    /// or every syntax, key, type and value problem in it.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths in it are
    /// taken from `path`'s folder).
    ///
    /// # Errors
    /// [`ConfigErrors`] with every problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        walk::parse(text, path)
    }
}

#[cfg(test)]
mod tests;
