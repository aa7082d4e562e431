//! A throw-away lab of network namespaces and veth pairs, for `mirror demo`
//! and the end-to-end tests: uniquely named, deleted on drop (also when a test
//! panics), and never touching the machine's own interfaces.
//!
//! ```text
//!  ns gen            ns src (mirror runs here)            ns sink
//!  gen0 ─────veth───── feed0  [XDP tap]   tgt0 ─────veth───── sink0
//! ```

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/mirror-<tag>-<pid>`.
    pub fn new(tag: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("mirror-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `mirror-<pid>-<seq>-<role>`, with IPv6 off so that no
    /// autoconfiguration traffic mixes with a test's frames.
    pub fn new(role: &str) -> Result<Netns> {
        let name = format!(
            "mirror-{}-{}-{role}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        if Path::new("/run/netns").join(&name).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that is not deleted on drop.
    pub fn attach(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, args: &[&str]) -> Result<()> {
        let out = self.command(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "{} in {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `ip netns exec <ns> args…`, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created
    /// there stay in the namespace wherever they are used later.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // Safety: `file` is a namespace fd; setns affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Creates a veth pair `a` (in `ns_a`) – `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: u32) -> Result<()> {
    let q = queues.to_string();
    ip(&[
        "link",
        "add",
        a,
        "netns",
        ns_a.name(),
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b.name(),
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
    ])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A veth `a` (in `na`, address `ip_a`/24) – `b` (in `nb`, `ip_b`/24), both
/// up, with `mtu`.
pub fn wire(
    na: &Netns,
    a: &str,
    ip_a: &str,
    nb: &Netns,
    b: &str,
    ip_b: &str,
    mtu: u32,
) -> Result<()> {
    veth(na, a, nb, b, 1)?;
    for (ns, dev, ip) in [(na, a, ip_a), (nb, b, ip_b)] {
        ns.ip(&["link", "set", dev, "mtu", &mtu.to_string()])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev])?;
    }
    Ok(())
}

/// Turns GRO on for `dev` in `ns`. For a veth this makes its peer accept
/// frames redirected by XDP (`ndo_xdp_xmit`), as a NIC's driver would: what
/// the in-kernel fast path needs of a target port.
pub fn gro_on(ns: &Netns, dev: &str) -> Result<()> {
    let name = dev.to_string();
    ns.run(move || {
        crate::kernel::netdev::set_gro(&name, true)
            .ok_or_else(|| anyhow::anyhow!("turning GRO on for {name} (ETHTOOL_SGRO) failed"))
    })
}

/// A Linux VXLAN device `name` in `ns` that decapsulates VNI `vni` arriving
/// at `local` (UDP 4789) over `dev`, up, with a 9000-byte MTU: what a VXLAN
/// collector runs.
pub fn vxlan_decap(ns: &Netns, name: &str, vni: u32, local: &str, dev: &str) -> Result<()> {
    let vni = vni.to_string();
    ns.ip(&[
        "link", "add", name, "mtu", "9000", "type", "vxlan", "id", &vni, "dstport", "4789",
        "local", local, "dev", dev,
    ])?;
    ns.ip(&["link", "set", name, "up"])
}

/// The standard lab: gen -> src (feed0) and src (tgt0) -> sink.
pub struct Lab {
    pub gen: Netns,
    pub src: Netns,
    pub sink: Netns,
}

impl Lab {
    pub const GEN_IF: &'static str = "gen0";
    pub const FEED_IF: &'static str = "feed0";
    pub const TARGET_IF: &'static str = "tgt0";
    pub const SINK_IF: &'static str = "sink0";

    pub fn new(queues: u32) -> Result<Lab> {
        let lab = Lab {
            gen: Netns::new("gen")?,
            src: Netns::new("src")?,
            sink: Netns::new("sink")?,
        };
        veth(&lab.gen, Self::GEN_IF, &lab.src, Self::FEED_IF, queues)?;
        veth(&lab.src, Self::TARGET_IF, &lab.sink, Self::SINK_IF, 1)?;
        Ok(lab)
    }
}

