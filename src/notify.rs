//! systemd readiness and watchdog notifications (sd_notify protocol, `Type=notify`,
//! `WatchdogSec=`): a datagram to `$NOTIFY_SOCKET`. No-ops when not run by systemd.
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A handle on `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    path: String,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is enabled for this process.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment; `None` when not started by systemd with `Type=notify`.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty())?;
        let sock = UnixDatagram::unbound().ok()?;
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(|u| Duration::from_micros(u / 2));
        Some(Notifier {
            sock,
            path,
            watchdog,
        })
    }

    fn send(&self, msg: &str) {
        let r = if let Some(name) = self.path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| self.sock.send_to_addr(msg.as_bytes(), &a))
        } else {
            self.sock.send_to(msg.as_bytes(), &self.path)
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1`: sockets are bound and the engine runs.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `WATCHDOG=1`, sent from the engine task's loop.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_and_watchdog_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("headend-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: UnixDatagram::unbound().unwrap(),
            path: path.display().to_string(),
            watchdog: Some(Duration::from_secs(1)),
        };
        n.ready();
        n.watchdog();
        let mut buf = [0u8; 64];
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
