//! Telling systemd how supd is doing (sd_notify(3), through the sd-notify
//! crate): `READY=1`, `STATUS=` a one-line summary of program states,
//! `WATCHDOG=1` pings, `STOPPING=1`. Every message goes to `NOTIFY_SOCKET`;
//! without it (supd not started by systemd) nothing is sent and no task runs.
//!
//! - [`ready_then_report`] sends `READY=1` (once the supervisor answers),
//!   then [`report_status`] follows the supervisor's event stream and sends a
//!   fresh `STATUS=` after each burst of state changes: it wakes only when
//!   something changed, so an idle supd makes no wake-ups for it.
//! - [`watchdog`] pings at half of `WATCHDOG_USEC`, the one periodic timer
//!   in supd, and only when systemd asked for it (`WatchdogSec=`). Each ping
//!   follows a round trip to the supervisor, so a supervisor that stopped
//!   answering stops the pings and systemd restarts supd.

use std::time::Duration;

pub use sd_notify::NotifyState;
use tokio::sync::broadcast;

use crate::protocol::{Event, ProgramStatus, State};
use crate::supervisor::Handle;

/// Whether a service manager listens (`NOTIFY_SOCKET` is set and not empty).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Sends `states` to the service manager; a failure is logged, never fatal.
///
/// The datagram is sent without blocking: a manager that does not read its
/// socket (its queue is full) loses this message rather than stalling supd,
/// whose single thread also supervises every program. (The sd-notify crate's
/// `notify` blocks in that case, so only its message types are used.)
pub fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = send_nonblocking(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn send_nonblocking(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let mut msg = String::new();
    for state in states {
        msg.push_str(&state.to_string());
        msg.push('\n');
    }
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// The ping period for `WATCHDOG_USEC` and `WATCHDOG_PID` (their values,
/// when set) in a process whose pid is `own_pid`: half the timeout, as
/// sd_watchdog_enabled(3) advises. `None` (no pings) when the timeout is
/// missing, zero or malformed, or when `WATCHDOG_PID` names another process
/// (the variables were inherited, not meant for us).
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == own_pid => {}
            _ => return None,
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// [`watchdog_period`] for this process's environment.
pub fn watchdog_period_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The order states are counted in, most interesting first.
const ORDER: [State; 7] = [
    State::Running,
    State::Starting,
    State::Backoff,
    State::Stopping,
    State::Stopped,
    State::Exited,
    State::Fatal,
];

/// A one-line summary of `rows` for `STATUS=`, such as
/// `"3 programs: 2 running, 1 fatal"`; states with no program are left out.
pub fn summary(rows: &[ProgramStatus]) -> String {
    if rows.is_empty() {
        return "no programs".into();
    }
    let counts: Vec<String> = ORDER
        .iter()
        .filter_map(|&state| {
            let n = rows.iter().filter(|r| r.state == state).count();
            (n > 0).then(|| format!("{n} {state}"))
        })
        .collect();
    let noun = if rows.len() == 1 {
        "program"
    } else {
        "programs"
    };
    format!("{} {noun}: {}", rows.len(), counts.join(", "))
}

/// Sends `STATUS=` with the [`summary`] of every program now.
async fn send_summary(handle: &Handle) {
    if let Ok(rows) = handle.status(Vec::new()).await {
        send(&[NotifyState::Status(&summary(&rows))]);
    }
}

/// Sends `READY=1` with a first `STATUS=`, then keeps `STATUS=` current
/// ([`report_status`]). Runs beside the supervisor, whose answers it needs.
pub async fn ready_then_report(handle: Handle) {
    // Subscribed before the first summary, so no later change is missed.
    let events = handle.subscribe().await;
    let summary = match handle.status(Vec::new()).await {
        Ok(rows) => summary(&rows),
        Err(_) => "starting".into(),
    };
    send(&[NotifyState::Ready, NotifyState::Status(&summary)]);
    if let Ok(events) = events {
        report_status(handle, events).await;
    }
}

/// Keeps `STATUS=` current: one update after each burst of events (all the
/// events already queued are taken together). Ends when the event stream
/// does (the supervisor is gone).
pub async fn report_status(handle: Handle, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        loop {
            match events.try_recv() {
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
        send_summary(&handle).await;
    }
}

/// Sends `WATCHDOG=1` every `period`, each after the supervisor has
/// answered a request. Runs until aborted.
pub async fn watchdog(handle: Handle, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match handle.status(Vec::new()).await {
            Ok(_) => send(&[NotifyState::Watchdog]),
            Err(e) => tracing::warn!(error = %e, "the supervisor did not answer; no watchdog ping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_timeout() {
        assert_eq!(
            watchdog_period(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_period(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn no_watchdog_unless_it_is_ours_and_well_formed() {
        assert_eq!(watchdog_period(None, None, 7), None);
        assert_eq!(watchdog_period(None, Some("7"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("-5"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        // Meant for another process (inherited through a fork).
        assert_eq!(watchdog_period(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("200000"), Some("x"), 7), None);
    }

    fn row(name: &str, state: State) -> ProgramStatus {
        ProgramStatus {
            name: name.into(),
            state,
            pid: None,
            returncode: None,
            exit_code: None,
            signal: None,
            restarts: 0,
            uptime_secs: None,
            daemon: false,
            orphans: Vec::new(),
            since: String::new(),
            error: None,
            exited_at: None,
            next_retry_secs: None,
            waiting_for: Vec::new(),
            adopted: false,
            log_dropped_bytes: 0,
        }
    }

    #[test]
    fn summary_counts_states_in_a_fixed_order() {
        assert_eq!(summary(&[]), "no programs");
        assert_eq!(summary(&[row("a", State::Running)]), "1 program: 1 running");
        let rows = [
            row("a", State::Fatal),
            row("b", State::Running),
            row("c", State::Backoff),
            row("d", State::Running),
        ];
        assert_eq!(summary(&rows), "4 programs: 2 running, 1 backoff, 1 fatal");
    }
}
