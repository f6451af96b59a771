//! The dashboard a trader keeps open: `GET /` renders the page with the numbers of the
//! moment (so it works without JavaScript), `/api/stream` keeps it live over Server-Sent
//! Events, `/api/stats` and `/api/events` give the same as JSON. All of it behind the
//! admin secret (`auth`): a login form sets the session cookie.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Form, Json,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::stream;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, auth, pages};
use crate::{
    forward::outbox::DeadDelivery,
    queue::DeadLetter,
    stats::{Activity, DeliveryStats},
    store::{DeliveryRow, EventRow},
};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");
const STREAM_EVERY: Duration = Duration::from_secs(2);
const RECENT: i64 = 50;

/// What the page shows, as the stream sends it.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    stats: StatsView,
    events: Vec<EventRow>,
    dead_letters: Vec<DeadLetter>,
    deliveries: Deliveries,
}

/// The deliveries part of the page: each destination's counts and breaker, the latest
/// deliveries that did not go through, and the dead and expired ones to replay.
#[derive(Debug, Default, Serialize)]
pub struct Deliveries {
    pub stats: DeliveryStats,
    pub failing: Vec<DeliveryRow>,
    pub dead: Vec<DeadDelivery>,
}

/// The deliveries part, best effort: the page shows what it can.
async fn deliveries(app: &AppState) -> Deliveries {
    let stats = app
        .delivery
        .queue
        .stats()
        .deliveries()
        .await
        .unwrap_or_default();
    let failing = app
        .delivery
        .background_store
        .recent_deliveries(20, true)
        .await
        .unwrap_or_default();
    let mut conn = app.delivery.queue.connection();
    let dead = crate::forward::outbox::dead_letters(&mut conn, 20, Duration::from_secs(1))
        .await
        .unwrap_or_default();
    Deliveries {
        stats,
        failing,
        dead,
    }
}

/// Gives each alert the fate of its deliveries.
async fn with_deliveries(app: &AppState, mut events: Vec<EventRow>) -> Vec<EventRow> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let Ok(found) = app.delivery.background_store.deliveries_of(&ids).await else {
        return events;
    };
    for delivery in found {
        if let Some(event) = events.iter_mut().find(|e| e.id == delivery.event) {
            event.deliveries.push(delivery);
        }
    }
    for event in &mut events {
        event.deliveries.sort_by(|a, b| a.id.cmp(&b.id));
    }
    events
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    #[serde(flatten)]
    pub activity: Activity,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

async fn stats_view(app: &AppState) -> Result<StatsView, ApiError> {
    let activity = app.delivery.queue.stats().activity().await.map_err(|err| {
        tracing::warn!(error = %err, "dashboard: Redis unavailable");
        ApiError::storage_unavailable("Redis is unavailable; the dashboard needs it")
    })?;
    let (ack_p50_ms, ack_p99_ms) = app.latency.percentiles();
    Ok(StatsView {
        activity,
        ack_p50_ms,
        ack_p99_ms,
    })
}

async fn snapshot(app: &AppState) -> Result<Snapshot, ApiError> {
    let stats = stats_view(app).await?;
    let events = app
        .delivery
        .background_store
        .recent(RECENT)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "dashboard: MongoDB unavailable");
            ApiError::storage_unavailable("MongoDB is unavailable; the dashboard needs it")
        })?;
    let dead_letters = app
        .delivery
        .queue
        .dead_letters(20)
        .await
        .unwrap_or_default();
    Ok(Snapshot {
        stats,
        events: with_deliveries(app, events).await,
        dead_letters,
        deliveries: deliveries(app).await,
    })
}

pub async fn stats(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<StatsView>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    Ok(Json(stats_view(&app).await?))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    limit: Option<i64>,
    status: Option<String>,
    pub ticker: Option<String>,
}

/// The recent alerts, newest first; `status` and `ticker` filter them.
pub async fn events(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<EventRow>>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    Ok(Json(
        with_deliveries(&app, recent(&app, &query).await?).await,
    ))
}

