//! Copy mode's kernel path: the destinations a session's tcx programs clone
//! its frames to (`clone_dests` in `.bss`), whether each is down, and the
//! counters of what became of the clones.

use libbpf_rs::{MapCore, MapFlags};

use super::counters::u64_at;
use super::{bss_error, LoaderError, SourceProgram};

/// One destination of a copy-mode kernel-path session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneDest {
    pub ifindex: u32,
    /// The longest frame the device takes ([`super::fast_path::max_len`]);
    /// a longer frame that is not a GSO super-frame is counted `too_big`.
    pub max_len: u32,
    /// A tunnel target: `ifindex` is the source's relay (see
    /// [`super::relay`]), which encapsulates the clone with the headers of
    /// the session's tunnel slot `key`.
    pub tunnel: bool,
}

/// `struct mirror_clone_stats` of one destination slot, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneStats {
    /// Clones the device took (a tunnel's: handed to the relay, whose
    /// tunnel slot counts the rest).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Not cloned: longer than the device takes (and not GSO); to a
    /// tunnel, a GSO super-frame.
    pub too_big: u64,
    /// Not cloned: the device was down or gone.
    pub down: u64,
    /// `bpf_clone_redirect` failed otherwise (no memory, the device's queue
    /// dropped it, ...).
    pub errors: u64,
}

impl CloneStats {
    /// Every frame the destination was given, whatever became of it.
    pub fn outcomes(&self) -> u64 {
        self.packets + self.too_big + self.down + self.errors
    }

    pub fn add(&mut self, o: &CloneStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.too_big += o.too_big;
        self.down += o.down;
        self.errors += o.errors;
    }
}

impl SourceProgram {
    /// Puts the session at kernel index `session` on copy mode's kernel
    /// path: its tcx programs clone each frame it mirrors to each of
    /// `dests` (at most `MAX_FAST_TARGETS`), and write no ring record for
    /// it. Set before the programs attach; every destination starts up.
    pub fn set_clone_path(&mut self, session: u32, dests: &[CloneDest]) -> Result<(), LoaderError> {
        let s = session as usize;
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if s < bss.clone_ndests.len() && dests.len() <= bss.clone_dests[s].len() => {
                for (slot, d) in bss.clone_dests[s].iter_mut().zip(dests) {
                    slot.ifindex = d.ifindex;
                    slot.max_len = d.max_len;
                    slot.down = 0;
                    slot.tunnel = u32::from(d.tunnel);
                }
                bss.clone_tunnels[s] = u32::from(dests.iter().any(|d| d.tunnel));
                bss.clone_ndests[s] = dests.len() as u32;
                Ok(())
            }
            _ => Err(bss_error("clone_dests", session)),
        }
    }

    /// Destination `key` of kernel-path copy session `session`, as the
    /// kernel reads it (the one place the setters below find it).
    fn clone_dest(
        &mut self,
        session: u32,
        key: u32,
    ) -> Result<&mut mirror_ebpf::mirror::types::mirror_clone_dest, LoaderError> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|bss| bss.clone_dests.get_mut(session as usize))
            .and_then(|dests| dests.get_mut(key as usize))
            .ok_or_else(|| bss_error("clone_dests", session))
    }

    /// Marks destination `key` of a kernel-path copy session down (its
    /// frames are counted `down`, not cloned) or up. Takes effect with the
    /// next frame.
    pub fn set_clone_down(
        &mut self,
        session: u32,
        key: u32,
        down: bool,
    ) -> Result<(), LoaderError> {
        let d = self.clone_dest(session, key)?;
        d.down = u32::from(down);
        Ok(())
    }

    /// Points destination `key` of a kernel-path copy session at device
    /// `ifindex` (its interface deleted and created again under its name).
    pub fn set_clone_ifindex(
        &mut self,
        session: u32,
        key: u32,
        ifindex: u32,
    ) -> Result<(), LoaderError> {
        let d = self.clone_dest(session, key)?;
        d.ifindex = ifindex;
        Ok(())
    }

    /// Sets the longest frame destination `key` of a kernel-path copy
    /// session takes (its device's MTU changed): longer ones that are not
    /// GSO are counted `too_big` from the next frame on.
    pub fn set_clone_max_len(
        &mut self,
        session: u32,
        key: u32,
        max_len: u32,
    ) -> Result<(), LoaderError> {
        let d = self.clone_dest(session, key)?;
        d.max_len = max_len;
        Ok(())
    }

    /// What became of the frames destination `key` of the session at kernel
    /// index `session` was given, summed over CPUs.
    pub fn clone_stats(&self, session: u32, key: u32) -> Result<CloneStats, LoaderError> {
        let slot = session * mirror_ebpf::limits::MAX_FAST_TARGETS + key;
        let per_cpu = self
            .skel
            .maps
            .clone_stats
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "clone_stats",
                source,
            })?
            .unwrap_or_default();
        let mut out = CloneStats::default();
        for v in per_cpu {
            out.packets += u64_at(&v, 0);
            out.bytes += u64_at(&v, 1);
            out.too_big += u64_at(&v, 2);
            out.down += u64_at(&v, 3);
            out.errors += u64_at(&v, 4);
        }
        Ok(out)
    }

    /// Frames each direction (`[ingress, egress]`) sent down copy mode's
    /// kernel path, summed over CPUs.
    pub fn clone_dir(&self) -> Result<[u64; 2], LoaderError> {
        let mut out = [0; 2];
        for (dir, v) in out.iter_mut().enumerate() {
            *v = super::percpu_sum(&self.skel.maps.clone_dir, dir as u32).map_err(|source| {
                LoaderError::Map {
                    map: "clone_dir",
                    source,
                }
            })?;
        }
        Ok(out)
    }
}
