//! Delivery guarantees under fault injection: bursts of alerts through the real pyron-api
//! while real processes (worker, redis-server, the MongoDB wire server) are killed,
//! stopped and restarted; then every answer is checked against the records.
//!
//! Each test prints one line `delivery: <test>: sent=.. accepted=.. 503=.. processed=..
//! duplicates=.. lost=..` (run with `--nocapture` to see them).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::helpers::{App, PATIENCE, TOKEN, wait_until};
use bson::{Document, doc};
use pyron::queue::{DEAD_LETTERS, GROUP, STREAM};
use serde_json::{Value, json};

/// The settings every test here runs with: a quick reclaim, quick retries, and each
/// alert's line, which some look for.
const FAST: [(&str, &str); 3] = [
    ("PYRON_WORKER_CLAIM_IDLE_MS", "2000"),
    ("PYRON_WORKER_RETRY_BASE_MS", "200"),
    ("PYRON_LOG", "info,pyron::alerts=debug"),
];

fn settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    FAST.iter().copied().chain(extra.iter().copied()).collect()
}

/// What a burst got back.
#[derive(Debug, Default)]
struct Sent {
    sent: usize,
    /// Event ids answered 202 `queued`.
    queued: Vec<String>,
    /// Event ids answered 202 `duplicate`, with the id they repeat.
    duplicates: Vec<(String, String)>,
    /// 503 answers, and the slowest of them.
    unavailable: usize,
    slowest_503: Duration,
    /// The slowest 202.
    slowest_202: Duration,
    /// Anything else: status and body, or the client's error.
    other: Vec<String>,
}

impl Sent {
    fn accepted(&self) -> usize {
        self.queued.len() + self.duplicates.len()
    }
}

/// How a burst's alerts are shaped.
#[derive(Clone, Copy)]
struct Burst {
    alerts: usize,
    concurrency: usize,
    /// Alerts per second overall; `None` sends as fast as answers come.
    rate: Option<f64>,
    /// Every `n`th alert repeats the idempotency key of the alert five before it.
    repeat_every: Option<usize>,
}

/// Sends `burst.alerts` JSON alerts tagged `phase`, each with an idempotency key.
async fn send(app_port: u16, phase: &'static str, burst: Burst) -> Sent {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(burst.concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..burst.concurrency {
        let http = http.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut sent = Sent::default();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= burst.alerts {
                    return sent;
                }
                if let Some(rate) = burst.rate {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let key_of = match burst.repeat_every {
                    Some(n) if seq >= 5 && seq.is_multiple_of(n) => seq - 5,
                    _ => seq,
                };
                let body = json!({
                    "passphrase": TOKEN,
                    "ticker": "BTCUSDT",
                    "action": "buy",
                    "price": 42000.5 + seq as f64,
                    "seq": seq,
                    "phase": phase,
                });
                let began = Instant::now();
                let result = http
                    .post(format!("http://127.0.0.1:{app_port}/webhook"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("{phase}-{key_of}"))
                    .body(body.to_string())
                    .send()
                    .await;
                sent.sent += 1;
                let response = match result {
                    Ok(response) => response,
                    Err(err) => {
                        sent.other.push(format!("#{seq}: {err}"));
                        continue;
                    }
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == 202 {
                    sent.slowest_202 = sent.slowest_202.max(began.elapsed());
                }
                match (status, body["status"].as_str()) {
                    (202, Some("queued")) => sent.queued.push(body["id"].as_str().unwrap().into()),
                    (202, Some("duplicate")) => sent.duplicates.push((
                        body["id"].as_str().unwrap().into(),
                        body["duplicate_of"].as_str().unwrap().into(),
                    )),
                    (503, _) => {
                        assert_eq!(body["error"], "storage_unavailable", "{body}");
                        sent.unavailable += 1;
                        sent.slowest_503 = sent.slowest_503.max(began.elapsed());
                    }
                    _ => sent.other.push(format!("#{seq}: {status} {body}")),
                }
            }
        });
    }
    let mut all = Sent::default();
    while let Some(part) = tasks.join_next().await {
        let part = part.unwrap();
        all.sent += part.sent;
        all.queued.extend(part.queued);
        all.duplicates.extend(part.duplicates);
        all.unavailable += part.unavailable;
        all.slowest_503 = all.slowest_503.max(part.slowest_503);
        all.slowest_202 = all.slowest_202.max(part.slowest_202);
        all.other.extend(part.other);
    }
    all
}

