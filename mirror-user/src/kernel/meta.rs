//! `struct mirror_meta`: what the tap program writes in front of each frame
//! it hands to an AF_XDP socket (session, flow hash, time stamp).

/// `struct mirror_meta` as the kernel wrote it in front of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub session: u16,
    /// The policy slot the frame saw (`struct mirror_policy`).
    pub slot: u8,
    pub hash: u32,
    /// CLOCK_TAI nanoseconds.
    pub tstamp: u64,
    /// The frame's length before the kernel cut it (its flow's cutoff);
    /// 0 when it was not cut.
    pub orig_len: u32,
}

/// Reads (and clears the magic of) `struct mirror_meta` from the bytes in front of a frame.
pub fn read_meta(meta: &mut [u8]) -> Option<Meta> {
    let len = meta.len();
    let m = meta.get_mut(len.checked_sub(mirror_ebpf::limits::META_LEN)?..)?;
    if u16::from_ne_bytes([m[0], m[1]]) != mirror_ebpf::limits::META_MAGIC {
        return None;
    }
    m[0] = 0;
    m[1] = 0;
    let session = u16::from_ne_bytes([m[2], m[3]]);
    let slot_bit = mirror_ebpf::limits::META_SLOT;
    Some(Meta {
        session: session & !slot_bit,
        slot: u8::from(session & slot_bit != 0),
        hash: u32::from_ne_bytes([m[4], m[5], m[6], m[7]]),
        tstamp: u64::from_ne_bytes(m[8..16].try_into().ok()?),
        orig_len: u32::from_ne_bytes(m[16..20].try_into().ok()?),
    })
}
