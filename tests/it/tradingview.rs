//! What TradingView users really send, as TradingView sends it: over HTTPS through the real
//! NGINX to the real binaries. JSON that arrives as `text/plain`, prices written with
//! separators, and alerts sent while pyron-api restarts with one of its stores down.

use std::time::{Duration, Instant};

use crate::helpers::{App, Nginx, PATIENCE, TOKEN};
use bson::{Document, doc};
use serde_json::{Value, json};

/// NGINX with TLS in front of an `App`, and an HTTPS client that trusts its certificate.
struct Edge {
    app: App,
    _nginx: Nginx,
    client: reqwest::Client,
    base: String,
}

impl Edge {
    fn start(app: App) -> Edge {
        let nginx = app.behind_nginx(&[]);
        let root = reqwest::Certificate::from_pem(&std::fs::read(&nginx.cert).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(root)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let base = format!("https://localhost:{}", nginx.https_port);
        Edge {
            app,
            _nginx: nginx,
            client,
            base,
        }
    }

    /// Posts `body` as `content_type`; the status and JSON answer.
    async fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Waits for the `jobs` record of `id` to have `status`.
    async fn job(&self, id: &str, status: &str) -> Document {
        let jobs = self
            .app
            .wait_for_docs("jobs", doc! { "_id": id, "status": status }, 1)
            .await;
        assert_eq!(
            jobs.len(),
            1,
            "no {status} job for {id}: {:?}",
            self.app.docs("jobs", doc! { "_id": id }).await
        );
        jobs[0].clone()
    }
}

fn id_of(ack: &Value) -> String {
    ack["id"].as_str().unwrap().to_owned()
}

const ADMIN: &str = "tradingview-admin-0123456789";

const ETH: &str = r#"{"passphrase":"change-me","ticker":"ETHUSDT","action":"buy","price":3601.2}"#;

#[tokio::test]
async fn json_sent_as_text_plain_is_accepted_by_its_passphrase_and_kept_as_text_and_json() {
    let _load = crate::helpers::beside_others().await;
    let edge = Edge::start(App::start().await);
    let app = &edge.app;

    // TradingView's own fallback: the JSON it did not take for JSON, with a newline.
    let body = format!("{ETH}\n");
    let (status, ack) = edge
        .post("/webhook", "text/plain; charset=utf-8", &body)
        .await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (202, Some("queued")),
        "{ack}"
    );
    let id = id_of(&ack);
    let job = edge.job(&id, "processed").await;
    let signal = job.get_document("signal").unwrap();
    assert_eq!(signal.get_str("ticker").unwrap(), "ETHUSDT");
    assert_eq!(signal.get_str("action").unwrap(), "buy");
    assert_eq!(signal.get_f64("price").unwrap(), 3601.2);
    let audit = app.wait_for_docs("audit", doc! { "_id": &id }, 1).await;
    let audit = &audit[0];
    assert_eq!(audit.get_str("kind").unwrap(), "text");
    assert_eq!(
        audit.get_str("content_type").unwrap(),
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        audit.get_str("body").unwrap(),
        body.replace(TOKEN, "[redacted]"),
        "the text as received, newline and all, without the secret"
    );
    assert!(
        !signal.contains_key("extra"),
        "nothing but the signal's fields: {signal}"
    );

    // Words around the JSON do not hide it either.
    let wrapped = format!("Alert fired: {ETH} (sent by TradingView)");
    let (status, ack) = edge.post("/webhook", "text/plain", &wrapped).await;
    assert_eq!(status, 202, "{ack}");
    let job = edge.job(&id_of(&ack), "processed").await;
    assert_eq!(
        job.get_document("signal")
            .unwrap()
            .get_str("ticker")
            .unwrap(),
        "ETHUSDT"
    );

