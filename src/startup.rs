//! Wiring: builds pyron-api from a `Config` and serves it until shutdown. Tests start the
//! real binaries; this is what those binaries call.

use std::{path::Path, sync::Arc, time::Duration};

use axum::Router;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{Notify, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::{
    config::{BindAddr, Config},
    http::{self, AppState, Breaker, Peer, SenderRules, TlsError, serve_tls, tls_acceptor},
    ingest::Intake,
    queue::{Queue, QueueError},
    reconcile::Reconciler,
    store::{Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach Redis: {0}")]
    Redis(#[from] QueueError),
    #[error("cannot reach MongoDB: {0}")]
    Mongo(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] TlsError),
    #[error("USE_SSL=true needs a host:port PYRON_BIND, not a unix socket")]
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
}

/// How long the reconciler leaves a fresh unqueued record alone, in case its request ends
/// with a 503 (the write landed after the answer's deadline) and withdraws it.
const RECONCILE_GRACE: Duration = Duration::from_secs(5);

/// How long alerts skip Redis after it failed one.
const QUEUE_BREAKER_WINDOW: Duration = Duration::from_secs(1);

/// How long shutdown waits for audit writes still in flight.
const DRAIN_TASKS: Duration = Duration::from_secs(10);

impl Api {
    pub async fn build(config: &Config) -> Result<Api, StartupError> {
        let acceptor = match &config.tls {
            Some(files) => Some(tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        // A request's storing budget is split: Redis first, MongoDB with what is left if
        // Redis fails, so that both down still answers within the budget.
        let half = config.store_timeout / 2;
        let queue = Queue::connect(config.redis_url.expose(), half).await?;
        queue.ping().await?;
        let store = Store::connect(config.mongo_uri.expose(), &config.mongo_db, half).await?;
        store.ping().await?;
        let sweeps = Store::connect(
            config.mongo_uri.expose(),
            &config.mongo_db,
            config.worker.write_timeout,
        )
        .await?;
        if let Err(err) = sweeps.ensure_indexes().await {
            tracing::warn!(error = %err, "audit.status index not created; the reconciler will scan");
        }
        let reconcile = Arc::new(Notify::new());
        let reconciler = Reconciler {
            grace: RECONCILE_GRACE.max(config.store_timeout * 2),
            queue: queue.clone(),
            store: sweeps.clone(),
            dedup_ttl: config.dedup_ttl,
            wake: reconcile.clone(),
        };
        let tasks = TaskTracker::new();

        let state = Arc::new(AppState {
            intake: Intake {
                token: config.webhook_token.clone(),
                passphrase_field: config.passphrase_field.clone(),
                idempotency_field: config.idempotency_field.clone(),
                body_limit: config.body_limit,
            },
            queue,
            store,
            dedup_ttl: config.dedup_ttl,
            store_timeout: config.store_timeout,
            queue_breaker: Breaker::new(QUEUE_BREAKER_WINDOW),
            background_store: sweeps,
            reconcile,
            tasks: tasks.clone(),
            admin_token: config.admin_token.clone(),
            body_timeout: config.body_timeout,
            header_limit: config.header_limit,
            senders: SenderRules {
                trusted_proxies: config.trusted_proxies.clone(),
                allowed: config.allowed_senders.clone(),
            },
        });
        let listener = match (bind(&config.bind).await?, acceptor) {
            (Listener::Tcp(tcp), Some(acceptor)) => Listener::Tls(tcp, acceptor),
            (Listener::Unix(_), Some(_)) => return Err(StartupError::TlsOnUnixSocket),
            (listener, _) => listener,
        };
        Ok(Api {
            listener,
            router: http::router(state),
            reconciler,
            tasks,
        })
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish and the audit writes they started complete.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let reconciler = tokio::spawn(self.reconciler.run(stopped));
        let shutdown = async move {
            shutdown.await;
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
        let _ = stop.send(true);
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
        served
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

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
