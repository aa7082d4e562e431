//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! object per line. Requests: `{"cmd":"stats"}`. Replies: `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. Bad requests get an error reply, never a crash.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::engine::Engine;
use crate::stats::Stats;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<Stats>,
}

impl Reply {
    fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            stats: None,
        }
    }
}

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

/// Serves requests until the listener is dropped.
pub async fn serve(listener: tokio::net::UnixListener, engine: Arc<Engine>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(rd.take(MAX_REQUEST as u64 * 16)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = handle(&line, &engine);
                let mut text =
                    serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
                text.push('\n');
                if wr.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn handle(line: &str, engine: &Engine) -> Reply {
    if line.len() > MAX_REQUEST {
        return Reply::error("request too long");
    }
    match serde_json::from_str::<Request>(line) {
        Err(e) => Reply::error(format!(
            "bad request: {e}; expected e.g. {{\"cmd\":\"stats\"}}"
        )),
        Ok(Request::Stats) => match engine.stats() {
            Ok(stats) => Reply {
                ok: true,
                error: None,
                stats: Some(stats),
            },
            Err(e) => Reply::error(format!("reading counters: {e:#}")),
        },
    }
}

/// A blocking client, for `mirror stats` and tests.
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path).with_context(|| {
            format!(
                "connecting to the mirror daemon at {} (is `mirror run` running? use --control or -c to point at its socket)",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            path: path.to_path_buf(),
            stream: BufReader::new(stream),
        })
    }

    pub fn request(&mut self, req: &Request) -> Result<Reply> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        self.stream
            .read_line(&mut answer)
            .with_context(|| format!("reading the reply from {}", self.path.display()))?;
        if answer.is_empty() {
            bail!(
                "the daemon at {} closed the connection",
                self.path.display()
            );
        }
        let reply: Reply = serde_json::from_str(&answer).context("parsing the daemon's reply")?;
        if !reply.ok {
            bail!("the daemon said: {}", reply.error.unwrap_or_default());
        }
        Ok(reply)
    }

    pub fn stats(&mut self) -> Result<Stats> {
        self.request(&Request::Stats)?
            .stats
            .context("the daemon's reply had no counters")
    }
}