    // A text that only mentions the secret, a wrong passphrase, and JSON that breaks
    // the rules of a JSON body are refused, as they would be as application/json, and
    // leave nothing behind.
    let refused = [
        ("passphrase: change-me ETHUSDT buy\n", 401, "missing_secret"),
        (
            "{\"passphrase\":\"guess-guess\",\"ticker\":\"X\"}\n",
            401,
            "invalid_secret",
        ),
        (
            "{\"passphrase\":\"change-me\",\"ticker\":\"X\",\"ticker\":\"Y\"}\n",
            400,
            "duplicate_key",
        ),
    ];
    for (body, status, code) in refused {
        let (got, error) = edge.post("/webhook", "text/plain", body).await;
        assert_eq!(
            (got, error["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("audit").await, 2, "a refused alert was written");
    assert_eq!(app.count("jobs").await, 2);
    assert!(!app.api_log().contains(TOKEN) && !app.worker_log().contains(TOKEN));
}

#[tokio::test]
async fn prices_with_separators_are_read_one_way_or_the_job_says_why() {
    let _load = crate::helpers::beside_others().await;
    let edge = Edge::start(App::start_with(&[("PYRON_ADMIN_TOKEN", ADMIN)]).await);
    let send = async |price: &str| -> String {
        let body =
            json!({"passphrase": TOKEN, "ticker": "BTCUSDT", "action": "buy", "price": price});
        let (status, ack) = edge
            .post("/webhook", "application/json", &body.to_string())
            .await;
        assert_eq!(status, 202, "{ack}");
        id_of(&ack)
    };
    let grouped = send("96,412.50").await;
    let plain = send("96412.50").await;
    let ambiguous = send("96,412").await;
    let decimal_comma = send("96.412,50").await;

    for id in [&grouped, &plain] {
        let job = edge.job(id, "processed").await;
        assert_eq!(
            job.get_document("signal")
                .unwrap()
                .get_f64("price")
                .unwrap(),
            96412.5
        );
    }
    let reasons = [
        (
            &ambiguous,
            "price is ambiguous: 96,412 could be read with a thousands separator or a decimal comma; send it without separators, with a decimal point",
        ),
        (
            &decimal_comma,
            "price uses a decimal comma: 96.412,50; Pyron reads only a decimal point (and commas only as thousands separators before one)",
        ),
    ];
    for (id, reason) in reasons {
        let job = edge.job(id, "dead").await;
        assert_eq!(job.get_str("error").unwrap(), reason);
        assert!(
            job.get_document("signal").is_err(),
            "a dead job acts on nothing"
        );
    }
    // The list the dashboard shows says so in the alert's row.
    let events: Vec<Value> = edge
        .client
        .get(format!("{}/api/events?limit=10", edge.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = events.iter().find(|e| e["id"] == json!(ambiguous)).unwrap();
    assert_eq!(row["status"], "dead");
    assert_eq!(
        row["ticker"], "BTCUSDT",
        "the fields that did read still show"
    );
    assert_eq!(row["error"], reasons[0].1);
}

/// pyron-api (re)started while `down` is down, behind NGINX: it answers at once, takes
/// alerts into the other store, and everything is processed once `down` is back.
async fn restart_with_a_store_down(down: &str) {
    let mut app = App::stores_only(&[]);
    match down {
        "redis" => app.stores.redis.kill(),
        _ => app.stores.mongo.kill(),
    }
    app.start_api().await;
    let worker = app.spawn("pyron-worker", "pyron-worker", &[]);
    app.worker = Some(worker);
    let mut edge = Edge::start(app);

    let (status, alive) = edge.get("/healthz").await;
    assert_eq!((status, alive["status"].as_str()), (200, Some("ok")));
    let (status, ready) = edge.get("/readyz").await;
    assert_eq!((status, ready["error"].as_str()), (503, Some("not_ready")));
    let message = ready["message"].as_str().unwrap();
    let (up, missing) = match down {
        "redis" => ("mongodb", "redis"),
        _ => ("redis", "mongodb"),
    };
    assert!(
        message.contains(missing) && !message.contains(up),
        "/readyz names the store that is down: {message}"
    );

    // As TradingView sends them: a text alert with the secret in the path, and JSON
    // with the passphrase. Both acknowledged at once, whichever store took them.
    let mut ids = Vec::new();
    for (path, content_type, body) in [
        (
            format!("/webhook/{TOKEN}"),
            "text/plain",
            "BTCUSDT Crossing 67,000.00".to_owned(),
        ),
        ("/webhook".to_owned(), "application/json", ETH.to_owned()),
    ] {
        let started = Instant::now();
        let (status, ack) = edge.post(&path, content_type, &body).await;
        let took = started.elapsed();
        assert_eq!(
            (status, ack["status"].as_str()),
            (202, Some("queued")),
            "{ack}"
        );
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
        ids.push(id_of(&ack));
    }
    let held = match down {
        "redis" => edge.app.count("audit").await,
        _ => edge.app.redis_state().await.0,
    };
    assert_eq!(held, 2, "the store that is up holds both alerts");

    match down {
        "redis" => edge.app.stores.start_redis_again(),
        _ => edge.app.stores.start_mongo_again(),
    }
    for id in &ids {
        edge.job(id, "processed").await;
        let audit = edge.app.wait_for_docs("audit", doc! { "_id": id }, 1).await;
        assert_eq!(audit.len(), 1, "no audit record for {id}");
    }
    let deadline = Instant::now() + PATIENCE;
    while edge.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready with both stores back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(edge.app.count("jobs").await, 2);
    edge.app.api.as_mut().unwrap().terminate();
}

#[tokio::test]
async fn pyron_api_started_while_mongodb_is_down_takes_alerts_through_nginx() {
    let _load = crate::helpers::beside_others().await;
    restart_with_a_store_down("mongo").await;
}

#[tokio::test]
async fn pyron_api_started_while_redis_is_down_takes_alerts_through_nginx() {
    let _load = crate::helpers::beside_others().await;
    restart_with_a_store_down("redis").await;
}

#[tokio::test]
async fn pyron_api_started_with_both_stores_down_answers_at_once() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    app.stores.redis.kill();
    app.stores.mongo.kill();
    app.start_api().await;
    let edge = Edge::start(app);
    let (status, _) = edge.get("/healthz").await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let (status, error) = edge.post("/webhook", "application/json", ETH).await;
    let took = started.elapsed();
    assert_eq!(
        (status, error["error"].as_str()),
        (503, Some("storage_unavailable"))
    );
    assert!(took < Duration::from_secs(1), "503 took {took:?}");
}
