//! `supctl`: the control CLI of `supd`. One function a verb; each sends one
//! request over the socket (the library's [`sup::client`]) and renders the
//! answer as an aligned table or line, or as JSON with `--json`.
//!
//! Exit statuses (README, "supctl"): 0 success; 1 failure (the reason on stderr, one
//! line); 2 usage; `status`: 3 when any listed program is not running, 4 for
//! an unknown name; `wait`: the program's exit code, 128+N after signal N,
//! 124 on timeout.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};
use sup::client::{Client, ClientError, default_socket_path};
use sup::protocol::{
    ErrorKind, Event, Outcome, ProgramsResult, ReloadResult, State, VersionResult,
};

/// Control a running supd: start, stop, signal, inspect and wait for its programs.
#[derive(Debug, Parser)]
#[command(
    name = "supctl",
    version,
    long_about = "Control a running supd: start, stop, signal, inspect and wait for its programs.\n\n\
                  supctl talks to supd over its Unix socket (JSON-RPC 2.0, one message a line). \
                  Each verb is one request; --json prints the daemon's answer as JSON for \
                  scripts (one document, or one object a line for streams).\n\n\
                  The socket is --socket, else $SUPD_SOCKET, else /run/supd/supd.sock for root \
                  and $XDG_RUNTIME_DIR/supd.sock for other users: where supd listens by default.\n\n\
                  Exit status: 0 success; 1 failure (one line on stderr); 2 usage; status: 3 when a \
                  listed program is not running, 4 for an unknown name; wait: the program's exit \
                  code, 128+N after signal N, 124 on timeout.",
    after_help = "Examples:\n  \
                  supctl status                       every program, one row each\n  \
                  supctl restart web                  stop (TERM, then KILL after stop_timeout), start\n  \
                  supctl stop --all\n  \
                  supctl signal web HUP\n  \
                  supctl wait job --timeout 30 && echo done\n  \
                  supctl --json status | jq '.[] | select(.state != \"running\")'\n  \
                  supctl completions bash > /etc/bash_completion.d/supctl\n  \
                  supctl man --out /usr/local/share/man/man1"
)]
struct Cli {
    /// The control socket of the supd to talk to.
    #[arg(
        long,
        short = 's',
        global = true,
        env = "SUPD_SOCKET",
        value_name = "PATH"
    )]
    socket: Option<PathBuf>,

    /// Machine output: one JSON document (one object a line for streams).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Args)]
struct Select {
    /// Program names (a pool's name means all of its members, NAME:0 ...).
    names: Vec<String>,
    /// Every program.
    #[arg(long, short = 'a', conflicts_with = "names")]
    all: bool,
}

impl Select {
    fn params(&self) -> Value {
        json!({ "names": self.names, "all": self.all })
    }
}

