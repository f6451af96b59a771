//! Wiring: builds pyron-api from a `Config` and serves it until shutdown. Tests start the
//! real binaries; this is what those binaries call.

use std::{path::Path, sync::Arc};

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{BindAddr, Config},
    http::{self, AppState, Peer, SenderRules, TlsError, serve_tls, tls_acceptor},
    ingest::Intake,
    queue::{Queue, QueueError},
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
}

impl Api {
    pub async fn build(config: &Config) -> Result<Api, StartupError> {
        let acceptor = match &config.tls {
            Some(files) => Some(tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let queue = Queue::connect(config.redis_url.expose(), config.store_timeout).await?;
        queue.ping().await?;
        let store = Store::connect(
            config.mongo_uri.expose(),
            &config.mongo_db,
            config.store_timeout,
        )
        .await?;
        store.ping().await?;

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
        })
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self.listener {
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
        }
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
