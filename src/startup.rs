//! Wiring: builds pyron-api from a `Config` and serves it until shutdown. Tests start the
//! real binaries; this is what those binaries call.
//!
//! Start-up binds the listening socket first (or takes the one systemd passed) and serves
//! at once: `/healthz` answers from the first moment. The store clients connect on first
//! use, so alerts follow the acknowledgement rule from the first request, as at any other
//! time: Redis, else MongoDB, else a 503 within the storing budget. A deploy that restarts
//! pyron-api while MongoDB (or Redis) is down therefore loses no alert that the other
//! store can keep, and no request waits for a store to come back. In the background each
//! store is tried until it answers; systemd hears `READY=1` once the first one does, that
//! is once alerts can be acknowledged.

use std::{fmt::Display, path::Path, sync::Arc, time::Duration};

use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    audit::{AuditWriter, KeptWriter},
    backoff::Backoff,
    config::{BindAddr, Config},
    delivery::Acceptor,
    http::{
        self, AppState, Breaker, Counters, Reached, SenderRules, TlsError, serve_tls, tls_acceptor,
    },
    ingest::Intake,
    queue::{Queue, QueueError},
    reconcile::{HANDOFF_LIMIT, Handoff, Reconciler},
    store::{Store, StoreError},
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
    #[error("cannot use the Redis URL: {0}")]
    Redis(#[from] QueueError),
    #[error("cannot use the MongoDB URI: {0}")]
    Mongo(#[from] StoreError),
}

pub enum Listener {
    Tcp(TcpListener),
    Tls(TcpListener, TlsAcceptor),
    Unix(UnixListener),
}

/// A pyron-api that is connected and listening, not yet serving.
pub struct Api {
    listener: Listener,
    service: http::Dispatch,
    reconciler: Reconciler,
    tasks: TaskTracker,
    /// Stops the audit writer (after its last batch) and waits for it.
    audit: (CancellationToken, tokio::task::JoinHandle<()>),
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
    /// Binds, and prepares the clients of both stores without waiting for either.
    pub async fn build(config: &Config) -> Result<Api, StartupError> {
        let acceptor = match &config.http.tls {
            Some(files) => Some(tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let (listener, bound) = listen(config).await?;
        let listener = match (listener, acceptor) {
            (Listener::Tcp(tcp), Some(acceptor)) => Listener::Tls(tcp, acceptor),
            (Listener::Unix(_), Some(_)) => return Err(StartupError::TlsOnUnixSocket),
            (listener, _) => listener,
        };
        tracing::info!(bind = %bound, "pyron-api bound");

        // A request's storing budget is split: Redis first, MongoDB with what is left if
        // Redis fails, so that both down still answers within the budget.
        let half = config.intake.store_timeout / 2;
        let queue = Queue::lazy(config.redis.url.expose(), half)?;
        let store = Store::connect(config.mongo.uri.expose(), &config.mongo.db, half).await?;
        // For writes no answer waits on: the reconciler's, and withdrawals.
        let background = Store::connect(
            config.mongo.uri.expose(),
            &config.mongo.db,
            config.worker.write_timeout,
        )
        .await?;
        let (reached, _) = tokio::sync::watch::channel(Reached::default());
        let reconcile = Handoff::new(HANDOFF_LIMIT);
        let reconciler = Reconciler {
            grace: RECONCILE_GRACE.max(config.intake.store_timeout * 2),
            queue: queue.clone(),
            store: background.clone(),
            dedup_ttl: config.intake.dedup_ttl,
            handoff: reconcile.clone(),
            reached: reached.subscribe(),
        };
        let tasks = TaskTracker::new();
        let stop_audit = CancellationToken::new();
        let (audit, audit_task) =
            AuditWriter::start(background.clone(), queue.clone(), stop_audit.clone());

        let state = Arc::new(AppState {
            intake: Intake {
                sources: config.intake.sources.clone(),
                passphrase_field: config.intake.passphrase_field.clone(),
                idempotency_field: config.intake.idempotency_field.clone(),
                body_limit: config.intake.body_limit,
            },
            delivery: Acceptor {
                queue,
                kept: KeptWriter::start(store.clone()),
                store,
                background_store: background,
                budget: config.intake.store_timeout,
                dedup_ttl: config.intake.dedup_ttl,
                breaker: Breaker::new(QUEUE_BREAKER_WINDOW),
                reconcile,
                tasks: tasks.clone(),
                audit,
            },
            reached,
            admin_token: config.admin.token.clone(),
            counters: Counters::default(),
            tally: Default::default(),
            latency: Default::default(),
            body_timeout: config.http.body_timeout,
            header_limit: config.http.header_limit,
            senders: SenderRules {
                trusted_proxies: config.http.trusted_proxies.clone(),
                allowed: config.http.allowed_senders.clone(),
            },
        });
        Ok(Api {
            listener,
            service: http::Dispatch::new(state.clone()),
            reconciler,
            tasks,
            audit: (stop_audit, audit_task),
            state,
            bound,
        })
    }

    /// Serves until `stop` is cancelled, then stops accepting, lets in-flight requests
    /// finish and the audit writes they started complete. Reaches the stores meanwhile,
    /// tells systemd it is ready once one answers, keeps its status line current and pings
    /// its watchdog.
    ///
    /// The background tasks stop only once the last request is answered (they serve the
    /// requests), and the audit writer after them, with its last batch.
    pub async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        let background = CancellationToken::new();
        let reach = tokio::spawn(reach_stores(self.state.clone(), background.child_token()));
        let reconciler = tokio::spawn(self.reconciler.run(background.child_token()));
        let tally = {
            let state = self.state.clone();
            let stopped = background.child_token();
            tokio::spawn(
                async move { state.tally.run(state.delivery.queue.stats(), stopped).await },
            )
        };
        let state = self.state.clone();
        let bound = self.bound.clone();
        systemd::spawn_watchdog(|_| true);
        {
            let state = state.clone();
            let bound = bound.clone();
            let mut reached = state.reached.subscribe();
            let stopped = background.child_token();
            tokio::spawn(async move {
                tokio::select! {
                    _ = reached.wait_for(|r| r.any()) => {}
                    () = stopped.cancelled() => return,
                }
                systemd::ready(&status_line(&state, &bound));
                if std::env::var_os("NOTIFY_SOCKET").is_none() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(STATUS_EVERY) => systemd::status(&status_line(&state, &bound)),
                        () = stopped.cancelled() => return,
                    }
                }
            });
        }
        let shutdown = async move {
            stop.cancelled().await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
        };
        let served = match self.listener {
            Listener::Tcp(l) => {
                axum::serve(l, self.service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Listener::Tls(l, acceptor) => serve_tls(l, acceptor, self.service, shutdown).await,
            Listener::Unix(l) => {
                axum::serve(l, self.service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        background.cancel();
        let (stop_audit, audit_task) = self.audit;
        stop_audit.cancel();
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
        let _ = reach.await;
        served
    }
}

/// pyron-api's line for `systemctl status`.
fn status_line(state: &AppState, bound: &str) -> String {
    let c = state.counters.snapshot();
    let reached = *state.reached.borrow();
    let queue = if !reached.redis {
        "Redis not reached yet: alerts kept in MongoDB"
    } else if state.delivery.breaker.is_open() {
        "Redis down: alerts kept in MongoDB"
    } else {
        "queue ok"
    };
    let mongo = if reached.mongo {
        ""
    } else {
        "; MongoDB not reached yet"
    };
    format!(
        "{queue}; {} accepted ({} duplicate, {} kept in MongoDB), {} refused, {} unavailable; on {bound}{mongo}",
        c.accepted, c.duplicates, c.kept, c.refused, c.unavailable
    )
}

/// How often a store that has not answered since start is tried again. Short: until it
/// answers, alerts cannot use it.
const REACH_EVERY: Duration = Duration::from_millis(250);

/// Tries each store until it answers, and notes it in `state.reached`; for MongoDB, then
/// makes sure of the reconciler's index.
async fn reach_stores(state: Arc<AppState>, stop: CancellationToken) {
    let redis = async {
        let queue = state.delivery.queue.clone();
        retry_until("Redis", REACH_EVERY, async move || queue.ping().await).await;
        state.reached.send_modify(|r| r.redis = true);
    };
    let mongo = async {
        let store = state.delivery.store.clone();
        retry_until("MongoDB", REACH_EVERY, async move || store.ping().await).await;
        state.reached.send_modify(|r| r.mongo = true);
        if let Err(err) = state.delivery.background_store.ensure_indexes().await {
            tracing::warn!(error = %err, "indexes not brought up to date; without audit.status the reconciler scans");
        }
    };
    tokio::select! {
        _ = async { tokio::join!(redis, mongo) } => {}
        () = stop.cancelled() => {}
    }
}

/// MongoDB, for a process that cannot work without it (pyron-worker, pyron-forwarder):
/// connected and answering, however long that takes.
pub async fn wait_for_mongo(config: &Config) -> Store {
    wait_for("MongoDB", async || {
        let store = Store::connect(
            config.mongo.uri.expose(),
            &config.mongo.db,
            config.worker.write_timeout,
        )
        .await?;
        store.ping().await?;
        Ok::<_, StoreError>(store)
    })
    .await
}

/// Retries `attempt` until it succeeds, backing off up to two seconds, saying why it
/// waits in the log and in systemd's status line.
pub async fn wait_for<T, E: Display>(what: &str, attempt: impl AsyncFnMut() -> Result<T, E>) -> T {
    retry_until(what, Duration::from_secs(2), attempt).await
}

/// `wait_for` with the longest wait between two attempts given.
async fn retry_until<T, E: Display>(
    what: &str,
    longest: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let mut backoff = Backoff::new(Duration::from_millis(100), longest);
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
                tokio::time::sleep(backoff.next_wait()).await;
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
        None => Ok((bind(&config.http.bind).await?, config.http.bind.to_string())),
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

/// Cancelled on the first SIGTERM or SIGINT, after telling systemd `STOPPING=1`. The
/// process's parts each hold a child of it.
pub fn shutdown_signals() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        systemd::stopping();
        cancel.cancel();
    });
    token
}
