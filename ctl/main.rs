//! `supctl`: the control CLI of `supd`. One function a verb; each sends one
//! request over the socket (the library's [`sup::client`]) and renders the
//! answer as an aligned table or line, or as JSON with `--json`.
//!
//! Exit statuses (SPEC §4): 0 success; 1 failure (the reason on stderr, one
//! line); 2 usage; `status`: 3 when any listed program is not running, 4 for
//! an unknown name; `wait`: the program's exit code, 128+N after signal N,
//! 124 on timeout.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use sup::client::{Client, ClientError, default_socket_path};
use sup::protocol::{
    ErrorKind, Event, Outcome, ProgramStatus, ProgramsResult, StatusResult, VersionResult,
};

/// supctl: control a running supd.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  supctl status\n  supctl restart web\n  supctl stop --all\n  supctl signal web HUP\n  supctl wait job --timeout 30 && echo done\n  supctl --json status | jq '.[] | select(.state != \"running\")'"
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
    /// Program names.
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

#[derive(Debug, Subcommand)]
enum Verb {
    /// Show programs: name, state, pid, uptime, restarts, returncode.
    /// Exit 0 when all listed are running, 3 when any is not, 4 for an unknown name.
    Status {
        /// Programs to show (default: all).
        names: Vec<String>,
    },
    /// Start programs; returns once each is running or has failed.
    Start(Select),
    /// Stop programs: stop_signal, then SIGKILL after stop_timeout; returns once each has exited.
    Stop(Select),
    /// Stop, then start.
    Restart(Select),
    /// Send SIGKILL now.
    Kill(Select),
    /// Send a signal (HUP, SIGHUP or 1) to a program's main process.
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
    Wait {
        /// The program.
        name: String,
        /// Give up after SECS seconds (the program keeps running).
        #[arg(long, short = 't', value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<f64>,
    },
    /// Resize a pool: new members are started, the highest-numbered stopped first.
    Scale {
        /// The pool (a program with `instances`).
        name: String,
        /// Its new size.
        instances: u32,
    },
    /// Stream state changes as they happen, until supd stops.
    Events,
    /// Forget programs that are not running.
    Remove {
        /// Program names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop every program and then supd; returns once supd has exited.
    Shutdown,
    /// Show the daemon's version and protocol.
    Version,
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
        Verb::Shutdown => "shutdown",
        Verb::Version => "version",
    }
}

fn run(cli: &Cli, socket: &std::path::Path) -> Result<u8, Failure> {
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
    let result = match client.call("status", json!({ "names": names })) {
        Ok(v) => v,
        Err(ClientError::Rpc(e)) if e.kind() == ErrorKind::NotFound => {
            return Err(Failure::Message(e.message, 4));
        }
        Err(e) => return Err(e.into()),
    };
    let status: StatusResult = decode(result)?;
    if json_out {
        print_json(&status.programs);
    } else {
        out(&status_table(&status.programs));
    }
    let all_running = status
        .programs
        .iter()
        .all(|p| p.state == sup::protocol::State::Running);
    Ok(if all_running { 0 } else { 3 })
}

/// Seconds as a person reads them: `45s`, `12m03s`, `5h07m`, `3d04h`.
fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn status_table(rows: &[ProgramStatus]) -> String {
    let mut table = vec![[
        "NAME".to_string(),
        "STATE".into(),
        "PID".into(),
        "UPTIME".into(),
        "RESTARTS".into(),
        "RETURNCODE".into(),
        "INFO".into(),
    ]];
    for p in rows {
        let info = if !p.waiting_for.is_empty() {
            format!("waiting for {}", p.waiting_for.join(", "))
        } else if let Some(secs) = p.next_retry_secs {
            format!("retry in {secs:.1}s")
        } else {
            match (&p.error, &p.signal) {
                (Some(e), _) => e.clone(),
                (None, Some(sig)) => format!("killed by {sig}"),
                _ => String::new(),
            }
        };
        table.push([
            p.name.clone(),
            p.state.to_string(),
            p.pid.map_or("-".into(), |v| v.to_string()),
            p.uptime_secs.map_or("-".into(), human_duration),
            p.restarts.to_string(),
            p.returncode.map_or("-".into(), |v| v.to_string()),
            info,
        ]);
    }
    render(&table)
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == N {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
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
