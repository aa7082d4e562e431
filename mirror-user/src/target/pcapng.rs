//! `kind = "pcapng"`: rotating capture files.
//!
//! One writer thread per target. Blocks are serialised by the `pcap-file`
//! crate into a memory buffer; the buffer goes to the file in one large
//! `write` when it reaches [`FLUSH_BYTES`] or every [`FLUSH_EVERY`], so a
//! reader (`tcpdump -r`, Wireshark, `tail -f | …`) only ever sees whole blocks.
//!
//! - Each file starts with a section header and one interface description per
//!   source (link type Ethernet, `if_tsresol` = 9: nanosecond time stamps from
//!   the kernel); packets are enhanced packet blocks carrying the original
//!   length when the copy was truncated and the direction in `epb_flags`.
//! - Rotation: with `rotate_size` and/or `rotate_interval`, files are named
//!   `STEM-NNNNNN.EXT` with a sequence number that continues after the highest
//!   one already in the directory; a file is closed before it would pass
//!   `rotate_size`. Then the oldest rotated files are deleted until at most
//!   `keep` remain.
//! - `max_total_size` counts every file of the target, the one being written
//!   included, at every moment: before each write the oldest files are deleted
//!   until the write fits (the file being written never is), and a file is
//!   closed before a block would take it alone past the budget. A copy whose
//!   block cannot fit the budget even in a file of its own is dropped, counted
//!   `too_big`.
//! - Disk full: a failed write is cut back to the last whole block
//!   (`ftruncate`), its copies are counted `disk_full`, and writing resumes
//!   when space returns; `min_free` stops writing (counted `disk_full`)
//!   before the file system fills.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use super::{Oversize, Packet, TargetDrop, TargetQueue};
use crate::config::{MinFree, PcapngSpec};

/// Buffered bytes that trigger a write.
pub(crate) const FLUSH_BYTES: usize = 1 << 20;
/// Longest time a copy waits in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Largest copy kept whole (a UMEM frame cannot hold more).
pub const SNAPLEN: usize = crate::kernel::xsk::FRAME_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: the directory does not exist; create it first", .0.display())]
    NoDirectory(PathBuf),
    #[error("the target's queue: {0}")]
    Queue(#[from] crate::kernel::xsk::XskError),
}

/// One interface description per source: (source name, interface).
pub(crate) type Interfaces = Vec<(String, String)>;

/// Starts the writer thread of a pcapng target. Fails if its directory does
/// not exist or cannot take a new file. The thread touches no file (opens,
/// rotates or deletes nothing) until `started` is set, which the engine does
/// once the whole start-up has succeeded: a start that fails later (a typo in a
/// source interface) leaves the capture directory as it was.
pub fn start(
    name: &str,
    spec: &PcapngSpec,
    interfaces: Interfaces,
    queue_size: u32,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<TargetQueue>, std::thread::JoinHandle<()>), PcapngError> {
    check_directory(&spec.path)?;
    let files = Files::new(spec.clone(), interfaces);
    let queue = Arc::new(TargetQueue::new(
        name,
        "pcapng",
        queue_size as usize,
        SNAPLEN,
        Oversize::Truncate,
    )?);
    let q = queue.clone();
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("pcapng-{name}")),
        move || {
            if wait_for_start(&started, &stop) {
                run(files, &q, &stop);
            }
        },
    )
    .map_err(|source| PcapngError::Io {
        path: spec.path.clone(),
        source,
    })?;
    Ok((queue, handle))
}

/// Whether a pcapng target at `path` can start: its directory exists and
/// takes a new file (`mirror check` asks this without starting anything).
pub fn check_directory(path: &Path) -> Result<(), PcapngError> {
    let dir = parent(path);
    if !dir.is_dir() {
        return Err(PcapngError::NoDirectory(dir));
    }
    can_create_in(&dir).map_err(|source| PcapngError::Io { path: dir, source })
}