/// Which man page `supctl man` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Page {
    /// supctl(1).
    Supctl,
    /// supd(1).
    Supd,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Show programs: name, state, pid, uptime, restarts, returncode.
    #[command(
        long_about = "Show one row a program: name, state, pid, uptime, restarts, returncode, and \
                      why it is not running. With no NAME, every program. The state column is \
                      coloured when stdout is a terminal (NO_COLOR turns that off).\n\n\
                      Exit status: 0 when every listed program is running, 3 when any is not, \
                      4 for an unknown name.",
        after_help = "Examples:\n  \
                      supctl status\n  \
                      supctl status web worker\n  \
                      supctl status web >/dev/null || echo 'web is down'\n  \
                      supctl --json status | jq -r '.[] | \"\\(.name) \\(.state)\"'"
    )]
    Status {
        /// Programs to show (default: all).
        names: Vec<String>,
    },
    /// Start programs; returns once each is running or has failed.
    #[command(
        long_about = "Start programs. Returns once each is running (up for start_secs), has \
                      finished its job during start_secs with an exit code listed in exit_codes, \
                      or has failed (fatal after start_retries). A program that is already \
                      running is an error (already_running), as Process.start() twice is.",
        after_help = "Examples:\n  supctl start web\n  supctl start web worker\n  supctl start --all"
    )]
    Start(Select),
    /// Stop programs: stop_signal, then SIGKILL after stop_timeout; returns once each has exited.
    #[command(
        long_about = "Stop programs: stop_signal (default TERM, with SIGCONT) to each program's \
                      process group, then SIGKILL after stop_timeout, all named programs in \
                      parallel. Returns once each has exited, saying whether the stop escalated to \
                      SIGKILL. Stopping a program that has no process succeeds and changes nothing.",
        after_help = "Examples:\n  supctl stop web\n  supctl stop --all\n  supctl --json stop --all | jq -r '.[] | select(.escalated) | .name'"
    )]
    Stop(Select),
    /// Stop, then start.
    #[command(
        long_about = "Stop programs (as `stop`), then start them again (as `start`).",
        after_help = "Examples:\n  supctl restart web\n  supctl restart --all"
    )]
    Restart(Select),
    /// Send SIGKILL now.
    #[command(
        long_about = "Send SIGKILL to each program's process group now, without stop_signal or \
                      stop_timeout. A program with no process is an error (not_running).",
        after_help = "Examples:\n  supctl kill web"
    )]
    Kill(Select),
    /// Send a signal (HUP, SIGHUP or 1) to a program's main process.
    #[command(
        long_about = "Send a signal to a program's main process (its whole process group with \
                      --group). The signal is a name, with or without SIG, or a number. A \
                      program with no process is an error (not_running).",
        after_help = "Examples:\n  supctl signal web HUP\n  supctl signal web SIGUSR1\n  supctl signal worker 15 --group"
    )]
    Signal {
        /// The program.
        name: String,
        /// The signal: a name such as HUP or SIGHUP, or a number.
        signal: String,
        /// Send it to the whole process group instead.
        #[arg(long)]
        group: bool,
    },
    /// Wait for the current run to end; exit with its code (128+N after signal N, 124 on timeout).
    #[command(
        long_about = "Wait for the program's current run to end, like Process.join(timeout), and \
                      exit with its status: the exit code, 128+N when signal N killed it, 124 \
                      when --timeout passed first (the program keeps running). A program that is \
                      not running answers at once with how its last run ended; one never started \
                      is an error (not_running). Many waiters at once are fine.",
        after_help = "Examples:\n  \
                      supctl wait job; echo \"job ended with $?\"\n  \
                      supctl wait job --timeout 2.5 || echo 'still running (124) or failed'\n  \
                      supctl --json wait job"
    )]
    Wait {
        /// The program.
        name: String,
        /// Give up after SECS seconds (the program keeps running).
        #[arg(long, short = 't', value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<f64>,
    },
    /// Resize a pool: new members are started, the highest-numbered stopped first.
    #[command(
        long_about = "Resize a pool (a program with `instances`): members NAME:N are added and \
                      started, or stopped and forgotten from the highest-numbered down. Returns \
                      once each changed member is up or gone.",
        after_help = "Examples:\n  supctl scale worker 4\n  supctl scale worker 1"
    )]
    Scale {
        /// The pool (a program with `instances`).
        name: String,
        /// Its new size.
        instances: u32,
    },
    /// Stream state changes as they happen, until supd stops.
    #[command(
        long_about = "Print each state change as it happens (time, name, from -> to, pid, \
                      returncode), until supd stops or stdout is closed. With --json, one object \
                      a line: name, from, to, pid, returncode, exit_code, signal, escalated, time.",
        after_help = "Examples:\n  \
                      supctl events\n  \
                      supctl --json events | jq -c 'select(.to == \"fatal\")'"
    )]
    Events,
    /// Re-read the configuration and apply the difference.
    #[command(
        long_about = "Re-read supd's configuration file and apply the difference: added programs \
                      are created (and started if autostart), removed ones stopped and forgotten, \
                      changed ones restarted with their new definition, unchanged ones left alone \
                      (same pid). Exit 0 once the new configuration is applied (a program that \
                      then fails to start is reported on stderr; supctl status shows it). A \
                      configuration with any error changes nothing: every error is printed as \
                      file:line:col and supctl exits 1. SIGHUP to supd does the same.",
        after_help = "Examples:\n  \
                      supctl reload\n  \
                      supctl --json reload | jq .changed"
    )]
    Reload,
    /// Print a program's recent output; -f follows it live.
    #[command(
        long_about = "Print the last LINES lines a program wrote (from supd's memory, then from its \
                      log file), stdout and stderr interleaved as they came. With -f, keep \
                      printing new lines as they come, across restarts of the program, until \
                      interrupted. stderr lines go to stderr (unless --json). With --json, one \
                      object a line: name, stream, line, time.",
        after_help = "Examples:\n  \
                      supctl logs web\n  \
                      supctl logs web -n 100 --stderr\n  \
                      supctl logs -f web\n  \
                      supctl --json logs web | jq -r .line"
    )]
    Logs {
        /// The program.
        name: String,
        /// How many recent lines.
        #[arg(long, short = 'n', value_name = "LINES", default_value_t = 10)]
        lines: usize,
        /// Follow: print new lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only stderr.
        #[arg(long, conflicts_with = "stdout")]
        stderr: bool,
        /// Only stdout.
        #[arg(long)]
        stdout: bool,
    },
    /// Reopen every log file (after an external logrotate moved them).
    #[command(
        long_about = "Close every program's log file; each is opened again (created anew if it \
                      was moved away) at its next line. SIGUSR1 to supd does the same.",
        after_help = "Examples:\n  mv /var/log/supd/web.out.log /archive/ && supctl reopen-logs"
    )]
    ReopenLogs,
    /// Run a one-shot command under supd; stream its output; exit with its status.
    #[command(
        long_about = "Run CMD as a transient program under supd, like subprocess.run: it shows in \
                      status while it runs and is forgotten after. Its stdout and stderr stream \
                      back to supctl's stdout and stderr; supctl's stdin is forwarded to it. \
                      supctl exits as `wait` does: the exit code, 128+N after signal N, 124 when \
                      --timeout passed (the program was stopped: stop signal, then SIGKILL 2 s \
                      later). Interrupting supctl (Ctrl-C) or losing the connection stops the \
                      program. With --pool, it waits in that [pool.NAME]'s queue (state queued) \
                      while the pool is full.",
        after_help = "Examples:\n  \
                      supctl run -- make -j8\n  \
                      echo data | supctl run -- wc -l\n  \
                      supctl run --timeout 60 --name backup --env LEVEL=9 --cwd /srv -- ./backup.sh\n  \
                      supctl run --pool encoders -- ffmpeg -i in.mkv out.mp4"
    )]
    Run {
        /// Stop it after SECS seconds and exit 124.
        #[arg(long, short = 't', value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<f64>,
        /// Its name in status (default: run-N).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// A variable for it (repeatable).
        #[arg(long = "env", short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Its working folder (default: supctl's own).
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// Queue it in this [pool.NAME].
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Forget programs that are not running.
    #[command(
        long_about = "Forget programs that have no process (stop them first). A running program \
                      is an error (running).",
        after_help = "Examples:\n  supctl stop web && supctl remove web"
    )]
    Remove {
        /// Program names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop every program and then supd; returns once supd has exited.
    #[command(
        long_about = "Shut supd down: daemon programs are stopped, the others are given \
                      shutdown_timeout to finish, then stopped. Returns once supd has exited. \
                      SIGTERM or SIGINT to supd does the same.",
        after_help = "Examples:\n  supctl shutdown"
    )]
    Shutdown,
    /// Show the daemon's version and protocol.
    #[command(after_help = "Examples:\n  supctl version\n  supctl --json version")]
    Version,
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell).
    #[command(
        long_about = "Print supctl's completion script for SHELL to stdout. Needs no running supd.",
        after_help = "Examples:\n  \
                      supctl completions bash > /etc/bash_completion.d/supctl\n  \
                      supctl completions zsh > \"${fpath[1]}/_supctl\"\n  \
                      supctl completions fish > ~/.config/fish/completions/supctl.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a man page to stdout, or write them all with --out DIR.
    #[command(
        long_about = "Print the man page of supctl (or of supd) to stdout in roff. With --out \
                      DIR, write every page into DIR instead: supctl.1, supctl-VERB.1 for each \
                      verb, and supd.1. Needs no running supd.",
        after_help = "Examples:\n  \
                      supctl man | man -l -\n  \
                      supctl man supd | man -l -\n  \
                      supctl man --out /usr/local/share/man/man1 && mandb -q"
    )]
    Man {
        /// The page to print.
        #[arg(value_enum, default_value_t = Page::Supctl, conflicts_with = "out")]
        page: Page,
        /// Write every page into this folder (created if missing) instead.
        #[arg(long, short = 'o', value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// What a verb ends with.
enum Failure {
    /// A message for stderr and an exit status.
    Message(String, u8),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Message(e.to_string(), 1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    let verb_name = verb_name(&cli.verb);
    match run(&cli, &socket) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Message(message, code)) => {
            let _ = writeln!(io::stderr(), "supctl {verb_name}: {message}");
            ExitCode::from(code)
        }
    }
}

