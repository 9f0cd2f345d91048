//! The walk over the spanned TOML tree that builds a [`Config`] and collects
//! every problem with its place.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError, ConfigErrors, ProgramConfig, RestartPolicy, Retries, SupdConfig};
use crate::signals::parse_signal;

const TOP_KEYS: &[&str] = &["supd", "program"];
const SUPD_KEYS: &[&str] = &["socket", "shutdown_timeout", "allow_users", "state_dir"];
const PROGRAM_KEYS: &[&str] = &[
    "command",
    "cwd",
    "env",
    "autostart",
    "restart",
    "exit_codes",
    "start_secs",
    "start_retries",
    "stop_signal",
    "stop_timeout",
    "daemon",
    "backoff_initial",
    "backoff_max",
    "backoff_reset",
    "instances",
    "depends_on",
    "orphans",
];

/// Parses a duration with a unit: `"500ms"`, `"10s"`, `"2m"`, `"1h"`,
/// `"1m 30s"`. A bare number is refused (which unit would it be?).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(
            "a duration is empty: write it with a unit, such as \"500ms\" or \"10s\"".into(),
        );
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') && t != "0" {
        return Err(format!(
            "duration {text:?} has no unit: write \"{t}s\" for seconds or \"{t}ms\" for milliseconds"
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {text:?} ({e}): write it with a unit, such as \"500ms\", \"10s\" or \"2m\"")
    })
}

struct Walker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<(usize, ConfigError)>,
}

impl Walker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        self.errors.push((
            offset,
            ConfigError {
                file: self.file.to_path_buf(),
                line,
                col,
                message: message.into(),
            },
        ));
    }

    fn unknown_key(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        table: &str,
        known: &[&str],
    ) {
        let name = key.get_ref().as_ref();
        let suggestion = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(name, k), *k))
            .filter(|(d, _)| *d <= 2 || (*d <= 3 && name.len() > 6))
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
            .unwrap_or_else(|| format!(" (known keys: {})", known.join(", ")));
        self.error(
            key.span(),
            format!("unknown key \"{name}\" in {table}{suggestion}"),
        );
    }

    fn table<'v, 'i>(
        &mut self,
        value: &'v Spanned<DeValue<'i>>,
        what: &str,
    ) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    value.span(),
                    format!("{what} must be a table, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    value.span(),
                    format!("\"{key}\" must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    value.span(),
                    format!("\"{key}\" must be true or false, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<i64> {
        match value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(value.span(), format!("\"{key}\" is out of range"));
                    None
                }
            },
            other => {
                self.error(
                    value.span(),
                    format!("\"{key}\" must be an integer, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<Duration> {
        match value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.error(value.span(), format!("\"{key}\": {message}"));
                    None
                }
            },
            DeValue::Integer(i) => {
                let n = i.as_str();
                self.error(
                    value.span(),
                    format!(
                        "\"{key}\" must be a duration string with a unit, such as \"{n}s\" or \"{n}ms\""
                    ),
                );
                None
            }
            other => {
                self.error(
                    value.span(),
                    format!(
                        "\"{key}\" must be a duration string such as \"10s\", not {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    fn string_array(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                format!(
                    "\"{key}\" must be an array of strings, such as [\"a\", \"b\"], not {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    ok = false;
                    self.error(
                        item.span(),
                        format!("\"{key}\" must hold only strings, not {}", other.type_str()),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn path(&mut self, value: &Spanned<DeValue<'_>>, key: &str, base: &Path) -> Option<PathBuf> {
        let s = self.string(value, key)?;
        if s.is_empty() {
            self.error(value.span(), format!("\"{key}\" is empty: give a path"));
            return None;
        }
        Some(base.join(s))
    }
}

/// See [`Config::parse`].
pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let mut w = Walker {
        file,
        text,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            w.error(span, format!("invalid TOML: {message}"));
            return Err(finish(w.errors));
        }
    };
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);

    let mut supd = SupdConfig {
        socket: None,
        shutdown_timeout: Duration::from_secs(30),
        allow_uids: Vec::new(),
        state_dir: None,
    };
    let mut programs = BTreeMap::new();
    let mut dep_spans = Vec::new();

    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "supd" => {
                if let Some(t) = w.table(value, "[supd]") {
                    walk_supd(&mut w, t, &base, &mut supd);
                }
            }
            "program" => {
                if let Some(t) = w.table(value, "[program]") {
                    for (name, body) in t.iter() {
                        if let Some(p) = walk_program(&mut w, name, body, &base, &mut dep_spans) {
                            programs.insert(p.name.clone(), p);
                        }
                    }
                }
            }
            _ => w.unknown_key(key, "the top level", TOP_KEYS),
        }
    }

    check_dependencies(&mut w, &programs, &dep_spans);

    if w.errors.is_empty() {
        Ok(Config {
            path: file.to_path_buf(),
            supd,
            programs,
        })
    } else {
        Err(finish(w.errors))
    }
}

