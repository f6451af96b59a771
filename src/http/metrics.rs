//! `GET /metrics` in Prometheus's text format (written by `prometheus-client`), behind the
//! admin secret (the counts show trading activity): this pyron-api's answers and
//! acknowledgement latency, the jobs and end-to-end lag every worker counted in Redis, the
//! queue, and the deliveries every forwarder counted (by destination, with breakers). The values are counted elsewhere, so each scrape hands them to the encoder
//! as one collector.

use std::{
    collections::VecDeque,
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

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, prometheus_text},
    metrics::MetricType,
    registry::Registry,
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
    let c = app.counters.snapshot();
    let l = &app.latency;
    let ack_cumulative: Vec<u64> = l
        .buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let ack = Histogram::from_cumulative(
        &ACK_BUCKETS,
        &ack_cumulative,
        l.count.load(Ordering::Relaxed),
        l.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );

    let stats = app.delivery.queue.stats();
    let unavailable = |err: redis::RedisError| {
        tracing::warn!(error = %err, "metrics: Redis unavailable");
        ApiError::storage_unavailable("Redis is unavailable; the metrics need it")
    };
    let totals = stats.totals().await.map_err(unavailable)?.fields;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let lag_cumulative: Vec<u64> = LAG_BUCKETS
        .iter()
        .map(|bound| get(&format!("lag_le_{bound}")))
        .collect();
    let lag = Histogram::from_cumulative(
        &LAG_BUCKETS,
        &lag_cumulative,
        get("lag_count"),
        get("lag_sum_ms") as f64 / 1000.0,
    );
    let activity = stats.activity().await.map_err(unavailable)?;
    let deliveries = stats.deliveries().await.map_err(unavailable)?;

    let scrape = Scrape {
        alerts: [
            ("queued", c.accepted - c.duplicates - c.kept),
            ("kept_in_mongodb", c.kept),
            ("duplicate", c.duplicates),
            ("rejected", c.refused),
            ("unavailable", c.unavailable),
        ],
        ack,
        jobs: ["processed", "retrying", "dead"].map(|status| (status, get(status))),
        lag,
        gauges: [
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
            (
                "pyron_deliveries_queued",
                "Entries in the deliveries stream (waiting and in a forwarder's hands).",
                deliveries.queued,
            ),
            (
                "pyron_delivery_dead_letters",
                "Dead and expired deliveries in webhook-deliveries:dead.",
                deliveries.dead_letters,
            ),
        ],
        deliveries: deliveries
            .destinations
            .iter()
            .flat_map(|d| {
                [
                    ("delivered", d.delivered),
                    ("expired", d.expired),
                    ("dead", d.dead),
                ]
                .map(|(status, n)| (d.name.clone(), status, n))
            })
            .collect(),
        attempts: deliveries
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.attempts))
            .collect(),
        breakers: deliveries
            .destinations
            .iter()
            .map(|d| {
                let state = match d.breaker.as_deref() {
                    Some("open") => 2,
                    Some("half-open") => 1,
                    _ => 0,
                };
                (d.name.clone(), state)
            })
            .collect(),
        delivery_latency: Histogram::from_cumulative(
            &LAG_BUCKETS,
            &deliveries.latency_cumulative,
            deliveries.latency_count,
            deliveries.latency_sum_ms as f64 / 1000.0,
        ),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_unavailable",
            "the metrics could not be written",
        )
    })?;
    Ok(out)
}

/// A histogram whose observations were counted elsewhere (this process's atomics, or the
/// workers' counts in Redis), as bucket counts.
#[derive(Debug)]
struct Histogram {
    /// (upper bound, observations in that bucket alone).
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// From cumulative bucket counts (each counts every observation at or below its
    /// bound), as both sources keep them.
    fn from_cumulative(bounds: &[f64], cumulative: &[u64], count: u64, sum: f64) -> Histogram {
        let mut below = 0;
        let buckets = bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, n)| {
                let alone = n.saturating_sub(below);
                below = below.max(*n);
                (*bound, alone)
            })
            .collect();
        Histogram {
            buckets,
            count,
            sum,
        }
    }
}

