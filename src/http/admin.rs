//! The operator's endpoints for dead letters, behind `Authorization: Bearer
//! <PYRON_ADMIN_TOKEN>`: `GET /api/dead-letters?limit=N` lists them, `POST
//! /api/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}` moves them back to the
//! work stream.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::{domain::EventId, queue::DeadLetter};

const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetters {
    dead_letters: Vec<DeadLetter>,
}

pub async fn dead_letters(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    authorize(&app, &headers)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let dead_letters = app.queue.dead_letters(limit).await.map_err(redis_down)?;
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
    authorize(&app, &headers)?;
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
    let replayed = app.queue.replay(ids.as_deref()).await.map_err(redis_down)?;
    tracing::info!(replayed, "dead letters replayed");
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned());
    let Some(token) = &app.admin_token else {
        return Err(unauthorized(
            "the admin API is off: set PYRON_ADMIN_TOKEN to use it",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("send Authorization: Bearer <admin token>"))?;
    if token.matches(given.trim().as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("wrong admin token"))
    }
}

fn redis_down(err: crate::queue::QueueError) -> ApiError {
    tracing::error!(error = %err, "dead letters unavailable");
    ApiError::storage_unavailable("Redis is unavailable; try again")
}