fn finish(mut errors: Vec<(usize, ConfigError)>) -> ConfigErrors {
    errors.sort_by_key(|(offset, _)| *offset);
    ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())
}

fn walk_supd(w: &mut Walker<'_>, t: &DeTable<'_>, base: &Path, supd: &mut SupdConfig) {
    for (key, value) in t.iter() {
        match key.get_ref().as_ref() {
            "socket" => supd.socket = w.path(value, "socket", base),
            "state_dir" => supd.state_dir = w.path(value, "state_dir", base),
            "shutdown_timeout" => {
                if let Some(d) = w.duration(value, "shutdown_timeout") {
                    supd.shutdown_timeout = d;
                }
            }
            "allow_users" => {
                let DeValue::Array(items) = value.get_ref() else {
                    w.error(
                        value.span(),
                        "\"allow_users\" must be an array of user names or uids, such as [\"deploy\", 1001]",
                    );
                    continue;
                };
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Integer(i) => match i.as_str().parse::<u32>() {
                            Ok(uid) => supd.allow_uids.push(uid),
                            Err(_) => w.error(item.span(), "a uid must be from 0 to 4294967295"),
                        },
                        DeValue::String(name) => {
                            match nix::unistd::User::from_name(name) {
                                Ok(Some(user)) => supd.allow_uids.push(user.uid.as_raw()),
                                _ => w.error(
                                    item.span(),
                                    format!("unknown user \"{name}\" in \"allow_users\": give an existing user name or a uid"),
                                ),
                            }
                        }
                        other => w.error(
                            item.span(),
                            format!("\"allow_users\" holds user names or uids, not {}", other.type_str()),
                        ),
                    }
                }
            }
            _ => w.unknown_key(key, "[supd]", SUPD_KEYS),
        }
    }
}

