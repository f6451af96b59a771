//! End to end over real servers: an alert posted to pyron-api ends as one `jobs` record
//! written by pyron-worker, and every refusal writes nothing.

mod common;

use std::time::Duration;

use bson::{Bson, Document, doc};
use common::{App, TOKEN};
use serde_json::Value;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, value)
}

fn f64_at(doc: &Document, key: &str) -> f64 {
    doc.get_document("signal").unwrap().get_f64(key).unwrap()
}

fn str_at<'a>(doc: &'a Document, key: &str) -> &'a str {
    doc.get_document("signal")
        .unwrap()
        .get_str(key)
        .unwrap_or_else(|_| panic!("signal.{key} in {doc}"))
}

/// Asserts that nothing reached either store.
async fn assert_nothing_written(app: &App) {
    assert_eq!(
        app.redis_state().await,
        (0, 0),
        "redis holds a job or dedup key"
    );
    assert_eq!(app.count("audit").await, 0, "an audit record was written");
    assert_eq!(app.count("jobs").await, 0, "a jobs record was written");
}

#[test]
fn the_repository_samples_match_the_shared_ones() {
    if let Some(shared) = common::shared_samples() {
        assert_eq!(common::samples(), shared);
    }
    assert_eq!(common::samples().len(), 5);
}