async fn recent(app: &AppState, query: &EventsQuery) -> Result<Vec<EventRow>, ApiError> {
    let limit = query.limit.unwrap_or(RECENT).clamp(1, 500);
    let filtered = query.status.is_some() || query.ticker.is_some();
    // Filters apply to the latest alerts, so fetch more when filtering.
    let fetch = if filtered {
        (limit * 10).min(1000)
    } else {
        limit
    };
    let rows = app
        .delivery
        .background_store
        .recent(fetch)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "events: MongoDB unavailable");
            ApiError::storage_unavailable("MongoDB is unavailable")
        })?;
    let wanted = |row: &EventRow| {
        query
            .status
            .as_deref()
            .is_none_or(|s| s.is_empty() || row.status == s)
            && query.ticker.as_deref().is_none_or(|t| {
                t.is_empty()
                    || row
                        .ticker
                        .as_deref()
                        .is_some_and(|r| r.eq_ignore_ascii_case(t))
            })
    };
    Ok(rows
        .into_iter()
        .filter(wanted)
        .take(limit as usize)
        .collect())
}

#[derive(Debug, Serialize)]
pub struct EventDetail {
    audit: Option<serde_json::Value>,
    job: Option<serde_json::Value>,
    deliveries: Vec<DeliveryRow>,
}

pub async fn event(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    let (audit, job) = app
        .delivery
        .background_store
        .event(&id)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "event: MongoDB unavailable");
            ApiError::storage_unavailable("MongoDB is unavailable")
        })?;
    if audit.is_none() && job.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id}"),
        ));
    }
    let deliveries = app
        .delivery
        .background_store
        .deliveries_of(std::slice::from_ref(&id))
        .await
        .unwrap_or_default();
    Ok(Json(EventDetail {
        audit,
        job,
        deliveries,
    }))
}

/// A snapshot every two seconds, as the event `snapshot`. `X-Accel-Buffering: no` tells
/// NGINX to pass each event on at once.
pub async fn stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    auth::check(app.admin_token.as_ref(), &Method::GET, &headers)?;
    let ticks = stream::unfold((app, true), |(app, first)| async move {
        if !first {
            tokio::time::sleep(STREAM_EVERY).await;
        }
        let event = match snapshot(&app).await {
            Ok(snapshot) => SseEvent::default()
                .event("snapshot")
                .json_data(&snapshot)
                .unwrap_or_else(|_| SseEvent::default().comment("unserializable")),
            Err(err) => SseEvent::default().event("unavailable").data(err.message),
        };
        Some((Ok::<_, Infallible>(event), (app, false)))
    });
    Ok((
        [("x-accel-buffering", "no")],
        Sse::new(ticks).keep_alive(KeepAlive::default()),
    ))
}

pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login_page(State(app): State<Arc<AppState>>) -> Html<String> {
    Html(pages::login(app.admin_token.is_some(), None).into_string())
}

pub async fn login(State(app): State<Arc<AppState>>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &app.admin_token else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(false, None).into_string()),
        )
            .into_response();
    };
    if token.matches(form.token.trim().as_bytes()) {
        tracing::info!("dashboard login");
        (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, auth::session_cookie(token)),
                (header::LOCATION, "/".to_owned()),
            ],
        )
            .into_response()
    } else {
        tracing::warn!(code = "invalid_admin_token", "dashboard login refused");
        (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(true, Some("That is not the admin token.")).into_string()),
        )
            .into_response()
    }
}

pub async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::expired_cookie()),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

/// The page, with the numbers of this moment.
pub async fn index(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    if auth::check(app.admin_token.as_ref(), &Method::GET, &headers).is_err() {
        return Redirect::to("/login").into_response();
    }
    let stats = match stats_view(&app).await {
        Ok(stats) => stats,
        Err(err) => return err.into_response(),
    };
    let events = with_deliveries(&app, recent(&app, &query).await.unwrap_or_default()).await;
    let dead = app
        .delivery
        .queue
        .dead_letters(20)
        .await
        .unwrap_or_default();
    let deliveries = deliveries(&app).await;
    Html(pages::dashboard(&stats, &events, &dead, &deliveries, &query).into_string())
        .into_response()
}
