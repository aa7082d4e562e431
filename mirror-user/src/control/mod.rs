//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! object per line. Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//! Bad requests get an error reply, never a crash. Requests:
//! - `{"cmd":"stats"}`
//! - `{"cmd":"rules_list"}`
//! - `{"cmd":"rules_add","filter":"ids","rule":"number = 5\naction = \"accept\"\n…"}`
//!   (the rule as the keys of a `[[filter.rule]]` table, validated like the file)
//! - `{"cmd":"rules_delete","filter":"ids","number":5,"direction":"ingress"}`
//! - `{"cmd":"reload"}` (re-reads the daemon's config file, like SIGHUP)
//!
//! [`protocol`]: the requests and replies; [`server`]: the daemon's side;
//! [`client`]: the command line's; [`notify`]: the daemon's word to systemd.
//! It may use everything below it (config, filter, dataplane); only `cli`
//! uses it.

mod client;
pub mod notify;
pub mod protocol;
mod server;

pub use client::Client;
pub use protocol::{Reply, Request};
pub use server::{bind, reload, serve, SocketFile};

/// A message of several lines (a file's errors, one per line) as one line,
/// for a log line or systemd's `STATUS=` (a newline ends it): its lines,
/// trimmed, joined by spaces.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_message_of_several_lines_becomes_one() {
        assert_eq!(
            one_line("the new config cannot start here, nothing was changed:\n  target `a`: x\n  target `b`: y\n"),
            "the new config cannot start here, nothing was changed: target `a`: x target `b`: y"
        );
        assert_eq!(
            one_line("reload rejected:\nmirror.toml:3:1: bad\r\n"),
            "reload rejected: mirror.toml:3:1: bad"
        );
        assert_eq!(one_line("one"), "one");
    }
}
