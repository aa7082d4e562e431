//! Checking a parsed file, section by section (one file each, as the SPEC
//! lists them), collecting every problem with its position instead of
//! stopping at the first.

mod daemon;
mod filter;
mod session;
mod source;
mod target;

use std::collections::HashMap;
use std::ops::Range;

use serde_spanned::Spanned;

use super::model::{Config, Dest, Direction, Filter, Session, Source, Target};
use super::raw::{RawConfig, RawSize};
use super::values::{line_col, parse_size};
use super::{ConfigError, Diagnostic};

pub(super) struct Validator<'t> {
    pub(super) text: &'t str,
    pub(super) diags: Vec<Diagnostic>,
    /// Every key of the document with its path (`source[0].mode`) and the
    /// bytes it spans (key through value), to name the key of an error.
    paths: Vec<(Range<usize>, String)>,
}

impl<'t> Validator<'t> {
    pub(super) fn new(text: &'t str) -> Validator<'t> {
        Validator {
            text,
            diags: Vec::new(),
            paths: key_paths(text),
        }
    }

    /// The innermost key path around byte `at` (`target[0].kind`).
    pub(super) fn key_path_at(&self, at: usize) -> Option<String> {
        // Innermost: the shortest span; on a tie the deeper key (pushed
        // later): `source[0]` rather than `source`.
        self.paths
            .iter()
            .rev()
            .filter(|(r, _)| r.start <= at && at < r.end.max(r.start + 1))
            .min_by_key(|(r, _)| r.end - r.start)
            .map(|(_, p)| p.clone())
    }

    /// Records an error at `span`, named by the innermost key around it.
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        // An error about the whole file (an empty span at its start) has no key.
        let key = (span.end > span.start)
            .then_some(())
            .and_then(|()| self.key_path_at(span.start));
        let message = message.into();
        self.diags.push(Diagnostic {
            line,
            column,
            message: match key {
                Some(k) => name_key(&k, message),
                None => message,
            },
        });
    }

    pub(super) fn finish(mut self, file: &str) -> ConfigError {
        self.diags.sort_by_key(|d| (d.line, d.column));
        ConfigError::Invalid {
            file: file.to_string(),
            diagnostics: self.diags,
        }
    }