/// What the stores say about a burst's alerts, once the worker is done.
#[derive(Debug)]
struct Tally {
    /// Accepted alerts whose own `jobs` record is `processed`.
    processed: usize,
    /// Accepted alerts that turned out to be duplicates (answered so, or found so by the
    /// reconciler) and whose first alert is processed.
    duplicates: usize,
    /// Accepted alerts with neither: lost.
    lost: Vec<String>,
    /// Accepted alerts without an audit record.
    missing_audit: usize,
    /// Idempotency keys with more than one processed job.
    processed_twice: usize,
    /// `jobs` records per worker.
    by_worker: HashMap<String, usize>,
}

async fn tally(app: &App, sent: &Sent) -> Tally {
    let audit = by_id(app.docs("audit", doc! {}).await);
    let jobs = by_id(app.docs("jobs", doc! {}).await);
    let processed = |id: &str| {
        jobs.get(id)
            .is_some_and(|j| j.get_str("status") == Ok("processed"))
    };
    let mut tally = Tally {
        processed: 0,
        duplicates: 0,
        lost: Vec::new(),
        missing_audit: 0,
        processed_twice: 0,
        by_worker: HashMap::new(),
    };
    let accepted = sent
        .queued
        .iter()
        .chain(sent.duplicates.iter().map(|(id, _)| id));
    for id in accepted {
        let Some(record) = audit.get(id.as_str()) else {
            tally.missing_audit += 1;
            if !processed(id) {
                tally.lost.push(id.clone());
            }
            continue;
        };
        if processed(id) {
            tally.processed += 1;
        } else if let Ok(first) = record.get_str("duplicate_of") {
            if processed(first) {
                tally.duplicates += 1;
            } else {
                tally.lost.push(id.clone());
            }
        } else {
            tally.lost.push(id.clone());
        }
    }
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for (id, job) in &jobs {
        if job.get_str("status") == Ok("processed") {
            if let Some(key) = audit.get(id).and_then(|a| a.get_str("dedup_key").ok()) {
                *keys.entry(key).or_default() += 1;
            }
            let worker = job.get_str("worker").unwrap_or("?").to_owned();
            *tally.by_worker.entry(worker).or_default() += 1;
        }
    }
    tally.processed_twice = keys.values().filter(|n| **n > 1).count();
    tally
}

fn by_id(docs: Vec<Document>) -> HashMap<String, Document> {
    docs.into_iter()
        .map(|d| (d.get_str("_id").unwrap().to_owned(), d))
        .collect()
}

/// Waits until every accepted alert is processed or shown a duplicate, then tallies.
async fn settle(app: &App, sent: &Sent, patience: Duration) -> Tally {
    let deadline = Instant::now() + patience;
    loop {
        let tally = tally(app, sent).await;
        if (tally.lost.is_empty() && tally.missing_audit == 0) || Instant::now() > deadline {
            return tally;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report(test: &str, sent: &Sent, tally: &Tally) {
    eprintln!(
        "delivery: {test}: sent={} accepted={} 503={} processed={} duplicates={} lost={} \
         (slowest 202: {} ms, answered duplicate: {}, found duplicate later: {}, missing audit: {}, other answers: {}, by worker: {:?})",
        sent.sent,
        sent.accepted(),
        sent.unavailable,
        tally.processed,
        tally.duplicates,
        tally.lost.len(),
        sent.slowest_202.as_millis(),
        sent.duplicates.len(),
        tally.duplicates - sent.duplicates.len().min(tally.duplicates),
        tally.missing_audit,
        sent.other.len(),
        tally.by_worker,
    );
}

/// The guarantee: every accepted alert processed exactly once (or a duplicate of one that
/// is), with its audit record, and nothing else answered.
fn assert_kept(sent: &Sent, tally: &Tally) {
    assert!(
        sent.other.is_empty(),
        "unexpected answers: {:?}",
        &sent.other[..sent.other.len().min(10)]
    );
    assert!(
        tally.lost.is_empty(),
        "{} accepted alerts lost, e.g. {:?}",
        tally.lost.len(),
        &tally.lost[..tally.lost.len().min(5)]
    );
    assert_eq!(
        tally.missing_audit, 0,
        "accepted alerts without an audit record"
    );
    assert_eq!(
        tally.processed_twice, 0,
        "an idempotency key was processed twice"
    );
    assert_eq!(tally.processed + tally.duplicates, sent.accepted());
}

async fn jobs_count(app: &App) -> u64 {
    app.count("jobs").await
}

async fn xpending(app: &App, consumer: Option<&str>) -> u64 {
    let mut conn = app.stores.redis().await;
    match consumer {
        None => {
            let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(STREAM)
                .arg(GROUP)
                .query_async(&mut conn)
                .await
                .unwrap();
            reply.count() as u64
        }
        Some(name) => {
            let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(STREAM)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(10_000)
                .arg(name)
                .query_async(&mut conn)
                .await
                .unwrap();
            reply.ids.len() as u64
        }
    }
}

mod outages;
mod workers;