/// A valid program name: letters, digits, `_`, `-`, `.`; `:` is kept for
/// pool instances (`NAME:0`).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn walk_program(
    w: &mut Walker<'_>,
    name: &Spanned<std::borrow::Cow<'_, str>>,
    body: &Spanned<DeValue<'_>>,
    base: &Path,
    dep_spans: &mut Vec<DepSpan>,
) -> Option<ProgramConfig> {
    let pname = name.get_ref().to_string();
    let errors_before = w.errors.len();
    if !valid_name(&pname) {
        w.error(
            name.span(),
            format!("invalid program name \"{pname}\": use letters, digits, '_', '-' and '.' (at most 128)"),
        );
    }
    let t = w.table(body, &format!("[program.{pname}]"))?;
    let mut p = ProgramConfig::new(&pname, Vec::new());
    let mut has_command = false;
    let mut backoff_reset = None;
    for (key, value) in t.iter() {
        let k = key.get_ref().as_ref();
        match k {
            "command" => {
                has_command = true;
                if let DeValue::String(s) = value.get_ref() {
                    w.error(
                        value.span(),
                        format!(
                            "\"command\" must be an array of arguments, such as {:?}, not a string",
                            s.split_whitespace().collect::<Vec<_>>()
                        ),
                    );
                } else if let Some(argv) = w.string_array(value, k) {
                    if argv.is_empty() || argv[0].is_empty() {
                        w.error(
                            value.span(),
                            "\"command\" is empty: give the program and its arguments, such as [\"sleep\", \"60\"]",
                        );
                    } else if argv.iter().any(|a| a.contains('\0')) {
                        w.error(value.span(), "\"command\" has a NUL byte in an argument");
                    } else {
                        p.command = argv;
                    }
                }
            }
            "cwd" => p.cwd = w.path(value, k, base),
            "env" => {
                if let Some(vars) = w.table(value, "\"env\"") {
                    for (var, val) in vars.iter() {
                        let vname = var.get_ref().to_string();
                        if vname.is_empty() || vname.contains('=') || vname.contains('\0') {
                            w.error(
                                var.span(),
                                format!("invalid environment variable name {vname:?}"),
                            );
                            continue;
                        }
                        if let Some(v) = w.string(val, &format!("env.{vname}")) {
                            if v.contains('\0') {
                                w.error(val.span(), "an environment value cannot hold a NUL byte");
                            } else {
                                p.env.insert(vname, v);
                            }
                        }
                    }
                }
            }
            "autostart" => {
                if let Some(b) = w.boolean(value, k) {
                    p.autostart = b;
                }
            }
            "daemon" => {
                if let Some(b) = w.boolean(value, k) {
                    p.daemon = b;
                }
            }
            "orphans" => {
                if let Some(s) = w.string(value, k) {
                    match s.as_str() {
                        "kill" => p.orphans = super::OrphanPolicy::Kill,
                        "keep" => p.orphans = super::OrphanPolicy::Keep,
                        _ => w.error(
                            value.span(),
                            format!("\"orphans\" must be \"kill\" or \"keep\", not {s:?}"),
                        ),
                    }
                }
            }
            "restart" => {
                if let Some(s) = w.string(value, k) {
                    match s.as_str() {
                        "always" => p.restart = RestartPolicy::Always,
                        "on-failure" => p.restart = RestartPolicy::OnFailure,
                        "never" => p.restart = RestartPolicy::Never,
                        _ => w.error(
                            value.span(),
                            format!("\"restart\" must be \"always\", \"on-failure\" or \"never\", not {s:?}"),
                        ),
                    }
                }
            }
            "exit_codes" => {
                if let DeValue::Array(items) = value.get_ref() {
                    let mut codes = Vec::new();
                    for item in items.iter() {
                        if let Some(n) = w.integer(item, k) {
                            if (0..=255).contains(&n) {
                                codes.push(n as i32);
                            } else {
                                w.error(item.span(), "an exit code is from 0 to 255");
                            }
                        }
                    }
                    p.exit_codes = codes;
                } else {
                    w.error(
                        value.span(),
                        "\"exit_codes\" must be an array of integers, such as [0, 2]",
                    );
                }
            }
            "start_secs" => {
                if let Some(d) = w.duration(value, k) {
                    p.start_secs = d;
                }
            }
            "start_retries" => match value.get_ref() {
                DeValue::String(s) if s == "infinite" => p.start_retries = Retries::Infinite,
                DeValue::Integer(_) => {
                    if let Some(n) = w.integer(value, k) {
                        match u32::try_from(n) {
                            Ok(n) => p.start_retries = Retries::Limited(n),
                            Err(_) => w.error(value.span(), "\"start_retries\" must be 0 or more"),
                        }
                    }
                }
                _ => w.error(
                    value.span(),
                    "\"start_retries\" must be a number of retries or \"infinite\"",
                ),
            },
            "stop_signal" => {
                if let Some(s) = w.string(value, k) {
                    match parse_signal(&s) {
                        Ok(sig) => p.stop_signal = sig,
                        Err(e) => w.error(value.span(), format!("\"stop_signal\": {e}")),
                    }
                }
            }
            "stop_timeout" => {
                if let Some(d) = w.duration(value, k) {
                    p.stop_timeout = d;
                }
            }
            "backoff_initial" => {
                if let Some(d) = w.duration(value, k) {
                    p.backoff_initial = d;
                }
            }
            "backoff_max" => {
                if let Some(d) = w.duration(value, k) {
                    p.backoff_max = d;
                }
            }
            "backoff_reset" => backoff_reset = w.duration(value, k),
            "instances" => {
                if let Some(n) = w.integer(value, k) {
                    match u32::try_from(n) {
                        Ok(n) if (1..=super::MAX_INSTANCES).contains(&n) => p.instances = Some(n),
                        _ => w.error(
                            value.span(),
                            format!("\"instances\" must be from 1 to {}", super::MAX_INSTANCES),
                        ),
                    }
                }
            }
            "depends_on" => {
                if let DeValue::Array(items) = value.get_ref() {
                    for item in items.iter() {
                        if let Some(dep) = w.string(item, k) {
                            if dep == pname {
                                w.error(item.span(), format!("{pname} cannot depend on itself"));
                            } else if !p.depends_on.contains(&dep) {
                                dep_spans.push(DepSpan {
                                    program: pname.clone(),
                                    dep: dep.clone(),
                                    span: item.span(),
                                });
                                p.depends_on.push(dep);
                            }
                        }
                    }
                } else {
                    w.error(
                        value.span(),
                        "\"depends_on\" must be an array of program names, such as [\"db\"]",
                    );
                }
            }
            _ => w.unknown_key(key, &format!("[program.{pname}]"), PROGRAM_KEYS),
        }
    }
    if !has_command {
        w.error(
            name.span(),
            format!("[program.{pname}] has no \"command\": add one, such as command = [\"sleep\", \"60\"]"),
        );
    }
    if p.backoff_max < p.backoff_initial {
        p.backoff_max = p.backoff_initial;
    }
    p.backoff_reset =
        backoff_reset.unwrap_or_else(|| (p.start_secs * 10).max(Duration::from_secs(10)));
    (w.errors.len() == errors_before).then_some(p)
}

