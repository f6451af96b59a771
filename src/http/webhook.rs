//! `POST /webhook` and `POST /webhook/{token}`: read the body within the limit, let
//! `ingest` judge it and `delivery` make it durable, answer 202.

use std::{net::IpAddr, sync::Arc, time::Duration, time::Instant};

use axum::{
    Json,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::{ApiError, AppState, Counters, Peer};
use crate::{
    delivery::{Receipt, Unavailable},
    domain::EventId,
    ingest::{self, Rejection},
    stats::Tallied,
};

/// The answer to an accepted alert.
#[derive(Debug, Serialize)]
pub struct Ack {
    pub id: EventId,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

impl From<&Receipt> for Ack {
    fn from(receipt: &Receipt) -> Ack {
        let (status, duplicate_of) = match receipt {
            Receipt::Queued { .. } | Receipt::KeptInMongo { .. } => ("queued", None),
            Receipt::Duplicate { first, .. } => ("duplicate", Some(first.clone())),
        };
        Ack {
            id: receipt.id(),
            status,
            duplicate_of,
        }
    }
}

impl From<Unavailable> for ApiError {
    fn from(unavailable: Unavailable) -> ApiError {
        ApiError::storage_unavailable(unavailable.to_string())
    }
}

/// The router's handler of both webhook routes. `Dispatch` takes every `POST` to them
/// before the router sees it (`serve`, the same way): the routes are there so that the
/// router answers other methods on their paths 405.
pub async fn receive(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    serve(&app, &peer, request).await
}

/// Answers one `POST /webhook` or `POST /webhook/{token}`. The request is taken whole,
/// not as `HeaderMap` and `Body`: axum's `HeaderMap` extractor clones every header.
pub(super) async fn serve(app: &AppState, peer: &Peer, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let token = super::path_token(parts.uri.path());
    handle(app, peer, token.as_deref(), &parts.headers, body)
        .await
        .into_response()
}

async fn handle(
    app: &AppState,
    peer: &Peer,
    token: Option<&[u8]>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    let started = Instant::now();
    let client = app.senders.client(peer, headers);
    let result = if app.senders.allows(client) {
        accept(app, peer, client, token, headers, body).await
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sender_not_allowed",
            format!(
                "sender {} is not on the allowlist",
                client.map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
            ),
        ))
    };
    app.latency.record(started.elapsed());
    let counters = &app.counters;
    let event = match &result {
        Ok(receipt) => {
            Counters::add(&counters.accepted);
            match receipt {
                Receipt::Duplicate { .. } => {
                    Counters::add(&counters.duplicates);
                    Some(Tallied::Duplicate)
                }
                Receipt::KeptInMongo { .. } => {
                    Counters::add(&counters.kept);
                    Some(Tallied::KeptInMongo)
                }
                Receipt::Queued { .. } => Some(Tallied::Queued),
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
                sender = client.map(tracing::field::display),
                "alert rejected"
            );
            (err.status != StatusCode::SERVICE_UNAVAILABLE).then_some(Tallied::Rejected)
        }
    };
    // Counted for the dashboard off the request path, and never in its way.
    if let Some(event) = event {
        app.tally.add(event);
    }
    result.map(|receipt| (StatusCode::ACCEPTED, Json(Ack::from(&receipt))))
}

async fn accept(
    app: &AppState,
    peer: &Peer,
    sender: Option<IpAddr>,
    token: Option<&[u8]>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Receipt, ApiError> {
    let limit = app.intake.body_limit;
    let client_subject = app.senders.client_certificate(peer, headers);
    let bytes = read_body(headers, body, limit, app.body_timeout).await?;
    let alert = app.intake.accept(ingest::Request {
        content_type: headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        content_encoding: headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        path_token: token,
        idempotency_key: headers.get("idempotency-key").map(|v| v.as_bytes()),
        body: &bytes,
        sender,
        client_subject: client_subject.as_deref(),
    })?;
    Ok(app.delivery.accept(alert).await?)
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
    // Behind NGINX (which buffers request bodies) the body is in hand with the headers:
    // a timer is set only for a body still on its way.
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    let read = match futures_util::poll!(collect.as_mut()) {
        std::task::Poll::Ready(read) => Ok(read),
        std::task::Poll::Pending => tokio::time::timeout(timeout, collect).await,
    };
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
