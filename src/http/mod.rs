//! The HTTP surface of pyron-api: routes, the peer address, and the one place where errors
//! become responses.

mod admin;
mod auth;
mod dashboard;
mod error;
mod health;
mod metrics;
mod pages;
mod sender;
mod tls;
mod webhook;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_length_is_that_of_the_target_written_out() {
        for target in [
            "/webhook",
            "/webhook/secret?x=1&y=%20",
            "/",
            "*",
            "http://example.com/webhook?a=b",
            "https://user@example.com:8443",
            "example.com:443",
        ] {
            let uri: axum::http::Uri = target.parse().unwrap();
            assert_eq!(target_len(&uri), uri.to_string().len(), "{target}");
        }
    }

    #[test]
    fn the_webhook_paths_are_those_the_router_gives_the_webhook_routes() {
        assert_eq!(webhook_target("/webhook"), Some(None));
        assert_eq!(webhook_target("/webhook/s3cret"), Some(Some("s3cret")));
        assert_eq!(webhook_target("/webhook/s%2Fcret"), Some(Some("s%2Fcret")));
        for other in [
            "/webhook/",
            "/webhook/a/b",
            "/webhook/a/",
            "/webhooks",
            "/webhook2/a",
            "/",
            "/api/stats",
        ] {
            assert_eq!(webhook_target(other), None, "{other}");
        }
    }

    #[test]
    fn a_tripped_breaker_stays_open_for_its_window_then_closes() {
        let breaker = Breaker::new(Duration::from_millis(50));
        assert!(!breaker.is_open());
        assert!(breaker.trip(), "the first trip reports the change");
        assert!(breaker.is_open());
        assert!(!breaker.trip(), "a trip while open does not");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!breaker.is_open());
        assert!(breaker.trip());
    }
}
pub use sender::SenderRules;
pub use tls::{TlsError, serve_tls, tls_acceptor};

use crate::{clock::SharedInstant, domain::Secret, ingest::Intake};

/// What every handler shares.
pub struct AppState {
    pub intake: Intake,
    /// Makes accepted alerts durable (the acknowledgement rule); its stores also serve
    /// readiness, the dashboard and the admin API.
    pub delivery: crate::delivery::Acceptor,
    /// Which stores have answered since pyron-api started (for readiness, the status
    /// line and the reconciler; alerts try the stores as at any other time).
    pub reached: tokio::sync::watch::Sender<Reached>,
    pub admin_token: Option<Secret>,
    pub counters: Counters,
    /// Answers counted for the dashboard, written to Redis every few hundred ms.
    pub tally: crate::stats::Tally,
    pub latency: metrics::Latency,
    pub body_timeout: Duration,
    pub header_limit: usize,
    pub senders: SenderRules,
}

/// What pyron-api has answered since it started, for its status line.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    kept: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Answered 202 (duplicates and alerts kept in MongoDB alone included).
    pub accepted: u64,
    pub duplicates: u64,
    /// Accepted while Redis was down: only MongoDB held them.
    pub kept: u64,
    /// Answered 4xx.
    pub refused: u64,
    /// Answered 503: neither store took them.
    pub unavailable: u64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            accepted: get(&self.accepted),
            duplicates: get(&self.duplicates),
            kept: get(&self.kept),
            refused: get(&self.refused),
            unavailable: get(&self.unavailable),
        }
    }
}

/// Which stores have answered at least once since the process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub redis: bool,
    pub mongo: bool,
}

impl Reached {
    /// Whether an alert can be acknowledged: one durable store is enough.
    pub fn any(self) -> bool {
        self.redis || self.mongo
    }
}

/// A circuit breaker: `trip` opens it for `window`; while open, callers skip the failing
/// dependency. The first call after the window tries it again.
pub struct Breaker {
    open_until: SharedInstant,
    pub window: Duration,
}

impl Breaker {
    pub fn new(window: Duration) -> Self {
        Breaker {
            open_until: SharedInstant::new(),
            window,
        }
    }

    pub fn is_open(&self) -> bool {
        Instant::now() < self.open_until.get()
    }

