//! `mirror.toml`: parsing, validation, and the validated model the daemon runs.
//!
//! [`load`] / [`parse`] read the file with spans ([`raw`]), then check every
//! section ([`validate`], one file per section of the SPEC: daemon, source,
//! filter, target, session), collecting *all* problems, each with
//! file:line:column, the field, and the accepted values. A [`Config`] that
//! comes back ([`model`]) is fully resolved: names are indices, CIDRs are
//! parsed, ranges are ordered. [`values`] parses the value syntaxes shared by
//! the sections (sizes, ports, protocols, interface names); [`cpus`] the
//! `[daemon] cpus` list; [`schedule`] the `[[session.schedule]]` windows and
//! their maths. This module depends on nothing else in the crate.

pub mod cpus;
pub mod model;
pub mod raw;
pub mod schedule;
mod validate;
pub mod values;

use std::path::{Path, PathBuf};

pub use model::*;
use raw::RawConfig;
pub use raw::{
    IngressHook, SessionPath, ShareUmem, SourceDirection, SourceMode, TargetKind, XdpMode, ZeroCopy,
};
use validate::Validator;
pub use values::{line_col, parse_min_free, parse_ports, parse_protocol, parse_size, valid_ifname};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: &str, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{}:{}: {}", d.line, d.column, d.message));
    }
    out
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Validates `text`; `file` names it in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut v = Validator::new(text);
    // The deserializer stops at its first error (an unknown variant, an
    // unknown key, a wrong type): record it, repair that line (an unknown
    // variant becomes the first accepted one, any other bad `key = value` a
    // comment) and read on, so that one `mirror check` reports every error,
    // not one per run. Lines keep their numbers; what the validator then
    // finds on a repaired line is left out (it would be about the repair).
    let mut doc = text.to_string();
    let mut repaired: Vec<usize> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    // Unknown variants read on as the first accepted one: (the table's key
    // path, that variant). What the validator then says in that table about
    // the stand-in (`remote` does not apply to kind = "interface") is not
    // the user's error.
    let mut stand_ins: Vec<(String, String)> = Vec::new();
    let mut raw = None;
    for _ in 0..MAX_READ_ERRORS {
        match toml::from_str::<RawConfig>(&doc) {
            Ok(r) => {
                raw = Some(r);
                break;
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let message = e.message().to_string();
                // A key taken out makes its table miss it: not a new error.
                if removed
                    .iter()
                    .any(|k| message == format!("missing field `{k}`"))
                {
                    break;
                }
                let (line, column) = line_col(&doc, span.start);
                let at = offset_of(text, line, column);
                let len = span.end.saturating_sub(span.start);
                v.error(
                    at..at + len.max(usize::from(span.end > span.start)),
                    message.clone(),
                );
                if span.end <= span.start || repaired.contains(&line) {
                    break;
                }
                match repair(&mut doc, span.start, &message) {
                    Some(key) => {
                        repaired.push(line);
                        if key.is_none() {
                            let variant = message
                                .split_once("expected ")
                                .and_then(|(_, rest)| rest.split('`').nth(1));
                            let table = v
                                .key_path_at(at)
                                .and_then(|p| p.rsplit_once('.').map(|(t, _)| t.to_string()));
                            if let (Some(t), Some(var)) = (table, variant) {
                                stand_ins.push((t, format!("\"{var}\"")));
                            }
                        }
                        removed.extend(key);
                    }
                    None => break,
                }
            }
        }
    }
    let Some(raw) = raw else {
        return Err(v.finish(file));
    };
    let mut after = Validator::new(&doc);
    let config = after.config(raw);
    v.diags.extend(after.diags.into_iter().filter(|d| {
        !repaired.contains(&d.line)
            && !stand_ins.iter().any(|(table, variant)| {
                d.message
                    .strip_prefix(table.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', ':', ' ']))
                    && d.message.contains(variant.as_str())
            })
    }));
    if v.diags.is_empty() && repaired.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    Err(v.finish(file))
}

/// At most this many deserializer errors are read past in one file.
const MAX_READ_ERRORS: usize = 64;

/// The byte offset of 1-based `line` and `column` in `text` (the column
/// clamped to the line).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let len = text[start.min(text.len())..]
        .find('\n')
        .unwrap_or(text.len() - start.min(text.len()));
    start + column.saturating_sub(1).min(len)
}

/// Repairs the one-line `key = value` holding byte `at` after `message`: an
/// unknown variant becomes the first variant the message names (`Some(None)`),
/// anything else a comment (`Some(Some(key))`: the table now misses `key`).
/// `None` when that line is not a one-line `key = value` (a table header, a
/// value over several lines).
fn repair(doc: &mut String, at: usize, message: &str) -> Option<Option<String>> {
    let start = doc[..at.min(doc.len())].rfind('\n').map_or(0, |i| i + 1);
    let end = doc[start..].find('\n').map_or(doc.len(), |i| start + i);
    let line = &doc[start..end];
    let indent = line.len() - line.trim_start().len();
    let body = line.trim_start();
    let (key, value) = body.split_once('=')?;
    let key = key.trim().to_string();
    let value = value.trim();
    let one_line = !value.is_empty()
        && !value.starts_with("\"\"\"")
        && !value.starts_with("\'\'\'")
        && closes_on_its_line(value);
    if body.starts_with(['[', '#']) || key.is_empty() || !one_line || !body.is_char_boundary(1) {
        return None;
    }
    let variant = message
        .strip_prefix("unknown variant `")
        .and_then(|m| m.split_once("expected "))
        .and_then(|(_, rest)| rest.split('`').nth(1));
    match variant {
        Some(first) if value.starts_with('"') => {
            doc.replace_range(start..end, &format!("{key} = \"{first}\""));
            Some(None)
        }
        _ => {
            doc.replace_range(start + indent..start + indent + 1, "#");
            Some(Some(key))
        }
    }
}

/// Whether every `[` and `{` of a value opened on its line closes there
/// (brackets inside strings and after a comment do not count): an array or
/// inline table over several lines does not.
fn closes_on_its_line(value: &str) -> bool {
    let mut depth = 0u32;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => loop {
                match chars.next() {
                    Some('\\') => {
                        chars.next();
                    }
                    Some('"') | None => break,
                    Some(_) => {}
                }
            },
            '\'' if !chars.by_ref().any(|c| c == '\'') => break,
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '#' => break,
            _ => {}
        }
    }
    depth == 0
}

/// Validates one rule written as the keys of a `[[filter.rule]]` table
/// (`number = 100` …), as `mirror rules add` sends it; `what` names it in
/// error messages.
pub fn parse_rule(text: &str, what: &str) -> Result<Rule, ConfigError> {
    let mut v = Validator::new(text);
    let raw: raw::RawRule = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            v.error(span, e.message().to_string());
            return Err(v.finish(what));
        }
    };
    match v.rule(&raw) {
        Some(rule) if v.diags.is_empty() => Ok(rule),
        _ => Err(v.finish(what)),
    }
}

#[cfg(test)]
mod tests;