#[tokio::test]
async fn every_sample_is_accepted_and_ends_with_exactly_one_jobs_record() {
    let app = App::start().await;
    let mut ids = Vec::new();
    for (name, content_type, body) in common::samples() {
        // TradingView puts the secret in the JSON, or for text alerts in the path.
        let path = if content_type == "text/plain" {
            format!("/webhook/{TOKEN}")
        } else {
            "/webhook".into()
        };
        let (status, ack) = json(app.post(&path, content_type, body).await).await;
        assert_eq!(status, 202, "{name}: {ack}");
        assert_eq!(ack["status"], "queued", "{name}");
        ids.push((name, ack["id"].as_str().unwrap().to_owned()));
    }

    let jobs = app
        .wait_for_docs("jobs", doc! { "status": "processed" }, ids.len())
        .await;
    assert_eq!(
        jobs.len(),
        ids.len(),
        "one processed record per sample: {jobs:?}"
    );
    // Let a late duplicate show up if there were one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count("jobs").await, ids.len() as u64);

    let job = |name: &str| {
        let id = &ids.iter().find(|(n, _)| n == name).unwrap().1;
        jobs.iter()
            .find(|j| j.get_str("_id").unwrap() == id)
            .unwrap()
            .clone()
    };

    let strategy = job("strategy-order.json");
    assert_eq!(str_at(&strategy, "ticker"), "BTCUSDT");
    assert_eq!(str_at(&strategy, "exchange"), "BINANCE");
    assert_eq!(str_at(&strategy, "interval"), "15");
    assert_eq!(str_at(&strategy, "action"), "buy");
    assert_eq!(str_at(&strategy, "strategy"), "EMA Cross 9/21");
    assert_eq!(f64_at(&strategy, "price"), 67234.5);
    assert_eq!(f64_at(&strategy, "quantity"), 0.015);
    let alert_time = strategy
        .get_document("signal")
        .unwrap()
        .get_datetime("alert_time")
        .unwrap();
    assert_eq!(
        alert_time.try_to_rfc3339_string().unwrap(),
        "2026-11-28T14:15:00Z"
    );
    // The strategy's position fields are typed; what no field took comes as it came.
    assert_eq!(str_at(&strategy, "market_position"), "long");
    assert_eq!(f64_at(&strategy, "position_size"), 0.015);
    assert_eq!(str_at(&strategy, "order_id"), "Long Entry");
    assert_eq!(
        strategy
            .get_document("signal")
            .unwrap()
            .get_document("extra")
            .unwrap(),
        &doc! { "timenow": "2026-11-28T14:15:02Z" }
    );
    assert_eq!(strategy.get_i64("attempts").unwrap(), 1);
    assert!(strategy.get_i64("lag_ms").unwrap() >= 0);
    assert!(
        strategy.get_datetime("processed_at").unwrap()
            >= strategy.get_datetime("received_at").unwrap()
    );

    let indicator = job("indicator-alert.json");
    assert_eq!(str_at(&indicator, "ticker"), "AAPL");
    assert_eq!(str_at(&indicator, "exchange"), "NASDAQ");
    assert_eq!(str_at(&indicator, "interval"), "1D");
    assert_eq!(f64_at(&indicator, "price"), 231.47);

    let nested = job("nested.json");
    assert_eq!(str_at(&nested, "ticker"), "EURUSD");
    assert_eq!(str_at(&nested, "exchange"), "OANDA");
    assert_eq!(str_at(&nested, "action"), "sell");
    assert_eq!(f64_at(&nested, "quantity"), 10000.0);

    let multiline = job("multiline.txt");
    assert_eq!(
        str_at(&multiline, "text"),
        std::fs::read_to_string("samples/multiline.txt").unwrap()
    );
    let crossing = job("price-crossing.txt");
    assert_eq!(str_at(&crossing, "text"), "BTCUSDT Crossing 67,000.00\n");

    // Every alert has its audit record, and the secret is in none of them.
    let audit = app.wait_for_docs("audit", doc! {}, ids.len()).await;
    assert_eq!(audit.len(), ids.len());
    for record in &audit {
        let text = record.to_string();
        assert!(!text.contains(TOKEN), "secret stored in audit: {text}");
        assert!(record.get_datetime("received_at").is_ok());
        assert_eq!(record.get_str("sender").unwrap(), "127.0.0.1");
        assert!(record.get_str("content_type").is_ok());
        assert!(record.get_str("body").is_ok());
    }
    let nested_id = &ids.iter().find(|(n, _)| n == "nested.json").unwrap().1;
    let nested_audit = audit
        .iter()
        .find(|r| r.get_str("_id").unwrap() == nested_id)
        .unwrap();
    assert_eq!(nested_audit.get_str("kind").unwrap(), "json");
    let parsed = nested_audit.get_document("json").unwrap();
    assert_eq!(parsed.get_str("note").unwrap(), "Ünïcödé ✓ — 日本語");
    assert!(!parsed.contains_key("passphrase"));

    // Processed jobs leave the stream; the secret never reached the logs.
    assert_eq!(app.redis_state().await.0, 0);
    assert!(!app.api_log().contains(TOKEN), "secret in the api log");
    assert!(
        !app.worker_log().contains(TOKEN),
        "secret in the worker log"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401_and_writes_nothing() {
    let app = App::start().await;
    let cases = [
        (
            "/webhook/wrong-token",
            "text/plain",
            "BTCUSDT up".to_owned(),
            "invalid_secret",
        ),
        (
            "/webhook",
            "text/plain",
            "BTCUSDT up".to_owned(),
            "missing_secret",
        ),
        (
            "/webhook",
            "application/json",
            r#"{"ticker":"X"}"#.to_owned(),
            "missing_secret",
        ),
        (
            "/webhook",
            "application/json",
            r#"{"passphrase":"wrong-secret","ticker":"X"}"#.to_owned(),
            "invalid_secret",
        ),
        (
            "/webhook/wrong-token",
            "application/json",
            format!(r#"{{"passphrase":"{TOKEN}"}}"#),
            "invalid_secret",
        ),
        (
            "/webhook?token=change-me",
            "text/plain",
            "misplaced".to_owned(),
            "missing_secret",
        ),
    ];
    for (path, content_type, body, code) in cases {
        let (status, error) = json(app.post(path, content_type, body).await).await;
        assert_eq!(
            (status, error["error"].as_str().unwrap()),
            (401, code),
            "{path}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_written(&app).await;
    assert!(!app.api_log().contains(TOKEN));
}

#[tokio::test]
async fn a_repeated_idempotency_key_gives_one_job() {
    let app = App::start_with(&[("PYRON_IDEMPOTENCY_FIELD", "order_id")]).await;
    let send = |key: &'static str| {
        app.http
            .post(app.url(&format!("/webhook/{TOKEN}")))
            .header("content-type", "text/plain")
            .header("idempotency-key", key)
            .body("BTCUSDT buy")
            .send()
    };
    let (status, first) = json(send("order-1").await.unwrap()).await;
    assert_eq!((status, first["status"].as_str()), (202, Some("queued")));
    for _ in 0..3 {
        let (status, again) = json(send("order-1").await.unwrap()).await;
        assert_eq!((status, again["status"].as_str()), (202, Some("duplicate")));
        assert_eq!(again["duplicate_of"], first["id"]);
    }
    // The configured JSON field deduplicates as well.
    let body =
        format!(r#"{{"passphrase":"{TOKEN}","order_id":"Long Entry 1","ticker":"ETHUSDT"}}"#);
    let (_, a) = json(app.post("/webhook", "application/json", body.clone()).await).await;
    let (_, b) = json(app.post("/webhook", "application/json", body).await).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("queued"), Some("duplicate"))
    );

    let processed = app.wait_for_docs("jobs", doc! {}, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processed.len(), 2);
    assert_eq!(app.count("jobs").await, 2, "duplicates created jobs");
    // Every receipt is audited; the duplicates say whose duplicates they are.
    let duplicates = app
        .wait_for_docs("audit", doc! { "status": "duplicate" }, 4)
        .await;
    assert_eq!(duplicates.len(), 4);
    assert!(
        duplicates
            .iter()
            .any(|d| d.get_str("duplicate_of").unwrap() == first["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn an_oversized_body_is_413_whether_declared_or_chunked() {
    let app = App::start_with(&[("PYRON_BODY_LIMIT", "1024")]).await;
    let path = format!("/webhook/{TOKEN}");
    let (status, error) = json(app.post(&path, "text/plain", "x".repeat(1025)).await).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (413, "payload_too_large")
    );

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'y'; 1000]), Ok(vec![b'y'; 25])];
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, error) = json(app.post(&path, "text/plain", stream).await).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (413, "payload_too_large")
    );

    // Exactly at the limit is fine.
    let (status, _) = json(app.post(&path, "text/plain", "z".repeat(1024)).await).await;
    assert_eq!(status, 202);
    let jobs = app.wait_for_docs("jobs", doc! {}, 1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(app.count("audit").await, 1);
}

#[tokio::test]
async fn unsupported_content_types_and_malformed_json_are_refused_and_write_nothing() {
    let app = App::start().await;
    let path = format!("/webhook/{TOKEN}");
    let cases: [(&str, &str, u16, &str); 7] = [
        ("application/xml", "<a/>", 415, "unsupported_media_type"),
        (
            "application/x-www-form-urlencoded",
            "a=b",
            415,
            "unsupported_media_type",
        ),
        (
            "text/plain; charset=iso-8859-1",
            "abc",
            415,
            "unsupported_media_type",
        ),
        ("application/json", "{\"ticker\": ", 400, "malformed_json"),
        ("application/json", "{'ticker': 'X'}", 400, "malformed_json"),
        (
            "application/json",
            "{\"a\":1,\"a\":2}",
            400,
            "duplicate_key",
        ),
        ("text/plain", "", 400, "empty_body"),
    ];
    for (content_type, body, expected, code) in cases {
        let (status, error) = json(app.post(&path, content_type, body).await).await;
        assert_eq!(
            (status, error["error"].as_str().unwrap()),
            (expected, code),
            "{content_type} {body:?}"
        );
    }
    // No content type at all.
    let response = app
        .http
        .post(app.url(&path))
        .body("abc")
        .send()
        .await
        .unwrap();
    let (status, error) = json(response).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );

    // The wrong method and an unknown path answer in the same JSON shape.
    let (status, error) = json(app.http.get(app.url("/webhook")).send().await.unwrap()).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
    let (status, error) = json(app.http.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (404, "not_found")
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_written(&app).await;
    // The service still answers.
    let (status, _) = json(app.post(&path, "text/plain", "still here").await).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn the_stream_group_and_collections_exist_after_the_first_alert() {
    // The api alone first: jobs queued before any worker ran are still processed.
    let mut app = App::stores_only(&[]);
    app.start_api().await;
    let (status, ack) = json(
        app.post(&format!("/webhook/{TOKEN}"), "text/plain", "early bird")
            .await,
    )
    .await;
    assert_eq!(status, 202);
    app.start_worker();
    let jobs = app
        .wait_for_docs("jobs", doc! { "_id": ack["id"].as_str().unwrap() }, 1)
        .await;
    assert_eq!(
        jobs.len(),
        1,
        "job queued before the worker started was not processed"
    );

    let mut conn = app.stores.redis().await;
    let groups: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("webhook-jobs")
        .query_async(&mut conn)
        .await
        .unwrap();
    let names: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            g.windows(2)
                .filter(|w| w[0] == redis::Value::BulkString(b"name".to_vec()))
                .map(|w| match &w[1] {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                })
        })
        .collect();
    assert_eq!(names, vec!["pyron-workers".to_owned()]);
    let collections = app.db().await.list_collection_names().await.unwrap();
    assert!(collections.contains(&"audit".to_owned()), "{collections:?}");
    assert!(collections.contains(&"jobs".to_owned()), "{collections:?}");
}