/// An AF_PACKET socket bound to `interface`, created in the current thread's namespace.
pub fn packet_socket(interface: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // Safety: plain socket() call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
    }
    // Safety: the fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = crate::kernel::ifindex(interface)?;
    // Safety: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // Safety: `sll` is a valid, fully sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    // The capture relies on both: VLAN tags from auxdata, and the timeout to stop.
    set_option(
        &fd,
        libc::SOL_PACKET,
        libc::PACKET_AUXDATA,
        &1 as &libc::c_int,
    )
    .context("PACKET_AUXDATA")?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).context("SO_RCVTIMEO")?;
    // Large buffers are best effort: they only make loss under bursts less likely.
    let bufsize: libc::c_int = 64 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let _ = set_option(&fd, libc::SOL_SOCKET, opt, &bufsize);
    }
    Ok(fd)
}

/// setsockopt with a plain value.
fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // Safety: `value` points to a live `T` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (length, outgoing?, stripped VLAN tag as (TPID, TCI)).
type Received = (usize, bool, Option<(u16, u16)>);

/// Receives one frame; returns (length, outgoing?, VLAN tag the driver
/// stripped as (TPID, TCI)), or `None` on timeout. As libpcap does, the tag
/// comes from PACKET_AUXDATA.
fn recv_with_auxdata(fd: libc::c_int, buf: &mut [u8]) -> Option<Received> {
    #[repr(C)]
    struct TpacketAuxdata {
        tp_status: u32,
        tp_len: u32,
        tp_snaplen: u32,
        tp_mac: u16,
        tp_net: u16,
        tp_vlan_tci: u16,
        tp_vlan_tpid: u16,
    }
    const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
    const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
    // Safety: all-zero is a valid sockaddr_ll / msghdr.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Safety: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // Safety: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut vlan = None;
    // Safety: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<TpacketAuxdata>());
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    vlan = Some((tpid, aux.tp_vlan_tci));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING, vlan))
}

/// Sends `frames` out of `interface` in namespace `ns`, pacing to at most
/// `pps` frames per second (0 = as fast as the socket takes them).
pub fn send_frames(
    ns: &Netns,
    interface: &str,
    frames: Arc<Vec<Vec<u8>>>,
    pps: u64,
) -> Result<u64> {
    let interface = interface.to_string();
    let fd = ns.run(move || packet_socket(&interface))?;
    let start = Instant::now();
    let mut sent = 0u64;
    for (i, f) in frames.iter().enumerate() {
        if pps > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / pps as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        loop {
            // Safety: `f` is a valid buffer of its length.
            let rc = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if rc >= 0 {
                sent += 1;
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::yield_now();
                continue;
            }
            return Err(e).context("sending a frame");
        }
    }
    Ok(sent)
}

/// Frames received on an interface, collected on a background thread.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Vec<u8>>>>,
    count: Arc<AtomicU32>,
}

impl Capture {
    /// Starts capturing frames *received* by `interface` in `ns`.
    pub fn start(ns: &Netns, interface: &str) -> Result<Capture> {
        let name = interface.to_string();
        let fd = ns.run(move || packet_socket(&name))?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU32::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let handle = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Some((n, outgoing, vlan)) = recv_with_auxdata(fd.as_raw_fd(), &mut buf) else {
                    // Timeout: stop only once asked and the socket is drained.
                    if s.load(Ordering::Relaxed) {
                        return frames;
                    }
                    continue;
                };
                if outgoing {
                    continue;
                }
                let mut frame = buf[..n].to_vec();
                if let (Some((tpid, tci)), true) = (vlan, n >= 12) {
                    // The driver stripped the tag into skb metadata; put it back.
                    let tag = [tpid.to_be_bytes(), tci.to_be_bytes()].concat();
                    frame.splice(12..12, tag);
                }
                frames.push(frame);
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Capture {
            stop,
            handle: Some(handle),
            count,
        })
    }

    /// Frames captured so far.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops (after the socket has been idle for 100 ms) and returns the frames.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

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

