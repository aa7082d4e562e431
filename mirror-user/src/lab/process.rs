//! Processes started in a namespace, each bounded in time (`timeout`),
//! logged to a file, and killed with their parent; the daemon among them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Netns;

/// A process started inside a namespace, its stdout and stderr in `log`:
/// signalled, waited for (bounded) and reaped on drop, and sent SIGTERM by
/// the kernel if the thread that started it dies first.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `args` in `ns` with stdout and stderr to `log`, under
    /// `timeout(1)`: it ends by itself after `limit` (SIGTERM, SIGKILL 5 s
    /// later) even if this process dies first. `timeout` passes SIGINT,
    /// SIGTERM and SIGHUP on to the command.
    pub fn start(ns: &Netns, args: &[&str], log: &Path, limit: Duration) -> Result<Process> {
        let secs = format!("{}", limit.as_secs().max(1));
        let mut all = vec!["timeout", "--kill-after=5", &secs];
        all.extend_from_slice(args);
        Self::spawn(ns, &all, log, |_| {})
    }

    fn spawn(
        ns: &Netns,
        args: &[&str],
        log: &Path,
        env: impl FnOnce(&mut Command),
    ) -> Result<Process> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = ns.command(args);
        env(&mut cmd);
        // Ends with the thread that started it, even when this process is
        // killed and no Drop runs (`ip netns exec` execs the command, and
        // the setting survives exec).
        // Safety: the closure runs in the child between fork and exec and
        // calls only prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", args.join(" ")))?;
        Ok(Process {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` until the log has a line containing `text`;
    /// fails, with the log, if the process exits or the time runs out.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(text) {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("no `{text}` within {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails, with the log, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!("it exited with {status}:\n{}", self.log_text());
        }
        Ok(())
    }

    /// The pid of the command (`ip netns exec` execs it; with a time limit,
    /// `timeout`'s, which passes signals on).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // Safety: kill() on our own child.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGTERMs the process and waits up to `timeout` for it to exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the process to exit; SIGKILLs it after that.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped")
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("it did not exit within {timeout:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(5));
        }
    }
}

/// A `mirror run` process inside a namespace: SIGTERMed and reaped on drop.
pub struct DaemonProcess {
    process: Process,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts `exe run -c config` in `ns`, logging to `log`, and waits (at most
    /// `timeout`) until its control socket answers.
    pub fn start(
        ns: &Netns,
        exe: &Path,
        config: &Path,
        control: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        Self::start_with_env(ns, exe, config, control, log, timeout, &[])
    }

    /// [`DaemonProcess::start`] with extra environment variables (e.g.
    /// `MIRROR_FAKE_NOW`, the schedule's test clock).
    pub fn start_with_env(
        ns: &Netns,
        exe: &Path,
        config: &Path,
        control: &Path,
        log: &Path,
        timeout: Duration,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        // Not under `timeout`: tests SIGKILL the daemon itself (fail-open),
        // and its owner stops it on drop.
        let process = Process::spawn(
            ns,
            &[
                &exe.to_string_lossy(),
                "run",
                "-c",
                &config.to_string_lossy(),
            ],
            log,
            |cmd| {
                cmd.env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                );
                for (k, v) in env {
                    cmd.env(k, v);
                }
            },
        )
        .context("starting the mirror daemon")?;
        let mut d = DaemonProcess {
            process,
            control: control.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = crate::control::Client::connect(control) {
                if c.stats().is_ok() {
                    return Ok(d);
                }
            }
            d.process.check_running().context("the daemon")?;
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer on {} within {timeout:?}:\n{}",
                    control.display(),
                    d.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends `signal` to the daemon.
    /// Waits until the daemon's log contains `text` (an error when it
    /// exits or `timeout` passes first).
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Result<()> {
        self.process.wait_for_log(text, timeout)
    }

    pub fn signal(&self, signal: i32) {
        self.process.signal(signal)
    }

    /// SIGTERMs the daemon and waits up to `timeout` for it to exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.process.stop(timeout).context("the daemon")
    }

    /// Waits up to `timeout` for the daemon to exit; SIGKILLs it after that.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.process.wait(timeout).context("the daemon")
    }
}

/// Open file descriptors of process `pid`, by kind: (all, BPF maps, BPF
/// programs, BPF links). For the leak checks of the churn test and the soak.
pub fn held_fds(pid: u32) -> (usize, usize, usize, usize) {
    let (mut all, mut maps, mut progs, mut links) = (0, 0, 0, 0);
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            all += 1;
            match std::fs::read_link(e.path())
                .unwrap_or_default()
                .to_string_lossy()
                .as_ref()
            {
                "anon_inode:bpf-map" => maps += 1,
                "anon_inode:bpf-prog" => progs += 1,
                "anon_inode:bpf_link" => links += 1,
                _ => {}
            }
        }
    }
    (all, maps, progs, links)
}

/// The time slice (ns) the scheduler gives task `task` (`/proc/PID/task/TID`
/// or `/proc/thread-self`): `se.slice` in its `sched` file; None when it
/// cannot be read.
pub fn slice_ns(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("sched"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("se.slice"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Whether the running kernel's release is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

/// A number field of `/proc/PID/status` (`VmRSS` in KiB, `Threads`), 0 when
/// it cannot be read.
pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether a series of RSS samples (KiB, oldest first, taken after a
/// warm-up) shows a leak: the peak of the second half above the peak of the
/// first half by more than `slack_kib`. A leak grows with time; what the
/// allocator keeps after a burst (glibc's per-thread arenas fill in the first
/// seconds of churn, by an amount that differs from machine to machine)
/// reaches a plateau and does not count. `None` when there is nothing to say
/// (fewer than 4 samples, or no growth); otherwise the finding, for a test's
/// failure message.
pub fn rss_leak(samples_kib: &[u64], slack_kib: u64) -> Option<String> {
    if samples_kib.len() < 4 {
        return None;
    }
    let (first, second) = samples_kib.split_at(samples_kib.len() / 2);
    let (p1, p2) = (
        first.iter().copied().max().unwrap_or(0),
        second.iter().copied().max().unwrap_or(0),
    );
    (p2 > p1 + slack_kib).then(|| {
        format!(
            "RSS still growing: peak {p1} KiB over the first {} samples, {p2} KiB over the last {} \
             (more than {slack_kib} KiB of growth)",
            first.len(),
            second.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_leak_is_found_and_a_plateau_is_not() {
        // 300 KiB a sample for 40 samples: 6 MiB between the halves' peaks.
        let leak: Vec<u64> = (0..40).map(|i| 60_000 + 300 * i).collect();
        let msg = rss_leak(&leak, 4096).expect("a leak");
        assert!(
            msg.contains("peak 65700 KiB over the first 20 samples"),
            "{msg}"
        );
        assert!(msg.contains("71700 KiB over the last 20"), "{msg}");
        // Jumps early (arenas filling), then flat with noise.
        let plateau: Vec<u64> = (0..40)
            .map(|i| {
                if i < 5 {
                    60_000 + 3000 * i
                } else {
                    76_000 + (i % 3) * 900
                }
            })
            .collect();
        assert_eq!(rss_leak(&plateau, 4096), None);
        // Exactly the slack is allowed; one KiB more is not.
        assert_eq!(rss_leak(&[100, 100, 100, 4196], 4096), None);
        assert!(rss_leak(&[100, 100, 100, 4197], 4096).is_some());
        // Shrinking is fine; too few samples say nothing.
        assert_eq!(rss_leak(&[9000, 9000, 100, 100], 0), None);
        assert_eq!(rss_leak(&[1, 1, 90_000], 0), None);
    }
}
