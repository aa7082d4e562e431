//! `[daemon] cpus`: the CPUs the daemon runs on, as a Linux CPU list
//! ("1", "2-3", "0,4-7"), like `taskset -c`. Keeping the daemon off the
//! cores that service the monitored NIC's receive queues keeps its work from
//! competing with the traffic it watches.

use std::fmt;

/// CPU numbers the kernel's affinity masks can name (`CPU_SETSIZE`).
pub(crate) const MAX_CPUS: usize = 1024;

/// A parsed CPU list: sorted, without duplicates, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// Parses "N", "N-M" and comma-separated lists of them.
    pub fn parse(text: &str) -> Result<CpuList, String> {
        let mut cpus = Vec::new();
        for part in text.split(',').map(str::trim) {
            let num = |s: &str| -> Result<usize, String> {
                let n: usize = s.trim().parse().map_err(|_| {
                    format!(
                        "`{s}` is not a CPU number: write a list like \"1\", \"2-3\" or \"0,4-7\""
                    )
                })?;
                if n >= MAX_CPUS {
                    return Err(format!(
                        "CPU {n} is out of range: CPUs are 0 to {}",
                        MAX_CPUS - 1
                    ));
                }
                Ok(n)
            };
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (num(lo)?, num(hi)?);
                    if lo > hi {
                        return Err(format!("range \"{part}\" is reversed: write \"{hi}-{lo}\""));
                    }
                    cpus.extend(lo..=hi);
                }
                None => cpus.push(num(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }

    /// The list of one CPU; `None` beyond [`MAX_CPUS`].
    pub fn one(cpu: usize) -> Option<CpuList> {
        (cpu < MAX_CPUS).then(|| CpuList(vec![cpu]))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Restricts the calling thread, and every thread it starts from now on,
    /// to these CPUs. Call it before starting any thread to pin the process.
    pub fn pin_current_thread(&self) -> std::io::Result<()> {
        self.pin_thread(0)
    }

    /// Restricts thread `tid` (0: the calling thread) to these CPUs.
    pub fn pin_thread(&self, tid: libc::pid_t) -> std::io::Result<()> {
        // Safety: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &self.0 {
            // Safety: `cpu` < MAX_CPUS = CPU_SETSIZE, checked by `parse`.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // Safety: a valid set of the size passed; a thread that has exited
        // gives ESRCH.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j > i {
                write!(f, "{}-{}", self.0[i], self.0[j])?;
            } else {
                write!(f, "{}", self.0[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_singles_ranges_and_lists_and_prints_them_back_compact() {
        let l = CpuList::parse("4-6, 0,5,2").expect("valid");
        assert_eq!(l.cpus(), &[0, 2, 4, 5, 6]);
        assert_eq!(l.to_string(), "0,2,4-6");
        assert_eq!(CpuList::parse("1").expect("valid").cpus(), &[1]);
        assert_eq!(CpuList::parse("3-3").expect("a range of one").cpus(), &[3]);
    }

    #[test]
    fn rejects_reversed_ranges_junk_and_cpus_beyond_the_mask() {
        let err = |text: &str| CpuList::parse(text).expect_err(text);
        assert!(err("3-1").contains("reversed: write \"1-3\""));
        assert!(err("one").contains("not a CPU number"));
        assert!(err("").contains("not a CPU number"));
        assert!(err("1024").contains("out of range"));
    }

    #[test]
    fn the_highest_cpu_of_the_mask_is_accepted_and_one_beyond_is_not() {
        let top = MAX_CPUS - 1;
        assert_eq!(
            CpuList::parse(&top.to_string()).expect("valid").cpus(),
            &[top]
        );
        assert_eq!(
            CpuList::one(top).map(|l| l.cpus().to_vec()),
            Some(vec![top])
        );
        assert_eq!(CpuList::one(0).map(|l| l.cpus().to_vec()), Some(vec![0]));
        assert!(CpuList::one(MAX_CPUS).is_none());
    }

    /// The calling thread's affinity, as a sorted list.
    fn affinity() -> Vec<usize> {
        // Safety: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // Safety: a valid set of the size passed, for the calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        assert_eq!(rc, 0, "sched_getaffinity");
        // Safety: `cpu` < CPU_SETSIZE.
        (0..MAX_CPUS)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    #[test]
    fn pinning_restricts_the_thread_and_the_threads_it_starts() {
        // On a thread of its own, so the test runner's threads keep their CPUs.
        std::thread::spawn(|| {
            let first = *affinity().first().expect("some CPU");
            let one = CpuList::one(first).expect("in range");
            one.pin_current_thread().expect("pin");
            assert_eq!(affinity(), vec![first]);
            let child = std::thread::spawn(affinity).join().expect("child");
            assert_eq!(child, vec![first], "inherited by new threads");
            // A CPU this machine lacks is refused, not ignored.
            let absent = CpuList::one(MAX_CPUS - 1).expect("in range");
            assert!(absent.pin_current_thread().is_err());
        })
        .join()
        .expect("pinning thread");
    }
}
