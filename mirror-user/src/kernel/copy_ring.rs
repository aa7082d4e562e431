//! Copy mode: the BPF ring buffer (`copies`) through which the kernel programs
//! hand userspace a copy of every mirrored frame of a live interface.
//!
//! Each record is `struct mirror_copy` (abi.h) followed by the frame's first
//! `cap_len` bytes. [`Record::parse`] reads one without copying the frame;
//! [`drain`] collects owned copies (tests, tools).

use std::time::Duration;

use libbpf_rs::{MapHandle, RingBufferBuilder};
use mirror_ebpf::limits::COPY_HEADER_LEN;
use mirror_ebpf::mirror::types::{mirror_copy, mirror_copy_flags, mirror_direction};

/// One copy-mode record: borrowing the frame bytes from the ring
/// (`Record<&[u8]>`, what [`Record::parse`] returns) or owning a copy
/// ([`OwnedRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<D> {
    /// Kernel session index.
    pub session: u16,
    /// The policy slot the frame saw (`struct mirror_policy`).
    pub slot: u8,
    /// Seen leaving the interface (tcx egress) rather than arriving.
    pub egress: bool,
    /// The copy was cut at the kernel's per-record maximum (`COPY_MAX`).
    pub cut: bool,
    /// A GSO super-frame (egress): longer than the MTU until the stack segments it.
    pub gso: bool,
    pub ifindex: u32,
    /// Length of the whole frame.
    pub orig_len: u32,
    /// Symmetric flow hash.
    pub hash: u32,
    /// `bpf_ktime_get_tai_ns()` when the record was written.
    pub tstamp_tai: u64,
    /// The frame's outer VLAN tag when the kernel took it out of the data
    /// (tc, VLAN acceleration): TPID << 16 | TCI. `data` and `orig_len`
    /// are without it; [`Record::vlan_header`] gives its four bytes.
    pub vlan: Option<u32>,
    /// With `vlan`, a copy the flow cutoff cut inside that tag (14 or 15
    /// bytes of the frame as on the wire): how many of the tag's bytes it
    /// keeps (2 or 3; `data` is then the MAC addresses). 0: all four.
    pub vlan_kept: u8,
    /// The frame's first bytes (the session's `packet_length`, or all of it).
    pub data: D,
}

/// [`Record`] with its own copy of the bytes.
pub type OwnedRecord = Record<Vec<u8>>;

impl<'a> Record<&'a [u8]> {
    /// Reads a record as the kernel wrote it; `None` when it is shorter than
    /// its header says (never from a well-behaved kernel program).
    pub fn parse(bytes: &'a [u8]) -> Option<Record<&'a [u8]>> {
        let head = bytes.get(..COPY_HEADER_LEN)?;
        // Safety: `head` holds size_of::<mirror_copy>() bytes, and every bit
        // pattern is a valid `mirror_copy` (integers only).
        let h: mirror_copy = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
        let data = bytes.get(COPY_HEADER_LEN..COPY_HEADER_LEN + h.cap_len as usize)?;
        Some(Record {
            session: h.session,
            slot: (h.slot & 1) as u8,
            egress: u32::from(h.direction) == mirror_direction::MIRROR_DIR_EGRESS.0,
            cut: u32::from(h.flags) & mirror_copy_flags::MIRROR_COPY_F_CUT.0 != 0,
            gso: u32::from(h.flags) & mirror_copy_flags::MIRROR_COPY_F_GSO.0 != 0,
            ifindex: h.ifindex,
            orig_len: h.orig_len,
            hash: h.hash,
            tstamp_tai: h.tstamp,
            vlan: (u32::from(h.flags) & mirror_copy_flags::MIRROR_COPY_F_VLAN.0 != 0).then(|| {
                let tpid: u32 = if u32::from(h.flags) & mirror_copy_flags::MIRROR_COPY_F_QINQ.0 != 0
                {
                    0x88a8
                } else {
                    0x8100
                };
                tpid << 16 | h.slot >> 16
            }),
            vlan_kept: ((h.slot >> 1) & 3) as u8,
            data,
        })
    }

    pub fn to_owned(&self) -> OwnedRecord {
        self.with_data(self.data.to_vec())
    }
}

impl<D> Record<D> {
    /// The same record around other bytes.
    fn with_data<E>(&self, data: E) -> Record<E> {
        Record {
            session: self.session,
            slot: self.slot,
            egress: self.egress,
            cut: self.cut,
            gso: self.gso,
            ifindex: self.ifindex,
            orig_len: self.orig_len,
            hash: self.hash,
            tstamp_tai: self.tstamp_tai,
            vlan: self.vlan,
            vlan_kept: self.vlan_kept,
            data,
        }
    }

    /// The outer VLAN tag's four bytes as on the wire (TPID, TCI), when
    /// the kernel took it out of the data.
    pub fn vlan_header(&self) -> Option<[u8; 4]> {
        self.vlan.map(|v| v.to_be_bytes())
    }

    /// How many bytes of [`Record::vlan_header`] the copy keeps: 4, or
    /// fewer when the flow cutoff cut the frame inside the tag.
    pub fn vlan_len(&self) -> usize {
        match self.vlan_kept {
            0 => 4,
            n => usize::from(n.min(4)),
        }
    }
}

/// Takes every record now in the ring (without waiting). Records that do not
/// parse are returned as `Err(length)`.
pub fn drain(map: &MapHandle) -> libbpf_rs::Result<Vec<Result<OwnedRecord, usize>>> {
    let mut out = Vec::new();
    {
        let mut builder = RingBufferBuilder::new();
        builder.add(map, |bytes: &[u8]| {
            out.push(
                Record::parse(bytes)
                    .map(|r| r.to_owned())
                    .ok_or(bytes.len()),
            );
            0
        })?;
        let ring = builder.build()?;
        ring.poll(Duration::ZERO)?;
    }
    Ok(out)
}
