//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: both stores answer).

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let (redis, mongo) = tokio::join!(app.delivery.queue.ping(), app.delivery.store.ping());
    match (redis, mongo) {
        (Ok(()), Ok(())) => Ok(Json(
            json!({ "status": "ready", "redis": "ok", "mongodb": "ok" }),
        )),
        (redis, mongo) => {
            let problems: Vec<String> = [
                redis.err().map(|e| e.to_string()),
                mongo.err().map(|e| e.to_string()),
            ]
            .into_iter()
            .flatten()
            .collect();
            Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    problems.join("; "),
                )
            })
        }
    }
}
