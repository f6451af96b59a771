//! The HTTP surface of pyron-api: routes, the peer address, and the one place where errors
//! become responses.

mod error;
mod health;
mod sender;
mod tls;
mod webhook;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State, connect_info::Connected},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
};
use tokio::net::{TcpListener, UnixListener};

pub use error::ApiError;
pub use sender::SenderRules;
pub use tls::{TlsError, serve_tls, tls_acceptor};

use crate::{ingest::Intake, queue::Queue, store::Store};

/// What every handler shares.
pub struct AppState {
    pub intake: Intake,
    pub queue: Queue,
    pub store: Store,
    pub dedup_ttl: Duration,
    /// How long a request waits for MongoDB once its job is queued.
    pub store_timeout: Duration,
    pub body_timeout: Duration,
    pub header_limit: usize,
    pub senders: SenderRules,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/webhook/{token}", post(webhook::receive_with_token))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limit_headers))
        .with_state(state)
}

/// Refuses requests whose target and headers together pass `header_limit`, in the same
/// JSON shape as every other error (hyper's own, much higher, limit answers bare).
async fn limit_headers(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let size = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if size > app.header_limit {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request target and headers are larger than {} bytes",
                app.header_limit
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// The direct peer of a connection: an address for TCP, nothing for a unix socket (where
/// the proxy in front, not the socket, knows the sender).
#[derive(Debug, Clone)]
pub struct Peer(pub Option<SocketAddr>);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(Some(*stream.remote_addr()))
    }
}

impl Connected<SocketAddr> for Peer {
    fn connect_info(addr: SocketAddr) -> Self {
        Peer(Some(addr))
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, UnixListener>) -> Self {
        Peer(None)
    }
}