fn verb_name(verb: &Verb) -> &'static str {
    match verb {
        Verb::Status { .. } => "status",
        Verb::Start(_) => "start",
        Verb::Stop(_) => "stop",
        Verb::Restart(_) => "restart",
        Verb::Kill(_) => "kill",
        Verb::Signal { .. } => "signal",
        Verb::Wait { .. } => "wait",
        Verb::Remove { .. } => "remove",
        Verb::Scale { .. } => "scale",
        Verb::Events => "events",
        Verb::Logs { .. } => "logs",
        Verb::ReopenLogs => "reopen-logs",
        Verb::Run { .. } => "run",
        Verb::Reload => "reload",
        Verb::Shutdown => "shutdown",
        Verb::Version => "version",
        Verb::Completions { .. } => "completions",
        Verb::Man { .. } => "man",
    }
}

fn run(cli: &Cli, socket: &std::path::Path) -> Result<u8, Failure> {
    // Verbs that need no daemon.
    match &cli.verb {
        Verb::Completions { shell } => return completions(*shell),
        Verb::Man { page, out } => return man(*page, out.as_deref()),
        _ => {}
    }
    let mut client = Client::connect(socket)?;
    let json_out = cli.json;
    match &cli.verb {
        Verb::Status { names } => status(&mut client, names, json_out),
        Verb::Start(sel) => programs(&mut client, "start", sel.params(), json_out),
        Verb::Stop(sel) => programs(&mut client, "stop", sel.params(), json_out),
        Verb::Restart(sel) => programs(&mut client, "restart", sel.params(), json_out),
        Verb::Kill(sel) => programs(&mut client, "kill", sel.params(), json_out),
        Verb::Remove { names } => {
            programs(&mut client, "remove", json!({ "names": names }), json_out)
        }
        Verb::Signal {
            name,
            signal,
            group,
        } => programs(
            &mut client,
            "signal",
            json!({ "names": [name], "signal": signal, "group": group }),
            json_out,
        ),
        Verb::Wait { name, timeout } => wait(&mut client, name, *timeout, json_out),
        Verb::Scale { name, instances } => programs(
            &mut client,
            "scale",
            json!({ "name": name, "instances": instances }),
            json_out,
        ),
        Verb::Events => events(&mut client, json_out),
        Verb::Logs {
            name,
            lines,
            follow,
            stderr,
            stdout,
        } => {
            let stream = match (stderr, stdout) {
                (true, _) => "stderr",
                (_, true) => "stdout",
                _ => "both",
            };
            logs(&mut client, name, *lines, *follow, stream, json_out)
        }
        Verb::ReopenLogs => {
            let v = client.call("reopen_logs", json!({}))?;
            if json_out {
                print_json(&v);
            } else {
                out(&format!(
                    "reopened the log files of {} programs",
                    v["reopened"].as_u64().unwrap_or(0)
                ));
            }
            Ok(0)
        }
        Verb::Run {
            timeout,
            name,
            env,
            cwd,
            pool,
            command,
        } => {
            let mut vars = serde_json::Map::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(Failure::Message(format!("--env {kv:?}: give K=V"), 2));
                };
                vars.insert(k.to_string(), json!(v));
            }
            let cwd =
                match cwd {
                    Some(dir) => Some(std::path::absolute(dir).map_err(|e| {
                        Failure::Message(format!("--cwd {}: {e}", dir.display()), 2)
                    })?),
                    None => std::env::current_dir().ok(),
                };
            let params = json!({
                "command": command, "name": name, "env": vars, "cwd": cwd,
                "pool": pool, "timeout": timeout,
            });
            run_command(client, params, json_out)
        }
        Verb::Reload => reload(&mut client, json_out),
        Verb::Shutdown => {
            client.call("shutdown", json!({}))?;
            client.wait_closed()?;
            if json_out {
                print_json(&json!({ "shutdown": true }));
            } else {
                out("supd has shut down");
            }
            Ok(0)
        }
        Verb::Completions { .. } | Verb::Man { .. } => unreachable!("answered above"),
        Verb::Version => {
            let v: VersionResult = decode(client.call("version", json!({}))?)?;
            if json_out {
                print_json(&v);
            } else {
                out(&format!(
                    "supctl {}\nsupd {} (protocol {}, pid {})",
                    env!("CARGO_PKG_VERSION"),
                    v.version,
                    v.protocol,
                    v.pid
                ));
            }
            Ok(0)
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v)
        .map_err(|e| Failure::Message(format!("supd sent an answer supctl cannot read: {e}"), 1))
}

