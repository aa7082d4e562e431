//! `kind = "pcapng"`: rotating capture files.
//!
//! One writer thread per target. Blocks are laid out in a memory buffer (the
//! header blocks by the `pcap-file` crate, once per target; packet blocks by
//! hand, byte for byte as the crate writes them), except the data of copies
//! of [`IN_PLACE_MIN`] bytes or more, which stays in its queue slot; the
//! buffer and those slots go to the file in large `writev` calls, each ending
//! on a block boundary, when they reach [`FLUSH_BYTES`] (or `queue_size / 4`
//! slots are held, [`held_slots`]) or every [`FLUSH_EVERY`], so a reader
//! (`tcpdump -r`, Wireshark, `tail -f | …`) only ever sees whole blocks.
//!
//! - Each file starts with a section header and one interface description per
//!   source (link type Ethernet, `if_tsresol` = 9: nanosecond time stamps from
//!   the kernel), written when the file opens (also below `min_free`: a few
//!   hundred bytes), so that even a file no copy reached yet is one readers
//!   take; packets are enhanced packet blocks carrying the original
//!   length when the copy was truncated and the direction in `epb_flags`.
//! - Rotation: with `rotate_size` and/or `rotate_interval`, files are named
//!   `STEM-NNNNNN.EXT` with a sequence number that continues after the highest
//!   one already in the directory; a file is closed before it would pass
//!   `rotate_size`, and at each multiple of `rotate_interval` since the Unix
//!   epoch (wall clock, UTC: `1h` files start on the hour, `1d` at 00:00
//!   UTC; the first file ends at the first such edge). Then the oldest
//!   rotated files are deleted until at most `keep` remain. A deleted
//!   file's space is handed back by another thread (freeing a 256 MiB file
//!   takes tmpfs 60-280 ms, long enough for a full queue at line rate);
//!   until then its bytes still count against `max_total_size`.
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
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use super::{Oversize, Packet, TargetDrop, TargetQueue};
use crate::config::{MinFree, PcapngSpec};
use crate::kernel::xsk::MemoryHost;

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
    #[error(
        "{}: is a directory; `path` names the capture file, as in {}/capture.pcapng \
         (rotated files are numbered beside it)",
        .0.display(),
        .0.display()
    )]
    PathIsDirectory(PathBuf),
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
///
/// `rx_frames`: a tap source's first RX queue will share the queue's memory
/// (its UMEM is then the queue's slots and `rx_frames` more), returned as the
/// [`MemoryHost`] it registers: the frames it receives are written to the
/// file from where the kernel put them.
pub fn start(
    name: &str,
    spec: &PcapngSpec,
    interfaces: Interfaces,
    queue_size: u32,
    rx_frames: Option<u32>,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Started, PcapngError> {
    check_directory(&spec.path)?;
    if !spec.rotates() {
        check_goes_on(&spec.path).map_err(|source| PcapngError::Io {
            path: spec.path.clone(),
            source,
        })?;
    }
    let files = Files::new(spec.clone(), interfaces);
    let slots = queue_slots(queue_size);
    let queue = Arc::new(match rx_frames {
        None => TargetQueue::new(name, "pcapng", slots, SNAPLEN, Oversize::Truncate)?,
        Some(rx) => TargetQueue::umem(
            name,
            "pcapng",
            slots,
            rx as usize,
            SNAPLEN,
            Oversize::Truncate,
        )?,
    });
    queue.wake_at(wake_at(queue_size));
    let host = rx_frames.map(|_| MemoryHost::new(queue.memory(), slots as u32, name));
    let q = queue.clone();
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("pcapng-{name}")),
        move || {
            if wait_for_start(&started, &stop) {
                run(files, &q, &stop, &Instant::now);
            }
        },
    )
    .map_err(|source| PcapngError::Io {
        path: spec.path.clone(),
        source,
    })?;
    Ok(Started {
        queue,
        handle,
        host,
    })
}

/// A started pcapng target: its queue, its writer thread, and the memory a
/// tap source's RX queue registers when it shares it.
pub struct Started {
    pub queue: Arc<TargetQueue>,
    pub handle: std::thread::JoinHandle<()>,
    pub host: Option<MemoryHost>,
}

/// Slots a pcapng queue has beyond its `queue_size`: the most copies the
/// writer holds, a quarter of `queue_size`: those it keeps in their slots
/// until a write ([`IN_PLACE_MIN`]) and those it took ahead of the one it
/// writes ([`LOOKAHEAD`]), so that `queue_size` copies still fit in the
/// queue while it writes, as when every copy was copied out of its slot at
/// once.
fn held_slots(queue_size: usize) -> usize {
    (queue_size / 4).max(1)
}

/// Copies waiting at which the workers wake the writer
/// ([`TargetQueue::wake_at`]): an eighth of `queue_size`; fewer wait for
/// the writer's own 10 ms timer ([`WRITER_NAP`]). At 1 Mpps the default
/// 16,384 is woken every 2 ms, where one wake-up per worker batch was
/// thousands a second; a queue filling faster than the writer drains it
/// wakes it at every batch, as before.
fn wake_at(queue_size: u32) -> usize {
    (queue_size as usize / 8).max(1)
}

/// The longest the writer sleeps with nothing to write.
const WRITER_NAP: Duration = Duration::from_millis(10);

/// Slots of a pcapng queue of `queue_size`: its `queue_size` and the held
/// ones ([`held_slots`]).
pub(crate) fn queue_slots(queue_size: u32) -> usize {
    queue_size as usize + held_slots(queue_size as usize)
}

/// Whether a pcapng target at `path` can start: `path` is not a directory
/// (the files would be written beside it, named after it), and its
/// directory exists and takes a new file (`mirror check` asks this without
/// starting anything).
pub fn check_directory(path: &Path) -> Result<(), PcapngError> {
    if path.is_dir() {
        return Err(PcapngError::PathIsDirectory(path.to_path_buf()));
    }
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

/// The directory of `path` (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file being written and the rotated ones before it.
struct Files {
    spec: PcapngSpec,
    /// Sequence number the next file takes (rotating targets).
    seq: u64,
    current: Option<Current>,
    /// The target's closed files (rotating targets), oldest first, with
    /// their sizes: those found at start and those closed since.
    old: VecDeque<(PathBuf, u64)>,
    /// The header blocks every file starts with.
    head: Vec<u8>,
    /// Closes deleted files, handing their space back off the writer thread.
    reaper: Reaper,
    /// Files deleted to hold `keep` and `max_total_size` so far, and their
    /// bytes (published as the target's `deleted_files`, `deleted_bytes`).
    deleted: (u64, u64),
    /// Whether writing is held back (`min_free`, a full disk), for the log.
    hold: Hold,
    /// The last edge of `rotate_interval` a file was closed at (Unix ns).
    reached_edge: u64,
    /// Closed files known to hold packets (the rest of `old` is read once).
    with_packets: std::collections::HashSet<PathBuf>,
    /// The wall clock at a monotonic instant, nanoseconds since the Unix
    /// epoch: where `rotate_interval`'s edges fall. The system's clock read
    /// when asked; tests pin it to their instants.
    wall: WallClock,
}

/// Unix time (ns) at a monotonic instant.
type WallClock = Box<dyn Fn(Instant) -> u64 + Send>;

/// The system's wall clock at `at` (the caller's "now", a moment ago: an
/// edge reckoned from it falls on the edge, not that moment early).
fn system_wall(at: Instant) -> u64 {
    let since = Instant::now().saturating_duration_since(at);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.saturating_sub(since).as_nanos() as u64)
}

/// How long after an edge of `rotate_interval` the writer closes a file no
/// copy stamped after the edge has closed yet: copies stamped before it may
/// still be on their way to the writer. (A copy stamped at or after the
/// edge starts the next file itself.)
const EDGE_GRACE: Duration = FLUSH_EVERY;

/// From `wall_ns` (Unix time) to the next multiple of `every` after it: a
/// file opened on an edge runs a whole interval.
fn until_edge(wall_ns: u64, every: Duration) -> Duration {
    let every = (every.as_nanos() as u64).max(1);
    Duration::from_nanos(every - wall_ns % every)
}

struct Current {
    path: PathBuf,
    file: File,
    /// `rotate_interval`'s next edge: Unix time (ns), and the instant a
    /// [`EDGE_GRACE`] after it.
    edge: Option<(u64, Instant)>,
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
        let head = header_blocks(&interfaces);
        Files {
            spec,
            seq,
            current: None,
            old,
            head,
            reaper: Reaper::default(),
            deleted: (0, 0),
            hold: Hold::default(),
            reached_edge: 0,
            with_packets: std::collections::HashSet::new(),
            wall: Box::new(system_wall),
        }
    }

    /// The most bytes one file may hold: it is closed before a block would
    /// take it past `rotate_size` or, alone, past `max_total_size`; under a
    /// budget without `rotate_size`, past a quarter of the budget, so that
    /// deleting the oldest file never takes more than a quarter of the
    /// record (`mirror check` refuses a `rotate_size` over half of it).
    fn file_limit(&self) -> Option<u64> {
        match (self.spec.rotate_size, self.spec.max_total_size) {
            (Some(r), Some(m)) => Some(r.min(m)),
            (None, Some(m)) => Some((m / 4).max(1)),
            (r, None) => r,
        }
    }

    /// Creates the next rotated file, a new one (`O_EXCL`: never an existing
    /// file, nor through a symbolic link): a name someone else took in the
    /// meantime (a file, a link) is skipped, logged, and left alone.
    fn create_next(&mut self) -> Result<(PathBuf, File), PcapngError> {
        const TRIES: u32 = 1000;
        for _ in 0..TRIES {
            let path = self.next_path();
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::warn!(
                        file = %path.display(),
                        "the next capture file's name is taken by a file this run did not \
                         write: left alone, and the number after it taken"
                    );
                    self.seq += 1;
                }
                Err(source) => return Err(PcapngError::Io { path, source }),
            }
        }
        Err(PcapngError::Io {
            path: self.next_path(),
            source: io::Error::other(format!(
                "{TRIES} names in a row are taken by files this run did not write"
            )),
        })
    }

    /// The path of the next file to open (`seq` is the number it takes).
    fn next_path(&self) -> PathBuf {
        if self.spec.rotates() {
            numbered(&self.spec.path, self.seq)
        } else {
            self.spec.path.clone()
        }
    }

    /// Starts the next file at `now`, then closes the current one (if
    /// any): when the next cannot be opened, the current stays open, to be
    /// written on past its limit rather than lose copies.
    fn open_next(&mut self, now: Instant) -> Result<(), PcapngError> {
        let rotates = self.spec.rotates();
        let (path, mut file, keeps) = if rotates {
            let (path, file) = self.create_next()?;
            (path, file, false)
        } else {
            let path = self.next_path();
            // The file of a target that does not rotate is never written
            // over: a start, or a reload that restarts the target, goes on
            // after its last whole block with a section of its own. (A FIFO
            // or a device is only written to: see check_goes_on.)
            let keeps = std::fs::metadata(&path).map_or(true, |m| m.is_file());
            let file = OpenOptions::new()
                .create(true)
                .read(keeps)
                .write(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| PcapngError::Io {
                    path: path.clone(),
                    source,
                })?;
            (path, file, keeps)
        };
        let committed = if keeps {
            go_on_after_whole_blocks(&mut file, &path).map_err(|source| PcapngError::Io {
                path: path.clone(),
                source,
            })?
        } else {
            0
        };
        if let Some(closed) = self.current.take() {
            if rotates {
                if closed.packets > 0 {
                    self.with_packets.insert(closed.path.clone());
                }
                self.old.push_back((closed.path, closed.committed));
            }
        }
        self.seq += 1;
        let edge = self.next_edge(now);
        self.current = Some(Current {
            path,
            file,
            edge,
            committed,
            has_header: false,
            packets: 0,
        });
        if self.spec.rotates() {
            self.prune();
        }
        Ok(())
    }

    /// `rotate_interval`'s first edge after `now`: Unix time (ns), and the
    /// instant [`EDGE_GRACE`] after it.
    /// Never an edge already reached: a copy stamped a moment ahead of the
    /// wall clock must not find the next file with the same edge.
    fn next_edge(&self, now: Instant) -> Option<(u64, Instant)> {
        let every = self.spec.rotate_interval?;
        let wall = (self.wall)(now);
        let from = wall.max(self.reached_edge);
        let edge = from + until_edge(from, every).as_nanos() as u64;
        let until = Duration::from_nanos(edge.saturating_sub(wall));
        Some((edge, now + until + EDGE_GRACE))
    }

    /// Deletes the oldest closed files beyond `keep` (which counts the file
    /// being written) and `max_total_size`. Files that hold no packet (the
    /// header of a run that died before its first packet, or of an idle
    /// interval) are removed first and never count: they cannot push a
    /// capture with data out.
    fn prune(&mut self) {
        // Each file is read for this once at most: those known to hold
        // packets are not read again at every rotation (with thousands of
        // small files that took the writer long enough to drop copies).
        let known = &mut self.with_packets;
        self.old.retain(|(p, _)| {
            if known.contains(p) {
                return true;
            }
            if holds_packets(p) {
                known.insert(p.clone());
                return true;
            }
            remove(p, "a capture file that holds no packet") == Unlinked::Failed
        });
        if let Some(keep) = self.spec.keep {
            if self.old.len() + 1 > keep as usize {
                self.forget_gone();
            }
            while self.old.len() + 1 > keep as usize {
                if !self.delete_oldest("keep") {
                    break;
                }
            }
        }
        let current = self.current.as_ref().map_or(0, |c| c.committed);
        self.make_room(current);
    }

    /// Deletes the oldest closed files until they and a file of `current`
    /// bytes (the one being written, after its next write) fit
    /// `max_total_size`, and waits for the space of deleted files still
    /// held when that is what stands in the way. Never deletes the file
    /// being written. Returns whether they fit.
    fn make_room(&mut self, current: u64) -> bool {
        let Some(max) = self.spec.max_total_size else {
            return true;
        };
        if current + self.old.iter().map(|(_, len)| len).sum::<u64>() > max {
            self.forget_gone();
        }
        loop {
            let total = current + self.old.iter().map(|(_, len)| len).sum::<u64>();
            if total <= max {
                break;
            }
            if !self.delete_oldest("max_total_size") {
                return false;
            }
        }
        let total = current + self.old.iter().map(|(_, len)| len).sum::<u64>();
        if total + self.reaper.pending() > max {
            self.reaper.wait();
        }
        true
    }

    /// At the writer's start (every source attached: a start that fails
    /// touches no file): the newest closed file, the one a run killed in a
    /// write left, is cut back to its last whole block, as the file of a
    /// target that does not rotate is.
    fn cut_newest(&mut self) {
        if let Some((path, len)) = self.old.back_mut() {
            if let Some(cut) = cut_half_a_block(path) {
                *len = cut;
            }
        }
    }

    /// Before a file is deleted to hold `keep` or `max_total_size`: forgets
    /// the closed files someone else moved away or deleted, and takes the
    /// others' sizes as they are now. Counted as they were, files moved out
    /// (kept as evidence, say) would have the writer delete real captures
    /// early: gone files counting against `keep`, their bytes against the
    /// budget. One `stat` per closed file, only when a deletion is due.
    fn forget_gone(&mut self) {
        let known = &mut self.with_packets;
        self.old.retain_mut(|(path, len)| match std::fs::symlink_metadata(&*path) {
            Ok(m) => {
                if m.is_file() {
                    *len = m.len();
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(file = %path.display(), "an old capture file is gone (moved or deleted by someone else): no longer counted");
                known.remove(&*path);
                false
            }
            // Cannot tell: counted as before.
            Err(_) => true,
        });
    }

    /// Deletes the oldest closed file to hold `why` (`keep`,
    /// `max_total_size`), logged and counted; false if there is none or it
    /// could not be deleted (it stays counted in the budget).
    fn delete_oldest(&mut self, why: &str) -> bool {
        let Some((path, len)) = self.old.front() else {
            return false;
        };
        // Held open while its name goes, so that the space comes back when
        // the reaper closes it, not in this thread's unlink.
        let held = File::open(path);
        match remove(path, "an old capture file") {
            Unlinked::Failed => return false,
            // Someone else deleted it first: gone, but not counted.
            Unlinked::Gone => {}
            Unlinked::Deleted => {
                tracing::info!(file = %path.display(), bytes = *len, "deleted the oldest capture file to hold {why}");
                self.deleted.0 += 1;
                self.deleted.1 += *len;
            }
        }
        if let Ok(file) = held {
            self.reaper.close(file, *len);
        }
        if let Some((path, _)) = self.old.pop_front() {
            self.with_packets.remove(&path);
        }
        true
    }
}

