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
