//! The benchmark's ceiling: an HTTP server that answers every request with pyron-api's
//! 202 and stores nothing. `scripts/bench.py` puts the same NGINX in front of it that it
//! puts in front of Pyron, so the ratio of the two shows what storing costs; it is also
//! the local sink the benchmark's route delivers to.
//!
//! usage: cargo run --release --example null_handler -- ADDR [ADDR ...]
//! where each ADDR is host:port or unix:/path (default 127.0.0.1:9000).

use axum::{Router, http::StatusCode, routing::post};
use tokio::net::{TcpListener, UnixListener};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:9000".into());
    }
    let answer = || async {
        (
            StatusCode::ACCEPTED,
            [("content-type", "application/json")],
            r#"{"id":"00000000-0000-7000-8000-000000000000","status":"queued"}"#,
        )
    };
    let app = Router::new()
        .route("/webhook", post(answer))
        .route("/webhook/{token}", post(answer));
    let mut servers = tokio::task::JoinSet::new();
    for addr in addrs {
        let app = app.clone();
        if let Some(path) = addr.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).expect("bind");
            servers.spawn(async move { axum::serve(listener, app).await });
        } else {
            let listener = TcpListener::bind(&addr).await.expect("bind");
            servers.spawn(async move { axum::serve(listener, app).await });
        }
    }
    while let Some(served) = servers.join_next().await {
        served.expect("server task").expect("serve");
    }
}