/// Waits until the engine has started (true) or is stopping without having
/// started (false: nothing may be written, rotated or deleted).
fn wait_for_start(started: &AtomicBool, stop: &AtomicBool) -> bool {
    loop {
        if started.load(Ordering::Acquire) {
            return true;
        }
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Whether a new file can be created in `dir`, checked without leaving one:
/// an unnamed `O_TMPFILE` (gone when closed), else `access(W_OK)` where the
/// file system has no `O_TMPFILE`.
fn can_create_in(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // Safety: `c` is a NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Err(e) => Err(e),
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file being written and the rotated ones before it.
struct Files {
    spec: PcapngSpec,
    interfaces: Interfaces,
    /// Sequence number of the current file (rotating targets).
    seq: u64,
    current: Option<Current>,
    /// The target's closed files (rotating targets), oldest first, with
    /// their sizes: those found at start and those closed since.
    old: VecDeque<(PathBuf, u64)>,
}

struct Current {
    path: PathBuf,
    file: File,
    opened: Instant,
    /// Bytes of whole blocks in the file.
    committed: u64,
    /// The header blocks are in the file.
    has_header: bool,
    /// Packets in the file.
    packets: u64,
}

impl Files {
    fn new(spec: PcapngSpec, interfaces: Interfaces) -> Files {
        let found = if spec.rotates() {
            rotated_files(&spec.path)
        } else {
            Vec::new()
        };
        let seq = if spec.rotates() {
            found.last().map_or(1, |(n, _)| n + 1)
        } else {
            0
        };
        let old = found
            .into_iter()
            .map(|(_, p)| {
                let len = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, len)
            })
            .collect();
        Files {
            spec,
            interfaces,
            seq,
            current: None,
            old,
        }
    }

    /// The most bytes one file may hold: it is closed before a block would
    /// take it past `rotate_size` or, alone, past `max_total_size`.
    fn file_limit(&self) -> Option<u64> {
        match (self.spec.rotate_size, self.spec.max_total_size) {
            (Some(r), Some(m)) => Some(r.min(m)),
            (r, m) => r.or(m),
        }
    }

    fn next_path(&self) -> PathBuf {
        if self.spec.rotates() {
            numbered(&self.spec.path, self.seq)
        } else {
            self.spec.path.clone()
        }
    }

    /// Closes the current file (if any) and starts the next one.
    fn open_next(&mut self) -> Result<(), PcapngError> {
        if let Some(closed) = self.current.take() {
            self.seq += 1;
            if self.spec.rotates() {
                self.old.push_back((closed.path, closed.committed));
            }
        }
        let path = self.next_path();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| PcapngError::Io {
                path: path.clone(),
                source,
            })?;
        self.current = Some(Current {
            path,
            file,
            opened: Instant::now(),
            committed: 0,
            has_header: false,
            packets: 0,
        });
        if self.spec.rotates() {
            self.prune();
        }
        Ok(())
    }

    /// Deletes the oldest closed files beyond `keep` (which counts the file
    /// being written) and `max_total_size`. Files that hold no packet (the
    /// header of a run that died before its first packet, or of an idle
    /// interval) are removed first and never count: they cannot push a
    /// capture with data out.
    fn prune(&mut self) {
        self.old
            .retain(|(p, _)| holds_packets(p) || !remove(p, "a capture file that holds no packet"));
        if let Some(keep) = self.spec.keep {
            while self.old.len() + 1 > keep as usize {
                if !self.delete_oldest() {
                    break;
                }
            }
        }
        let current = self.current.as_ref().map_or(0, |c| c.committed);
        self.make_room(current);
    }

    /// Deletes the oldest closed files until they and a file of `current`
    /// bytes (the one being written, after its next write) fit
    /// `max_total_size`. Never deletes the file being written. Returns
    /// whether they fit.
    fn make_room(&mut self, current: u64) -> bool {
        let Some(max) = self.spec.max_total_size else {
            return true;
        };
        loop {
            let total = current + self.old.iter().map(|(_, len)| len).sum::<u64>();
            if total <= max {
                return true;
            }
            if !self.delete_oldest() {
                return false;
            }
        }
    }

    /// Deletes the oldest closed file; false if there is none or it could
    /// not be deleted (it stays counted).
    fn delete_oldest(&mut self) -> bool {
        let Some((path, _)) = self.old.front() else {
            return false;
        };
        if !remove(path, "an old capture file") {
            return false;
        }
        self.old.pop_front();
        true
    }
}

/// Deletes `path` (`what` names it in the log); true when it is gone,
/// also when someone else deleted it first.
fn remove(path: &Path, what: &str) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(file = %path.display(), "deleted {what}");
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "deleting {what} failed");
            false
        }
    }
}