/// A tmpfs mounted on a directory (created if missing), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's `size=` option: "2m", "2g") on `at`.
    pub fn mount(at: PathBuf, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        let opts = format!("size={size}");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "mirror-lab"])
            .arg(&at)
            .status()
            .context("running mount")?
            .success();
        if !ok {
            bail!("mounting a tmpfs on {}", at.display());
        }
        Ok(Tmpfs(at))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes free for files.
    pub fn free(&self) -> Result<u64> {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())?;
        // Safety: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // Safety: a NUL-terminated path and a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            bail!(
                "statvfs {}: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(st.f_bavail * st.f_frsize)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Test traffic: frames carrying a marker and sequence number, built with etherparse.
pub mod traffic {
    use etherparse::PacketBuilder;

    /// Payload prefix that identifies lab frames.
    pub const MARKER: &[u8; 8] = b"MIRRORT\0";

    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    /// Builds a frame around a payload.
    type Builder = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// The shapes of the mixed workload.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Shape {
        Tcp4,
        Udp4,
        Icmp4,
        Tcp6,
        Udp6,
        Icmp6,
        VlanTcp4,
        QinQUdp6,
    }

    pub const SHAPES: [Shape; 8] = [
        Shape::Tcp4,
        Shape::Udp4,
        Shape::Icmp4,
        Shape::Tcp6,
        Shape::Udp6,
        Shape::Icmp6,
        Shape::VlanTcp4,
        Shape::QinQUdp6,
    ];

    /// Destination ports cycled through for TCP/UDP frames.
    pub const PORTS: [u16; 4] = [22, 80, 443, 53];

    fn payload(seq: u32, len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(len.max(12));
        p.extend_from_slice(MARKER);
        p.extend_from_slice(&seq.to_be_bytes());
        while p.len() < len {
            p.push((p.len() % 251) as u8);
        }
        p
    }

    /// One frame of `shape`, `seq`, total length `size` (64..=1514 bytes; the
    /// payload is padded to reach it).
    pub fn frame(shape: Shape, seq: u32, size: usize) -> Vec<u8> {
        // Every shape cycles through every port (shapes change fastest).
        let port = PORTS[(seq as usize / SHAPES.len()) % PORTS.len()];
        let v4s = [10, 1, 0, (seq % 200) as u8 + 1];
        let v4d = [10, 2, 0, 1];
        let mut v6s = [0u8; 16];
        v6s[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6s[15] = (seq % 200) as u8 + 1;
        let mut v6d = v6s;
        v6d[15] = 0xfe;
        let b = || PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let (builder_len, build): (usize, Builder) = match shape {
            Shape::Tcp4 => (
                14 + 20 + 20,
                Box::new(move |p| w(b().ipv4(v4s, v4d, 64).tcp(40000, port, seq, 1024), p)),
            ),
            Shape::Udp4 => (
                14 + 20 + 8,
                Box::new(move |p| w(b().ipv4(v4s, v4d, 64).udp(40000, port), p)),
            ),
            Shape::Icmp4 => (
                14 + 20 + 8,
                Box::new(move |p| w(b().ipv4(v4s, v4d, 64).icmpv4_echo_request(1, seq as u16), p)),
            ),
            Shape::Tcp6 => (
                14 + 40 + 20,
                Box::new(move |p| w(b().ipv6(v6s, v6d, 64).tcp(40000, port, seq, 1024), p)),
            ),
            Shape::Udp6 => (
                14 + 40 + 8,
                Box::new(move |p| w(b().ipv6(v6s, v6d, 64).udp(40000, port), p)),
            ),
            Shape::Icmp6 => (
                14 + 40 + 8,
                Box::new(move |p| w(b().ipv6(v6s, v6d, 64).icmpv6_echo_request(1, seq as u16), p)),
            ),
            Shape::VlanTcp4 => (
                18 + 20 + 20,
                Box::new(move |p| {
                    w(
                        b().single_vlan(etherparse::VlanId::try_new(100).expect("valid id"))
                            .ipv4(v4s, v4d, 64)
                            .tcp(40000, port, seq, 1024),
                        p,
                    )
                }),
            ),
            Shape::QinQUdp6 => (
                22 + 40 + 8,
                Box::new(move |p| {
                    w(
                        b().double_vlan(
                            etherparse::VlanId::try_new(200).expect("valid id"),
                            etherparse::VlanId::try_new(300).expect("valid id"),
                        )
                        .ipv6(v6s, v6d, 64)
                        .udp(40000, port),
                        p,
                    )
                }),
            ),
        };
        build(&payload(seq, size.saturating_sub(builder_len).max(12)))
    }

    fn w<B: Writable>(b: B, payload: &[u8]) -> Vec<u8> {
        b.write_to(payload)
    }

    /// etherparse's final builder steps share no trait; this gives them one.
    trait Writable {
        fn write_to(self, payload: &[u8]) -> Vec<u8>;
    }

    macro_rules! writable {
        ($($t:ty),*) => {$(
            impl Writable for $t {
                fn write_to(self, payload: &[u8]) -> Vec<u8> {
                    let mut out = Vec::with_capacity(self.size(payload.len()));
                    self.write(&mut out, payload).expect("writing to a Vec cannot fail");
                    out
                }
            }
        )*};
    }
    writable!(
        PacketBuilderStep<etherparse::TcpHeader>,
        PacketBuilderStep<etherparse::UdpHeader>,
        PacketBuilderStep<etherparse::Icmpv4Header>,
        PacketBuilderStep<etherparse::Icmpv6Header>
    );
    use etherparse::PacketBuilderStep;

    /// `n` frames cycling through every shape, sizes cycling through 64..=1514.
    pub fn mixed(n: u32) -> Vec<Vec<u8>> {
        const SIZES: [usize; 5] = [64, 128, 512, 1024, 1514];
        (0..n)
            .map(|i| {
                frame(
                    SHAPES[i as usize % SHAPES.len()],
                    i,
                    SIZES[(i as usize / SHAPES.len()) % SIZES.len()],
                )
            })
            .collect()
    }

    /// The sequence number of a lab frame, if it is one.
    pub fn seq_of(frame: &[u8]) -> Option<u32> {
        let at = frame.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
        Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
    }
}

