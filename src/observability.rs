//! supd's own logs: `tracing` events to stderr in a human format, at the
//! level `RUST_LOG` gives (default `info`, `debug` with `-v`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `verbose` raises the default level to
/// `debug` (and `trace` when given twice); `RUST_LOG` overrides both.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
