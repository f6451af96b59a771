//! The benchmark's ceiling: an HTTP server that answers every request with pyron-api's
//! 202 and stores nothing. `scripts/bench.py` puts the same NGINX in front of it that it
//! puts in front of Pyron, so the ratio of the two shows what storing costs.
//!
//! usage: cargo run --release --example null_handler -- 127.0.0.1:9000

use axum::{Router, http::StatusCode, routing::post};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
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
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
