//! Delivery guarantees under fault injection: bursts of alerts through the real pyron-api
//! while real processes (worker, redis-server, the MongoDB wire server) are killed,
//! stopped and restarted; then every answer is checked against the records.
//!
//! Each test prints one line `delivery: <test>: sent=.. accepted=.. 503=.. processed=..
//! duplicates=.. lost=..` (run with `--nocapture` to see them).

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Document, doc};
use common::{App, PATIENCE, TOKEN};
use serde_json::{Value, json};

/// These tests drive real load at their servers and time their faults: they run one at a
/// time, so that one test's burst does not starve another's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The settings every test here runs with: a quick reclaim, and quick retries.
const FAST: [(&str, &str); 3] = [
    ("PYRON_WORKER_CLAIM_IDLE_MS", "2000"),
    ("PYRON_WORKER_RETRY_BASE_MS", "200"),
    ("PYRON_LOG", "info"),
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

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn jobs_count(app: &App) -> u64 {
    app.count("jobs").await
}

async fn xpending(app: &App, consumer: Option<&str>) -> u64 {
    let mut conn = app.stores.redis().await;
    match consumer {
        None => {
            let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg("webhook-jobs")
                .arg("pyron-workers")
                .query_async(&mut conn)
                .await
                .unwrap();
            reply.count() as u64
        }
        Some(name) => {
            let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg("webhook-jobs")
                .arg("pyron-workers")
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

/// 1. SIGKILL the worker in the middle of a 5,000-alert burst and restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_burst_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut app = App::stores_only(&settings(&[("PYRON_WORKER_CONSUMER", "worker-a")]));
    app.start_api().await;
    app.start_worker();
    let burst = Burst {
        alerts: 5000,
        concurrency: 16,
        rate: None,
        repeat_every: Some(50),
    };
    let sending = tokio::spawn(send(app.port, "kill-worker", burst));

    wait_until("the worker to process some alerts", async || {
        jobs_count(&app).await >= 500
    })
    .await;
    app.worker.as_mut().unwrap().kill();
    let pending = xpending(&app, Some("worker-a")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.start_worker();

    let sent = sending.await.unwrap();
    let tally = settle(&app, &sent, Duration::from_secs(120)).await;
    report("worker SIGKILL", &sent, &tally);
    eprintln!("delivery: worker SIGKILL: {pending} entries were pending for the killed worker");
    assert_kept(&sent, &tally);
    assert_eq!(sent.unavailable, 0);
    assert_eq!(xpending(&app, None).await, 0, "entries left pending");
    let mut conn = app.stores.redis().await;
    let dead: u64 = redis::cmd("XLEN")
        .arg("webhook-jobs:dead")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

/// 2. SIGKILL redis-server mid-burst and restart it: alerts go to MongoDB meanwhile and
/// the reconciler queues them once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_burst_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut app = App::start_with(&settings(&[])).await;
    let burst = Burst {
        alerts: 3000,
        concurrency: 8,
        rate: Some(500.0),
        repeat_every: Some(20),
    };
    let sending = tokio::spawn(send(app.port, "kill-redis", burst));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.stores.redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.stores.start_redis_again();

    let sent = sending.await.unwrap();
    let tally = settle(&app, &sent, Duration::from_secs(120)).await;
    report("redis SIGKILL", &sent, &tally);
    assert_kept(&sent, &tally);
    let api = app.api_log();
    let kept = api.matches("it waits in MongoDB for the queue").count();
    eprintln!("delivery: redis SIGKILL: {kept} alerts were accepted into MongoDB alone");
    assert!(kept > 0, "no alert took the MongoDB path");
    // pyron-api's tally holds what it could not write while Redis was down and writes it
    // once Redis is back: every alert kept in MongoDB is counted.
    wait_until("the kept alerts to be counted", async || {
        let mut conn = app.stores.redis().await;
        let counted: Option<usize> = redis::cmd("HGET")
            .arg("pyron:stats:total")
            .arg("kept")
            .query_async(&mut conn)
            .await
            .unwrap();
        counted == Some(kept)
    })
    .await;
    wait_until("the reconciler", async || {
        app.api_log().contains("reconciler queued alerts")
    })
    .await;
    // Marking the audit records comes after queueing, and is slow on FerretDB (about
    // 80 updates a second): give it time.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !app
        .docs("audit", doc! { "status": "unqueued" })
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "alerts left unqueued");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        sent.unavailable, 0,
        "MongoDB was up: nothing should be refused"
    );
}

/// 3. Stop the MongoDB wire server for 10 s mid-burst: the api keeps answering 202 from
/// Redis, and afterwards every alert has its audit and `jobs` records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_down_for_ten_seconds_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut app = App::start_with(&settings(&[])).await;
    let burst = Burst {
        alerts: 3000,
        concurrency: 8,
        rate: Some(200.0),
        repeat_every: Some(20),
    };
    let sending = tokio::spawn(send(app.port, "stop-mongo", burst));

    tokio::time::sleep(Duration::from_secs(2)).await;
    app.stores.mongo.kill();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    app.stores.start_mongo_again();
    eprintln!("delivery: MongoDB down for {:?}", stopped.elapsed());

    let sent = sending.await.unwrap();
    let tally = settle(&app, &sent, Duration::from_secs(120)).await;
    report("mongodb down 10 s", &sent, &tally);
    assert_kept(&sent, &tally);
    assert_eq!(
        sent.unavailable, 0,
        "Redis was up: nothing should be refused"
    );
    assert!(app.worker_log().contains("batch not recorded; will retry"));
}

/// 4. Both stores down: 503 within a second, whether they are gone (refused connections)
/// or hang (a stopped Redis); nothing of those alerts is written once the stores return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_stores_down_is_a_fast_503_and_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let mut app = App::start_with(&settings(&[])).await;
    let before = send(
        app.port,
        "before",
        Burst {
            alerts: 200,
            concurrency: 4,
            rate: None,
            repeat_every: None,
        },
    )
    .await;
    assert_eq!(before.queued.len(), 200);

    app.stores.redis.kill();
    app.stores.mongo.kill();
    let gone = send(
        app.port,
        "both-gone",
        Burst {
            alerts: 40,
            concurrency: 4,
            rate: None,
            repeat_every: None,
        },
    )
    .await;
    app.stores.start_redis_again();
    app.stores.redis.signal("STOP");
    let hung = send(
        app.port,
        "redis-hung",
        Burst {
            alerts: 20,
            concurrency: 4,
            rate: None,
            repeat_every: None,
        },
    )
    .await;
    app.stores.redis.signal("CONT");
    app.stores.start_mongo_again();
    // "After" starts once pyron-api sees both stores again and its Redis breaker (open
    // for a second after each failure) has closed.
    wait_until("both stores to be ready", async || {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for (name, outage) in [("both gone", &gone), ("redis hung, mongodb gone", &hung)] {
        eprintln!(
            "delivery: {name}: sent={} accepted={} 503={} slowest 503={:?}",
            outage.sent,
            outage.accepted(),
            outage.unavailable,
            outage.slowest_503
        );
        assert_eq!(
            outage.unavailable, outage.sent,
            "{name}: {:?}",
            outage.other
        );
        assert!(
            outage.slowest_503 < Duration::from_secs(1),
            "{name}: a 503 took {:?}",
            outage.slowest_503
        );
    }

    let after = send(
        app.port,
        "after",
        Burst {
            alerts: 200,
            concurrency: 4,
            rate: None,
            repeat_every: None,
        },
    )
    .await;
    let mut all = before;
    all.sent += after.sent;
    all.queued.extend(after.queued);
    all.unavailable += after.unavailable;
    all.other.extend(after.other);
    assert_eq!(all.unavailable, 0, "503s once both stores were back");
    let tally = settle(&app, &all, Duration::from_secs(60)).await;
    report("both down (before + after)", &all, &tally);
    assert_kept(&all, &tally);

    // Give a late write every chance to show up, then look for any trace of the refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for phase in ["both-gone", "redis-hung"] {
        assert!(
            app.docs("audit", doc! { "json.phase": phase })
                .await
                .is_empty(),
            "{phase}: audit written"
        );
    }
    let jobs = app.count("jobs").await;
    assert_eq!(jobs, 400, "jobs other than the 400 accepted");
    let (stream, _) = app.redis_state().await;
    assert_eq!(stream, 0, "entries left in the stream");
}

fn admin(app: &App, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let _ = app;
    request.bearer_auth(ADMIN)
}

const ADMIN: &str = "admin-secret-0123456789";

async fn dead_letters(app: &App) -> Vec<Value> {
    let response = admin(app, app.http.get(app.url("/api/dead-letters")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["dead_letters"].as_array().unwrap().clone()
}

async fn post_alert(app: &App, ticker: &str, price: Value) -> String {
    let body = json!({"passphrase": TOKEN, "ticker": ticker, "action": "buy", "price": price});
    let response = app
        .post("/webhook", "application/json", body.to_string())
        .await;
    assert_eq!(response.status(), 202);
    let ack: Value = response.json().await.unwrap();
    ack["id"].as_str().unwrap().to_owned()
}

async fn job(app: &App, id: &str) -> Option<Document> {
    app.docs("jobs", doc! { "_id": id })
        .await
        .into_iter()
        .next()
}

async fn wait_for_status(app: &App, id: &str, status: &str) -> Document {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(job) = job(app, id).await
            && job.get_str("status") == Ok(status)
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {:?}",
            job(app, id).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// 5. A permanent failure goes to dead letters with its reason at once; a transient one
/// is retried, shows `retrying`, and is dead-lettered after the last attempt; replay (API
/// and worker subcommand) processes it once it can be processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_dead_lettered_and_replayed() {
    let _serial = SERIAL.lock().await;
    let mut app = App::stores_only(&settings(&[
        ("PYRON_ADMIN_TOKEN", ADMIN),
        ("PYRON_WORKER_MAX_ATTEMPTS", "3"),
        ("PYRON_WORKER_RETRY_BASE_MS", "1500"),
    ]));
    app.start_api().await;
    app.start_worker();

    // The admin API wants its token.
    let response = app
        .http
        .get(app.url("/api/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .http
        .get(app.url("/api/dead-letters"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Permanent: straight to dead letters, one attempt.
    let broken = post_alert(&app, "ETHUSDT", json!("{{close}}")).await;
    let record = wait_for_status(&app, &broken, "dead").await;
    assert_eq!(
        record.get_str("error").unwrap(),
        "price is not a number: {{close}}"
    );
    wait_until("the dead letter", async || {
        dead_letters(&app).await.len() == 1
    })
    .await;
    let letters = dead_letters(&app).await;
    assert_eq!(letters[0]["id"], broken.as_str());
    assert_eq!(letters[0]["reason"], "price is not a number: {{close}}");

    // Transient: a unique index on the ticker makes MongoDB refuse a second LOCKED job.
    let first = post_alert(&app, "LOCKED", json!(1.0)).await;
    wait_for_status(&app, &first, "processed").await;
    app.db()
        .await
        .run_command(doc! { "createIndexes": "jobs", "indexes": [
            { "key": { "signal.ticker": 1 }, "name": "lock", "unique": true }
        ] })
        .await
        .unwrap();
    let stuck = post_alert(&app, "LOCKED", json!(2.0)).await;
    let retrying = wait_for_status(&app, &stuck, "retrying").await;
    assert!(
        retrying.get_datetime("next_attempt_at").is_ok(),
        "{retrying}"
    );
    let error = retrying.get_str("last_error").unwrap().to_owned();
    assert!(
        error.to_lowercase().contains("duplicate") || error.contains("UNIQUE"),
        "{error}"
    );
    let dead = wait_for_status(&app, &stuck, "dead").await;
    assert_eq!(dead.get_i64("attempts").unwrap(), 3, "{dead}");
    assert!(
        dead.get_str("error")
            .unwrap()
            .starts_with("gave up after repeated failures"),
        "{dead}"
    );
    wait_until("two dead letters", async || {
        dead_letters(&app).await.len() == 2
    })
    .await;
    let letters = dead_letters(&app).await;
    let letter = letters.iter().find(|l| l["id"] == stuck.as_str()).unwrap();
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts"),
        "{letter}"
    );
    assert_eq!(
        app.redis_state().await.0,
        0,
        "the dead job is still in the work stream"
    );

    // Replaying while the cause remains only kills it again, one record still.
    let output = app
        .command("pyron-worker")
        .args(["replay", &stuck])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "replayed 1 dead letter(s)"
    );
    wait_until("the job to fail again", async || {
        job(&app, &stuck)
            .await
            .is_some_and(|j| j.get_i64("attempts") == Ok(6))
    })
    .await;
    wait_for_status(&app, &stuck, "dead").await;

    // The cause fixed, replay processes it.
    app.db()
        .await
        .run_command(doc! { "dropIndexes": "jobs", "index": "lock" })
        .await
        .unwrap();
    let response = admin(&app, app.http.post(app.url("/api/dead-letters/replay")))
        .json(&json!({ "ids": [stuck] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["replayed"], 1);
    let done = wait_for_status(&app, &stuck, "processed").await;
    assert_eq!(done.get_i64("attempts").unwrap(), 7);
    assert!(
        !done.contains_key("last_error") && !done.contains_key("error"),
        "{done}"
    );
    assert_eq!(
        done.get_document("signal")
            .unwrap()
            .get_str("ticker")
            .unwrap(),
        "LOCKED"
    );

    // Replaying the permanent failure: processed again, dead again, still one record.
    let output = app
        .command("pyron-worker")
        .args(["replay", "--all"])
        .output()
        .unwrap();
    assert!(output.status.success());
    wait_until("the broken alert's second attempt", async || {
        job(&app, &broken)
            .await
            .is_some_and(|j| j.get_i64("attempts") == Ok(2))
    })
    .await;
    wait_until("its dead letter", async || {
        dead_letters(&app).await.len() == 1
    })
    .await;
    assert_eq!(app.count("jobs").await, 3);

    // Bad requests to the admin API and the subcommand are refused clearly.
    let response = admin(&app, app.http.post(app.url("/api/dead-letters/replay")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = admin(&app, app.http.post(app.url("/api/dead-letters/replay")))
        .json(&json!({ "ids": ["nope"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let output = app.command("pyron-worker").arg("replay").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = app
        .command("pyron-worker")
        .args(["replay", "not-an-id"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an event id"));
}

/// 6. Two workers share the stream: each alert ends with one `jobs` record, both take a
/// share; and when one hangs with entries in hand, the other claims them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_stream_and_claim_from_a_hung_one() {
    let _serial = SERIAL.lock().await;
    let mut app = App::stores_only(&settings(&[]));
    app.start_api().await;
    let a = app.spawn_worker("worker-a", &[("PYRON_WORKER_CONSUMER", "worker-a")]);
    let b = app.spawn_worker("worker-b", &[("PYRON_WORKER_CONSUMER", "worker-b")]);

    let burst = Burst {
        alerts: 2000,
        concurrency: 16,
        rate: None,
        repeat_every: Some(40),
    };
    let sent = send(app.port, "two-workers", burst).await;
    let tally = settle(&app, &sent, Duration::from_secs(60)).await;
    report("two workers", &sent, &tally);
    assert_kept(&sent, &tally);
    let share = |name: &str| tally.by_worker.get(name).copied().unwrap_or(0);
    for name in ["worker-a", "worker-b"] {
        assert!(
            share(name) * 10 >= tally.processed,
            "{name} took {} of {}",
            share(name),
            tally.processed
        );
    }

    // Worker a hangs (SIGSTOP) holding entries; b claims them after the idle time.
    let sending = tokio::spawn(send(
        app.port,
        "hung-worker",
        Burst {
            alerts: 1000,
            concurrency: 8,
            rate: Some(400.0),
            repeat_every: None,
        },
    ));
    // Stop a while it holds entries: it may acknowledge them between the check and the
    // signal, so check again once it is stopped, and try again if it had.
    let held = loop {
        wait_until("worker a to hold entries", async || {
            xpending(&app, Some("worker-a")).await > 0
        })
        .await;
        a.signal("STOP");
        let held = xpending(&app, Some("worker-a")).await;
        if held > 0 {
            break held;
        }
        a.signal("CONT");
    };
    let hung_sent = sending.await.unwrap();
    let tally = settle(&app, &hung_sent, Duration::from_secs(60)).await;
    report("one worker hung", &hung_sent, &tally);
    eprintln!("delivery: one worker hung: {held} entries were pending with the hung worker");
    assert_kept(&hung_sent, &tally);
    assert!(held > 0);
    assert_eq!(
        xpending(&app, Some("worker-a")).await,
        0,
        "b did not claim a's entries"
    );
    assert!(b.log().contains("alert processed"));
    a.signal("CONT");
}

/// Graceful shutdown: pyron-api stops accepting on SIGTERM but finishes the request in
/// flight; pyron-worker finishes and acknowledges its batch before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_work() {
    let _serial = SERIAL.lock().await;
    let mut app = App::stores_only(&settings(&[("PYRON_WORKER_CONSUMER", "drainer")]));
    app.start_api().await;
    app.start_worker();

    // A request whose body is still arriving when SIGTERM comes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let request = app
        .http
        .post(app.url("/webhook"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let in_flight = tokio::spawn(request);
    let body =
        json!({"passphrase": TOKEN, "ticker": "SLOW", "action": "sell", "price": 1}).to_string();
    let (head, tail) = body.split_at(10);
    tx.send(Ok(head.as_bytes().to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let api = app.api.as_mut().unwrap();
    let pid = api.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    // New connections are refused once the api has seen the signal.
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", app.port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "pyron-api still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(Ok(tail.as_bytes().to_vec())).await.unwrap();
    drop(tx);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        202,
        "the request in flight was not finished"
    );
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = app.api.as_mut().unwrap().terminate();
    assert!(status.success(), "pyron-api exited with {status}");
    assert!(app.api_log().contains("pyron-api stopped"));
    wait_for_status(&app, &id, "processed").await;

    // The worker: SIGTERM during a stream of work leaves nothing pending for it.
    app.start_api().await;
    let sending = tokio::spawn(send(
        app.port,
        "drain",
        Burst {
            alerts: 1500,
            concurrency: 8,
            rate: None,
            repeat_every: None,
        },
    ));
    wait_until("the worker to be busy", async || {
        jobs_count(&app).await > 300
    })
    .await;
    let worker = app.worker.as_mut().unwrap();
    let status = worker.terminate();
    assert!(status.success(), "pyron-worker exited with {status}");
    let log = app.worker_log();
    assert!(
        log.contains("shutting down: finishing the batch in hand")
            && log.contains("worker stopped"),
        "{log}"
    );
    assert_eq!(
        xpending(&app, Some("drainer")).await,
        0,
        "the stopped worker left entries pending"
    );

    let sent = sending.await.unwrap();
    app.start_worker();
    let tally = settle(&app, &sent, Duration::from_secs(60)).await;
    report("worker SIGTERM", &sent, &tally);
    assert_kept(&sent, &tally);
}

/// pyron-api SIGKILLed mid-burst: the audit records its writer still held are written by
/// the worker (it finds them unmarked), so every alert answered 202 has both records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_killed_mid_burst_leaves_no_alert_without_its_records() {
    let _serial = SERIAL.lock().await;
    let mut app = App::stores_only(&settings(&[]));
    app.start_api().await;
    app.start_worker();
    let sending = tokio::spawn(send(
        app.port,
        "kill-api",
        Burst {
            alerts: 3000,
            concurrency: 16,
            rate: None,
            repeat_every: Some(50),
        },
    ));
    wait_until("some alerts to be processed", async || {
        jobs_count(&app).await >= 300
    })
    .await;
    app.api.as_mut().unwrap().kill();
    let mut sent = sending.await.unwrap();
    // Requests after the kill find nobody listening: those were never accepted.
    let refused = sent.other.len();
    sent.other.retain(|e| !e.contains("error sending request"));

    let tally = settle(&app, &sent, Duration::from_secs(60)).await;
    report("api SIGKILL", &sent, &tally);
    let by_worker = app
        .docs("audit", doc! { "entry": { "$exists": false } })
        .await
        .len();
    eprintln!(
        "delivery: api SIGKILL: {refused} requests refused after the kill; {by_worker} audit records written by the worker"
    );
    assert!(refused > 0, "the burst ended before the kill");
    assert_kept(&sent, &tally);
}
