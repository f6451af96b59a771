//! Sources and routes end to end: alerts posted to pyron-api with a source's secret, the
//! worker fanning them out, pyron-forwarder delivering them to real local HTTP servers
//! that behave like the real destinations (`sink`), and every outcome in `deliveries`.

mod sink;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use bson::doc;
use serde_json::{Value, json};

use crate::helpers::{App, Process, wait_until};
use sink::{Behaviour, Sink};

const TV_SECRET: &str = "tv-source-secret-0123";
const BOT_SECRET: &str = "bot-source-secret-4567";
const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BOT_TOKEN: &str = "123456:telegram-bot-token-secret";
const ADMIN: &str = "routes-admin-0123456789";

/// A string field of a record.
fn field<'a>(record: &'a bson::Document, key: &str) -> &'a str {
    record
        .get_str(key)
        .unwrap_or_else(|_| panic!("{key} in {record}"))
}

/// Writes a secret file in the test's directory.
fn secret(app: &App, name: &str, value: &str) -> PathBuf {
    let path = app.dir().join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

/// Stores, the configuration file (`toml` plus the two sources), pyron-api, a worker and
/// a forwarder.
async fn start(toml: impl FnOnce(&App) -> String) -> (App, Process) {
    // A stable consumer name: a worker started again takes back its own pending jobs.
    let mut app = App::stores_only(&[
        ("PYRON_ADMIN_TOKEN", ADMIN),
        ("PYRON_WORKER_CONSUMER", "routes-worker"),
    ]);
    let tv = secret(&app, "tv.secret", TV_SECRET);
    let bot = secret(&app, "bot.secret", BOT_SECRET);
    let config = format!(
        "[[sources]]\nname = \"tradingview\"\nsecret_file = {tv:?}\n\n\
         [[sources]]\nname = \"bot\"\nsecret_file = {bot:?}\nidempotency_field = \"signal_id\"\n\n{}",
        toml(&app)
    );
    let path = app.dir().join("pyron.toml");
    std::fs::write(&path, config).unwrap();
    app.env
        .push(("PYRON_CONFIG".into(), path.display().to_string()));
    app.start_api().await;
    app.start_worker();
    let forwarder = app.spawn_forwarder("pyron-forwarder", &[]);
    (app, forwarder)
}

async fn post_json(app: &App, body: Value) -> Value {
    let response = app
        .post("/webhook", "application/json", body.to_string())
        .await;
    let (status, answer) = crate::helpers::json(response).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

/// Posts `body` as `post_json` does; the event id of the answer.
async fn post_for_id(app: &App, body: Value) -> String {
    post_json(app, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Stops Redis and posts `body`, which pyron-api keeps in MongoDB alone; its event id.
async fn kept_while_redis_is_down(app: &mut App, body: Value) -> String {
    app.stores.redis.kill();
    post_for_id(app, body).await
}

/// The event ids of the deliveries the sink took for `ticker`, in the order it took them.
fn sent_for(sink: &Sink, ticker: &str) -> Vec<Value> {
    sink.delivered()
        .iter()
        .map(|r| r.json())
        .filter(|body| body["signal"]["ticker"] == ticker)
        .map(|body| body["event_id"].clone())
        .collect()
}

/// Every one of these event ids reached the sink (at least once).
fn assert_each_arrived(sink: &Sink, ids: &[String]) {
    let seen: std::collections::HashSet<String> = sink
        .delivered()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    for id in ids {
        assert!(seen.contains(id), "{id} never arrived");
    }
}

/// pyron-api's reconciler queued alerts it found where `found` says ("handed over" by
/// pyron-api, or "in audit" by a sweep).
fn assert_reconciled(app: &App, found: &str) {
    let log = app.api_log();
    assert!(
        log.lines()
            .any(|l| l.contains("reconciler queued alerts") && l.contains(found)),
        "{log}"
    );
}

fn alert(secret: &str, ticker: &str, action: &str, price: f64) -> Value {
    json!({"passphrase": secret, "ticker": ticker, "action": action, "price": price,
           "strategy": "Breakout", "interval": "60", "contracts": 0.5})
}

/// Waits until `deliveries` holds `n` records of this status, and answers them.
async fn records(app: &App, filter: bson::Document, n: usize) -> Vec<bson::Document> {
    let mut found = Vec::new();
    wait_until(&format!("{n} deliveries matching {filter}"), async || {
        found = app.docs("deliveries", filter.clone()).await;
        found.len() >= n
    })
    .await;
    found
}

/// `GET path` with the admin token, which must answer 200.
async fn admin_get(app: &App, path: &str) -> reqwest::Response {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response
}

/// Runs `pyron-forwarder <args>`, which must succeed; answers what it printed.
fn forwarder_command(app: &App, args: &[&str]) -> String {
    let out = app.command("pyron-forwarder").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pyron-forwarder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks a signed request with the `standardwebhooks` package from PyPI.
fn verify_with_standardwebhooks(secret: &str, request: &sink::Received) {
    let python = std::env::var_os("PYRON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python")
        });
    let headers = json!({
        "webhook-id": request.header("webhook-id").unwrap(),
        "webhook-timestamp": request.header("webhook-timestamp").unwrap(),
        "webhook-signature": request.header("webhook-signature").unwrap(),
    });
    let script = "import json, sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), json.loads(sys.argv[2]))\n\
        print('verified')\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script, secret, &headers.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} not runnable ({e}): scripts/install-deps.sh installs standardwebhooks into .tools/venv",
                python.display()
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "standardwebhooks refused the signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_strategy_alert_reaches_a_signed_endpoint_telegram_discord_and_slack() {
    let _load = crate::helpers::beside_others().await;
    let sink = Sink::start().await;
    let (app, forwarder) = start(|app| {
        let signing = secret(app, "bridge.secret", SIGNING);
        let bot = secret(app, "telegram.secret", BOT_TOKEN);
        let discord = secret(app, "discord.secret", &sink.url("/api/webhooks/42/discord-secret-token"));
        let slack = secret(app, "slack.secret", &sink.url("/services/T0/B0/slack-secret-token"));
        format!(
            "[destinations.bridge]\nkind = \"http\"\nurl = {:?}\nsecret_file = {signing:?}\nheaders = {{ \"X-Account\" = \"acct-7\" }}\n\n\
             [destinations.chat]\nkind = \"telegram\"\nchat_id = \"-1001234\"\nbase_url = {:?}\nsecret_file = {bot:?}\n\n\
             [destinations.team]\nkind = \"discord\"\nsecret_file = {discord:?}\n\n\
             [destinations.desk]\nkind = \"slack\"\nsecret_file = {slack:?}\n\n\
             [[routes]]\nname = \"orders\"\nsources = [\"tradingview\"]\ntickers = [\"BTC*\"]\nactions = [\"buy\", \"sell\"]\ndestinations = [\"bridge\"]\n\n\
             [[routes]]\nname = \"chat\"\ndestinations = [\"chat\", \"team\", \"desk\"]\n",
            sink.url("/orders"),
            sink.url(""),
        )
    })
    .await;

    let id = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "buy", 96412.5)).await;
    let delivered = records(&app, doc! { "event": &id, "status": "delivered" }, 4).await;
    assert_eq!(delivered.len(), 4, "{delivered:?}");

    let received = sink.received();
    let at = |prefix: &str| {
        received
            .iter()
            .find(|r| r.path.starts_with(prefix))
            .unwrap_or_else(|| panic!("nothing at {prefix}: {received:?}"))
            .clone()
    };
    // The signed endpoint: the signal as JSON, Standard Webhooks headers, its own header.
    let order = at("/orders");
    assert_eq!(order.header("content-type"), Some("application/json"));
    assert_eq!(order.header("x-account"), Some("acct-7"));
    assert_eq!(
        order.header("webhook-id"),
        Some(format!("{id}:orders:bridge").as_str())
    );
    let body = order.json();
    assert_eq!(body["event_id"], id.as_str());
    assert_eq!(body["source"], "tradingview");
    assert_eq!(body["route"], "orders");
    assert_eq!(body["signal"]["ticker"], "BTCUSDT");
    assert_eq!(body["signal"]["action"], "buy");
    assert_eq!(body["signal"]["price"], 96412.5);
    assert_eq!(body["signal"]["quantity"], 0.5);
    assert!(body["signal"].get("passphrase").is_none());
    verify_with_standardwebhooks(SIGNING, &order);

    // Telegram Bot API sendMessage: POST /bot<token>/sendMessage, JSON chat_id and text.
    let telegram = at("/bot");
    assert_eq!(telegram.path, format!("/bot{BOT_TOKEN}/sendMessage"));
    let message = telegram.json();
    assert_eq!(message["chat_id"], "-1001234");
    let text = message["text"].as_str().unwrap();
    assert!(text.starts_with("BUY BTCUSDT @ 96412.5"), "{text}");
    assert!(text.len() <= 4096);
    // Discord execute-webhook: JSON content (at most 2,000 characters), no mentions.
    let discord = at("/api/webhooks/42/");
    assert_eq!(discord.json()["content"].as_str().unwrap(), text);
    assert_eq!(discord.json()["allowed_mentions"], json!({"parse": []}));
    // Slack incoming webhook: JSON text.
    let slack = at("/services/T0/B0/");
    assert_eq!(slack.json(), json!({"text": text}));

    // The records name the source; the deliveries say what happened.
    // A delivery does not wait for the records: wait for them here.
    let jobs = app.wait_for_docs("jobs", doc! { "_id": &id }, 1).await;
    let audits = app.wait_for_docs("audit", doc! { "_id": &id }, 1).await;
    assert_eq!(field(&audits[0], "source"), "tradingview");
    assert_eq!(jobs.len(), 1);
    for record in &delivered {
        assert_eq!(field(record, "source"), "tradingview");
        assert_eq!(record.get_i64("attempts").unwrap(), 1);
        assert_eq!(record.get_i32("last_code").unwrap(), 200);
        assert!(record.get_i64("latency_ms").unwrap() >= 0);
    }

    // The other source's alert goes only where its routes say: chat, not orders.
    let bot_id = post_for_id(&app, alert(BOT_SECRET, "BTCUSDT", "sell", 96000.0)).await;
    let bot = records(&app, doc! { "event": &bot_id }, 3).await;
    assert!(bot.iter().all(|r| field(r, "route") == "chat"), "{bot:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.docs("deliveries", doc! { "event": &bot_id })
            .await
            .len(),
        3
    );

    // No secret in any log or record.
    let mut everything = app.api_log() + &app.worker_log() + &forwarder.log();
    for collection in ["audit", "jobs", "deliveries"] {
        for record in app.docs(collection, doc! {}).await {
            everything.push_str(&record.to_string());
        }
    }
    for secret in [
        TV_SECRET,
        BOT_SECRET,
        SIGNING,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        BOT_TOKEN,
        "discord-secret-token",
        "slack-secret-token",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} appears in a log or record"
        );
    }
}

