//! Clocks: frames carry Unix-time stamps; the kernel stamps with CLOCK_TAI.

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