    /// Opens the breaker; true when it was closed (so the caller logs once per outage
    /// window, not once per request).
    pub fn trip(&self) -> bool {
        let now = Instant::now();
        self.open_until.replace(now + self.window) <= now
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/webhook/{token}", post(webhook::receive))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/", get(dashboard::index))
        .route("/login", get(dashboard::login_page).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .route("/assets/style.css", get(dashboard::style))
        .route("/assets/app.js", get(dashboard::script))
        .route("/api/stats", get(dashboard::stats))
        .route("/api/events", get(dashboard::events))
        .route("/api/events/{id}", get(dashboard::event))
        .route("/api/stream", get(dashboard::stream))
        .route("/metrics", get(metrics::metrics))
        .route("/api/dead-letters", get(admin::dead_letters))
        .route("/api/dead-letters/replay", post(admin::replay))
        .route("/api/deliveries", get(admin::deliveries))
        .route("/api/deliveries/dead", get(admin::dead_deliveries))
        .route("/api/deliveries/replay", post(admin::replay_deliveries))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limit_headers))
        .with_state(state)
}

/// Refuses requests whose target and headers together pass `header_limit`, in the same
/// JSON shape as every other error (hyper's own, much higher, limit answers bare).
async fn limit_headers(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match headers_too_large(&app, &request) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

fn headers_too_large(app: &AppState, request: &Request) -> Option<Response> {
    let size = target_len(request.uri())
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    (size > app.header_limit).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request target and headers are larger than {} bytes",
                app.header_limit
            ),
        )
        .into_response()
    })
}

/// pyron-api's service, one per connection: `POST /webhook` and `POST /webhook/{token}`
/// go straight to the webhook handler, every other request through `router` (which keeps
/// the webhook routes, so that other methods on their paths answer 405).
///
/// The router costs an alert some twenty allocations and as many boxed futures (the
/// peer's address and the path's token as request extensions, a clone of each route's
/// boxed service, a boxed future per layer): a quarter of pyron-api's allocations per
/// alert. The answers are the router's, but for a token that is not UTF-8 once decoded:
/// a wrong secret (401), where axum's `Path` answered 400 in plain text (the router's
/// webhook routes now decode the token as this does). The webhook tests run through
/// this path.
///
/// As axum's make-service (`axum::serve`), it hands each connection a copy that knows
/// the connection's peer.
#[derive(Clone)]
pub struct Dispatch {
    app: Arc<AppState>,
    router: Router,
    peer: Peer,
}

impl Dispatch {
    pub fn new(app: Arc<AppState>) -> Self {
        Dispatch {
            router: router(app.clone()),
            app,
            peer: Peer(None),
        }
    }

    /// The service for one connection from `peer`.
    pub fn connection(&self, peer: Peer) -> Self {
        Dispatch {
            peer,
            ..self.clone()
        }
    }
}

/// Where a request goes: `Some(None)` for `/webhook`, `Some(Some(token))` for
/// `/webhook/{token}` (the token as sent, percent-encoded), `None` for anything else: the
/// paths the router's two webhook routes match, and no others (an empty token, or more
/// segments, are the router's 404).
fn webhook_target(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix("/webhook")?;
    if rest.is_empty() {
        return Some(None);
    }
    let token = rest.strip_prefix('/')?;
    (!token.is_empty() && !token.contains('/')).then_some(Some(token))
}

/// The token of a `/webhook/{token}` path, percent-decoded as axum's `Path` would, but
/// to bytes: a token that is not UTF-8 is no source's secret, refused as any wrong one is.
fn path_token(path: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
    webhook_target(path)
        .flatten()
        .map(|raw| percent_encoding::percent_decode_str(raw).into())
}

impl tower::Service<Request> for Dispatch {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>,
        axum::routing::future::RouteFuture<Self::Error>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        use futures_util::future::Either;
        if request.method() == axum::http::Method::POST
            && webhook_target(request.uri().path()).is_some()
        {
            let app = self.app.clone();
            let peer = self.peer.clone();
            return Either::Left(Box::pin(async move {
                if let Some(refusal) = headers_too_large(&app, &request) {
                    return Ok(refusal);
                }
                Ok(webhook::serve(&app, &peer, request).await)
            }));
        }
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer.clone()));
        Either::Right(tower::Service::call(&mut self.router, request))
    }
}

impl<'a, L> tower::Service<IncomingStream<'a, L>> for Dispatch
where
    L: axum::serve::Listener,
    Peer: Connected<IncomingStream<'a, L>>,
{
    type Response = Dispatch;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Dispatch, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(self.connection(Peer::connect_info(stream))))
    }
}

/// The length of the request target as sent, without writing it out.
fn target_len(uri: &axum::http::Uri) -> usize {
    let origin = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.len() + 3 + authority.as_str().len() + origin,
        (None, Some(authority)) => authority.as_str().len() + origin,
        _ => origin,
    }
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