/// Writes `bytes` to stdout. A closed pipe (`supctl man | head`) is not an
/// error: the reader has what it wanted.
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Failure::Message(format!("writing to stdout: {e}"), 1))
        }
        _ => Ok(()),
    }
}

/// `completions SHELL`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "supctl", &mut script);
    write_stdout(&script)?;
    Ok(0)
}

/// `man [PAGE]`: one page on stdout; `man --out DIR`: every page in DIR.
fn man(page: Page, out_dir: Option<&Path>) -> Result<u8, Failure> {
    let supd = || clap_mangen::Man::new(sup::cli::supd_command()).source(source());
    let Some(dir) = out_dir else {
        let mut roff = Vec::new();
        let rendered = match page {
            Page::Supctl => clap_mangen::Man::new(Cli::command())
                .source(source())
                .render(&mut roff),
            Page::Supd => supd().render(&mut roff),
        };
        rendered.map_err(|e| Failure::Message(format!("rendering the man page: {e}"), 1))?;
        write_stdout(&roff)?;
        return Ok(0);
    };
    let failed = |e: io::Error| Failure::Message(format!("{}: {e}", dir.display()), 1);
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut written = Vec::new();
    // Built, so that each verb's page is named and titled supctl-VERB.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, dir, &mut written).map_err(failed)?;
    written.push(supd().generate_to(dir).map_err(failed)?);
    for path in &written {
        out(&path.display().to_string());
    }
    Ok(0)
}

/// The footer of every page: `sup 0.1.0`.
fn source() -> String {
    format!("sup {}", env!("CARGO_PKG_VERSION"))
}

/// Writes `cmd`'s page, then one for each verb (`supctl-stop.1`), into `dir`.
fn man_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    written.push(
        clap_mangen::Man::new(cmd.clone())
            .source(source())
            .generate_to(dir)?,
    );
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, written)?;
    }
    Ok(())
}

/// Prints a line to stdout; a closed pipe (`supctl status | head`) is not an error.
fn out(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

fn print_json<T: serde::Serialize>(v: &T) {
    if let Ok(text) = serde_json::to_string_pretty(v) {
        out(&text);
    }
}

fn status(client: &mut Client, names: &[String], json_out: bool) -> Result<u8, Failure> {
    let params = json!({ "names": names });
    let not_found = |e: ClientError| match e {
        ClientError::Rpc(e) if e.kind() == ErrorKind::NotFound => Failure::Message(e.message, 4),
        e => e.into(),
    };
    if json_out {
        // Printed as the daemon sent it, so a field added to the daemon
        // shows up without a new supctl.
        let v = client.call("status", params).map_err(not_found)?;
        let programs = v.get("programs").cloned().unwrap_or(Value::Null);
        print_json(&programs);
        let all_running = programs.as_array().is_some_and(|rows| {
            rows.iter()
                .all(|r| r.get("state").and_then(Value::as_str) == Some("running"))
        });
        return Ok(if all_running { 0 } else { 3 });
    }
    let cells: StatusCells<'_> = client.call_borrowed("status", params).map_err(not_found)?;
    let colour = colour_enabled(
        io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    // One write of the whole table (it ends with its newline).
    let table = cells.0.render(colour);
    let _ = io::stdout().lock().write_all(table.as_bytes());
    Ok(if cells.0.all_running { 0 } else { 3 })
}

/// The `status` answer, `{"programs": [row, ...]}`, decoded straight into
/// the table's cells: each row is formatted as it is read, and only its
/// cells are kept.
struct StatusCells<'a>(Table<'a>);

impl<'de> serde::Deserialize<'de> for StatusCells<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct Answer;
        struct Rows<'t, 'de>(&'t mut Table<'de>);

        impl<'de> Visitor<'de> for Answer {
            type Value = StatusCells<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status result")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut table = Table::new();
                let mut seen = false;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "programs" {
                        map.next_value_seed(Rows(&mut table))?;
                        seen = true;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if !seen {
                    return Err(serde::de::Error::missing_field("programs"));
                }
                Ok(StatusCells(table))
            }
        }

        impl<'de> DeserializeSeed<'de> for Rows<'_, 'de> {
            type Value = ();

            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_seq(self)
            }
        }

        impl<'de> Visitor<'de> for Rows<'_, 'de> {
            type Value = ();

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of status rows")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while let Some(row) = seq.next_element::<Row<'de>>()? {
                    self.0.push(row);
                }
                Ok(())
            }
        }

        deserializer.deserialize_map(Answer)
    }
}

