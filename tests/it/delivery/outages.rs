//! Kills and outages: the worker, redis-server, the MongoDB wire server, both stores.

use super::*;

/// 1. SIGKILL the worker in the middle of a 5,000-alert burst and restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_burst_loses_nothing() {
    let _alone = crate::helpers::alone().await;
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
        .arg(DEAD_LETTERS)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

/// 2. SIGKILL redis-server mid-burst and restart it: alerts go to MongoDB meanwhile and
/// the reconciler queues them once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_burst_loses_nothing() {
    let _alone = crate::helpers::alone().await;
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
    // Every kept alert was handed to the reconciler: none had to be looked for in `audit`
    // (a scan of the whole collection on FerretDB).
    let reconciled: Vec<String> = app
        .api_log()
        .lines()
        .filter(|l| l.contains("reconciler queued alerts"))
        .map(str::to_owned)
        .collect();
    assert!(
        reconciled.iter().all(|l| l.contains("handed over")),
        "{reconciled:?}"
    );
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
    let _alone = crate::helpers::alone().await;
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
    let _alone = crate::helpers::alone().await;
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
        let written = app.docs("audit", doc! { "json.phase": phase }).await;
        assert!(written.is_empty(), "{phase}: audit written: {written:?}");
    }
    let jobs = app.count("jobs").await;
    assert_eq!(jobs, 400, "jobs other than the 400 accepted");
    let (stream, _) = app.redis_state().await;
    assert_eq!(stream, 0, "entries left in the stream");
}

/// A Redis that hangs with an enqueue in its socket runs it when it comes back, after the
/// request stopped waiting (and answered from MongoDB, or 503): the job must not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_redis_runs_after_its_deadline_is_not_queued() {
    let _alone = crate::helpers::alone().await;
    let stores = crate::helpers::Stores::start();
    let queue = pyron::queue::Queue::connect(&stores.redis_url(), Duration::from_millis(200))
        .await
        .unwrap();
    queue.ping().await.unwrap();
    let alert = |dedup_key: Option<&str>| pyron::ingest::Alert {
        source: "default".into(),
        id: pyron::domain::EventId::new(),
        received_at: chrono::Utc::now(),
        kind: pyron::domain::AlertKind::Text,
        content_type: "text/plain".into(),
        body: "late".into(),
        json: None,
        dedup_key: dedup_key.map(str::to_owned),
        sender: None,
    };
    stores.redis.signal("STOP");
    for dedup_key in [None, Some("late-1")] {
        let answer = queue
            .enqueue(&alert(dedup_key), Duration::from_secs(60))
            .await;
        assert!(answer.is_err(), "a hung Redis answered: {answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stores.redis.signal("CONT");
    // Redis now runs what waited in its socket; then the stream must still be empty.
    let mut conn = stores.redis().await;
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stores.redis_state().await,
        (0, 0),
        "a job queued past its deadline"
    );
}
