//! Wiring: builds pyron-api from a `Config` and serves it until shutdown. Tests start the
//! real binaries; this is what those binaries call.
//!
//! Start-up binds the listening socket first (or takes the one systemd passed), then waits
//! for Redis and MongoDB, retrying, and only then tells systemd it is ready.

use std::{fmt::Display, path::Path, sync::Arc, time::Duration};

use axum::Router;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{Notify, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::{
    audit::AuditWriter,
    config::{BindAddr, Config},
    http::{
        self, AppState, Breaker, Counters, Peer, SenderRules, TlsError, serve_tls, tls_acceptor,
    },
    ingest::Intake,
    queue::Queue,
    reconcile::Reconciler,
    store::Store,
    systemd::{self, Activated},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot take the socket systemd passed: {0}")]
    Activation(std::io::Error),
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] TlsError),
    #[error("USE_SSL=true needs a TCP socket, not a unix socket")]
    TlsOnUnixSocket,
}

pub enum Listener {
    Tcp(TcpListener),
    Tls(TcpListener, TlsAcceptor),
    Unix(UnixListener),
}

/// A pyron-api that is connected and listening, not yet serving.
pub struct Api {
    listener: Listener,
    router: Router,
    reconciler: Reconciler,
    tasks: TaskTracker,
    /// Stops the audit writer (after its last batch) and waits for it.
    audit: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
    state: Arc<AppState>,
    /// Where it listens, for the log and the status line.
    pub bound: String,
}

/// How long the reconciler leaves a fresh unqueued record alone, in case its request ends
/// with a 503 (the write landed after the answer's deadline) and withdraws it.
const RECONCILE_GRACE: Duration = Duration::from_secs(5);

/// How long alerts skip Redis after it failed one.
const QUEUE_BREAKER_WINDOW: Duration = Duration::from_secs(1);

/// How long shutdown waits for audit writes still in flight.
const DRAIN_TASKS: Duration = Duration::from_secs(10);

/// How often the status line is refreshed under systemd.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

