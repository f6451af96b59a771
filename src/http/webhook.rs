//! `POST /webhook` and `POST /webhook/{token}`: read the body within the limit, let
//! `ingest` judge it, queue it, record it, answer 202.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::{ApiError, AppState, Peer};
use crate::{
    ingest::{self, Rejection},
    queue::Enqueued,
    store::Arrival,
};

#[derive(Debug, Serialize)]
pub struct Ack {
    pub id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

pub async fn receive(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    handle(&app, &peer, None, &headers, body).await
}

pub async fn receive_with_token(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    handle(&app, &peer, Some(&token), &headers, body).await
}

async fn handle(
    app: &AppState,
    peer: &Peer,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    let client = app.senders.client(peer, headers);
    let sender = client.map(|addr| addr.to_string());
    let result = if app.senders.allows(client) {
        accept(app, sender.clone(), token, headers, body).await
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sender_not_allowed",
            format!(
                "sender {} is not on the allowlist",
                sender.as_deref().unwrap_or("unknown")
            ),
        ))
    };
    if let Err(err) = &result {
        tracing::info!(
            code = err.code,
            status = err.status.as_u16(),
            sender,
            "alert rejected"
        );
    }
    result
}

async fn accept(
    app: &AppState,
    sender: Option<String>,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    let limit = app.intake.body_limit;
    let bytes = read_body(headers, body, limit, app.body_timeout).await?;
    let alert = app.intake.accept(ingest::Request {
        content_type: headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        content_encoding: headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        path_token: token,
        idempotency_key: headers.get("idempotency-key").map(|v| v.as_bytes()),
        body: &bytes,
        sender,
    })?;

    let enqueued = app
        .queue
        .enqueue(&alert, app.dedup_ttl)
        .await
        .map_err(|err| {
            tracing::error!(event_id = %alert.id, error = %err, "alert not queued");
            ApiError::storage_unavailable("the queue is unavailable; the alert was not accepted")
        })?;
    let (arrival, ack) = match enqueued {
        Enqueued::Queued { entry } => (
            Arrival::Queued { entry },
            Ack {
                id: alert.id.to_string(),
                status: "queued",
                duplicate_of: None,
            },
        ),
        Enqueued::Duplicate { first } => (
            Arrival::Duplicate {
                first: first.clone(),
            },
            Ack {
                id: alert.id.to_string(),
                status: "duplicate",
                duplicate_of: Some(first),
            },
        ),
    };
    tracing::info!(
        event_id = %alert.id,
        kind = alert.kind.as_str(),
        status = ack.status,
        sender = alert.sender.as_deref(),
        "alert accepted"
    );
    // The job is durable in Redis now, so the answer need not wait long for MongoDB. The
    // write runs in its own task (which takes the alert): past the wait it still
    // completes, and should it fail, the worker writes the audit record from the job.
    let id = alert.id;
    let store = app.store.clone();
    let write = tokio::spawn(async move { store.insert_audit(&alert, arrival).await });
    match tokio::time::timeout(app.store_timeout, write).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => {
            tracing::warn!(event_id = %id, error = %err, "audit record deferred to the worker");
        }
        Ok(Err(panic)) => {
            tracing::error!(event_id = %id, error = %panic, "audit write task failed");
        }
        Err(_) => {
            tracing::warn!(event_id = %id, "audit record still being written; answering now");
        }
    }
    Ok((StatusCode::ACCEPTED, Json(ack)))
}

/// Reads the body, refusing it as soon as it passes `limit`, whether the length was
/// declared up front or the body arrives chunked, or when it takes longer than `timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Rejection::TooLarge { limit }.into());
    }
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Rejection::TooLarge { limit }.into())
        }
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_error",
            format!("the body could not be read: {err}"),
        )),
    }
}
