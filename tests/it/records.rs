//! The records an alert leaves, whoever writes them: the audit record the worker writes
//! from a job, the markers of the ones pyron-api wrote, the job's stream format (and the
//! previous one), and concurrent alerts sharing a pipeline.

use std::time::Duration;

use crate::helpers::{App, TOKEN, f64_at, json};
use bson::{Bson, Document, doc};
use pyron::queue::{AUDITED_PREFIX, STREAM};
use serde_json::Value;

#[tokio::test]
async fn an_audit_record_the_worker_writes_holds_no_passphrase_either() {
    let _load = crate::helpers::beside_others().await;
    // As when pyron-api could not write the audit record itself: the worker writes it
    // from the job, whose body keeps the passphrase field, redacted.
    let app = App::start().await;
    let id = "01a22500-0000-7000-8000-000000000001";
    add_old_style_job(
        &app,
        id,
        r#"{"passphrase":"[redacted]","ticker":"BTCUSDT","action":"buy","price":1.5}"#,
        &[],
    )
    .await;
    let audit = app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
    assert_eq!(audit.len(), 1, "the worker wrote no audit record");
    assert_eq!(
        audit[0].get_str("body").unwrap(),
        r#"{"passphrase":"[redacted]","ticker":"BTCUSDT","action":"buy","price":1.5}"#
    );
    assert!(!audit[0].contains_key("json"), "{}", audit[0]);
}

