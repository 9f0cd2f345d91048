//! `supd`: the supervisor daemon. Parses its arguments, sets up logging,
//! and hands over to [`sup::daemon::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sup::config::Config;

/// supd: supervise programs, controlled over a Unix socket with supctl.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = "Examples:\n  supd --config config/example.toml\n  supd --check-config /etc/sup/supd.toml")]
struct Args {
    /// The configuration file (TOML) to run.
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        required_unless_present_any = ["check_config", "sentinel"]
    )]
    config: Option<PathBuf>,

    /// The control socket, over the config's [supd] socket and the default
    /// ($XDG_RUNTIME_DIR/supd.sock, or /run/supd/supd.sock for root).
    #[arg(long, short = 's', value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Validate the configuration at PATH and exit: 0 when valid, else 1
    /// with every problem as file:line:col.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    check_config: Option<PathBuf>,

    /// Internal: run as the sentinel of the supd whose marker is given.
    #[arg(long, hide = true, value_name = "MARKER")]
    sentinel: Option<String>,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
