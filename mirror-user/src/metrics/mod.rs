//! The Prometheus endpoint (`[daemon] metrics = "127.0.0.1:9464"`): every
//! counter of `mirror stats --json`, with the process's own resource use,
//! in the Prometheus text format over HTTP (`GET /metrics`).
//!
//! [`encode`]: a snapshot as metric families, encoded by `prometheus-client`
//! (names, labels, HELP and TYPE lines); [`process`]: `/proc/self`;
//! [`http`]: the listener, served on the control plane's tokio runtime. It
//! reads the data plane's counters only through [`Engine::stats`], as the
//! control socket does; only `cli` uses it.

mod encode;
mod http;
mod process;

use std::sync::Arc;

pub use encode::{encode, CONTENT_TYPE};
pub use http::{bind, serve, Limits, Scrape};
pub use process::{parse_stat, ProcessStats};

use crate::dataplane::Engine;

/// What a scrape of the running daemon answers: the engine's counters at
/// this moment, and the process's. It holds the engine weakly, so that a
/// connection still open at SIGTERM never keeps the engine from its orderly
/// shutdown (a scrape then is a 500).
pub fn scrape(engine: &Arc<Engine>) -> Scrape {
    let engine = Arc::downgrade(engine);
    Arc::new(move || {
        let engine = engine.upgrade().ok_or("the daemon is stopping")?;
        let stats = engine
            .stats()
            .map_err(|e| format!("reading counters: {e:#}"))?;
        // Without /proc (never, on Linux) the counters are still worth serving.
        let process = ProcessStats::read().ok();
        encode(&stats, process.as_ref()).map_err(|e| format!("encoding: {e}"))
    })
}
