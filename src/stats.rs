//! Activity counts in Redis, shared by every pyron-api and pyron-worker: one hash per
//! minute (`pyron:stats:m:<minute>`, kept 25 hours) for the dashboard's last hour and
//! day and its per-minute chart, one running total (`pyron:stats:total`) for Prometheus,
//! and the last thousand end-to-end lags (`pyron:stats:lag`) for percentiles.
//!
//! Counting is best effort: it happens after the answer, and an alert is never refused
//! because Redis could not count it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use redis::{AsyncCommands, aio::ConnectionManager, streams::StreamInfoConsumersReply};
use serde::Serialize;

use crate::queue::{DEAD_LETTERS, GROUP, STREAM};

const MINUTE_PREFIX: &str = "pyron:stats:m:";
const TOTAL: &str = "pyron:stats:total";
const LAGS: &str = "pyron:stats:lag";
const HEARTBEAT_PREFIX: &str = "pyron:heartbeat:";
/// Deliveries settled, by `<destination>:<status>` (and `<destination>:attempts`), and
/// the receipt-to-delivery histogram (`~latency:le_<bound>`, `~latency:count`,
/// `~latency:sum_ms`; `~` keeps them apart from destination names), since the first forwarder ran.
pub const DELIVERY_COUNTS: &str = "pyron:deliveries:counts";
/// Each destination's circuit breaker as its forwarder last saw it (`closed`, `open`,
/// `half-open`), with the last failure.
pub const BREAKERS: &str = "pyron:deliveries:breakers";
/// A heartbeat older than this is gone from Redis: the worker is long dead.
const HEARTBEAT_TTL_SECS: u64 = 24 * 60 * 60;
const KEEP_MINUTES: i64 = 25 * 60;
const KEEP_LAGS: isize = 1000;

/// Upper bounds of the lag histogram, in seconds.
pub const LAG_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Times in milliseconds counted as the `LAG_BUCKETS` histogram keeps them: how many, their
/// sum (a negative one, from clocks apart, counts as 0), and how many at or below each
/// bound.
#[derive(Debug, Default)]
pub struct LagCounts {
    pub count: i64,
    pub sum_ms: i64,
    pub at_or_below: [i64; LAG_BUCKETS.len()],
}

impl LagCounts {
    pub fn add(&mut self, ms: i64) {
        self.count += 1;
        self.sum_ms += ms.max(0);
        let seconds = ms as f64 / 1000.0;
        for (n, bound) in self.at_or_below.iter_mut().zip(LAG_BUCKETS) {
            *n += i64::from(seconds <= bound);
        }
    }
}

/// One of the things counted of an alert: each is a field of the minute hashes and the
/// running total (its name there is `field()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tallied {
    /// Answered 202 queued.
    Queued,
    /// Answered 202, kept in MongoDB alone (Redis down: counted when it is back, if ever).
    KeptInMongo,
    Duplicate,
    /// Answered 4xx.
    Rejected,
    Processed,
    Retrying,
    Dead,
}

impl Tallied {
    pub fn field(self) -> &'static str {
        match self {
            Tallied::Queued => "queued",
            Tallied::KeptInMongo => "kept",
            Tallied::Duplicate => "duplicate",
            Tallied::Rejected => "rejected",
            Tallied::Processed => "processed",
            Tallied::Retrying => "retrying",
            Tallied::Dead => "dead",
        }
    }

    /// What answers a sender: each is one alert received.
    fn is_received(self) -> bool {
        matches!(
            self,
            Tallied::Queued | Tallied::KeptInMongo | Tallied::Duplicate | Tallied::Rejected
        )
    }
}

/// Counts over a window.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub queued: u64,
    pub processed: u64,
    pub retrying: u64,
    pub dead: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl Counts {
    fn add(&mut self, fields: &HashMap<String, u64>) {
        let get = |k: &str| fields.get(k).copied().unwrap_or(0);
        self.received += get("received");
        self.queued += get("queued") + get("kept");
        self.processed += get("processed");
        self.retrying += get("retrying");
        self.dead += get("dead");
        self.duplicates += get("duplicate");
        self.rejected += get("rejected");
    }
}

