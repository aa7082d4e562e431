//! Tells the service manager how the daemon is doing: `sd_notify(3)`
//! datagrams to `$NOTIFY_SOCKET`, which systemd sets for a `Type=notify`
//! unit (`contrib/mirror.service`). Without `NOTIFY_SOCKET` each call does
//! nothing, so `mirror run` from a shell or a test behaves as before.
//!
//! The daemon sends `READY=1` once its kernel programs are attached, its
//! targets open and its control socket accepting, so `systemctl start
//! mirror` returns when mirroring has begun (or fails with the daemon's error);
//! `RELOADING=1` and then `READY=1` around a SIGHUP reload; and
//! `STOPPING=1` when it begins to detach on SIGTERM/SIGINT.
//!
//! A notification that cannot be sent is logged and otherwise ignored: the
//! mirroring matters more than the service manager's view of it.

use sd_notify::NotifyState;

use super::one_line;

/// Mirroring has begun. `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// A reload has begun; [`ready`] ends it. Carries the monotonic time that
/// systemd 253's `Type=notify-reload` requires (older ones ignore it).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The daemon is detaching its programs and will exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(
            socket = ?std::env::var_os("NOTIFY_SOCKET"),
            "cannot notify the service manager: {e}"
        );
    }
}
