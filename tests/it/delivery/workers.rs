//! Failures, replay, several workers, and stopping: a job MongoDB refuses until it is
//! dead and replayed, two workers sharing the stream (one hung), SIGTERM mid-burst, and
//! pyron-api killed mid-burst.

use super::*;

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
    let _alone = crate::helpers::alone().await;
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
    let _alone = crate::helpers::alone().await;
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
    let _alone = crate::helpers::alone().await;
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
    let _alone = crate::helpers::alone().await;
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
