//! Session schedules: `[[session.schedule]]` windows (days of the week and
//! hours of the day in a time zone), and the maths of which window is active
//! at an instant and when the next edge comes.
//!
//! A window is defined on the wall clock of its zone: every day named by
//! `days`, from `start` to `end` (the next day when it crosses midnight).
//! Each edge is turned into an instant with jiff's "compatible" rule (the one
//! of RFC 5545 and JavaScript's Temporal): a wall-clock time a DST change
//! skips takes effect as much later as the gap is long (02:30 on Berlin's
//! spring-forward day is 03:30 CEST), a time that occurs twice counts at its
//! first occurrence. Whether a window is active and when the next edge comes
//! are both computed from those instants, so they always agree.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Minutes in a day; `end = 1440` is "24:00".
pub const DAY_MINUTES: u16 = 1440;

/// The day names `days` accepts, Monday first (bit i of [`Window::days`]).
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Where a window's wall clock is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// The host's local time zone (`TZ`, else /etc/localtime), asked of the
    /// system (`jiff`) whenever a window is worked out, not fixed at start.
    Local,
    /// `timezone = "UTC"` or an IANA name, with the zone as loaded.
    Named(String, TimeZone),
}

impl Zone {
    pub fn tz(&self) -> TimeZone {
        match self {
            Zone::Local => TimeZone::system(),
            Zone::Named(_, tz) => tz.clone(),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Zone::Local => "local",
            Zone::Named(n, _) => n,
        }
    }

    /// The zone `timezone = name` names, or why not.
    pub fn parse(name: &str) -> Result<Zone, String> {
        if name.eq_ignore_ascii_case("utc") {
            return Ok(Zone::Named("UTC".into(), TimeZone::UTC));
        }
        match TimeZone::get(name) {
            Ok(tz) => Ok(Zone::Named(name.to_string(), tz)),
            Err(e) => Err(format!(
                "unknown time zone `{name}` ({e}); accepted values are \"UTC\" or an IANA \
                 zone name such as \"Europe/Berlin\" (see /usr/share/zoneinfo)"
            )),
        }
    }
}

/// What a window (or the session itself, outside every window) sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    pub enabled: Option<bool>,
    pub sample: Option<u32>,
    pub rate_limit_pps: Option<u32>,
    pub packet_length: Option<u32>,
    pub flow_cutoff_bytes: Option<u64>,
    pub flow_cutoff_packets: Option<u64>,
}

/// One `[[session.schedule]]` window, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit i: day i of [`DAY_NAMES`] (Monday = bit 0).
    pub days: u8,
    /// Minutes after midnight, 0..1440.
    pub start: u16,
    /// Minutes after midnight, 1..=1440; `end <= start`: the window crosses
    /// midnight and ends the next day.
    pub end: u16,
    pub zone: Zone,
    pub overrides: Overrides,
}

impl Window {
    pub fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// The weekly minutes (0 = Monday 00:00) the window covers on the wall
    /// clock, for the overlap check.
    pub fn weekly_minutes(&self) -> impl Iterator<Item = usize> + '_ {
        const WEEK: usize = 7 * DAY_MINUTES as usize;
        (0..7usize)
            .filter(move |d| self.days & (1 << d) != 0)
            .flat_map(move |d| {
                let from = d * DAY_MINUTES as usize + self.start as usize;
                let len = if self.crosses_midnight() {
                    (DAY_MINUTES - self.start + self.end) as usize
                } else {
                    (self.end - self.start) as usize
                };
                (from..from + len).map(|m| m % WEEK)
            })
    }

    /// The window's instance on `date` (if `days` names that weekday) as
    /// instants `[start, end)`; `None` also when DST makes it empty.
    fn instance(&self, tz: &TimeZone, date: Date) -> Option<(Timestamp, Timestamp)> {
        let day = date.weekday().to_monday_zero_offset() as usize;
        if self.days & (1 << day) == 0 {
            return None;
        }
        let at = |date: Date, minutes: u16| -> Option<Timestamp> {
            let (date, minutes) = if minutes >= DAY_MINUTES {
                (date.checked_add(1.day()).ok()?, minutes - DAY_MINUTES)
            } else {
                (date, minutes)
            };
            let dt: DateTime = date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
            // "compatible": a skipped time later by the gap, a repeated one first.
            tz.to_ambiguous_timestamp(dt).compatible().ok()
        };
        let start = at(date, self.start)?;
        let end_minutes = if self.crosses_midnight() {
            self.end + DAY_MINUTES
        } else {
            self.end
        };
        let end = at(date, end_minutes)?;
        (start < end).then_some((start, end))
    }
}