/// A consumer of the group, as Redis knows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub pending: u64,
    /// Milliseconds since Redis last delivered it an entry.
    pub idle_ms: u64,
    /// Milliseconds since its last heartbeat (every few seconds while its loop turns).
    pub heartbeat_ms_ago: Option<u64>,
}

/// Everything the dashboard shows that Redis holds.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    pub hour: Counts,
    pub day: Counts,
    /// Alerts received per minute, oldest first, the last 60 minutes.
    pub per_minute: Vec<u64>,
    pub lag_p50_ms: Option<u64>,
    pub lag_p99_ms: Option<u64>,
    pub queue_depth: u64,
    pub pending: u64,
    pub dead_letters: u64,
    pub workers: Vec<WorkerInfo>,
}

/// One destination's deliveries since the first forwarder ran, and its breaker as its
/// forwarder last reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationStats {
    pub name: String,
    pub delivered: u64,
    pub expired: u64,
    pub dead: u64,
    pub attempts: u64,
    /// `closed`, `open` or `half-open`; `None` until it first changed.
    pub breaker: Option<String>,
    pub breaker_since_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl DestinationStats {
    fn named(name: &str) -> Self {
        DestinationStats {
            name: name.to_owned(),
            ..Default::default()
        }
    }
}

/// Every destination's counts, the receipt-to-delivery histogram (cumulative, bounds
/// `LAG_BUCKETS`), and the deliveries stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryStats {
    pub destinations: Vec<DestinationStats>,
    #[serde(skip)]
    pub latency_cumulative: Vec<u64>,
    #[serde(skip)]
    pub latency_count: u64,
    #[serde(skip)]
    pub latency_sum_ms: u64,
    /// Entries in `webhook-deliveries` (waiting and in hand).
    pub queued: u64,
    /// Entries in `webhook-deliveries:dead`.
    pub dead_letters: u64,
}

/// Running totals, for Prometheus.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub fields: HashMap<String, u64>,
}

/// Answers to senders, counted in memory and written to Redis in one pipeline every
/// `TALLY_EVERY`, so that counting costs Redis a few commands a tick rather than a few an
/// alert. A crash loses at most one tick of counts, which are best effort anyway.
#[derive(Default)]
pub struct Tally {
    queued: AtomicU64,
    kept: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
}

/// How often pyron-api writes its tally to Redis.
pub const TALLY_EVERY: Duration = Duration::from_millis(250);

impl Tally {
    pub fn add(&self, event: Tallied) {
        self.add_n(event, 1);
    }