#[tokio::test]
async fn the_source_is_told_by_its_secret_and_a_wrong_one_writes_nothing() {
    let _load = crate::helpers::beside_others().await;
    let sink = Sink::start().await;
    let (app, _forwarder) = start(|_| http_route(&sink, "", "")).await;
    // In the path, in the passphrase, and the default source of PYRON_WEBHOOK_TOKEN.
    let by_path = app
        .post(
            &format!("/webhook/{BOT_SECRET}"),
            "application/json",
            r#"{"ticker":"ETHUSDT","action":"buy"}"#,
        )
        .await;
    assert_eq!(by_path.status(), 202);
    let by_default = app
        .post(
            &format!("/webhook/{}", crate::helpers::TOKEN),
            "text/plain",
            "ETHUSDT crossed up",
        )
        .await;
    assert_eq!(by_default.status(), 202);
    for wrong in [
        json!({"passphrase": "tv-source-secret-012", "ticker": "X"}),
        json!({"passphrase": format!("{TV_SECRET}x"), "ticker": "X"}),
    ] {
        let response = app
            .post("/webhook", "application/json", wrong.to_string())
            .await;
        let (status, body) = crate::helpers::json(response).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_secret"))
        );
    }
    let sources = records(&app, doc! { "status": "delivered" }, 2).await;
    let mut names: Vec<&str> = sources.iter().map(|r| field(r, "source")).collect();
    names.sort();
    assert_eq!(names, ["bot", "default"]);
    app.wait_for_docs("audit", doc! {}, 2).await;
    assert_eq!(app.count("audit").await, 2);
    assert_eq!(sink.delivered().len(), 2);

    // TradingView's JSON sent as text (a trailing newline): its passphrase names the source.
    let text = app
        .post(
            "/webhook",
            "text/plain; charset=utf-8",
            format!(
                "{{\"passphrase\":\"{TV_SECRET}\",\"ticker\":\"ADAUSDT\",\"action\":\"buy\"}}\n"
            ),
        )
        .await;
    assert_eq!(text.status(), 202);
    let ada = records(&app, doc! { "ticker": "ADAUSDT", "status": "delivered" }, 1).await;
    assert_eq!(field(&ada[0], "source"), "tradingview");

    // The bot source's own idempotency field: a repeat is a duplicate, delivered once.
    let repeat = json!({"passphrase": BOT_SECRET, "ticker": "SOLUSDT", "action": "sell", "signal_id": "s-1"});
    assert_eq!(post_json(&app, repeat.clone()).await["status"], "queued");
    assert_eq!(post_json(&app, repeat).await["status"], "duplicate");
    records(&app, doc! { "ticker": "SOLUSDT" }, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.docs("deliveries", doc! { "ticker": "SOLUSDT" })
            .await
            .len(),
        1
    );
}