/// `days = "mon-fri"`, `"sat,sun"`, `"fri-mon"` (ranges wrap past Sunday),
/// full names too, any case. The day bits, or why not.
pub fn parse_days(text: &str) -> Result<u8, String> {
    let day = |s: &str| -> Result<usize, String> {
        let s = s.trim().to_ascii_lowercase();
        const FULL: [&str; 7] = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        DAY_NAMES
            .iter()
            .position(|d| *d == s)
            .or_else(|| FULL.iter().position(|d| *d == s))
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a day: accepted values are mon, tue, wed, thu, fri, sat, sun \
                     (or full names), as a list (\"sat,sun\") or range (\"mon-fri\")"
                )
            })
    };
    let mut bits = 0u8;
    for item in text.split(',') {
        if item.trim().is_empty() {
            return Err(format!(
                "days = \"{text}\": an empty item; write days as \"mon-fri\" or \"sat,sun\""
            ));
        }
        let mut these = 0u8;
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    these |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => these |= 1 << day(item)?,
        }
        let again = bits & these;
        if again != 0 {
            let names: Vec<&str> = (0..7)
                .filter(|d| again & (1 << d) != 0)
                .map(|d| DAY_NAMES[d])
                .collect();
            return Err(format!(
                "days = \"{text}\": `{}` names {} again; list each day once",
                item.trim(),
                names.join(", ")
            ));
        }
        bits |= these;
    }
    Ok(bits)
}