/// One program's columns (see `sup::protocol::ProgramStatus`).
#[derive(Debug, Clone, serde::Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    state: State,
    pid: Option<u32>,
    uptime_secs: Option<f64>,
    restarts: u64,
    returncode: Option<i32>,
    #[serde(default)]
    waiting_for: Vec<String>,
    #[serde(default)]
    next_retry_secs: Option<f64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    signal: Option<String>,
}

/// [`push_duration`]'s text on its own.
#[cfg(test)]
fn human_duration(secs: f64) -> String {
    let mut out = String::new();
    push_duration(&mut out, secs);
    out
}

/// Appends seconds as a person reads them: `45s`, `12m03s`, `5h07m`, `3d04h`.
fn push_duration(out: &mut String, secs: f64) {
    let s = secs.max(0.0) as u64;
    let _ = match s {
        0..=59 => write!(out, "{s}s"),
        60..=3599 => write!(out, "{}m{:02}s", s / 60, s % 60),
        3600..=86399 => write!(out, "{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => write!(out, "{}d{:02}h", s / 86400, (s % 86400) / 3600),
    };
}

/// Whether `supctl status` colours its output: only on a terminal, and
/// neither `NO_COLOR` (set and not empty, no-color.org) nor `TERM=dumb`
/// says otherwise.
fn colour_enabled(
    stdout_is_terminal: bool,
    no_color: Option<&OsStr>,
    term: Option<&OsStr>,
) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

/// The SGR colour of a state in the table: green up, red failed, yellow
/// on the way somewhere; none for stopped and exited.
fn state_colour(state: State) -> Option<&'static str> {
    match state {
        State::Running => Some("32"),
        State::Fatal => Some("31"),
        State::Starting | State::Backoff | State::Stopping | State::Queued => Some("33"),
        State::Stopped | State::Exited => None,
    }
}

/// The columns of the `status` table.
const COLUMNS: usize = 7;

/// The `status` table's header.
const HEADER: [&str; COLUMNS] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "RETURNCODE",
    "INFO",
];

/// The `status` table, built a row at a time: the cells that are not the
/// name or the state are formatted into one buffer, and the widths of the
/// columns kept up to date.
struct Table<'a> {
    lines: Vec<Line<'a>>,
    /// Every formatted cell, one after the other.
    text: String,
    widths: [usize; COLUMNS],
    all_running: bool,
}

/// One row of the table: its name, its state, and where its other cells
/// are in [`Table::text`].
struct Line<'a> {
    name: Cow<'a, str>,
    state: State,
    cells: [(u32, u32); COLUMNS - 2],
}

impl<'a> Table<'a> {
    fn new() -> Self {
        Table {
            lines: Vec::new(),
            text: String::new(),
            widths: HEADER.map(str::len),
            all_running: true,
        }
    }

    /// Adds a row.
    fn push(&mut self, p: Row<'a>) {
        let text = &mut self.text;
        let mut num = itoa::Buffer::new();
        let pid = place(text, |t| match p.pid {
            Some(pid) => t.push_str(num.format(pid)),
            None => t.push('-'),
        });
        let uptime = place(text, |t| match p.uptime_secs {
            Some(secs) => push_duration(t, secs),
            None => t.push('-'),
        });
        let restarts = place(text, |t| t.push_str(num.format(p.restarts)));
        let returncode = place(text, |t| match p.returncode {
            Some(rc) => t.push_str(num.format(rc)),
            None => t.push('-'),
        });
        let info = place(text, |t| {
            if !p.waiting_for.is_empty() {
                t.push_str("waiting for ");
                t.push_str(&p.waiting_for.join(", "));
            } else if let Some(secs) = p.next_retry_secs {
                let _ = write!(t, "retry in {secs:.1}s");
            } else if let Some(e) = &p.error {
                t.push_str(e);
            } else if let Some(sig) = &p.signal {
                t.push_str("killed by ");
                t.push_str(sig);
            }
        });
        let line = Line {
            name: p.name,
            state: p.state,
            cells: [pid, uptime, restarts, returncode, info],
        };
        let widths = self.cells(&line).map(width);
        for (w, c) in self.widths.iter_mut().zip(widths) {
            *w = (*w).max(c);
        }
        self.all_running &= line.state == State::Running;
        self.lines.push(line);
    }

