//! Validation of the target section.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::Validator;
use crate::config::model::{
    ErspanVersion, Granularity, Group, MinFree, PcapngSpec, Target, TargetSpec, Tunnel,
    DEFAULT_PCAPNG_QUEUE_SIZE, DEFAULT_QUEUE_SIZE, DEFAULT_TUNNEL_MTU, DEFAULT_VXLAN_PORT,
    MAX_INTERFACE_QUEUE,
};
use crate::config::raw::{RawSize, RawTarget, RawTargetGroup, TargetKind, ZeroCopy};
use crate::config::values::{parse_min_free, valid_ifname};
use crate::target::pcapng::{parent, rotated_number};

/// A target key: its name, where it is written (if it is), and the kinds it applies to.
type KindKey<'a> = (&'a str, Option<Range<usize>>, &'a [TargetKind]);

impl Validator<'_> {
    pub(super) fn target(&mut self, t: &Spanned<RawTarget>) -> Option<Target> {
        let t = t.get_ref();
        let kind = *t.kind.get_ref();
        let ok = self.keys_of_kind(t, kind);
        let queue_size = self.queue_size(t, kind)?;
        let spec = self.target_spec(t, kind)?;
        ok.then(|| Target {
            name: t.name.get_ref().clone(),
            spec,
            queue_size,
        })
    }

    /// Keys that belong to other kinds are mistakes worth naming: false
    /// when `t` has any.
    fn keys_of_kind(&mut self, t: &RawTarget, kind: TargetKind) -> bool {
        let mut ok = true;
        let keys: [KindKey<'_>; 15] = [
            (
                "interface",
                t.interface.as_ref().map(|x| x.span()),
                &[TargetKind::Interface],
            ),
            (
                "zero_copy",
                t.zero_copy.as_ref().map(|x| x.span()),
                &[TargetKind::Interface],
            ),
            (
                "remote",
                t.remote.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "port",
                t.port.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan],
            ),
            (
                "source",
                t.source.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "mtu",
                t.mtu.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "version",
                t.version.as_ref().map(|x| x.span()),
                &[TargetKind::Erspan],
            ),
            ("key", t.key.as_ref().map(|x| x.span()), &[TargetKind::Gre]),
            (
                "granularity",
                t.granularity.as_ref().map(|x| x.span()),
                &[TargetKind::Erspan],
            ),
            (
                "path",
                t.path.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "rotate_size",
                t.rotate_size.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "rotate_interval",
                t.rotate_interval.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "keep",
                t.keep.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "max_total_size",
                t.max_total_size.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "min_free",
                t.min_free.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
        ];
        for (key, span, kinds) in keys {
            if let Some(span) = span {
                if !kinds.contains(&kind) {
                    self.error(
                        span,
                        format!(
                            "`{key}` does not apply to a target of kind = \"{}\"",
                            kind.as_str()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok
    }

    /// `queue_size`, bounded by what one target kind can hold.
    fn queue_size(&mut self, t: &RawTarget, kind: TargetKind) -> Option<u32> {
        Some(match (&t.queue_size, kind) {
            (None, TargetKind::Pcapng) => DEFAULT_PCAPNG_QUEUE_SIZE,
            (None, _) => DEFAULT_QUEUE_SIZE,
            // Each queued copy of an interface target is one 4 KiB UMEM frame,
            // which the kernel pins: 1 GiB at most.
            (Some(q), TargetKind::Interface) if *q.get_ref() > i64::from(MAX_INTERFACE_QUEUE) => {
                self.error(
                    q.span(),
                    format!(
                        "queue_size = {} is too large for an interface target: its queue is \
                         its AF_XDP UMEM, one 4 KiB frame per copy, at most {MAX_INTERFACE_QUEUE} (1 GiB)",
                        q.get_ref()
                    ),
                );
                return None;
            }
            (Some(q), _) => self.int_in::<u32>(q, 16..=1 << 20, "queue_size")?,
        })
    }

    /// The kind's own keys: interface, tunnel, or pcapng.
    fn target_spec(&mut self, t: &RawTarget, kind: TargetKind) -> Option<TargetSpec> {
        Some(match kind {
            TargetKind::Interface => {
                let Some(iface) = &t.interface else {
                    self.error(
                        t.kind.span(),
                        format!(
                            "target `{}` of kind = \"interface\" needs `interface`",
                            t.name.get_ref()
                        ),
                    );
                    return None;
                };
                if !valid_ifname(iface.get_ref()) {
                    self.error(
                        iface.span(),
                        format!(
                            "interface = \"{}\" is not a valid interface name",
                            iface.get_ref()
                        ),
                    );
                    return None;
                }
                TargetSpec::Interface {
                    interface: iface.get_ref().clone(),
                    zero_copy: t
                        .zero_copy
                        .as_ref()
                        .map_or(ZeroCopy::Auto, |z| *z.get_ref()),
                }
            }
            TargetKind::Vxlan => TargetSpec::Vxlan {
                tunnel: self.tunnel(t)?,
                port: match &t.port {
                    None => DEFAULT_VXLAN_PORT,
                    Some(p) => self.int_in::<u16>(p, 1..=65535, "port")?,
                },
            },
            TargetKind::Gre => TargetSpec::Gre {
                tunnel: self.tunnel(t)?,
                key: match &t.key {
                    None => None,
                    Some(k) => Some(self.int_in::<u32>(k, 0..=u32::MAX as i64, "key")?),
                },
            },
            TargetKind::Erspan => {
                let version = match &t.version {
                    None => ErspanVersion::Two,
                    Some(v) => match *v.get_ref() {
                        2 => ErspanVersion::Two,
                        3 => ErspanVersion::Three,
                        n => {
                            self.error(
                                v.span(),
                                format!("version = {n}: accepted values are 2 (type II) and 3 (type III)"),
                            );
                            return None;
                        }
                    },
                };
                if let (Some(g), ErspanVersion::Two) = (&t.granularity, version) {
                    self.error(
                        g.span(),
                        "`granularity` applies to ERSPAN type III only: add version = 3",
                    );
                    return None;
                }
                TargetSpec::Erspan {
                    tunnel: self.tunnel(t)?,
                    version,
                    granularity: t
                        .granularity
                        .as_ref()
                        .map_or(Granularity::Micros100, |g| *g.get_ref()),
                }
            }
            TargetKind::Pcapng => TargetSpec::Pcapng(self.pcapng(t)?),
        })
    }

    pub(super) fn tunnel(&mut self, t: &RawTarget) -> Option<Tunnel> {
        let name = t.name.get_ref();
        let kind = t.kind.get_ref().as_str();
        let Some(remote) = &t.remote else {
            self.error(
                t.kind.span(),
                format!("target `{name}` of kind = \"{kind}\" needs `remote` (the collector's IP address)"),
            );
            return None;
        };
        let ip = |v: &mut Self, x: &Spanned<String>, key: &str| -> Option<IpAddr> {
            match x.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() || a.is_multicast() => {
                    v.error(
                        x.span(),
                        format!("{key} = \"{a}\" must be a unicast address"),
                    );
                    None
                }
                Ok(a) => Some(a),
                Err(_) => {
                    v.error(
                        x.span(),
                        format!("{key} = \"{}\" is not an IPv4 or IPv6 address", x.get_ref()),
                    );
                    None
                }
            }
        };
        let remote_ip = ip(self, remote, "remote")?;
        let source = match &t.source {
            None => None,
            Some(s) => {
                let a = ip(self, s, "source")?;
                if a.is_ipv4() != remote_ip.is_ipv4() {
                    self.error(
                        s.span(),
                        "source and remote must be of the same family (both IPv4 or both IPv6)",
                    );
                    return None;
                }
                Some(a)
            }
        };
        let min_mtu = if remote_ip.is_ipv4() { 576 } else { 1280 };
        let mtu = match &t.mtu {
            None => DEFAULT_TUNNEL_MTU,
            Some(m) => self.int_in::<u32>(m, min_mtu..=65535, "mtu")?,
        };
        Some(Tunnel {
            remote: remote_ip,
            source,
            mtu,
        })
    }

    pub(super) fn pcapng(&mut self, t: &RawTarget) -> Option<PcapngSpec> {
        // A bad path refuses the target after the other keys are checked.
        let p = match &t.path {
            None => {
                self.error(
                    t.kind.span(),
                    format!(
                        "target `{}` of kind = \"pcapng\" needs `path` (the file to write)",
                        t.name.get_ref()
                    ),
                );
                None
            }
            // (`Path` takes "d.pcapng/" for the file d.pcapng; opening it fails.)
            Some(path)
                if path.get_ref().is_empty()
                    || PathBuf::from(path.get_ref()).file_name().is_none()
                    || path.get_ref().ends_with('/') =>
            {
                self.error(
                    path.span(),
                    format!("path = \"{}\" does not name a file", path.get_ref()),
                );
                None
            }
            Some(path) => Some(PathBuf::from(path.get_ref())),
        };
        let size = |v: &mut Self,
                    x: &Option<Spanned<RawSize>>,
                    key: &str,
                    min: u64|
         -> Result<Option<u64>, ()> {
            let Some(x) = x else { return Ok(None) };
            match x.get_ref().bytes() {
                Ok(n) if n >= min => Ok(Some(n)),
                Ok(_) => {
                    v.error(
                        x.span(),
                        format!(
                            "{key} = {} is below the minimum of {min} bytes",
                            x.get_ref()
                        ),
                    );
                    Err(())
                }
                Err(e) => {
                    v.error(x.span(), format!("{key} = {}: {e}", x.get_ref()));
                    Err(())
                }
            }
        };
        // Every key is checked (one run of `check` reports every error),
        // then a bad one refuses the target.
        let rotate_size = size(self, &t.rotate_size, "rotate_size", 4096);
        let max_total_size = size(self, &t.max_total_size, "max_total_size", 4096);
        let rotate_interval = self.rotate_interval(t.rotate_interval.as_ref());
        let keep = match &t.keep {
            None => Ok(None),
            Some(k) if *k.get_ref() == 1 => {
                // As for a budget of less than two files.
                self.error(
                    k.span(),
                    "keep = 1 keeps only the file being written: each rotation would delete \
                     the whole record kept so far; accepted values are 2 to 1000000",
                );
                Err(())
            }
            Some(k) => self
                .int_in::<u32>(k, 2..=1_000_000, "keep")
                .map(Some)
                .ok_or(()),
        };
        let min_free = match &t.min_free {
            None => Ok(None),
            Some(x) => {
                let parsed = match x.get_ref() {
                    RawSize::Number(_) => x.get_ref().bytes().map(MinFree::Bytes),
                    RawSize::Text(t) => parse_min_free(t),
                };
                match parsed {
                    // A floor smaller than one block of any file system:
                    // most likely a percentage without its `%`.
                    Ok(MinFree::Bytes(n)) if (1..4096).contains(&n) => {
                        // What it most likely meant, when that is a valid value.
                        let meant = if n < 100 {
                            format!("for a share of the disk write \"{n}%\", for a size e.g. \"{n}GiB\"")
                        } else {
                            "write a size such as \"1GiB\", or a share of the disk such as \"5%\""
                                .to_string()
                        };
                        self.error(
                            x.span(),
                            format!(
                                "min_free = {} is {n} bytes, less than one block of a file \
                                 system; {meant} (0 turns it off)",
                                x.get_ref()
                            ),
                        );
                        Err(())
                    }
                    Ok(m) => Ok(Some(m)),
                    Err(e) => {
                        self.error(x.span(), format!("min_free = {}: {e}", x.get_ref()));
                        Err(())
                    }
                }
            }
        };
        // The budget against the file size, whatever else is wrong (a bad
        // `keep` does not hide it).
        let mut budget_ok = true;
        if let (Ok(Some(r)), Ok(Some(m)), Some(x), Some(budget)) = (
            &rotate_size,
            &max_total_size,
            &t.rotate_size,
            &t.max_total_size,
        ) {
            let (r, m) = (*r, *m);
            if m / 2 < 4096 {
                self.error(
                    budget.span(),
                    format!(
                        "max_total_size = {} holds less than two files of the smallest \
                         rotate_size (4096 bytes): make it at least 8192 bytes",
                        budget.get_ref(),
                    ),
                );
                budget_ok = false;
            } else if r > m / 2 {
                self.error(
                    x.span(),
                    format!(
                        "rotate_size = {} is more than half of max_total_size = {}: \
                         the budget would hold less than two files, and each rotation would \
                         delete the record kept so far; make rotate_size at most half of the \
                         budget ({} bytes; a quarter or less keeps at least three quarters of \
                         it on disk)",
                        x.get_ref(),
                        budget.get_ref(),
                        m / 2
                    ),
                );
                budget_ok = false;
            }
        }
        let (
            Some(p),
            Ok(rotate_size),
            Ok(max_total_size),
            Some(rotate_interval),
            Ok(keep),
            Ok(min_free),
        ) = (
            p,
            rotate_size,
            max_total_size,
            rotate_interval,
            keep,
            min_free,
        )
        else {
            return None;
        };
        if !budget_ok {
            return None;
        }
        let spec = PcapngSpec {
            path: p,
            rotate_size,
            rotate_interval,
            keep,
            max_total_size,
            min_free,
        };
        let mut ok = true;
        if !spec.rotates() {
            for (key, x) in [
                ("keep", t.keep.as_ref().map(|k| k.span())),
                (
                    "max_total_size",
                    t.max_total_size.as_ref().map(|k| k.span()),
                ),
            ] {
                if let Some(span) = x {
                    self.error(
                        span,
                        format!("`{key}` needs rotation: add rotate_size and/or rotate_interval"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(spec)
    }

    /// No two pcapng targets write one file, nor a file the other's
    /// rotation deletes: two writers of one file overwrite each other's
    /// copies (each counting them written), and a rotating target deletes
    /// the oldest files named like its own (`STEM-NNNNNN.EXT`). `targets`
    /// are `raw`'s, in order.
    pub(super) fn pcapng_paths(&mut self, raw: &[Spanned<RawTarget>], targets: &[Target]) {
        // Each with its place (directory resolved once, file name).
        let files: Vec<_> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.spec {
                TargetSpec::Pcapng(p) => Some((i, p, place(&p.path))),
                _ => None,
            })
            .collect();
        let name = |i: usize| raw[i].get_ref().name.get_ref().clone();
        for (k, (j, b, (b_dir, b_name))) in files.iter().enumerate() {
            let (j, b) = (*j, *b);
            for (i, a, (a_dir, a_name)) in &files[..k] {
                let (i, a) = (*i, *a);
                if a_dir != b_dir {
                    continue;
                }
                // `writer`'s own path is a file it writes when it does not
                // rotate (a rotating one writes only numbered names, which
                // never match another stem's).
                let named_like = |rot: &PcapngSpec, writer: &PcapngSpec, file: &std::ffi::OsStr| {
                    rot.rotates()
                        && !writer.rotates()
                        && rotated_number(&rot.path, Path::new(file)).is_some()
                };
                let (at, why) = if a_name == b_name {
                    let why = format!(
                        "target `{}` writes the same file as target `{}`: two writers of one \
                         file overwrite each other's copies; give each target its own path",
                        name(j),
                        name(i)
                    );
                    (j, why)
                } else if named_like(a, b, b_name) || named_like(b, a, a_name) {
                    let (rot, other) = if named_like(a, b, b_name) {
                        (i, j)
                    } else {
                        (j, i)
                    };
                    let why = format!(
                        "target `{}` writes a file named like the rotated files of target `{}` \
                         (STEM-NNNNNN.EXT), which `{}`'s rotation deletes; give it another name",
                        name(other),
                        name(rot),
                        name(rot)
                    );
                    (other, why)
                } else {
                    continue;
                };
                let span = raw[at]
                    .get_ref()
                    .path
                    .as_ref()
                    .map_or(raw[at].span(), |p| p.span());
                self.error(span, why);
            }
        }
    }

    pub(super) fn groups(
        &mut self,
        raw: &[Spanned<RawTargetGroup>],
        targets: &HashMap<String, usize>,
    ) -> Vec<Group> {
        let names = self.names("target_group", raw.iter().map(|g| &g.get_ref().name));
        let mut out = Vec::new();
        for g in raw {
            let g_ref = g.get_ref();
            let name = g_ref.name.get_ref();
            if targets.contains_key(name) {
                self.error(
                    g_ref.name.span(),
                    format!(
                        "`{name}` names both a target and a target_group: use one name for each"
                    ),
                );
                continue;
            }
            if !names.contains_key(name) {
                continue;
            }
            if g_ref.members.is_empty() {
                self.error(g.span(), format!("target_group `{name}` has no members"));
                continue;
            }
            let mut members = Vec::new();
            let mut ok = true;
            for m in &g_ref.members {
                match targets.get(m.get_ref()) {
                    Some(&t) if members.contains(&t) => {
                        self.error(
                            m.span(),
                            format!("member `{}` is listed twice", m.get_ref()),
                        );
                        ok = false;
                    }
                    Some(&t) => members.push(t),
                    None => {
                        let what = if names.contains_key(m.get_ref()) {
                            "is a target_group; groups cannot contain groups"
                        } else {
                            "is not a defined target"
                        };
                        self.error(m.span(), format!("member `{}` {what}", m.get_ref()));
                        ok = false;
                    }
                }
            }
            if ok {
                out.push(Group {
                    name: name.clone(),
                    members,
                });
            }
        }
        out
    }
    /// pcapng's `rotate_interval`: a duration of at least one second.
    fn rotate_interval(
        &mut self,
        x: Option<&Spanned<String>>,
    ) -> Option<Option<std::time::Duration>> {
        Some(match x {
            None => None,
            Some(x) => {
                match humantime::parse_duration(x.get_ref()) {
                    Ok(d) if d >= std::time::Duration::from_secs(1) => Some(d),
                    Ok(_) => {
                        self.error(x.span(), "rotate_interval must be at least 1s");
                        return None;
                    }
                    Err(e) => {
                        self.error(
                        x.span(),
                        format!("rotate_interval = \"{}\": {e} (write e.g. \"30s\", \"15m\", \"1h\")", x.get_ref()),
                    );
                        return None;
                    }
                }
            }
        })
    }
}

/// Where a capture file is, to compare two: its directory made absolute
/// (with symbolic links resolved when it exists), and its name.
fn place(p: &Path) -> (PathBuf, std::ffi::OsString) {
    (
        resolved(&parent(p)),
        p.file_name().unwrap_or_default().to_os_string(),
    )
}

/// `dir` made absolute with `.` and `..` taken lexically, then its deepest
/// existing ancestor with symbolic links resolved (the rest is not there
/// yet).
fn resolved(dir: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            c => lexical.push(c),
        }
    }
    let mut base = lexical;
    let mut rest = Vec::new();
    while std::fs::canonicalize(&base).is_err() {
        let Some(name) = base.file_name().map(|n| n.to_os_string()) else {
            break;
        };
        rest.push(name);
        base.pop();
    }
    let mut out = std::fs::canonicalize(&base).unwrap_or(base);
    out.extend(rest.iter().rev());
    out
}
