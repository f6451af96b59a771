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
use crate::{queue::DeadLetter, stats::Activity, store::EventRow};

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
        events,
        dead_letters,
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
    Ok(Json(recent(&app, &query).await?))
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
    Ok(Json(EventDetail { audit, job }))
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
    let events = recent(&app, &query).await.unwrap_or_default();
    let dead = app
        .delivery
        .queue
        .dead_letters(20)
        .await
        .unwrap_or_default();
    Html(pages::dashboard(&stats, &events, &dead, &query).into_string()).into_response()
}
