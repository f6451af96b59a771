//! Wiring: builds pyron-api from a `Config` and serves it until shutdown. Tests start the
//! real binaries; this is what those binaries call.

use std::{path::Path, sync::Arc};

use axum::Router;
use tokio::net::{TcpListener, UnixListener};

use crate::{
    config::{BindAddr, Config},
    http::{self, AppState, Peer},
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
    #[error("USE_SSL=true: pyron-api does not serve HTTPS itself yet; terminate TLS in NGINX")]
    TlsUnsupported,
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A pyron-api that is connected and listening, not yet serving.
pub struct Api {
    listener: Listener,
    router: Router,
}

impl Api {
    pub async fn build(config: &Config) -> Result<Api, StartupError> {
        if config.tls.is_some() {
            return Err(StartupError::TlsUnsupported);
        }
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
        });
        let listener = bind(&config.bind).await?;
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
