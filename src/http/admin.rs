//! The operator's endpoints for dead letters, behind the admin secret (see `auth`): `GET /api/dead-letters?limit=N` lists them, `POST
//! /api/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}` moves them back to the
//! work stream.
//!
//! And for deliveries: `GET /api/deliveries?limit=N&failing=true` lists the latest
//! records, `GET /api/deliveries/dead?limit=N` the dead and expired ones, `POST
//! /api/deliveries/replay` with `{"ids": [...], "mode": "as-it-was" | "now"}` sends them
//! again (see `forward::outbox::Replay`).

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

#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    limit: Option<i64>,
    #[serde(default)]
    failing: bool,
}

pub async fn deliveries(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<Vec<crate::store::DeliveryRow>>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT as i64);
    let rows = app
        .delivery
        .background_store
        .recent_deliveries(limit, query.failing)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "deliveries: MongoDB unavailable");
            ApiError::storage_unavailable("MongoDB is unavailable")
        })?;
    Ok(Json(rows))
}

pub async fn dead_deliveries(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<crate::forward::outbox::DeadDelivery>>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let mut conn = app.delivery.queue.connection();
    let dead =
        crate::forward::outbox::dead_letters(&mut conn, limit, std::time::Duration::from_secs(2))
            .await
            .map_err(redis_down)?;
    Ok(Json(dead))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReplay {
    ids: Vec<String>,
    mode: crate::forward::Replay,
}

pub async fn replay_deliveries(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::POST, &headers)?;
    let request: DeliveryReplay = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"ids\": [...], \"mode\": \"as-it-was\" or \"now\"}}: {e}"),
        )
    })?;
    if request.ids.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give the delivery ids to replay",
        ));
    }
    let mut conn = app.delivery.queue.connection();
    let replayed = crate::forward::outbox::replay(
        &mut conn,
        &request.ids,
        request.mode,
        std::time::Duration::from_secs(2),
    )
    .await
    .map_err(redis_down)?;
    tracing::info!(
        replayed,
        mode = request.mode.as_str(),
        "deliveries replayed"
    );
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}