    fn add_n(&self, event: Tallied, n: u64) {
        let counter = match event {
            Tallied::Queued => &self.queued,
            Tallied::KeptInMongo => &self.kept,
            Tallied::Duplicate => &self.duplicate,
            Tallied::Rejected => &self.rejected,
            Tallied::Processed | Tallied::Retrying | Tallied::Dead => return,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn counters(&self) -> [(Tallied, &AtomicU64); 4] {
        [
            (Tallied::Queued, &self.queued),
            (Tallied::KeptInMongo, &self.kept),
            (Tallied::Duplicate, &self.duplicate),
            (Tallied::Rejected, &self.rejected),
        ]
    }

    /// Writes what was counted since the last call. While Redis is down (alerts are then
    /// kept in MongoDB) the counts wait for the next tick.
    pub async fn flush(&self, stats: &Stats) {
        let events: Vec<(Tallied, u64)> = self
            .counters()
            .into_iter()
            .map(|(event, n)| (event, n.swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if events.is_empty() {
            return;
        }
        if let Err(err) = stats.count(&events, &[]).await {
            tracing::debug!(error = %err, "activity not counted yet");
            for (event, n) in events {
                self.add_n(event, n);
            }
        }
    }

    /// Flushes every `TALLY_EVERY` until `stop` is cancelled, then once more.
    pub async fn run(&self, stats: Stats, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(TALLY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&stats).await,
                () = stop.cancelled() => break,
            }
        }
        self.flush(&stats).await;
    }
}

#[derive(Clone)]
pub struct Stats {
    conn: ConnectionManager,
    timeout: Duration,
}

fn minute_now() -> i64 {
    chrono::Utc::now().timestamp() / 60
}

impl Stats {
    pub fn new(conn: ConnectionManager, timeout: Duration) -> Self {
        Stats { conn, timeout }
    }

    /// Counts events (with how many of each), and end-to-end lags in milliseconds.
    pub async fn count(
        &self,
        events: &[(Tallied, u64)],
        lags_ms: &[i64],
    ) -> redis::RedisResult<()> {
        let minute = format!("{MINUTE_PREFIX}{}", minute_now());
        let mut pipe = redis::pipe();
        for (event, n) in events.iter().filter(|(_, n)| *n > 0) {
            pipe.hincr(&minute, event.field(), *n).ignore();
            pipe.hincr(TOTAL, event.field(), *n).ignore();
            if event.is_received() {
                pipe.hincr(&minute, "received", *n).ignore();
                pipe.hincr(TOTAL, "received", *n).ignore();
            }
        }
        if !lags_ms.is_empty() {
            let mut lags = LagCounts::default();
            for lag in lags_ms {
                lags.add(*lag);
            }
            for (n, bound) in lags.at_or_below.iter().zip(LAG_BUCKETS) {
                if *n > 0 {
                    pipe.hincr(TOTAL, format!("lag_le_{bound}"), *n).ignore();
                }
            }
            pipe.hincr(TOTAL, "lag_count", lags.count).ignore();
            pipe.hincr(TOTAL, "lag_sum_ms", lags.sum_ms).ignore();
            pipe.lpush(LAGS, lags_ms).ignore();
            pipe.ltrim(LAGS, 0, KEEP_LAGS - 1).ignore();
        }
        pipe.expire(&minute, KEEP_MINUTES * 60).ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// The last hour and day, the per-minute chart, lags, the queue and the workers.
    pub async fn activity(&self) -> redis::RedisResult<Activity> {
        let now = minute_now();
        let mut pipe = redis::pipe();
        for minute in (now - 24 * 60 + 1)..=now {
            pipe.hgetall(format!("{MINUTE_PREFIX}{minute}"));
        }
        pipe.lrange(LAGS, 0, -1);
        pipe.xlen(STREAM);
        pipe.xpending(STREAM, GROUP);
        pipe.xlen(DEAD_LETTERS);
        let mut conn = self.conn.clone();
        let mut replies: Vec<redis::Value> = self.bounded(pipe.query_async(&mut conn)).await?;
        let tail = replies.split_off(24 * 60);
        let minutes: Vec<HashMap<String, u64>> = replies
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        let mut tail = tail.into_iter();
        let mut next = || tail.next().unwrap_or(redis::Value::Nil);
        let mut lags: Vec<i64> = redis::from_redis_value(next())?;
        let queue_depth: u64 = redis::from_redis_value(next())?;
        let pending: redis::streams::StreamPendingReply = redis::from_redis_value(next())?;
        let dead_letters: u64 = redis::from_redis_value(next())?;

        let mut day = Counts::default();
        let mut hour = Counts::default();
        for (i, fields) in minutes.iter().enumerate() {
            day.add(fields);
            if i >= minutes.len() - 60 {
                hour.add(fields);
            }
        }
        let per_minute = minutes[minutes.len() - 60..]
            .iter()
            .map(|f| f.get("received").copied().unwrap_or(0))
            .collect();
        lags.sort_unstable();
        let percentile = |p: f64| -> Option<u64> {
            (!lags.is_empty()).then(|| {
                let rank = ((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len());
                lags[rank - 1].max(0) as u64
            })
        };
        let workers = self.workers().await.unwrap_or_default();
        Ok(Activity {
            hour,
            day,
            per_minute,
            lag_p50_ms: percentile(0.5),
            lag_p99_ms: percentile(0.99),
            queue_depth,
            pending: pending.count() as u64,
            dead_letters,
            workers,
        })
    }

    /// Says this worker's loop is turning.
    pub async fn heartbeat(&self, consumer: &str) -> redis::RedisResult<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.conn.clone();
        self.bounded(conn.set_ex(
            format!("{HEARTBEAT_PREFIX}{consumer}"),
            now,
            HEARTBEAT_TTL_SECS,
        ))
        .await
    }

    async fn workers(&self) -> redis::RedisResult<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let reply: StreamInfoConsumersReply =
            self.bounded(conn.xinfo_consumers(STREAM, GROUP)).await?;
        let keys: Vec<String> = reply
            .consumers
            .iter()
            .map(|c| format!("{HEARTBEAT_PREFIX}{}", c.name))
            .collect();
        let beats: Vec<Option<i64>> = if keys.is_empty() {
            Vec::new()
        } else {
            self.bounded(conn.mget(&keys)).await?
        };
        let now = chrono::Utc::now().timestamp_millis();
        Ok(reply
            .consumers
            .into_iter()
            .zip(beats.into_iter().chain(std::iter::repeat(None)))
            .map(|(c, beat)| WorkerInfo {
                name: c.name,
                pending: c.pending as u64,
                idle_ms: c.idle as u64,
                heartbeat_ms_ago: beat.map(|b| now.saturating_sub(b).max(0) as u64),
            })
            .collect())
    }

    /// What the forwarders counted, destination by destination, with each breaker.
    pub async fn deliveries(&self) -> redis::RedisResult<DeliveryStats> {
        let mut pipe = redis::pipe();
        pipe.hgetall(DELIVERY_COUNTS)
            .hgetall(BREAKERS)
            .xlen(crate::forward::outbox::STREAM)
            .xlen(crate::forward::outbox::DEAD_LETTERS);
        let mut conn = self.conn.clone();
        let (counts, breakers, queued, dead_letters): (
            HashMap<String, i64>,
            HashMap<String, String>,
            u64,
            u64,
        ) = self.bounded(pipe.query_async(&mut conn)).await?;
        let mut destinations: std::collections::BTreeMap<String, DestinationStats> =
            Default::default();
        for (field, n) in &counts {
            let Some((name, what)) = field.rsplit_once(':') else {
                continue;
            };
            if name == "~latency" {
                continue;
            }
            let entry = destinations
                .entry(name.to_owned())
                .or_insert_with(|| DestinationStats::named(name));
            let n = (*n).max(0) as u64;
            match what {
                "delivered" => entry.delivered = n,
                "expired" => entry.expired = n,
                "dead" => entry.dead = n,
                "attempts" => entry.attempts = n,
                _ => {}
            }
        }
        for (name, state) in &breakers {
            let entry = destinations
                .entry(name.clone())
                .or_insert_with(|| DestinationStats::named(name));
            if let Ok(state) = serde_json::from_str::<serde_json::Value>(state) {
                entry.breaker = state
                    .get("state")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned);
                entry.breaker_since_ms = state.get("since").and_then(serde_json::Value::as_i64);
                entry.last_error = state
                    .get("error")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned);
            }
        }
        let get = |k: &str| counts.get(k).copied().unwrap_or(0).max(0) as u64;
        Ok(DeliveryStats {
            destinations: destinations.into_values().collect(),
            latency_cumulative: LAG_BUCKETS
                .iter()
                .map(|b| get(&format!("~latency:le_{b}")))
                .collect(),
            latency_count: get("~latency:count"),
            latency_sum_ms: get("~latency:sum_ms"),
            queued,
            dead_letters,
        })
    }

    pub async fn totals(&self) -> redis::RedisResult<Totals> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, u64> = self.bounded(conn.hgetall(TOTAL)).await?;
        Ok(Totals { fields })
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "redis did not answer in time",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_are_counted_at_or_below_each_bound() {
        let mut lags = LagCounts::default();
        for ms in [-3, 10, 11, 250, 20_000] {
            lags.add(ms);
        }
        assert_eq!(lags.count, 5);
        assert_eq!(lags.sum_ms, 10 + 11 + 250 + 20_000);
        // 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 (seconds)
        assert_eq!(lags.at_or_below, [2, 3, 3, 3, 4, 4, 4, 4, 4, 4]);
    }
}
