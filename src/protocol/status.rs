//! The `status` answer written straight to JSON text: a row borrows what the
//! supervisor already holds ([`StatusRow`]), and [`StatusRow::write_json`]
//! appends it to the answer's buffer with its keys as constants, so a status
//! of 500 programs is one buffer, written once, with no copy of a name.
//!
//! The text is exactly what serde would make of the owned
//! [`ProgramStatus`] ([`StatusRow::to_program_status`]): same keys, same order, same
//! escaping and number formats; the tests below compare the two.

use super::{ProgramStatus, State};

/// One row of `status`, borrowing the supervisor's strings. Its fields are
/// those of [`ProgramStatus`], which documents them.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow<'a> {
    /// See [`ProgramStatus::name`].
    pub name: &'a str,
    /// See [`ProgramStatus::state`].
    pub state: State,
    /// See [`ProgramStatus::pid`].
    pub pid: Option<u32>,
    /// See [`ProgramStatus::returncode`].
    pub returncode: Option<i32>,
    /// See [`ProgramStatus::exit_code`].
    pub exit_code: Option<i32>,
    /// See [`ProgramStatus::signal`].
    pub signal: Option<String>,
    /// See [`ProgramStatus::restarts`].
    pub restarts: u64,
    /// See [`ProgramStatus::uptime_secs`].
    pub uptime_secs: Option<f64>,
    /// See [`ProgramStatus::daemon`].
    pub daemon: bool,
    /// See [`ProgramStatus::orphans`].
    pub orphans: &'a [u32],
    /// See [`ProgramStatus::since`].
    pub since: &'a str,
    /// See [`ProgramStatus::error`].
    pub error: Option<&'a str>,
    /// See [`ProgramStatus::exited_at`].
    pub exited_at: Option<String>,
    /// See [`ProgramStatus::next_retry_secs`].
    pub next_retry_secs: Option<f64>,
    /// See [`ProgramStatus::waiting_for`].
    pub waiting_for: Vec<String>,
    /// See [`ProgramStatus::adopted`].
    pub adopted: bool,
    /// See [`ProgramStatus::log_dropped_bytes`].
    pub log_dropped_bytes: u64,
}

impl StatusRow<'_> {
    /// The owned row, as `supctl` and the tests read it.
    pub fn to_program_status(&self) -> ProgramStatus {
        ProgramStatus {
            name: self.name.to_string(),
            state: self.state,
            pid: self.pid,
            returncode: self.returncode,
            exit_code: self.exit_code,
            signal: self.signal.clone(),
            restarts: self.restarts,
            uptime_secs: self.uptime_secs,
            daemon: self.daemon,
            orphans: self.orphans.to_vec(),
            since: self.since.to_string(),
            error: self.error.map(str::to_string),
            exited_at: self.exited_at.clone(),
            next_retry_secs: self.next_retry_secs,
            waiting_for: self.waiting_for.clone(),
            adopted: self.adopted,
            log_dropped_bytes: self.log_dropped_bytes,
        }
    }

    /// Appends the row as one JSON object, the text serde makes of
    /// [`StatusRow::to_program_status`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        write_str(out, self.name);
        out.extend_from_slice(b",\"state\":\"");
        out.extend_from_slice(self.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"pid\":");
        write_opt_int(out, self.pid);
        out.extend_from_slice(b",\"returncode\":");
        write_opt_int(out, self.returncode);
        out.extend_from_slice(b",\"exit_code\":");
        write_opt_int(out, self.exit_code);
        out.extend_from_slice(b",\"signal\":");
        write_opt_str(out, self.signal.as_deref());
        out.extend_from_slice(b",\"restarts\":");
        write_int(out, self.restarts);
        out.extend_from_slice(b",\"uptime_secs\":");
        write_opt_f64(out, self.uptime_secs);
        out.extend_from_slice(b",\"daemon\":");
        write_bool(out, self.daemon);
        out.extend_from_slice(b",\"orphans\":[");
        for (i, pid) in self.orphans.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_int(out, *pid);
        }
        out.extend_from_slice(b"],\"since\":");
        write_str(out, self.since);
        out.extend_from_slice(b",\"error\":");
        write_opt_str(out, self.error);
        out.extend_from_slice(b",\"exited_at\":");
        write_opt_str(out, self.exited_at.as_deref());
        out.extend_from_slice(b",\"next_retry_secs\":");
        write_opt_f64(out, self.next_retry_secs);
        out.extend_from_slice(b",\"waiting_for\":[");
        for (i, name) in self.waiting_for.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, name);
        }
        out.extend_from_slice(b"],\"adopted\":");
        write_bool(out, self.adopted);
        out.extend_from_slice(b",\"log_dropped_bytes\":");
        write_int(out, self.log_dropped_bytes);
        out.push(b'}');
    }
}