    /// A line's cells, in column order.
    fn cells<'t>(&'t self, line: &'t Line<'_>) -> [&'t str; COLUMNS] {
        let cell = |(start, end): (u32, u32)| &self.text[start as usize..end as usize];
        let [pid, uptime, restarts, returncode, info] = line.cells;
        [
            &line.name,
            line.state.as_str(),
            cell(pid),
            cell(uptime),
            cell(restarts),
            cell(returncode),
            cell(info),
        ]
    }

    /// The text: a header, then a line a row, columns two spaces apart,
    /// each line ending with `\n`; the state coloured with `colour`.
    fn render(&self, colour: bool) -> String {
        let line_width: usize = self.widths.iter().sum::<usize>() + 2 * (COLUMNS - 1) + 1;
        let mut out = String::with_capacity((self.lines.len() + 1) * (line_width + 10));
        let write_line = |out: &mut String, cells: [&str; COLUMNS], sgr: Option<&str>| {
            let start = out.len();
            for (i, c) in cells.iter().enumerate() {
                match sgr.filter(|_| i == 1) {
                    Some(sgr) => {
                        let _ = write!(out, "\x1b[{sgr}m{c}\x1b[0m");
                    }
                    None => out.push_str(c),
                }
                if i + 1 < COLUMNS {
                    push_spaces(out, self.widths[i] - width(c) + 2);
                }
            }
            let kept = out[start..].trim_end().len();
            out.truncate(start + kept);
            out.push('\n');
        };
        write_line(&mut out, HEADER, None);
        for line in &self.lines {
            let sgr = if colour {
                state_colour(line.state)
            } else {
                None
            };
            write_line(&mut out, self.cells(line), sgr);
        }
        out
    }
}

/// The `status` table of `rows`.
#[cfg(test)]
fn status_table(rows: Vec<Row<'_>>, colour: bool) -> String {
    let mut table = Table::new();
    for row in rows {
        table.push(row);
    }
    table.render(colour)
}

/// How many columns `s` takes on a terminal (one a character).
fn width(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Appends what `write` writes to `text`; returns where it is.
fn place(text: &mut String, write: impl FnOnce(&mut String)) -> (u32, u32) {
    let start = text.len();
    write(text);
    // Cells of a 1 MiB answer: far below 4 GiB.
    (start as u32, text.len() as u32)
}

/// Appends `n` spaces.
fn push_spaces(out: &mut String, n: usize) {
    const SPACES: &str = "                                ";
    let mut left = n;
    while left > 0 {
        let k = left.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        left -= k;
    }
}

fn describe(verb: &str, o: &Outcome) -> String {
    let mut line = format!("{}: {}", o.name, o.state);
    if let Some(pid) = o.pid {
        line.push_str(&format!(" (pid {pid})"));
    }
    if verb != "start" && verb != "signal" {
        if let Some(rc) = o.returncode {
            line.push_str(&format!(", returncode {rc}"));
        }
    }
    if o.escalated {
        line.push_str(", escalated to SIGKILL after stop_timeout");
    }
    if verb == "signal" && o.error.is_none() {
        line.push_str(", signal sent");
    }
    if verb == "remove" && o.error.is_none() {
        // Its last state is gone with it: say what was done.
        line = format!("{}: removed", o.name);
    }
    if let Some(e) = &o.error {
        line = format!("{}: {} ({})", o.name, e.message, e.kind);
    }
    line
}

fn programs(client: &mut Client, verb: &str, params: Value, json_out: bool) -> Result<u8, Failure> {
    match client.call(verb, params) {
        Ok(v) => {
            let result: ProgramsResult = decode(v)?;
            if json_out {
                print_json(&result.programs);
            } else {
                for o in &result.programs {
                    out(&describe(verb, o));
                }
            }
            Ok(0)
        }
        Err(ClientError::Rpc(e)) => {
            match (&e.data.results, json_out) {
                (Some(results), true) => print_json(results),
                (Some(results), false) => {
                    for o in results.iter().filter(|o| o.error.is_none()) {
                        out(&describe(verb, o));
                    }
                }
                _ => {}
            }
            Err(Failure::Message(e.message, 1))
        }
        Err(e) => Err(e.into()),
    }
}

/// A number of seconds from 0 up (not NaN, not infinite).
fn parse_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 up, such as 2.5"
        )),
    }
}

