//! Network namespaces and veth pairs, uniquely named and deleted on drop.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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

    /// Counter `what` of device `dev` in the namespace
    /// (`/sys/class/net/<dev>/statistics/<what>`: `tx_dropped`, …).
    pub fn device_counter(&self, dev: &str, what: &str) -> Result<u64> {
        let file = format!("/sys/class/net/{dev}/statistics/{what}");
        // `ip netns exec` mounts the namespace's own sysfs.
        let out = self
            .command(&["cat", &file])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), text.trim().parse()) {
            (true, Ok(v)) => Ok(v),
            _ => bail!(
                "reading {file} in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
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
    wait_oper_up(ns_a, a)?;
    wait_oper_up(ns_b, b)
}

/// Waits (at most 3 s) until `dev` in `ns` is operationally up. The kernel
/// sets a link's operstate (and IFF_RUNNING, which the daemon reads to tell
/// a target is there) from its link-watch work, which may lag the carrier
/// by up to a second: a test that sent at once could see its first copies
/// counted `down`.
pub fn wait_oper_up(ns: &Netns, dev: &str) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let out = ns
            .command(&["ip", "-o", "link", "show", "dev", dev])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains(" state UP ") {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(3) {
            anyhow::bail!(
                "{dev} in {} is not operationally up after 3 s: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
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

/// [`wire`] over IPv6: `a` (in `na`, address `ip_a`/64) – `b` (in `nb`,
/// `ip_b`/64), both up, with `mtu`. Lab namespaces start with IPv6 off (no
/// autoconfiguration traffic): it is turned on for these two devices only,
/// without duplicate address detection, so the addresses work at once.
pub fn wire6(
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
        for setting in ["accept_dad=0", "accept_ra=0", "disable_ipv6=0"] {
            ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{dev}.{setting}")])?;
        }
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            dev,
            "nodad",
        ])?;
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
/// at `local` (UDP 4789; IPv4 or IPv6) over `dev`, up, with a 9000-byte MTU:
/// what a VXLAN collector runs.
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

    /// Makes the feed port behave like a NIC with an RX core of its own: GRO
    /// on (a veth then always receives through NAPI, with or without XDP)
    /// and threaded NAPI, so its receive work runs in a kernel thread that
    /// takes frames from its ring in batches, instead of the sender's
    /// softirq taking each frame alone.
    pub fn tune_feed_port(&self) -> Result<()> {
        gro_on(&self.src, Self::FEED_IF)?;
        // A veth hands a frame to its peer's NAPI only when it is not a TSO
        // device (else the sender's softirq takes it, on the sender's core).
        self.gen.run(|| {
            crate::kernel::netdev::set_tso(Self::GEN_IF, false)
                .ok_or_else(|| anyhow::anyhow!("turning TSO off on {}", Self::GEN_IF))
        })?;
        // `ip netns exec` mounts the namespace's own sysfs.
        self.src.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{}/threaded", Self::FEED_IF),
        ])
    }
}
