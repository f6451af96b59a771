//! The dashboard a trader keeps open: `GET /` renders the page with the numbers of the
//! moment (so it works without JavaScript), `/api/stream` keeps it live over Server-Sent
//! Events, `/api/stats` and `/api/events` give the same as JSON. All of it behind the
//! admin secret (`auth`): a login form sets the session cookie.

use std::{convert::Infallible, fmt::Write, sync::Arc, time::Duration};

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

use super::{ApiError, AppState, auth};
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
    activity: Activity,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
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
    ticker: Option<String>,
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
    Html(login_html(app.admin_token.is_some(), None))
}

pub async fn login(State(app): State<Arc<AppState>>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &app.admin_token else {
        return (StatusCode::UNAUTHORIZED, Html(login_html(false, None))).into_response();
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
            Html(login_html(true, Some("That is not the admin token."))),
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
    Html(page(&stats, &events, &dead, &query)).into_response()
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The end of an event id, enough to tell alerts of the same minute apart.
fn short_id(id: &str) -> &str {
    &id[id.len().saturating_sub(12)..]
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value
        .map(|v| esc(&v.to_string()))
        .unwrap_or_else(|| "–".into())
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>",
        esc(title)
    )
}

fn login_html(enabled: bool, error: Option<&str>) -> String {
    let mut html = head("Pyron: log in");
    html.push_str("<section class=\"login\"><h2>Pyron dashboard</h2>");
    if !enabled {
        html.push_str("<p class=\"error\">The dashboard is off: set PYRON_ADMIN_TOKEN on pyron-api to use it.</p>");
    } else {
        if let Some(error) = error {
            let _ = write!(html, "<p class=\"error\">{}</p>", esc(error));
        }
        html.push_str(
            "<form method=\"post\" action=\"/login\"><p><label>Admin token<br>\
             <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required autofocus></label></p>\
             <p><button type=\"submit\" id=\"login\">Log in</button></p></form>",
        );
    }
    html.push_str("</section></body></html>");
    html
}

fn page(
    stats: &StatsView,
    events: &[EventRow],
    dead: &[DeadLetter],
    query: &EventsQuery,
) -> String {
    let a = &stats.activity;
    let mut h = head("Pyron");
    h.push_str(
        "<header><h1>Pyron</h1><span id=\"live\" class=\"live\">loaded now</span>\
         <form method=\"post\" action=\"/logout\"><button>Log out</button></form></header><main>",
    );
    // Counts.
    h.push_str("<section><h2>Alerts</h2><table id=\"counts\"><tr><th></th><th>last hour</th><th>last day</th></tr>");
    for (label, field) in [
        ("received", "received"),
        ("queued", "queued"),
        ("processed", "processed"),
        ("retrying", "retrying"),
        ("dead", "dead"),
        ("duplicates", "duplicates"),
        ("rejected", "rejected"),
    ] {
        let pick = |c: &crate::stats::Counts| match field {
            "received" => c.received,
            "queued" => c.queued,
            "processed" => c.processed,
            "retrying" => c.retrying,
            "dead" => c.dead,
            "duplicates" => c.duplicates,
            _ => c.rejected,
        };
        let _ = write!(
            h,
            "<tr><th scope=\"row\">{label}</th><td class=\"n\" data-count=\"hour.{field}\">{}</td>\
             <td class=\"n\" data-count=\"day.{field}\">{}</td></tr>",
            pick(&a.hour),
            pick(&a.day)
        );
    }
    h.push_str("</table></section>");
    // Latency and queue.
    let _ = write!(
        h,
        "<section><h2>Latency and queue</h2><table>\
         <tr><th scope=\"row\">acknowledgement p50 / p99 (ms)</th><td class=\"n\"><span data-stat=\"ack_p50_ms\">{}</span> / <span data-stat=\"ack_p99_ms\">{}</span></td></tr>\
         <tr><th scope=\"row\">end-to-end lag p50 / p99 (ms)</th><td class=\"n\"><span data-stat=\"lag_p50_ms\">{}</span> / <span data-stat=\"lag_p99_ms\">{}</span></td></tr>\
         <tr><th scope=\"row\">queue depth</th><td class=\"n\" data-stat=\"queue_depth\">{}</td></tr>\
         <tr><th scope=\"row\">pending</th><td class=\"n\" data-stat=\"pending\">{}</td></tr>\
         <tr><th scope=\"row\">dead letters</th><td class=\"n\" data-stat=\"dead_letters\">{}</td></tr></table></section>",
        opt(stats.ack_p50_ms.map(|v| (v * 10.0).round() / 10.0)),
        opt(stats.ack_p99_ms.map(|v| (v * 10.0).round() / 10.0)),
        opt(a.lag_p50_ms),
        opt(a.lag_p99_ms),
        a.queue_depth,
        a.pending,
        a.dead_letters
    );
    // Chart.
    let max = a.per_minute.iter().copied().max().unwrap_or(0).max(1);
    h.push_str("<section><h2>Alerts per minute, last hour</h2><svg class=\"chart\" viewBox=\"0 0 600 80\" preserveAspectRatio=\"none\">");
    for (i, n) in a.per_minute.iter().enumerate() {
        let height = *n as f64 / max as f64 * 78.0;
        let _ = write!(
            h,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"8\" height=\"{height:.1}\"><title>{n} alerts, {} min ago</title></rect>",
            i * 10,
            80.0 - height,
            a.per_minute.len() - i - 1
        );
    }
    h.push_str("</svg></section>");
    // Workers.
    h.push_str("<section><h2>Workers</h2><table id=\"workers\"><thead><tr><th>consumer</th><th>pending</th><th>last heartbeat</th></tr></thead><tbody>");
    for w in &a.workers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&w.name),
            w.pending,
            w.heartbeat_ms_ago
                .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".into())
        );
    }
    h.push_str("</tbody></table></section>");
    // Recent alerts.
    let _ = write!(
        h,
        "<section class=\"wide\"><h2>Recent alerts</h2>\
         <form method=\"get\" action=\"/\"><input id=\"filter\" name=\"ticker\" placeholder=\"filter: ticker, action, status\" value=\"{}\"> \
         <noscript><button>Filter</button></noscript></form>\
         <div class=\"scroll\"><table id=\"events\"><thead><tr><th>time</th><th>ticker</th><th>action</th><th>price</th><th>status</th><th>lag</th></tr></thead><tbody>",
        esc(query.ticker.as_deref().unwrap_or(""))
    );
    for e in events {
        let _ = write!(
            h,
            "<tr class=\"event\" data-id=\"{id}\"><td><a href=\"/api/events/{id}\">{}</a></td>",
            opt(e.received_at.map(|t| t.format("%H:%M:%S").to_string())),
            id = esc(&e.id),
        );
        match (&e.text, &e.ticker) {
            (Some(text), None) => {
                let _ = write!(h, "<td colspan=\"3\" class=\"message\">{}</td>", esc(text));
            }
            _ => {
                let _ = write!(
                    h,
                    "<td>{}</td><td>{}</td><td class=\"n\">{}</td>",
                    opt(e.ticker.as_deref()),
                    opt(e.action.as_deref()),
                    opt(e.price),
                );
            }
        }
        let _ = write!(
            h,
            "<td class=\"status-{status}\">{status}",
            status = esc(&e.status)
        );
        if let Some(first) = &e.duplicate_of {
            let _ = write!(
                h,
                " of <a class=\"first\" data-open=\"{id}\" href=\"/api/events/{id}\">{}</a>",
                esc(short_id(first)),
                id = esc(first),
            );
        }
        if let Some(error) = &e.error {
            let _ = write!(h, "<div class=\"why\">{}</div>", esc(error));
        }
        let _ = write!(
            h,
            "</td><td class=\"n\">{}</td></tr>",
            opt(e.lag_ms.map(|l| format!("{l} ms")))
        );
    }
    h.push_str(
        "</tbody></table></div><div id=\"detail\" hidden><h2>Alert <span id=\"detail-id\"></span></h2>\
         <p class=\"muted\">audit</p><pre id=\"detail-audit\"></pre><p class=\"muted\">jobs</p><pre id=\"detail-job\"></pre></div></section>",
    );
    // Dead letters.
    h.push_str("<section class=\"wide\"><h2>Dead letters</h2><p id=\"replay-result\" class=\"muted\"></p><div class=\"scroll\"><table id=\"dead\"><thead><tr><th>alert</th><th>reason</th><th></th></tr></thead><tbody>");
    for d in dead {
        let id = d.id.as_deref().unwrap_or("");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><button data-replay=\"{}\">Replay</button></td></tr>",
            esc(id),
            esc(&d.reason),
            esc(id)
        );
    }
    h.push_str("</tbody></table></div></section></main>");
    h.push_str("<noscript><p class=\"muted\" style=\"padding:0 20px\">JavaScript is off: reload for current numbers.</p></noscript>");
    h.push_str("<script src=\"/assets/app.js\" defer></script></body></html>");
    h
}