/// Where one `depends_on` entry stands, to report unknown names and cycles.
pub(super) struct DepSpan {
    program: String,
    dep: String,
    span: Range<usize>,
}

/// Reports dependencies on unknown programs and dependency cycles, each at
/// the `depends_on` entry that closes it.
fn check_dependencies(
    w: &mut Walker<'_>,
    programs: &BTreeMap<String, ProgramConfig>,
    deps: &[DepSpan],
) {
    for d in deps {
        if programs.contains_key(&d.program) && !programs.contains_key(&d.dep) {
            w.error(
                d.span.clone(),
                format!(
                    "{} depends on \"{}\", which is not a program here (define [program.{}] or remove it)",
                    d.program, d.dep, d.dep
                ),
            );
        }
    }
    // Depth-first search; 0 = unseen, 1 = on the path, 2 = done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = std::collections::BTreeSet::new();
    for start in programs.keys() {
        let mut path: Vec<&str> = Vec::new();
        visit(start, programs, &mut mark, &mut path, &mut |cycle: Vec<
            &str,
        >| {
            let mut key: Vec<&str> = cycle.clone();
            key.sort_unstable();
            if !reported.insert(key.join(",")) {
                return;
            }
            let (last, first) = (cycle[cycle.len() - 1], cycle[0]);
            let span = deps
                .iter()
                .find(|d| d.program == last && d.dep == first)
                .map_or(0..0, |d| d.span.clone());
            let mut shown: Vec<&str> = cycle.clone();
            shown.push(first);
            w.error(
                span,
                format!(
                    "dependency cycle: {} (remove one of these depends_on entries)",
                    shown.join(" -> ")
                ),
            );
        });
    }
}

fn visit<'a>(
    name: &'a str,
    programs: &'a BTreeMap<String, ProgramConfig>,
    mark: &mut BTreeMap<&'a str, u8>,
    path: &mut Vec<&'a str>,
    report: &mut dyn FnMut(Vec<&'a str>),
) {
    match mark.get(name) {
        Some(2) => return,
        Some(1) => {
            if let Some(i) = path.iter().position(|n| *n == name) {
                report(path[i..].to_vec());
            }
            return;
        }
        _ => {}
    }
    let Some(p) = programs.get(name) else {
        return;
    };
    mark.insert(name, 1);
    path.push(name);
    for dep in &p.depends_on {
        visit(dep, programs, mark, path, report);
    }
    path.pop();
    mark.insert(name, 2);
}