/// `hours = "08:00-18:00"` (`"18:00-08:00"` crosses midnight, `"00:00-24:00"`
/// is the whole day): (start, end) in minutes, or why not.
pub fn parse_hours(text: &str) -> Result<(u16, u16), String> {
    let time = |s: &str, end: bool| -> Result<u16, String> {
        let bad = || {
            format!(
                "hours = \"{text}\": `{s}` is not a time: write HH:MM (or H:MM), 00:00 to \
                 23:59 (24:00 as an end)"
            )
        };
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let digits = |t: &str, n: std::ops::RangeInclusive<usize>| {
            n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(h, 1..=2) || !digits(m, 2..=2) {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let (a, b) = text.split_once('-').ok_or_else(|| {
        format!("hours = \"{text}\": write a window as \"HH:MM-HH:MM\", e.g. \"08:00-18:00\"")
    })?;
    let (start, end) = (time(a, false)?, time(b, true)?);
    if start == end || (start == 0 && end == 0) {
        return Err(format!(
            "hours = \"{text}\": the window is empty; the whole day is \"00:00-24:00\""
        ));
    }
    Ok((start, end))
}

/// The text of a window as logs and stats show it: `mon-fri 08:00-18:00 Europe/Berlin`.
pub fn describe(w: &Window) -> String {
    let days = if w.days == 0x7f {
        "every day".to_string()
    } else {
        let mut parts = Vec::new();
        let mut d = 0;
        while d < 7 {
            if w.days & (1 << d) == 0 {
                d += 1;
                continue;
            }
            let from = d;
            while d + 1 < 7 && w.days & (1 << (d + 1)) != 0 {
                d += 1;
            }
            parts.push(match d - from {
                0 => DAY_NAMES[from].to_string(),
                1 => format!("{},{}", DAY_NAMES[from], DAY_NAMES[d]),
                _ => format!("{}-{}", DAY_NAMES[from], DAY_NAMES[d]),
            });
            d += 1;
        }
        parts.join(",")
    };
    let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    format!("{days} {}-{} {}", hm(w.start), hm(w.end), w.zone.name())
}

/// Which window of a schedule is active at an instant, and when that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index of the active window; `None`: outside every window.
    pub active: Option<usize>,
    /// The next instant the active window (or none) changes: a window's
    /// start or end where another window, or none, takes over. An end that
    /// meets the next instance of the same window (`days = "sat,sun"` at
    /// Sunday 00:00) is no edge. `None`: it never changes (no windows, or
    /// one that covers the whole week).
    pub next_edge: Option<Timestamp>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.active {
            Some(i) => write!(f, "window {}", i + 1)?,
            None => f.write_str("no window")?,
        }
        if let Some(e) = self.next_edge {
            write!(f, " until {e}")?;
        }
        Ok(())
    }
}

/// Days after today whose instances [`position`] looks at; it looks for
/// the next edge a day less ahead, where every instance that may contain an
/// instant is known. The longest a window (or none) stays active without
/// covering the whole week is about a week and a day (six whole days and a
/// night window running into the seventh; the gap before a window whose
/// only instance of the week a DST change empties): twice that leaves room.
const HORIZON_DAYS: i64 = 16;

/// Where `now` falls in `windows`: the window of the latest-started
/// instance that contains it (the first such window on a tie), and the
/// first instant after it where that changes. Instances overlap only where
/// a DST change moved an edge (`mirror check` refuses windows that overlap
/// on the wall clock): an end in a spring-forward gap takes effect later,
/// so it may pass the next window's start, which then ends it.
pub fn position(windows: &[Window], now: Timestamp) -> Position {
    // Every instance from yesterday's (it may cross midnight into today; a
    // DST change at midnight can put tomorrow's start before `now`) to the
    // horizon, each window in its own zone's days.
    let mut instances: Vec<(usize, Timestamp, Timestamp)> = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let tz = w.zone.tz();
        let today = now.to_zoned(tz.clone()).date();
        for off in -1i64..=HORIZON_DAYS {
            let Ok(date) = today.checked_add(off.days()) else {
                continue;
            };
            if let Some((start, end)) = w.instance(&tz, date) {
                instances.push((i, start, end));
            }
        }
    }
    // A window's start ends any other window's instance still running (one
    // a spring-forward gap stretched past it), which does not come back.
    let starts: Vec<(usize, Timestamp)> = instances.iter().map(|&(i, s, _)| (i, s)).collect();
    for inst in &mut instances {
        let cut = starts
            .iter()
            .filter(|&&(j, s)| j != inst.0 && inst.1 < s && s < inst.2)
            .map(|&(_, s)| s)
            .min();
        if let Some(cut) = cut {
            inst.2 = cut;
        }
    }
    let active_at = |t: Timestamp| {
        instances
            .iter()
            .filter(|&&(_, start, end)| start <= t && t < end)
            .max_by_key(|&&(i, start, _)| (start, std::cmp::Reverse(i)))
            .map(|&(i, _, _)| i)
    };
    let active = active_at(now);
    // The active window changes only where an instance starts or ends, and
    // stays as it is up to the next such instant: the first one after `now`
    // with another window (or none) active is the next edge.
    let horizon = now
        .checked_add((24 * (HORIZON_DAYS - 1)).hours())
        .unwrap_or(Timestamp::MAX);
    let mut edges: Vec<Timestamp> = instances
        .iter()
        .flat_map(|&(_, start, end)| [start, end])
        .filter(|&t| now < t && t <= horizon)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let next_edge = edges.into_iter().find(|&t| active_at(t) != active);
    Position { active, next_edge }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &str, hours: &str, zone: &str) -> Window {
        let (start, end) = parse_hours(hours).expect("hours");
        Window {
            days: parse_days(days).expect("days"),
            start,
            end,
            zone: Zone::parse(zone).expect("zone"),
            overrides: Overrides::default(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn at(windows: &[Window], now: &str) -> (Option<usize>, Option<String>) {
        let p = position(windows, ts(now));
        (p.active, p.next_edge.map(|t| t.to_string()))
    }

    #[test]
    fn days_accept_ranges_lists_full_names_and_wrapping_ranges() {
        assert_eq!(parse_days("mon-fri"), Ok(0b001_1111));
        assert_eq!(parse_days("sat,sun"), Ok(0b110_0000));
        assert_eq!(parse_days("Saturday, SUN"), Ok(0b110_0000));
        assert_eq!(parse_days("fri-mon"), Ok(0b111_0001));
        assert_eq!(parse_days("mon,wed-thu"), Ok(0b000_1101));
        assert_eq!(parse_days("wed"), Ok(0b000_0100));
        assert!(parse_days("mon-fry")
            .expect_err("refused")
            .contains("`fry` is not a day"));
        assert!(parse_days("mon,")
            .expect_err("refused")
            .contains("empty item"));
        assert!(parse_days("").is_err());
        // A day twice is a slip (which day was meant?), refused by name.
        let e = parse_days("mon,mon").expect_err("refused");
        assert!(e.contains("`mon` names mon again"), "{e}");
        let e = parse_days("mon-fri,wed-sat").expect_err("refused");
        assert!(e.contains("`wed-sat` names wed, thu, fri again"), "{e}");
        assert_eq!(parse_days("fri-sun,mon"), Ok(0b111_0001));
    }

    #[test]
    fn hours_accept_h_mm_and_hh_mm_ranges_crossing_midnight_and_24_00_as_an_end() {
        assert_eq!(parse_hours("08:00-18:00"), Ok((480, 1080)));
        assert_eq!(parse_hours("18:00-08:00"), Ok((1080, 480)));
        assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
        assert_eq!(parse_hours("22:30-00:00"), Ok((1350, 0)));
        // One digit for the hour, as people write it.
        assert_eq!(parse_hours("8:00-18:00"), Ok((480, 1080)));
        assert_eq!(parse_hours("18:00-8:30"), Ok((1080, 510)));
        for bad in [
            "8:0-18:00",
            "+8:00-18:00",
            "008:00-18:00",
            "08:00",
            "08:00-18:60",
            "24:00-08:00",
            "08:00-24:01",
            "25:00-26:00",
            "08:00-08:00",
            "ab:cd-ef:gh",
        ] {
            assert!(parse_hours(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_hours("08:00-08:00")
            .expect_err("refused")
            .contains("empty"));
    }

    #[test]
    fn zones_are_utc_or_iana_names_and_unknown_ones_are_refused() {
        assert_eq!(Zone::parse("utc").expect("utc").name(), "UTC");
        assert_eq!(
            Zone::parse("Europe/Berlin").expect("berlin").name(),
            "Europe/Berlin"
        );
        let e = Zone::parse("Mars/Olympus").expect_err("refused");
        assert!(e.contains("unknown time zone `Mars/Olympus`"), "{e}");
    }

    #[test]
    fn descriptions_name_days_hours_and_zone() {
        assert_eq!(
            describe(&window("mon-fri", "08:00-18:00", "Europe/Berlin")),
            "mon-fri 08:00-18:00 Europe/Berlin"
        );
        assert_eq!(
            describe(&window("sat,sun", "18:00-08:00", "UTC")),
            "sat,sun 18:00-08:00 UTC"
        );
        assert_eq!(
            describe(&window("mon-sun", "00:00-24:00", "UTC")),
            "every day 00:00-24:00 UTC"
        );
        assert_eq!(
            describe(&window("mon,wed-fri,sun", "01:00-02:00", "UTC")),
            "mon,wed-fri,sun 01:00-02:00 UTC"
        );
    }

    /// 2026-12-07 is a Monday.
    #[test]
    fn a_utc_window_starts_and_ends_exactly_at_its_edges() {
        let w = [window("mon-fri", "08:00-18:00", "UTC")];
        assert_eq!(
            at(&w, "2026-12-07T07:59:59.999999999Z"),
            (None, Some("2026-12-07T08:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-07T08:00:00Z"),
            (Some(0), Some("2026-12-07T18:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-07T17:59:59Z"),
            (Some(0), Some("2026-12-07T18:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-07T18:00:00Z"),
            (None, Some("2026-12-08T08:00:00Z".into()))
        );
    }

    #[test]
    fn a_window_crossing_midnight_runs_into_the_next_day() {
        let w = [window("mon-fri", "18:00-08:00", "UTC")];
        // Monday 23:00 and Tuesday 03:00: Monday's instance.
        assert_eq!(
            at(&w, "2026-12-07T23:00:00Z"),
            (Some(0), Some("2026-12-08T08:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-08T03:00:00Z"),
            (Some(0), Some("2026-12-08T08:00:00Z".into()))
        );
        // Monday 03:00 would be Sunday's instance, and Sunday is not listed.
        assert_eq!(
            at(&w, "2026-12-07T03:00:00Z"),
            (None, Some("2026-12-07T18:00:00Z".into()))
        );
        // Friday's instance runs into Saturday morning, then nothing until Monday 18:00.
        assert_eq!(
            at(&w, "2026-12-12T07:59:59Z"),
            (Some(0), Some("2026-12-12T08:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-12T08:00:00Z"),
            (None, Some("2026-12-14T18:00:00Z".into()))
        );
    }

    #[test]
    fn the_weekday_weekend_edge_switches_windows_at_midnight() {
        let w = [
            window("mon-fri", "00:00-24:00", "UTC"),
            window("sat,sun", "00:00-24:00", "UTC"),
        ];
        // The weekdays are one span, and the weekend another: Saturday's
        // end meets Sunday's start of the same window, no edge.
        assert_eq!(
            at(&w, "2026-12-11T23:59:59Z"),
            (Some(0), Some("2026-12-12T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-12T00:00:00Z"),
            (Some(1), Some("2026-12-14T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-13T23:59:59Z"),
            (Some(1), Some("2026-12-14T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-14T00:00:00Z"),
            (Some(0), Some("2026-12-19T00:00:00Z".into()))
        );
    }

    /// A trial's `days = "sat,sun"` with hours omitted showed, at Saturday
    /// 00:00, a next edge on Sunday 00:00 (the end of Saturday's instance)
    /// in stats, metrics and the log, though the window runs until Monday.
    #[test]
    fn whole_consecutive_days_of_one_window_are_one_span() {
        let w = [window("sat,sun", "00:00-24:00", "UTC")];
        assert_eq!(
            at(&w, "2026-12-11T12:00:00Z"),
            (None, Some("2026-12-12T00:00:00Z".into()))
        );
        for now in [
            "2026-12-12T00:00:00Z",
            "2026-12-12T23:59:59Z",
            "2026-12-13T00:00:00Z",
        ] {
            assert_eq!(
                at(&w, now),
                (Some(0), Some("2026-12-14T00:00:00Z".into())),
                "{now}"
            );
        }
        assert_eq!(
            at(&w, "2026-12-14T00:00:00Z"),
            (None, Some("2026-12-19T00:00:00Z".into()))
        );
        // A range over the week's end, in a zone: Friday to Monday.
        let w = [window("fri-mon", "00:00-24:00", "Europe/Berlin")];
        assert_eq!(
            at(&w, "2026-12-11T00:00:00Z"),
            (Some(0), Some("2026-12-14T23:00:00Z".into()))
        );
        // Six days of one window and a night window from the seventh into
        // the first: one span each, handing over at their real edges.
        let w = [
            window("mon-sat", "00:00-24:00", "UTC"),
            window("sun", "12:00-00:00", "UTC"),
        ];
        assert_eq!(
            at(&w, "2026-12-07T00:00:00Z"),
            (Some(0), Some("2026-12-13T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-13T00:00:00Z"),
            (None, Some("2026-12-13T12:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-12-13T12:00:00Z"),
            (Some(1), Some("2026-12-14T00:00:00Z".into()))
        );
        // A window of every whole day never changes: no edge.
        assert_eq!(
            at(
                &[window("mon-sun", "00:00-24:00", "UTC")],
                "2026-12-07T09:00:00Z"
            ),
            (Some(0), None)
        );
    }

    /// A night window `03:00-02:00` leaves a gap 02:00-03:00 every night but
    /// Berlin's spring-forward one (2026-03-29), which skips that hour: the
    /// Saturday's instance ends at 03:00 CEST (01:00 UTC), where Sunday's
    /// starts, so the two are one span, to Monday 02:00 CEST.
    #[test]
    fn instances_the_spring_gap_joins_are_one_span() {
        let w = [window("mon-sun", "03:00-02:00", "Europe/Berlin")];
        // The week before, a plain CET night: the gap is an hour.
        assert_eq!(
            at(&w, "2026-03-21T12:00:00Z"),
            (Some(0), Some("2026-03-22T01:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-22T01:00:00Z"),
            (None, Some("2026-03-22T02:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-28T12:00:00Z"),
            (Some(0), Some("2026-03-30T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-29T01:00:00Z"),
            (Some(0), Some("2026-03-30T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-30T00:00:00Z"),
            (None, Some("2026-03-30T01:00:00Z".into()))
        );
    }

    #[test]
    fn a_zoned_window_follows_the_zones_offset_in_winter_and_summer() {
        let w = [window("mon-fri", "08:00-18:00", "Europe/Berlin")];
        // December: CET, UTC+1.
        assert_eq!(
            at(&w, "2026-12-07T06:59:59Z"),
            (None, Some("2026-12-07T07:00:00Z".into()))
        );
        assert_eq!(at(&w, "2026-12-07T07:00:00Z").0, Some(0));
        // July: CEST, UTC+2.
        assert_eq!(
            at(&w, "2026-07-06T05:59:59Z"),
            (None, Some("2026-07-06T06:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-07-06T06:00:00Z"),
            (Some(0), Some("2026-07-06T16:00:00Z".into()))
        );
    }

    /// An end in Berlin's spring-forward gap (02:30 on 2026-03-29 is 03:30
    /// CEST) passes the next window's start (03:00 CEST): that window ends
    /// the first, which does not hold the next one back for half an hour.
    #[test]
    fn a_window_starting_while_a_gap_stretched_one_runs_ends_it() {
        let w = [
            window("sun", "01:00-02:30", "Europe/Berlin"),
            window("sun", "03:00-04:00", "Europe/Berlin"),
        ];
        assert_eq!(
            at(&w, "2026-03-29T00:30:00Z"),
            (Some(0), Some("2026-03-29T01:00:00Z".into()))
        );
        // The first window's own end (01:30Z) changes nothing: no edge there.
        assert_eq!(
            at(&w, "2026-03-29T01:00:00Z"),
            (Some(1), Some("2026-03-29T02:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-29T01:29:59Z"),
            (Some(1), Some("2026-03-29T02:00:00Z".into()))
        );
        assert_eq!(at(&w, "2026-03-29T02:00:00Z").0, None);
        // A window inside a stretched one ends it for good: 01:00-02:50
        // would run to 03:50 CEST, around 03:00-03:10.
        let w = [
            window("sun", "01:00-02:50", "Europe/Berlin"),
            window("sun", "03:00-03:10", "Europe/Berlin"),
        ];
        assert_eq!(
            at(&w, "2026-03-29T01:05:00Z"),
            (Some(1), Some("2026-03-29T01:10:00Z".into()))
        );
        assert_eq!(at(&w, "2026-03-29T01:10:00Z").0, None);
        assert_eq!(at(&w, "2026-03-29T01:30:00Z").0, None);
    }

    /// Berlin springs forward on 2026-03-29 (a Sunday): 02:00 CET becomes
    /// 03:00 CEST, at 01:00 UTC.
    #[test]
    fn berlin_spring_forward_moves_an_edge_in_the_gap_later_by_the_gap() {
        let w = [window("sun", "02:30-05:00", "Europe/Berlin")];
        // 02:30 does not exist: the window starts at 03:30 CEST = 01:30 UTC.
        assert_eq!(
            at(&w, "2026-03-29T01:00:00Z"),
            (None, Some("2026-03-29T01:30:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-29T01:30:00Z"),
            (Some(0), Some("2026-03-29T03:00:00Z".into()))
        );
        // A night window over the change is an hour shorter in real time.
        let night = [window("sat", "22:00-06:00", "Europe/Berlin")];
        assert_eq!(
            at(&night, "2026-03-28T21:00:00Z"),
            (Some(0), Some("2026-03-29T04:00:00Z".into()))
        );
    }

    /// A weekly window whose only instance in a week falls in the spring
    /// gap (Berlin, Sunday 2026-03-29, 02:00-03:00 does not happen) is
    /// empty that week: from the Saturday before, the next edge is a week
    /// and a day ahead, the Sunday after.
    #[test]
    fn the_next_edge_skips_a_week_whose_instance_dst_empties() {
        let w = [window("sun", "02:00-03:00", "Europe/Berlin")];
        assert_eq!(
            at(&w, "2026-03-28T12:00:00Z"),
            (None, Some("2026-04-05T00:00:00Z".into()))
        );
    }

    /// Berlin falls back on 2026-10-25: 03:00 CEST becomes 02:00 CET, at
    /// 01:00 UTC; 02:00-03:00 happens twice.
    #[test]
    fn berlin_fall_back_takes_a_repeated_edge_at_its_first_occurrence() {
        let w = [window("sun", "02:30-04:00", "Europe/Berlin")];
        // First 02:30 is CEST = 00:30 UTC; 04:00 CET = 03:00 UTC.
        assert_eq!(
            at(&w, "2026-10-25T00:29:59Z"),
            (None, Some("2026-10-25T00:30:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-10-25T00:30:00Z"),
            (Some(0), Some("2026-10-25T03:00:00Z".into()))
        );
        // The second 02:30 (CET, 01:30 UTC) is inside, not a second start.
        assert_eq!(at(&w, "2026-10-25T01:30:00Z").0, Some(0));
        // Adjacent windows stay adjacent through the fold: one ends where
        // the other starts.
        let pair = [
            window("sun", "00:00-02:30", "Europe/Berlin"),
            window("sun", "02:30-06:00", "Europe/Berlin"),
        ];
        assert_eq!(
            at(&pair, "2026-10-25T00:29:59Z"),
            (Some(0), Some("2026-10-25T00:30:00Z".into()))
        );
        assert_eq!(at(&pair, "2026-10-25T00:30:00Z").0, Some(1));
    }

    /// New York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT, at
    /// 07:00 UTC) and falls back on 2026-11-01 (02:00 EDT -> 01:00 EST, at
    /// 06:00 UTC).
    #[test]
    fn new_york_dst_days_move_edges_with_the_offset() {
        let w = [window("mon-sun", "18:00-08:00", "America/New_York")];
        // Saturday 18:00 EST = 23:00 UTC; Sunday 08:00 EDT = 12:00 UTC: 13 h.
        assert_eq!(
            at(&w, "2026-03-07T23:00:00Z"),
            (Some(0), Some("2026-03-08T12:00:00Z".into()))
        );
        // Saturday 18:00 EDT = 22:00 UTC; Sunday 08:00 EST = 13:00 UTC: 15 h.
        assert_eq!(
            at(&w, "2026-10-31T22:00:00Z"),
            (Some(0), Some("2026-11-01T13:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-10-31T21:59:59Z"),
            (None, Some("2026-10-31T22:00:00Z".into()))
        );
        // 01:30 happens twice on 2026-11-01: a window from 01:30 starts at
        // the first (EDT, 05:30 UTC).
        let fold = [window("sun", "01:30-03:00", "America/New_York")];
        assert_eq!(
            at(&fold, "2026-11-01T05:00:00Z"),
            (None, Some("2026-11-01T05:30:00Z".into()))
        );
        // 02:15 does not exist on 2026-03-08: it starts at 03:15 EDT (07:15 UTC).
        let gap = [window("sun", "02:15-04:00", "America/New_York")];
        assert_eq!(
            at(&gap, "2026-03-08T07:00:00Z"),
            (None, Some("2026-03-08T07:15:00Z".into()))
        );
    }

    #[test]
    fn hours_take_minute_59_and_hour_23_at_both_ends() {
        assert_eq!(parse_hours("00:59-23:59"), Ok((59, 1439)));
        assert_eq!(parse_hours("23:59-00:59"), Ok((1439, 59)));
    }

    /// Berlin springs forward on 2026-03-29: 02:00-03:00 does not exist, so
    /// a window of exactly that hour is empty that day (both edges are 03:00
    /// CEST, 01:00 UTC): no instance, no edge, the next one a week later.
    #[test]
    fn a_window_inside_the_spring_forward_gap_is_empty_that_day() {
        let w = [window("sun", "02:00-03:00", "Europe/Berlin")];
        // 02:00 CEST on 2026-04-05 is 00:00 UTC.
        assert_eq!(
            at(&w, "2026-03-29T00:30:00Z"),
            (None, Some("2026-04-05T00:00:00Z".into()))
        );
        assert_eq!(
            at(&w, "2026-03-29T01:00:00Z"),
            (None, Some("2026-04-05T00:00:00Z".into()))
        );
        // The week before, the same hour is a plain CET hour.
        assert_eq!(
            at(&w, "2026-03-22T01:00:00Z"),
            (Some(0), Some("2026-03-22T02:00:00Z".into()))
        );
    }

    #[test]
    fn a_position_reads_as_its_window_and_next_edge() {
        let w = [window("mon-fri", "08:00-18:00", "UTC")];
        assert_eq!(
            position(&w, ts("2026-12-07T09:00:00Z")).to_string(),
            "window 1 until 2026-12-07T18:00:00Z"
        );
        assert_eq!(
            position(&w, ts("2026-12-07T19:00:00Z")).to_string(),
            "no window until 2026-12-08T08:00:00Z"
        );
        assert_eq!(
            position(&[], ts("2026-12-07T19:00:00Z")).to_string(),
            "no window"
        );
    }

    #[test]
    fn weekly_minutes_of_a_window_crossing_sunday_midnight_wrap_to_monday() {
        let w = window("sun", "23:00-01:00", "UTC");
        let m: Vec<usize> = w.weekly_minutes().collect();
        assert_eq!(m.len(), 120);
        assert_eq!(m[0], 6 * 1440 + 23 * 60);
        assert_eq!(*m.last().expect("minutes"), 59);
    }

    /// The days are the zone's, not UTC's: in Honolulu (UTC-10) a Monday
    /// window from 18:00 to Tuesday 16:00 is still active on Tuesday at
    /// 15:00, when it is already Wednesday in UTC (two UTC dates after the
    /// window's own day).
    #[test]
    fn a_window_is_found_by_its_zones_date_when_utcs_is_a_day_ahead() {
        let w = [window("mon", "18:00-16:00", "Pacific/Honolulu")];
        // Tuesday 15:00 HST = Wednesday 01:00 UTC.
        assert_eq!(
            at(&w, "2026-12-09T01:00:00Z"),
            (Some(0), Some("2026-12-09T02:00:00Z".into()))
        );
        // Its end, Tuesday 16:00 HST; next, Monday 18:00 HST.
        assert_eq!(
            at(&w, "2026-12-09T02:00:00Z"),
            (None, Some("2026-12-15T04:00:00Z".into()))
        );
    }
}