/// One scrape's values, written by `prometheus-client` in Prometheus's text format.
#[derive(Debug)]
struct Scrape {
    alerts: [(&'static str, u64); 5],
    ack: Histogram,
    jobs: [(&'static str, u64); 3],
    lag: Histogram,
    gauges: [(&'static str, &'static str, u64); 6],
    /// (destination, status, deliveries).
    deliveries: Vec<(String, &'static str, u64)>,
    /// (destination, attempts).
    attempts: Vec<(String, u64)>,
    /// (destination, 0 closed, 1 half-open, 2 open).
    breakers: Vec<(String, i64)>,
    delivery_latency: Histogram,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Counters are named without `_total`, which the encoder appends.
        let mut alerts = encoder.encode_descriptor(
            "pyron_alerts",
            "Alerts this pyron-api answered, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in self.alerts {
            alerts
                .encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        encoder
            .encode_descriptor(
                "pyron_ack_duration_seconds",
                "Time from request to answer on POST /webhook.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.ack.sum,
                self.ack.count,
                &self.ack.buckets,
                None,
            )?;
        let mut jobs = encoder.encode_descriptor(
            "pyron_jobs",
            "Job outcomes recorded by the workers, by status (all workers, since Redis's data began).",
            None,
            MetricType::Counter,
        )?;
        for (status, n) in self.jobs {
            jobs.encode_family(&[("status", status)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        encoder
            .encode_descriptor(
                "pyron_lag_seconds",
                "Time from an alert's arrival to its processed jobs record.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.lag.sum,
                self.lag.count,
                &self.lag.buckets,
                None,
            )?;
        for (name, help, value) in self.gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&(value as i64))?;
        }
        let mut deliveries = encoder.encode_descriptor(
            "pyron_deliveries",
            "Deliveries the forwarders settled, by destination and status.",
            None,
            MetricType::Counter,
        )?;
        for (destination, status, n) in &self.deliveries {
            deliveries
                .encode_family(&[("destination", destination.as_str()), ("status", status)])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut attempts = encoder.encode_descriptor(
            "pyron_delivery_attempts",
            "Requests the forwarders sent, by destination.",
            None,
            MetricType::Counter,
        )?;
        for (destination, n) in &self.attempts {
            attempts
                .encode_family(&[("destination", destination.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut breakers = encoder.encode_descriptor(
            "pyron_delivery_breaker",
            "Each destination's circuit breaker: 0 closed, 1 half-open, 2 open.",
            None,
            MetricType::Gauge,
        )?;
        for (destination, state) in &self.breakers {
            breakers
                .encode_family(&[("destination", destination.as_str())])?
                .encode_gauge(state)?;
        }
        encoder
            .encode_descriptor(
                "pyron_delivery_latency_seconds",
                "Time from an alert's arrival to its delivery's 2xx answer.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.delivery_latency.sum,
                self.delivery_latency.count,
                &self.delivery_latency.buckets,
                None,
            )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_prometheus_text_with_the_metric_names_of_the_readme() {
        let scrape = Scrape {
            alerts: [
                ("queued", 3),
                ("kept_in_mongodb", 1),
                ("duplicate", 0),
                ("rejected", 2),
                ("unavailable", 0),
            ],
            ack: Histogram::from_cumulative(&[0.001, 0.01], &[1, 3], 4, 0.05),
            jobs: [("processed", 3), ("retrying", 0), ("dead", 1)],
            lag: Histogram::from_cumulative(&LAG_BUCKETS, &[0; 10], 0, 0.0),
            gauges: [
                ("pyron_queue_depth", "depth", 7),
                ("pyron_queue_pending", "p", 0),
                ("pyron_dead_letters", "d", 1),
                ("pyron_workers", "w", 2),
                ("pyron_deliveries_queued", "q", 0),
                ("pyron_delivery_dead_letters", "d", 1),
            ],
            deliveries: vec![
                ("bridge".into(), "delivered", 5),
                ("bridge".into(), "dead", 1),
            ],
            attempts: vec![("bridge".into(), 9)],
            breakers: vec![("bridge".into(), 2)],
            delivery_latency: Histogram::from_cumulative(&LAG_BUCKETS, &[4; 10], 5, 1.5),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE pyron_alerts_total counter",
            "pyron_alerts_total{outcome=\"queued\"} 3",
            "pyron_alerts_total{outcome=\"kept_in_mongodb\"} 1",
            "# TYPE pyron_ack_duration_seconds histogram",
            "pyron_ack_duration_seconds_bucket{le=\"0.001\"} 1",
            "pyron_ack_duration_seconds_bucket{le=\"0.01\"} 3",
            "pyron_ack_duration_seconds_bucket{le=\"+Inf\"} 4",
            "pyron_ack_duration_seconds_count 4",
            "pyron_jobs_total{status=\"dead\"} 1",
            "pyron_lag_seconds_bucket{le=\"10\"} 0",
            "# TYPE pyron_queue_depth gauge",
            "pyron_queue_depth 7",
            "pyron_workers 2",
            "pyron_deliveries_total{destination=\"bridge\",status=\"delivered\"} 5",
            "pyron_delivery_attempts_total{destination=\"bridge\"} 9",
            "pyron_delivery_breaker{destination=\"bridge\"} 2",
            "pyron_delivery_latency_seconds_bucket{le=\"10\"} 4",
            "pyron_delivery_latency_seconds_count 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
