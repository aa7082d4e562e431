//! Small queries about network interfaces in this thread's network namespace,
//! by ioctl (sysfs shows the namespace it was mounted in, not ours).

/// Runs `req` on an `ifreq` naming `interface`; `None` if it fails.
fn ifreq_ioctl(
    interface: &str,
    req: libc::c_ulong,
    data: Option<*mut libc::c_void>,
) -> Option<libc::ifreq> {
    // Safety: all-zero is a valid `ifreq`.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    if let Some(p) = data {
        ifr.ifr_ifru.ifru_data = p.cast();
    }
    // Safety: plain socket() call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // Safety: `ifr` is a valid ifreq with a NUL-terminated name; `data`, when
    // given, points to the buffer the request expects.
    let rc = unsafe { libc::ioctl(fd, req, &mut ifr) };
    // Safety: `fd` is ours.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(ifr)
}

/// IFF_RUNNING: up, with carrier (for veth: the peer is up too).
pub(crate) fn is_running(interface: &str) -> Option<bool> {
    let ifr = ifreq_ioctl(interface, libc::SIOCGIFFLAGS, None)?;
    // Safety: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    Some(i32::from(flags) & libc::IFF_RUNNING != 0)
}

/// Sets IFF_UP on `interface`.
pub(crate) fn set_up(interface: &str) -> std::io::Result<()> {
    let ifr = ifreq_ioctl(interface, libc::SIOCGIFFLAGS, None)
        .ok_or_else(|| std::io::Error::other(format!("no interface {interface}")))?;
    // Safety: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags } | libc::IFF_UP as libc::c_short;
    let mut set = ifr;
    set.ifr_ifru.ifru_flags = flags;
    // Safety: plain socket() call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: `set` is a valid ifreq with a NUL-terminated name and its flags.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut set) };
    let e = std::io::Error::last_os_error();
    // Safety: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(e)
    }
}

pub fn mtu(interface: &str) -> Option<u32> {
    let ifr = ifreq_ioctl(interface, libc::SIOCGIFMTU, None)?;
    // Safety: SIOCGIFMTU filled the mtu member of the union.
    u32::try_from(unsafe { ifr.ifr_ifru.ifru_mtu }).ok()
}

/// RX queues of `interface` (ethtool channels: rx + combined); `None` when
/// the driver does not report channels.
pub(crate) fn rx_queues(interface: &str) -> Option<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    ifreq_ioctl(
        interface,
        libc::SIOCETHTOOL,
        Some((&mut ch as *mut EthtoolChannels).cast()),
    )?;
    let n = ch.rx_count + ch.combined_count;
    (n > 0).then_some(n)
}

/// Turns generic receive offload of `interface` on or off (ethtool
/// ETHTOOL_SGRO). On a veth, GRO on one end lets the other end take frames
/// redirected by XDP. `None` if the driver refuses.
pub(crate) fn set_gro(interface: &str, on: bool) -> Option<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    ethtool_set(interface, ETHTOOL_SGRO, on)
}

/// Turns TCP segmentation offload of `interface` on or off (ETHTOOL_STSO).
pub fn set_tso(interface: &str, on: bool) -> Option<()> {
    const ETHTOOL_STSO: u32 = 0x1f;
    ethtool_set(interface, ETHTOOL_STSO, on)
}

/// Turns transmit checksum offload of `interface` on or off
/// (ETHTOOL_STXCSUM): off, the stack completes a partial checksum in
/// software before the device sends.
pub fn set_tx_csum(interface: &str, on: bool) -> Option<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_set(interface, ETHTOOL_STXCSUM, on)
}

/// One ethtool "set value" command (`struct ethtool_value`).
fn ethtool_set(interface: &str, cmd: u32, on: bool) -> Option<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut v = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    ifreq_ioctl(
        interface,
        libc::SIOCETHTOOL,
        Some((&mut v as *mut EthtoolValue).cast()),
    )
    .map(|_| ())
}

/// The name of interface `ifindex` in this namespace (if_indextoname).
pub(crate) fn name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // Safety: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // Safety: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
