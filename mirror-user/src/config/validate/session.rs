//! Validation of the session section.

use std::collections::HashMap;

use serde_spanned::Spanned;

use super::Validator;
use crate::config::model::{
    expand_dests, Config, Dest, Group, Session, Target, TargetSpec, DEFAULT_FLOW_CUTOFF_IDLE,
    DEFAULT_PRIORITY,
};
use crate::config::raw::{RawSchedule, RawSession, SessionPath};
use crate::config::schedule::{
    describe, parse_days, parse_hours, Overrides, Window, Zone, DAY_MINUTES, DAY_NAMES,
};

impl Validator<'_> {
    pub(super) fn session(
        &mut self,
        s: &Spanned<RawSession>,
        sources: &HashMap<String, usize>,
        filters: &HashMap<String, usize>,
        dests: &HashMap<String, Dest>,
    ) -> Option<Session> {
        let s = s.get_ref();
        let mut ok = true;
        let source = self.known(sources, &s.source, "source");
        let filter = self.known(filters, &s.filter, "filter");
        let tgt = self.session_targets(s, dests);
        ok &= tgt.is_some();
        // Every key is checked, so that one run of `check` reports every
        // error of the session, then a bad one refuses it.
        let priority = match &s.priority {
            None => Some(DEFAULT_PRIORITY),
            Some(p) => self.int_in::<u32>(p, 0..=u32::MAX as i64, "priority"),
        };
        let packet_length = match &s.packet_length {
            None => Some(0),
            Some(p) => self.int_off_or_in::<u32>(p, 14..=65535, "packet_length (0 = whole frame)"),
        };
        let sample = match &s.sample {
            None => Some(1),
            Some(p) => self.int_in::<u32>(p, 1..=u32::MAX as i64, "sample"),
        };
        let rate_limit_pps = match &s.rate_limit_pps {
            None => Some(0),
            Some(p) => self.int_in::<u32>(p, 0..=u32::MAX as i64, "rate_limit_pps (0 = unlimited)"),
        };
        let cutoff = self.flow_cutoff(s);
        let vni = match &s.vni {
            None => Some(0),
            Some(p) => self.int_in::<u32>(p, 0..=0xff_ffff, "vni"),
        };
        let enabled = s.enabled.as_ref().is_none_or(|p| *p.get_ref());
        let schedule = self.schedule(&s.schedule);
        ok &= schedule.is_some();
        let (
            Some(priority),
            Some(packet_length),
            Some(sample),
            Some(rate_limit_pps),
            Some((flow_cutoff_bytes, flow_cutoff_packets, flow_cutoff_idle)),
            Some(vni),
        ) = (priority, packet_length, sample, rate_limit_pps, cutoff, vni)
        else {
            return None;
        };
        if !ok {
            return None;
        }
        Some(Session {
            name: s.name.get_ref().clone(),
            source: source?,
            filter: filter?,
            targets: tgt?,
            priority,
            packet_length,
            vni,
            sample,
            rate_limit_pps,
            flow_cutoff_bytes,
            flow_cutoff_packets,
            flow_cutoff_idle,
            path: s.path.as_ref().map_or(SessionPath::Auto, |p| *p.get_ref()),
            enabled,
            schedule: schedule?,
        })
    }

    /// A session's `[[session.schedule]]` windows: each checked, all in one
    /// zone, none overlapping another on the wall clock.
    fn schedule(&mut self, raw: &[Spanned<RawSchedule>]) -> Option<Vec<Window>> {
        let mut windows = Vec::new();
        // Each accepted window's number in the file (from 1): errors name
        // windows as the file has them, also after a refused one.
        let mut numbers: Vec<usize> = Vec::new();
        let mut ok = true;
        // Weekly minute -> the accepted window (index in `windows`) that covers it.
        let mut owner = vec![usize::MAX; 7 * DAY_MINUTES as usize];
        for (i, rw) in raw.iter().enumerate() {
            let Some(w) = self.window(rw.get_ref()) else {
                ok = false;
                continue;
            };
            if let Some(first) = windows.first().map(|f: &Window| f.zone.name().to_string()) {
                if w.zone.name() != first {
                    let span = rw
                        .get_ref()
                        .timezone
                        .as_ref()
                        .map_or(rw.span(), |z| z.span());
                    self.error(
                        span,
                        format!(
                            "timezone: window {} is in {} but window {} is in {first}; the windows \
                             of a session share one time zone",
                            i + 1,
                            w.zone.name(),
                            numbers[0]
                        ),
                    );
                    ok = false;
                    continue;
                }
            }
            let clash = w.weekly_minutes().find(|&m| owner[m] != usize::MAX);
            if let Some(m) = clash {
                let other = owner[m];
                let span = rw.get_ref().hours.as_ref().map_or(rw.span(), |h| h.span());
                self.error(
                    span,
                    format!(
                        "window {} ({}) overlaps window {} ({}) on {} at {:02}:{:02}; windows must not overlap",
                        i + 1,
                        describe(&w),
                        numbers[other],
                        describe(&windows[other]),
                        DAY_NAMES[m / DAY_MINUTES as usize],
                        m % DAY_MINUTES as usize / 60,
                        m % 60
                    ),
                );
                ok = false;
                continue;
            }
            for m in w.weekly_minutes() {
                owner[m] = windows.len();
            }
            windows.push(w);
            numbers.push(i + 1);
        }
        ok.then_some(windows)
    }

    fn window(&mut self, w: &RawSchedule) -> Option<Window> {
        let mut ok = true;
        let days = match &w.days {
            None => 0x7f,
            Some(d) => match parse_days(d.get_ref()) {
                Ok(b) => b,
                Err(e) => {
                    self.error(d.span(), e);
                    ok = false;
                    0
                }
            },
        };
        let (start, end) = match &w.hours {
            None => (0, DAY_MINUTES),
            Some(h) => match parse_hours(h.get_ref()) {
                Ok(se) => se,
                Err(e) => {
                    self.error(h.span(), e);
                    ok = false;
                    (0, DAY_MINUTES)
                }
            },
        };
        let zone = match &w.timezone {
            None => Zone::Local,
            Some(z) => match Zone::parse(z.get_ref()) {
                Ok(zone) => zone,
                Err(e) => {
                    self.error(z.span(), e);
                    ok = false;
                    Zone::Local
                }
            },
        };
        let mut overrides = Overrides {
            enabled: w.enabled.as_ref().map(|e| *e.get_ref()),
            ..Overrides::default()
        };
        if let Some(p) = &w.sample {
            overrides.sample = self.int_in::<u32>(p, 1..=u32::MAX as i64, "sample");
            ok &= overrides.sample.is_some();
        }
        if let Some(p) = &w.rate_limit_pps {
            overrides.rate_limit_pps =
                self.int_in::<u32>(p, 0..=u32::MAX as i64, "rate_limit_pps (0 = unlimited)");
            ok &= overrides.rate_limit_pps.is_some();
        }
        if let Some(p) = &w.packet_length {
            overrides.packet_length =
                self.int_off_or_in::<u32>(p, 14..=65535, "packet_length (0 = whole frame)");
            ok &= overrides.packet_length.is_some();
        }
        // As the session's own keys: a byte cutoff keeps at least an
        // Ethernet header of the frame it cuts.
        if let Some(p) = &w.flow_cutoff_bytes {
            overrides.flow_cutoff_bytes =
                self.size_off_or_from(p, 14, "flow_cutoff_bytes (0 = off)");
            ok &= overrides.flow_cutoff_bytes.is_some();
        }
        if let Some(p) = &w.flow_cutoff_packets {
            overrides.flow_cutoff_packets =
                self.int_in::<u64>(p, 0..=i64::MAX, "flow_cutoff_packets (0 = off)");
            ok &= overrides.flow_cutoff_packets.is_some();
        }
        ok.then_some(Window {
            days,
            start,
            end,
            zone,
            overrides,
        })
    }

    /// `flow_cutoff_bytes` (0 or at least an Ethernet header: a cut copy
    /// keeps one), `flow_cutoff_packets` and `flow_cutoff_idle` (at least
    /// 1ms, and only with a cutoff: the session's or a window's).
    fn flow_cutoff(&mut self, s: &RawSession) -> Option<(u64, u64, std::time::Duration)> {
        let bytes = match &s.flow_cutoff_bytes {
            None => Some(0),
            Some(p) => self.size_off_or_from(p, 14, "flow_cutoff_bytes (0 = off)"),
        };
        let packets = match &s.flow_cutoff_packets {
            None => Some(0),
            Some(p) => self.int_in::<u64>(p, 0..=i64::MAX, "flow_cutoff_packets (0 = off)"),
        };
        // (A refused limit counts as set: one error about it is enough.)
        let session_cuts = bytes != Some(0) || packets != Some(0);
        // A window may turn a cutoff on; the idle time is the session's.
        let window_cuts = s.schedule.iter().any(|w| {
            let w = w.get_ref();
            w.flow_cutoff_bytes
                .as_ref()
                .is_some_and(|v| !v.get_ref().is_zero())
                || w.flow_cutoff_packets
                    .as_ref()
                    .is_some_and(|v| *v.get_ref() != 0)
        });
        let idle = match &s.flow_cutoff_idle {
            None => DEFAULT_FLOW_CUTOFF_IDLE,
            Some(x) => match humantime::parse_duration(x.get_ref()) {
                Ok(d) if d < std::time::Duration::from_millis(1) => {
                    self.error(x.span(), "flow_cutoff_idle must be at least 1ms");
                    return None;
                }
                Ok(_) if !session_cuts && !window_cuts => {
                    self.error(
                        x.span(),
                        "flow_cutoff_idle has no effect without flow_cutoff_bytes or \
                         flow_cutoff_packets (on the session or in a [[session.schedule]] window)",
                    );
                    return None;
                }
                Ok(d) => d,
                Err(e) => {
                    self.error(
                        x.span(),
                        format!(
                            "flow_cutoff_idle = \"{}\": {e} (write e.g. \"500ms\", \"60s\", \"5m\")",
                            x.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        Some((bytes?, packets?, idle))
    }

    /// The index `n` names in `names`, or an error listing what is defined.
    fn known<T: Copy>(
        &mut self,
        names: &HashMap<String, T>,
        n: &Spanned<String>,
        kind: &str,
    ) -> Option<T> {
        if let Some(&found) = names.get(n.get_ref()) {
            return Some(found);
        }
        let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
        known.sort_unstable();
        self.error(
            n.span(),
            format!(
                "unknown {kind} `{}` (defined: {})",
                n.get_ref(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
        None
    }

    /// A session's `targets`: at least one, each a target or group, none twice.
    fn session_targets(
        &mut self,
        s: &RawSession,
        dests: &HashMap<String, Dest>,
    ) -> Option<Vec<Dest>> {
        let mut ok = true;
        let mut tgt = Vec::new();
        if s.targets.get_ref().is_empty() {
            self.error(s.targets.span(), "targets must name at least one target");
            ok = false;
        }
        for t in s.targets.get_ref() {
            match self.known(dests, t, "target or target_group") {
                Some(d) if tgt.contains(&d) => {
                    self.error(
                        t.span(),
                        format!("target `{}` is listed twice", t.get_ref()),
                    );
                    ok = false;
                }
                Some(d) => tgt.push(d),
                None => ok = false,
            }
        }
        ok.then_some(tgt)
    }

    /// ERSPAN carries the session id in 10 bits.
    pub(super) fn erspan_session_ids(
        &mut self,
        raw: &[Spanned<RawSession>],
        sessions: &[Session],
        targets: &[Target],
        groups: &[Group],
    ) {
        for (r, s) in raw.iter().zip(sessions) {
            let erspan = expand_dests(&s.targets, groups)
                .iter()
                .any(|&t| matches!(targets[t].spec, TargetSpec::Erspan { .. }));
            if erspan && s.vni > 1023 {
                let span = r
                    .get_ref()
                    .vni
                    .as_ref()
                    .map_or_else(|| r.span(), |v| v.span());
                self.error(
                    span,
                    format!(
                        "vni = {} is the ERSPAN session id of session `{}`, which has 10 bits: accepted values are 0 to 1023",
                        s.vni, s.name
                    ),
                );
            }
        }
    }

    /// `path = "kernel"` on a session the fast path cannot serve: an error at the key.
    pub(super) fn kernel_paths(&mut self, raw: &[Spanned<RawSession>], config: &Config) {
        for (i, s) in raw.iter().enumerate() {
            let Some(p) = &s.get_ref().path else { continue };
            if *p.get_ref() != SessionPath::Kernel {
                continue;
            }
            if let Some(why) = config.kernel_path_obstacle(i) {
                self.error(
                    p.span(),
                    format!(
                        "path = \"kernel\": the in-kernel fast path cannot serve this session: {why}; \
                         use path = \"auto\" (falls back to userspace) or \"userspace\""
                    ),
                );
            }
        }
    }

    pub(super) fn session_names(&mut self, sessions: &[Spanned<RawSession>]) {
        self.names("session", sessions.iter().map(|s| &s.get_ref().name));
    }
}