/// Real socket traffic between two namespaces through a live (copy-mode)
/// interface: a UDP echo exchange where every datagram is accounted for, and
/// a TCP transfer checked byte for byte. Every wait is bounded.
pub mod stream {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use anyhow::{bail, Context, Result};

    use super::Netns;

    /// How long any single read or write may wait.
    const IO_TIMEOUT: Duration = Duration::from_secs(5);
    /// Sent by the client to end the echo server.
    pub const END: &[u8] = b"END";

    /// A UDP server in a namespace that sends every datagram back, until
    /// [`EchoServer::finish`] (or 5 s without traffic).
    pub struct EchoServer {
        addr: SocketAddr,
        handle: Option<std::thread::JoinHandle<u32>>,
    }

    impl EchoServer {
        pub fn start(ns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
            let sock = ns.run(move || Ok(UdpSocket::bind(addr)?))?;
            sock.set_read_timeout(Some(IO_TIMEOUT))?;
            let handle = std::thread::spawn(move || {
                let mut echoed = 0;
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if &buf[..n] == END {
                        break;
                    }
                    if sock.send_to(&buf[..n], from).is_ok() {
                        echoed += 1;
                    }
                }
                echoed
            });
            Ok(EchoServer {
                addr,
                handle: Some(handle),
            })
        }