#[tokio::test]
async fn an_alert_that_can_never_be_processed_goes_to_dead_letters_with_its_reason() {
    let app = App::start().await;
    let body = format!(
        r#"{{"passphrase":"{TOKEN}","ticker":"BTCUSDT","action":"buy","price":"{{{{close}}}}"}}"#
    );
    let (status, ack) = json(app.post("/webhook", "application/json", body).await).await;
    assert_eq!(status, 202);
    let id = ack["id"].as_str().unwrap();
    let dead = app
        .wait_for_docs("jobs", doc! { "_id": id, "status": "dead" }, 1)
        .await;
    assert_eq!(dead.len(), 1, "no dead jobs record");
    assert_eq!(
        dead[0].get_str("error").unwrap(),
        "price is not a number: {{close}}"
    );

    // The jobs record is written first, the dead letter right after.
    let mut conn = app.stores.redis().await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let entries = loop {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("webhook-jobs:dead")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !entries.ids.is_empty() || std::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entries.ids.len(), 1);
    let entry = &entries.ids[0];
    assert_eq!(entry.get::<String>("id").unwrap(), id);
    assert_eq!(
        entry.get::<String>("reason").unwrap(),
        "price is not a number: {{close}}"
    );
    // Acknowledged and gone from the work stream.
    assert_eq!(app.redis_state().await.0, 0);
}

