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

const LOG_MAX_BYTES_RANGE: &str =
    "\"log_max_bytes\" must be from 1 byte to 1 TiB (\"1024GiB\"), such as \"10MiB\"";
const TOP_KEYS: &[&str] = &["supd", "program", "pool"];
const POOL_KEYS: &[&str] = &["size"];
const SUPD_KEYS: &[&str] = &[
    "socket",
    "shutdown_timeout",
    "allow_users",
    "socket_group",
    "state_dir",
    "include",
    "log_dir",
];
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
    "user",
    "group",
    "umask",
    "limit_nofile",
    "limit_core",
    "stdout",
    "redirect_stderr",
    "log_max_bytes",
    "log_backups",
    "log_timestamps",
];

/// Parses a size: an integer of bytes, or a string with a unit: `"500KB"`,
/// `"10MiB"`, `"1G"` (K/M/G are powers of 1000 with `B`, of 1024 with `iB`
/// or alone).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size {text:?}: use bytes, or a number with a unit such as \"500KB\" or \"10MiB\""
        )
    };
    let too_large = || format!("size {text:?} is too large");
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| too_large())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "K" | "KiB" => 1024,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(too_large)
}

/// Parses a duration with a unit: `"500ms"`, `"10s"`, `"2m"`, `"1h"`,
/// `"1m 30s"`, from 0 to [`super::MAX_DURATION`] (`"1y"`). A bare number
/// is refused (which unit would it be?), and so is a negative one.
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
    if let Some(rest) = t.strip_prefix('-') {
        let example = Some(rest.trim()).filter(|r| !r.is_empty()).unwrap_or("5s");
        return Err(format!(
            "duration {text:?} is negative: a duration is 0 or more, such as \"{example}\""
        ));
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') && t != "0" {
        return Err(format!(
            "duration {text:?} has no unit: write \"{t}s\" for seconds or \"{t}ms\" for milliseconds"
        ));
    }
    let too_long = || format!("duration {text:?} is too long: the most is one year (\"1y\")");
    match humantime::parse_duration(t) {
        Ok(d) if d > super::MAX_DURATION => Err(too_long()),
        Ok(d) => Ok(d),
        Err(humantime::DurationError::NumberOverflow) => Err(too_long()),
        Err(e) => Err(format!(
            "invalid duration {text:?} ({e}): write it with a unit, such as \"500ms\", \"10s\" or \"2m\""
        )),
    }
}

/// The closest of `candidates` to `name`, if one is close enough to be a
/// likely misspelling (Damerau-Levenshtein distance 2 at most, or 3 for
/// names longer than 6): what "did you mean ...?" suggests, for keys in the
/// configuration and for program names in supd's answers.
pub fn closest_name<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, _)| *d <= 2 || (*d <= 3 && name.len() > 6))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

struct Walker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<(usize, ConfigError)>,
}