/// `dir/stem-000042.ext` for `dir/stem.ext`.
pub fn numbered(path: &Path, seq: u64) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{seq:06}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{seq:06}"),
    };
    parent(path).join(name)
}

/// The rotated files of `path` that exist, oldest (lowest sequence) first.
pub fn rotated_files(path: &Path) -> Vec<(u64, PathBuf)> {
    let dir = parent(path);
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
            continue;
        };
        let rest = match &ext {
            Some(ext) => name.strip_suffix(&format!(".{ext}")),
            None => Some(name),
        };
        let Some(num) = rest.and_then(|r| r.strip_prefix(&format!("{stem}-"))) else {
            continue;
        };
        if num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = num.parse::<u64>() {
                out.push((n, dir.join(name)));
            }
        }
    }
    out.sort();
    out
}

/// Whether the capture file at `path` holds a packet block. Files of 64 KiB
/// or more are taken to (no header is that long), as are files this reader
/// does not understand: only a file that is surely empty counts as empty.
fn holds_packets(path: &Path) -> bool {
    const ENHANCED: u32 = 6;
    const SIMPLE: u32 = 3;
    const OBSOLETE: u32 = 2;
    const SECTION: u32 = 0x0a0d_0d0a;
    let Ok(meta) = std::fs::metadata(path) else {
        return true;
    };
    if meta.len() >= 64 << 10 {
        return true;
    }
    let Ok(b) = std::fs::read(path) else {
        return true;
    };
    let word = |i: usize, big_endian: bool| -> u32 {
        let w: [u8; 4] = b[i..i + 4].try_into().unwrap_or([0; 4]);
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let mut at = 0;
    let mut big_endian = false;
    while at + 12 <= b.len() {
        if word(at, false) == SECTION {
            // The byte-order magic after the length says how to read the rest.
            big_endian = b[at + 8..at + 12] == [0x1a, 0x2b, 0x3c, 0x4d];
        }
        if matches!(word(at, big_endian), ENHANCED | SIMPLE | OBSOLETE) {
            return true;
        }
        let len = word(at + 4, big_endian) as usize;
        if len < 12 || len % 4 != 0 {
            return true;
        }
        at += len;
    }
    at != b.len()
}

/// Serialises blocks for one file into memory.
struct Blocks {
    writer: PcapNgWriter<Vec<u8>>,
    /// Bytes of header blocks at the front of the buffer (0 once written).
    header: usize,
    /// Packets and their data bytes in the buffer.
    packets: u64,
    bytes: u64,
}

impl Blocks {
    fn new(interfaces: &Interfaces) -> Blocks {
        let shb = SectionHeaderBlock {
            endianness: Endianness::Little,
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "mirror {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..Default::default()
        };
        let mut writer =
            PcapNgWriter::with_section_header(Vec::with_capacity(FLUSH_BYTES + SNAPLEN * 2), shb)
                .expect("writing to memory cannot fail");
        for (source, interface) in interfaces {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: SNAPLEN as u32,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(interface.clone())),
                    InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                        "mirror source {source}"
                    ))),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            writer
                .write_pcapng_block(idb)
                .expect("writing to memory cannot fail");
        }
        let header = writer.get_ref().len();
        Blocks {
            writer,
            header,
            packets: 0,
            bytes: 0,
        }
    }

    fn len(&self) -> usize {
        self.writer.get_ref().len()
    }

    /// Bytes the enhanced packet block of `p` takes.
    fn epb_len(p: &Packet) -> usize {
        // type, length, interface, time stamp (8), captured and original
        // length: 28; data padded to 4; epb_flags (8) + end of options (4);
        // trailing length (4).
        28 + p.data().len().next_multiple_of(4) + 12 + 4
    }

    fn push(&mut self, p: &Packet) {
        let flags = if p.egress { 2 } else { 1 }; // inbound / outbound
        let epb = EnhancedPacketBlock {
            interface_id: u32::from(p.source),
            timestamp: Duration::from_nanos(p.tstamp_ns),
            original_len: p.orig_len.max(p.data().len() as u32),
            data: Cow::Borrowed(p.data()),
            options: vec![EnhancedPacketOption::Flags(flags)],
        };
        // Cannot fail: memory writer, and the interface ids come from the config.
        let _ = self.writer.write_pcapng_block(epb);
        self.packets += 1;
        self.bytes += p.data().len() as u64;
    }

    /// Forgets the packets, keeping unwritten header blocks.
    fn clear_packets(&mut self) {
        let keep = self.header;
        self.writer.get_mut().truncate(keep);
        self.packets = 0;
        self.bytes = 0;
    }
}

