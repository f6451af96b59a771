//! `GET /metrics` in Prometheus's text format, behind the admin secret (the counts show
//! trading activity): this pyron-api's answers and acknowledgement latency, the jobs and
//! end-to-end lag every worker counted in Redis, and the queue.

use std::{
    collections::VecDeque,
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState, auth};
use crate::stats::LAG_BUCKETS;

/// Upper bounds of the acknowledgement-latency histogram, in seconds.
const ACK_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const RECENT: usize = 1000;

/// How long `POST /webhook` took to answer, from the first byte of the request handled
/// to the answer: a histogram for Prometheus and the last thousand for percentiles.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; ACK_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    recent: Mutex<VecDeque<u32>>,
}

impl Latency {
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in ACK_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = took.as_micros().min(u32::MAX as u128) as u32;
        self.sum_micros.fetch_add(micros as u64, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(micros);
    }

    /// The p50 and p99 of the recent answers, in milliseconds.
    pub fn percentiles(&self) -> (Option<f64>, Option<f64>) {
        let mut recent: Vec<u32> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        recent.sort_unstable();
        let at = |p: f64| {
            (!recent.is_empty()).then(|| {
                let rank = ((recent.len() as f64 * p).ceil() as usize).clamp(1, recent.len());
                recent[rank - 1] as f64 / 1000.0
            })
        };
        (at(0.5), at(0.99))
    }
}

pub async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(err) = auth::check(app.admin_token.as_ref(), &Method::GET, &headers) {
        return err.into_response();
    }
    match render(&app).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

async fn render(app: &AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    let c = app.counters.snapshot();
    let w = &mut out;
    help(
        w,
        "pyron_alerts_total",
        "counter",
        "Alerts this pyron-api answered, by outcome.",
    );
    for (outcome, n) in [
        ("queued", c.accepted - c.duplicates - c.kept),
        ("kept_in_mongodb", c.kept),
        ("duplicate", c.duplicates),
        ("rejected", c.refused),
        ("unavailable", c.unavailable),
    ] {
        let _ = writeln!(w, "pyron_alerts_total{{outcome=\"{outcome}\"}} {n}");
    }

    help(
        w,
        "pyron_ack_duration_seconds",
        "histogram",
        "Time from request to answer on POST /webhook.",
    );
    let l = &app.latency;
    for (bound, bucket) in ACK_BUCKETS.iter().zip(&l.buckets) {
        let _ = writeln!(
            w,
            "pyron_ack_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Ordering::Relaxed)
        );
    }
    let count = l.count.load(Ordering::Relaxed);
    let _ = writeln!(
        w,
        "pyron_ack_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        w,
        "pyron_ack_duration_seconds_sum {}",
        l.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(w, "pyron_ack_duration_seconds_count {count}");

    let stats = app.delivery.queue.stats();
    let unavailable = |err: redis::RedisError| {
        tracing::warn!(error = %err, "metrics: Redis unavailable");
        ApiError::storage_unavailable("Redis is unavailable; the metrics need it")
    };
    let totals = stats.totals().await.map_err(unavailable)?.fields;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    help(
        w,
        "pyron_jobs_total",
        "counter",
        "Job outcomes recorded by the workers, by status (all workers, since Redis's data began).",
    );
    for status in ["processed", "retrying", "dead"] {
        let _ = writeln!(w, "pyron_jobs_total{{status=\"{status}\"}} {}", get(status));
    }
    help(
        w,
        "pyron_lag_seconds",
        "histogram",
        "Time from an alert's arrival to its processed jobs record.",
    );
    for bound in LAG_BUCKETS {
        let _ = writeln!(
            w,
            "pyron_lag_seconds_bucket{{le=\"{bound}\"}} {}",
            get(&format!("lag_le_{bound}"))
        );
    }
    let _ = writeln!(
        w,
        "pyron_lag_seconds_bucket{{le=\"+Inf\"}} {}",
        get("lag_count")
    );
    let _ = writeln!(
        w,
        "pyron_lag_seconds_sum {}",
        get("lag_sum_ms") as f64 / 1000.0
    );
    let _ = writeln!(w, "pyron_lag_seconds_count {}", get("lag_count"));

    let activity = stats.activity().await.map_err(unavailable)?;
    for (name, what, value) in [
        (
            "pyron_queue_depth",
            "Entries in the work stream (waiting and pending).",
            activity.queue_depth,
        ),
        (
            "pyron_queue_pending",
            "Entries delivered to a worker and not yet acknowledged.",
            activity.pending,
        ),
        (
            "pyron_dead_letters",
            "Entries in the dead-letter stream.",
            activity.dead_letters,
        ),
        (
            "pyron_workers",
            "Consumers in the group.",
            activity.workers.len() as u64,
        ),
    ] {
        help(w, name, "gauge", what);
        let _ = writeln!(w, "{name} {value}");
    }
    Ok(out)
}

fn help(w: &mut String, name: &str, kind: &str, what: &str) {
    let _ = writeln!(w, "# HELP {name} {what}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}
