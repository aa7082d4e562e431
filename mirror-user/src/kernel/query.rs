//! What the kernel knows about interfaces: ifindexes, the XDP and tcx
//! programs attached to them, and the XDP features their drivers report.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::LoaderError;

/// The ifindex of `name` in this thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, LoaderError> {
    let c = CString::new(name).map_err(|_| LoaderError::NoInterface(name.to_string()))?;
    // Safety: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(LoaderError::NoInterface(name.to_string()));
    }
    Ok(idx)
}

/// The BPF programs attached to an interface, as (id, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub xdp: Vec<(u32, String)>,
    pub tcx_ingress: Vec<(u32, String)>,
    pub tcx_egress: Vec<(u32, String)>,
}

/// Which XDP and tcx programs are attached to `interface` in this thread's
/// network namespace (what `bpftool net` shows).
pub fn attached(interface: &str) -> Result<Attached, LoaderError> {
    let idx = ifindex(interface)?;
    let xdp_id = attached_prog_id(idx);
    let named = |ids: Vec<u32>| ids.into_iter().map(|id| (id, prog_name(id))).collect();
    Ok(Attached {
        xdp: named(if xdp_id == 0 {
            Vec::new()
        } else {
            vec![xdp_id]
        }),
        tcx_ingress: named(tcx_prog_ids(idx, libbpf_sys::BPF_TCX_INGRESS)),
        tcx_egress: named(tcx_prog_ids(idx, libbpf_sys::BPF_TCX_EGRESS)),
    })
}

fn tcx_prog_ids(ifindex: u32, attach_type: libbpf_sys::bpf_attach_type) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut count = ids.len() as u32;
    // Safety: `ids` has room for `count` ids; the other pointers may be NULL.
    let rc = unsafe {
        libbpf_sys::bpf_prog_query(
            ifindex as i32,
            attach_type,
            0,
            std::ptr::null_mut(),
            ids.as_mut_ptr(),
            &mut count,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    ids[..(count as usize).min(ids.len())].to_vec()
}

/// The kernel's information on loaded program `id`, when it can be read.
pub fn prog_info(id: u32) -> Option<libbpf_sys::bpf_prog_info> {
    if id == 0 {
        return None;
    }
    // Safety: plain syscall wrapper; returns a new fd or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // Safety: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Safety: bpf_prog_info is plain old data; all-zero is valid.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // Safety: `info` is a valid buffer of `len` bytes.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    (rc == 0).then_some(info)
}

/// The name of loaded program `id`, or "?" when it cannot be read.
pub(super) fn prog_name(id: u32) -> String {
    let Some(info) = prog_info(id) else {
        return "?".into();
    };
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&name).into_owned()
}

/// `NETDEV_XDP_ACT_NDO_XMIT` (linux/netdev.h): other devices' XDP programs
/// can redirect frames into this one.
pub(crate) const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// `NETDEV_XDP_ACT_XSK_ZEROCOPY` (linux/netdev.h): the driver binds AF_XDP
/// sockets in zero-copy mode.
pub(crate) const XDP_ACT_XSK_ZEROCOPY: u64 = 1 << 3;

/// The XDP features the kernel reports for `ifindex` (`NETDEV_XDP_ACT_*`
/// bits, from the netdev generic-netlink family; 0 on kernels before 6.3).
pub fn xdp_features(ifindex: u32) -> std::io::Result<u64> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // Safety: `opts` is a valid, sized bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(opts.feature_flags)
}

pub(super) fn attached_prog_id(ifindex: u32) -> u32 {
    let mut id = 0u32;
    // Safety: `id` is a valid out-pointer for the call.
    let _ = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    id
}
