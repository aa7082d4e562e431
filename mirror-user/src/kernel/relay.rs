//! Copy mode's kernel tunnels: the relay device of a copy-mode source, a TAP
//! device named `mirror-r<source ifindex>` that the daemon creates in the
//! source's namespace and holds open. Its tcx egress program, `tc_relay`,
//! encapsulates each clone the source's programs send it and sends it on
//! toward its collector (see `enum mirror_relay` in abi.h); nothing ever
//! reaches the TAP's file descriptor. The device is not persistent: the
//! kernel deletes it when its last descriptor closes, so a daemon that dies,
//! even by SIGKILL, leaves nothing behind.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{link_create, LoaderError, SourceProgram};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// The relay device of one copy-mode source: dropping it deletes the device.
#[derive(Debug)]
pub struct Relay {
    /// The TAP's descriptor: the device lives as long as it is open.
    _fd: OwnedFd,
    pub name: String,
    pub ifindex: u32,
}

/// The relay's name for the source interface `ifindex`: `mirror-r<ifindex>`.
pub fn relay_name(source_ifindex: u32) -> String {
    format!("mirror-r{source_ifindex}")
}

impl Relay {
    /// Creates the relay of the source interface `source_ifindex` in this
    /// thread's namespace: a non-persistent TAP without packet information,
    /// IPv6 off (no router solicitation ever leaves it), up.
    pub fn create(source_ifindex: u32) -> Result<Relay, LoaderError> {
        let name = relay_name(source_ifindex);
        let err = |step: &'static str, source: std::io::Error| LoaderError::Relay {
            name: name.clone(),
            step,
            source,
        };
        if name.len() >= libc::IFNAMSIZ {
            return Err(err(
                "naming the device",
                std::io::Error::other("name longer than IFNAMSIZ"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| err("opening /dev/net/tun", e))?;
        let fd: OwnedFd = file.into();
        // Safety: all-zero is a valid `ifreq`.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // Safety: `fd` is /dev/net/tun, `ifr` a valid, NUL-terminated ifreq.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(err(
                "creating the TAP device (TUNSETIFF; EBUSY: another daemon relays this source)",
                std::io::Error::last_os_error(),
            ));
        }
        // No IPv6 on it, so it sends nothing of its own (router
        // solicitations, MLD). A kernel without IPv6 has nothing to turn
        // off; where /proc/sys is read-only (systemd's
        // ProtectKernelTunables=yes) IPv6 stays on, and tc_relay drops
        // those few frames (counted `relay_foreign`): never mirrored.
        let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        match std::fs::write(&v6, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::info!(
                relay = %name,
                error = %e,
                "cannot turn IPv6 off on the relay (/proc/sys read-only?): its own IPv6 \
                 frames are dropped by its program, never mirrored"
            ),
        }
        super::netdev::set_up(&name).map_err(|e| err("bringing it up", e))?;
        let ifindex = super::ifindex(&name)?;
        Ok(Relay {
            _fd: fd,
            name,
            ifindex,
        })
    }
}

impl SourceProgram {
    /// Creates the source's relay (see [`Relay`]) and attaches `tc_relay` to
    /// its tcx egress, before the source's own programs clone to it. Kept
    /// with the source's links: both go when the source does.
    pub fn attach_relay(&mut self, source_ifindex: u32) -> Result<u32, LoaderError> {
        let relay = Relay::create(source_ifindex)?;
        let link = link_create(
            self.skel.progs.tc_relay.as_fd().as_raw_fd(),
            relay.ifindex,
            libbpf_sys::BPF_TCX_EGRESS,
            0,
        )
        .map_err(|source| LoaderError::AttachTc {
            interface: relay.name.clone(),
            hook: "tcx egress (relay)",
            source,
        })?;
        let ifindex = relay.ifindex;
        self.links.push(link);
        self.relay = Some(relay);
        Ok(ifindex)
    }

    /// The source's relay device, once attached.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// Frames `tc_relay` dropped because they carried no relay mark.
    pub fn relay_foreign(&self) -> u64 {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .map_or(0, |bss| bss.relay_foreign)
    }
}
