//! `mirror run -c FILE`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mirror_user::control::notify;
use mirror_user::dataplane::engine::Engine;
use mirror_user::privileges;
use tokio::signal::unix::{signal, SignalKind};

/// Set (to anything): `mirror run` starts even without the capabilities it
/// checks for, and fails where the kernel refuses. For measuring what each
/// capability is needed for (`tests/e2e_service.rs`); not for production.
pub const SKIP_CAPABILITY_CHECK: &str = "MIRROR_SKIP_CAPABILITY_CHECK";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn main(a: Args) -> Result<ExitCode> {
    limit_malloc_arenas();
    // The file first: its errors (at line:column, as `mirror check` gives
    // them) are worth reporting whoever runs it.
    let mut config = mirror_user::config::load(&a.config)?;
    for t in config.prune_unused_targets() {
        tracing::warn!("{t} is used by no session: not opened");
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    // Capabilities, not euid 0: root has them all, a service user may be
    // given exactly these (AmbientCapabilities=).
    let start_caps = privileges::needed_to_start(&config, privileges::memlock_unlimited());
    let missing = privileges::missing(&start_caps)?;
    if !missing.is_empty() {
        if std::env::var_os(SKIP_CAPABILITY_CHECK).is_none() {
            bail!("{}", privileges::refusal(&missing));
        }
        tracing::warn!(
            missing = %privileges::names(&missing),
            "{SKIP_CAPABILITY_CHECK} is set: starting without these capabilities"
        );
    }
    if let Some(cpus) = &config.daemon.cpus {
        // Before any thread starts: every thread inherits the mask.
        cpus.pin_current_thread().with_context(|| {
            format!(
                "cpus = \"{cpus}\": cannot run on these CPUs (are they online? this machine has {})",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            )
        })?;
        tracing::info!(%cpus, "running on the configured CPUs");
    }
    let control = config.daemon.control_socket.clone();
    let metrics = config.daemon.metrics;
    // The data plane runs on its own threads; tokio serves only the control plane.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control-plane runtime")?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let listener = mirror_user::control::bind(&control)?;
        // Removed however this block ends: a failed start leaves no socket.
        let _socket = mirror_user::control::SocketFile::new(&control);
        // Before anything is attached: a taken port fails the start cleanly.
        let metrics_listener = match metrics {
            Some(addr) => Some(mirror_user::metrics::bind(addr).await?),
            None => None,
        };
        // From here on no way past file permissions (root: CAP_DAC_OVERRIDE),
        // so pcapng directories are checked and files opened with the rights
        // rotation has later; once everything is attached, only what the
        // rest of the run needs.
        privileges::drop_file_overrides().context("dropping CAP_DAC_OVERRIDE before the start")?;
        privileges::threads_keep(&privileges::RUN);
        let engine = Arc::new(Engine::start(config)?);
        privileges::drop_to(&privileges::RUN).context("dropping capabilities after the start")?;
        if !privileges::wait_for_threads(std::time::Duration::from_secs(10)) {
            tracing::warn!("some engine threads had not dropped their capabilities after 10 s");
        }
        tracing::info!(
            kept = %privileges::names(&privileges::RUN),
            "dropped every capability but the ones reloads and live rule changes need"
        );
        // A source whose interface is deleted and created again is attached
        // to the new device.
        let watcher = Engine::watch_sources(&engine)?;
        let server = tokio::spawn(mirror_user::control::serve(
            listener,
            engine.clone(),
            a.config.clone(),
        ));
        let metrics_server = metrics_listener.map(|listener| {
            let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            if metrics.is_some_and(|a| !a.ip().is_loopback()) {
                tracing::warn!(
                    metrics = %addr,
                    "the metrics endpoint listens beyond this host: anyone who reaches it reads the counters"
                );
            }
            tracing::info!(metrics = %format!("http://{addr}/metrics"), "serving Prometheus metrics");
            tokio::spawn(mirror_user::metrics::serve(
                listener,
                mirror_user::metrics::scrape(&engine),
                mirror_user::metrics::Limits::default(),
            ))
        });
        tracing::info!(control = %control.display(), "mirror running");
        // Programs attached, targets open, the control socket accepting:
        // systemd (Type=notify) may now report the unit started.
        let running = format!("mirroring; control socket {}", control.display());
        notify::ready(&running);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    notify::reloading();
                    let (e, path) = (engine.clone(), a.config.clone());
                    let result = tokio::task::spawn_blocking(move || {
                        mirror_user::control::reload(&e, &path, "SIGHUP")
                    })
                    .await;
                    // Whatever the outcome (logged by `reload`), the daemon
                    // mirrors on: ready again, with the outcome in
                    // `systemctl status`.
                    match result {
                        Ok(Ok(_)) => notify::ready(&running),
                        Ok(Err(e)) => {
                            notify::ready(&format!(
                                "mirroring; last reload rejected, the running config stays: {e:#}"
                            ));
                        }
                        Err(e) => {
                            tracing::error!("SIGHUP: reload failed: {e}");
                            notify::ready(&format!("mirroring; last reload failed: {e}"));
                        }
                    }
                }
            }
        }
        notify::stopping();
        tracing::info!("stopping: detaching programs");
        server.abort();
        let _ = server.await;
        if let Some(m) = metrics_server {
            // Its connections hold the engine only weakly: none keeps it.
            m.abort();
            let _ = m.await;
        }
        engine.close();
        let _ = watcher.join();
        match Arc::try_unwrap(engine) {
            Ok(e) => e.shutdown(),
            Err(_) => tracing::warn!("control connections still open; detaching on exit"),
        }
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and each keeps what it freed: with some 30 threads the daemon's RSS grew
/// by a different 6 to 16 MiB from machine to machine after the first
/// reloads, then stayed. The data plane does not allocate per frame, so two
/// arenas cost nothing measurable (rule updates per second unchanged) and
/// keep the RSS some 15 MiB lower and flat. Set before any thread starts;
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // Safety: mallopt changes an allocator parameter; no other thread
        // runs yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}