impl Walker<'_> {
    fn place(&self, span: &Range<usize>) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: String::new(),
        }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let mut e = self.place(&span);
        e.message = message.into();
        self.errors.push((span.start, e));
    }

    fn unknown_key(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        table: &str,
        known: &[&str],
    ) {
        let name = key.get_ref().as_ref();
        let suggestion = closest_name(name, known.iter().copied())
            .map(|k| format!(" (did you mean \"{k}\"?)"))
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

/// Everything gathered from the main file and its includes.
struct Gathered {
    supd: SupdConfig,
    programs: BTreeMap<String, ProgramConfig>,
    run_pools: BTreeMap<String, u32>,
    /// Where each program is defined (message left empty).
    places: BTreeMap<String, ConfigError>,
    deps: Vec<DepSpan>,
    /// `include` patterns with their places.
    includes: Vec<(String, ConfigError)>,
    errors: Vec<ConfigError>,
}

/// See [`Config::parse`].
pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut g = Gathered {
        supd: SupdConfig {
            socket: None,
            shutdown_timeout: Duration::from_secs(30),
            allow_uids: Vec::new(),
            socket_group: None,
            state_dir: None,
            include: Vec::new(),
            log_dir: None,
        },
        run_pools: BTreeMap::new(),
        programs: BTreeMap::new(),
        places: BTreeMap::new(),
        deps: Vec::new(),
        includes: Vec::new(),
        errors: Vec::new(),
    };
    parse_file(text, file, &base, true, &mut g);
    let includes = std::mem::take(&mut g.includes);
    let mut seen = std::collections::BTreeSet::new();
    for (pattern, place) in includes {
        let full = base.join(&pattern);
        let paths = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => paths,
            Err(e) => {
                g.errors.push(ConfigError {
                    message: format!("invalid include pattern {pattern:?}: {e}"),
                    ..place
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        files.sort();
        for path in files {
            if path == file || !seen.insert(path.clone()) {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let dir = path
                        .parent()
                        .map_or_else(|| base.clone(), Path::to_path_buf);
                    parse_file(&text, &path, &dir, false, &mut g);
                }
                Err(e) => g.errors.push(ConfigError {
                    message: format!("cannot read included file {}: {e}", path.display()),
                    ..place.clone()
                }),
            }
        }
    }
    check_dependencies(&g.programs, &g.deps, &mut g.errors);
    // File order: the main file first, then the included ones; by place within each.
    g.errors.sort_by(|a, b| {
        (a.file != file, &a.file, a.line, a.col).cmp(&(b.file != file, &b.file, b.line, b.col))
    });
    if g.errors.is_empty() {
        Ok(Config {
            path: file.to_path_buf(),
            supd: g.supd,
            programs: g.programs,
            run_pools: g.run_pools,
        })
    } else {
        Err(ConfigErrors(g.errors))
    }
}

/// Walks one file: the main one (`[supd]` and `[program.*]`) or an included
/// one (`[program.*]` only).
fn parse_file(text: &str, file: &Path, base: &Path, main: bool, g: &mut Gathered) {
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
            g.errors.extend(finish(w.errors).0);
            return;
        }
    };
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "supd" if main => {
                if let Some(t) = w.table(value, "[supd]") {
                    walk_supd(&mut w, t, base, &mut g.supd, &mut g.includes);
                }
            }
            "program" => {
                if let Some(t) = w.table(value, "[program]") {
                    for (name, body) in t.iter() {
                        let Some(p) = walk_program(&mut w, name, body, base, &mut g.deps) else {
                            continue;
                        };
                        let here = w.place(&name.span());
                        if let Some(first) = g.places.get(&p.name) {
                            let first =
                                format!("{}:{}:{}", first.file.display(), first.line, first.col);
                            w.error(
                                name.span(),
                                format!("program \"{}\" is defined twice: here and at {first} (rename or remove one)", p.name),
                            );
                            continue;
                        }
                        g.places.insert(p.name.clone(), here);
                        g.programs.insert(p.name.clone(), p);
                    }
                }
            }
            "pool" => {
                if let Some(t) = w.table(value, "[pool]") {
                    for (name, body) in t.iter() {
                        if let Some(size) = walk_pool(&mut w, name, body) {
                            g.run_pools.insert(name.get_ref().to_string(), size);
                        }
                    }
                }
            }
            "supd" => w.error(
                key.span(),
                "[supd] belongs in the main configuration file, not in an included one",
            ),
            _ => w.unknown_key(key, "the top level", TOP_KEYS),
        }
    }
    g.errors.extend(finish(w.errors).0);
}

fn finish(mut errors: Vec<(usize, ConfigError)>) -> ConfigErrors {
    errors.sort_by_key(|(offset, _)| *offset);
    ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())
}

