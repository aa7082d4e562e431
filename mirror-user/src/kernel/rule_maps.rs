//! Rule sets in the kernel: each compiled [`RuleSet`] becomes four inner
//! maps (class index, address tries, rule bitmaps, verdict cache) in the idle
//! generation's outer slots; one write flips the generation.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::{LoaderError, SourceProgram};
use crate::filter::ruleset::{RuleSet, BITMAP_U64S};

/// Direction numbers of the kernel's rule-set slots (`slot = dir * 2 + gen`).
const INGRESS: u32 = 0;
const EGRESS: u32 = 1;

impl SourceProgram {
    /// Replaces the rule sets atomically: builds the new maps in the idle
    /// generation, flips `active_generation` (one 4-byte map write), and
    /// waits an RCU grace period so no program still runs on the old
    /// generation, whose slots the next install reuses. Every frame is classified by either the old or the new sets,
    /// whole. On error the old sets stay in force.
    pub fn install(
        &mut self,
        ingress: &RuleSet,
        egress: Option<&RuleSet>,
    ) -> Result<(), LoaderError> {
        let idle = self.generation ^ 1;
        // Build everything first: nothing the kernel reads changes until the flip.
        let new_ingress = RuleSetMaps::create(ingress)?;
        let new_egress = egress.map(RuleSetMaps::create).transpose()?;
        for (dir, maps) in [(INGRESS, Some(&new_ingress)), (EGRESS, new_egress.as_ref())] {
            let slot = dir * 2 + idle;
            match maps {
                Some(m) => self.set_slot(slot, m)?,
                None => self.clear_slot(slot)?,
            }
        }
        self.skel
            .maps
            .active_generation
            .update(&0u32.to_ne_bytes(), &idle.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "active_generation",
                source,
            })?;
        self.generation = idle;
        // The next install writes the slots just left: wait until no program
        // still runs on them. Their maps stay until then (the next install's
        // writes replace them, and the kernel frees a replaced inner map
        // once no program holds it): deleting them here would cost four
        // more grace periods (each outer-map write waits one), which made
        // an install take ~9 of them.
        rcu_grace_period().map_err(LoaderError::GracePeriod)
    }

    fn set_slot(&self, slot: u32, m: &RuleSetMaps) -> Result<(), LoaderError> {
        let key = slot.to_ne_bytes();
        for (outer, name, inner) in [
            (&self.skel.maps.rule_index, "rule_index", &m.index),
            (&self.skel.maps.rule_addr, "rule_addr", &m.addr),
            (&self.skel.maps.rule_bitmaps, "rule_bitmaps", &m.bitmaps),
            (&self.skel.maps.rule_cache, "rule_cache", &m.cache),
        ] {
            let fd = inner.as_fd().as_raw_fd() as u32;
            outer
                .update(&key, &fd.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| LoaderError::Map { map: name, source })?;
        }
        Ok(())
    }

    fn clear_slot(&self, slot: u32) -> Result<(), LoaderError> {
        let key = slot.to_ne_bytes();
        for (outer, name) in [
            (&self.skel.maps.rule_index, "rule_index"),
            (&self.skel.maps.rule_addr, "rule_addr"),
            (&self.skel.maps.rule_bitmaps, "rule_bitmaps"),
            (&self.skel.maps.rule_cache, "rule_cache"),
        ] {
            match outer.delete(&key) {
                Ok(()) => {}
                // An empty slot: nothing to release.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => return Err(LoaderError::Map { map: name, source }),
            }
        }
        Ok(())
    }
}

/// The four inner maps of one rule set (see abi.h), created and filled.
struct RuleSetMaps {
    index: MapHandle,
    addr: MapHandle,
    bitmaps: MapHandle,
    /// The verdict cache, created empty with the set (a new set never sees
    /// an old set's verdicts).
    cache: MapHandle,
}

impl RuleSetMaps {
    fn create(set: &RuleSet) -> Result<Self, LoaderError> {
        let index_values: Vec<u8> = set.index.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let node_values: Vec<u8> = set
            .addr_nodes
            .iter()
            .flat_map(|n| n.iter().flat_map(|e| e.to_ne_bytes()))
            .collect();
        let bitmap_values: Vec<u8> = set
            .bitmaps
            .iter()
            .flat_map(|b| b.iter().flat_map(|w| w.to_ne_bytes()))
            .collect();
        Ok(RuleSetMaps {
            // Same size in every set, as the inner template declares it: no
            // BPF_F_INNER_MAP. The trie and bitmaps are sized per set.
            index: filled_array("mirror_rule_ix", 4, set.index.len(), 0, &index_values)?,
            addr: filled_array(
                "mirror_rule_addr",
                1024,
                set.addr_nodes.len(),
                libbpf_sys::BPF_F_INNER_MAP,
                &node_values,
            )?,
            bitmaps: filled_array(
                "mirror_rule_bm",
                BITMAP_U64S * 8,
                set.bitmaps.len(),
                libbpf_sys::BPF_F_INNER_MAP,
                &bitmap_values,
            )?,
            cache: verdict_cache()?,
        })
    }
}

/// An empty verdict cache (struct mirror_cache_entry per slot and CPU), the
/// size the inner template declares.
fn verdict_cache() -> Result<MapHandle, LoaderError> {
    let map = "mirror_rule_vc";
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    MapHandle::create(
        MapType::PercpuArray,
        Some(map),
        4,
        std::mem::size_of::<mirror_ebpf::mirror::types::mirror_cache_entry>() as u32,
        mirror_ebpf::mirror::types::mirror_limits::MIRROR_CACHE_SLOTS.0,
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap { map, source })
}

/// Creates an ARRAY map of `entries` values of `value_size` bytes (keys
/// 0..entries) and fills it from `values` with one batch update.
fn filled_array(
    map: &'static str,
    value_size: usize,
    entries: usize,
    flags: u32,
    values: &[u8],
) -> Result<MapHandle, LoaderError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: flags,
        ..Default::default()
    };
    let handle = MapHandle::create(
        MapType::Array,
        Some(map),
        4,
        value_size as u32,
        entries.max(1) as u32,
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap { map, source })?;
    if entries > 0 {
        let keys: Vec<u8> = (0..entries as u32).flat_map(u32::to_ne_bytes).collect();
        handle
            .update_batch(&keys, values, entries as u32, MapFlags::ANY, MapFlags::ANY)
            .map_err(|source| LoaderError::Map { map, source })?;
    }
    Ok(handle)
}

/// Returns once every CPU has passed an RCU grace period: afterwards no BPF
/// program that started before the call is still running.
/// `MEMBARRIER_CMD_GLOBAL` is `synchronize_rcu()` in the kernel.
fn rcu_grace_period() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // Safety: membarrier takes two integer arguments and touches no user memory.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // nohz_full kernels refuse MEMBARRIER_CMD_GLOBAL. An XDP program runs
        // for microseconds inside one NAPI poll; a tenth of a second is many
        // orders of magnitude beyond it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        return Ok(());
    }
    Err(err)
}