/// A signing secret file shared by tests that do not check signatures.
fn app_secret_dir() -> PathBuf {
    let path = std::env::temp_dir().join(format!("pyron-test-signing-{}", std::process::id()));
    std::fs::write(&path, SIGNING).unwrap();
    path
}

fn http_route(sink: &Sink, extra: &str, route: &str) -> String {
    format!(
        "[destinations.bridge]\nkind = \"http\"\nurl = {:?}\nsecret_file = {:?}\ntimeout_ms = 500\n{extra}\n\n\
         [[routes]]\nname = \"orders\"\ndestinations = [\"bridge\"]\n{route}\n",
        sink.url("/hook"),
        app_secret_dir(),
    )
}

#[tokio::test]
async fn failures_are_retried_in_order_per_ticker_and_a_permanent_refusal_is_dead_at_once() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    // The first BTC delivery meets a 500, a connection closed, a hang past the timeout
    // and a 429 asking for one second; the ETH one and the later BTC one wait or not.
    sink.script([
        Behaviour::status(500),
        Behaviour::Close,
        Behaviour::Hang(Duration::from_secs(2)),
        Behaviour::with(429, &[("Retry-After", "1")], "slow down"),
    ]);
    let (app, _forwarder) =
        start(|_| http_route(&sink, "breaker_failures = 50", "max_age_secs = 60")).await;
    let buy = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "buy", 1.0)).await;
    wait_until("the first attempt", async || !sink.received().is_empty()).await;
    let sell = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "sell", 2.0)).await;
    let delivered = records(&app, doc! { "status": "delivered" }, 2).await;
    let events: Vec<String> = sink
        .delivered()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        [buy.clone(), sell.clone()],
        "the sell overtook the buy being retried"
    );
    let first = delivered.iter().find(|r| field(r, "event") == buy).unwrap();
    assert_eq!(first.get_i64("attempts").unwrap(), 5);
    // Retry-After was honoured: the attempt after the 429 came a second or more later.
    let received = sink.received();
    let gap = received[4].at - received[3].at;
    assert!(
        gap >= Duration::from_millis(950),
        "429 Retry-After: 1 waited only {gap:?}"
    );
    // The same webhook-id on every attempt.
    let ids: std::collections::HashSet<_> = received[..5]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);

    // A 400 is permanent: dead after one attempt, with the answer kept.
    sink.script([Behaviour::with(400, &[], "{\"error\":\"unknown account\"}")]);
    let refused = post_for_id(&app, alert(TV_SECRET, "ETHUSDT", "buy", 3.0)).await;
    let dead = records(&app, doc! { "event": &refused, "status": "dead" }, 1).await;
    assert_eq!(dead[0].get_i64("attempts").unwrap(), 1);
    assert_eq!(dead[0].get_i32("last_code").unwrap(), 400);
    assert!(
        field(&dead[0], "last_error").contains("unknown account"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_delivery_that_cannot_be_made_in_time_expires_and_is_never_sent_late() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    sink.otherwise(Behaviour::status(503));
    let (app, forwarder) =
        start(|_| http_route(&sink, "breaker_failures = 50", "max_age_secs = 2")).await;
    let first = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "buy", 1.0)).await;
    let expired = records(&app, doc! { "event": &first, "status": "expired" }, 1).await;
    assert!(
        field(&expired[0], "last_error").contains("503"),
        "{expired:?}"
    );
    let attempts = sink.received().len();
    assert!(attempts >= 2, "retried before expiring: {attempts}");
    // Nothing was sent after the deadline.
    let deadline = expired[0]
        .get_datetime("deadline")
        .unwrap()
        .timestamp_millis();
    let received_at = expired[0]
        .get_datetime("received_at")
        .unwrap()
        .timestamp_millis();
    assert_eq!(deadline - received_at, 2000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.received().len(),
        attempts,
        "a request went out after expiry"
    );

    // A hanging destination: the lane's next delivery waits behind the first, and both
    // expire; no request for either leaves after its deadline.
    sink.otherwise(Behaviour::Hang(Duration::from_secs(3)));
    let stuck = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "buy", 2.0)).await;
    let behind = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "sell", 3.0)).await;
    let mut ended = records(&app, doc! { "event": &stuck, "status": "expired" }, 1).await;
    ended.extend(records(&app, doc! { "event": &behind, "status": "expired" }, 1).await);
    for record in &ended {
        let deadline = record.get_datetime("deadline").unwrap().to_chrono();
        let id = field(record, "_id");
        for request in sink
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id))
        {
            assert!(
                request.wall <= deadline,
                "{id} sent at {} after its deadline {deadline}",
                request.wall
            );
        }
    }

    // Expired deliveries are in the dead letters, and a replay "as it was" sends one now.
    sink.otherwise(Behaviour::status(200));
    let listed = forwarder_command(&app, &["dead-letters"]);
    assert!(
        listed.contains(&format!("{first}:orders:bridge"))
            && listed.contains("\"status\":\"expired\""),
        "{listed}"
    );
    forwarder_command(
        &app,
        &["replay", "--as-it-was", &format!("{first}:orders:bridge")],
    );
    let replayed = records(&app, doc! { "event": &first, "status": "delivered" }, 1).await;
    assert_eq!(field(&replayed[0], "replay"), "as-it-was");
    // "now": re-checked against the routes, with a new deadline from the replay.
    forwarder_command(
        &app,
        &["replay", "--now", &format!("{stuck}:orders:bridge")],
    );
    let replayed = records(&app, doc! { "event": &stuck, "status": "delivered" }, 1).await;
    assert_eq!(field(&replayed[0], "replay"), "now");
    assert!(!forwarder.log().contains("tv-source-secret"));
}