/// Closes deleted capture files on a thread of its own (started at the
/// first). A file system frees a deleted file's space when its last
/// descriptor closes, in that `close` (or in the `unlink` of a file nobody
/// holds): for 256 MiB on tmpfs, 60-280 ms, in which a 4,096-copy queue at
/// line rate overflows many times over. Until a file is closed its bytes
/// are [`Reaper::pending`].
#[derive(Default)]
struct Reaper {
    thread: Option<(mpsc::Sender<Deleted>, std::thread::JoinHandle<()>)>,
    /// Bytes of deleted files not closed yet.
    pending: Arc<(Mutex<u64>, Condvar)>,
}

/// A deleted file, still open, and its size.
type Deleted = (File, u64);

impl Reaper {
    /// Hands `file` (deleted, `len` bytes) to the thread to close.
    fn close(&mut self, file: File, len: u64) {
        *lock(&self.pending.0) += len;
        if self.thread.is_none() {
            let (tx, rx) = mpsc::channel::<Deleted>();
            let pending = self.pending.clone();
            let spawned = std::thread::Builder::new()
                .name("pcapng-reaper".into())
                .spawn(move || reap(rx, &pending));
            match spawned {
                Ok(handle) => self.thread = Some((tx, handle)),
                Err(e) => {
                    tracing::warn!(error = %e, "starting the thread that frees old capture files failed; freeing them here");
                }
            }
        }
        let unsent = match &self.thread {
            Some((tx, _)) => tx.send((file, len)).err().map(|e| e.0),
            None => Some((file, len)),
        };
        if let Some((file, len)) = unsent {
            drop(file);
            *lock(&self.pending.0) -= len;
        }
    }

    /// Bytes of deleted files whose space is not back yet.
    fn pending(&self) -> u64 {
        *lock(&self.pending.0)
    }

    /// Waits until every deleted file is closed.
    fn wait(&self) {
        let mut p = lock(&self.pending.0);
        while *p > 0 {
            p = self.pending.1.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.thread.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// The reaper thread: closes each file it is given, then counts its bytes
/// back.
fn reap(rx: mpsc::Receiver<Deleted>, pending: &(Mutex<u64>, Condvar)) {
    for (file, len) in rx {
        drop(file);
        *lock(&pending.0) -= len;
        pending.1.notify_all();
    }
}

fn lock(m: &Mutex<u64>) -> std::sync::MutexGuard<'_, u64> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of a capture file [`remove`] was asked to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unlinked {
    Deleted,
    /// It was not there (someone else deleted it first).
    Gone,
    /// It is still there (logged).
    Failed,
}

/// Deletes `path` (`what` names it in the log).
fn remove(path: &Path, what: &str) -> Unlinked {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(file = %path.display(), "deleted {what}");
            Unlinked::Deleted
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Unlinked::Gone,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "deleting {what} failed");
            Unlinked::Failed
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
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if let Some(n) = rotated_number(path, Path::new(&name)) {
            out.push((n, dir.join(name)));
        }
    }
    out.sort();
    out
}

/// The sequence number of `name` (a file name) if it is one of the rotated
/// names of `path`, `STEM-NNNNNN.EXT` (six digits or more).
pub fn rotated_number(path: &Path, name: &Path) -> Option<u64> {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let name = std::str::from_utf8(name.as_os_str().as_bytes()).ok()?;
    let rest = match &ext {
        Some(ext) => name.strip_suffix(&format!(".{ext}")),
        None => Some(name),
    };
    let num = rest?.strip_prefix(&format!("{stem}-"))?;
    if num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()) {
        num.parse::<u64>().ok()
    } else {
        None
    }
}

/// Cuts the capture file at `path` back to its last whole block when it
/// ends in half of one (a daemon killed in a write; logged). A file that is
/// not a regular file, is empty, or is not a capture as this writer writes
/// them is left alone. Returns the file's length after the check (cut or
/// not), `None` when it was left alone.
fn cut_half_a_block(path: &Path) -> Option<u64> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return None;
    }
    let cut = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .and_then(|mut f| go_on_after_whole_blocks(&mut f, path));
    match cut {
        Ok(len) => Some(len),
        Err(e) => {
            tracing::debug!(file = %path.display(), error = %e, "not checked for half a block");
            None
        }
    }
}

/// Whether the file at `path`, if it is there and not empty, is a capture
/// a target that does not rotate can go on writing (at the start, so that
/// one that is not fails it, named, rather than each write).
fn check_goes_on(path: &Path) -> io::Result<()> {
    // Only a regular file holds a capture to keep: a FIFO or a device
    // (a reader on the other end, /dev/null) is only written to, and
    // opening a FIFO to read would wait for a writer.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => starts_a_capture(&mut File::open(path)?),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the first 12 bytes of `file`: a section header block as this
/// writer writes them (little-endian), or an error that says why it is
/// left alone.
fn starts_a_capture(file: &mut File) -> io::Result<()> {
    use std::io::Read;
    let mut head = [0u8; 12];
    let read = file.read_exact(&mut head).is_ok();
    if read && le32(&head, 0) == SHB_TYPE && le32(&head, 8) == BYTE_ORDER_MAGIC {
        return Ok(());
    }
    Err(io::Error::other(
        "the file is there and is not a little-endian pcapng capture that mirror can go on \
         writing; move it away or name another path (mirror never writes over a file)",
    ))
}

/// Positions an existing capture file (`path`, open to read and write)
/// after its last whole block, cutting a half-written one after it (a
/// daemon killed in a write), and returns that length: where a new section
/// goes. An empty file: 0. A file that does not start with a section header
/// block as this writer writes them (little-endian) is left alone: an error.
fn go_on_after_whole_blocks(file: &mut File, path: &Path) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(0))?;
    starts_a_capture(file)?;
    // Whole to the end when its last block's two lengths agree (a file
    // closed properly); else walk the blocks from the start.
    let mut tail = [0u8; 8];
    let mut end = 0;
    file.seek(SeekFrom::End(-4))?;
    file.read_exact(&mut tail[..4])?;
    let last = u64::from(le32(&tail, 0));
    if last >= 12 && last % 4 == 0 && last <= size {
        file.seek(SeekFrom::Start(size - last))?;
        file.read_exact(&mut tail)?;
        if u64::from(le32(&tail, 4)) == last {
            end = size;
        }
    }
    if end == 0 {
        file.seek(SeekFrom::Start(0))?;
        let mut r = io::BufReader::with_capacity(1 << 16, &*file);
        let mut block = [0u8; 8];
        while end + 8 <= size && r.read_exact(&mut block).is_ok() {
            let len = u64::from(le32(&block, 4));
            if len < 12 || len % 4 != 0 || end + len > size {
                break;
            }
            end += len;
            r.seek_relative(len as i64 - 8)?;
        }
        tracing::warn!(
            file = %path.display(),
            cut = size - end,
            "the capture file ends in half a block (a write cut short): cut back to its last whole block"
        );
        file.set_len(end)?;
    }
    file.seek(SeekFrom::Start(end))?;
    Ok(end)
}

/// Whether the capture file at `path` holds a packet block. Files of 64 KiB
/// or more are taken to (no header is that long), as are files this reader
/// does not understand: only a file that is surely empty counts as empty.
fn holds_packets(path: &Path) -> bool {
    const SIMPLE: u32 = 3;
    const OBSOLETE: u32 = 2;
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
        if word(at, false) == SHB_TYPE {
            // The byte-order magic after the length says how to read the rest.
            big_endian = b[at + 8..at + 12] == [0x1a, 0x2b, 0x3c, 0x4d];
        }
        if matches!(word(at, big_endian), EPB_TYPE | SIMPLE | OBSOLETE) {
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

/// The section header and one interface description per source, as every
/// file starts: serialised once by the `pcap-file` crate.
fn header_blocks(interfaces: &Interfaces) -> Vec<u8> {
    let shb = SectionHeaderBlock {
        endianness: Endianness::Little,
        options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
            "mirror {}",
            env!("CARGO_PKG_VERSION")
        )))],
        ..Default::default()
    };
    let mut writer =
        PcapNgWriter::with_section_header(Vec::new(), shb).expect("writing to memory cannot fail");
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
    writer.into_inner()
}

/// Block type of an enhanced packet block.
const EPB_TYPE: u32 = 6;
/// Block type of a section header block (the same in either byte order).
const SHB_TYPE: u32 = 0x0A0D_0D0A;
/// A section header's byte-order magic, as read in the byte order it set.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

/// The little-endian word at `at` of `b` (this writer's byte order).
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// `epb_flags` option: code 2, 4 bytes.
const EPB_FLAGS: u16 = 2;

/// A copy of this many bytes or more is written from its queue slot (one
/// `writev` entry) rather than copied into the buffer first: at 1,500 B
/// that copy was a third of the writer's own CPU; below this size an
/// iovec entry costs the kernel more than the copy saves.
pub(crate) const IN_PLACE_MIN: usize = 512;
/// Entries of one `writev` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The blocks of one file waiting to be written.
///
/// Everything but the data of large copies is laid out in one buffer:
/// header blocks, whole enhanced packet blocks of small copies, and the
/// head and tail of each large copy's block, whose data stays in its queue
/// slot ([`IN_PLACE_MIN`]) until the write, which gathers them in order
/// with `writev`. The file gets `buf[..at0]`, data 0, `buf[at0..at1]`,
/// data 1, ..., the rest of `buf`.
///
/// Enhanced packet blocks are laid out here rather than by `pcap-file`
/// (whose per-block serialisation — each block written twice, once to
/// measure it, a dozen small writes and an option vector allocated per
/// copy — was most of the writer's CPU per 60-byte copy); the bytes are the
/// crate's own, which the tests check.
struct Blocks {
    buf: Vec<u8>,
    /// Copies whose data is written from their slot, with where in `buf`
    /// it goes (right after its block's 28-byte head), in order.
    held: Vec<(usize, Packet)>,
    /// Bytes of held data.
    held_bytes: usize,
    /// Bytes of header blocks at the front of the buffer (0 once written).
    header: usize,
    /// Packets and their data bytes in the buffer.
    packets: u64,
    bytes: u64,
}

/// Bytes of an enhanced packet block before its data.
const EPB_HEAD: usize = 28;

impl Blocks {
    fn new(head: &[u8]) -> Blocks {
        let mut buf = Vec::with_capacity(FLUSH_BYTES + 2 * Self::MAX_EPB + head.len());
        buf.extend_from_slice(head);
        Blocks {
            buf,
            held: Vec::new(),
            held_bytes: 0,
            header: head.len(),
            packets: 0,
            bytes: 0,
        }
    }

    /// The largest enhanced packet block.
    const MAX_EPB: usize = 44 + SNAPLEN;

    /// Starts the buffer of a new file (the old one's is empty or lost).
    fn restart(&mut self, head: &[u8], q: &TargetQueue) {
        self.release(q);
        self.buf.clear();
        self.buf.extend_from_slice(head);
        self.header = head.len();
        self.packets = 0;
        self.bytes = 0;
    }

    /// Bytes waiting: what the file grows by when they are written.
    fn len(&self) -> usize {
        self.buf.len() + self.held_bytes
    }

    /// Copies whose slots the buffer holds.
    fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes the enhanced packet block of `p` takes.
    fn epb_len(p: &Packet) -> usize {
        // type, length, interface, time stamp (8), captured and original
        // length: 28; data padded to 4; epb_flags (8) + end of options (4);
        // trailing length (4).
        EPB_HEAD + p.data().len().next_multiple_of(4) + 12 + 4
    }

    /// Adds the block of `p`: copied whole into the buffer, or (a copy of
    /// [`IN_PLACE_MIN`] bytes or more) kept with its slot until the write.
    /// A copy not kept is the caller's to recycle: returned.
    fn push(&mut self, p: Packet) -> Option<Packet> {
        let data = p.data();
        let len = Self::epb_len(&p) as u32;
        let pad = data.len().next_multiple_of(4) - data.len();
        let flags: u32 = if p.egress { 2 } else { 1 }; // inbound / outbound
        let word =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let mut head = [0u8; EPB_HEAD];
        word(&mut head, 0, EPB_TYPE);
        word(&mut head, 4, len);
        word(&mut head, 8, u32::from(p.source));
        word(&mut head, 12, (p.tstamp_ns >> 32) as u32);
        word(&mut head, 16, p.tstamp_ns as u32);
        word(&mut head, 20, data.len() as u32);
        word(&mut head, 24, p.orig_len.max(data.len() as u32));
        // Padding (0-3 zero bytes), epb_flags, end of options, length.
        let mut tail = [0u8; 19];
        tail[pad..pad + 2].copy_from_slice(&EPB_FLAGS.to_le_bytes());
        tail[pad + 2..pad + 4].copy_from_slice(&4u16.to_le_bytes());
        word(&mut tail, pad + 4, flags);
        word(&mut tail, pad + 12, len);
        self.buf.extend_from_slice(&head);
        self.packets += 1;
        self.bytes += data.len() as u64;
        let keep = data.len() >= IN_PLACE_MIN;
        if !keep {
            self.buf.extend_from_slice(data);
        }
        self.buf.extend_from_slice(&tail[..pad + 16]);
        if keep {
            self.held_bytes += data.len();
            let at = self.buf.len() - (pad + 16);
            self.held.push((at, p));
            None
        } else {
            Some(p)
        }
    }