#[tokio::test]
async fn readiness_follows_the_stores_and_alerts_survive_either_one_down() {
    let mut app = App::start().await;
    let (status, ready) = json(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (status, _) = json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200);

    app.stores.redis.kill();
    let (status, error) = json(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (503, "not_ready")
    );
    let (status, _) = json(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "liveness must not depend on the stores");

    // Redis down: MongoDB alone takes the alert, marked unqueued.
    let (status, ack) = json(
        app.post(&format!("/webhook/{TOKEN}"), "text/plain", "no queue")
            .await,
    )
    .await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (202, Some("queued")),
        "{ack}"
    );
    let kept = ack["id"].as_str().unwrap().to_owned();
    let audit = app.docs("audit", doc! { "_id": &kept }).await;
    assert_eq!(audit[0].get_str("status").unwrap(), "unqueued");

    // Both down: a fast 503 that tells the sender to come back.
    app.stores.mongo.kill();
    let started = std::time::Instant::now();
    let response = app
        .post(&format!("/webhook/{TOKEN}"), "text/plain", "no store")
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let (status, error) = json(response).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (503, "storage_unavailable")
    );
    assert!(elapsed < Duration::from_secs(1), "503 took {elapsed:?}");

    // Both back: the kept alert is queued by the reconciler and processed, and alerts
    // flow again without restarting anything.
    app.stores.start_redis_again();
    app.stores.start_mongo_again();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let id = loop {
        let (status, ack) = json(
            app.post(&format!("/webhook/{TOKEN}"), "text/plain", "queue back")
                .await,
        )
        .await;
        if status == 202 {
            break ack["id"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "api did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for id in [&kept, &id] {
        let jobs = app.wait_for_docs("jobs", doc! { "_id": id }, 1).await;
        assert_eq!(jobs.len(), 1, "{id} was not processed");
    }
    assert_eq!(app.count("jobs").await, 2, "the refused alert was written");
    assert!(
        app.docs("audit", doc! { "status": { "$ne": "queued" } })
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn pyron_api_listens_on_a_unix_socket() {
    let mut app = App::stores_only(&[]);
    let socket = app.stores.dir.path().join("api.sock");
    app.env.retain(|(k, _)| k != "PYRON_BIND");
    app.env
        .push(("PYRON_BIND".into(), format!("unix:{}", socket.display())));
    let mut api = app
        .command("pyron-api")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .args([
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "via socket",
        ])
        .arg(format!("http://localhost/webhook/{TOKEN}"))
        .output()
        .expect("curl");
    // SIGTERM: the api lets the audit write it started finish before it exits.
    std::process::Command::new("kill")
        .args(["-TERM", &api.id().to_string()])
        .status()
        .unwrap();
    assert!(api.wait().unwrap().success());
    let ack: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{output:?}"));
    assert_eq!(ack["status"], "queued");
    let audit = app.docs("audit", doc! {}).await;
    assert_eq!(audit.len(), 1);
    assert!(
        !audit[0].contains_key("sender"),
        "a unix socket has no sender address"
    );
}

#[tokio::test]
async fn a_bad_configuration_value_stops_start_up_with_one_line_naming_the_key() {
    let app = App::stores_only(&[]);
    for (key, value) in [
        ("REDIS_PORT", "sixty"),
        ("PYRON_BODY_LIMIT", "0"),
        ("PYRON_BIND", "nowhere"),
        ("USE_SSL", "maybe"),
    ] {
        for binary in ["pyron-api", "pyron-worker"] {
            let output = app.command(binary).env(key, value).output().unwrap();
            assert_eq!(output.status.code(), Some(2), "{binary} {key}={value}");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            assert!(stderr.contains(key), "{key} not named in: {stderr}");
        }
    }
    let output = app
        .command("pyron-api")
        .env_remove("PYRON_WEBHOOK_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PYRON_WEBHOOK_TOKEN"));
}

#[tokio::test]
async fn both_binaries_stop_cleanly_on_sigterm() {
    let mut app = App::start().await;
    let (status, _) = json(
        app.post(&format!("/webhook/{TOKEN}"), "text/plain", "last one")
            .await,
    )
    .await;
    assert_eq!(status, 202);
    let jobs = app.wait_for_docs("jobs", doc! {}, 1).await;
    assert_eq!(jobs.len(), 1);
    for process in [app.api.as_mut().unwrap(), app.worker.as_mut().unwrap()] {
        let status = process.terminate();
        assert!(status.success(), "{} exited with {status}", process.name);
    }
    let stopped = app.worker_log();
    assert!(stopped.contains("worker stopped"), "{stopped}");
    assert!(matches!(jobs[0].get("status"), Some(Bson::String(s)) if s == "processed"));
}

#[tokio::test]
async fn a_redelivered_batch_rewrites_the_same_records_without_stalling() {
    let app = App::start_with(&[("PYRON_WORKER_BATCH_SIZE", "200")]).await;
    let path = format!("/webhook/{TOKEN}");
    let mut ids = Vec::new();
    for i in 0..150 {
        let (status, ack) = json(app.post(&path, "text/plain", format!("alert {i}")).await).await;
        assert_eq!(status, 202);
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    let first = app.wait_for_docs("jobs", doc! {}, ids.len()).await;
    assert_eq!(first.len(), ids.len());

    // Deliver every job again, as after a worker died between its write and its XACK.
    let mut conn = app.stores.redis().await;
    for record in &first {
        let received = record
            .get_datetime("received_at")
            .unwrap()
            .timestamp_millis()
            .to_string();
        let id = record.get_str("_id").unwrap();
        let _: String = redis::cmd("XADD")
            .arg("webhook-jobs")
            .arg("*")
            .arg(&[
                ("id", id),
                ("received_at", &received),
                ("kind", "text"),
                ("content_type", "text/plain"),
                ("body", "again"),
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let again = app
        .wait_for_docs("jobs", doc! { "attempts": 2_i64 }, ids.len())
        .await;
    assert_eq!(
        again.len(),
        ids.len(),
        "redelivered jobs were not all recorded"
    );
    assert_eq!(
        app.count("jobs").await,
        ids.len() as u64,
        "a redelivery created a second record"
    );
    assert_eq!(app.count("audit").await, ids.len() as u64);
    assert!(
        again
            .iter()
            .all(|j| j.get_document("signal").unwrap().get_str("text").unwrap() == "again")
    );
}

#[tokio::test]
async fn json_the_store_cannot_hold_as_a_document_is_kept_whole_in_the_body() {
    let app = App::start().await;
    let body = format!(
        r#"{{"passphrase":"{TOKEN}","ticker":"BTCUSDT","levels":[[1,2],[3,4]],"a.b":{{"$x":1}}}}"#
    );
    let (status, ack) = json(app.post("/webhook", "application/json", body).await).await;
    assert_eq!(status, 202, "{ack}");
    let id = ack["id"].as_str().unwrap();
    let jobs = app.wait_for_docs("jobs", doc! { "_id": id }, 1).await;
    assert_eq!(str_at(&jobs[0], "ticker"), "BTCUSDT");
    let audit = app.docs("audit", doc! { "_id": id }).await;
    assert!(!audit[0].contains_key("json"));
    assert!(
        audit[0]
            .get_str("json_note")
            .unwrap()
            .contains("array inside an array")
    );
    let stored: Value = serde_json::from_str(audit[0].get_str("body").unwrap()).unwrap();
    assert_eq!(stored["levels"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(stored["passphrase"], "[redacted]");
}

#[tokio::test]
async fn redis_over_a_unix_socket_works_as_the_nixos_module_configures_it() {
    let mut app = App::stores_only(&[]);
    let dir = app.stores.dir.path().join("redis-unix");
    std::fs::create_dir(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let log = dir.join("redis.log");
    let child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--unixsocketperm", "600", "--save", ""])
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _redis = common::Process {
        name: "redis-server (unix socket)".into(),
        child,
        log,
    };
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no redis socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.env
        .retain(|(k, _)| k != "REDIS_HOST" && k != "REDIS_PORT");
    app.env.push((
        "PYRON_REDIS_URL".into(),
        format!("redis+unix://{}", socket.display()),
    ));
    app.start_api().await;
    app.start_worker();
    let (status, ack) = json(
        app.post(&format!("/webhook/{TOKEN}"), "text/plain", "over a socket")
            .await,
    )
    .await;
    assert_eq!(status, 202, "{ack}");
    let jobs = app
        .wait_for_docs("jobs", doc! { "_id": ack["id"].as_str().unwrap() }, 1)
        .await;
    assert_eq!(jobs.len(), 1);
    // Nothing went to the TCP Redis of the test's stores.
    assert_eq!(app.redis_state().await, (0, 0));
}

#[tokio::test]
async fn check_config_says_whether_a_configuration_would_start() {
    let app = App::stores_only(&[]);
    let file = app.stores.dir.path().join("pyron.toml");
    std::fs::write(&file, "log = \"info\"\nbody_limit = 131072\n").unwrap();
    for binary in ["pyron-api", "pyron-worker"] {
        let output = app
            .command(binary)
            .env("PYRON_CONFIG", &file)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(output.status.success(), "{binary}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
    }
    std::fs::write(&file, "log = \"info\"\nbody_limimt = 131072\n").unwrap();
    let output = app
        .command("pyron-api")
        .env("PYRON_CONFIG", &file)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("body_limimt"));
}

#[tokio::test]
async fn an_audit_record_the_worker_writes_holds_no_passphrase_either() {
    // As when pyron-api could not write the audit record itself: the worker writes it
    // from the job, whose body keeps the passphrase field, redacted.
    let app = App::start().await;
    let id = "01a22500-0000-7000-8000-000000000001";
    let mut conn = app.stores.redis().await;
    let _: String = redis::cmd("XADD")
        .arg("webhook-jobs")
        .arg("*")
        .arg(&[
            ("id", id),
            ("received_at", "1795915106149"),
            ("kind", "json"),
            ("content_type", "application/json"),
            (
                "body",
                r#"{"passphrase":"[redacted]","ticker":"BTCUSDT","action":"buy","price":1.5}"#,
            ),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let audit = app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
    assert_eq!(audit.len(), 1, "the worker wrote no audit record");
    let parsed = audit[0].get_document("json").unwrap();
    assert_eq!(parsed.get_str("ticker").unwrap(), "BTCUSDT");
    assert!(!parsed.contains_key("passphrase"), "{parsed}");
}

/// Every `pyron:audited:*` member, as (set, event id).
async fn audit_markers(app: &App) -> Vec<(String, String)> {
    let mut conn = app.stores.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("pyron:audited:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut markers = Vec::new();
    for key in keys {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        markers.extend(ids.into_iter().map(|id| (key.clone(), id)));
    }
    markers
}

#[tokio::test]
async fn the_api_marks_the_audit_records_it_wrote_and_the_worker_skips_and_clears_them() {
    let mut app = App::stores_only(&[]);
    app.start_api().await;
    let path = format!("/webhook/{TOKEN}");
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, ack) = json(app.post(&path, "text/plain", format!("alert {i}")).await).await;
        assert_eq!(status, 202);
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    // No worker yet: every audit record is the api's (it names the stream entry), and
    // each is marked in the set of its minute of arrival.
    let audit = app.wait_for_docs("audit", doc! {}, ids.len()).await;
    assert!(
        audit.iter().all(|a| a.get_str("entry").is_ok()),
        "{audit:?}"
    );
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let markers = loop {
        let markers = audit_markers(&app).await;
        if markers.len() >= ids.len() || std::time::Instant::now() > deadline {
            break markers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut marked: Vec<&str> = markers.iter().map(|(_, id)| id.as_str()).collect();
    marked.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(marked, expected);
    for (key, id) in &markers {
        let record = audit.iter().find(|a| a.get_str("_id") == Ok(id)).unwrap();
        let minute = record
            .get_datetime("received_at")
            .unwrap()
            .timestamp_millis()
            / 60_000;
        assert_eq!(key, &format!("pyron:audited:{minute}"));
    }
    let mut conn = app.stores.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&markers[0].0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 23 * 3600 && ttl <= 24 * 3600, "marker TTL {ttl}");

    // A job whose marker says its audit record is written gets none from the worker: to
    // show it, a marker for an alert whose record is (artificially) not there.
    let trusted = "01a22500-0000-7000-8000-0000000000aa";
    let received_ms: i64 = 1_795_915_106_149;
    let _: i64 = redis::cmd("SADD")
        .arg(format!("pyron:audited:{}", received_ms / 60_000))
        .arg(trusted)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("webhook-jobs")
        .arg("*")
        .arg(&[
            ("id", trusted),
            ("received_at", received_ms.to_string().as_str()),
            ("kind", "text"),
            ("content_type", "text/plain"),
            ("body", "marked"),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();

    app.start_worker();
    let jobs = app.wait_for_docs("jobs", doc! {}, ids.len() + 1).await;
    assert_eq!(jobs.len(), ids.len() + 1);
    assert_eq!(
        app.count("audit").await,
        ids.len() as u64,
        "the worker wrote an audit record pyron-api had marked as written"
    );
    // Settled jobs take their markers with them.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !audit_markers(&app).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "markers left: {:?}",
            audit_markers(&app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_alerts_sharing_a_pipeline_each_get_their_own_answer() {
    // pyron-api sends concurrent requests' jobs to Redis in one pipeline: every answer
    // must still be the one for its own alert. 100 keys, each sent twice, all at once.
    // No worker: the stream keeps every job for the check below.
    let mut app = App::stores_only(&[]);
    app.start_api().await;
    let url = app.url(&format!("/webhook/{TOKEN}"));
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..200 {
        let http = app.http.clone();
        let url = url.clone();
        requests.spawn(async move {
            let key = format!("key-{}", n % 100);
            let response = http
                .post(url)
                .header("content-type", "text/plain")
                .header("idempotency-key", &key)
                .body(format!("alert {n}"))
                .send()
                .await
                .unwrap();
            let (status, ack) = json(response).await;
            assert_eq!(status, 202, "{ack}");
            (key, ack)
        });
    }
    let mut by_key: std::collections::HashMap<String, Vec<Value>> = Default::default();
    while let Some(done) = requests.join_next().await {
        let (key, ack) = done.unwrap();
        by_key.entry(key).or_default().push(ack);
    }
    assert_eq!(by_key.len(), 100);
    let mut queued = Vec::new();
    for (key, acks) in &by_key {
        let first: Vec<&Value> = acks.iter().filter(|a| a["status"] == "queued").collect();
        let again: Vec<&Value> = acks.iter().filter(|a| a["status"] == "duplicate").collect();
        assert_eq!((first.len(), again.len()), (1, 1), "{key}: {acks:?}");
        assert_eq!(again[0]["duplicate_of"], first[0]["id"], "{key}");
        queued.push(first[0]["id"].as_str().unwrap().to_owned());
    }
    // Each queued alert's audit record names the stream entry that carries that alert.
    let audit = app.wait_for_docs("audit", doc! {}, 200).await;
    assert_eq!(audit.len(), 200);
    let mut conn = app.stores.redis().await;
    let stream: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("webhook-jobs")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    for id in &queued {
        let record = audit.iter().find(|a| a.get_str("_id") == Ok(id)).unwrap();
        let entry = stream
            .ids
            .iter()
            .find(|e| {
                // The job is the alert as JSON, in one field.
                let job: Value = serde_json::from_str(&e.get::<String>("job").unwrap()).unwrap();
                job["id"].as_str() == Some(id.as_str())
            })
            .unwrap_or_else(|| panic!("no job for {id}"));
        assert_eq!(record.get_str("entry"), Ok(entry.id.as_str()), "{id}");
    }
}

/// An audit record as comparable across writers: the fields that differ by nature (the id,
/// the time, which stream entry, the idempotency key, when the reconciler queued it) are
/// replaced by whether they are there.
fn comparable(record: &Document) -> Document {
    let mut record = record.clone();
    for field in [
        "_id",
        "received_at",
        "entry",
        "dedup_key",
        "duplicate_of",
        "queued_at",
    ] {
        if let Some(value) = record.get_mut(field) {
            *value = Bson::String(format!("<{field}>"));
        }
    }
    record
}

/// The same four alerts, told apart by `tag` in their idempotency key: a JSON alert, its
/// duplicate, JSON sent as text, and a text alert. Returns their event ids in that order.
async fn send_the_four(app: &App, tag: &str) -> Vec<String> {
    let json_alert = format!(
        r#"{{"passphrase":"{TOKEN}","ticker":"BTCUSDT","action":"buy","price":"96,412.50","note":"n"}}"#
    );
    let text_json = format!("{{\"passphrase\":\"{TOKEN}\",\"ticker\":\"ETHUSDT\"}}\n");
    let sends = [
        (
            "/webhook".to_owned(),
            "application/json",
            json_alert.clone(),
            Some(tag),
        ),
        (
            "/webhook".to_owned(),
            "application/json",
            json_alert,
            Some(tag),
        ),
        (
            "/webhook".to_owned(),
            "text/plain; charset=utf-8",
            text_json,
            None,
        ),
        (
            format!("/webhook/{TOKEN}"),
            "text/plain",
            "SOLUSDT crossing 150".to_owned(),
            None,
        ),
    ];
    let mut ids = Vec::new();
    for (path, content_type, body, key) in sends {
        let mut request = app
            .http
            .post(app.url(&path))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let (status, ack) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 202, "{tag}: {ack}");
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn an_alert_has_the_same_audit_record_whoever_writes_it() {
    let mut app = App::start().await;
    // pyron-api writes these.
    let by_api = send_the_four(&app, "by-api").await;
    app.wait_for_docs("audit", doc! {}, 4).await;
    app.wait_for_docs("jobs", doc! {}, 3).await;

    // MongoDB down: Redis takes the jobs, the api's writer fails, and the worker writes
    // the audit records from the jobs once MongoDB is back.
    app.stores.mongo.kill();
    let by_worker = send_the_four(&app, "by-worker").await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !app
        .api_log()
        .contains("audit records deferred to the worker")
    {
        assert!(std::time::Instant::now() < deadline, "{}", app.api_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stores.start_mongo_again();
    app.wait_for_docs("audit", doc! {}, 8).await;
    app.wait_for_docs("jobs", doc! {}, 6).await;
    // pyron-api has seen MongoDB back too.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis down: MongoDB alone takes them, and the reconciler queues them once Redis
    // is back (the repeat turns out a duplicate then).
    app.stores.redis.kill();
    let kept = send_the_four(&app, "kept").await;
    app.stores.start_redis_again();
    app.wait_for_docs("jobs", doc! {}, 9).await;
    app.wait_for_docs("audit", doc! { "status": "duplicate" }, 3)
        .await;

    let audit = app.docs("audit", doc! {}).await;
    let record = |id: &String| {
        audit
            .iter()
            .find(|r| r.get_str("_id") == Ok(id))
            .unwrap_or_else(|| panic!("no audit record for {id}"))
    };
    for (i, ((api, worker), kept)) in by_api.iter().zip(&by_worker).zip(&kept).enumerate() {
        let (api, worker, kept) = (record(api), record(worker), record(kept));
        assert_eq!(
            comparable(api),
            comparable(worker),
            "alert {i}: written by pyron-api, then by the worker"
        );
        // The MongoDB-only record says when it was queued, and names no stream entry.
        let mut expected = comparable(api);
        expected.remove("entry");
        if kept.contains_key("queued_at") {
            expected.insert("queued_at", "<queued_at>");
        }
        assert_eq!(
            comparable(kept),
            expected,
            "alert {i}: kept in MongoDB alone"
        );
    }
    let first = record(&by_worker[0]);
    assert_eq!(
        first.get_document("json").unwrap(),
        &doc! { "ticker": "BTCUSDT", "action": "buy", "price": "96,412.50", "note": "n" }
    );
    assert_eq!(
        record(&by_worker[1]).get_str("duplicate_of").unwrap(),
        by_worker[0]
    );
    assert_eq!(
        record(&by_worker[2]).get_document("json").unwrap(),
        &doc! { "ticker": "ETHUSDT" }
    );
    assert!(record(&by_worker[3]).get_document("json").is_err());
    assert!(!audit.iter().any(|r| r.to_string().contains(TOKEN)));
}

#[tokio::test]
async fn a_job_queued_before_jobs_were_one_field_is_still_processed() {
    // A stream entry as the previous Pyron wrote it, a field per attribute, found in the
    // stream by an upgraded worker.
    let app = App::start().await;
    let id = "01a22500-0000-7000-8000-000000000002";
    let mut conn = app.stores.redis().await;
    let _: String = redis::cmd("XADD")
        .arg("webhook-jobs")
        .arg("*")
        .arg(&[
            ("id", id),
            ("received_at", "1795915106149"),
            ("kind", "json"),
            ("content_type", "application/json"),
            (
                "body",
                r#"{"ticker":"ETHUSDT","action":"sell","price":"3,601.25"}"#,
            ),
            ("sender", "127.0.0.1"),
            ("dedup_key", "legacy-1"),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let jobs = app
        .wait_for_docs("jobs", doc! { "_id": id, "status": "processed" }, 1)
        .await;
    assert_eq!(jobs.len(), 1, "the old entry was not processed");
    assert_eq!(f64_at(&jobs[0], "price"), 3601.25);
    let audit = app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
    assert_eq!(audit[0].get_str("sender").unwrap(), "127.0.0.1");
    assert_eq!(audit[0].get_str("dedup_key").unwrap(), "legacy-1");
    assert_eq!(app.redis_state().await.0, 0, "the entry is acknowledged");
}