#[tokio::test]
async fn the_breaker_opens_on_failures_probes_and_closes_and_the_rate_limit_spaces_sends() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    sink.otherwise(Behaviour::status(502));
    let (app, _forwarder) = start(|_| {
        http_route(
            &sink,
            "breaker_failures = 3\nbreaker_cooldown_ms = 1500\nrate_per_second = 5",
            "max_age_secs = 60",
        )
    })
    .await;
    // Three tickers, three lanes, one destination: three failures open the breaker.
    for ticker in ["AAAUSDT", "BBBUSDT", "CCCUSDT"] {
        post_json(&app, alert(TV_SECRET, ticker, "buy", 1.0)).await;
    }
    let mut redis = app.stores.redis().await;
    wait_until("the breaker to open", async || {
        let state: Option<String> = redis::cmd("HGET")
            .arg("pyron:deliveries:breakers")
            .arg("bridge")
            .query_async(&mut redis)
            .await
            .unwrap();
        state.is_some_and(|s| s.contains("\"open\""))
    })
    .await;
    let opened = Instant::now();
    let before = sink.received().len();
    sink.otherwise(Behaviour::status(200));
    // While open, nothing goes; then one probe, and the breaker closes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        sink.received().len(),
        before,
        "sent while the breaker was open"
    );
    records(&app, doc! { "status": "delivered" }, 3).await;
    let received = sink.received();
    let probe = &received[before];
    assert!(probe.at - opened >= Duration::from_millis(1200));
    let state: String = redis::cmd("HGET")
        .arg("pyron:deliveries:breakers")
        .arg("bridge")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(state.contains("\"closed\""), "{state}");

    // Rate limit: five a second, so ten alerts on ten lanes take about two seconds.
    let start = sink.received().len();
    for i in 0..10 {
        post_json(&app, alert(TV_SECRET, &format!("T{i}USDT"), "buy", 1.0)).await;
    }
    records(&app, doc! { "status": "delivered" }, 13).await;
    let sent: Vec<Instant> = sink.received()[start..].iter().map(|r| r.at).collect();
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    let smallest = gaps.iter().min().unwrap();
    assert!(
        *smallest >= Duration::from_millis(180),
        "sends 1/5 s apart at least: {gaps:?}"
    );
    println!("rate limit 5/s: gaps between sends {gaps:?}");
}

