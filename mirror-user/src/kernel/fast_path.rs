//! The in-kernel fast path: a DEVMAP_HASH per session (its target devices),
//! the transmit tracepoint that counts what each device took, and the reading
//! of those counters.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::counters::u64_at;
use super::{bss_error, LoaderError, SourceProgram};

impl SourceProgram {
    /// Puts the session at kernel index `session` on the in-kernel fast path:
    /// a DEVMAP_HASH with one entry per target device in `dests` (ifindex,
    /// longest frame it takes) goes into its `fast_sessions` slot, and each
    /// device gets fast-path counters; `xdp_tap` counts a frame longer than a
    /// device takes as that device's `too_big`. `generic`: the source's XDP runs in generic mode, where the
    /// transmit tracepoint does not fire, so each entry runs
    /// `xdp_fast_target` to count instead. Frames the session accepted
    /// before this went through userspace, counted there. Also attaches the
    /// transmit tracepoint (once per source).
    pub(crate) fn set_fast_path(
        &mut self,
        session: u32,
        source_ifindex: u32,
        dests: &[FastDest],
        generic: bool,
    ) -> Result<(), LoaderError> {
        let map_err = |map| move |source| LoaderError::Map { map, source };
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let devmap = MapHandle::create(
            MapType::DevmapHash,
            Some("mirror_fast"),
            4,
            8,
            mirror_ebpf::limits::MAX_FAST_TARGETS,
            &opts,
        )
        .map_err(|source| LoaderError::CreateMap {
            map: "mirror_fast",
            source,
        })?;
        // Native XDP: no program per destination (fd 0 = none).
        let prog_fd = if generic {
            self.skel.progs.xdp_fast_target.as_fd().as_raw_fd()
        } else {
            0
        };
        let zero = vec![0u8; std::mem::size_of::<mirror_ebpf::mirror::types::mirror_fast_stats>()];
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_err("fast_stats"))?;
        for (key, &FastDest { ifindex, .. }) in dests.iter().enumerate() {
            // struct bpf_devmap_val: the device, then the program to run.
            let mut val = ifindex.to_ne_bytes().to_vec();
            val.extend_from_slice(&prog_fd.to_ne_bytes());
            devmap
                .update(&(key as u32).to_ne_bytes(), &val, MapFlags::ANY)
                .map_err(map_err("mirror_fast"))?;
            let k = ifindex.to_ne_bytes();
            let known = self
                .skel
                .maps
                .fast_stats
                .lookup_percpu(&k, MapFlags::ANY)
                .map_err(map_err("fast_stats"))?
                .is_some();
            if !known {
                self.skel
                    .maps
                    .fast_stats
                    .update_percpu(&k, &vec![zero.clone(); cpus], MapFlags::NO_EXIST)
                    .map_err(map_err("fast_stats"))?;
            }
        }
        let s = session as usize;
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if s < bss.session_single.len() && dests.len() <= bss.fast_dests[s].len() => {
                bss.source_ifindex = source_ifindex;
                bss.session_single[s] = u8::from(dests.len() == 1);
                for (slot, d) in bss.fast_dests[s].iter_mut().zip(dests) {
                    slot.ifindex = d.ifindex;
                    slot.max_len = d.max_len;
                }
                bss.fast_ndests[s] = dests.len() as u32;
                bss.fast_max_len[s] = dests.iter().map(|d| d.max_len).min().unwrap_or(u32::MAX);
            }
            _ => return Err(bss_error("session_single", session)),
        }
        if self.xmit_link.is_none() {
            let link = self
                .skel
                .progs
                .fast_xmit
                .attach()
                .map_err(map_err("fast_xmit (tracepoint xdp:xdp_devmap_xmit)"))?;
            self.xmit_link = Some(link);
        }
        let fd = devmap.as_fd().as_raw_fd() as u32;
        self.skel
            .maps
            .fast_sessions
            .update(&session.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("fast_sessions"))
    }

    /// (frames, bytes) the session at kernel index `session` sent down the fast path.
    pub(crate) fn session_kernel(&self, session: u32) -> Result<(u64, u64), LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .session_kernel
            .lookup_percpu(&session.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "session_kernel",
                source,
            })?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(p, b), v| (p + u64_at(v, 0), b + u64_at(v, 1))))
    }

    /// Fast-path counters of target device `ifindex`, summed over CPUs
    /// (zeros for a device this source never sent to).
    pub(crate) fn fast_stats(&self, ifindex: u32) -> Result<FastStats, LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .fast_stats
            .lookup_percpu(&ifindex.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "fast_stats",
                source,
            })?
            .unwrap_or_default();
        let mut out = FastStats::default();
        for v in per_cpu {
            out.packets += u64_at(&v, 0);
            out.bytes += u64_at(&v, 1);
            out.xmit_drops += u64_at(&v, 2);
            out.too_big += u64_at(&v, 3);
        }
        Ok(out)
    }
}

/// `struct mirror_fast_stats` of one target device, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastStats {
    /// Frames handed to the device's XDP transmit.
    pub packets: u64,
    /// Their bytes (generic XDP only).
    pub bytes: u64,
    /// Of those, refused by the device (native XDP only).
    pub xmit_drops: u64,
    /// Frames not handed to it: longer than it takes (counted by `xdp_tap`).
    pub too_big: u64,
}

/// One target device of a fast-path session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDest {
    pub ifindex: u32,
    /// The longest frame the device takes: its MTU, the Ethernet header and
    /// one VLAN tag (the kernel's `xdp_ok_fwd_dev`).
    pub max_len: u32,
}

impl FastDest {
    /// `ifindex` with an MTU of `mtu` (`None`: unknown, nothing is too big).
    pub fn new(ifindex: u32, mtu: Option<u32>) -> FastDest {
        FastDest {
            ifindex,
            max_len: mtu.map_or(u32::MAX, |m| m.saturating_add(14 + 4)),
        }
    }
}
