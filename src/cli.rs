//! supd's command line (clap derive). It lives in the library, not in
//! `src/main.rs`, so that `supctl man` can render supd's man page too.

use std::path::PathBuf;

use clap::Parser;

/// Supervise programs, controlled over a Unix socket with supctl.
#[derive(Debug, Parser)]
#[command(
    name = "supd",
    version,
    long_about = "Supervise programs, controlled over a Unix socket with supctl.\n\n\
                  supd starts the programs its TOML configuration names, keeps them running \
                  under their restart policies, reaps every child (it is a child subreaper), \
                  and answers supctl on a Unix socket (JSON-RPC 2.0, one message a line).\n\n\
                  Under systemd (Type=notify) it sends READY=1 once its socket listens, \
                  STATUS= with a summary of program states, WATCHDOG=1 when WatchdogSec= is \
                  set, and STOPPING=1 on shutdown; its own logs go to journald with \
                  structured fields (PROGRAM, PID, STATUS). SIGTERM and SIGINT shut it down \
                  like `supctl shutdown`.",
    after_help = "Examples:\n  \
                  supd --config config/example.toml        run in the foreground\n  \
                  supd -c /etc/sup/supd.toml -v            with debug logs (or RUST_LOG=debug)\n  \
                  supd --check-config /etc/sup/supd.toml   validate, print file:line:col errors"
)]
pub struct SupdArgs {
    /// The configuration file (TOML) to run.
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        required_unless_present_any = ["check_config", "sentinel"]
    )]
    pub config: Option<PathBuf>,

    /// The control socket, over the config's `socket` (in `[supd]`) and the
    /// default ($XDG_RUNTIME_DIR/supd.sock, or /run/supd/supd.sock for root).
    #[arg(long, short = 's', value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Validate the configuration at PATH and exit: 0 when valid, else 1
    /// with every problem as file:line:col.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,

    /// Internal: run as the sentinel of the supd whose marker is given
    /// (see `src/sentinel.rs`).
    #[arg(long, hide = true, value_name = "MARKER")]
    pub sentinel: Option<String>,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// supd's clap command, for man pages and completions.
pub fn supd_command() -> clap::Command {
    <SupdArgs as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_is_well_formed() {
        super::supd_command().debug_assert();
    }
}