#[tokio::test]
async fn every_delivery_arrives_at_least_once_across_sigkills_of_the_forwarder_and_the_worker() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    let (mut app, mut forwarder) = start(|_| http_route(&sink, "", "max_age_secs = 120")).await;
    const N: usize = 300;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(
            post_for_id(
                &app,
                alert(TV_SECRET, &format!("K{}USDT", i % 7), "buy", i as f64),
            )
            .await,
        );
        if i == N / 3 {
            forwarder.kill();
        }
        if i == N / 2 {
            app.worker.as_mut().unwrap().kill();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _again = app.spawn_forwarder("pyron-forwarder-again", &[]);
    app.worker = Some(app.spawn_worker("pyron-worker-again", &[]));
    let delivered = records(&app, doc! { "status": "delivered" }, N).await;
    assert_eq!(delivered.len(), N);
    // Each delivery was queued once, however often its job was processed.
    let mut redis = app.stores.redis().await;
    let fanned: Vec<String> = redis::cmd("KEYS")
        .arg("pyron:fanout:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(fanned.len(), N);
    assert_each_arrived(&sink, &ids);
    // Within a ticker, in the order received (repeats of a resent one aside).
    let mut last: std::collections::HashMap<String, f64> = Default::default();
    for request in sink.delivered() {
        let body = request.json();
        let ticker = body["signal"]["ticker"].as_str().unwrap().to_owned();
        let price = body["signal"]["price"].as_f64().unwrap();
        let before = last.insert(ticker.clone(), price).unwrap_or(-1.0);
        assert!(
            price >= before
                || sink
                    .delivered()
                    .iter()
                    .filter(|r| r.json()["signal"]["price"] == price)
                    .count()
                    > 1,
            "{ticker}: {price} after {before}"
        );
    }
    assert_eq!(app.redis_state().await.0, 0, "the job stream is drained");
    let left: u64 = redis::cmd("XLEN")
        .arg("webhook-deliveries")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0, "every delivery was acknowledged and deleted");
}