/// Appends the `status` result, `{"programs":[ROW,...]}`, to `out`.
pub fn write_status_result<'a>(out: &mut Vec<u8>, rows: impl IntoIterator<Item = StatusRow<'a>>) {
    out.extend_from_slice(b"{\"programs\":[");
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        row.write_json(out);
    }
    out.extend_from_slice(b"]}");
}

/// A JSON string. Text with nothing to escape (names and times, nearly
/// always) is copied as it is; anything else goes through serde_json, so
/// the escapes are serde's own.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Every byte is looked at (no early exit), so the check vectorises.
    let plain = !s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail, and a str always serialises.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_opt_int(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => write_int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A float as serde_json writes it (shortest round-trip form; `null` for
/// NaN and infinities).
fn write_opt_f64(out: &mut Vec<u8>, x: Option<f64>) {
    match x {
        // Writing to a Vec cannot fail, and an f64 always serialises.
        Some(x) => {
            let _ = serde_json::to_writer(&mut *out, &x);
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::StatusResult;

    fn plain<'a>() -> StatusRow<'a> {
        StatusRow {
            name: "web",
            state: State::Running,
            pid: Some(4242),
            returncode: None,
            exit_code: None,
            signal: None,
            restarts: 0,
            uptime_secs: Some(12.345),
            daemon: false,
            orphans: &[],
            since: "2026-11-21T08:00:00.123456789Z",
            error: None,
            exited_at: None,
            next_retry_secs: None,
            waiting_for: Vec::new(),
            adopted: false,
            log_dropped_bytes: 0,
        }
    }

    fn assert_same_as_serde(rows: &[StatusRow<'_>]) {
        let mut fast = Vec::new();
        write_status_result(&mut fast, rows.iter().cloned());
        let owned = StatusResult {
            programs: rows.iter().map(StatusRow::to_program_status).collect(),
        };
        let serde = serde_json::to_vec(&owned).expect("serialise");
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&serde)
        );
    }

    #[test]
    fn rows_are_written_as_serde_writes_them() {
        assert_same_as_serde(&[]);
        assert_same_as_serde(&[plain()]);
        let orphans = [7, 8, 4_294_967_295];
        let odd = StatusRow {
            name: "we\"ird\\na\u{1}me\nünï",
            state: State::Backoff,
            pid: None,
            returncode: Some(-9),
            exit_code: None,
            signal: Some("SIGKILL".into()),
            restarts: u64::MAX,
            uptime_secs: None,
            daemon: true,
            orphans: &orphans,
            since: "",
            error: Some("exit status 3 within start_secs (1s)\t\"x\""),
            exited_at: Some("2026-11-21T08:00:01Z".into()),
            next_retry_secs: Some(0.1 + 0.2),
            waiting_for: vec!["db".into(), "cache:0".into(), "q\"".into()],
            adopted: true,
            log_dropped_bytes: 1 << 40,
        };
        let floats = [
            0.0,
            1.0,
            1e-7,
            123_456_789.125,
            1e21,
            f64::NAN,
            f64::INFINITY,
        ];
        let mut rows = vec![plain(), odd];
        for x in floats {
            rows.push(StatusRow {
                uptime_secs: Some(x),
                next_retry_secs: Some(-x),
                exit_code: Some(i32::MIN),
                returncode: Some(i32::MAX),
                ..plain()
            });
        }
        assert_same_as_serde(&rows);
    }

    #[test]
    fn an_answer_written_in_place_is_the_answer_serde_writes() {
        let result = r#"{"programs":[]}"#;
        for id in [
            "1",
            "18446744073709551615",
            "123456789012345678901234567890",
            "1.5",
            r#""a \"quoted\" id""#,
            "null",
        ] {
            let id = serde_json::value::RawValue::from_string(id.into()).expect("raw id");
            let mut fast = Vec::new();
            crate::protocol::Response::write_head(&mut fast, &id);
            fast.extend_from_slice(result.as_bytes());
            fast.extend_from_slice(crate::protocol::Response::TAIL);
            let raw = serde_json::value::RawValue::from_string(result.into()).expect("raw");
            let mut serde =
                serde_json::to_vec(&crate::protocol::Response::ok(id, raw)).expect("serialise");
            serde.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&serde)
            );
        }
    }
}
