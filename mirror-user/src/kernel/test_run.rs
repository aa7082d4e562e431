//! `BPF_PROG_TEST_RUN`: one frame through a loaded program, for the
//! kernel-table tests and the benchmarks. Not used by the daemon.

use std::os::fd::AsRawFd;

use super::meta::{read_meta, Meta};

/// Runs `frame` once through the tap program `prog` (BPF_PROG_TEST_RUN) and
/// returns the session the kernel chose, read from the XDP metadata it wrote
/// (`struct mirror_meta`), or `None` when the frame was filtered. For tests
/// and benchmarks: the program's counters count the run.
pub fn test_classify(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
) -> std::io::Result<Option<u16>> {
    Ok(test_run(prog, frame)?.map(|m| m.session))
}

/// Like [`test_classify`], with the whole metadata (flow hash, time stamp).
pub fn test_run(prog: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> std::io::Result<Option<Meta>> {
    let (_, mut out) = test_run_raw(prog, frame)?;
    // The output starts at data_meta: `struct mirror_meta` when the frame matched.
    let len = out.len();
    let meta_len = mirror_ebpf::limits::META_LEN;
    if len == frame.len() + meta_len && out[meta_len..len] == *frame {
        if let Some(m) = read_meta(&mut out[..meta_len]) {
            return Ok(Some(m));
        }
    }
    if len == frame.len() && out[..len] == *frame {
        return Ok(None);
    }
    Err(std::io::Error::other(format!(
        "unexpected test-run output: {len} bytes for a {}-byte frame",
        frame.len()
    )))
}

/// Runs `frame` once through any program (BPF_PROG_TEST_RUN) and returns its
/// return value and the frame as the program left it. For the copy-mode
/// programs, whose records then wait in [`SourceProgram::copies`].
pub fn test_run_raw(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // Safety: the buffers outlive the call and their sizes are passed with them.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    out.truncate(opts.data_size_out as usize);
    Ok((opts.retval, out))
}

/// What a tc program did in one [`test_run_skb`]: its return value, the frame
/// as it left it, and the skb's mark and priority after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkbRun {
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub mark: u32,
    pub priority: u32,
}

/// Runs `frame` once through tc program `prog` (BPF_PROG_TEST_RUN) with the
/// skb's `mark` and `priority` set, and `gso_segs` (more than 1: a GSO
/// super-frame); returns what the program left (copy mode's relay reads
/// mark and priority, and the frame must leave with its own).
pub fn test_run_skb(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    mark: u32,
    priority: u32,
    gso_segs: u32,
) -> std::io::Result<SkbRun> {
    let mut out = vec![0u8; frame.len() + 256];
    // `struct __sk_buff` (uapi bpf.h), which libbpf-sys does not export, as
    // u32 words: len, pkt_type, mark (2), queue_mapping, protocol,
    // vlan_present, vlan_tci, vlan_proto, priority (8), ..., then after
    // data_meta (35) the 8-byte flow_keys pointer (36-37), tstamp (38-39),
    // wire_len (40), gso_segs (41). The kernel takes a prefix of it in and
    // writes it whole out (room for it to grow).
    const MARK: usize = 2;
    const PRIORITY: usize = 8;
    const GSO_SEGS: usize = 41;
    let mut ctx_in = [0u32; GSO_SEGS + 1];
    ctx_in[MARK] = mark;
    ctx_in[PRIORITY] = priority;
    ctx_in[GSO_SEGS] = gso_segs;
    let mut ctx_out = [0u32; 128];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        ctx_in: ctx_in.as_ptr().cast(),
        ctx_size_in: std::mem::size_of_val(&ctx_in) as _,
        ctx_out: ctx_out.as_mut_ptr().cast(),
        ctx_size_out: std::mem::size_of_val(&ctx_out) as _,
        repeat: 1,
        ..Default::default()
    };
    // Safety: the buffers and contexts outlive the call and their sizes are
    // passed with them.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    out.truncate(opts.data_size_out as usize);
    Ok(SkbRun {
        verdict: opts.retval,
        frame: out,
        mark: ctx_out[MARK],
        priority: ctx_out[PRIORITY],
    })
}
