//! The operator's endpoints for dead letters, behind the admin secret (see `auth`): `GET /api/dead-letters?limit=N` lists them, `POST
//! /api/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}` moves them back to the
//! work stream.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, auth};
use crate::{domain::EventId, queue::DeadLetter};

const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

pub async fn dead_letters(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let dead_letters = app
        .delivery
        .queue
        .dead_letters(limit)
        .await
        .map_err(redis_down)?;
    Ok(Json(DeadLetters { dead_letters }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Serialize)]
pub struct Replayed {
    replayed: usize,
}

pub async fn replay(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::POST, &headers)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "expected {{\"ids\": [...]}} or {{\"all\": true}}: {e}"
        ))
    })?;
    let ids = match (request.all, request.ids.is_empty()) {
        (true, true) => None,
        (false, false) => {
            for id in &request.ids {
                id.parse::<EventId>()
                    .map_err(|_| bad(format!("{id:?} is not an event id")))?;
            }
            Some(request.ids)
        }
        (true, false) => return Err(bad("give either ids or all, not both".into())),
        (false, true) => return Err(bad("give the event ids to replay, or \"all\": true".into())),
    };
    let replayed = app
        .delivery
        .queue
        .replay(ids.as_deref())
        .await
        .map_err(redis_down)?;
    tracing::info!(replayed, "dead letters replayed");
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}

fn redis_down(err: crate::queue::QueueError) -> ApiError {
    tracing::error!(error = %err, "dead letters unavailable");
    ApiError::storage_unavailable("Redis is unavailable; try again")
}
