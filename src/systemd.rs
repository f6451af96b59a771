//! systemd integration, all of it silently off outside systemd: readiness, a one-line
//! status, watchdog pings and stopping over `$NOTIFY_SOCKET` (sd_notify), and a listening
//! socket passed by socket activation (`$LISTEN_FDS`).

use std::{
    io,
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// `READY=1`: able to do its work (pyron-api: listening, and a store has answered, so
/// alerts can be acknowledged; pyron-worker: connected to both stores).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`: the line `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// `STOPPING=1`: shutdown has begun; the drain follows.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When a loop last showed it makes progress; the watchdog pings only while it is recent.
#[derive(Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Pings the watchdog at half of `$WATCHDOG_USEC` for as long as `healthy` (given the
/// watchdog interval) holds. Does nothing when systemd asked for no watchdog (or asked
/// another process).
pub fn spawn_watchdog(healthy: impl Fn(Duration) -> bool + Send + 'static) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(1));
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = true;
        loop {
            ticks.tick().await;
            let healthy = healthy(interval);
            if healthy {
                send(&[NotifyState::Watchdog]);
            } else if was_healthy {
                tracing::error!(
                    "not healthy: withholding watchdog pings, systemd will restart this service"
                );
            }
            was_healthy = healthy;
        }
    });
}

/// What socket activation passed: one listening socket, or none.
pub enum Activated {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes the listening socket systemd passed (`$LISTEN_FDS` for this `$LISTEN_PID`).
/// Exactly one stream socket is expected.
pub fn listen_socket() -> io::Result<Option<Activated>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()?.collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => activated(*fd).map(Some),
        more => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("systemd passed {} sockets; pyron-api takes one", more.len()),
        )),
    }
}

fn activated(fd: RawFd) -> io::Result<Activated> {
    use std::os::fd::FromRawFd;
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `fd` is ours (passed by systemd, checked by LISTEN_PID), and `storage` is
    // large enough for any address.
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut kind: libc::c_int = 0;
    let mut kind_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `kind` holds an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut kind_len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if kind != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket systemd passed is not a stream socket (ListenStream=)",
        ));
    }
    // SAFETY: the descriptor is a listening stream socket that nothing else owns.
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET | libc::AF_INET6 => Ok(Activated::Tcp(unsafe {
            std::net::TcpListener::from_raw_fd(fd)
        })),
        libc::AF_UNIX => Ok(Activated::Unix(unsafe {
            std::os::unix::net::UnixListener::from_raw_fd(fd)
        })),
        family => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket systemd passed has address family {family}"),
        )),
    }
}
