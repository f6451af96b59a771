//! `POST /webhook` and `POST /webhook/{token}`: read the body within the limit, let
//! `ingest` judge it, queue it, record it, answer 202.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Body,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::{ApiError, AppState, Counters, Peer};
use crate::{
    ingest::{self, Alert, Rejection},
    queue::Enqueued,
    stats::Event,
    store::Arrival,
};

#[derive(Debug, Serialize)]
pub struct Ack {
    pub id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// Kept in MongoDB alone (Redis was down); not part of the answer.
    #[serde(skip)]
    pub kept: bool,
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
    let started = Instant::now();
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
    app.latency.record(started.elapsed());
    let counters = &app.counters;
    let event = match &result {
        Ok((_, Json(ack))) => {
            Counters::add(&counters.accepted);
            match ack.status {
                "duplicate" => {
                    Counters::add(&counters.duplicates);
                    Some(Event::Duplicate)
                }
                _ if ack.kept => {
                    Counters::add(&counters.kept);
                    Some(Event::Kept)
                }
                _ => Some(Event::Queued),
            }
        }
        Err(err) => {
            if err.status == StatusCode::SERVICE_UNAVAILABLE {
                Counters::add(&counters.unavailable);
            } else {
                Counters::add(&counters.refused);
            }
            tracing::info!(
                code = err.code,
                status = err.status.as_u16(),
                sender,
                "alert rejected"
            );
            (err.status != StatusCode::SERVICE_UNAVAILABLE).then_some(Event::Rejected)
        }
    };
    // Counted for the dashboard off the request path, and never in its way.
    if let Some(event) = event {
        app.tally.add(event);
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

    let deadline = Instant::now() + app.store_timeout;
    if app.queue_breaker.is_open() {
        return keep_in_mongo(app, alert, deadline).await;
    }
    let (arrival, ack) = match app.queue.enqueue(&alert, app.dedup_ttl).await {
        Ok(Enqueued::Queued { entry }) => (Arrival::Queued { entry: Some(entry) }, "queued"),
        Ok(Enqueued::AlreadyQueued) => (Arrival::Queued { entry: None }, "queued"),
        Ok(Enqueued::Duplicate { first }) => (Arrival::Duplicate { first }, "duplicate"),
        Err(err) => {
            if app.queue_breaker.trip() {
                tracing::warn!(
                    error = %err,
                    skip_ms = app.queue_breaker.window.as_millis() as u64,
                    "queue unavailable; alerts go to MongoDB alone until it answers again"
                );
            }
            return keep_in_mongo(app, alert, deadline).await;
        }
    };
    let ack = Ack {
        id: alert.id.to_string(),
        status: ack,
        duplicate_of: match &arrival {
            Arrival::Duplicate { first } => Some(first.clone()),
            _ => None,
        },
        kept: false,
    };
    tracing::info!(
        event_id = %alert.id,
        kind = alert.kind.as_str(),
        status = ack.status,
        sender = alert.sender.as_deref(),
        "alert accepted"
    );
    // The job is durable in Redis, and carries the whole alert: the answer need not wait
    // for MongoDB: the audit record goes to the batching writer. Should the writer be full
    // or the write fail, the worker writes the record from the job.
    if !app.audit.offer(alert, arrival) {
        tracing::debug!("audit writer full; the worker writes this audit record");
    }
    Ok((StatusCode::ACCEPTED, Json(ack)))
}

/// Redis could not take the alert: MongoDB alone keeps it, marked `unqueued`, and the
/// reconciler queues it once Redis is back. Neither store: 503 before `deadline`.
async fn keep_in_mongo(
    app: &AppState,
    alert: Alert,
    deadline: Instant,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    let id = alert.id;
    let store = app.store.clone();
    // The write runs to its end even if the answer cannot wait for it, so that it is
    // never cut off half-way; if it lands after a 503, it is withdrawn (below).
    let mut write = app
        .tasks
        .spawn(async move { store.insert_audit(&alert, Arrival::Unqueued).await });
    let unavailable = || {
        ApiError::storage_unavailable(
            "neither Redis nor MongoDB could take the alert; it was not accepted, send it again",
        )
    };
    match tokio::time::timeout_at(deadline.into(), &mut write).await {
        Ok(Ok(Ok(()))) => {
            app.reconcile.notify_one();
            tracing::info!(event_id = %id, status = "unqueued", "alert accepted; it waits in MongoDB for the queue");
            Ok((
                StatusCode::ACCEPTED,
                Json(Ack {
                    id: id.to_string(),
                    status: "queued",
                    duplicate_of: None,
                    kept: true,
                }),
            ))
        }
        Ok(Ok(Err(err))) => {
            tracing::error!(event_id = %id, error = %err, "alert not accepted: no store took it");
            Err(unavailable())
        }
        Ok(Err(panic)) => {
            tracing::error!(event_id = %id, error = %panic, "audit write task failed");
            Err(unavailable())
        }
        Err(_) => {
            // Still in flight. The sender was told the alert was not taken, so should the
            // write land, it is withdrawn; the reconciler leaves records alone until they
            // are older than any request's budget.
            let store = app.background_store.clone();
            app.tasks.spawn(async move {
                if let Ok(Ok(())) = write.await {
                    match store.withdraw_unqueued(&id.to_string()).await {
                        Ok(true) => tracing::warn!(event_id = %id, "audit record written after its 503; withdrawn"),
                        Ok(false) => tracing::warn!(event_id = %id, "audit record written after its 503 was queued already; the alert will be processed"),
                        Err(err) => tracing::error!(event_id = %id, error = %err, "audit record written after its 503 could not be withdrawn; the alert will be processed"),
                    }
                }
            });
            tracing::error!(event_id = %id, "alert not accepted: MongoDB did not answer in time");
            Err(unavailable())
        }
    }
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
