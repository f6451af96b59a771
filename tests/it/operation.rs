//! Running the binaries: readiness as the stores come and go, listening on a unix socket,
//! configuration errors and `--check-config`, stopping on SIGTERM, Redis over a unix
//! socket, a redelivered batch, JSON the store cannot hold as a document, what the default
//! log level logs of an alert, alerts sharing Redis pipelines.

use std::time::Duration;

use crate::helpers::{App, TOKEN, json, str_at};
use bson::{Bson, doc};
use pyron::queue::STREAM;
use serde_json::Value;

#[tokio::test]
async fn readiness_follows_the_stores_and_alerts_survive_either_one_down() {
    let _load = crate::helpers::beside_others().await;
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    // The reconciler marks the audit records after it queued them (the worker may be
    // quicker): every record ends `queued`.
    crate::helpers::wait_until("every audit record marked queued", async || {
        app.docs("audit", doc! { "status": { "$ne": "queued" } })
            .await
            .is_empty()
    })
    .await;
    assert_eq!(app.count("audit").await, 2);
}

#[tokio::test]
async fn pyron_api_listens_on_a_unix_socket() {
    let _load = crate::helpers::beside_others().await;
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
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    let _load = crate::helpers::beside_others().await;
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
    let _load = crate::helpers::beside_others().await;
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
async fn at_the_default_info_level_an_alert_that_goes_well_leaves_no_line_and_a_refusal_does() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::start_with(&[("PYRON_LOG", "info")]).await;
    let (status, ack) = json(
        app.post(
            &format!("/webhook/{TOKEN}"),
            "application/json",
            r#"{"ticker":"BTCUSDT","action":"buy"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    let id = ack["id"].as_str().unwrap();
    let refused = app.post("/webhook/not-the-token", "text/plain", "x").await;
    assert_eq!(refused.status(), 401);
    let jobs = app.wait_for_docs("jobs", doc! { "_id": id }, 1).await;
    assert_eq!(jobs.len(), 1);
    // Stopped, so that every line either wrote is in its log.
    for process in [app.api.as_mut().unwrap(), app.worker.as_mut().unwrap()] {
        assert!(process.terminate().success());
    }
    let (api, worker) = (app.api_log(), app.worker_log());
    assert!(api.contains("alert rejected"), "{api}");
    assert!(!api.contains(id), "{api}");
    assert!(!worker.contains(id), "{worker}");
    assert!(api.contains("invalid_secret"), "{api}");
}

#[tokio::test]
async fn a_redelivered_batch_rewrites_the_same_records_without_stalling() {
    let _load = crate::helpers::beside_others().await;
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
            .arg(STREAM)
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

/// How many pipelines pyron-api has sent Redis: each begins with a `SCRIPT LOAD`.
async fn pipelines(app: &App) -> u64 {
    let mut redis = app.stores.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    // `cmdstat_script|load` since Redis 7, `cmdstat_script` before.
    info.lines()
        .find_map(|line| {
            line.strip_prefix("cmdstat_script|load:calls=")
                .or_else(|| line.strip_prefix("cmdstat_script:calls="))
        })
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_that_come_close_together_share_redis_pipelines_and_a_lone_one_goes_alone() {
    let _load = crate::helpers::beside_others().await;
    let app = std::sync::Arc::new(App::start().await);
    let post = |app: std::sync::Arc<App>, i: usize| async move {
        let body = format!(r#"{{"ticker":"T{i}","action":"buy"}}"#);
        let url = format!("/webhook/{TOKEN}");
        app.post(&url, "application/json", body).await.status()
    };
    let before = pipelines(&app).await;
    assert_eq!(post(app.clone(), 0).await, 202);
    assert_eq!(
        pipelines(&app).await - before,
        1,
        "a lone alert, one pipeline"
    );

    // 40 alerts a millisecond apart, none waiting for another's answer: alone, most would
    // go in a pipeline of their own.
    const N: usize = 40;
    let before = pipelines(&app).await;
    let mut sent = Vec::with_capacity(N);
    for i in 0..N {
        sent.push(tokio::spawn(post(app.clone(), i)));
        std::thread::sleep(Duration::from_millis(1));
    }
    for answer in sent {
        assert_eq!(answer.await.unwrap(), 202);
    }
    let used = pipelines(&app).await - before;
    assert!(
        used <= N as u64 / 2,
        "{N} alerts 1 ms apart took {used} pipelines"
    );
    app.wait_for_docs("jobs", doc! {}, N + 1).await;
    assert_eq!(app.count("jobs").await, N as u64 + 1);
}

#[tokio::test]
async fn json_the_store_cannot_hold_as_a_document_is_kept_whole_in_the_body() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start().await;
    let body = format!(
        r#"{{"passphrase":"{TOKEN}","ticker":"BTCUSDT","levels":[[1,2],[3,4]],"a.b":{{"$x":1}}}}"#
    );
    let (status, ack) = json(app.post("/webhook", "application/json", body).await).await;
    assert_eq!(status, 202, "{ack}");
    let id = ack["id"].as_str().unwrap();
    let jobs = app.wait_for_docs("jobs", doc! { "_id": id }, 1).await;
    assert_eq!(str_at(&jobs[0], "ticker"), "BTCUSDT");
    assert!(
        jobs[0]
            .get_document("signal")
            .unwrap()
            .get_str("extra_note")
            .unwrap()
            .contains("array inside an array"),
        "{}",
        jobs[0]
    );
    let audit = app.docs("audit", doc! { "_id": id }).await;
    let stored: Value = serde_json::from_str(audit[0].get_str("body").unwrap()).unwrap();
    assert_eq!(stored["levels"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(stored["passphrase"], "[redacted]");
}

#[tokio::test]
async fn redis_over_a_unix_socket_works_as_the_nixos_module_configures_it() {
    let _load = crate::helpers::beside_others().await;
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
    let _redis = crate::helpers::Process {
        name: "redis-server (unix socket)".into(),
        child,
        log,
    };
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
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
    let _load = crate::helpers::beside_others().await;
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
