//! A blocking client, for the command line and tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::protocol::{Reply, Request};
use crate::dataplane::stats::Stats;

/// A blocking client, for `mirror stats` and tests.
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

/// How long a request waits for its reply unless set otherwise.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "no mirror daemon is running at {} ({}); start one with `mirror run -c FILE`, \
                 or point at its socket with --control or -c",
                    path.display(),
                    if e.kind() == std::io::ErrorKind::NotFound {
                        "no socket there"
                    } else {
                        "the socket is there but nothing listens: a daemon that died"
                    }
                )
            }
            _ => anyhow::Error::new(e).context(format!(
                "connecting to the mirror daemon at {}",
                path.display()
            )),
        })?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client {
            path: path.to_path_buf(),
            stream: BufReader::new(stream),
            timeout: REPLY_TIMEOUT,
        })
    }

    /// How long [`Client::request`] waits for the reply.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.stream.get_ref().set_read_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    pub fn request(&mut self, req: &Request) -> Result<Reply> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        if let Err(e) = self.stream.read_line(&mut answer) {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                bail!(
                    "the daemon at {} did not answer within {:?} (busy installing rule sets?)",
                    self.path.display(),
                    self.timeout
                );
            }
            return Err(e)
                .with_context(|| format!("reading the reply from {}", self.path.display()));
        }
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
