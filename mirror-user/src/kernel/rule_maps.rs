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
    /// Replaces the rule sets atomically: writes the new sets into the idle
    /// generation's slots, flips `active_generation` (one 4-byte map write),
    /// and waits an RCU grace period so no program still runs on the old
    /// generation, whose slots the next install reuses. Every frame is
    /// classified by either the old or the new sets, whole. On error the
    /// old sets stay in force.
    ///
    /// The idle generation's inner maps are rewritten in place when they
    /// have room for the new set (nothing reads them: the previous install
    /// waited out every program that could); only a set that outgrew them
    /// gets new maps, put in the outer slots. Each outer-map write waits a
    /// grace period of its own (the kernel makes sure no program still sees
    /// the old inner map), so in place an install costs one grace period
    /// instead of five.
    pub fn install(
        &mut self,
        ingress: &RuleSet,
        egress: Option<&RuleSet>,
    ) -> Result<(), LoaderError> {
        let idle = self.generation ^ 1;
        // Nothing the kernel reads changes until the flip.
        for (dir, set) in [(INGRESS, Some(ingress)), (EGRESS, egress)] {
            let slot = dir * 2 + idle;
            let held = &mut self.rule_maps[dir as usize][idle as usize];
            match set {
                Some(set) if held.as_ref().is_some_and(|m| m.fits(set)) => {
                    let rewritten = held.as_mut().map(|m| m.rewrite(set));
                    if let Some(Err(e)) = rewritten {
                        // Half written: never reused, replaced next time.
                        *held = None;
                        return Err(e);
                    }
                }
                Some(set) => {
                    let maps = RuleSetMaps::create(set)?;
                    // Until the outer slot holds them, the slot's old maps
                    // (if any) are what the kernel has there.
                    self.rule_maps[dir as usize][idle as usize] = None;
                    self.set_slot(slot, &maps)?;
                    self.rule_maps[dir as usize][idle as usize] = Some(maps);
                }
                None => {
                    self.clear_slot(slot)?;
                    self.rule_maps[dir as usize][idle as usize] = None;
                }
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
        // still runs on them.
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
pub(super) struct RuleSetMaps {
    index: MapHandle,
    addr: MapHandle,
    bitmaps: MapHandle,
    /// The verdict cache, empty for each set written (a new set never sees
    /// an old set's verdicts).
    cache: MapHandle,
    /// Entries the trie and bitmap maps were made with.
    addr_room: usize,
    bitmap_room: usize,
    /// What the index map holds: a rewrite writes only what differs (the
    /// index has an entry per port, some 140,000; a rule change alters a
    /// few).
    index_now: Vec<u32>,
}

/// Entries a trie or bitmap map is made with for `n`: some room to spare,
/// so the next sets of a running source (a rule more or less) fit in place.
fn room(n: usize) -> usize {
    n + n / 4 + 8
}

impl RuleSetMaps {
    fn create(set: &RuleSet) -> Result<Self, LoaderError> {
        let (addr_room, bitmap_room) = (room(set.addr_nodes.len()), room(set.bitmaps.len()));
        let mut maps = RuleSetMaps {
            // Same size in every set, as the inner template declares it: no
            // BPF_F_INNER_MAP. The trie and bitmaps are sized per set.
            index: array("mirror_rule_ix", 4, set.index.len(), 0)?,
            addr: array(
                "mirror_rule_addr",
                1024,
                addr_room,
                libbpf_sys::BPF_F_INNER_MAP,
            )?,
            bitmaps: array(
                "mirror_rule_bm",
                BITMAP_U64S * 8,
                bitmap_room,
                libbpf_sys::BPF_F_INNER_MAP,
            )?,
            cache: verdict_cache()?,
            addr_room,
            bitmap_room,
            // A new array map is all zero.
            index_now: vec![0; set.index.len()],
        };
        maps.fill(set)?;
        Ok(maps)
    }

    /// Whether `set` can be written into these maps.
    fn fits(&self, set: &RuleSet) -> bool {
        set.addr_nodes.len() <= self.addr_room && set.bitmaps.len() <= self.bitmap_room
    }

    /// Writes `set` over what these maps hold (entries past the new set's
    /// stay, unreachable: the index and trie point only inside it) and
    /// empties the verdict cache.
    fn rewrite(&mut self, set: &RuleSet) -> Result<(), LoaderError> {
        self.fill(set)?;
        let cpus = libbpf_rs::num_possible_cpus().map_err(|source| LoaderError::Map {
            map: "mirror_rule_vc",
            source,
        })?;
        let slots = mirror_ebpf::mirror::types::mirror_limits::MIRROR_CACHE_SLOTS.0 as usize;
        let per_cpu = std::mem::size_of::<mirror_ebpf::mirror::types::mirror_cache_entry>()
            .next_multiple_of(8);
        let zeros = vec![0u8; slots * cpus * per_cpu];
        let keys: Vec<u32> = (0..slots as u32).collect();
        // A per-CPU batch: each key's value is every CPU's copy, which
        // libbpf-rs's update_batch does not size for.
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        let mut count = slots as u32;
        // Safety: `keys` holds `count` u32 keys and `zeros` `count` values of
        // the map's per-CPU size; the kernel only reads them.
        let rc = unsafe {
            libbpf_sys::bpf_map_update_batch(
                self.cache.as_fd().as_raw_fd(),
                keys.as_ptr().cast(),
                zeros.as_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        if rc < 0 {
            return Err(LoaderError::Map {
                map: "mirror_rule_vc",
                source: libbpf_rs::Error::from_raw_os_error(-rc),
            });
        }
        Ok(())
    }

    fn fill(&mut self, set: &RuleSet) -> Result<(), LoaderError> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (i, &v) in set.index.iter().enumerate() {
            if self.index_now.get(i) != Some(&v) {
                keys.extend((i as u32).to_ne_bytes());
                values.extend(v.to_ne_bytes());
            }
        }
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
        if !keys.is_empty() {
            // Whatever happens, the map's contents are not known any more
            // unless the write succeeds.
            self.index_now.clear();
            self.index
                .update_batch(
                    &keys,
                    &values,
                    (keys.len() / 4) as u32,
                    MapFlags::ANY,
                    MapFlags::ANY,
                )
                .map_err(|source| LoaderError::Map {
                    map: "mirror_rule_ix",
                    source,
                })?;
            self.index_now.clone_from(&set.index);
        }
        fill(
            &self.addr,
            "mirror_rule_addr",
            &node_values,
            set.addr_nodes.len(),
        )?;
        fill(
            &self.bitmaps,
            "mirror_rule_bm",
            &bitmap_values,
            set.bitmaps.len(),
        )
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
/// 0..entries), zeroed.
fn array(
    map: &'static str,
    value_size: usize,
    entries: usize,
    flags: u32,
) -> Result<MapHandle, LoaderError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: flags,
        ..Default::default()
    };
    MapHandle::create(
        MapType::Array,
        Some(map),
        4,
        value_size as u32,
        entries.max(1) as u32,
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap { map, source })
}

/// Writes `values` (`entries` of them) to keys 0..entries of `handle` with
/// one batch update.
fn fill(
    handle: &MapHandle,
    map: &'static str,
    values: &[u8],
    entries: usize,
) -> Result<(), LoaderError> {
    if entries == 0 {
        return Ok(());
    }
    let keys: Vec<u8> = (0..entries as u32).flat_map(u32::to_ne_bytes).collect();
    handle
        .update_batch(&keys, values, entries as u32, MapFlags::ANY, MapFlags::ANY)
        .map_err(|source| LoaderError::Map { map, source })
}

/// Returns once every CPU has passed an RCU grace period: afterwards no BPF
/// program that started before the call is still running.
/// `MEMBARRIER_CMD_GLOBAL` is `synchronize_rcu()` in the kernel.
pub fn rcu_grace_period() -> std::io::Result<()> {
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