fn reload(client: &mut Client, json_out: bool) -> Result<u8, Failure> {
    let result: ReloadResult = match client.call("reload", json!({})) {
        Ok(v) => decode(v)?,
        Err(ClientError::Rpc(e)) if e.kind() == ErrorKind::Config => {
            // Every problem, one a line, as supd --check-config prints them.
            return Err(Failure::Message(
                format!(
                    "the configuration is invalid; nothing changed:\n{}",
                    e.message
                ),
                1,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let failures: Vec<&Outcome> = result
        .programs
        .iter()
        .filter(|o| o.error.is_some())
        .collect();
    if json_out {
        print_json(&result);
    } else {
        for (what, names) in [
            ("added", &result.added),
            ("removed", &result.removed),
            ("changed", &result.changed),
            ("unchanged", &result.unchanged),
        ] {
            if !names.is_empty() {
                out(&format!("{what}: {}", names.join(", ")));
            }
        }
    }
    // The new configuration is in force: exit 0, as `systemctl reload`
    // (ExecReload) expects. A program that then failed to start is a
    // program's state, as in `supctl status`, not a failed reload.
    for o in failures {
        if let Some(e) = &o.error {
            let _ = writeln!(
                io::stderr(),
                "supctl reload: applied, but {}: {} (supctl status {} shows it)",
                o.name,
                e.message,
                o.name
            );
        }
    }
    Ok(0)
}

fn events(client: &mut Client, json_out: bool) -> Result<u8, Failure> {
    client.call("events", json!({}))?;
    while let Some(n) = client.next_notification()? {
        if n.method != "event" {
            continue;
        }
        let e: Event = decode(n.params)?;
        if json_out {
            if let Ok(line) = serde_json::to_string(&e) {
                if !out_line(&line) {
                    break;
                }
            }
        } else {
            let mut line = format!("{} {}: {} -> {}", e.time, e.name, e.from, e.to);
            if let Some(pid) = e.pid {
                line.push_str(&format!(" (pid {pid})"));
            }
            if let Some(rc) = e.returncode {
                line.push_str(&format!(", returncode {rc}"));
            }
            if e.escalated {
                line.push_str(", escalated to SIGKILL");
            }
            if !out_line(&line) {
                break;
            }
        }
    }
    Ok(0)
}

fn logs(
    client: &mut Client,
    name: &str,
    lines: usize,
    follow: bool,
    stream: &str,
    json_out: bool,
) -> Result<u8, Failure> {
    let show = |v: &Value| -> bool {
        if json_out {
            return out_line(&v.to_string());
        }
        let text = v["line"].as_str().unwrap_or_default();
        if v["stream"] == "stderr" {
            let mut err = io::stderr().lock();
            writeln!(err, "{text}").is_ok()
        } else {
            out_line(text)
        }
    };
    let answer = client.call(
        "logs",
        json!({ "name": name, "lines": lines, "follow": follow, "stream": stream }),
    )?;
    for line in answer["lines"].as_array().into_iter().flatten() {
        if !show(line) {
            return Ok(0);
        }
    }
    if !follow {
        return Ok(0);
    }
    while let Some(n) = client.next_notification()? {
        match n.method.as_str() {
            "log" if !show(&n.params) => break,
            "log.missed" => {
                let missed = n.params["missed"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    io::stderr(),
                    "supctl logs: fell behind; {missed} lines were skipped"
                );
            }
            _ => {}
        }
    }
    Ok(0)
}

/// `run`: sends the request, forwards stdin from a thread, prints the
/// program's output as it comes and exits with its status.
fn run_command(mut client: Client, params: Value, json_out: bool) -> Result<u8, Failure> {
    use std::io::Read;
    let answer = client.call("run", params)?;
    if json_out {
        out_line(&answer.to_string());
    }
    let mut writer = client.try_clone_writer()?;
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                let data = String::from_utf8_lossy(&pending).into_owned();
                let _ = sup::client::send_notification(
                    &mut writer,
                    "stdin",
                    json!({ "data": data, "eof": true }),
                );
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            // Send whole UTF-8 characters; keep a cut one for the next read.
            let valid = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => pending.len(),
            };
            let rest = pending.split_off(valid);
            let data = String::from_utf8_lossy(&pending).into_owned();
            pending = rest;
            if sup::client::send_notification(
                &mut writer,
                "stdin",
                json!({ "data": data, "eof": false }),
            )
            .is_err()
            {
                return;
            }
        }
    });
    while let Some(n) = client.next_notification()? {
        match n.method.as_str() {
            "output" => {
                if json_out {
                    out_line(&n.params.to_string());
                    continue;
                }
                let data = n.params["data"].as_str().unwrap_or_default();
                if n.params["stream"] == "stderr" {
                    let mut err = io::stderr().lock();
                    let _ = err.write_all(data.as_bytes()).and_then(|()| err.flush());
                } else {
                    let mut so = io::stdout().lock();
                    let _ = so.write_all(data.as_bytes()).and_then(|()| so.flush());
                }
            }
            "output.missed" => {
                let missed = n.params["missed"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    io::stderr(),
                    "supctl run: fell behind; {missed} lines of output were skipped"
                );
            }
            "run.exited" | "run.timeout" => {
                let result: sup::protocol::WaitResult = decode(n.params)?;
                if json_out {
                    out_line(&serde_json::to_string(&result).unwrap_or_default());
                }
                if n.method == "run.timeout" {
                    return Err(Failure::Message(
                        format!("{}: timed out; it was stopped", result.name),
                        124,
                    ));
                }
                return Ok(result.shell_status().clamp(0, 255) as u8);
            }
            "run.error" => {
                let message = n.params["message"].as_str().unwrap_or("supd went away");
                return Err(Failure::Message(message.to_string(), 1));
            }
            _ => {}
        }
    }
    Err(ClientError::Closed.into())
}

/// Prints a line and flushes it; `false` once stdout is gone (a closed pipe).
fn out_line(text: &str) -> bool {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_ok()
}

