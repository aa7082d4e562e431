//! The daemon's side: the socket (mode 0600), one task per connection, and
//! each request run against the engine off the runtime's thread.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::one_line;
use super::protocol::{Reply, Request, MAX_REQUEST};
use crate::config;
use crate::dataplane::engine::Applied;
use crate::dataplane::Engine;
use crate::filter::rules;

/// Binds the control socket at `path` (mode 0600), refusing to take over the
/// socket of a daemon that still answers.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another mirror daemon answers on {}; stop it first, or set [daemon] control_socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // Created with no permissions for group/other from the first instant.
    // Safety: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = tokio::net::UnixListener::bind(path);
    // Safety: restores the previous mask.
    unsafe { libc::umask(old) };
    let listener =
        listener.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The control socket's file, removed when this is dropped (the daemon
/// stopping, or its start failing), if it is still the one [`bind`] made.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: Option<u64>,
}

impl SocketFile {
    pub fn new(path: &Path) -> SocketFile {
        use std::os::unix::fs::MetadataExt;
        SocketFile {
            path: path.to_path_buf(),
            inode: std::fs::metadata(path).ok().map(|m| m.ino()),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Another daemon may have replaced a socket it found dead: leave its.
        if std::fs::metadata(&self.path).ok().map(|m| m.ino()) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves requests until the listener is dropped. `config_path` is the
/// daemon's config file, re-read by `reload`.
pub async fn serve(listener: tokio::net::UnixListener, engine: Arc<Engine>, config_path: PathBuf) {
    let config_path = Arc::new(config_path);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        let config_path = config_path.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(rd);
            loop {
                // One request per line, read as bytes (at most MAX_REQUEST
                // and its newline), so that every malformed one gets a reply.
                let mut buf = Vec::new();
                match (&mut reader)
                    .take(MAX_REQUEST as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let ended = buf.last() == Some(&b'\n');
                if ended {
                    buf.pop();
                } else if buf.len() > MAX_REQUEST {
                    // The rest of the line cannot be told from the next
                    // request: say why, then close.
                    let reply = Reply::error(format!(
                        "request too long: more than {MAX_REQUEST} bytes without a newline; \
                         closing the connection"
                    ));
                    let _ = write_reply(&mut wr, &reply).await;
                    break;
                }
                let reply = match Request::decode(&buf) {
                    Err(why) => Reply::error(why),
                    Ok(req) => {
                        // Rule updates build maps and wait for an RCU grace
                        // period: off the runtime's thread.
                        let (e, p) = (engine.clone(), config_path.clone());
                        tokio::task::spawn_blocking(move || handle(req, &e, &p))
                            .await
                            .unwrap_or_else(|e| Reply::error(format!("internal error: {e}")))
                    }
                };
                if write_reply(&mut wr, &reply).await.is_err() || !ended {
                    break;
                }
            }
        });
    }
}

/// Writes `reply` as one JSON line.
async fn write_reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    wr.write_all(text.as_bytes()).await
}

/// Re-reads the config file and applies it (`reload`, SIGHUP): see
/// [`Engine::reload`].
pub fn reload(engine: &Engine, config_path: &Path, via: &str) -> Result<Applied> {
    let result = config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(|mut new| {
            // As at start: the running engine has only the targets sessions use.
            new.prune_unused_targets();
            engine.reload(new)
        });
    // Logged here, one line each, whoever asked (`via`).
    match &result {
        Ok(applied) => tracing::info!(
            config = %config_path.display(),
            rules = ?applied.rules,
            changes = %applied.summary(),
            "{via}: reloaded"
        ),
        Err(e) => tracing::error!(
            config = %config_path.display(),
            "{via}: reload rejected, the running config stays in force: {}",
            one_line(&format!("{e:#}"))
        ),
    }
    result
}

fn handle(req: Request, engine: &Engine, config_path: &Path) -> Reply {
    match req {
        Request::Stats => match engine.stats() {
            Ok(stats) => Reply {
                ok: true,
                stats: Some(stats),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("reading counters: {e:#}")),
        },
        Request::RulesList => match engine.live_config() {
            Ok(c) => Reply {
                ok: true,
                filters: Some(rules::list(&c)),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("{e:#}")),
        },
        Request::RulesAdd { filter, rule } => {
            let rule = match config::parse_rule(&rule, "rule") {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(filter, error = %e, "rules add rejected: the running rules stay");
                    return Reply::error(format!("{e}; the running rules stay in force"));
                }
            };
            let keys = rule.to_toml_keys();
            let f = filter.clone();
            let result = engine.update(move |c| Ok(rules::add(c, &f, rule)?));
            match &result {
                Ok(_) => tracing::info!(
                    filter,
                    rule = %keys,
                    "rules add: rule added live (the config file is unchanged)"
                ),
                Err(e) => tracing::warn!(
                    filter,
                    rule = %keys,
                    error = %format!("{e:#}"),
                    "rules add rejected: the running rules stay"
                ),
            }
            Reply::updated(result)
        }
        Request::RulesDelete {
            filter,
            number,
            direction,
        } => {
            let f = filter.clone();
            let result = engine.update(move |c| {
                rules::delete(c, &f, number, direction)?;
                Ok(())
            });
            match &result {
                Ok(_) => tracing::info!(
                    filter,
                    number,
                    %direction,
                    "rules delete: rule deleted live (the config file is unchanged)"
                ),
                Err(e) => tracing::warn!(
                    filter,
                    number,
                    %direction,
                    error = %format!("{e:#}"),
                    "rules delete rejected: the running rules stay"
                ),
            }
            Reply::updated(result)
        }
        Request::SetTime { time } => match engine.set_time(&time) {
            Ok(()) => Reply {
                ok: true,
                ..Default::default()
            },
            Err(e) => Reply::error(format!("{e:#}")),
        },
        Request::Reload => match reload(engine, config_path, "mirror reload") {
            Ok(applied) => Reply {
                changes: Some(applied.summary()),
                ..Reply::updated(Ok(applied.rules))
            },
            Err(e) => Reply::error(format!("{e:#}; the running config stays in force")),
        },
    }
}
