//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! object per line. Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//! Bad requests get an error reply, never a crash. Requests:
//! - `{"cmd":"stats"}`
//! - `{"cmd":"rules_list"}`
//! - `{"cmd":"rules_add","filter":"ids","rule":"number = 5\naction = \"accept\"\n…"}`
//!   (the rule as the keys of a `[[filter.rule]]` table, validated like the file)
//! - `{"cmd":"rules_delete","filter":"ids","number":5,"direction":"ingress"}`
//! - `{"cmd":"reload"}` (re-reads the daemon's config file, like SIGHUP)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::config::{self, Direction};
use crate::dataplane::engine::Engine;
use crate::dataplane::stats::Stats;
use crate::filter::rules::{self, FilterView};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Stats,
    RulesList,
    RulesAdd {
        filter: String,
        rule: String,
    },
    RulesDelete {
        filter: String,
        number: u16,
        direction: Direction,
    },
    Reload,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filters: Option<Vec<FilterView>>,
    /// After a rule change or reload: rules in force per source.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rules: Option<Vec<(String, usize)>>,
}

impl Reply {
    fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    fn updated(result: Result<Vec<(String, usize)>>) -> Self {
        match result {
            Ok(rules) => Reply {
                ok: true,
                rules: Some(rules),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("{e:#}; the running rules stay in force")),
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
            let mut lines = tokio::io::BufReader::new(rd.take(MAX_REQUEST as u64 * 16)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Rule updates build maps and wait for an RCU grace period:
                // off the runtime's thread.
                let (e, p) = (engine.clone(), config_path.clone());
                let reply = tokio::task::spawn_blocking(move || handle(&line, &e, &p))
                    .await
                    .unwrap_or_else(|e| Reply::error(format!("internal error: {e}")));
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

/// Re-reads the config file and applies its filters (`reload`, SIGHUP).
pub fn reload(engine: &Engine, config_path: &Path) -> Result<Vec<(String, usize)>> {
    let new = config::load(config_path)?;
    engine.update(|live| {
        *live = new;
        Ok(())
    })
}

fn handle(line: &str, engine: &Engine, config_path: &Path) -> Reply {
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
                stats: Some(stats),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("reading counters: {e:#}")),
        },
        Ok(Request::RulesList) => match engine.live_config() {
            Ok(c) => Reply {
                ok: true,
                filters: Some(rules::list(&c)),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("{e:#}")),
        },
        Ok(Request::RulesAdd { filter, rule }) => {
            let rule = match config::parse_rule(&rule, "rule") {
                Ok(r) => r,
                Err(e) => return Reply::error(format!("{e}; the running rules stay in force")),
            };
            Reply::updated(engine.update(|c| Ok(rules::add(c, &filter, rule)?)))
        }
        Ok(Request::RulesDelete {
            filter,
            number,
            direction,
        }) => Reply::updated(engine.update(|c| {
            rules::delete(c, &filter, number, direction)?;
            Ok(())
        })),
        Ok(Request::Reload) => {
            let result = reload(engine, config_path);
            match &result {
                Ok(_) => tracing::info!(config = %config_path.display(), "reloaded the filters"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "reload rejected"),
            }
            Reply::updated(result)
        }
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