fn wait(
    client: &mut Client,
    name: &str,
    timeout: Option<f64>,
    json_out: bool,
) -> Result<u8, Failure> {
    match client.wait(name, timeout) {
        Ok(result) => {
            if json_out {
                print_json(&result);
            } else {
                let how = match (&result.signal, result.exit_code) {
                    (Some(sig), _) => format!("killed by {sig}"),
                    (None, Some(code)) => format!("exited with status {code}"),
                    _ => "ended; its exit status is unknown (adopted after a restart of supd)"
                        .to_string(),
                };
                out(&format!("{name}: {how}"));
            }
            Ok(result.shell_status().clamp(0, 255) as u8)
        }
        Err(ClientError::Rpc(e)) if e.kind() == ErrorKind::Timeout => {
            Err(Failure::Message(e.message, 124))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert!(colour_enabled(true, None, os("xterm-256color")));
        assert!(colour_enabled(true, None, None));
        // no-color.org: set and not empty turns colour off.
        assert!(!colour_enabled(true, os("1"), os("xterm")));
        assert!(!colour_enabled(true, os("0"), os("xterm")));
        assert!(colour_enabled(true, os(""), os("xterm")));
        // Not a terminal (a pipe, a file), or a dumb one.
        assert!(!colour_enabled(false, None, os("xterm")));
        assert!(!colour_enabled(true, None, os("dumb")));
    }

    #[test]
    fn states_have_the_colours_of_a_traffic_light() {
        assert_eq!(state_colour(State::Running), Some("32"));
        assert_eq!(state_colour(State::Fatal), Some("31"));
        for s in [State::Starting, State::Backoff, State::Stopping] {
            assert_eq!(state_colour(s), Some("33"), "{s}");
        }
        assert_eq!(state_colour(State::Stopped), None);
        assert_eq!(state_colour(State::Exited), None);
    }

    fn row(name: &str, state: State) -> Row<'static> {
        Row {
            name: Cow::Owned(name.into()),
            state,
            pid: None,
            uptime_secs: None,
            restarts: 0,
            returncode: None,
            waiting_for: Vec::new(),
            next_retry_secs: None,
            error: None,
            signal: None,
        }
    }

    #[test]
    fn coloured_columns_stay_aligned() {
        let rows = [
            row("web", State::Running),
            row("a-long-name", State::Stopped),
        ];
        let plain = status_table(rows.to_vec(), false);
        assert!(!plain.contains('\x1b'), "{plain}");
        let coloured = status_table(rows.to_vec(), true);
        assert!(coloured.contains("\x1b[32mrunning\x1b[0m"), "{coloured:?}");
        // The header and stopped are not painted.
        assert!(!coloured.contains("\x1b[32mSTATE"), "{coloured:?}");
        assert!(coloured.contains(" stopped "), "{coloured:?}");
        // Without the escapes, the same table.
        let stripped = coloured.replace("\x1b[32m", "").replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn the_table_is_unchanged() {
        let text = json!([
            {"name": "web", "state": "running", "pid": 4242, "returncode": null,
             "exit_code": null, "signal": null, "restarts": 0, "uptime_secs": 3725.5,
             "daemon": false, "orphans": [], "since": "", "error": null},
            {"name": "worker:10", "state": "backoff", "pid": null, "returncode": 3,
             "exit_code": 3, "signal": null, "restarts": 12, "uptime_secs": null,
             "daemon": true, "orphans": [], "since": "", "error": null,
             "next_retry_secs": 1.25},
            {"name": "jöb", "state": "exited", "pid": null, "returncode": -9,
             "exit_code": null, "signal": "SIGKILL", "restarts": 1, "uptime_secs": null,
             "daemon": false, "orphans": [], "since": "", "error": null},
            {"name": "failing", "state": "fatal", "pid": null, "returncode": 3,
             "exit_code": 3, "signal": null, "restarts": 2, "uptime_secs": null,
             "daemon": false, "orphans": [], "since": "",
             "error": "exit status 3 within start_secs (1s) on every try; gave up after 2 retries"},
            {"name": "app", "state": "starting", "pid": null, "returncode": null,
             "exit_code": null, "signal": null, "restarts": 0, "uptime_secs": null,
             "daemon": false, "orphans": [], "since": "", "error": null,
             "waiting_for": ["db", "cache:0"]},
            {"name": "x", "state": "stopped", "pid": null, "returncode": null,
             "exit_code": null, "signal": null, "restarts": 0, "uptime_secs": null,
             "daemon": false, "orphans": [], "since": "", "error": null},
        ])
        .to_string();
        let rows: Vec<Row<'_>> = serde_json::from_str(&text).expect("rows");
        assert_eq!(
            status_table(rows.to_vec(), false),
            "NAME       STATE     PID   UPTIME  RESTARTS  RETURNCODE  INFO\n\
             web        running   4242  1h02m   0         -\n\
             worker:10  backoff   -     -       12        3           retry in 1.2s\n\
             jöb        exited    -     -       1         -9          killed by SIGKILL\n\
             failing    fatal     -     -       2         3           exit status 3 within start_secs (1s) on every try; gave up after 2 retries\n\
             app        starting  -     -       0         -           waiting for db, cache:0\n\
             x          stopped   -     -       0         -\n"
        );
        assert_eq!(
            status_table(rows.to_vec(), true),
            "NAME       STATE     PID   UPTIME  RESTARTS  RETURNCODE  INFO\n\
             web        \x1b[32mrunning\x1b[0m   4242  1h02m   0         -\n\
             worker:10  \x1b[33mbackoff\x1b[0m   -     -       12        3           retry in 1.2s\n\
             jöb        exited    -     -       1         -9          killed by SIGKILL\n\
             failing    \x1b[31mfatal\x1b[0m     -     -       2         3           exit status 3 within start_secs (1s) on every try; gave up after 2 retries\n\
             app        \x1b[33mstarting\x1b[0m  -     -       0         -           waiting for db, cache:0\n\
             x          stopped   -     -       0         -\n"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.0), "59s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(3600.0 * 5.0 + 7.0 * 60.0), "5h07m");
        assert_eq!(human_duration(86400.0 * 3.0 + 3600.0 * 4.0), "3d04h");
    }
}
