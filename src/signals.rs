//! Signal names and numbers as users write them (`"HUP"`, `"SIGHUP"`,
//! `"1"`), and the stream of signals the daemon itself receives.

use std::str::FromStr;

use nix::sys::signal::Signal;

/// A signal number that can be sent: a named signal or a real-time one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub i32);

impl Sig {
    /// Its conventional name, such as `"SIGTERM"` (`"SIGRTMIN+2"` style for
    /// real-time signals, `"SIG<n>"` for numbers without a name).
    pub fn name(self) -> String {
        signal_name(self.0)
    }
}

/// The name of signal `sig`, as `kill -l` would print it with a `SIG` prefix.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => {
            let min = libc::SIGRTMIN();
            let max = libc::SIGRTMAX();
            if (min..=max).contains(&sig) {
                format!("SIGRTMIN+{}", sig - min)
            } else {
                format!("SIG{sig}")
            }
        }
    }
}

/// Why a signal spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown signal {0:?}: use a name such as \"TERM\", \"SIGHUP\" or \"USR1\", or a number from 1 to 64"
)]
pub struct BadSignal(pub String);

/// Parses `"HUP"`, `"SIGHUP"`, `"hup"` or `"1"` (also `"RTMIN+3"`).
///
/// # Errors
/// [`BadSignal`] for anything else, including 0 and numbers above `SIGRTMAX`.
pub fn parse_signal(spec: &str) -> Result<Sig, BadSignal> {
    let trimmed = spec.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(Sig(n))
        } else {
            Err(BadSignal(spec.to_string()))
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        let offset = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('+').and_then(|n| n.parse::<i32>().ok())
        };
        if let Some(offset) = offset {
            let n = libc::SIGRTMIN() + offset;
            if offset >= 0 && n <= libc::SIGRTMAX() {
                return Ok(Sig(n));
            }
        }
        return Err(BadSignal(spec.to_string()));
    }
    Signal::from_str(&format!("SIG{bare}"))
        .map(|s| Sig(s as i32))
        .map_err(|_| BadSignal(spec.to_string()))
}

/// Parses a signal given in JSON: a string as [`parse_signal`], or a number.
///
/// # Errors
/// [`BadSignal`] for anything else.
pub fn parse_signal_value(value: &serde_json::Value) -> Result<Sig, BadSignal> {
    match value {
        serde_json::Value::String(s) => parse_signal(s),
        serde_json::Value::Number(n) => parse_signal(&n.to_string()),
        other => Err(BadSignal(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix_and_numbers() {
        assert_eq!(parse_signal("HUP"), Ok(Sig(libc::SIGHUP)));
        assert_eq!(parse_signal("SIGHUP"), Ok(Sig(libc::SIGHUP)));
        assert_eq!(parse_signal("sigterm"), Ok(Sig(libc::SIGTERM)));
        assert_eq!(parse_signal("1"), Ok(Sig(1)));
        assert_eq!(parse_signal("9"), Ok(Sig(libc::SIGKILL)));
        assert_eq!(parse_signal("RTMIN+2"), Ok(Sig(libc::SIGRTMIN() + 2)));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("HUPP").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(
            parse_signal(&signal_name(libc::SIGUSR1)),
            Ok(Sig(libc::SIGUSR1))
        );
    }
}