#[tokio::test]
async fn an_unexpanded_placeholder_is_never_sent_as_a_value() {
    let _load = crate::helpers::beside_others().await;
    let sink = Sink::start().await;
    let (app, _forwarder) = start(|_| http_route(&sink, "", "")).await;
    let body = json!({"passphrase": TV_SECRET, "ticker": "{{ticker}}", "action": "buy"});
    let id = post_for_id(&app, body).await;
    let dead = records(&app, doc! { "event": &id, "status": "dead" }, 1).await;
    assert!(
        field(&dead[0], "last_error").contains("{{ticker}} in ticker"),
        "{dead:?}"
    );
    assert!(sink.received().is_empty());
    // The dashboard shows the placeholder as it came, and the delivery's fate.
    app.wait_for_docs("jobs", doc! { "_id": &id }, 1).await;
    app.wait_for_docs("audit", doc! { "_id": &id }, 1).await;
    let events: Value = admin_get(&app, "/api/events?limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events[0]["ticker"], "{{ticker}}", "{events}");
    assert_eq!(events[0]["deliveries"][0]["status"], "dead", "{events}");
}

#[tokio::test]
async fn a_bad_route_configuration_stops_every_process_with_the_key_at_fault() {
    let _load = crate::helpers::beside_others().await;
    let app = App::stores_only(&[]);
    let path = app.dir().join("pyron.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"orders\"\ndestinations = [\"nowhere\"]\n",
    )
    .unwrap();
    for binary in ["pyron-api", "pyron-worker", "pyron-forwarder"] {
        let out = app
            .command(binary)
            .env("PYRON_CONFIG", &path)
            .arg("--check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary}: {err}");
        assert!(
            err.contains("`routes[0].destinations`") && err.contains("nowhere"),
            "{binary}: {err}"
        );
    }
    // A destination without its secret stops the forwarder, which alone reads it.
    std::fs::write(
        &path,
        "[destinations.chat]\nkind = \"telegram\"\nchat_id = \"1\"\n",
    )
    .unwrap();
    let out = app
        .command("pyron-forwarder")
        .env("PYRON_CONFIG", &path)
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("destinations.chat.secret_file") && err.contains("bot token"),
        "{err}"
    );
    let out = app
        .command("pyron-worker")
        .env("PYRON_CONFIG", &path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dashboard finds an alert's deliveries and the latest ones by `_id`, which begins
/// with the event id: pyron-api drops the two indexes earlier versions made on
/// `deliveries` for those lookups, and starts as quietly on a database that never had
/// them, or no `deliveries` at all.
#[tokio::test]
async fn pyron_api_drops_the_deliveries_indexes_earlier_versions_made() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    let names = async |app: &App, collection: &str| -> Vec<String> {
        app.db()
            .await
            .collection::<bson::Document>(collection)
            .list_index_names()
            .await
            .unwrap_or_default()
    };
    let start = async |app: &mut App| -> String {
        app.api = None;
        app.start_api().await;
        let api = app.api.as_ref().unwrap();
        wait_until("the indexes in place", async || {
            api.log().contains("indexes in place")
        })
        .await;
        let log = api.log();
        assert!(!log.contains("indexes not brought up to date"), "{log}");
        log
    };
    let dropped = "dropped an index of deliveries no longer used";

    // No `deliveries` yet.
    let log = start(&mut app).await;
    assert!(!log.contains(dropped), "{log}");
    assert!(names(&app, "audit").await.contains(&"status".to_owned()));

    // An earlier version's indexes.
    app.db()
        .await
        .run_command(doc! { "createIndexes": "deliveries", "indexes": [
            { "key": { "event": 1 }, "name": "event" },
            { "key": { "received_at": -1 }, "name": "received_at" },
        ] })
        .await
        .unwrap();
    let log = start(&mut app).await;
    assert_eq!(log.matches(dropped).count(), 2, "{log}");
    assert_eq!(names(&app, "deliveries").await, ["_id_"]);

    // Nothing left to drop.
    let log = start(&mut app).await;
    assert!(!log.contains(dropped), "{log}");
}

#[tokio::test]
async fn the_dashboard_api_and_metrics_show_each_delivery_and_replay_a_dead_one() {
    let _load = crate::helpers::beside_others().await;
    let sink = Sink::start().await;
    sink.script([Behaviour::with(422, &[], "{\"error\":\"unknown symbol\"}")]);
    let (app, _forwarder) = start(|_| http_route(&sink, "", "")).await;
    let refused = post_for_id(&app, alert(TV_SECRET, "XAUUSD", "buy", 2412.5)).await;
    let delivered = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "sell", 96000.0)).await;
    records(&app, doc! { "event": &refused, "status": "dead" }, 1).await;
    records(&app, doc! { "event": &delivered, "status": "delivered" }, 1).await;
    let get = async |path: &str| -> Value { admin_get(&app, path).await.json().await.unwrap() };

    // Each alert's row says what became of its deliveries.
    // Deliveries go before the records are written: wait for both alerts' records.
    app.wait_for_docs("jobs", doc! {}, 2).await;
    app.wait_for_docs("audit", doc! {}, 2).await;
    let events = get("/api/events?limit=10").await;
    let fate = |id: &str| {
        let row = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()
            .clone();
        (
            row["source"].clone(),
            row["deliveries"][0]["status"].clone(),
            row["deliveries"][0]["destination"].clone(),
        )
    };
    assert_eq!(
        fate(&refused),
        (json!("tradingview"), json!("dead"), json!("bridge"))
    );
    assert_eq!(
        fate(&delivered),
        (json!("tradingview"), json!("delivered"), json!("bridge"))
    );
    let detail = get(&format!("/api/events/{refused}")).await;
    assert_eq!(detail["deliveries"][0]["last_code"], 422);
    assert_eq!(detail["job"]["source"], "tradingview");

    // The latest deliveries, newest alert first, and the failing ones; the dead letters.
    let latest = get("/api/deliveries?limit=10").await;
    let order: Vec<&str> = latest
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(order, [delivered.as_str(), refused.as_str()], "{latest}");
    let failing = get("/api/deliveries?failing=true").await;
    assert_eq!(failing.as_array().unwrap().len(), 1, "{failing}");
    assert!(
        failing[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown symbol")
    );
    let dead = get("/api/deliveries/dead").await;
    let dead_id = format!("{refused}:orders:bridge");
    assert_eq!(dead[0]["id"], dead_id.as_str());
    assert_eq!(dead[0]["status"], "dead");

    // Counts, attempts, breaker and latency in /metrics.
    let metrics = admin_get(&app, "/metrics").await.text().await.unwrap();
    for line in [
        "pyron_deliveries_total{destination=\"bridge\",status=\"delivered\"} 1",
        "pyron_deliveries_total{destination=\"bridge\",status=\"dead\"} 1",
        "pyron_delivery_attempts_total{destination=\"bridge\"} 2",
        "pyron_delivery_latency_seconds_count 1",
        "pyron_delivery_dead_letters 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }

    // The page lists the destination and the dead delivery with its two replays.
    let page = admin_get(&app, "/").await.text().await.unwrap();
    assert!(
        page.contains("Deliveries per destination")
            && page.contains(&format!("data-redeliver=\"{dead_id}\"")),
        "{page}"
    );

    // Replay "as it was" through the API: delivered now.
    let replay = async |mode: &str| {
        app.http
            .post(app.url("/api/deliveries/replay"))
            .bearer_auth(ADMIN)
            .json(&json!({"ids": [dead_id], "mode": mode}))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(replay("later").await.status(), 400);
    let replay = replay("as-it-was").await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.json::<Value>().await.unwrap()["replayed"], 1);
    let replayed = records(&app, doc! { "event": &refused, "status": "delivered" }, 1).await;
    assert_eq!(field(&replayed[0], "replay"), "as-it-was");
    assert_eq!(
        get("/api/deliveries/dead").await.as_array().unwrap().len(),
        0
    );
}

/// A CA of the test's own and client certificates: `<file>.pem` (certificate and key)
/// for each common name, signed by the CA, and `stranger.pem`, self-signed.
fn client_certificates(dir: &std::path::Path, names: &[(&str, &str)]) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "openssl {args:?}: {err}");
    };
    // An EC key and a request (or, `self_signed`, a certificate) for `subject`.
    let new_key = |file: &str, subject: &str, self_signed: bool| {
        let (key, out) = (format!("{file}.key"), format!("{file}.crt"));
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ];
        args.extend(["-nodes", "-subj", subject, "-keyout", &key]);
        if self_signed {
            args.extend(["-x509", "-days", "2", "-out", &out]);
            openssl(&args);
        } else {
            let csr = format!("{file}.csr");
            args.extend(["-out", &csr]);
            openssl(&args);
        }
    };
    // Certificate and key in one file, as reqwest's identity takes them.
    let bundle = |file: &str| {
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{file}.{ext}"))).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), read("crt") + &read("key")).unwrap();
    };
    new_key("ca", "/CN=Pyron test client CA", true);
    // Extensions make a version 3 certificate, the only kind rustls takes.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (file, cn) in names {
        new_key(file, &format!("/CN={cn}/O=Test"), false);
        let (csr, crt) = (format!("{file}.csr"), format!("{file}.crt"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "client.ext",
            "-days",
            "2",
            "-out",
            &crt,
        ]);
        bundle(file);
    }
    new_key("stranger", "/CN=TradingView Webhooks", true);
    bundle("stranger");
}

