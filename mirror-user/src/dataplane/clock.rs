//! Clocks: frames carry Unix-time stamps; the kernel stamps with CLOCK_TAI.
//! The schedule reads the wall clock through [`now`], which tests can drive
//! (`MIRROR_FAKE_NOW`, then the control request `set_time`).

use std::sync::Mutex;

use jiff::Timestamp;

/// The environment variable that starts the daemon on a fake clock.
pub const FAKE_NOW_ENV: &str = "MIRROR_FAKE_NOW";

/// The fake wall clock, when the daemon started with `MIRROR_FAKE_NOW`: it
/// stands still at the time set until `set_time` moves it, so a test sits
/// just before or after a window edge for as long as it needs.
static FAKE_NOW: Mutex<Option<Timestamp>> = Mutex::new(None);

/// The wall-clock time the schedule goes by: the fake clock when one is set,
/// else the system's.
pub fn now() -> Timestamp {
    match FAKE_NOW.lock() {
        Ok(fake) => fake.unwrap_or_else(Timestamp::now),
        Err(_) => Timestamp::now(),
    }
}

/// Whether the daemon runs on the fake clock.
pub fn is_fake() -> bool {
    FAKE_NOW.lock().is_ok_and(|f| f.is_some())
}

/// Starts the fake clock from `MIRROR_FAKE_NOW` (an RFC 3339 time, e.g.
/// `2026-12-07T07:59:59Z`) when it is set; the real clock otherwise.
pub fn init_from_env() -> Result<Option<Timestamp>, String> {
    let Some(text) = std::env::var_os(FAKE_NOW_ENV) else {
        return Ok(None);
    };
    let text = text.to_string_lossy();
    let t = parse_time(&text).map_err(|e| format!("{FAKE_NOW_ENV}: {e}"))?;
    if let Ok(mut fake) = FAKE_NOW.lock() {
        *fake = Some(t);
    }
    Ok(Some(t))
}

/// Moves the fake clock to `t`; refused when the daemon did not start on it.
pub fn set_fake_now(t: Timestamp) -> Result<(), String> {
    let mut fake = FAKE_NOW
        .lock()
        .map_err(|_| "the clock's lock is poisoned".to_string())?;
    match fake.as_mut() {
        Some(f) => {
            *f = t;
            Ok(())
        }
        None => Err(format!(
            "set_time is a test request: the daemon runs on the real clock (start it with \
             {FAKE_NOW_ENV}=<RFC 3339 time> to drive the clock)"
        )),
    }
}

/// An RFC 3339 time with an offset (`2026-12-07T07:59:59Z`, `…+01:00`).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.trim().parse::<Timestamp>().map_err(|e| {
        format!("`{text}` is not an RFC 3339 time with an offset, e.g. 2026-12-07T07:59:59Z ({e})")
    })
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // Safety: timespec is plain old data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // Safety: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now, nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's
/// `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_TAI minus CLOCK_REALTIME (the leap seconds, 0 when NTP never set
/// them), to turn the kernel's `bpf_ktime_get_tai_ns()` into Unix time.
pub(crate) fn tai_offset_ns() -> u64 {
    let tai = clock_ns(libc::CLOCK_TAI);
    let real = clock_ns(libc::CLOCK_REALTIME);
    // Round to whole seconds: the offset is an integer number of them.
    (tai.saturating_sub(real) + 500_000_000) / 1_000_000_000 * 1_000_000_000
}

/// A kernel CLOCK_TAI time stamp as Unix time, given [`tai_offset_ns`]
/// (TAI is ahead of UTC by the leap seconds: 37 s since 2017). The tap
/// workers and the copy-mode readers convert every stamp through this one
/// function, so its unit test covers the conversion even on hosts whose
/// offset is 0 (where the data path alone could not tell it is done).
pub fn tai_to_unix(tai_ns: u64, offset_ns: u64) -> u64 {
    tai_ns.wrapping_sub(offset_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_times_are_rfc_3339_with_an_offset() {
        assert_eq!(
            parse_time("2026-12-07T07:59:59Z").expect("utc").to_string(),
            "2026-12-07T07:59:59Z"
        );
        assert_eq!(
            parse_time("2026-12-07T08:59:59+01:00").expect("offset"),
            parse_time("2026-12-07T07:59:59Z").expect("utc")
        );
        assert!(parse_time("2026-12-07 07:59").is_err());
        assert!(parse_time("tomorrow")
            .expect_err("refused")
            .contains("RFC 3339"));
    }

    #[test]
    fn tai_time_stamps_become_unix_time_with_the_leap_seconds_taken_off() {
        const S: u64 = 1_000_000_000;
        // 2025-01-01T00:00:00Z is 1_735_689_600 s Unix time, and CLOCK_TAI
        // reads 37 s more at that instant.
        let unix = 1_735_689_600 * S + 123_456_789;
        assert_eq!(tai_to_unix(unix + 37 * S, 37 * S), unix);
        assert_eq!(tai_to_unix(unix, 0), unix, "no leap seconds set");
    }

    #[test]
    fn the_tai_offset_is_whole_seconds() {
        assert_eq!(tai_offset_ns() % 1_000_000_000, 0);
    }
}
