//! `supd`: the supervisor daemon. Parses its arguments, sets up logging and
//! the panic hook, and hands over to [`sup::daemon::run`].

use std::process::ExitCode;

use clap::Parser;
use sup::cli::SupdArgs;
use sup::config::Config;

fn main() -> ExitCode {
    let args = SupdArgs::parse();
    if let Some(marker) = args.sentinel {
        sup::sentinel::run(&marker);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(config) => {
                println!(
                    "{}: valid ({} programs)",
                    path.display(),
                    config.programs.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        };
    }
    sup::observability::init(args.verbose);
    exit_on_panic();
    let Some(path) = args.config else {
        eprintln!("supd: give a configuration with --config PATH");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let opts = sup::daemon::Options {
        config,
        socket: args.socket,
    };
    match sup::daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What supd does with a panic, on any thread and in any task: it logs it
/// and exits at once with status 101, never running on half-broken.
///
/// Without this, a panic in a spawned task is caught by tokio and only that
/// task ends: a panicked connection server or timer would leave supd alive
/// but headless (no socket, or a program never restarted), and a panic on
/// the supervisor's thread would print one line on stderr and bypass the
/// log. Exiting takes the path a SIGKILL of supd takes, the one supd is
/// built to survive: `daemon = true` programs are killed with it (their main
/// process by `PR_SET_PDEATHSIG`, the rest by the sentinel, which sees its
/// pipe close), `daemon = false` programs keep running, recorded in the
/// state file, and the next supd adopts them (systemd's `Restart=on-failure`
/// starts it). A shutdown through the supervisor is not attempted: the
/// supervisor may be what panicked, and a normal shutdown would also stop
/// the `daemon = false` programs that a restart is meant to keep.
///
/// The hook prints the standard panic message (with a backtrace when
/// `RUST_BACKTRACE` asks) to stderr, logs an error through `tracing` (the
/// journal under systemd), tells systemd (`STATUS=`), then calls `_exit(2)`
/// so that no destructor or other thread runs on after the panic.
fn exit_on_panic() {
    let supd = std::process::id();
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::process::id() != supd {
            // Not supd: a child between its clone and its exec, which
            // shares supd's memory. It must run none of supd's code.
            // SAFETY: _exit(2) ends the calling process; it touches no
            // memory and runs no handler.
            unsafe { libc::_exit(127) };
        }
        standard(info);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let place = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(
            %place,
            %thread,
            "supd panicked: {message}; exiting with status 101 (daemon = true programs \
             die with supd; daemon = false programs run on and are adopted by the next supd)"
        );
        sup::notify::send(&[sup::notify::NotifyState::Status(&format!(
            "panicked at {place}: {message}; exiting"
        ))]);
        // SAFETY: as above; nothing of supd runs after this.
        unsafe { libc::_exit(101) };
    }));
}
