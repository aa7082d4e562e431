//! Per-frame cost of the pcapng writer thread (issue 19).
//!
//! `cargo bench -p mirror-user --bench pcapng_writer [-- --frames N --reps R --dir D]`
//!
//! For each frame size (60 and 1,500 bytes): fills a pcapng target's queue
//! with N copies, then lets the writer thread drain it into a file on a tmpfs
//! (`/dev/shm` unless `--dir`) and stop, as the daemon's does at the end of a
//! run. Prints, per size, the median over R runs of the wall time and of the
//! process CPU time (the writer thread is the only one running) per frame,
//! and the file's rate in Mpps. No root, no namespaces, no BPF: the figure
//! is the writer's own cost, the queue being filled before the clock starts.
//!
//! Then the same at 1,500 bytes with rotation (`rotate_size` 64 MiB,
//! `keep` 1: every rotation deletes a 64 MiB file), the main thread watching
//! the queue: the longest time the writer took nothing from it (median over
//! R runs). A stall longer than the queue lasts at line rate (4,096 copies:
//! 11 ms at 360 kpps) is lost copies, whatever the average.
//!
//! A plain `harness = false` binary rather than criterion: the crate has no
//! criterion setup (`cargo xtask bench` runs the span lab, `mirror-bench`),
//! and the figure wanted is one number per size from a fixed workload.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_user::config::PcapngSpec;
use mirror_user::target::{pcapng, Frame, TargetDrop};

fn cpu_time() -> Duration {
    // Safety: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One run: (wall ns/frame, CPU ns/frame), or with `rotate` (wall
/// ns/frame, longest stall in ms).
fn run(dir: &std::path::Path, size: usize, frames: usize, rotate: bool) -> (f64, f64) {
    let path = dir.join(format!("bench-{size}-{}.pcapng", std::process::id()));
    let spec = PcapngSpec {
        path: path.clone(),
        rotate_size: rotate.then_some(64 << 20),
        rotate_interval: None,
        keep: rotate.then_some(1),
        max_total_size: None,
        min_free: None,
    };
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let pcapng::Started {
        queue: q,
        handle: writer,
        ..
    } = pcapng::start(
        "bench",
        &spec,
        vec![("s".into(), "eth0".into())],
        frames as u32,
        None,
        started.clone(),
        stop.clone(),
    )
    .expect("start the writer");
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = i as u8;
    }
    for i in 0..frames {
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        q.offer(&Frame {
            data: &data,
            orig_len: size as u32,
            hash: 0,
            tstamp_ns: 1_700_000_000_000_000_000 + i as u64 * 1000,
            vni: 0,
            source: 0,
            egress: i % 2 == 1,
        });
    }
    assert_eq!(q.queued(), frames, "the queue holds every frame");
    let (t0, c0) = (Instant::now(), cpu_time());
    // Started, then stopping: the writer drains the queue, writes, returns.
    started.store(true, std::sync::atomic::Ordering::Release);
    stop.store(true, std::sync::atomic::Ordering::Release);
    writer.thread().unpark();
    let mut stall = Duration::ZERO;
    if rotate {
        let (mut last, mut since) = (q.queued(), Instant::now());
        while !writer.is_finished() {
            std::thread::sleep(Duration::from_micros(100));
            let now = q.queued();
            if now != last {
                stall = stall.max(since.elapsed());
                (last, since) = (now, Instant::now());
            }
        }
    }
    writer.join().expect("writer");
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    let sent = q
        .counters
        .sent_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sent, frames as u64, "every frame written");
    assert_eq!(q.counters.dropped(TargetDrop::DiskFull), 0);
    let _ = std::fs::remove_file(&path);
    for (_, p) in pcapng::rotated_files(&path) {
        let _ = std::fs::remove_file(p);
    }
    let wall = wall.as_nanos() as f64 / frames as f64;
    if rotate {
        (wall, stall.as_secs_f64() * 1e3)
    } else {
        (wall, cpu.as_nanos() as f64 / frames as f64)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut frames = 100_000usize;
    let mut reps = 5usize;
    let mut dir = PathBuf::from("/dev/shm");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => {
                frames = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--frames N")
            }
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps R"),
            "--dir" => dir = args.next().map(PathBuf::from).expect("--dir D"),
            // `cargo bench` passes `--bench`; other harness flags mean nothing here.
            _ => {}
        }
    }
    println!(
        "pcapng writer: {frames} frames a run, median of {reps} runs, file in {}",
        dir.display()
    );
    for size in [60usize, 1500] {
        let (walls, cpus): (Vec<f64>, Vec<f64>) =
            (0..reps).map(|_| run(&dir, size, frames, false)).unzip();
        let (wall, cpu) = (median(walls), median(cpus));
        println!(
            "{size:>5} B: {wall:8.1} ns/frame wall, {cpu:8.1} ns/frame CPU, {:.2} Mpps",
            1e3 / wall
        );
    }
    let (walls, stalls): (Vec<f64>, Vec<f64>) =
        (0..reps).map(|_| run(&dir, 1500, frames, true)).unzip();
    println!(
        " 1500 B, rotating (64 MiB, keep 1): {:8.1} ns/frame wall, longest stall {:.1} ms",
        median(walls),
        median(stalls)
    );
}
