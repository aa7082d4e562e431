//! The programs' counters, read and summed over CPUs: per source
//! (`enum mirror_counter`, by direction) and per session.

use libbpf_rs::{MapCore, MapFlags};
use mirror_ebpf::mirror::types::mirror_counter;

use super::{LoaderError, SourceProgram};

/// Number of per-source kernel counters (`enum mirror_counter`).
pub const COUNTERS: usize = mirror_counter::MIRROR_CNT_MAX.0 as usize;

impl SourceProgram {
    /// The per-source counters of both directions together, summed over
    /// CPUs, indexed by `enum mirror_counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS], LoaderError> {
        let [ingress, egress] = self.counters_by_direction()?;
        Ok(std::array::from_fn(|i| ingress[i] + egress[i]))
    }

    /// The per-source counters, `[ingress, egress]`, summed over CPUs.
    pub fn counters_by_direction(&self) -> Result<[[u64; COUNTERS]; 2], LoaderError> {
        let mut out = [[0u64; COUNTERS]; 2];
        for (dir, counters) in out.iter_mut().enumerate() {
            for (i, slot) in counters.iter_mut().enumerate() {
                let key = (dir * COUNTERS + i) as u32;
                *slot = percpu_sum(&self.skel.maps.counters, key).map_err(|source| {
                    LoaderError::Map {
                        map: "counters",
                        source,
                    }
                })?;
            }
        }
        Ok(out)
    }

    /// Frames of the session at kernel index `session` skipped by its sampling.
    pub fn session_sampled_out(&self, session: u32) -> Result<u64, LoaderError> {
        percpu_sum(&self.skel.maps.session_sampled_out, session).map_err(|source| {
            LoaderError::Map {
                map: "session_sampled_out",
                source,
            }
        })
    }

    /// Frames of the session at kernel index `session` left out while it was
    /// disabled (`enabled = false` or its schedule).
    pub fn session_scheduled_out(&self, session: u32) -> Result<u64, LoaderError> {
        percpu_sum(&self.skel.maps.session_scheduled_out, session).map_err(|source| {
            LoaderError::Map {
                map: "session_scheduled_out",
                source,
            }
        })
    }

    /// The per-flow cutoff's counts of the session at kernel index
    /// `session`: frames past their flow's cutoff (not mirrored), mirrored
    /// frames cut where they crossed it, and ones mirrored whole across it
    /// (copy mode's kernel path cannot cut a clone).
    pub fn session_cutoff(&self, session: u32) -> Result<CutoffCounts, LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .session_cutoff_count
            .lookup_percpu(&session.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "session_cutoff_count",
                source,
            })?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .fold(CutoffCounts::default(), |c, v| CutoffCounts {
                cutoff: c.cutoff + u64_at(v, 0),
                cut: c.cut + u64_at(v, 1),
                whole: c.whole + u64_at(v, 2),
            }))
    }

    /// Frames accepted by the session at kernel index `session`.
    pub fn session_matched(&self, session: u32) -> Result<u64, LoaderError> {
        percpu_sum(&self.skel.maps.session_matched, session).map_err(|source| LoaderError::Map {
            map: "session_matched",
            source,
        })
    }
}

/// A session's per-flow cutoff counts (`struct mirror_cutoff_count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutoffCounts {
    /// Frames past their flow's cutoff: not mirrored.
    pub cutoff: u64,
    /// Mirrored, cut where they crossed the flow's byte cutoff.
    pub cut: u64,
    /// Mirrored whole across it (a path that cannot cut).
    pub whole: u64,
}

/// The `i`th u64 of a map value (0 when it is shorter).
pub(super) fn u64_at(value: &[u8], i: usize) -> u64 {
    value
        .get(i * 8..i * 8 + 8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Slot `key` of a per-CPU map whose value starts with a u64, summed over CPUs.
pub fn percpu_sum(map: &libbpf_rs::MapMut<'_>, key: u32) -> Result<u64, libbpf_rs::Error> {
    let values = map.lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)?;
    Ok(values
        .unwrap_or_default()
        .iter()
        .map(|v| u64_at(v, 0))
        .sum())
}
