//! The systemd notify protocol (`sd_notify(3)`), for `Type=notify` units: readiness, reloading,
//! stopping, status lines and watchdog pings, sent as datagrams to `$NOTIFY_SOCKET`. Without that
//! variable (not under systemd, or another service type) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager's notify socket, if there is one.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    #[allow(clippy::disallowed_methods)] // systemd speaks through the environment
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_owned();
            let addr = address(&path)?;
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, addr))
        });
        Notifier { socket }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). Failures are logged, never
    /// fatal: a missed notification must not stop the work.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time, as `Type=notify-reload` wants; `ready` ends it.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: calls in flight may finish");
    }

    /// Asks for more time to start (or stop) than the unit's timeout: `EXTEND_TIMEOUT_USEC`.
    pub fn extend_timeout(&self, by: Duration, status: &str) {
        self.notify(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS={status}",
            by.as_micros()
        ));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set for this process.
#[allow(clippy::disallowed_methods)] // systemd speaks through the environment
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(target_os = "linux")]
fn address(path: &str) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None => std::os::unix::net::SocketAddr::from_pathname(path).ok(),
    }
}

#[cfg(not(target_os = "linux"))]
fn address(path: &str) -> Option<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_pathname(path).ok()
}

/// `CLOCK_MONOTONIC` in microseconds (std's `Instant` uses that clock but hides its value).
#[allow(unsafe_code)] // one libc call; std has no way to read this clock
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().expect("socket"),
                address(path.to_str().expect("utf-8")).expect("address"),
            )),
        };
        notifier.ready("up");
        notifier.watchdog();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        Notifier { socket: None }.ready("up");
    }
}
