//! The HTTP surface of pyron-api: routes, the peer address, and the one place where errors
//! become responses.

mod error;
mod health;
mod webhook;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::connect_info::Connected,
    routing::{get, post},
    serve::IncomingStream,
};
use tokio::net::{TcpListener, UnixListener};

pub use error::ApiError;

use crate::{ingest::Intake, queue::Queue, store::Store};

/// What every handler shares.
pub struct AppState {
    pub intake: Intake,
    pub queue: Queue,
    pub store: Store,
    pub dedup_ttl: Duration,
    /// How long a request waits for MongoDB once its job is queued.
    pub store_timeout: Duration,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/webhook/{token}", post(webhook::receive_with_token))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
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

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, UnixListener>) -> Self {
        Peer(None)
    }
}
