//! The daemon's own resource use, from `/proc/self` (as every Prometheus
//! client library's process collector reads it).

use std::io;

/// What `/proc/self` says about the process, read at one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    /// User + system time.
    pub cpu_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/self/fd` and RLIMIT_NOFILE.
    pub fn read() -> io::Result<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Safety: sysconf has no preconditions.
        let (page, ticks) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        let mut p = parse_stat(&stat, page.max(1) as u64, ticks.max(1) as u64)
            .ok_or_else(|| io::Error::other("/proc/self/stat: unexpected format"))?;
        // The directory's own descriptor is open while it is read: not counted.
        p.open_fds = (std::fs::read_dir("/proc/self/fd")?.count() as u64).saturating_sub(1);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // Safety: `limit` is a valid rlimit to write to.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            p.max_fds = limit.rlim_cur;
        }
        Ok(p)
    }
}

/// The fields of a `/proc/PID/stat` line (proc(5)): threads, virtual and
/// resident size, CPU time; `page` bytes per page, `ticks` clock ticks per
/// second. `None` if the line is not of that shape.
pub fn parse_stat(stat: &str, page: u64, ticks: u64) -> Option<ProcessStats> {
    // The command name, field 2, is in parentheses and may hold spaces or
    // parentheses itself: the fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessStats {
        resident_memory_bytes: field(24)? * page,
        virtual_memory_bytes: field(23)?,
        open_fds: 0,
        max_fds: 0,
        threads: field(20)?,
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (a `mirror` process), with spaces and a ')' put in its name.
    const STAT: &str = "4242 (mir ror) x) S 1 4242 4242 0 -1 4194560 12011 0 2 0 \
                        150 75 0 0 20 0 9 0 123456 1073741824 5000 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let p = parse_stat(STAT, 4096, 100).expect("parses");
        assert_eq!(p.threads, 9);
        assert_eq!(p.virtual_memory_bytes, 1_073_741_824);
        assert_eq!(p.resident_memory_bytes, 5000 * 4096);
        assert_eq!(p.cpu_seconds, 2.25, "(150 + 75) ticks at 100 per second");
    }

    #[test]
    fn a_cut_stat_line_is_refused() {
        assert_eq!(parse_stat("4242 (mirror) S 1 4242", 4096, 100), None);
        assert_eq!(parse_stat("no parenthesis", 4096, 100), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let p = ProcessStats::read().expect("/proc/self");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {status}"))
        };
        assert!(p.threads >= 1);
        assert!(p.open_fds >= 3, "stdin, stdout, stderr at least: {p:?}");
        assert!(p.max_fds >= p.open_fds, "{p:?}");
        // Both move as other tests run (their threads' stacks): the same
        // order of magnitude as /proc/self/status says.
        for (got, key) in [
            (p.virtual_memory_bytes, "VmSize:"),
            (p.resident_memory_bytes, "VmRSS:"),
        ] {
            let want = kib(key) * 1024;
            assert!(got > want / 2 && got < want * 2, "{p:?} vs {key} {want}");
        }
    }
}