    /// Writes every block to `out` in order, in `writev` calls that each end
    /// on a block boundary, resuming after partial writes.
    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut iov: Vec<io::IoSlice<'_>> =
            Vec::with_capacity(IOV_MAX.min(2 * self.held.len() + 1));
        // Where in `buf` the next call starts, and its first held copy.
        let mut from = 0;
        let mut next = 0;
        loop {
            iov.clear();
            let mut at = from;
            // Each held copy takes two entries: its data, then the buffer
            // up to the next one's data (or the end).
            let last = self.held.len().min(next + (IOV_MAX - 1) / 2);
            for (cut, p) in &self.held[next..last] {
                iov.push(io::IoSlice::new(&self.buf[at..*cut]));
                iov.push(io::IoSlice::new(p.data()));
                at = *cut;
            }
            // Up to the head of the next call's first copy: a block boundary.
            let end = self
                .held
                .get(last)
                .map_or(self.buf.len(), |(cut, _)| cut - EPB_HEAD);
            iov.push(io::IoSlice::new(&self.buf[at..end]));
            write_all_vectored(out, &mut iov)?;
            if last == self.held.len() {
                return Ok(());
            }
            from = end;
            next = last;
        }
    }

    /// Returns the held copies' slots to the queue.
    fn release(&mut self, q: &TargetQueue) {
        for (_, p) in self.held.drain(..) {
            q.recycle(p);
        }
        self.held_bytes = 0;
    }

    /// Forgets the packets, keeping unwritten header blocks.
    fn clear_packets(&mut self, q: &TargetQueue) {
        self.release(q);
        self.buf.truncate(self.header);
        self.packets = 0;
        self.bytes = 0;
    }

    /// Forgets everything, after a write of it all.
    fn clear(&mut self, q: &TargetQueue) {
        self.release(q);
        self.buf.clear();
        self.header = 0;
        self.packets = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
impl Blocks {
    /// What a write of the buffer puts in the file.
    fn bytes_written(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        out
    }
}

/// `Write::write_all` for a gather list (`write_all_vectored` is not
/// stable): `writev` until every byte is written, after partial writes
/// and interrupted calls too.
fn write_all_vectored(out: &mut impl Write, mut bufs: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies taken from the queue between two looks at the clock and the stop flag.
const BATCH: usize = 1024;
/// The most copies the writer takes from the queue at a time, the one it
/// writes and those ahead of it, whose data it prefetches.
const LOOKAHEAD: usize = 16;

fn run(files: Files, q: &TargetQueue, stop: &AtomicBool, clock: &dyn Fn() -> Instant) {
    q.register_sender();
    let mut w = Writer::new(files, q, clock());
    let mut stopping = false;
    loop {
        let now = clock();
        let took = w.take_ready(now);
        w.tick(clock());
        if stopping && q.queued() == 0 {
            w.finish(clock());
            return;
        }
        if stop.load(Ordering::Relaxed) {
            stopping = true;
            continue;
        }
        if took == 0 {
            std::thread::park_timeout(WRITER_NAP);
        }
    }
}

/// The writer thread's state: its files, the buffer, when it last wrote.
struct Writer<'q> {
    files: Files,
    blocks: Blocks,
    q: &'q TargetQueue,
    last_flush: Instant,
    /// The most copies the buffer holds in their slots before it is
    /// written: the queue's slots beyond its `queue_size` ([`held_slots`])
    /// less the lookahead's, so that `queue_size` copies still fit in it
    /// during the write.
    max_held: usize,
    /// The most copies [`Writer::take_ready`] holds taken from the queue,
    /// the one being written included: 1 + at most `LOOKAHEAD - 1` ahead
    /// of it, a quarter of the held slots at most (none for a tiny queue).
    ahead_max: usize,
    /// After the next file could not be opened: not tried again before.
    retry_open: Option<Instant>,
    /// Copies taken from the queue ahead of the one being written, their
    /// data prefetched ([`Writer::take_ready`]); empty between batches.
    ahead: VecDeque<Packet>,
}

impl<'q> Writer<'q> {
    fn new(mut files: Files, q: &'q TargetQueue, now: Instant) -> Writer<'q> {
        files.cut_newest();
        if let Err(e) = files.open_next(now) {
            // Copies are counted disk_full until a file can be opened.
            tracing::error!(error = %e, "opening the capture file failed");
        }
        let blocks = Blocks::new(&files.head);
        // The queue has `queue_size + held_slots(queue_size)` slots.
        let held = (q.capacity() / 5).max(1);
        let ahead_max = 1 + (held / 4).min(LOOKAHEAD - 1);
        let mut w = Writer {
            files,
            blocks,
            q,
            last_flush: now,
            max_held: held - (ahead_max - 1),
            ahead_max,
            retry_open: None,
            ahead: VecDeque::with_capacity(ahead_max),
        };
        w.write_header(now);
        w
    }

    /// Writes the header blocks of a file just opened, so that it is a
    /// capture file readers take (with no packet yet) from the start, not
    /// an empty one until the first copy comes.
    fn write_header(&mut self, now: Instant) {
        if self.files.current.is_some() {
            self.flush(now);
        }
    }

    /// Takes what waits in the queue, [`BATCH`] copies at most (and the
    /// lookahead's), at `now`; returns how many.
    ///
    /// Each small copy's data is asked for up to [`LOOKAHEAD`] - 1 copies
    /// before it is read, so that its cache miss (the kernel wrote it from another
    /// core) is over by then instead of stalling the copy into the buffer
    /// (a large copy's data is written from its slot by the kernel, not
    /// read here). The copies held ahead count as queued, as the buffer's do.
    fn take_ready(&mut self, now: Instant) -> usize {
        let mut took = 0;
        loop {
            while self.ahead.len() < self.ahead_max {
                let Some(p) = self.q.pop_ready() else { break };
                if p.data().len() < IN_PLACE_MIN {
                    p.prefetch();
                }
                self.ahead.push_back(p);
            }
            // Out of the queue: in flight from now, also through a write
            // the first of them may start.
            self.publish_in_flight();
            let Some(p) = self.ahead.pop_front() else {
                return took;
            };
            took += 1;
            self.take(p, now);
            if took >= BATCH {
                // The rest of the lookahead, none more from the queue.
                while let Some(p) = self.ahead.pop_front() {
                    took += 1;
                    self.take(p, now);
                }
                return took;
            }
        }
    }

    /// The copies the writer holds (its buffer's and the lookahead's), as
    /// `queued` in stats: still on their way, also while a write blocks.
    fn publish_in_flight(&self) {
        let held = self.blocks.packets + self.ahead.len() as u64;
        self.q.in_flight.store(held, Ordering::Relaxed);
    }

    /// One copy from the queue, at `now`.
    fn take(&mut self, p: Packet, now: Instant) {
        let q = self.q;
        // A copy stamped at or after the file's edge starts the next file:
        // files split where the copies' own time stamps cross the edge.
        if let Some((edge, _)) = self.files.current.as_ref().and_then(|c| c.edge) {
            if p.tstamp_ns >= edge {
                self.at_edge(now);
            }
        }
        if let (Some(limit), Some(cur)) = (self.files.file_limit(), self.files.current.as_ref()) {
            let next = cur.committed + self.blocks.len() as u64 + Blocks::epb_len(&p) as u64;
            if next > limit && cur.packets + self.blocks.packets > 0 {
                if self.retry_open.is_none() {
                    self.flush(now);
                    // A flush that could not write (`min_free`, a full disk)
                    // dropped the buffer and left the file as it was, with
                    // room: starting another would only leave a header-only
                    // file behind, and a gap in the numbers.
                    let full = self.files.current.as_ref().is_some_and(|c| {
                        c.packets > 0 && c.committed + Blocks::epb_len(&p) as u64 > limit
                    });
                    if full {
                        self.rotate(now);
                    }
                }
                // The next file could not be opened: the file is written on
                // past its limit until it can (tick tries again), except
                // under a budget, where a file grown toward it would have
                // every older capture deleted, then go whole itself.
                if self.retry_open.is_some() && self.files.spec.max_total_size.is_some() {
                    self.files.hold.held_back(q);
                    q.counters.drop(TargetDrop::DiskFull, 1);
                    q.recycle(p);
                    return;
                }
            }
        }
        if let Some(why) = over_budget(&self.files, &self.blocks, &p) {
            q.counters.drop(why, 1);
            q.recycle(p);
            return;
        }
        if let Some(p) = self.blocks.push(p) {
            q.recycle(p);
        }
        // Counted as queued until written, also while a write blocks.
        self.publish_in_flight();
        if self.blocks.len() >= FLUSH_BYTES || self.blocks.held() >= self.max_held {
            self.flush(now);
            self.last_flush = now;
        }
    }

    /// Between batches, at `now`: writes a buffer older than
    /// [`FLUSH_EVERY`] and starts the next file at `rotate_interval`'s edge.
    fn tick(&mut self, now: Instant) {
        if self.blocks.packets > 0 && now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush(now);
            self.last_flush = now;
        }
        if let Some((_, at)) = self.files.current.as_ref().and_then(|c| c.edge) {
            if now >= at {
                self.at_edge(now);
            }
        }
        // A rotation that could not open the next file, due again.
        if self.retry_open.is_some_and(|at| now >= at) {
            self.flush(now);
            self.last_flush = now;
            self.rotate(now);
        }
        // Writing held back and gone on again, then idle: up once it has
        // been a while, as the log says.
        if self.files.hold.settled(now) {
            self.q.set_held(false);
            tracing::info!("writing again: every write has gone through for a second");
        }
        // Copies in the buffer are still on their way: `queued` in stats.
        self.publish_in_flight();
        self.publish_deleted();
    }

    /// The files deleted so far, into the target's counters.
    fn publish_deleted(&self) {
        let c = &self.q.counters;
        c.deleted_files
            .store(self.files.deleted.0, Ordering::Relaxed);
        c.deleted_bytes
            .store(self.files.deleted.1, Ordering::Relaxed);
    }

    /// At the stop, the queue drained: writes what is left.
    fn finish(&mut self, now: Instant) {
        self.flush(now);
        if let Some(cur) = self.files.current.as_mut() {
            let _ = cur.file.sync_data();
        }
        self.q.in_flight.store(0, Ordering::Relaxed);
        self.publish_deleted();
    }

    /// At `rotate_interval`'s edge: the file closes and the next begins,
    /// unless it holds no copy (idle, or writing held back): then it stays
    /// open for the next interval, which leaves no header-only file and no
    /// gap in the numbers.
    fn at_edge(&mut self, now: Instant) {
        if let Some((edge, _)) = self.files.current.as_ref().and_then(|c| c.edge) {
            self.files.reached_edge = self.files.reached_edge.max(edge);
        }
        self.flush(now);
        self.last_flush = now;
        if self.files.current.as_ref().is_some_and(|c| c.packets > 0) {
            self.rotate(now);
        }
        // Still the file of the edge reached (idle, or the next could not
        // be opened): it runs on to the next edge.
        let reached = self.files.reached_edge;
        let next = self.files.next_edge(now);
        if let Some(cur) = self.files.current.as_mut() {
            if cur.edge.is_some_and(|(edge, _)| edge <= reached) {
                cur.edge = next;
            }
        }
    }

    /// Starts the next file. When it cannot be opened (logged) the current
    /// one stays open and is written on, past its limit, rather than lose
    /// copies (under `max_total_size`, only to its limit: the copies past
    /// it are counted `disk_full`); [`Writer::tick`] tries again a second
    /// later ([`RETRY_OPEN`]), until it opens.
    fn rotate(&mut self, now: Instant) {
        if self.retry_open.is_some_and(|at| now < at) {
            return;
        }
        match self.files.open_next(now) {
            Ok(()) => {
                // Opened after failing: writing goes on again (up once a
                // second has passed, traffic or not).
                if self.retry_open.take().is_some() && self.files.hold.wrote(now) {
                    self.q.set_held(false);
                }
                self.blocks.restart(&self.files.head, self.q);
                self.write_header(now);
            }
            Err(e) => {
                if self.retry_open.is_none() {
                    if self.files.spec.max_total_size.is_some() {
                        tracing::warn!(error = %e, "opening the next capture file failed; copies past the current one's limit are counted disk_full until it opens (tried again every second)");
                    } else {
                        tracing::warn!(error = %e, "opening the next capture file failed; writing on in the current one, past its limit, until it opens (tried again every second)");
                    }
                }
                self.retry_open = Some(now + RETRY_OPEN);
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        flush(&mut self.files, &mut self.blocks, self.q, now);
        self.publish_in_flight();
    }
}

/// How long after a failed opening of the next file the writer tries again.
const RETRY_OPEN: Duration = Duration::from_secs(1);

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

/// Writes the buffer to the current file: whole or not at all.
fn flush(files: &mut Files, blocks: &mut Blocks, q: &TargetQueue, now: Instant) {
    if blocks.packets == 0 && blocks.header == 0 {
        return;
    }
    if files.current.is_none() {
        if let Err(e) = files.open_next(now) {
            tracing::warn!(error = %e, "opening the capture file failed");
        }
    }
    // The budget counts the file being written after this write: make room
    // first, so the target's files never total more, even for a moment.
    if let Some(committed) = files.current.as_ref().map(|c| c.committed) {
        if !files.make_room(committed + blocks.len() as u64) {
            // An old file that cannot be deleted (logged) stands in the way.
            if blocks.packets > 0 && files.hold.held_back(q) {
                tracing::warn!(
                    "writing held back: an old capture file that cannot be deleted keeps the \
                     target over max_total_size; copies are counted disk_full until there is room"
                );
            }
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets(q);
            return;
        }
    }
    let Some(cur) = files.current.as_mut() else {
        if blocks.packets > 0 && files.hold.held_back(q) {
            tracing::warn!(
                "writing held back: no capture file could be opened; copies are counted \
                 disk_full until one is"
            );
        }
        q.counters.drop(TargetDrop::DiskFull, blocks.packets);
        blocks.clear_packets(q);
        return;
    };
    // Header blocks alone are written below `min_free` too: a few hundred
    // bytes that make the file one readers take.
    if let Some(min) = files.spec.min_free.filter(|_| blocks.packets > 0) {
        if below_min_free(&cur.path, min, blocks.len() as u64) {
            if files.hold.held_back(q) {
                tracing::warn!(
                    file = %cur.path.display(),
                    "writing held back: the write would leave less free than min_free; copies \
                     are counted disk_full until there is room"
                );
            }
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets(q);
            return;
        }
    }
    match blocks.write_to(&mut cur.file) {
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
            if blocks.packets > 0 && files.hold.wrote(now) {
                q.set_held(false);
                tracing::info!(
                    file = %cur.path.display(),
                    "writing again: every write has gone through for a second"
                );
            }
            blocks.clear(q);
        }
        Err(e) => {
            // Cut the file back to its last whole block, so readers never see
            // half a block, and write after it next time.
            if let Err(t) = cur.file.set_len(cur.committed) {
                tracing::warn!(file = %cur.path.display(), error = %t, "truncating after a failed write");
            }
            let _ = std::io::Seek::seek(&mut cur.file, io::SeekFrom::Start(cur.committed));
            let say = files.hold.held_back(q);
            if e.raw_os_error() != Some(libc::ENOSPC) && e.raw_os_error() != Some(libc::EDQUOT) {
                tracing::warn!(file = %cur.path.display(), error = %e, "writing the capture file failed");
            } else if say {
                tracing::warn!(
                    file = %cur.path.display(),
                    error = %e,
                    "writing held back: the disk is full; copies are counted disk_full until \
                     there is room"
                );
            }
            q.counters.drop(TargetDrop::DiskFull, blocks.packets);
            blocks.clear_packets(q);
        }
    }
}

/// Writing held back (`min_free`, a full disk) and going on again, as the
/// log says it: once when writing is first held back, once when it has gone
/// on again for [`Hold::RESUMED`]. At the edge of `min_free` a small write
/// fits where a large one did not, and writing flaps every 100 ms; the log
/// does not.
#[derive(Default)]
struct Hold {
    held: bool,
    /// The log says writing is held back.
    said: bool,
    /// When writing went on again after the last hold.
    resumed: Option<Instant>,
}

impl Hold {
    const RESUMED: Duration = Duration::from_secs(1);

    /// Writing is held back (`min_free`, a full disk, no file open): the
    /// target is down in `mirror stats` and metrics until writing has gone
    /// on again for [`Hold::RESUMED`], as the log says. Whether to say so.
    fn held_back(&mut self, q: &TargetQueue) -> bool {
        let say = self.begin();
        if say {
            q.set_held(true);
        }
        say
    }

    /// Writing is held back: whether to say so.
    fn begin(&mut self) -> bool {
        self.held = true;
        self.resumed = None;
        !std::mem::replace(&mut self.said, true)
    }

    /// A write went through at `now`: whether to say writing goes on again.
    fn wrote(&mut self, now: Instant) -> bool {
        if std::mem::take(&mut self.held) {
            self.resumed = Some(now);
        }
        self.settled(now)
    }

    /// At `now`, writing said held back has gone on (no hold since) for
    /// [`Hold::RESUMED`], with writes or idle: whether to say it goes on
    /// again.
    fn settled(&mut self, now: Instant) -> bool {
        if self.held {
            return false;
        }
        match self.resumed {
            Some(t) if self.said && now.duration_since(t) >= Self::RESUMED => {
                self.said = false;
                self.resumed = None;
                true
            }
            _ => false,
        }
    }
}

/// For `mirror check`: when the file system of a target's `path` already
/// has less free than its `min_free`, a sentence saying so (the target
/// would write nothing, counting every copy `disk_full`, until space is
/// freed); `None` when it has room or cannot be asked.
pub fn min_free_held_at_start(spec: &PcapngSpec) -> Option<String> {
    let min = spec.min_free?;
    below_min_free(&spec.path, min, 0).then(|| {
        format!(
            "{} has less free space than min_free ({}) already: nothing will be written \
             (every copy counted disk_full) until space is freed",
            parent(&spec.path).display(),
            match min {
                MinFree::Bytes(b) => format!("{b} bytes"),
                MinFree::Permille(p) => format!("{}.{}%", p / 10, p % 10),
            }
        )
    })
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
    let (free, total) = space(&st);
    short_of_space(free, total, min, extra)
}

/// Bytes free to the daemon and bytes in all, from `statvfs`: free is
/// what `df` shows as available (`f_bavail`), not counting the blocks the
/// file system keeps for root (`f_bfree` does), which the daemon, running
/// as root, could fill too: `min_free` leaves room for everyone.
fn space(st: &libc::statvfs) -> (u64, u64) {
    (
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    )
}

/// Whether `free` of `total` bytes, less `extra`, is below `min`.
fn short_of_space(free: u64, total: u64, min: MinFree, extra: u64) -> bool {
    let need = match min {
        MinFree::Bytes(b) => b,
        MinFree::Permille(p) => total / 1000 * u64::from(p),
    };
    free.saturating_sub(extra) < need
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::{Block, PcapNgReader};

    /// Offers a copy of `data` (stamped 1 ns after the epoch).
    fn offer(q: &TargetQueue, data: &[u8]) {
        q.offer(&Frame {
            data,
            orig_len: data.len() as u32,
            hash: 0,
            tstamp_ns: 1,
            vni: 0,
            source: 0,
            egress: false,
        });
    }

    /// One copy of `len` bytes (each `fill`) made ready and taken back, as
    /// the writer thread takes it from its queue.
    fn packet(q: &TargetQueue, len: usize, fill: u8, frame: impl FnOnce(&mut Frame<'_>)) -> Packet {
        let data = vec![fill; len];
        let mut f = super::super::Frame {
            data: &data,
            orig_len: len as u32,
            hash: 0,
            tstamp_ns: 1,
            vni: 0,
            source: 0,
            egress: false,
        };
        frame(&mut f);
        q.offer(&f);
        q.pop_ready().expect("queued")
    }

    use super::super::Frame;

    /// The packet blocks are laid out by hand: every byte as pcap-file
    /// writes it, for every padding (0-3), both directions, a second
    /// interface, a copy cut short (original length kept), time stamps past
    /// 2^32 ns, the largest copy; and the crate reads them back.
    #[test]
    fn packet_blocks_are_byte_for_byte_what_pcap_file_writes() {
        let q =
            TargetQueue::new("t", "pcapng", 4, SNAPLEN, Oversize::Truncate).expect("queue memory");
        let interfaces: Interfaces = vec![("a".into(), "eth0".into()), ("b".into(), "eth1".into())];
        let head = header_blocks(&interfaces);
        let mut ours = Blocks::new(&head);
        let mut crate_head = PcapNgWriter::with_section_header(
            Vec::new(),
            SectionHeaderBlock {
                endianness: Endianness::Little,
                options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                    "mirror {}",
                    env!("CARGO_PKG_VERSION")
                )))],
                ..Default::default()
            },
        )
        .expect("memory");
        for (source, interface) in &interfaces {
            crate_head
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: SNAPLEN as u32,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(interface.clone())),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                            "mirror source {source}"
                        ))),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .expect("memory");
        }
        let mut want = crate_head.into_inner();
        assert_eq!(want, head, "header blocks");
        let mut n = 0;
        for (len, orig, tstamp, source, egress) in [
            (0usize, 0u32, 0u64, 0u16, false),
            (1, 1, 1, 0, true),
            (2, 2, 1 << 32, 1, false),
            (3, 3, (1 << 32) - 1, 1, true),
            (60, 60, 1_764_640_000_123_456_789, 0, false),
            (61, 61, u64::MAX, 0, true),
            (62, 1514, 42, 1, false),
            (63, 63, 7, 1, true),
            (64, 64, 8, 0, false),
            (1500, 1500, 9, 0, true),
            (SNAPLEN, 9000, 10, 1, false),
        ] {
            let p = packet(&q, len, len as u8, |f| {
                f.orig_len = orig;
                f.tstamp_ns = tstamp;
                f.source = source;
                f.egress = egress;
            });
            let shb = SectionHeaderBlock {
                endianness: Endianness::Little,
                ..Default::default()
            };
            let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).expect("memory");
            for _ in 0..2 {
                w.write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: 0,
                    options: vec![],
                })
                .expect("memory");
            }
            let skip = w.get_ref().len();
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: u32::from(source),
                timestamp: Duration::from_nanos(tstamp),
                original_len: orig.max(len as u32),
                data: Cow::Borrowed(p.data()),
                options: vec![EnhancedPacketOption::Flags(if egress { 2 } else { 1 })],
            })
            .expect("memory");
            want.extend_from_slice(&w.get_ref()[skip..]);
            let at = ours.len();
            let epb = Blocks::epb_len(&p);
            if let Some(p) = ours.push(p) {
                assert!(len < IN_PLACE_MIN, "{len}-byte copy: copied");
                q.recycle(p);
            }
            assert_eq!(ours.len() - at, epb, "{len}-byte copy: length");
            assert_eq!(ours.bytes_written(), want, "{len}-byte copy: bytes");
            n += 1;
        }
        assert_eq!((ours.packets, ours.header), (n, head.len()));
        assert_eq!(
            ours.held(),
            2,
            "the 1,500 and 4,096-byte copies stay in their slots"
        );
        let written = ours.bytes_written();
        ours.clear(&q);
        assert_eq!(q.capacity(), 4);
        for _ in 0..4 {
            offer(&q, &[0; 60]);
        }
        assert_eq!(q.queued(), 4, "every held slot is back");
        let mut reader = PcapNgReader::new(&written[..]).expect("header");
        let mut lens = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.expect("a whole block") {
                lens.push(epb.data.len());
            }
        }
        assert_eq!(lens, [0, 1, 2, 3, 60, 61, 62, 63, 64, 1500, SNAPLEN]);
    }

    #[test]
    fn epb_length_matches_what_pcap_file_writes() {
        let q = TargetQueue::new("t", "pcapng", 2, 256, Oversize::Truncate).expect("queue memory");
        let mut blocks = Blocks::new(&header_blocks(&vec![("s".into(), "eth0".into())]));
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
            let epb = Blocks::epb_len(&p);
            q.recycle(blocks.push(p).expect("a small copy is copied"));
            assert_eq!(blocks.len() - at, epb, "{len}-byte frame");
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
        let Started {
            queue: q,
            handle: writer,
            host,
        } = start(
            "b",
            &spec,
            vec![("s".into(), "eth0".into())],
            64,
            None,
            Arc::new(AtomicBool::new(true)),
            stop.clone(),
        )
        .expect("the first file");
        assert!(host.is_none(), "nothing to share");
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

    /// Shared with a tap source's RX queue: the queue's slots (`queue_size`
    /// and a quarter) come first in one UMEM, then the RX queue's frames.
    #[test]
    fn a_shared_queue_is_a_umem_of_its_slots_then_the_rx_frames() {
        let dir = std::env::temp_dir();
        let spec = PcapngSpec {
            path: dir.join(format!("mirror-share-{}.pcapng", std::process::id())),
            rotate_size: None,
            rotate_interval: None,
            keep: None,
            max_total_size: None,
            min_free: None,
        };
        let stop = Arc::new(AtomicBool::new(true));
        let Started {
            queue,
            handle,
            host,
        } = start(
            "c",
            &spec,
            vec![("s".into(), "eth0".into())],
            64,
            Some(100),
            Arc::new(AtomicBool::new(false)),
            stop,
        )
        .expect("started");
        handle.join().expect("the writer gives up on the stop");
        let host = host.expect("a host for the RX queue");
        assert_eq!(queue.capacity(), 80);
        assert_eq!(queue.memory().len(), 180 * SNAPLEN);
        assert_eq!(host.frames(), 80..180);
        assert_eq!(host.target, "c");
        assert!(!spec.path.exists(), "no file before the start");
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
            "a-12.pcapng",
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
        let mut blocks = Blocks::new(&header_blocks(&vec![("s".into(), "eth0".into())]));
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
            q.recycle(blocks.push(p).expect("a small copy is copied"));
        }
        blocks.bytes_written()
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
        files.open_next(Instant::now()).expect("open");
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
        // keep = 4: the new file (5) and the three newest; 1 goes, counted.
        let mut files = Files::new(spec(4), vec![("s".into(), "eth0".into())]);
        files.open_next(Instant::now()).expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        assert_eq!(left, vec![2, 3, 4, 5]);
        assert_eq!(files.deleted, (1, capture_bytes(1).len() as u64));
        drop(files);
        // File 5 gets a packet; keep = 5: four there and the new one (6)
        // make five, which keep allows: none goes.
        std::fs::write(numbered(&path, 5), capture_bytes(1)).expect("write");
        let mut files = Files::new(spec(5), vec![("s".into(), "eth0".into())]);
        files.open_next(Instant::now()).expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(left, vec![2, 3, 4, 5, 6]);
        assert_eq!(files.deleted, (0, 0));
    }

    /// Files someone moved out of the directory (kept as evidence) no
    /// longer count against `keep` or `max_total_size`: counted, they had
    /// the writer delete a real capture early.
    #[test]
    fn files_moved_away_no_longer_count_against_keep_or_the_budget() {
        let dir = std::env::temp_dir().join(format!("mirror-moved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cap.pcapng");
        let one = capture_bytes(1).len() as u64;
        let spec = |keep, max_total_size| PcapngSpec {
            path: path.clone(),
            rotate_size: Some(1 << 20),
            rotate_interval: None,
            keep,
            max_total_size,
            min_free: None,
        };
        let left = || -> Vec<u64> { rotated_files(&path).iter().map(|f| f.0).collect() };
        // keep = 4: files 1-3 and the one being written (4).
        for seq in 1..=3 {
            std::fs::write(numbered(&path, seq), capture_bytes(1)).expect("write");
        }
        let mut files = Files::new(spec(Some(4), None), one_source());
        files.open_next(Instant::now()).expect("open 4");
        std::fs::write(numbered(&path, 4), capture_bytes(1)).expect("write");
        files.current.as_mut().expect("current").packets = 1;
        for seq in [2, 3] {
            std::fs::rename(numbered(&path, seq), dir.join(format!("evidence-{seq}")))
                .expect("move");
        }
        // 5 opens: 1, 4 and 5 are three files, under keep; 1 stays.
        files.open_next(Instant::now()).expect("open 5");
        assert_eq!(left(), vec![1, 4, 5]);
        assert_eq!(files.deleted, (0, 0));
        drop(files);
        for f in std::fs::read_dir(&dir).expect("dir") {
            std::fs::remove_file(f.expect("entry").path()).expect("empty");
        }
        // A budget of three files: 1 and 2 closed, 3 being written.
        for seq in 1..=2 {
            std::fs::write(numbered(&path, seq), capture_bytes(1)).expect("write");
        }
        let mut files = Files::new(spec(None, Some(3 * one)), one_source());
        files.open_next(Instant::now()).expect("open 3");
        std::fs::rename(numbered(&path, 2), dir.join("evidence-2")).expect("move");
        // File 3 about to hold two files' bytes: 1 and 3 fit, 1 stays.
        assert!(files.make_room(2 * one));
        assert_eq!(left(), vec![1, 3]);
        assert_eq!(files.deleted, (0, 0));
        // And what is still there counts: 3 grows by one more, 1 goes.
        assert!(files.make_room(3 * one));
        assert_eq!(left(), vec![3]);
        assert_eq!(files.deleted, (1, one));
        drop(files);
        std::fs::remove_dir_all(&dir).expect("cleanup");
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

    /// `mirror check`'s note of a `min_free` the file system is already
    /// under: given for a floor no disk has, not for none or 0 bytes.
    #[test]
    fn check_names_a_min_free_the_disk_is_already_under() {
        let dir = std::env::temp_dir().join(format!("mirror-minfree-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = spec(&dir.join("c.pcapng"));
        s.min_free = Some(MinFree::Bytes(u64::MAX / 2));
        let said = min_free_held_at_start(&s).expect("no disk has that much");
        assert_eq!(
            said,
            format!(
                "{} has less free space than min_free ({} bytes) already: nothing will be \
                 written (every copy counted disk_full) until space is freed",
                dir.display(),
                u64::MAX / 2
            )
        );
        s.min_free = Some(MinFree::Bytes(0));
        assert_eq!(min_free_held_at_start(&s), None);
        s.min_free = None;
        assert_eq!(min_free_held_at_start(&s), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A `path` naming a directory is refused (the files would go beside
    /// it, `cap-000001`), with the file name it wants; one in it is fine.
    #[test]
    fn a_path_that_is_a_directory_is_refused_with_what_to_write() {
        let dir = std::env::temp_dir().join(format!("mirror-isdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let err = check_directory(&dir).expect_err("a directory");
        assert!(matches!(&err, PcapngError::PathIsDirectory(p) if p == &dir));
        assert_eq!(
            err.to_string(),
            format!(
                "{0}: is a directory; `path` names the capture file, as in \
                 {0}/capture.pcapng (rotated files are numbered beside it)",
                dir.display()
            )
        );
        assert!(check_directory(&dir.join("capture.pcapng")).is_ok());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Files in the other byte order (a capture appended to by another
    /// tool), alone and after one of ours: only packet blocks count.
    #[test]
    fn big_endian_sections_are_read_in_their_own_byte_order() {
        let big = |packets: usize| {
            let shb = SectionHeaderBlock {
                endianness: Endianness::Big,
                ..Default::default()
            };
            let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).expect("memory");
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0,
                options: vec![],
            })
            .expect("memory");
            for _ in 0..packets {
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: Duration::from_nanos(1),
                    original_len: 60,
                    data: Cow::Owned(vec![1; 60]),
                    options: vec![],
                })
                .expect("memory");
            }
            w.into_inner()
        };
        let dir = Dir::new("bigend");
        let cases: [(&str, Vec<u8>, bool); 4] = [
            ("big-endian header only", big(0), false),
            ("big-endian with a packet", big(1), true),
            (
                "ours, then big-endian header only",
                [capture_bytes(0), big(0)].concat(),
                false,
            ),
            (
                "ours, then big-endian with a packet",
                [capture_bytes(0), big(1)].concat(),
                true,
            ),
        ];
        for (i, (what, bytes, want)) in cases.iter().enumerate() {
            let p = dir.0.join(format!("f{i}"));
            std::fs::write(&p, bytes).expect("write");
            assert_eq!(holds_packets(&p), *want, "{what}");
        }
    }

    /// Block lengths: 12 (the least a block takes) is a block; less, or not
    /// a multiple of 4, is a file this reader does not understand.
    #[test]
    fn block_lengths_are_checked_at_their_bounds() {
        let block =
            |words: &[u32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let unknown = 0x0bad;
        let dir = Dir::new("lengths");
        let cases: [(&str, Vec<u8>, bool); 3] = [
            (
                "a 12-byte block of another type",
                [capture_bytes(0), block(&[unknown, 12, 12])].concat(),
                false,
            ),
            (
                "a block of 8 bytes, then a good one",
                [
                    capture_bytes(0),
                    block(&[unknown, 8]),
                    block(&[unknown, 12, 12]),
                ]
                .concat(),
                true,
            ),
            (
                "a block of 14 bytes",
                [capture_bytes(0), block(&[unknown, 14, 0]), vec![0, 0]].concat(),
                true,
            ),
        ];
        for (i, (what, bytes, want)) in cases.iter().enumerate() {
            let p = dir.0.join(format!("f{i}"));
            std::fs::write(&p, bytes).expect("write");
            assert_eq!(holds_packets(&p), *want, "{what}");
        }
    }

    /// A file that ends in a piece shorter than a block header (a write
    /// cut short) is one this reader does not understand: kept.
    #[test]
    fn a_file_ending_in_less_than_a_block_header_is_kept() {
        let dir = Dir::new("shortend");
        let p = dir.0.join("f");
        for cut in [4, 8] {
            let piece = [EPB_TYPE.to_le_bytes(), (EPB60 as u32).to_le_bytes()].concat();
            std::fs::write(&p, [capture_bytes(0), piece[..cut].to_vec()].concat()).expect("write");
            assert!(holds_packets(&p), "{cut} bytes after the header");
        }
    }

    /// A copy whose block fits the budget but not with the header blocks
    /// in front of it is too big: a file of its own would pass the budget.
    #[test]
    fn the_header_counts_when_a_copy_is_measured_against_the_budget() {
        let dir = Dir::new("toobig");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(1 << 20);
        s.max_total_size = Some(head_len() + EPB60 - 1);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        w.finish(t0);
        assert_eq!(q.counters.dropped(TargetDrop::TooBig), 1);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 0);
        assert_eq!(sent(&q).0, 0);
    }

    /// A file that cannot be deleted (here a directory by its name) stays
    /// counted against the budget.
    #[test]
    fn an_old_file_that_cannot_be_deleted_stays_counted() {
        let dir = Dir::new("undeletable");
        let stuck = dir.0.join("c-000001.pcapng");
        std::fs::create_dir(&stuck).expect("mkdir");
        let mut s = spec(&dir.0.join("c.pcapng"));
        s.max_total_size = Some(300);
        let mut files = Files::new(s, one_source());
        files.old = [(stuck.clone(), 400)].into_iter().collect();
        assert!(!files.make_room(0));
        assert_eq!(files.old, [(stuck, 400)]);
    }

    /// A lower `keep` than the files already there: all the oldest beyond
    /// it go at once.
    #[test]
    fn keep_deletes_as_many_old_files_as_it_takes() {
        let dir = Dir::new("keepmany");
        let path = dir.0.join("cap.pcapng");
        for seq in 1..=4 {
            std::fs::write(numbered(&path, seq), capture_bytes(1)).expect("write");
        }
        let mut s = spec(&path);
        s.rotate_size = Some(1 << 20);
        s.keep = Some(2);
        let mut files = Files::new(s, one_source());
        files.open_next(Instant::now()).expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        assert_eq!(left, [4, 5]);
        assert_eq!(files.old.len(), 1);
    }

    /// A closed file is read (does it hold packets?) once, not at every
    /// rotation: rewritten header-only behind the writer's back after that
    /// first look, it still counts as the capture it was.
    #[test]
    fn old_files_are_read_for_packets_once() {
        let dir = Dir::new("readonce");
        let path = dir.0.join("cap.pcapng");
        for seq in 1..=3 {
            std::fs::write(numbered(&path, seq), capture_bytes(1)).expect("write");
        }
        let mut s = spec(&path);
        s.rotate_size = Some(1 << 20);
        let mut files = Files::new(s, one_source());
        files.open_next(Instant::now()).expect("open");
        std::fs::write(numbered(&path, 2), capture_bytes(0)).expect("rewrite");
        files.open_next(Instant::now()).expect("open");
        let left: Vec<u64> = rotated_files(&path).iter().map(|f| f.0).collect();
        assert_eq!(
            left,
            [1, 2, 3, 5],
            "file 4 (no packet) went, file 2 was not read again"
        );
    }

    /// A file system without `O_TMPFILE` (procfs) is asked with
    /// `access(2)` instead: the answer is what `access` says.
    #[test]
    fn without_o_tmpfile_the_directory_check_asks_access() {
        let proc_dir = Path::new("/proc");
        let c = std::ffi::CString::new("/proc").expect("path");
        // Safety: a NUL-terminated path.
        let ok = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
        assert_eq!(can_create_in(proc_dir).is_ok(), ok);
        let missing = Path::new("/proc/no-such-directory");
        assert!(can_create_in(missing).is_err());
    }

    #[test]
    fn the_writer_waits_for_the_start_and_gives_up_on_a_stop() {
        let (started, stop) = (AtomicBool::new(true), AtomicBool::new(false));
        assert!(wait_for_start(&started, &stop));
        let (started, stop) = (AtomicBool::new(false), AtomicBool::new(true));
        assert!(!wait_for_start(&started, &stop));
    }

    // ---- The writer, driven copy by copy with a clock of the test's own ----

    /// A capture directory of its own, removed on drop (also on a panic).
    struct Dir(PathBuf);

    impl Dir {
        fn new(what: &str) -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let d = std::env::temp_dir()
                .join(format!("mirror-pcapw-{what}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn spec(path: &Path) -> PcapngSpec {
        PcapngSpec {
            path: path.to_path_buf(),
            rotate_size: None,
            rotate_interval: None,
            keep: None,
            max_total_size: None,
            min_free: None,
        }
    }

    fn one_source() -> Interfaces {
        vec![("s".into(), "eth0".into())]
    }

    /// Bytes of the header blocks of every file.
    fn head_len() -> u64 {
        header_blocks(&one_source()).len() as u64
    }

    /// Packet block sizes of 60- and 1,500-byte copies.
    const EPB60: u64 = 104;
    const EPB1500: u64 = 1544;

    fn queue() -> TargetQueue {
        TargetQueue::new("t", "pcapng", 4096, SNAPLEN, Oversize::Truncate).expect("queue memory")
    }

    /// Hands the writer a copy of `len` bytes, each `seq`, at `now`.
    fn feed(w: &mut Writer<'_>, q: &TargetQueue, len: usize, seq: u8, now: Instant) {
        let p = packet(q, len, seq, |_| {});
        w.take(p, now);
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// The first byte of every packet in the file (the copies' `seq`);
    /// panics on anything but whole, valid blocks.
    fn seqs(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).expect("read the capture");
        let mut reader = PcapNgReader::new(&bytes[..]).expect("a pcapng header");
        let mut out = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.expect("a whole block") {
                out.push(epb.data[0]);
            }
        }
        out
    }

    /// Rotated files of `path`: (number, size).
    fn listing(path: &Path) -> Vec<(u64, u64)> {
        rotated_files(path)
            .into_iter()
            .map(|(n, p)| (n, size(&p)))
            .collect()
    }

    fn sent(q: &TargetQueue) -> (u64, u64) {
        (
            q.counters.sent_packets.load(Ordering::Relaxed),
            q.counters.sent_bytes.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_copy_waits_in_the_buffer_for_flush_every_counted_as_queued() {
        let dir = Dir::new("every");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        assert_eq!(size(&path), head_len(), "opened: the header alone");
        feed(&mut w, &q, 60, 1, t0);
        assert_eq!(
            q.in_flight.load(Ordering::Relaxed),
            1,
            "buffered counts as queued"
        );
        w.tick(t0);
        w.tick(t0 + FLUSH_EVERY - Duration::from_nanos(1));
        assert_eq!(
            (size(&path), sent(&q)),
            (head_len(), (0, 0)),
            "younger than FLUSH_EVERY"
        );
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 1);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(size(&path), head_len() + EPB60);
        assert_eq!(sent(&q), (1, 60));
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        // The next copy waits FLUSH_EVERY from that write.
        let t1 = t0 + FLUSH_EVERY;
        feed(&mut w, &q, 60, 2, t1 + Duration::from_millis(1));
        w.tick(t1 + FLUSH_EVERY - Duration::from_nanos(1));
        assert_eq!(size(&path), head_len() + EPB60);
        w.tick(t1 + FLUSH_EVERY);
        assert_eq!(size(&path), head_len() + 2 * EPB60);
        assert_eq!(seqs(&path), [1, 2]);
        assert_eq!(sent(&q), (2, 120));
        // Idle: nothing to write, nothing written; a copy after a quiet
        // spell goes out at the next look.
        w.tick(t1 + FLUSH_EVERY * 5);
        assert_eq!(size(&path), head_len() + 2 * EPB60);
        feed(&mut w, &q, 60, 3, t1 + FLUSH_EVERY * 5);
        w.tick(t1 + FLUSH_EVERY * 5);
        assert_eq!(seqs(&path), [1, 2, 3]);
    }

    /// Before the first copy the file holds the header blocks, nothing
    /// more: a capture file with no packet, which readers take (an empty
    /// file they refuse).
    #[test]
    fn an_idle_writer_writes_the_header_alone() {
        let dir = Dir::new("idle");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        w.tick(t0 + FLUSH_EVERY * 3);
        assert_eq!(size(&path), head_len());
        assert_eq!(std::fs::read(&path).expect("read"), w.files.head);
        assert!(seqs(&path).is_empty());
    }

    #[test]
    fn the_buffer_is_written_when_it_reaches_flush_bytes() {
        let dir = Dir::new("bytes");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        // The copy that takes the buffer to FLUSH_BYTES or past (the header
        // went out when the file opened).
        let n = (FLUSH_BYTES as u64).div_ceil(EPB1500);
        let t1 = t0 + FLUSH_EVERY / 2;
        for i in 1..n {
            feed(&mut w, &q, 1500, i as u8, t1);
        }
        assert_eq!(
            size(&path),
            head_len(),
            "{} bytes buffered",
            (n - 1) * EPB1500
        );
        assert_eq!(q.in_flight.load(Ordering::Relaxed), n - 1);
        feed(&mut w, &q, 1500, n as u8, t1);
        assert_eq!(size(&path), head_len() + n * EPB1500);
        assert_eq!(sent(&q), (n, n * 1500));
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        // That write restarted the FLUSH_EVERY clock.
        feed(&mut w, &q, 60, 0, t1);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(
            size(&path),
            head_len() + n * EPB1500,
            "written at t1, not t0"
        );
        w.tick(t1 + FLUSH_EVERY);
        assert_eq!(size(&path), head_len() + n * EPB1500 + EPB60);
    }

    #[test]
    fn rotate_size_is_reached_exactly_and_never_passed() {
        let dir = Dir::new("rsize");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + 3 * EPB60);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        for seq in 1..=4 {
            feed(&mut w, &q, 60, seq, t0);
        }
        // The fourth copy closed the first file, written whole.
        assert_eq!(
            listing(&path),
            [(1, head_len() + 3 * EPB60), (2, head_len())],
            "rotated before the fourth copy"
        );
        for seq in 5..=7 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.finish(t0);
        assert_eq!(
            listing(&path),
            [
                (1, head_len() + 3 * EPB60),
                (2, head_len() + 3 * EPB60),
                (3, head_len() + EPB60)
            ]
        );
        assert_eq!(seqs(&numbered(&path, 1)), [1, 2, 3]);
        assert_eq!(seqs(&numbered(&path, 2)), [4, 5, 6]);
        assert_eq!(seqs(&numbered(&path, 3)), [7]);
        assert_eq!(sent(&q), (7, 420));
    }

    #[test]
    fn a_copy_larger_than_rotate_size_gets_a_file_of_its_own() {
        let dir = Dir::new("rsmall");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(100);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        for seq in 1..=3 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.finish(t0);
        let one = head_len() + EPB60;
        assert_eq!(listing(&path), [(1, one), (2, one), (3, one)]);
        assert_eq!(seqs(&numbered(&path, 3)), [3]);
    }

    /// A writer whose wall clock reads `wall_ns` (Unix time) at `t0`.
    fn writer_at<'q>(s: PcapngSpec, q: &'q TargetQueue, t0: Instant, wall_ns: u64) -> Writer<'q> {
        let mut files = Files::new(s, one_source());
        files.wall = Box::new(move |i| wall_ns + i.duration_since(t0).as_nanos() as u64);
        Writer::new(files, q, t0)
    }

    /// 2026-12-03 17:00:00 UTC, an hour's edge (and a minute's).
    const ON_THE_HOUR: u64 = 1_796_317_200 * 1_000_000_000;

    #[test]
    fn until_edge_is_the_next_multiple_of_the_interval_since_the_epoch() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            until_edge(ON_THE_HOUR, hour),
            hour,
            "on an edge: a whole interval"
        );
        assert_eq!(
            until_edge(ON_THE_HOUR + 1, hour),
            hour - Duration::from_nanos(1)
        );
        assert_eq!(until_edge(ON_THE_HOUR - 1, hour), Duration::from_nanos(1));
        let ten = Duration::from_secs(600);
        let at = ON_THE_HOUR + 25 * 60 * 1_000_000_000; // 17:25
        assert_eq!(
            until_edge(at, ten),
            Duration::from_secs(5 * 60),
            "17:30 next"
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(
            until_edge(ON_THE_HOUR, day),
            Duration::from_secs(7 * 3600),
            "00:00 UTC next"
        );
    }

    /// The system's wall clock is read at the instant asked for, not at
    /// the call: an instant 10 s ago reads 10 s ago (a stale "now" must
    /// not put an edge late, or past the one that was next then).
    #[test]
    fn the_system_wall_clock_is_read_at_the_instant_asked() {
        let unix = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
        };
        let ago = Duration::from_secs(10);
        // Read in this order, a slow machine only widens the window.
        let before = unix();
        let at = Instant::now().checked_sub(ago).expect("up 10 s");
        let got = Duration::from_nanos(system_wall(at));
        let after = unix();
        let slack = Duration::from_millis(100);
        assert!(
            got + ago + slack >= before && got + ago <= after + slack,
            "{got:?} read at {before:?}..{after:?}"
        );
    }

    #[test]
    fn rotate_interval_cuts_files_at_the_wall_clocks_edges_and_idle_files_stay_open() {
        let dir = Dir::new("rint");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let ns = Duration::from_nanos(1);
        let mut s = spec(&path);
        s.rotate_interval = Some(min);
        // Started 20 s past a minute: the first file ends at the minute
        // (closed EDGE_GRACE later, when no copy stamped past it came).
        let mut w = writer_at(s, &q, t0, ON_THE_HOUR + 20_000_000_000);
        let edge = t0 + Duration::from_secs(40);
        feed(&mut w, &q, 60, 1, t0);
        w.tick(edge + EDGE_GRACE - ns);
        assert_eq!(
            listing(&path),
            [(1, head_len() + EPB60)],
            "written, not rotated"
        );
        w.tick(edge + EDGE_GRACE);
        assert_eq!(listing(&path), [(1, head_len() + EPB60), (2, head_len())]);
        // The second file runs from edge to edge: a whole minute.
        let t1 = edge;
        feed(&mut w, &q, 60, 2, t1 + Duration::from_secs(1));
        w.tick(t1 + min + EDGE_GRACE - ns);
        assert_eq!(
            listing(&path),
            [(1, head_len() + EPB60), (2, head_len() + EPB60)]
        );
        w.tick(t1 + min + EDGE_GRACE);
        // A minute without a copy: the third file holds none at its edge and
        // stays open for the next (no header-only file, no gap).
        w.tick(t1 + 2 * min + EDGE_GRACE);
        w.finish(t1 + 2 * min + EDGE_GRACE);
        assert_eq!(
            listing(&path),
            [
                (1, head_len() + EPB60),
                (2, head_len() + EPB60),
                (3, head_len())
            ]
        );
        assert_eq!(seqs(&numbered(&path, 2)), [2]);
        assert_eq!(sent(&q), (2, 120));
    }

    /// Files split where the copies' own time stamps cross the edge: a copy
    /// stamped at the edge starts the next file even before the writer's
    /// clock says so, one stamped a moment before stays in the file.
    #[test]
    fn a_copy_stamped_at_the_edge_starts_the_next_file() {
        let dir = Dir::new("rstamp");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_interval = Some(Duration::from_secs(60));
        let mut w = writer_at(s, &q, t0, ON_THE_HOUR);
        let edge_ns = ON_THE_HOUR + 60_000_000_000;
        let stamped = |w: &mut Writer<'_>, seq: u8, ts: u64| {
            let p = packet(&q, 60, seq, |f| f.tstamp_ns = ts);
            w.take(p, t0 + Duration::from_secs(59));
        };
        stamped(&mut w, 1, edge_ns - 1);
        stamped(&mut w, 2, edge_ns);
        // Ahead of the wall clock (59 s): the new file's edge is the next one.
        stamped(&mut w, 3, edge_ns + 1);
        w.finish(t0 + Duration::from_secs(59));
        assert_eq!(
            listing(&path),
            [(1, head_len() + EPB60), (2, head_len() + 2 * EPB60)]
        );
        assert_eq!(seqs(&numbered(&path, 2)), [2, 3]);
    }

    /// A file opened at an edge the copies reached ahead of the writer's
    /// clock ends at its own edge by the wall clock, a whole interval after
    /// the one reached, not an interval after the moment it opened.
    #[test]
    fn a_file_opened_ahead_of_the_wall_clock_ends_at_its_edge() {
        let dir = Dir::new("rahead");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let (sec, ns) = (Duration::from_secs(1), Duration::from_nanos(1));
        let mut s = spec(&path);
        s.rotate_interval = Some(60 * sec);
        let mut w = writer_at(s, &q, t0, ON_THE_HOUR);
        let stamped = |w: &mut Writer<'_>, seq: u8, ts: u64| {
            let p = packet(&q, 60, seq, |f| f.tstamp_ns = ts);
            w.take(p, t0 + 59 * sec);
        };
        stamped(&mut w, 1, ON_THE_HOUR + 1);
        // Stamped at the 60 s edge while the wall clock reads 59 s: file 2
        // opens, and ends at 120 s.
        stamped(&mut w, 2, ON_THE_HOUR + 60_000_000_000);
        let one = head_len() + EPB60;
        w.tick(t0 + 120 * sec + EDGE_GRACE - ns);
        assert_eq!(listing(&path), [(1, one), (2, one)]);
        w.tick(t0 + 120 * sec + EDGE_GRACE);
        w.finish(t0 + 120 * sec + EDGE_GRACE);
        assert_eq!(listing(&path), [(1, one), (2, one), (3, head_len())]);
    }

    /// A file opened between two edges (cut by `rotate_size`, or after an
    /// edge the writer saw late) still ends at the next edge: files never
    /// span one.
    #[test]
    fn a_file_started_between_edges_ends_at_the_next_edge() {
        let dir = Dir::new("redge");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let sec = Duration::from_secs(1);
        let ns = Duration::from_nanos(1);
        let mut s = spec(&path);
        s.rotate_interval = Some(min);
        s.rotate_size = Some(head_len() + 2 * EPB60);
        // Opened on an edge: the first file runs the whole minute.
        let mut w = writer_at(s, &q, t0, ON_THE_HOUR);
        for seq in 1..=3 {
            feed(&mut w, &q, 60, seq, t0 + 10 * sec);
        }
        w.tick(t0 + min + EDGE_GRACE - ns);
        let two = head_len() + 2 * EPB60;
        let one = head_len() + EPB60;
        assert_eq!(listing(&path), [(1, two), (2, one)], "cut by size at 10 s");
        w.tick(t0 + min + EDGE_GRACE);
        assert_eq!(
            listing(&path),
            [(1, two), (2, one), (3, head_len())],
            "file 2 ends at the edge, 50 s after it opened"
        );
        // Looked 30 s past the next edge: file 3 holds nothing and stays;
        // its edge is the one after (180 s).
        w.tick(t0 + 150 * sec);
        feed(&mut w, &q, 60, 4, t0 + 160 * sec);
        w.tick(t0 + 180 * sec + EDGE_GRACE - ns);
        assert_eq!(listing(&path), [(1, two), (2, one), (3, one)]);
        w.tick(t0 + 180 * sec + EDGE_GRACE);
        w.finish(t0 + 180 * sec + EDGE_GRACE);
        assert_eq!(
            listing(&path),
            [(1, two), (2, one), (3, one), (4, head_len())]
        );
        assert_eq!(sent(&q).0, 4);
    }

    #[test]
    fn keep_holds_after_every_copy() {
        let dir = Dir::new("keep");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(100);
        s.keep = Some(2);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        for seq in 1..=6 {
            feed(&mut w, &q, 60, seq, t0);
            let files = listing(&path);
            assert!(files.len() <= 2, "after copy {seq}: {files:?}");
        }
        w.finish(t0);
        let one = head_len() + EPB60;
        assert_eq!(listing(&path), [(5, one), (6, one)]);
        assert_eq!(seqs(&numbered(&path, 5)), [5]);
        assert_eq!(sent(&q).0, 6);
    }

    /// max_total_size with 1,500-byte copies and files of three: the
    /// target's files, the one being written included, never total more
    /// than the budget after any copy, and the newest are kept.
    #[test]
    fn max_total_size_holds_after_every_copy() {
        let dir = Dir::new("budget");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let file = head_len() + 3 * EPB1500;
        let mut s = spec(&path);
        s.rotate_size = Some(file);
        s.max_total_size = Some(2 * file + EPB1500);
        let max = 2 * file + EPB1500;
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        for seq in 1..=20u8 {
            feed(&mut w, &q, 1500, seq, t0);
            // Write at once, as if FLUSH_EVERY had passed.
            w.tick(t0 + FLUSH_EVERY * u32::from(seq));
            let total: u64 = listing(&path).iter().map(|f| f.1).sum();
            assert!(total <= max, "after copy {seq}: {:?}", listing(&path));
            assert_eq!(w.files.reaper.pending(), 0, "deleted files' space is back");
        }
        w.finish(t0 + FLUSH_EVERY * 30);
        // Copies 1-18 filled files 1-6, copies 19-20 are in file 7: the
        // budget keeps file 6 and 7 (3 + 2 blocks) but not 5.
        assert_eq!(listing(&path), [(6, file), (7, head_len() + 2 * EPB1500)]);
        assert_eq!(seqs(&numbered(&path, 7)), [19, 20]);
        assert_eq!(sent(&q).0, 20);
        assert_eq!(q.counters.dropped(TargetDrop::TooBig), 0);
    }

    /// A deleted file's space counts until the reaper has closed it:
    /// `make_room` waits for it only when that is what stands in the way.
    #[test]
    fn the_budget_waits_for_deleted_files_only_when_it_must() {
        let dir = Dir::new("reap");
        let mut s = spec(&dir.0.join("c.pcapng"));
        s.max_total_size = Some(1000);
        let mut files = Files::new(s, one_source());
        let pending = files.reaper.pending.clone();
        let release_after = |ms: u64| {
            let pending = pending.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                *lock(&pending.0) = 0;
                pending.1.notify_all();
            })
        };
        // 100 written + 900 on their way back = 1,000: it fits, no wait.
        *lock(&pending.0) = 900;
        let later = release_after(50);
        assert!(files.make_room(100));
        assert_eq!(files.reaper.pending(), 900, "returned without waiting");
        later.join().expect("release");
        // 101 + 900: waits until the space is back.
        *lock(&pending.0) = 900;
        let later = release_after(20);
        assert!(files.make_room(101));
        assert_eq!(files.reaper.pending(), 0, "waited for the reaper");
        later.join().expect("release");
        // Over the budget on its own: false, nothing to delete.
        assert!(!files.make_room(1001));
    }

    /// A deleted file goes from the directory at once and its descriptor
    /// is closed by the reaper; its bytes are pending until then.
    #[test]
    fn deleted_files_are_closed_by_the_reaper() {
        let dir = Dir::new("reaper");
        let path = dir.0.join("c.pcapng");
        for seq in 1..=3 {
            std::fs::write(numbered(&path, seq), capture_bytes(2)).expect("write");
        }
        let one = capture_bytes(2).len() as u64;
        let mut s = spec(&path);
        s.rotate_size = Some(1 << 20);
        s.max_total_size = Some(2 * one);
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let worker = std::thread::spawn(move || {
            let mut files = Files::new(s, one_source());
            // Three files of `one` and a new empty one: 1 must go, and the
            // budget waits for its space (2 * one + pending one > max).
            files.open_next(Instant::now()).expect("open");
            let after_open = files.reaper.pending();
            assert!(files.make_room(0));
            d.store(true, Ordering::Release);
            (after_open, files.reaper.pending())
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !worker.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the writer waits for a space that never comes back"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (after_open, after) = worker.join().expect("files");
        assert!(done.load(Ordering::Acquire));
        assert_eq!((after_open, after), (0, 0));
        assert_eq!(
            rotated_files(&path).iter().map(|f| f.0).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        // A reaper closes what it is given and counts it back.
        let mut r = Reaper::default();
        let f = File::open(numbered(&path, 2)).expect("open");
        r.close(f, 123);
        r.wait();
        assert_eq!(r.pending(), 0);
        let f = File::open(numbered(&path, 3)).expect("open");
        r.close(f, 7);
        drop(r);
    }

    /// Waits for `f` on a thread of its own, failing after 5 s rather
    /// than hanging.
    fn within_5s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let t = std::thread::spawn(f);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "{what}: still waiting after 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().expect(what)
    }

    #[test]
    fn a_deleted_file_is_pending_until_the_reaper_has_closed_it() {
        let dir = Dir::new("pending");
        let open = |name: &str| {
            let p = dir.0.join(name);
            std::fs::write(&p, b"x").expect("write");
            File::open(&p).expect("open")
        };
        // A reaper thread held at a gate until the test has looked (at most
        // 5 s, so that a failed assertion, whose unwinding joins it, ends).
        let (tx, rx) = mpsc::channel::<Deleted>();
        let pending: Arc<(Mutex<u64>, Condvar)> = Arc::default();
        let (gate, gate_rx) = mpsc::channel::<()>();
        let p2 = pending.clone();
        let handle = std::thread::spawn(move || {
            let _ = gate_rx.recv_timeout(Duration::from_secs(5));
            reap(rx, &p2);
        });
        let mut r = Reaper {
            thread: Some((tx, handle)),
            pending,
        };
        r.close(open("a"), 123);
        r.close(open("b"), 7);
        assert_eq!(r.pending(), 130);
        gate.send(()).expect("the reaper waits at the gate");
        let left = within_5s("the reaper", move || {
            r.wait();
            r.pending()
        });
        assert_eq!(left, 0);
        // A reaper whose thread is gone closes here and counts nothing.
        let (tx, rx) = mpsc::channel::<Deleted>();
        drop(rx);
        let mut r = Reaper {
            thread: Some((tx, std::thread::spawn(|| {}))),
            pending: Arc::default(),
        };
        r.close(open("c"), 50);
        assert_eq!(r.pending(), 0);
    }

    /// Old files are deleted oldest first until the budget holds, and a
    /// total of exactly `max_total_size` holds.
    #[test]
    fn make_room_deletes_the_oldest_until_exactly_the_budget() {
        let dir = Dir::new("room");
        let mut s = spec(&dir.0.join("c.pcapng"));
        s.max_total_size = Some(1000);
        let mut files = Files::new(s, one_source());
        files.old = [("a", 400), ("b", 500)]
            .into_iter()
            .map(|(n, len)| {
                let p = dir.0.join(n);
                File::create(&p).and_then(|f| f.set_len(len)).expect("file");
                (p, len)
            })
            .collect();
        assert!(files.make_room(100));
        assert_eq!(files.old.len(), 2, "400 + 500 + 100 fit 1,000");
        assert!(files.make_room(101));
        assert_eq!(files.old, [(dir.0.join("b"), 500)]);
        assert_eq!(files.deleted, (1, 400));
        assert!(files.make_room(500));
        assert_eq!(files.old.len(), 1);
        assert!(!files.make_room(1001));
        assert!(files.old.is_empty());
        assert!(files.make_room(0));
        assert_eq!(files.deleted, (2, 900));
        // No budget: nothing is deleted.
        files.spec.max_total_size = None;
        files.old.push_back((dir.0.join("c"), u64::MAX / 2));
        assert!(files.make_room(u64::MAX / 2));
        assert_eq!(files.old.len(), 1);
    }

    /// Moves a capture directory away: no file can be opened in it while
    /// the files open in it are written on. Returns where it went.
    fn block(dir: &Path) -> PathBuf {
        let away = dir.with_extension("away");
        std::fs::rename(dir, &away).expect("move the directory away");
        away
    }

    fn unblock(away: &Path, dir: &Path) {
        std::fs::rename(away, dir).expect("move the directory back");
    }

    /// A name the next rotated file would take, taken by a file this run
    /// did not write (a person's file, a symbolic link to a file elsewhere),
    /// is skipped and left alone: never truncated, never written through.
    #[test]
    fn a_taken_next_name_is_skipped_and_left_alone() {
        let dir = Dir::new("taken");
        let path = dir.0.join("c.pcapng");
        let victim = dir.0.join("victim.txt");
        std::fs::write(&victim, b"precious").expect("write");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + EPB60);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        std::fs::write(numbered(&path, 2), b"a person's notes").expect("write");
        std::os::unix::fs::symlink(&victim, numbered(&path, 3)).expect("symlink");
        for seq in 1..=2 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.finish(t0);
        assert_eq!(seqs(&numbered(&path, 1)), [1]);
        assert_eq!(seqs(&numbered(&path, 4)), [2]);
        assert_eq!(
            std::fs::read(numbered(&path, 2)).expect("read"),
            b"a person's notes"
        );
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert!(std::fs::symlink_metadata(numbered(&path, 3))
            .expect("the link")
            .is_symlink());
        assert_eq!(sent(&q).0, 2);
    }

    /// When the next file cannot be opened (here its directory is moved
    /// away for a while), the current one is written on past `rotate_size`
    /// rather than lose copies; the next is tried again a second later, and
    /// then taken.
    #[test]
    fn a_next_file_that_cannot_be_opened_leaves_the_current_one_written_on() {
        let dir = Dir::new("noopen");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + EPB60);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        let away = block(&dir.0);
        for seq in 1..=3 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.flush(t0);
        assert_eq!(seqs(&numbered(&away.join("c.pcapng"), 1)), [1, 2, 3]);
        assert_eq!(sent(&q).0, 3);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 0);
        assert!(q.snapshot().up, "writing goes on");
        // Not tried again within the second (nor at every copy); then the
        // way is clear, and the clock tries again.
        unblock(&away, &dir.0);
        let soon = t0 + Duration::from_millis(900);
        feed(&mut w, &q, 60, 4, soon);
        w.tick(soon);
        assert!(!numbered(&path, 2).exists(), "tried again too soon");
        w.tick(t0 + RETRY_OPEN);
        feed(&mut w, &q, 60, 5, t0 + RETRY_OPEN);
        w.finish(t0 + RETRY_OPEN);
        assert_eq!(seqs(&numbered(&path, 1)), [1, 2, 3, 4]);
        assert_eq!(seqs(&numbered(&path, 2)), [5]);
        assert_eq!(sent(&q).0, 5);
    }

    /// Under `max_total_size` a file is not written on past its limit while
    /// the next cannot be opened (grown toward the budget it would have
    /// every older capture deleted, then go whole itself): the copies past
    /// it are counted `disk_full` and the target is down until the next
    /// opens.
    #[test]
    fn under_a_budget_a_next_file_that_cannot_be_opened_holds_writing_back() {
        let dir = Dir::new("noopen-budget");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + EPB60);
        s.max_total_size = Some(8 * (head_len() + EPB60));
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        let away = block(&dir.0);
        for seq in 1..=3 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(seqs(&numbered(&away.join("c.pcapng"), 1)), [1]);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 2);
        assert!(!q.snapshot().up, "held back");
        unblock(&away, &dir.0);
        w.tick(t0 + RETRY_OPEN);
        assert!(!q.snapshot().up, "not a second yet");
        // Up a second after the next file opened, with no copy since.
        w.tick(t0 + RETRY_OPEN + Hold::RESUMED);
        assert!(q.snapshot().up, "writing again");
        feed(&mut w, &q, 60, 4, t0 + RETRY_OPEN + Hold::RESUMED);
        w.finish(t0 + RETRY_OPEN + Hold::RESUMED);
        assert_eq!(seqs(&numbered(&path, 2)), [4]);
        assert_eq!(sent(&q).0, 2);
    }

    /// A `rotate_interval` edge whose next file cannot be opened is tried
    /// again a second later, not at the next edge (a day later for "1d").
    #[test]
    fn an_edge_whose_next_file_cannot_be_opened_is_tried_again_a_second_later() {
        let dir = Dir::new("noopen-edge");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_interval = Some(Duration::from_secs(86_400));
        let mut files = Files::new(s, one_source());
        // The wall clock a second before midnight UTC at t0.
        const DAY: u64 = 86_400 * 1_000_000_000;
        let wall0 = 20_000 * DAY - 1_000_000_000;
        files.wall = Box::new(move |at| wall0 + at.saturating_duration_since(t0).as_nanos() as u64);
        let mut w = Writer::new(files, &q, t0);
        let away = block(&dir.0);
        w.take(packet(&q, 60, 1, |f| f.tstamp_ns = wall0), t0);
        let edge = t0 + Duration::from_secs(1) + EDGE_GRACE;
        w.tick(edge);
        assert!(!numbered(&path, 2).is_file(), "cannot be opened yet");
        unblock(&away, &dir.0);
        w.tick(edge + RETRY_OPEN);
        assert!(numbered(&path, 2).is_file(), "tried again a second later");
        w.take(
            packet(&q, 60, 2, |f| f.tstamp_ns = wall0 + 2_000_000_000),
            edge + RETRY_OPEN,
        );
        w.finish(edge + RETRY_OPEN);
        assert_eq!(seqs(&numbered(&path, 1)), [1]);
        assert_eq!(seqs(&numbered(&path, 2)), [2]);
    }

    /// A file may take the whole budget, to the byte.
    #[test]
    fn a_file_may_reach_max_total_size_exactly() {
        let dir = Dir::new("exact");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(1 << 20);
        s.max_total_size = Some(head_len() + 2 * EPB60);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        feed(&mut w, &q, 60, 2, t0);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(listing(&path), [(1, head_len() + 2 * EPB60)]);
        // The third goes to a new file, and the first makes room for it.
        feed(&mut w, &q, 60, 3, t0 + FLUSH_EVERY);
        w.finish(t0 + FLUSH_EVERY);
        assert_eq!(listing(&path), [(2, head_len() + EPB60)]);
        assert_eq!(seqs(&numbered(&path, 2)), [3]);
        assert_eq!(sent(&q).0, 3);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 0);
        assert_eq!(q.counters.dropped(TargetDrop::TooBig), 0);
    }

    /// Under a budget without rotate_size, a file holds a quarter of it
    /// at most: deleting the oldest never takes more than that.
    #[test]
    fn without_rotate_size_a_file_takes_a_quarter_of_the_budget() {
        let dir = Dir::new("quarter");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_interval = Some(Duration::from_secs(3600));
        s.max_total_size = Some(4 * (head_len() + 2 * EPB60));
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        for seq in 1..=5 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.finish(t0);
        let quarter = head_len() + 2 * EPB60;
        assert_eq!(
            listing(&path),
            [(1, quarter), (2, quarter), (3, head_len() + EPB60)]
        );
        assert_eq!(sent(&q).0, 5);
    }

    /// A target that does not rotate never writes over its file: a restart
    /// (or a reload that restarts it) goes on after the last whole block
    /// with a new section, cutting half a block a killed write left; a file
    /// that is not such a capture is left alone and named. (A reload wiped
    /// 3,000 copies this way in a new-user trial.)
    #[test]
    fn a_file_that_does_not_rotate_is_gone_on_with_never_written_over() {
        let dir = Dir::new("goon");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let run = |seqs: std::ops::RangeInclusive<u8>| {
            let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
            for seq in seqs {
                feed(&mut w, &q, 60, seq, t0);
            }
            w.finish(t0);
        };
        run(1..=2);
        let first = size(&path);
        assert_eq!(first, head_len() + 2 * EPB60);
        run(3..=4);
        assert_eq!(size(&path), 2 * (head_len() + 2 * EPB60), "two sections");
        assert_eq!(seqs(&path), [1, 2, 3, 4]);
        // Half a block at the end (a write cut short): cut, then gone on.
        let mut bytes = std::fs::read(&path).expect("read");
        let whole = bytes.len();
        bytes.extend_from_slice(&[6, 0, 0, 0, 80, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).expect("write");
        run(5..=5);
        assert_eq!(size(&path), whole as u64 + head_len() + EPB60);
        assert_eq!(seqs(&path), [1, 2, 3, 4, 5]);
        // Not a capture: left alone, and the start says why.
        let other = dir.0.join("notes.pcapng");
        std::fs::write(&other, b"not a capture").expect("write");
        let e = check_goes_on(&other).expect_err("refused");
        assert!(e.to_string().contains("never writes over a file"), "{e}");
        assert_eq!(std::fs::read(&other).expect("read"), b"not a capture");
        assert!(check_goes_on(&path).is_ok());
        assert!(check_goes_on(&dir.0.join("none.pcapng")).is_ok());
    }

    /// A cut tail is cut away whatever its first bytes say: half a large
    /// block (longer than the new section written over it), a block header
    /// of 8 bytes (less than a block takes) or of a length not a multiple
    /// of 4. What follows the last whole block is the new section alone.
    #[test]
    fn a_cut_tail_is_cut_away_whatever_its_length_says() {
        let block =
            |words: &[u32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let unknown = 0x0bad;
        let mut half_a_block = block(&[EPB_TYPE, EPB1500 as u32]);
        half_a_block.resize(1000, 7);
        let cases: [(&str, Vec<u8>); 3] = [
            ("half a 1,544-byte block", half_a_block),
            ("a block of 8 bytes", block(&[unknown, 8])),
            (
                "a block of 14 bytes",
                [block(&[unknown, 14, 0]), vec![0, 0]].concat(),
            ),
        ];
        let q = queue();
        let t0 = Instant::now();
        for (i, (what, tail)) in cases.iter().enumerate() {
            let dir = Dir::new(&format!("cut{i}"));
            let path = dir.0.join("c.pcapng");
            let run = |seq: u8| {
                let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
                feed(&mut w, &q, 60, seq, t0);
                w.finish(t0);
            };
            run(1);
            let mut bytes = std::fs::read(&path).expect("read");
            bytes.extend_from_slice(tail);
            std::fs::write(&path, &bytes).expect("write");
            run(2);
            assert_eq!(size(&path), 2 * (head_len() + EPB60), "{what}");
            assert_eq!(seqs(&path), [1, 2], "{what}");
        }
    }

    /// A rotating target's newest file, which a run killed in a write left
    /// ending in half a block, is cut back to its last whole block at the
    /// next start (readers then take it whole); older files and files that
    /// are not captures are left as they are.
    #[test]
    fn the_newest_rotated_file_is_cut_back_to_whole_blocks_at_the_start() {
        let dir = Dir::new("torn");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let rotating = || PcapngSpec {
            rotate_size: Some(1 << 20),
            ..spec(&path)
        };
        let run = |seqs: std::ops::RangeInclusive<u8>| {
            let mut w = Writer::new(Files::new(rotating(), one_source()), &q, t0);
            for seq in seqs {
                feed(&mut w, &q, 60, seq, t0);
            }
            w.finish(t0);
        };
        run(1..=2);
        let torn = |seq: u64, tail: &[u8]| {
            let f = numbered(&path, seq);
            let mut bytes = std::fs::read(&f).expect("read");
            bytes.extend_from_slice(tail);
            std::fs::write(&f, &bytes).expect("write");
        };
        let whole = head_len() + 2 * EPB60;
        torn(1, &[6, 0, 0, 0, 80, 0, 0, 0, 1, 2]);
        run(3..=3);
        assert_eq!(size(&numbered(&path, 1)), whole, "cut back");
        assert_eq!(seqs(&numbered(&path, 1)), [1, 2]);
        assert_eq!(seqs(&numbered(&path, 2)), [3]);
        // Only the newest is read: an older torn file (from before this
        // check) stays as it is, as does a newest file that is no capture.
        torn(1, &[6, 0, 0, 0]);
        std::fs::write(numbered(&path, 3), b"not a capture at all").expect("write");
        run(4..=4);
        assert_eq!(size(&numbered(&path, 1)), whole + 4);
        assert_eq!(
            std::fs::read(numbered(&path, 3)).expect("read"),
            b"not a capture at all"
        );
        assert_eq!(seqs(&numbered(&path, 4)), [4]);
    }

    /// An empty file at the path (created, then the daemon killed before
    /// its header) is a capture to go on with from its start.
    #[test]
    fn an_empty_file_is_gone_on_with_from_its_start() {
        let dir = Dir::new("goon-empty");
        let path = dir.0.join("c.pcapng");
        std::fs::write(&path, b"").expect("touch");
        check_goes_on(&path).expect("an empty file is gone on with");
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        w.finish(t0);
        assert_eq!(size(&path), head_len() + EPB60);
        assert_eq!(seqs(&path), [1]);
    }

    /// A big-endian capture (another tool's) is not one this writer goes
    /// on with: its lengths read little-endian would cut it to nothing. It
    /// is left alone, at the start and when the file is opened.
    #[test]
    fn a_big_endian_capture_is_left_alone() {
        let shb = SectionHeaderBlock {
            endianness: Endianness::Big,
            ..Default::default()
        };
        let mut bw = PcapNgWriter::with_section_header(Vec::new(), shb).expect("memory");
        bw.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .expect("memory");
        bw.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(1),
            original_len: 60,
            data: Cow::Owned(vec![1; 60]),
            options: vec![],
        })
        .expect("memory");
        let big = bw.into_inner();
        let dir = Dir::new("goon-big");
        let path = dir.0.join("c.pcapng");
        std::fs::write(&path, &big).expect("write");
        let e = check_goes_on(&path).expect_err("refused");
        assert!(e.to_string().contains("never writes over a file"), "{e}");
        let mut files = Files::new(spec(&path), one_source());
        assert!(files.open_next(Instant::now()).is_err());
        assert_eq!(std::fs::read(&path).expect("read"), big, "left alone");
    }

    /// A FIFO is only written to, as before a target went on with its
    /// file: opened write-only (waiting for a reader), so that a reader
    /// that goes away fails the next write, counted `disk_full`, rather
    /// than the writer filling a pipe it holds the read end of itself.
    #[test]
    fn a_fifo_is_only_written_to() {
        use std::io::Read;
        let dir = Dir::new("fifo");
        let path = dir.0.join("c.pcapng");
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // Safety: `c` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // A reader that takes the header and goes away.
        let p = path.clone();
        let reader = std::thread::spawn(move || {
            let mut f = File::open(&p).expect("open the read end");
            let mut head = vec![0u8; head_len() as usize];
            f.read_exact(&mut head).expect("the header");
            head
        });
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        let head = reader.join().expect("reader");
        assert_eq!(head, header_blocks(&one_source()));
        feed(&mut w, &q, 60, 1, t0);
        w.finish(t0);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 1, "nobody reads");
        assert_eq!(sent(&q), (0, 0));
    }

    #[test]
    fn the_log_says_held_back_once_and_again_after_a_second_of_writes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = Hold::default();
        assert!(!h.wrote(t0), "never held: nothing to say");
        assert!(h.begin(), "held back: said");
        assert!(!h.wrote(t0), "going on: not yet");
        assert!(!h.begin(), "held back again 100 ms later: said already");
        assert!(!h.wrote(t0 + ms(200)));
        assert!(!h.wrote(t0 + ms(1199)));
        assert!(h.wrote(t0 + ms(1200)), "a second of writes: said");
        assert!(!h.wrote(t0 + ms(2000)), "said once");
        assert!(h.begin(), "a new hold is said");
    }

    #[test]
    fn free_space_is_what_df_shows_available_not_roots_reserve() {
        // Safety: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        st.f_frsize = 4096;
        st.f_blocks = 1000;
        st.f_bfree = 100;
        st.f_bavail = 50;
        assert_eq!(space(&st), (50 * 4096, 1000 * 4096));
    }

    #[test]
    fn min_free_is_the_space_left_after_the_write() {
        let (free, total) = (20_000, 1_000_500);
        assert!(!short_of_space(free, total, MinFree::Bytes(15_000), 5_000));
        assert!(short_of_space(free, total, MinFree::Bytes(15_000), 5_001));
        assert!(!short_of_space(free, total, MinFree::Bytes(20_000), 0));
        assert!(short_of_space(free, total, MinFree::Bytes(20_001), 0));
        // 10 permille of 1,000,500 bytes: 10,000 (whole thousandths).
        assert!(!short_of_space(free, total, MinFree::Permille(10), 10_000));
        assert!(short_of_space(free, total, MinFree::Permille(10), 10_001));
        assert!(!short_of_space(free, total, MinFree::Permille(0), u64::MAX));
        // The real file system: nobody has u64::MAX bytes free; everybody 0.
        let dir = Dir::new("statvfs");
        let p = dir.0.join("c.pcapng");
        assert!(below_min_free(&p, MinFree::Bytes(u64::MAX), 0));
        assert!(!below_min_free(&p, MinFree::Bytes(0), 0));
        assert!(below_min_free(&p, MinFree::Permille(1000), 1));
        // A file system that cannot be asked does not stop the writing.
        let gone = dir.0.join("no-such-dir").join("c.pcapng");
        assert!(!below_min_free(&gone, MinFree::Bytes(u64::MAX), 0));
    }

    #[test]
    fn below_min_free_the_copies_are_counted_disk_full_and_nothing_is_written() {
        let dir = Dir::new("minfree");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.min_free = Some(MinFree::Bytes(u64::MAX));
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        assert!(q.snapshot().up, "the header blocks went out");
        for seq in 1..=3 {
            feed(&mut w, &q, 60, seq, t0);
        }
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 3);
        assert!(!q.snapshot().up, "held back: down in stats and metrics");
        assert_eq!(
            q.in_flight.load(Ordering::Relaxed),
            0,
            "nothing left queued"
        );
        feed(&mut w, &q, 60, 4, t0 + FLUSH_EVERY);
        w.finish(t0 + FLUSH_EVERY);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 4);
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(
            (size(&path), sent(&q)),
            (head_len(), (0, 0)),
            "the header alone"
        );
        // With room, the copy goes out.
        w.files.spec.min_free = Some(MinFree::Bytes(0));
        feed(&mut w, &q, 60, 5, t0 + FLUSH_EVERY);
        w.finish(t0 + FLUSH_EVERY);
        assert_eq!(seqs(&path), [5]);
        assert_eq!(sent(&q), (1, 60));
        // Up again once writes have gone through for a second, as the log
        // says writing goes on again.
        assert!(!q.snapshot().up);
        let later = t0 + FLUSH_EVERY + Hold::RESUMED;
        feed(&mut w, &q, 60, 6, later);
        w.finish(later);
        assert!(q.snapshot().up, "writing again");
    }

    /// Copies held back by `min_free` start no new file: the file is not
    /// full, and a new one would only leave a header-only file and a gap
    /// in the numbers behind (it did, file after file, while writing was
    /// held back).
    #[test]
    fn below_min_free_the_file_is_not_rotated() {
        let dir = Dir::new("minfree-rot");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + 2 * EPB60);
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        w.tick(t0 + FLUSH_EVERY);
        w.files.spec.min_free = Some(MinFree::Bytes(u64::MAX));
        for seq in 2..=11 {
            feed(&mut w, &q, 60, seq, t0 + FLUSH_EVERY);
        }
        w.tick(t0 + 2 * FLUSH_EVERY);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 10);
        w.files.spec.min_free = None;
        feed(&mut w, &q, 60, 12, t0 + 2 * FLUSH_EVERY);
        w.finish(t0 + 2 * FLUSH_EVERY);
        assert_eq!(listing(&path), [(1, head_len() + 2 * EPB60)]);
        assert_eq!(seqs(&numbered(&path, 1)), [1, 12]);
        assert_eq!(sent(&q), (2, 120));
    }

    /// Held back (`min_free`) in a file with no packet yet, a copy too
    /// big to join it still starts no new file: the one there is left
    /// empty behind, and its number a gap.
    #[test]
    fn below_min_free_a_file_without_packets_is_not_rotated_either() {
        let dir = Dir::new("minfree-rot0");
        let path = dir.0.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut s = spec(&path);
        s.rotate_size = Some(head_len() + 2 * EPB60);
        s.min_free = Some(MinFree::Bytes(u64::MAX));
        let mut w = Writer::new(Files::new(s, one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        feed(&mut w, &q, 1500, 2, t0);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 2);
        w.files.spec.min_free = None;
        feed(&mut w, &q, 60, 3, t0 + FLUSH_EVERY);
        w.finish(t0 + FLUSH_EVERY);
        assert_eq!(listing(&path), [(1, head_len() + EPB60)]);
        assert_eq!(seqs(&numbered(&path, 1)), [3]);
    }

    #[test]
    fn without_a_file_copies_are_counted_disk_full_until_one_opens() {
        let dir = Dir::new("nofile");
        let sub = dir.0.join("later");
        let path = sub.join("c.pcapng");
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        feed(&mut w, &q, 60, 1, t0);
        feed(&mut w, &q, 60, 2, t0);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 2);
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        std::fs::create_dir(&sub).expect("mkdir");
        feed(&mut w, &q, 60, 3, t0 + FLUSH_EVERY);
        w.tick(t0 + 2 * FLUSH_EVERY);
        assert_eq!(seqs(&path), [3]);
        assert_eq!(size(&path), head_len() + EPB60);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 2);
        assert_eq!(sent(&q), (1, 60));
    }

    /// The thread's loop: nothing is written before the clock says so, a
    /// stop drains the queue (more than one batch) and writes it all.
    #[test]
    fn the_writer_thread_follows_its_clock_and_drains_the_queue_on_stop() {
        let dir = Dir::new("thread");
        let path = dir.0.join("c.pcapng");
        let q = Arc::new(queue());
        let stop = Arc::new(AtomicBool::new(false));
        let offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t0 = Instant::now();
        let files = Files::new(spec(&path), one_source());
        let (q2, stop2, off2) = (q.clone(), stop.clone(), offset.clone());
        let writer = std::thread::spawn(move || {
            let clock = move || t0 + Duration::from_nanos(off2.load(Ordering::Relaxed));
            run(files, &q2, &stop2, &clock);
        });
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // An empty queue does not end the loop.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!writer.is_finished());
        offer(&q, &[1u8; 60]);
        q.notify();
        wait("the copy is taken", &|| q.queued() == 0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(size(&path), head_len(), "the clock has not moved");
        offset.store(FLUSH_EVERY.as_nanos() as u64, Ordering::Relaxed);
        wait("written once FLUSH_EVERY passed", &|| {
            size(&path) > head_len()
        });
        // 3,000 copies (three batches), then the stop: all written.
        for i in 0..3000u32 {
            offer(&q, &[(i % 251) as u8; 60]);
        }
        stop.store(true, Ordering::Relaxed);
        writer.thread().unpark();
        wait("the writer returns", &|| writer.is_finished());
        writer.join().expect("writer");
        let got = seqs(&path);
        assert_eq!(got.len(), 3001);
        assert!(got[1..]
            .iter()
            .enumerate()
            .all(|(i, s)| *s == (i % 251) as u8));
        assert_eq!(sent(&q).0, 3001);
        assert_eq!((q.queued(), q.in_flight.load(Ordering::Relaxed)), (0, 0));
    }

    /// Set in the child process of the disk full test: its capture directory.
    const FSIZE_CHILD: &str = "MIRROR_PCAPNG_FSIZE_CHILD_DIR";

    /// Takes every `writev` as it comes, at most `most` bytes of it (a
    /// partial write beyond), and notes where each call ended.
    struct Gather {
        out: Vec<u8>,
        most: usize,
        ends: Vec<usize>,
        /// Fails the call that would take `out` past this many bytes.
        fail_at: Option<usize>,
    }

    impl Gather {
        fn new(most: usize) -> Gather {
            Gather {
                out: Vec::new(),
                most,
                ends: Vec::new(),
                fail_at: None,
            }
        }
    }

    impl Write for Gather {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[io::IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            assert!(bufs.len() <= IOV_MAX, "{} entries", bufs.len());
            let mut n = 0;
            for b in bufs {
                if n == self.most {
                    break;
                }
                let take = b.len().min(self.most - n);
                if self.fail_at.is_some_and(|f| self.out.len() + take > f) {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            self.ends.push(self.out.len());
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The first byte at which `a` and `b` differ (rather than printing them).
    fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
        (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
    }

    /// Where each block of a capture ends (panics on anything but whole,
    /// valid blocks).
    fn block_ends(bytes: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            at += len as usize;
            assert!(at <= bytes.len(), "a block past the end");
            ends.push(at);
        }
        ends
    }

    /// A `writev` interrupted by a signal before it wrote anything
    /// (`EINTR`) is made again, not taken for a failed write: every byte
    /// arrives once, in order, across the partial writes between.
    #[test]
    fn an_interrupted_write_is_made_again() {
        struct Interrupted {
            out: Vec<u8>,
            calls: usize,
        }
        impl Write for Interrupted {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.write_vectored(&[io::IoSlice::new(buf)])
            }
            // Every other call is interrupted; the others write 2 bytes.
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                self.calls += 1;
                if self.calls % 2 == 1 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let b = &bufs[0][..bufs[0].len().min(2)];
                self.out.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Interrupted {
            out: Vec::new(),
            calls: 0,
        };
        let mut iov = [io::IoSlice::new(b"abc"), io::IoSlice::new(b"defg")];
        write_all_vectored(&mut w, &mut iov).expect("written whole");
        assert_eq!(w.out, b"abcdefg");
        assert_eq!(w.calls, 8, "4 writes, each after an interrupted call");
    }

    /// Large copies are gathered from their slots, 511 to a `writev`
    /// (1,023 entries), small ones copied between them; each call ends on
    /// a block boundary, the bytes are those of the copies in order
    /// whatever size of partial writes the file takes, and every slot
    /// goes back to the queue.
    #[test]
    fn gathered_writes_end_on_block_boundaries_and_resume_after_partial_writes() {
        let q = TargetQueue::new("t", "pcapng", 2048, SNAPLEN, Oversize::Truncate)
            .expect("queue memory");
        let head = header_blocks(&one_source());
        // 1,200 copies: mostly 1,500 bytes, every seventh 60, a few at the
        // threshold and just below it; data says which copy it is.
        let len_of = |i: usize| match i % 7 {
            0 => 60,
            3 if i % 2 == 0 => IN_PLACE_MIN,
            3 => IN_PLACE_MIN - 1,
            _ => 1500,
        };
        let fill = |blocks: &mut Blocks| {
            for i in 0..1200usize {
                let p = packet(&q, len_of(i), (i % 251) as u8, |f| {
                    f.tstamp_ns = i as u64;
                    f.egress = i % 2 == 1;
                });
                if let Some(p) = blocks.push(p) {
                    q.recycle(p);
                }
            }
        };
        let mut blocks = Blocks::new(&head);
        fill(&mut blocks);
        let held = (0..1200).filter(|&i| len_of(i) >= IN_PLACE_MIN).count();
        assert_eq!(blocks.held(), held);
        // Reference: every block laid out by pcap-file.
        let shb = SectionHeaderBlock {
            endianness: Endianness::Little,
            ..Default::default()
        };
        let mut want = PcapNgWriter::with_section_header(Vec::new(), shb).expect("memory");
        want.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .expect("memory");
        let skip = want.get_ref().len();
        for i in 0..1200usize {
            let data = vec![(i % 251) as u8; len_of(i)];
            want.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(i as u64),
                original_len: data.len() as u32,
                data: Cow::Borrowed(&data),
                options: vec![EnhancedPacketOption::Flags(if i % 2 == 1 { 2 } else { 1 })],
            })
            .expect("memory");
        }
        let want = [&head[..], &want.get_ref()[skip..]].concat();
        assert_eq!(blocks.len(), want.len());

        let mut whole = Gather::new(usize::MAX);
        blocks.write_to(&mut whole).expect("written");
        assert!(
            whole.out == want,
            "differs from byte {:?}",
            first_difference(&whole.out, &want)
        );
        assert_eq!(
            whole.ends.len(),
            held.div_ceil((IOV_MAX - 1) / 2),
            "{:?}",
            whole.ends
        );
        let bounds = block_ends(&whole.out);
        for end in &whole.ends {
            assert!(
                bounds.contains(end),
                "a writev ended inside a block at {end}"
            );
        }
        for most in [7, 27, 28, 29, 1499, 1500, 1544, 100_000] {
            let mut part = Gather::new(most);
            blocks.write_to(&mut part).expect("written");
            assert!(
                part.out == want,
                "{most} bytes a call: differs from byte {:?}",
                first_difference(&part.out, &want)
            );
        }
        // A write that fails part-way says so; the caller cuts the file back.
        let mut full = Gather::new(4096);
        full.fail_at = Some(want.len() / 2);
        let e = blocks.write_to(&mut full).expect_err("no space");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(full.out.len() <= want.len() / 2);

        blocks.clear(&q);
        assert_eq!((blocks.held(), blocks.len()), (0, 0));
        for _ in 0..2048 {
            offer(&q, &[0; 60]);
        }
        assert_eq!(q.queued(), 2048, "every slot is back");
    }

    /// Copies taken through the lookahead are written in the queue's
    /// order, small and large mixed, each once; while the writer holds
    /// them they count as in flight, and none is left once written.
    #[test]
    fn the_lookahead_writes_every_copy_once_in_order_and_counts_them_in_flight() {
        let dir = Dir::new("ahead");
        let path = dir.0.join("c.pcapng");
        let q = TargetQueue::new("t", "pcapng", 64 + 16, SNAPLEN, Oversize::Truncate)
            .expect("queue memory");
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        for seq in 0..60u8 {
            let len = if seq % 3 == 0 {
                1500
            } else {
                60 + usize::from(seq)
            };
            let data: Vec<u8> = std::iter::once(seq)
                .chain(std::iter::repeat_n(7, len - 1))
                .collect();
            offer(&q, &data);
        }
        // Copies taken ahead count as in flight with the buffer's.
        for _ in 0..3 {
            w.ahead.push_back(q.pop_ready().expect("queued"));
        }
        w.publish_in_flight();
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 3);
        assert_eq!(q.queued() + 3, 60);
        assert_eq!(w.take_ready(t0), 60);
        assert_eq!(q.queued(), 0);
        assert!(w.ahead.is_empty());
        // Whatever the buffer still holds is in flight; the rest was written.
        let (sent_now, _) = sent(&q);
        assert_eq!(sent_now + q.in_flight.load(Ordering::Relaxed), 60);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!(seqs(&path), (0..60).collect::<Vec<u8>>());
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        let bytes: u64 = (0..60u64)
            .map(|s| if s % 3 == 0 { 1500 } else { 60 + s })
            .sum();
        assert_eq!(sent(&q), (60, bytes));
        // Nothing waits: nothing taken.
        assert_eq!(w.take_ready(t0 + FLUSH_EVERY), 0);
    }

    /// Copies held in their slots are written once they fill the slots the
    /// queue has beyond its `queue_size` (a quarter of it), before
    /// `FLUSH_BYTES`: `queue_size` copies still fit while it writes.
    #[test]
    fn a_quarter_of_the_queue_held_in_slots_is_written_at_once() {
        for (size, held) in [
            (1, 1),
            (3, 1),
            (4, 1),
            (7, 1),
            (64, 16),
            (4096, 1024),
            (4099, 1024),
        ] {
            let q = TargetQueue::new(
                "t",
                "pcapng",
                size + held_slots(size),
                64,
                Oversize::Truncate,
            )
            .expect("queue memory");
            let dir = Dir::new(&format!("held-{size}"));
            let w = Writer::new(
                Files::new(spec(&dir.0.join("c.pcapng")), one_source()),
                &q,
                Instant::now(),
            );
            // The buffer's held slots and the lookahead's beyond the copy
            // being written: the slots beyond `queue_size`.
            assert_eq!(
                (held_slots(size), w.max_held + w.ahead_max - 1),
                (held, held),
                "queue_size {size}"
            );
            assert_eq!(w.ahead_max, 1 + (held / 4).min(15), "queue_size {size}");
        }
        let dir = Dir::new("held");
        let path = dir.0.join("c.pcapng");
        let q = TargetQueue::new("t", "pcapng", 64 + 16, SNAPLEN, Oversize::Truncate)
            .expect("queue memory");
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        // 16 slots beyond 64: 12 held in the buffer, 4 ahead of the copy
        // being written.
        assert_eq!((w.max_held, w.ahead_max), (12, 5));
        for seq in 1..=11u8 {
            feed(&mut w, &q, 1500, seq, t0);
        }
        // Small copies are copied out: they hold no slot.
        feed(&mut w, &q, 60, 100, t0);
        assert_eq!((size(&path), w.blocks.held()), (head_len(), 11));
        feed(&mut w, &q, 1500, 12, t0);
        assert_eq!(size(&path), head_len() + 12 * EPB1500 + EPB60);
        assert_eq!(sent(&q), (13, 12 * 1500 + 60));
        assert_eq!(w.blocks.held(), 0);
        let mut want: Vec<u8> = (1..=11).collect();
        want.extend([100, 12]);
        assert_eq!(seqs(&path), want);
        // Every slot is free again: the queue takes 80 copies.
        for i in 0..80 {
            offer(&q, &[i; 60]);
        }
        assert_eq!(q.counters.dropped(TargetDrop::QueueFull), 0);
    }

    /// A full disk, as `RLIMIT_FSIZE` makes one (in a child process, the
    /// limit being per process): the write that fails is cut back to the
    /// last whole block, its copies are counted `disk_full` one by one, and
    /// writing resumes after the last whole block once there is room.
    #[test]
    fn a_full_disk_cuts_the_file_back_to_its_last_whole_block() {
        if let Some(dir) = std::env::var_os(FSIZE_CHILD) {
            return disk_full_child(Path::new(&dir));
        }
        let dir = Dir::new("fsize");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "target::pcapng::tests::a_full_disk_cuts_the_file_back_to_its_last_whole_block",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FSIZE_CHILD, &dir.0)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("disk full child: done"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn disk_full_child(dir: &Path) {
        let path = dir.join("c.pcapng");
        let whole = head_len() + 2 * EPB1500;
        let limit = |bytes: u64| {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            // Safety: a valid rlimit; SIG_IGN for SIGXFSZ makes the write fail with EFBIG instead of killing.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
        };
        // Room for the header, two blocks and 700 bytes of a third.
        limit(whole + 700);
        let q = queue();
        let t0 = Instant::now();
        let mut w = Writer::new(Files::new(spec(&path), one_source()), &q, t0);
        feed(&mut w, &q, 1500, 1, t0);
        feed(&mut w, &q, 1500, 2, t0);
        w.tick(t0 + FLUSH_EVERY);
        assert_eq!((size(&path), sent(&q)), (whole, (2, 3000)));
        for seq in 3..=5 {
            feed(&mut w, &q, 1500, seq, t0 + FLUSH_EVERY);
        }
        w.tick(t0 + 2 * FLUSH_EVERY);
        assert_eq!(size(&path), whole, "cut back to the last whole block");
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 3);
        assert_eq!(sent(&q), (2, 3000));
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        // Room again: the next copy goes right after the last whole block.
        limit(libc::RLIM_INFINITY);
        feed(&mut w, &q, 1500, 6, t0 + 2 * FLUSH_EVERY);
        w.finish(t0 + 2 * FLUSH_EVERY);
        assert_eq!(size(&path), whole + EPB1500);
        assert_eq!(seqs(&path), [1, 2, 6]);
        assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 3);
        println!("disk full child: done");
    }
}
