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
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            v.error(span, e.message().to_string());
            return Err(v.finish(file));
        }
    };
    let config = v.config(raw);
    if v.diags.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    Err(v.finish(file))
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