impl Api {
    /// Binds, then waits until Redis and MongoDB answer.
    pub async fn build(config: &Config) -> Result<Api, StartupError> {
        let acceptor = match &config.tls {
            Some(files) => Some(tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let (listener, bound) = listen(config).await?;
        let listener = match (listener, acceptor) {
            (Listener::Tcp(tcp), Some(acceptor)) => Listener::Tls(tcp, acceptor),
            (Listener::Unix(_), Some(_)) => return Err(StartupError::TlsOnUnixSocket),
            (listener, _) => listener,
        };
        tracing::info!(bind = %bound, "pyron-api bound; connecting to the stores");

        // A request's storing budget is split: Redis first, MongoDB with what is left if
        // Redis fails, so that both down still answers within the budget.
        let half = config.store_timeout / 2;
        let queue = wait_for("Redis", async || {
            let queue = Queue::connect(config.redis_url.expose(), half).await?;
            queue.ping().await?;
            Ok::<_, crate::queue::QueueError>(queue)
        })
        .await;
        let store = wait_for("MongoDB", async || {
            let store = Store::connect(config.mongo_uri.expose(), &config.mongo_db, half).await?;
            store.ping().await?;
            Ok::<_, crate::store::StoreError>(store)
        })
        .await;
        // For writes no answer waits on: the reconciler's, and withdrawals.
        let background = wait_for("MongoDB", async || {
            Store::connect(
                config.mongo_uri.expose(),
                &config.mongo_db,
                config.worker.write_timeout,
            )
            .await
        })
        .await;
        if let Err(err) = background.ensure_indexes().await {
            tracing::warn!(error = %err, "audit.status index not created; the reconciler will scan");
        }
        let reconcile = Arc::new(Notify::new());
        let reconciler = Reconciler {
            grace: RECONCILE_GRACE.max(config.store_timeout * 2),
            queue: queue.clone(),
            store: background.clone(),
            dedup_ttl: config.dedup_ttl,
            wake: reconcile.clone(),
        };
        let tasks = TaskTracker::new();
        let (stop_audit, audit_stopped) = watch::channel(false);
        let (audit, audit_task) =
            AuditWriter::start(background.clone(), queue.clone(), audit_stopped);

        let state = Arc::new(AppState {
            intake: Intake {
                token: config.webhook_token.clone(),
                passphrase_field: config.passphrase_field.clone(),
                idempotency_field: config.idempotency_field.clone(),
                body_limit: config.body_limit,
            },
            queue,
            store,
            background_store: background,
            dedup_ttl: config.dedup_ttl,
            store_timeout: config.store_timeout,
            queue_breaker: Breaker::new(QUEUE_BREAKER_WINDOW),
            reconcile,
            tasks: tasks.clone(),
            audit,
            admin_token: config.admin_token.clone(),
            counters: Counters::default(),
            tally: Default::default(),
            latency: Default::default(),
            body_timeout: config.body_timeout,
            header_limit: config.header_limit,
            senders: SenderRules {
                trusted_proxies: config.trusted_proxies.clone(),
                allowed: config.allowed_senders.clone(),
            },
        });
        Ok(Api {
            listener,
            router: http::router(state.clone()),
            reconciler,
            tasks,
            audit: (stop_audit, audit_task),
            state,
            bound,
        })
    }

    /// Serves until `stop` turns true, then stops accepting, lets in-flight requests
    /// finish and the audit writes they started complete. Tells systemd it is ready,
    /// keeps its status line current and pings its watchdog meanwhile.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let (stop_tasks, tasks_stopped) = watch::channel(false);
        let reconciler = tokio::spawn(self.reconciler.run(tasks_stopped.clone()));
        let tally = {
            let state = self.state.clone();
            let stopped = tasks_stopped.clone();
            tokio::spawn(async move { state.tally.run(state.queue.stats(), stopped).await })
        };
        let state = self.state.clone();
        let bound = self.bound.clone();
        systemd::ready(&status_line(&state, &bound));
        systemd::spawn_watchdog(|_| true);
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let mut stopped = tasks_stopped;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(STATUS_EVERY) => systemd::status(&status_line(&state, &bound)),
                        _ = stopped.changed() => return,
                    }
                }
            });
        }
        let shutdown = async move {
            let _ = stop.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
        };
        let served = match self.listener {
            Listener::Tcp(l) => {
                axum::serve(l, self.router.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Listener::Tls(l, acceptor) => serve_tls(l, acceptor, self.router, shutdown).await,
            Listener::Unix(l) => {
                axum::serve(l, self.router.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        let _ = stop_tasks.send(true);
        let (stop_audit, audit_task) = self.audit;
        let _ = stop_audit.send(true);
        let _ = audit_task.await;
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TASKS, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "audit writes still running at exit; the worker writes them from the jobs"
            );
        }
        let _ = reconciler.await;
        let _ = tally.await;
        served
    }
}

/// pyron-api's line for `systemctl status`.
fn status_line(state: &AppState, bound: &str) -> String {
    let c = state.counters.snapshot();
    let queue = if state.queue_breaker.is_open() {
        "Redis down: alerts kept in MongoDB"
    } else {
        "queue ok"
    };
    format!(
        "{queue}; {} accepted ({} duplicate, {} kept in MongoDB), {} refused, {} unavailable; on {bound}",
        c.accepted, c.duplicates, c.kept, c.refused, c.unavailable
    )
}

/// Retries `attempt` until it succeeds, with backoff up to two seconds, saying why it
/// waits in the log and in systemd's status line.
pub async fn wait_for<T, E: Display>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let mut delay = Duration::from_millis(100);
    let mut tries: u32 = 0;
    loop {
        match attempt().await {
            Ok(value) => {
                if tries > 0 {
                    tracing::info!("{what} reachable");
                }
                return value;
            }
            Err(err) => {
                if tries.is_multiple_of(10) {
                    tracing::warn!(error = %err, "waiting for {what}");
                    systemd::status(&format!("waiting for {what}: {err}"));
                }
                tries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The socket systemd passed, else `PYRON_BIND`.
async fn listen(config: &Config) -> Result<(Listener, String), StartupError> {
    match systemd::listen_socket().map_err(StartupError::Activation)? {
        Some(Activated::Tcp(listener)) => {
            listener
                .set_nonblocking(true)
                .map_err(StartupError::Activation)?;
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let listener = TcpListener::from_std(listener).map_err(StartupError::Activation)?;
            Ok((Listener::Tcp(listener), format!("{addr} (from systemd)")))
        }
        Some(Activated::Unix(listener)) => {
            listener
                .set_nonblocking(true)
                .map_err(StartupError::Activation)?;
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default();
            let listener = UnixListener::from_std(listener).map_err(StartupError::Activation)?;
            Ok((
                Listener::Unix(listener),
                format!("unix:{path} (from systemd)"),
            ))
        }
        None => Ok((bind(&config.bind).await?, config.bind.to_string())),
    }
}

async fn bind(addr: &BindAddr) -> Result<Listener, StartupError> {
    let fail = |source| StartupError::Bind {
        addr: addr.to_string(),
        source,
    };
    match addr {
        BindAddr::Tcp(socket) => TcpListener::bind(socket)
            .await
            .map(Listener::Tcp)
            .map_err(fail),
        BindAddr::Unix(path) => {
            remove_stale_socket(path).map_err(fail)?;
            UnixListener::bind(path).map(Listener::Unix).map_err(fail)
        }
    }
}

/// A socket file left by a previous run would make `bind` fail; anything else at that
/// path is left alone.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// Turns true on the first SIGTERM or SIGINT, after telling systemd `STOPPING=1`.
pub fn shutdown_signals() -> watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        systemd::stopping();
        let _ = tx.send(true);
    });
    rx
}