#[tokio::test]
async fn a_source_can_require_the_client_certificate_nginx_verified() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    let tv = secret(&app, "tv.secret", TV_SECRET);
    let path = app.dir().join("pyron.toml");
    std::fs::write(&path, format!(
        "[[sources]]\nname = \"tradingview\"\nsecret_file = {tv:?}\nclient_certificate = \"TradingView Webhooks\"\n"
    )).unwrap();
    app.env
        .push(("PYRON_CONFIG".into(), path.display().to_string()));
    app.start_api().await;
    app.start_worker();
    let dir = app.dir().to_owned();
    client_certificates(
        &dir,
        &[
            ("tradingview", "TradingView Webhooks"),
            ("other", "Somebody Else"),
        ],
    );
    let extra = format!(
        "\nssl_verify_client optional;\nssl_client_certificate {};\n",
        dir.join("ca.crt").display()
    );
    let nginx = app.behind_nginx(&[("SERVER_EXTRA", &extra)]);
    let url = format!("https://localhost:{}/webhook", nginx.https_port);
    let server_cert = reqwest::Certificate::from_pem(&std::fs::read(&nginx.cert).unwrap()).unwrap();
    let client = |identity: Option<&str>| {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(server_cert.clone())
            .resolve(
                "localhost",
                format!("127.0.0.1:{}", nginx.https_port).parse().unwrap(),
            );
        if let Some(file) = identity {
            let pem = std::fs::read(dir.join(file)).unwrap();
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    };
    let body = json!({"passphrase": TV_SECRET, "ticker": "BTCUSDT", "action": "buy"}).to_string();
    let send = async |client: reqwest::Client, forged: bool| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if forged {
            request = request
                .header("X-Client-Verify", "SUCCESS")
                .header("X-Client-Subject", "CN=TradingView Webhooks");
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        (status, answer["error"].as_str().unwrap_or("").to_owned())
    };
    // TradingView's certificate, from the CA NGINX trusts: accepted.
    assert_eq!(
        send(client(Some("tradingview.pem")), false).await,
        (202, String::new())
    );
    // No certificate, another name, or the right name not signed by the CA: refused.
    let refused = (403, "client_certificate_required".to_owned());
    assert_eq!(send(client(None), false).await, refused);
    assert_eq!(send(client(Some("other.pem")), false).await, refused);
    let (status, _) = send(client(Some("stranger.pem")), false).await;
    assert!(
        status == 403 || status == 400,
        "an unverified certificate was accepted: {status}"
    );
    // Headers a sender writes itself are replaced by NGINX's.
    assert_eq!(send(client(None), true).await, refused);
    // The default source asks for no certificate.
    let response = client(None)
        .post(format!("{url}/{}", crate::helpers::TOKEN))
        .header("content-type", "text/plain")
        .body("ETHUSDT crossed up")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Audit records are written off the request path: wait for both, then no more.
    let audits = app.wait_for_docs("audit", doc! {}, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("audit").await, 2);
    let sources: Vec<String> = audits
        .iter()
        .map(|d| field(d, "source").to_owned())
        .collect();
    assert!(
        sources.contains(&"tradingview".to_owned()) && sources.contains(&"default".to_owned()),
        "{sources:?}"
    );
}

#[tokio::test]
async fn an_older_signal_queued_late_is_not_sent_after_a_newer_one() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    let (mut app, _forwarder) = start(|_| http_route(&sink, "", "max_age_secs = 60")).await;
    // Redis down: the buy is kept in MongoDB alone. The pyron-api that kept it is killed
    // before Redis is back, so no reconciler was handed it: the next pyron-api's sweep
    // finds it, and leaves it for its grace (5 s, for requests that may yet end 503).
    let buy = kept_while_redis_is_down(&mut app, alert(TV_SECRET, "BTCUSDT", "buy", 1.0)).await;
    app.api.as_mut().unwrap().kill();
    app.stores.start_redis_again();
    app.start_api().await;
    // pyron-api skips Redis for a second after a failure: probe (another ticker, another
    // lane) until an alert goes to the queue again, well within the reconciler's grace.
    wait_until("pyron-api to queue in Redis again", async || {
        let id = post_for_id(&app, alert(TV_SECRET, "PROBEUSDT", "buy", 0.0)).await;
        app.api_log()
            .lines()
            .any(|l| l.contains(&id) && l.contains("queued") && !l.contains("unqueued"))
    })
    .await;
    // The sell, received after the buy, is queued at once and delivered first.
    let sell = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "sell", 2.0)).await;
    records(&app, doc! { "event": &sell, "status": "delivered" }, 1).await;
    // The buy, queued by the reconciler's sweep seconds later, is never sent after it.
    let late = records(&app, doc! { "event": &buy, "status": "expired" }, 1).await;
    assert!(
        field(&late[0], "last_error").contains("was delivered first"),
        "{late:?}"
    );
    assert_reconciled(&app, "in audit");
    assert_eq!(sent_for(&sink, "BTCUSDT"), [json!(sell)]);
}

#[tokio::test]
async fn a_signal_kept_while_redis_was_down_is_sent_before_the_next_once_it_is_back() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    let (mut app, _forwarder) = start(|_| http_route(&sink, "", "max_age_secs = 60")).await;
    // Redis down: the buy is kept in MongoDB alone and handed to the reconciler, which
    // queues it as soon as Redis takes it again (no sweep, no grace to wait out).
    let buy = kept_while_redis_is_down(&mut app, alert(TV_SECRET, "BTCUSDT", "buy", 1.0)).await;
    // pyron-api skips Redis for a second after it failed. Past that second, with Redis
    // back, the sell would reach the stream before the buy the reconciler is still to
    // queue (it tries again within a second), and the buy would expire unsent: the sell
    // waits for the reconciler to queue the buy first (or, should that take too long,
    // follows it into MongoDB).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.stores.start_redis_again();
    let sell = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "sell", 2.0)).await;
    records(&app, doc! { "event": &sell, "status": "delivered" }, 1).await;
    records(&app, doc! { "event": &buy, "status": "delivered" }, 1).await;
    assert_eq!(sent_for(&sink, "BTCUSDT"), [json!(buy), json!(sell)]);
    assert_reconciled(&app, "handed over");
    for id in [&buy, &sell] {
        app.wait_for_docs("audit", doc! { "_id": id, "status": "queued" }, 1)
            .await;
    }
    // Once nothing is owed, alerts go to the stream directly again.
    let next = post_for_id(&app, alert(TV_SECRET, "BTCUSDT", "buy", 3.0)).await;
    records(&app, doc! { "event": &next, "status": "delivered" }, 1).await;
    let log = app.api_log();
    assert!(
        !log.lines()
            .any(|l| l.contains(&next) && l.contains("waits in MongoDB")),
        "{log}"
    );
}