fn run(mut files: Files, q: &TargetQueue, stop: &AtomicBool) {
    q.register_sender();
    if let Err(e) = files.open_next() {
        // Copies are counted disk_full until a file can be opened.
        tracing::error!(error = %e, "opening the capture file failed");
    }
    let mut blocks = Blocks::new(&files.interfaces);
    let mut last_flush = Instant::now();
    let mut stopping = false;
    loop {
        let mut took = 0;
        while let Some(p) = q.pop_ready() {
            took += 1;
            if let (Some(limit), Some(cur)) = (files.file_limit(), files.current.as_ref()) {
                let next = cur.committed + blocks.len() as u64 + Blocks::epb_len(&p) as u64;
                if next > limit && cur.packets + blocks.packets > 0 {
                    flush(&mut files, &mut blocks, q);
                    rotate(&mut files, &mut blocks);
                }
            }
            if let Some(why) = over_budget(&files, &blocks, &p) {
                q.counters.drop(why, 1);
                q.recycle(p);
                continue;
            }
            blocks.push(&p);
            q.recycle(p);
            // Counted as queued until written, also while a write blocks.
            q.in_flight.store(blocks.packets, Ordering::Relaxed);
            if blocks.len() >= FLUSH_BYTES {
                flush(&mut files, &mut blocks, q);
                last_flush = Instant::now();
            }
            if took >= 1024 {
                break;
            }
        }
        q.in_flight.store(blocks.packets, Ordering::Relaxed);
        if blocks.packets > 0 && last_flush.elapsed() >= FLUSH_EVERY {
            flush(&mut files, &mut blocks, q);
            last_flush = Instant::now();
        }
        if let (Some(every), Some(cur)) = (files.spec.rotate_interval, files.current.as_ref()) {
            if cur.opened.elapsed() >= every {
                flush(&mut files, &mut blocks, q);
                rotate(&mut files, &mut blocks);
            }
        }
        // Copies in the buffer are still on their way: `queued` in stats.
        q.in_flight.store(blocks.packets, Ordering::Relaxed);
        if stopping && q.queued() == 0 {
            flush(&mut files, &mut blocks, q);
            if let Some(cur) = files.current.as_mut() {
                let _ = cur.file.sync_data();
            }
            q.in_flight.store(0, Ordering::Relaxed);
            return;
        }
        if stop.load(Ordering::Relaxed) {
            stopping = true;
            continue;
        }
        if took == 0 {
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}

/// Why the block of `p` cannot be written within `max_total_size`, if so:
/// `too_big` when it does not fit even in a file of its own, `disk_full`
/// when the file being written is too full and no new one could be opened.
fn over_budget(files: &Files, blocks: &Blocks, p: &Packet) -> Option<TargetDrop> {
    let max = files.spec.max_total_size?;
    let cur = files.current.as_ref()?;
    let next = cur.committed + blocks.len() as u64 + Blocks::epb_len(p) as u64;
    if next <= max {
        None
    } else if cur.packets + blocks.packets == 0 {
        Some(TargetDrop::TooBig)
    } else {
        Some(TargetDrop::DiskFull)
    }
}

fn rotate(files: &mut Files, blocks: &mut Blocks) {
    match files.open_next() {
        Ok(()) => *blocks = Blocks::new(&files.interfaces),
        Err(e) => {
            // Keep writing the old file; try again at the next rotation point.
            tracing::warn!(error = %e, "opening the next capture file failed");
        }
    }
}

/// Writes the buffer to the current file: whole or not at all.
fn flush(files: &mut Files, blocks: &mut Blocks, q: &TargetQueue) {
    if blocks.packets == 0 && blocks.header == 0 {
        return;
    }
    if files.current.is_none() {
        if let Err(e) = files.open_next() {
            tracing::warn!(error = %e, "opening the capture file failed");
        }
    }
    // The budget counts the file being written after this write: make room
    // first, so the target's files never total more, even for a moment.
    if let Some(committed) = files.current.as_ref().map(|c| c.committed) {
        if !files.make_room(committed + blocks.len() as u64) {
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets();
            return;
        }
    }
    let Some(cur) = files.current.as_mut() else {
        q.counters.drop(TargetDrop::DiskFull, blocks.packets);
        blocks.clear_packets();
        return;
    };
    if let Some(min) = files.spec.min_free {
        if below_min_free(&cur.path, min, blocks.len() as u64) {
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets();
            return;
        }
    }
    match cur.file.write_all(blocks.writer.get_ref()) {
        Ok(()) => {
            cur.committed += blocks.len() as u64;
            cur.has_header = true;
            cur.packets += blocks.packets;
            q.counters
                .sent_packets
                .fetch_add(blocks.packets, Ordering::Relaxed);
            q.counters
                .sent_bytes
                .fetch_add(blocks.bytes, Ordering::Relaxed);
            blocks.writer.get_mut().clear();
            blocks.header = 0;
            blocks.packets = 0;
            blocks.bytes = 0;
            q.in_flight.store(0, Ordering::Relaxed);
        }
        Err(e) => {
            // Cut the file back to its last whole block, so readers never see
            // half a block, and write after it next time.
            if let Err(t) = cur.file.set_len(cur.committed) {
                tracing::warn!(file = %cur.path.display(), error = %t, "truncating after a failed write");
            }
            let _ = std::io::Seek::seek(&mut cur.file, io::SeekFrom::Start(cur.committed));
            if e.raw_os_error() != Some(libc::ENOSPC) && e.raw_os_error() != Some(libc::EDQUOT) {
                tracing::warn!(file = %cur.path.display(), error = %e, "writing the capture file failed");
            }
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets();
        }
    }
}

/// Whether writing `extra` bytes would leave less than `min` free.
fn below_min_free(path: &Path, min: MinFree, extra: u64) -> bool {
    let Ok(c) = std::ffi::CString::new(parent(path).as_os_str().as_bytes()) else {
        return false;
    };
    // Safety: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safety: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    let need = match min {
        MinFree::Bytes(b) => b,
        MinFree::Permille(p) => total / 1000 * u64::from(p),
    };
    free.saturating_sub(extra) < need
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epb_length_matches_what_pcap_file_writes() {
        let q = TargetQueue::new("t", "pcapng", 2, 256, Oversize::Truncate).expect("queue memory");
        let mut blocks = Blocks::new(&vec![("s".into(), "eth0".into())]);
        let before = blocks.len();
        for len in [60usize, 61, 62, 63, 64] {
            let data = vec![7u8; len];
            q.offer(&super::super::Frame {
                data: &data,
                orig_len: len as u32,
                hash: 0,
                tstamp_ns: 1,
                vni: 0,
                source: 0,
                egress: false,
            });
            let p = q.pop_ready().expect("queued");
            let at = blocks.len();
            blocks.push(&p);
            assert_eq!(blocks.len() - at, Blocks::epb_len(&p), "{len}-byte frame");
            q.recycle(p);
        }
        assert!(before > 0);
    }

    /// The writer on its own (no namespaces, any user): with
    /// `max_total_size` at its smallest, 4 KiB, three 1,000-byte copies
    /// fill a file, so every few copies the oldest file must go; a copy of
    /// 4,096 bytes cannot fit the budget even alone.
    #[test]
    fn the_budget_holds_after_every_write_and_a_copy_too_big_for_it_is_counted() {
        /// Removed on drop, also when an assertion fails.
        struct Dir(PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            Dir(std::env::temp_dir().join(format!("mirror-pcapng-budget-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let path = dir.0.join("b.pcapng");
        let spec = PcapngSpec {
            path: path.clone(),
            rotate_size: Some(1 << 20),
            rotate_interval: None,
            keep: None,
            max_total_size: Some(4096),
            min_free: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (q, writer) = start(
            "b",
            &spec,
            vec![("s".into(), "eth0".into())],
            64,
            Arc::new(AtomicBool::new(true)),
            stop.clone(),
        )
        .expect("the first file");
        let offer = |seq: u8, len: usize| {
            let data = vec![seq; len];
            q.offer(&super::super::Frame {
                data: &data,
                orig_len: len as u32,
                hash: 0,
                tstamp_ns: u64::from(seq),
                vni: 0,
                source: 0,
                egress: false,
            });
        };
        let total = || -> u64 {
            rotated_files(&path)
                .iter()
                .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum()
        };
        let wait_written = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while q.counters.sent_packets.load(Ordering::Relaxed)
                + q.counters.dropped(TargetDrop::TooBig)
                < n
            {
                assert!(Instant::now() < deadline, "the writer is stuck");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for seq in 1..=10u8 {
            offer(seq, 1000);
            wait_written(u64::from(seq));
            assert!(total() <= 4096, "{} bytes after copy {seq}", total());
        }
        offer(11, 4096);
        offer(12, 1000);
        wait_written(12);
        stop.store(true, Ordering::Relaxed);
        writer.thread().unpark();
        writer.join().expect("writer");
        let files = rotated_files(&path);
        let kept = total();
        assert_eq!(
            q.counters.dropped(TargetDrop::TooBig),
            1,
            "the 4,096-byte copy"
        );
        assert_eq!(q.counters.sent_packets.load(Ordering::Relaxed), 11);
        assert!(kept <= 4096, "{kept} bytes in {files:?}");
        // Three copies per file: files 1-3 held copies 1-9, file 4 copy 10,
        // file 5 copy 12; only the newest fit the budget together.
        let numbers: Vec<u64> = files.iter().map(|f| f.0).collect();
        assert_eq!(numbers, [4, 5], "{files:?}");
    }

    #[test]
    fn rotated_names_carry_a_sequence_number() {
        assert_eq!(
            numbered(Path::new("/var/cap/uplink.pcapng"), 42),
            PathBuf::from("/var/cap/uplink-000042.pcapng")
        );
        assert_eq!(numbered(Path::new("cap"), 1), PathBuf::from("./cap-000001"));
    }

    #[test]
    fn rotated_files_are_found_in_sequence_order() {
        let dir = std::env::temp_dir().join(format!("mirror-pcapng-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for name in [
            "a-000010.pcapng",
            "a-000002.pcapng",
            "a.pcapng",
            "a-x.pcapng",
            "b-000001.pcapng",
        ] {
            std::fs::write(dir.join(name), b"").expect("write");
        }
        let found: Vec<u64> = rotated_files(&dir.join("a.pcapng"))
            .iter()
            .map(|f| f.0)
            .collect();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(found, vec![2, 10]);
    }

    /// The bytes of a file as the writer leaves it: header blocks, then the
    /// packets (none for a run that stopped before its first one).
    fn capture_bytes(packets: usize) -> Vec<u8> {
        let q = TargetQueue::new("t", "pcapng", 4, 256, Oversize::Truncate).expect("queue memory");
        let mut blocks = Blocks::new(&vec![("s".into(), "eth0".into())]);
        for _ in 0..packets {
            let data = [9u8; 60];
            q.offer(&super::super::Frame {
                data: &data,
                orig_len: 60,
                hash: 0,
                tstamp_ns: 1,
                vni: 0,
                source: 0,
                egress: false,
            });
            let p = q.pop_ready().expect("queued");
            blocks.push(&p);
            q.recycle(p);
        }
        blocks.writer.get_ref().clone()
    }

    #[test]
    fn a_header_only_file_holds_no_packet_and_anything_else_is_kept() {
        let dir = std::env::temp_dir().join(format!("mirror-holds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cases: [(&str, Vec<u8>, bool); 5] = [
            ("header only", capture_bytes(0), false),
            ("one packet", capture_bytes(1), true),
            ("empty file", Vec::new(), false),
            (
                "not pcapng",
                b"hello, this is not a capture file".to_vec(),
                true,
            ),
            ("cut inside a block", capture_bytes(0)[..20].to_vec(), true),
        ];
        let mut got = Vec::new();
        for (i, (what, bytes, _)) in cases.iter().enumerate() {
            let p = dir.join(format!("f{i}"));
            std::fs::write(&p, bytes).expect("write");
            got.push((*what, holds_packets(&p)));
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let want: Vec<(&str, bool)> = cases.iter().map(|(w, _, h)| (*w, *h)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn empty_leftovers_are_removed_and_never_count_against_keep() {
        let dir = std::env::temp_dir().join(format!("mirror-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cap.pcapng");
        // Two real captures, then three header-only files of crashed runs.
        std::fs::write(numbered(&path, 1), capture_bytes(3)).expect("write");
        std::fs::write(numbered(&path, 2), capture_bytes(2)).expect("write");
        for seq in 3..=5 {
            std::fs::write(numbered(&path, seq), capture_bytes(0)).expect("write");
        }
        let spec = PcapngSpec {
            path: path.clone(),
            rotate_size: Some(1 << 20),
            rotate_interval: None,
            keep: Some(3),
            max_total_size: None,
            min_free: None,
        };
        let mut files = Files::new(spec, vec![("s".into(), "eth0".into())]);
        files.open_next().expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        // keep = 3: the new file (6) and both real captures; no empty file.
        assert_eq!(left, vec![1, 2, 6]);
    }

    #[test]
    fn keep_counts_the_file_being_written_and_deletes_the_oldest_first() {
        let dir = std::env::temp_dir().join(format!("mirror-keep2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cap.pcapng");
        for seq in 1..=4 {
            std::fs::write(numbered(&path, seq), capture_bytes(1)).expect("write");
        }
        let spec = |keep| PcapngSpec {
            path: path.clone(),
            rotate_size: Some(1 << 20),
            rotate_interval: None,
            keep: Some(keep),
            max_total_size: None,
            min_free: None,
        };
        // keep = 4: the new file (5) and the three newest; 1 goes.
        let mut files = Files::new(spec(4), vec![("s".into(), "eth0".into())]);
        files.open_next().expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        assert_eq!(left, vec![2, 3, 4, 5]);
        drop(files);
        // File 5 gets a packet; keep = 5: four there and the new one (6)
        // make five, which keep allows: none goes.
        std::fs::write(numbered(&path, 5), capture_bytes(1)).expect("write");
        let mut files = Files::new(spec(5), vec![("s".into(), "eth0".into())]);
        files.open_next().expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(left, vec![2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_capture_directory_is_checked_without_leaving_a_file() {
        let dir = std::env::temp_dir().join(format!("mirror-create-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert!(can_create_in(&dir).is_ok());
        assert_eq!(
            std::fs::read_dir(&dir).expect("read").count(),
            0,
            "nothing left"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(
            can_create_in(&dir).is_err(),
            "a directory that is not there"
        );
    }

    #[test]
    fn the_writer_waits_for_the_start_and_gives_up_on_a_stop() {
        let (started, stop) = (AtomicBool::new(true), AtomicBool::new(false));
        assert!(wait_for_start(&started, &stop));
        let (started, stop) = (AtomicBool::new(false), AtomicBool::new(true));
        assert!(!wait_for_start(&started, &stop));
    }
}
