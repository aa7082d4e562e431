//! The HTTP side: `GET /metrics` on a TCP listener, served by tasks of the
//! control plane's tokio runtime; the snapshot is read and encoded on its
//! blocking pool (the counters are read under the sources' locks), never on
//! a data-plane thread. Anything but `GET /metrics` is a 404. A request's
//! head is bounded in size and time, so is the answer's writing, and so is
//! the number of connections served at once (more wait in the backlog).
//! One request per connection (`Connection: close`), as Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Encodes the metrics for one scrape (an error becomes a 500, its text the body).
pub type Scrape = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Bounds on what one client may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of a request's head (request line and headers).
    pub max_request: usize,
    /// To read a request's head, and again to write the answer.
    pub timeout: Duration,
    /// Connections served at once.
    pub connections: usize,
}

impl Default for Limits {
    /// 8 KiB heads, 10 s, 16 connections: Prometheus sends ~300 bytes and
    /// scrapes one target at a time.
    fn default() -> Limits {
        Limits {
            max_request: 8192,
            timeout: Duration::from_secs(10),
            connections: 16,
        }
    }
}

/// Listens on `addr` (`[daemon] metrics`), saying what to do when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "[daemon] metrics = \"{addr}\": cannot listen there (is the port taken by \
             another exporter, or the address not one of this host's?)"
        )
    })
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, scrape: Scrape, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: not a reason to spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            answer(stream, scrape, limits).await;
            drop(slot);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadRequest,
}

/// Why a request's head could not be read.
#[derive(Debug)]
enum HeadError {
    TooLong,
    /// The client closed before the end of the head (nothing to answer if
    /// it sent nothing).
    Closed {
        sent: bool,
    },
    Io,
}

async fn answer(mut stream: TcpStream, scrape: Scrape, limits: Limits) {
    let head = tokio::time::timeout(limits.timeout, read_head(&mut stream, limits.max_request));
    let reply = match head.await {
        Err(_) => response("408 Request Timeout", "request head not complete in time\n"),
        Ok(Err(HeadError::TooLong)) => response(
            "431 Request Header Fields Too Large",
            "request head too long\n",
        ),
        Ok(Err(HeadError::Closed { sent: false } | HeadError::Io)) => return,
        Ok(Err(HeadError::Closed { sent: true })) => {
            response("400 Bad Request", "request head not complete\n")
        }
        Ok(Ok(head)) => match route(&head) {
            Route::Metrics => match tokio::task::spawn_blocking(move || scrape()).await {
                Ok(Ok(text)) => ok(&text),
                Ok(Err(e)) => response("500 Internal Server Error", &format!("{e}\n")),
                Err(e) => response("500 Internal Server Error", &format!("{e}\n")),
            },
            Route::NotFound => response("404 Not Found", "not found: try GET /metrics\n"),
            Route::BadRequest => response("400 Bad Request", "not an HTTP/1 request\n"),
        },
    };
    let write = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(limits.timeout, write).await;
}

/// Reads up to the blank line that ends a request's head (the head only:
/// a GET has no body worth reading).
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed {
                sent: !buf.is_empty(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLong);
        }
    }
}

/// Where the head ends (after its blank line, CRLF or bare LF), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `GET /metrics` (any query string) is the metrics; any other method or
/// path is not found; a first line that is not `METHOD TARGET HTTP/1.x` is
/// a bad request.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let parts: Vec<&str> = line.trim_end_matches('\r').split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Route::BadRequest;
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    if method == "GET" && path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

fn ok(body: &str) -> Vec<u8> {
    reply("200 OK", super::CONTENT_TYPE, body)
}

fn response(status: &str, body: &str) -> Vec<u8> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        for (head, want) in [
            (
                &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                Route::Metrics,
            ),
            (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", Route::Metrics),
            (b"GET /metrics HTTP/1.1\n\n", Route::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics SPDY/3\r\n\r\n", Route::BadRequest),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", Route::BadRequest),
            (b"\xff /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\r\n\r\n", Route::BadRequest),
        ] {
            assert_eq!(route(head), want, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_head_ends_at_its_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    /// Serves `scrape` with `limits` on 127.0.0.1 (a port the kernel picks)
    /// and runs `client` against it, on a runtime like the daemon's.
    fn with_server<T>(
        scrape: Scrape,
        limits: Limits,
        client: impl AsyncFnOnce(SocketAddr) -> T,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(serve(listener, scrape, limits));
            let out = tokio::time::timeout(Duration::from_secs(20), client(addr))
                .await
                .expect("the test's client finished in time");
            server.abort();
            out
        })
    }

    /// Sends `request` and reads the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("answer");
        String::from_utf8(out).expect("UTF-8")
    }

    fn fixed(text: &'static str) -> Scrape {
        Arc::new(move || Ok(text.to_string()))
    }

    #[test]
    fn a_scrape_gets_the_text_with_its_content_type_and_length() {
        let body = "# HELP x An x.\n# TYPE x gauge\nx 1\n";
        let answers = with_server(fixed(body), Limits::default(), async |addr| {
            [
                exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await,
                exchange(addr, b"GET /nothing HTTP/1.1\r\n\r\n").await,
                exchange(addr, b"nonsense\r\n\r\n").await,
            ]
        });
        assert_eq!(
            answers[0],
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        assert!(
            answers[1].starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{}",
            answers[1]
        );
        assert!(
            answers[2].starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{}",
            answers[2]
        );
    }

    #[test]
    fn a_failed_scrape_is_a_500_with_the_reason() {
        let scrape: Scrape = Arc::new(|| Err("reading counters: poisoned lock".into()));
        let answer = with_server(scrape, Limits::default(), async |addr| {
            exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await
        });
        assert!(
            answer.starts_with("HTTP/1.1 500 Internal Server Error\r\n")
                && answer.ends_with("\r\n\r\nreading counters: poisoned lock\n"),
            "{answer}"
        );
    }

    #[test]
    fn a_request_head_is_bounded_in_size_and_time() {
        let limits = Limits {
            max_request: 1024,
            timeout: Duration::from_millis(300),
            connections: 2,
        };
        let (long, slow, silent, after) = with_server(fixed("x 1\n"), limits, async |addr| {
            let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
            request.extend(std::iter::repeat_n(b'a', 2000));
            let long = exchange(addr, &request).await;
            // Half a head, and no more: answered once the time is up.
            let slow = exchange(addr, b"GET /metrics HTTP/1.1\r\n").await;
            // Connected, silent: the same.
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("closed");
            let silent = String::from_utf8_lossy(&out).to_string();
            // Still serving.
            let after = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            (long, slow, silent, after)
        });
        assert!(
            long.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{long}"
        );
        assert!(
            slow.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{slow}"
        );
        assert!(silent.starts_with("HTTP/1.1 408"), "{silent}");
        assert!(after.ends_with("\r\n\r\nx 1\n"), "{after}");
    }

    #[test]
    fn a_connection_beyond_the_limit_waits_for_a_free_one() {
        let limits = Limits {
            max_request: 1024,
            timeout: Duration::from_secs(5),
            connections: 1,
        };
        let answer = with_server(fixed("x 1\n"), limits, async |addr| {
            // Holds the one slot, silent.
            let mut first = TcpStream::connect(addr).await.expect("connect");
            let second =
                tokio::spawn(async move { exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !second.is_finished(),
                "served beside a connection holding the only slot"
            );
            first
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .expect("request");
            let mut out = Vec::new();
            first.read_to_end(&mut out).await.expect("answer");
            second.await.expect("second")
        });
        assert!(answer.ends_with("\r\n\r\nx 1\n"), "{answer}");
    }
}