fn walk_supd(
    w: &mut Walker<'_>,
    t: &DeTable<'_>,
    base: &Path,
    supd: &mut SupdConfig,
    includes: &mut Vec<(String, ConfigError)>,
) {
    for (key, value) in t.iter() {
        match key.get_ref().as_ref() {
            "include" => {
                if let Some(patterns) = w.string_array(value, "include") {
                    let place = w.place(&value.span());
                    for pattern in patterns {
                        supd.include.push(pattern.clone());
                        includes.push((pattern, place.clone()));
                    }
                }
            }
            "socket" => supd.socket = w.path(value, "socket", base),
            "socket_group" => supd.socket_group = walk_group(w, value, "socket_group"),
            "state_dir" => supd.state_dir = w.path(value, "state_dir", base),
            "log_dir" => supd.log_dir = w.path(value, "log_dir", base),
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

/// What is wrong with `name` as the name of a program, a pool or a run
/// (`supctl run --name`), or `None` when it is valid: 1 to 128 letters,
/// digits, `_`, `-` and `.`, but not `.` or `..` (a name becomes part of log
/// file names, and those two name folders). `:` is kept for pool instances
/// (`NAME:0`).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name == "." || name == ".." {
        return Some("\".\" and \"..\" name folders: choose a name with a letter or digit in it");
    }
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (!valid).then_some("use letters, digits, '_', '-' and '.' (at most 128)")
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
    if let Some(problem) = name_problem(&pname) {
        w.error(
            name.span(),
            format!("invalid program name \"{pname}\": {problem}"),
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
            "stdout" => {
                if let Some(s) = w.string(value, k) {
                    match s.as_str() {
                        "log" => p.output.mode = super::OutputMode::Log,
                        "journal" => p.output.mode = super::OutputMode::Journal,
                        "null" => p.output.mode = super::OutputMode::Null,
                        _ => w.error(
                            value.span(),
                            format!("\"stdout\" must be \"log\", \"journal\" or \"null\", not {s:?}"),
                        ),
                    }
                }
            }
            "redirect_stderr" => {
                if let Some(b) = w.boolean(value, k) {
                    p.output.redirect_stderr = b;
                }
            }
            "log_timestamps" => {
                if let Some(b) = w.boolean(value, k) {
                    p.output.timestamps = b;
                }
            }
            "log_max_bytes" => match value.get_ref() {
                DeValue::String(s) => match parse_size(s) {
                    Ok(n) if (1..=super::MAX_LOG_BYTES).contains(&n) => p.output.max_bytes = n,
                    Ok(_) => w.error(value.span(), LOG_MAX_BYTES_RANGE),
                    Err(e) => w.error(value.span(), format!("\"log_max_bytes\": {e}")),
                },
                DeValue::Integer(_) => match w.integer(value, k) {
                    Some(n) if (1..=super::MAX_LOG_BYTES as i64).contains(&n) => {
                        p.output.max_bytes = n as u64;
                    }
                    Some(_) => w.error(value.span(), LOG_MAX_BYTES_RANGE),
                    None => {}
                },
                other => w.error(
                    value.span(),
                    format!("\"log_max_bytes\" must be a size such as \"10MiB\" or a number of bytes, not {}", other.type_str()),
                ),
            },
            "log_backups" => match w.integer(value, k) {
                Some(n) if (0..=1000).contains(&n) => p.output.backups = n as u32,
                Some(_) => w.error(value.span(), "\"log_backups\" must be from 0 to 1000"),
                None => {}
            },
            "user" => p.user = walk_user(w, value),
            "group" => p.group = walk_group(w, value, "group"),
            "umask" => match value.get_ref() {
                DeValue::String(text) => {
                    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
                        Ok(m) if m <= 0o777 => p.umask = Some(m),
                        _ => w.error(
                            value.span(),
                            format!(
                                "\"umask\" must be an octal mode such as \"022\", not {text:?}"
                            ),
                        ),
                    }
                }
                DeValue::Integer(_) => match w.integer(value, k) {
                    Some(m) if (0..=0o777).contains(&m) => p.umask = Some(m as u32),
                    Some(_) => w.error(value.span(), "\"umask\" must be from 0o000 to 0o777"),
                    None => {}
                },
                other => w.error(
                    value.span(),
                    format!(
                        "\"umask\" must be an octal string such as \"022\" or 0o022, not {}",
                        other.type_str()
                    ),
                ),
            },
            "limit_nofile" => p.limit_nofile = walk_limit(w, value, k),
            "limit_core" => p.limit_core = walk_limit(w, value, k),
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
                            Err(_) if n < 0 => w.error(
                                value.span(),
                                format!("\"start_retries\" must be a count of 0 or more, or \"infinite\" to retry for ever, not {n}"),
                            ),
                            Err(_) => w.error(
                                value.span(),
                                format!("\"start_retries\" must be at most {}, or \"infinite\" to retry for ever", u32::MAX),
                            ),
                        }
                    }
                }
                other => w.error(
                    value.span(),
                    format!(
                        "\"start_retries\" must be a count of 0 or more, or \"infinite\" to retry for ever, not {}",
                        match other {
                            DeValue::String(s) => format!("{:?}", s.as_ref()),
                            other => other.type_str().to_string(),
                        }
                    ),
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
                                    place: w.place(&item.span()),
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
    // start_secs is at most MAX_DURATION, so ten times it fits; saturating
    // all the same, as this is where a config value is multiplied.
    p.backoff_reset = backoff_reset
        .unwrap_or_else(|| (p.start_secs.saturating_mul(10)).max(Duration::from_secs(10)));
    (w.errors.len() == errors_before).then_some(p)
}

/// One `[pool.NAME]` table: `size = N` (from 1 to [`super::MAX_INSTANCES`]).
fn walk_pool(
    w: &mut Walker<'_>,
    name: &Spanned<std::borrow::Cow<'_, str>>,
    body: &Spanned<DeValue<'_>>,
) -> Option<u32> {
    let pname = name.get_ref().to_string();
    let before = w.errors.len();
    if let Some(problem) = name_problem(&pname) {
        w.error(
            name.span(),
            format!("invalid pool name \"{pname}\": {problem}"),
        );
    }
    let t = w.table(body, &format!("[pool.{pname}]"))?;
    let mut size = None;
    for (key, value) in t.iter() {
        match key.get_ref().as_ref() {
            "size" => match w.integer(value, "size") {
                Some(n) if (1..=i64::from(super::MAX_INSTANCES)).contains(&n) => {
                    size = Some(n as u32);
                }
                Some(_) => w.error(
                    value.span(),
                    format!("\"size\" must be from 1 to {}", super::MAX_INSTANCES),
                ),
                None => {}
            },
            _ => w.unknown_key(key, &format!("[pool.{pname}]"), POOL_KEYS),
        }
    }
    if size.is_none() && w.errors.len() == before {
        w.error(
            name.span(),
            format!("[pool.{pname}] has no \"size\": add one, such as size = 2"),
        );
    }
    (w.errors.len() == before).then_some(size).flatten()
}

