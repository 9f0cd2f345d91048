//! supd's own logs: `tracing` events, at the level `RUST_LOG` gives (default
//! `info`, `debug` with `-v`, `trace` with `-vv`), to one of two places:
//!
//! - journald's native protocol (tracing-journald) when systemd says our
//!   stderr is connected to the journal: `JOURNAL_STREAM` holds the
//!   `device:inode` of that stream, and it matches `fstat(2)` of fd 2 (the
//!   check systemd.exec(5) asks for, so a variable inherited by a process
//!   whose stderr was redirected elsewhere is ignored). Structured fields
//!   keep their names, upper-cased and unprefixed: `program` becomes
//!   `PROGRAM`, `pid` `PID`, `status` `STATUS`, so
//!   `journalctl -u supd PROGRAM=web` selects one program's lines. Levels
//!   map to syslog's `PRIORITY`: error 3, warn 4, info 6, debug and trace 7.
//! - stderr otherwise, in a human format (with no timestamp when stderr is
//!   the journal anyway, which stamps each line itself). Also the fallback
//!   when journald's socket cannot be reached.
//!
//! The decision is [`choose`], a pure function of the variable and of fd 2's
//! identity.

use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where supd's logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// journald's native protocol, with structured fields.
    Journald,
    /// stderr, human-readable.
    Stderr,
}

/// The identity of an open file as `fstat(2)` gives it: `(st_dev, st_ino)`.
pub type FileId = (u64, u64);

/// Parses `JOURNAL_STREAM`'s value, `"DEVICE:INODE"` in decimal
/// (systemd.exec(5)). `None` for anything else.
pub fn parse_journal_stream(value: &str) -> Option<FileId> {
    let (dev, ino) = value.trim().split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(dev) || !digits(ino) {
        return None;
    }
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Decides where logs go from `JOURNAL_STREAM` (if set) and the identity
/// of fd 2 (if `fstat` worked): journald only when both are there and equal.
pub fn choose(journal_stream: Option<&str>, stderr: Option<FileId>) -> Target {
    match (journal_stream.and_then(parse_journal_stream), stderr) {
        (Some(stream), Some(fd2)) if stream == fd2 => Target::Journald,
        _ => Target::Stderr,
    }
}

/// `(st_dev, st_ino)` of fd 2, or `None` when it is closed.
fn stderr_id() -> Option<FileId> {
    let fd = std::io::stderr();
    let file = std::os::fd::AsFd::as_fd(&fd).try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(file).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Where [`init`] would send the logs in this process, before any fallback.
pub fn target_for_this_process() -> Target {
    let stream = std::env::var("JOURNAL_STREAM").ok();
    choose(stream.as_deref(), stderr_id())
}

/// syslog's meanings: info is `6` (informational, not `5` notice, which
/// journalctl highlights), debug and trace are `7`.
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The levels to log: `RUST_LOG` when it is set and well formed, as a
/// level (`debug`) or comma-separated `target=level` directives
/// (`sup=debug,tokio=warn`; the `Targets` syntax of tracing-subscriber,
/// without `EnvFilter`'s span and field filters, whose regex engine would
/// make supd's binary, and its resident memory, a megabyte larger).
/// Else `info`, `debug` with `-v`, `trace` with `-vv`.
fn filter(verbose: u8) -> Targets {
    let default = match verbose {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default))
}

/// Installs the global subscriber. `verbose` raises the default level to
/// `debug` (and `trace` when given twice); `RUST_LOG` overrides both.
/// Returns where the logs go.
pub fn init(verbose: u8) -> Target {
    let target = target_for_this_process();
    let journald_error = if target == Target::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("supd".into())
                    .with_priority_mappings(priorities());
                let installed = tracing_subscriber::registry()
                    .with(filter(verbose))
                    .with(layer)
                    .try_init();
                if installed.is_ok() {
                    return Target::Journald;
                }
                None
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // The journal stamps each line itself.
    let installed = if target == Target::Journald {
        tracing_subscriber::registry()
            .with(filter(verbose))
            .with(fmt.without_time())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter(verbose))
            .with(fmt)
            .try_init()
    };
    if let (Ok(()), Some(e)) = (installed, journald_error) {
        tracing::warn!(error = %e, "journald's socket is not reachable; logging to stderr");
    }
    Target::Stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("0:1\n"), Some((0, 1)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:2"),
            Some((u64::MAX, 2))
        );
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            ":",
            "8:",
            ":9",
            "8",
            "8:9:10",
            "a:1",
            "1:b",
            "-1:2",
            "+1:2",
            " 1:2x",
            "1 :2",
            "18446744073709551616:1",
        ] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn journald_only_when_the_stream_is_our_stderr() {
        assert_eq!(choose(Some("8:100"), Some((8, 100))), Target::Journald);
        // Another file (stderr redirected after systemd set the variable).
        assert_eq!(choose(Some("8:100"), Some((8, 101))), Target::Stderr);
        assert_eq!(choose(Some("9:100"), Some((8, 100))), Target::Stderr);
        // No variable, a bad one, or a closed stderr.
        assert_eq!(choose(None, Some((8, 100))), Target::Stderr);
        assert_eq!(choose(Some("garbage"), Some((8, 100))), Target::Stderr);
        assert_eq!(choose(Some("8:100"), None), Target::Stderr);
    }

    #[test]
    fn this_process_matches_its_own_stderr() {
        // The variable as systemd would set it for the stderr we have now.
        let id = stderr_id().expect("the test harness has a stderr");
        let value = format!("{}:{}", id.0, id.1);
        assert_eq!(choose(Some(&value), stderr_id()), Target::Journald);
    }
}