    /// Checks that `value` lies in `range`, reporting `what` otherwise.
    fn int_in<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
    ) -> Option<T> {
        self.int_checked(value, range, what, "")
    }

    /// [`Validator::int_in`] for a key whose 0 means something else (`what`
    /// says what: "packet_length (0 = whole frame)"): 0, or a value in
    /// `range`.
    fn int_off_or_in<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
    ) -> Option<T> {
        if *value.get_ref() == 0 {
            return T::try_from(0).ok();
        }
        self.int_checked(value, range, what, "0 or ")
    }

    /// A byte count whose 0 is off (`what` says so: "flow_cutoff_bytes
    /// (0 = off)"): 0, or `min` to `i64::MAX` bytes, written as a number or
    /// as a size (`"64KiB"`, as `rotate_size`).
    fn size_off_or_from(&mut self, value: &Spanned<RawSize>, min: u64, what: &str) -> Option<u64> {
        let text = match value.get_ref() {
            RawSize::Number(n) => {
                let n = Spanned::new(value.span(), *n);
                return self.int_off_or_in::<u64>(&n, min as i64..=i64::MAX, what);
            }
            RawSize::Text(t) => t,
        };
        match parse_size(text) {
            Ok(0) => Some(0),
            Ok(n) if (min..=i64::MAX as u64).contains(&n) => Some(n),
            Ok(n) => {
                self.error(
                    value.span(),
                    format!(
                        "{what} = \"{text}\" ({n} bytes) is out of range: accepted values are 0 \
                         or {min} to {} bytes",
                        i64::MAX
                    ),
                );
                None
            }
            Err(e) => {
                self.error(value.span(), format!("{what} = \"{text}\": {e}"));
                None
            }
        }
    }

    fn int_checked<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
        also: &str,
    ) -> Option<T> {
        let n = *value.get_ref();
        if !range.contains(&n) {
            self.error(
                value.span(),
                format!(
                    "{what} = {n} is out of range: accepted values are {also}{} to {}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        T::try_from(n).ok()
    }

    /// Index names, reporting duplicates.
    fn names<'a>(
        &mut self,
        kind: &str,
        names: impl Iterator<Item = &'a Spanned<String>>,
    ) -> HashMap<String, usize> {
        let mut map = HashMap::new();
        for (i, n) in names.enumerate() {
            let name = n.get_ref();
            if name.is_empty() {
                self.error(n.span(), format!("{kind} name must not be empty"));
            } else if map.insert(name.clone(), i).is_some() {
                self.error(n.span(), format!("duplicate {kind} name `{name}`"));
            }
        }
        map
    }

    fn power_of_two(&mut self, n: &Spanned<u32>, min: u32, max: u32, what: &str) -> Option<u32> {
        let v = *n.get_ref();
        if !v.is_power_of_two() || v < min || v > max {
            self.error(
                n.span(),
                format!("{what} = {v}: accepted values are powers of two from {min} to {max}"),
            );
            return None;
        }
        Some(v)
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let daemon = self.daemon(&raw.daemon);
        let source_names = self.names("source", raw.sources.iter().map(|s| &s.get_ref().name));
        let filter_names = self.names("filter", raw.filters.iter().map(|f| &f.get_ref().name));
        let target_names = self.names("target", raw.targets.iter().map(|t| &t.get_ref().name));
        let groups = self.groups(&raw.target_groups, &target_names);
        // Sessions name targets and groups alike.
        let mut dest_names: HashMap<String, Dest> = target_names
            .iter()
            .map(|(n, &i)| (n.clone(), Dest::Target(i)))
            .collect();
        for (i, g) in groups.iter().enumerate() {
            dest_names.insert(g.name.clone(), Dest::Group(i));
        }

        let sources: Vec<Source> = raw.sources.iter().filter_map(|s| self.source(s)).collect();
        let filters: Vec<Filter> = raw
            .filters
            .iter()
            .map(|f| {
                let f = f.get_ref();
                Filter {
                    name: f.name.get_ref().clone(),
                    rules: self.rules(&f.rules),
                }
            })
            .collect();
        let targets: Vec<Target> = raw.targets.iter().filter_map(|t| self.target(t)).collect();

        let mut sessions = Vec::new();
        for s in &raw.sessions {
            if let Some(s) = self.session(s, &source_names, &filter_names, &dest_names) {
                sessions.push(s);
            }
        }
        if targets.len() == raw.targets.len() {
            self.erspan_session_ids(&raw.sessions, &sessions, &targets, &groups);
            self.pcapng_paths(&raw.targets, &targets);
        }
        self.session_names(&raw.sessions);

        if raw.sessions.is_empty() {
            self.error(0..0, "no [[session]]: nothing would be mirrored");
        }
        self.source_limits(&raw, &sessions, &filters);

        if sources.len() != raw.sources.len()
            || targets.len() != raw.targets.len()
            || sessions.len() != raw.sessions.len()
            || groups.len() != raw.target_groups.len()
        {
            return None;
        }
        let config = Config {
            daemon: daemon?,
            sources,
            filters,
            targets,
            groups,
            sessions,
        };
        self.kernel_paths(&raw.sessions, &config);
        Some(config)
    }

    /// Sessions and rules per source within what the kernel programs hold.
    fn source_limits(&mut self, raw: &RawConfig, sessions: &[Session], filters: &[Filter]) {
        for (i, s) in raw.sources.iter().enumerate() {
            let count = sessions.iter().filter(|x| x.source == i).count();
            if count as u32 > mirror_ebpf::limits::MAX_SESSIONS {
                self.error(
                    s.span(),
                    format!(
                        "source `{}` has {count} sessions; at most {} are supported",
                        s.get_ref().name.get_ref(),
                        mirror_ebpf::limits::MAX_SESSIONS
                    ),
                );
            }
        }
        let rules_per_source = |src: usize, dir: Direction| -> usize {
            sessions
                .iter()
                .filter(|s| s.source == src)
                .filter_map(|s| filters.get(s.filter))
                .map(|f| f.rules.iter().filter(|r| r.direction == dir).count())
                .sum()
        };
        for (i, s) in raw.sources.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let n = rules_per_source(i, dir);
                if n as u32 > mirror_ebpf::limits::MAX_RULES {
                    self.error(
                        s.span(),
                        format!(
                            "the sessions of source `{}` have {n} {dir} rules together; at most {} per direction are supported",
                            s.get_ref().name.get_ref(),
                            mirror_ebpf::limits::MAX_RULES
                        ),
                    );
                }
            }
        }
    }
}

/// `message` about the key at `path`: a message that starts with the key's
/// own name (`cpus = "4-1": …`, `destination_port: range …`) gets the whole
/// path in its place (`daemon.cpus = "4-1": …`), any other is prefixed with
/// it (`source[1].mode: unknown variant …`).
fn name_key(path: &str, message: String) -> String {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    match message.strip_prefix(leaf) {
        Some(rest) if rest.starts_with(' ') || rest.starts_with(':') => format!("{path}{rest}"),
        _ => format!("{path}: {message}"),
    }
}

/// The key paths of `text` (`daemon.cpus`, `source[1].mode`,
/// `filter[0].rule[2].vlan`) and the byte range each spans; empty when the
/// text is not TOML (the parser's own error then has no key to name).
fn key_paths(text: &str) -> Vec<(Range<usize>, String)> {
    use toml::de::{DeTable, DeValue};

    fn table(t: &DeTable<'_>, prefix: &str, out: &mut Vec<(Range<usize>, String)>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            // The key with its value (an error may point at either); for a
            // table or an array the value's own span is pushed too, and the
            // shortest span around an error names it.
            let (ks, vs) = (k.span(), v.span());
            out.push((ks.start.min(vs.start)..ks.end.max(vs.end), path.clone()));
            value(v, &path, out);
        }
    }

    fn value(
        v: &serde_spanned::Spanned<DeValue<'_>>,
        path: &str,
        out: &mut Vec<(Range<usize>, String)>,
    ) {
        match v.get_ref() {
            DeValue::Table(t) => {
                out.push((v.span(), path.to_string()));
                table(t, path, out);
            }
            DeValue::Array(a) => {
                out.push((v.span(), path.to_string()));
                // An array of tables' element starts at its `[[header]]`,
                // which lies between the previous element and its body.
                let mut from = v.span().start;
                for (i, e) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    out.push((from.min(e.span().start)..e.span().end, p.clone()));
                    from = e.span().end;
                    value(e, &p, out);
                }
            }
            _ => {}
        }
    }

    let mut out = Vec::new();
    if let Ok(doc) = DeTable::parse(text) {
        table(doc.get_ref(), "", &mut out);
    }
    out
}