/// Redis hung for 800 ms mid-burst (what an fsync on a slow disk does with `appendfsync
/// always`): the alerts of that stretch are kept in MongoDB alone and answered 202, and
/// every one is delivered, in the order received per ticker. Before the hand-off counted
/// what it owed the stream, newer alerts reached it first once pyron-api's breaker closed,
/// and the kept ones then expired by the order rule (1,660 of them in a benchmark run).
/// Before alerts took turns for the stream, one that waited for the kept ones to be
/// queued could be overtaken by one that arrived just as the wait ended (4 runs in 40).
#[tokio::test]
async fn signals_sent_through_a_redis_stall_all_arrive_in_order_per_ticker() {
    use futures_util::StreamExt;
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    let (app, _forwarder) = start(|_| http_route(&sink, "", "max_age_secs = 120")).await;
    const N: usize = 1500;
    const TICKERS: usize = 5;
    const STALL_MS: u64 = 800;
    let sending = futures_util::stream::iter(0..N)
        .map(|i| {
            let app = &app;
            async move {
                let body = alert(TV_SECRET, &format!("S{}USDT", i % TICKERS), "buy", i as f64);
                post_for_id(app, body).await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<String>>();
    let (ids, ()) = tokio::join!(sending, stall_redis(&app, 300, STALL_MS));
    assert_all_delivered_in_order(&app, &sink, &ids).await;
}

/// Senders that do not wait for one another (as TradingView's alerts come), one ticker,
/// and Redis hung for 600 ms: longer than its share of the budget (400 ms), so the
/// requests of the stall's first 200 ms give up on Redis and keep their alerts in MongoDB
/// alone, and shorter than twice it, so the jobs of the next 200 ms (more than one
/// pipeline's worth: an alert every 1.2 ms) still have time left when Redis comes back.
/// When each job carried its own deadline, those went into the stream first and the kept
/// ones expired by the order rule (67-69 of 500 at one every 3 ms); with one deadline per
/// pipeline but none across pipelines, 257-264 of 1,000; with the later jobs refused but
/// the reconciler not waiting for them, they were queued after alerts kept once the
/// breaker had opened, which are newer (131 of 500).
#[tokio::test]
async fn signals_sent_without_waiting_through_a_redis_stall_arrive_in_order() {
    let _alone = crate::helpers::alone().await;
    let sink = Sink::start().await;
    let (app, _forwarder) = start(|_| http_route(&sink, "", "max_age_secs = 120")).await;
    const N: u64 = 1000;
    const EVERY_US: u64 = 1200;
    let sending = futures_util::future::join_all((0..N).map(|i| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_micros(i * EVERY_US)).await;
            let body = alert(TV_SECRET, "BTCUSDT", "buy", i as f64);
            post_for_id(app, body).await
        }
    }));
    let (ids, ()) = tokio::join!(sending, stall_redis(&app, 300, 600));
    assert_all_delivered_in_order(&app, &sink, &ids).await;
}

/// Stops Redis (SIGSTOP) `after_ms` from now, for `stall_ms`.
async fn stall_redis(app: &App, after_ms: u64, stall_ms: u64) {
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    app.stores.redis.signal("STOP");
    let stopped = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(stall_ms)).await;
    app.stores.redis.signal("CONT");
    println!(
        "redis stall: stopped {stopped}, continued {}",
        chrono::Utc::now()
    );
}

/// After a burst through a Redis stall: some alerts were kept in MongoDB alone (else the
/// stall came too late to test anything), and every one of `ids` was delivered, none
/// expired, each ticker's in the order pyron-api received them (to the millisecond, as
/// the order rule compares them).
async fn assert_all_delivered_in_order(app: &App, sink: &Sink, ids: &[String]) {
    let kept = app
        .api_log()
        .matches("it waits in MongoDB for the queue")
        .count();
    println!(
        "redis stall: {kept} of {} alerts kept in MongoDB alone",
        ids.len()
    );
    assert!(
        kept > 0,
        "no alert met the stall: it came too late to test anything"
    );
    records(app, doc! { "status": { "$ne": "retrying" } }, ids.len()).await;
    let expired = app
        .docs("deliveries", doc! { "status": { "$ne": "delivered" } })
        .await;
    assert!(
        expired.is_empty(),
        "{} not delivered, e.g. {:?}",
        expired.len(),
        expired.first()
    );
    assert_each_arrived(sink, ids);
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for request in sink.delivered() {
        let body = request.json();
        let ticker = body["signal"]["ticker"].as_str().unwrap().to_owned();
        let received = body["received_at"].as_str().unwrap().to_owned();
        if let Some(before) = last.insert(ticker.clone(), received.clone()) {
            assert!(
                received >= before,
                "{ticker}: received {received} sent after {before}"
            );
        }
    }
}