        /// Stops the server (from `client_ns`); returns how many it echoed.
        pub fn finish(mut self, client_ns: &Netns) -> Result<u32> {
            let addr = self.addr;
            client_ns.run(move || {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.send_to(END, addr)?;
                Ok(())
            })?;
            self.handle
                .take()
                .context("finished twice")?
                .join()
                .map_err(|_| anyhow::anyhow!("echo server panicked"))
        }
    }

    /// Datagram `i` of an exchange: its sequence number, then filler.
    pub fn datagram(i: u32, size: usize) -> Vec<u8> {
        let mut d = i.to_be_bytes().to_vec();
        d.extend((0..size.saturating_sub(4)).map(|k| (k as u32 ^ i) as u8));
        d
    }

    /// Sends `n` datagrams of `size` bytes from `ns` to `server` one at a
    /// time, each answered before the next goes (so no socket buffer can
    /// overflow: any loss is the network's). Fails at the first datagram not
    /// echoed intact within 5 s. `progress` counts completed round trips.
    pub fn udp_exchange(
        ns: &Netns,
        server: SocketAddr,
        n: u32,
        size: usize,
        progress: &AtomicU32,
    ) -> Result<u32> {
        udp_exchange_until(ns, server, n, size, progress, &AtomicBool::new(false))
    }

    /// [`udp_exchange`] that also ends, early and successfully, once `stop`
    /// is set. Returns the round trips completed.
    pub fn udp_exchange_until(
        ns: &Netns,
        server: SocketAddr,
        n: u32,
        size: usize,
        progress: &AtomicU32,
        stop: &AtomicBool,
    ) -> Result<u32> {
        let sock = ns.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            Ok(s)
        })?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0u8; size + 64];
        for i in 0..n {
            if stop.load(Ordering::Relaxed) {
                return Ok(i);
            }
            let d = datagram(i, size);
            sock.send(&d)?;
            let got = sock
                .recv(&mut buf)
                .with_context(|| format!("datagram {i} of {n} was not echoed within 5 s"))?;
            if buf[..got] != d[..] {
                bail!("datagram {i} came back changed or out of order");
            }
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// What a TCP transfer showed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TcpOutcome {
        /// Bytes the server read, all equal to what was sent.
        pub bytes: usize,
        /// Segments the sender retransmitted (`tcpi_total_retrans`): 0 when
        /// the network lost nothing.
        pub retransmits: u32,
    }

    /// Sends `data` from `client_ns` to a server in `server_ns` at `addr` and
    /// checks the server read exactly `data`, in order.
    pub fn tcp_transfer(
        client_ns: &Netns,
        server_ns: &Netns,
        addr: SocketAddr,
        data: &[u8],
    ) -> Result<TcpOutcome> {
        tcp_transfer_paced(client_ns, server_ns, addr, data, None)
    }

    /// [`tcp_transfer`] with the client's TCP paced to `bytes_per_sec`
    /// (`SO_MAX_PACING_RATE`): no line-rate bursts, which a veth with an XDP
    /// program (a 256-frame receive ring) drops on a starved CPU whatever
    /// the program does.
    pub fn tcp_transfer_paced(
        client_ns: &Netns,
        server_ns: &Netns,
        addr: SocketAddr,
        data: &[u8],
        bytes_per_sec: Option<u32>,
    ) -> Result<TcpOutcome> {
        let listener = server_ns.run(move || Ok(TcpListener::bind(addr)?))?;
        let server = std::thread::spawn(move || -> Result<Vec<u8>> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut got = Vec::new();
            conn.read_to_end(&mut got)?;
            Ok(got)
        });
        let mut conn = client_ns.run(move || Ok(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        if let Some(rate) = bytes_per_sec {
            // Safety: a valid socket and a 4-byte option value that outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_MAX_PACING_RATE,
                    (&rate as *const u32).cast(),
                    std::mem::size_of::<u32>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("SO_MAX_PACING_RATE");
            }
        }
        conn.write_all(data).context("sending")?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let got = server
            .join()
            .map_err(|_| anyhow::anyhow!("TCP server panicked"))?
            .context("receiving")?;
        let retransmits = tcp_retransmits(&conn);
        if got != data {
            bail!(
                "the server read {} bytes that differ from the {} sent",
                got.len(),
                data.len()
            );
        }
        Ok(TcpOutcome {
            bytes: got.len(),
            retransmits,
        })
    }

    fn tcp_retransmits(conn: &TcpStream) -> u32 {
        // Safety: tcp_info is plain old data; all-zero is valid.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // Safety: `info` is a valid buffer of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                conn.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return u32::MAX;
        }
        info.tcpi_total_retrans
    }
}
