//! End to end over real servers: an alert posted to pyron-api ends as one `jobs` record
//! written by pyron-worker, and every refusal writes nothing.

use std::time::Duration;

use crate::helpers::{App, TOKEN, f64_at, json, str_at};
use bson::doc;
use pyron::queue::DEAD_LETTERS;
use serde_json::Value;

#[test]
fn the_repository_samples_match_the_shared_ones() {
    if let Some(shared) = crate::helpers::shared_samples() {
        assert_eq!(crate::helpers::samples(), shared);
    }
    assert_eq!(crate::helpers::samples().len(), 5);
}

#[tokio::test]
async fn every_sample_is_accepted_and_ends_with_exactly_one_jobs_record() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start().await;
    let mut ids = Vec::new();
    for (name, content_type, body) in crate::helpers::samples() {
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
    // The body as received, the parsed copy not kept beside it: that is the job's signal.
    assert!(!nested_audit.contains_key("json"), "{nested_audit}");
    let stored: Value = serde_json::from_str(nested_audit.get_str("body").unwrap()).unwrap();
    assert_eq!(stored["note"], "Ünïcödé ✓ — 日本語");
    assert_eq!(stored["passphrase"], "[redacted]");

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
    let _load = crate::helpers::beside_others().await;
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
        // Not UTF-8 once decoded: no secret is, so it is a wrong one.
        (
            "/webhook/%FF%FEchange-me",
            "text/plain",
            "BTCUSDT up".to_owned(),
            "invalid_secret",
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
    app.assert_nothing_written("refused").await;
    assert!(!app.api_log().contains(TOKEN));
}

#[tokio::test]
async fn the_token_in_the_path_may_be_percent_encoded_and_is_one_segment() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start().await;
    // `change-me` with each character percent-encoded, and with one.
    let encoded: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    for token in [encoded.as_str(), "change%2Dme", TOKEN] {
        let (status, ack) = json(
            app.post(&format!("/webhook/{token}"), "text/plain", "BTCUSDT up")
                .await,
        )
        .await;
        assert_eq!(
            (status, ack["status"].as_str()),
            (202, Some("queued")),
            "{token}: {ack}"
        );
    }
    // An empty token, or more than one segment, is not a webhook path.
    for path in [
        "/webhook/",
        &format!("/webhook/{TOKEN}/"),
        &format!("/webhook/{TOKEN}/more"),
        "/webhooks",
    ] {
        let (status, error) = json(app.post(path, "text/plain", "BTCUSDT up").await).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {error}"
        );
    }
    assert_eq!(app.wait_for_docs("jobs", doc! {}, 3).await.len(), 3);
}

#[tokio::test]
async fn a_repeated_idempotency_key_gives_one_job() {
    let _load = crate::helpers::beside_others().await;
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
    let _load = crate::helpers::beside_others().await;
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
    let _load = crate::helpers::beside_others().await;
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
    app.assert_nothing_written("refused").await;
    // The service still answers.
    let (status, _) = json(app.post(&path, "text/plain", "still here").await).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn the_stream_group_and_collections_exist_after_the_first_alert() {
    let _load = crate::helpers::beside_others().await;
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
    let _load = crate::helpers::beside_others().await;
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    let entries = loop {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(DEAD_LETTERS)
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