/// Where one `depends_on` entry stands, to report unknown names and cycles.
pub(super) struct DepSpan {
    program: String,
    dep: String,
    place: ConfigError,
}

/// Reports dependencies on unknown programs and dependency cycles, each at
/// the `depends_on` entry that closes it.
fn check_dependencies(
    programs: &BTreeMap<String, ProgramConfig>,
    deps: &[DepSpan],
    errors: &mut Vec<ConfigError>,
) {
    for d in deps {
        if programs.contains_key(&d.program) && !programs.contains_key(&d.dep) {
            errors.push(ConfigError {
                message: format!(
                    "{} depends on \"{}\", which is not a program here (define [program.{}] or remove it)",
                    d.program, d.dep, d.dep
                ),
                ..d.place.clone()
            });
        }
    }
    // Depth-first search; 1 = on the path, 2 = done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for start in programs.keys() {
        let mut path: Vec<&str> = Vec::new();
        visit(start, programs, &mut mark, &mut path, &mut |cycle: Vec<
            &str,
        >| {
            let mut key: Vec<&str> = cycle.clone();
            key.sort_unstable();
            if reported.insert(key.join(",")) {
                found.push(cycle);
            }
        });
    }
    for cycle in found {
        let (last, first) = (cycle[cycle.len() - 1], cycle[0]);
        let place = deps
            .iter()
            .find(|d| d.program == last && d.dep == first)
            .map(|d| d.place.clone());
        let mut shown: Vec<&str> = cycle.clone();
        shown.push(first);
        let message = format!(
            "dependency cycle: {} (remove one of these depends_on entries)",
            shown.join(" -> ")
        );
        if let Some(place) = place {
            errors.push(ConfigError { message, ..place });
        }
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

fn walk_user(w: &mut Walker<'_>, value: &Spanned<DeValue<'_>>) -> Option<super::RunAs> {
    use nix::unistd::{Uid, User};
    let user = match value.get_ref() {
        DeValue::String(name) => User::from_name(name).ok().flatten().ok_or(format!(
            "unknown user \"{name}\": give an existing user name or a uid"
        )),
        DeValue::Integer(i) => match i.as_str().parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .ok_or(format!("unknown uid {uid}: no such user")),
            Err(_) => Err("a uid is from 0 to 4294967295".to_string()),
        },
        other => Err(format!(
            "\"user\" must be a user name or a uid, not {}",
            other.type_str()
        )),
    };
    let user = match user {
        Ok(u) => u,
        Err(message) => {
            w.error(value.span(), message);
            return None;
        }
    };
    let groups = std::ffi::CString::new(user.name.clone())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![user.gid.as_raw()]);
    Some(super::RunAs {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
    })
}

/// Reads a group name or gid for `key` (`group` or `socket_group`); an
/// unknown one is an error at the value's place that names the key.
fn walk_group(w: &mut Walker<'_>, value: &Spanned<DeValue<'_>>, key: &str) -> Option<u32> {
    use nix::unistd::{Gid, Group};
    let group = match value.get_ref() {
        DeValue::String(name) => Group::from_name(name).ok().flatten().ok_or(format!(
            "unknown group \"{name}\" in \"{key}\": give an existing group name or a gid"
        )),
        DeValue::Integer(i) => match i.as_str().parse::<u32>() {
            Ok(gid) => Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .ok_or(format!("unknown gid {gid}: no such group")),
            Err(_) => Err("a gid is from 0 to 4294967295".to_string()),
        },
        other => Err(format!(
            "\"{key}\" must be a group name or a gid, not {}",
            other.type_str()
        )),
    };
    match group {
        Ok(g) => Some(g.gid.as_raw()),
        Err(message) => {
            w.error(value.span(), message);
            None
        }
    }
}

fn walk_limit(w: &mut Walker<'_>, value: &Spanned<DeValue<'_>>, key: &str) -> Option<super::Limit> {
    match value.get_ref() {
        DeValue::String(s) if s == "infinity" || s == "unlimited" => Some(None),
        DeValue::Integer(_) => match w.integer(value, key) {
            Some(n) if n >= 0 => Some(Some(n as u64)),
            Some(_) => {
                w.error(value.span(), format!("\"{key}\" must be 0 or more"));
                None
            }
            None => None,
        },
        other => {
            w.error(
                value.span(),
                format!(
                    "\"{key}\" must be a number or \"infinity\", not {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}