/// Adds a JSON alert's job to the stream as the previous Pyron did, a field per attribute
/// (received 1795915106149 ms), with `extra` fields.
async fn add_old_style_job(app: &App, id: &str, body: &str, extra: &[(&str, &str)]) {
    let mut fields = vec![
        ("id", id),
        ("received_at", "1795915106149"),
        ("kind", "json"),
        ("content_type", "application/json"),
        ("body", body),
    ];
    fields.extend_from_slice(extra);
    let mut conn = app.stores.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg(&fields)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Marks an alert received at `received_ms` as having its audit record written, as
/// pyron-api does (`pyron:audited:<minute>`).
async fn mark_audited(app: &App, id: &str, received_ms: i64) {
    let mut conn = app.stores.redis().await;
    let _: i64 = redis::cmd("SADD")
        .arg(format!("{AUDITED_PREFIX}{}", received_ms / 60_000))
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Every `pyron:audited:*` member, as (set, event id).
async fn audit_markers(app: &App) -> Vec<(String, String)> {
    let mut conn = app.stores.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{AUDITED_PREFIX}*"))
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
    let _load = crate::helpers::beside_others().await;
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    mark_audited(&app, trusted, received_ms).await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    while !audit_markers(&app).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "markers left: {:?}",
            audit_markers(&app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds a text alert's job as pyron-api queues it, received now, without writing or
/// marking its audit record (as if the api's writer were still gathering it).
async fn add_fresh_job(app: &App, id: &str, body: &str) {
    let job = serde_json::json!({
        "id": id,
        "source": "default",
        "received_at": chrono::Utc::now().timestamp_millis(),
        "kind": "text",
        "content_type": "text/plain",
        "body": body,
    });
    let mut conn = app.stores.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("job")
        .arg(job.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A log line without the colour codes of a terminal's log.
fn without_colours(line: &str) -> String {
    let mut parts = line.split('\x1b');
    let first = parts.next().unwrap_or_default().to_owned();
    parts.fold(first, |plain, part| {
        plain + part.split_once('m').map_or(part, |(_, rest)| rest)
    })
}

/// Waits until the stream holds nothing, pending entries included.
async fn wait_until_settled(app: &App) {
    crate::helpers::wait_until("the stream settled", async || {
        app.redis_state().await.0 == 0 && audit_markers(app).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_fresh_job_not_marked_is_held_until_its_grace_is_over_then_its_record_written() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    app.start_worker();
    // Fresh and unmarked: the worker records the job, then leaves its audit record to
    // pyron-api's writer for a while before writing it itself and acknowledging.
    let id = "01a22500-0000-7000-8000-0000000000b1";
    add_fresh_job(&app, id, "fresh and unmarked").await;
    let jobs = app.wait_for_docs("jobs", doc! { "_id": id }, 1).await;
    assert_eq!(jobs[0].get_str("status").unwrap(), "processed");
    let audit = app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
    assert_eq!(audit[0].get_str("body").unwrap(), "fresh and unmarked");
    assert!(audit[0].get_str("entry").is_ok(), "{}", audit[0]);
    wait_until_settled(&app).await;
    let log = app.worker_log();
    let settled = log
        .lines()
        .find(|line| line.contains("held jobs settled"))
        .unwrap_or_else(|| panic!("no held job settled: {log}"));
    let settled = without_colours(settled);
    assert!(settled.contains("held=1 written_here=1"), "{settled}");

    // Marked meanwhile (the api's writer finished): held the same, and not written twice.
    let marked = "01a22500-0000-7000-8000-0000000000b2";
    mark_audited(&app, marked, chrono::Utc::now().timestamp_millis()).await;
    add_fresh_job(&app, marked, "fresh and marked").await;
    app.wait_for_docs("jobs", doc! { "_id": marked }, 1).await;
    wait_until_settled(&app).await;
    assert_eq!(
        app.docs("audit", doc! { "_id": marked }).await.len(),
        0,
        "the worker wrote an audit record pyron-api had marked as written"
    );
}

#[tokio::test]
async fn a_worker_stopping_settles_the_jobs_it_holds() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    app.start_worker();
    let ids: Vec<String> = (0..5)
        .map(|i| format!("01a22500-0000-7000-8000-0000000000c{i}"))
        .collect();
    for id in &ids {
        add_fresh_job(&app, id, "held at shutdown").await;
    }
    app.wait_for_docs("jobs", doc! {}, ids.len()).await;
    // Stopped at once, within the grace (or just after it): either way nothing is left
    // pending, and every alert has its audit record.
    let status = app.worker.as_mut().unwrap().terminate();
    assert!(status.success(), "{status}");
    assert_eq!(app.docs("audit", doc! {}).await.len(), ids.len());
    assert_eq!(app.redis_state().await.0, 0, "entries left in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_alerts_sharing_a_pipeline_each_get_their_own_answer() {
    let _load = crate::helpers::beside_others().await;
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
        .arg(STREAM)
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
    let _load = crate::helpers::beside_others().await;
    let mut app = App::start().await;
    // pyron-api writes these.
    let by_api = send_the_four(&app, "by-api").await;
    app.wait_for_docs("audit", doc! {}, 4).await;
    app.wait_for_docs("jobs", doc! {}, 3).await;

    // MongoDB down: Redis takes the jobs, the api's writer fails, and the worker writes
    // the audit records from the jobs once MongoDB is back.
    app.stores.mongo.kill();
    let by_worker = send_the_four(&app, "by-worker").await;
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    // Marked after they were queued, duplicates first.
    crate::helpers::wait_until("the kept records marked", async || {
        app.docs("audit", doc! { "status": "unqueued" })
            .await
            .is_empty()
    })
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
    assert_eq!(
        record(&by_worker[1]).get_str("duplicate_of").unwrap(),
        by_worker[0]
    );
    // The alert as received; its parsed fields are the job's signal, not kept twice.
    assert!(audit.iter().all(|r| !r.contains_key("json")));
    assert!(!audit.iter().any(|r| r.to_string().contains(TOKEN)));
}

#[tokio::test]
async fn a_job_queued_before_jobs_were_one_field_is_still_processed() {
    let _load = crate::helpers::beside_others().await;
    // A stream entry as the previous Pyron wrote it, a field per attribute, found in the
    // stream by an upgraded worker.
    let app = App::start().await;
    let id = "01a22500-0000-7000-8000-000000000002";
    add_old_style_job(
        &app,
        id,
        r#"{"ticker":"ETHUSDT","action":"sell","price":"3,601.25"}"#,
        &[("sender", "127.0.0.1"), ("dedup_key", "legacy-1")],
    )
    .await;
    let jobs = app
        .wait_for_docs("jobs", doc! { "_id": id, "status": "processed" }, 1)
        .await;
    assert_eq!(jobs.len(), 1, "the old entry was not processed");
    assert_eq!(f64_at(&jobs[0], "price"), 3601.25);
    let audit = app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
    assert_eq!(audit[0].get_str("sender").unwrap(), "127.0.0.1");
    assert_eq!(audit[0].get_str("dedup_key").unwrap(), "legacy-1");
    // Acknowledged once its records are written (the audit record may be seen first).
    crate::helpers::wait_until("the entry acknowledged", async || {
        app.redis_state().await.0 == 0
    })
    .await;
}
