//! `supd`: the supervisor daemon. Parses its arguments, sets up logging,
//! and hands over to [`sup::daemon::run`].

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
