//! The dashboard in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) through the real NGINX with TLS: log in, post alerts, watch the counts and
//! the recent-alerts table change without a reload, open an alert, replay a dead letter
//! from the page. And `/metrics`, parsed as Prometheus text, against the alerts sent.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::helpers::{App, PATIENCE, TOKEN};
use bson::doc;
use chromiumoxide::{
    BrowserConfig,
    cdp::{
        browser_protocol::emulation::SetDeviceMetricsOverrideParams,
        js_protocol::runtime::EvaluateParams,
    },
    page::ScreenshotParams,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

const ADMIN: &str = "dashboard-admin-0123456789";

/// A headless Chromium and one page in it, driven over the DevTools protocol
/// (chromiumoxide).
struct Browser {
    browser: chromiumoxide::Browser,
    page: chromiumoxide::Page,
    events: tokio::task::JoinHandle<()>,
}

impl Browser {
    async fn launch(dir: &Path) -> Browser {
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let config = BrowserConfig::builder()
            .chrome_executable(which_chromium())
            .no_sandbox()
            .user_data_dir(&profile)
            .window_size(1280, 1400)
            .viewport(None)
            .launch_timeout(PATIENCE)
            .request_timeout(PATIENCE)
            .args([
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--ignore-certificate-errors",
            ])
            .build()
            .unwrap();
        let (browser, mut handler) = chromiumoxide::Browser::launch(config)
            .await
            .expect("chromium (Debian package chromium; scripts/install-deps.sh installs it)");
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page("about:blank").await.unwrap();
        Browser {
            browser,
            page,
            events,
        }
    }

    /// Evaluates JavaScript in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|err| panic!("{expression}: {err}"))
    }

    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let params = EvaluateParams::builder()
            .expression(expression)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(|e| e.to_string())?;
        let result = self
            .page
            .evaluate(params)
            .await
            .map_err(|e| e.to_string())?;
        Ok(result.value().cloned().unwrap_or(Value::Null))
    }

    async fn goto(&mut self, url: &str) {
        self.page.goto(url).await.unwrap();
        self.wait_until("the page to load", "document.readyState === 'complete'")
            .await;
    }

    /// Waits until `condition` (JavaScript) is true in the page.
    async fn wait_until(&mut self, what: &str, condition: &str) {
        let deadline = Instant::now() + PATIENCE;
        // Mid-navigation the document can be empty (no body yet), or have no context to
        // evaluate in: that is "not yet".
        let guarded = format!(
            "(() => {{ try {{ return ({condition}) === true; }} catch (e) {{ return false; }} }})()"
        );
        while self.try_eval(&guarded).await != Ok(json!(true)) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {:?}",
                self.try_eval("document.body ? document.body.innerText : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let params = ScreenshotParams::builder().full_page(true).build();
        self.page.save_screenshot(params, path).await.unwrap();
    }

    /// Logs in through the form.
    async fn log_in(&mut self, base: &str) {
        self.goto(&format!("{base}/login")).await;
        self.eval(&format!(
            "document.querySelector('#token').value = '{ADMIN}'; document.querySelector('form').submit()"
        ))
        .await;
        self.wait_until(
            "the dashboard",
            "location.pathname === '/' && !!document.querySelector('#events')",
        )
        .await;
    }

    /// Makes the page `width` CSS pixels wide, as a phone (`mobile`) or a desktop window.
    async fn resize(&mut self, width: u32, mobile: bool) {
        let metrics = SetDeviceMetricsOverrideParams::new(i64::from(width), 900, 1.0, mobile);
        self.page.execute(metrics).await.unwrap();
    }

    async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.events.abort();
    }
}

/// Debian's `chromium`, where `PATH` has it.
fn which_chromium() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .expect("chromium (Debian package chromium; scripts/install-deps.sh installs it)")
}

fn count(kind: &str) -> String {
    format!("document.querySelector('[data-count=\"hour.{kind}\"]').textContent")
}

async fn post(client: &reqwest::Client, base: &str, body: Value) -> Value {
    let response = client
        .post(format!("{base}/webhook/{TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_goes_live_in_a_real_browser_and_replays_a_dead_letter() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start_with(&[("PYRON_ADMIN_TOKEN", ADMIN)]).await;
    let nginx = app.behind_nginx(&[]);
    let base = format!("https://localhost:{}", nginx.https_port);
    let mut browser = Browser::launch(app.stores.dir.path()).await;

    // Not logged in: the page sends the browser to the login form.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.eval("location.pathname").await, "/login");
    browser
        .eval("document.querySelector('#token').value = 'wrong-admin-token-000'; document.querySelector('form').submit()")
        .await;
    browser
        .wait_until(
            "the refusal",
            "document.body.innerText.includes('not the admin token')",
        )
        .await;
    browser
        .eval(&format!("document.querySelector('#token').value = '{ADMIN}'; document.querySelector('form').submit()"))
        .await;
    browser
        .wait_until(
            "the dashboard",
            "location.pathname === '/' && !!document.querySelector('#events')",
        )
        .await;
    browser
        .wait_until(
            "the live stream",
            "document.querySelector('#live').classList.contains('on')",
        )
        .await;
    assert_eq!(browser.eval(&count("received")).await, "0");

    // A mark on the page: it survives only if the page is never reloaded.
    browser.eval("window.__noReload = 'still here'").await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (ticker, price) in [("BTCUSDT", json!(67000.5)), ("ETHUSDT", json!(3100.25))] {
        post(
            &client,
            &base,
            json!({"ticker": ticker, "action": "buy", "price": price}),
        )
        .await;
    }
    let broken = post(
        &client,
        &base,
        json!({"ticker": "SOLUSDT", "action": "sell", "price": "{{close}}"}),
    )
    .await;
    let broken_id = broken["id"].as_str().unwrap().to_owned();
    let rejected = client
        .post(format!("{base}/webhook/not-the-token-at-all"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);

    // Received: the three accepted and the one refused.
    browser
        .wait_until("four received", &format!("{} === '4'", count("received")))
        .await;
    browser
        .wait_until(
            "two processed and one dead",
            &format!(
                "{} === '2' && {} === '1'",
                count("processed"),
                count("dead")
            ),
        )
        .await;
    browser
        .wait_until(
            "the rejected one",
            &format!("{} === '1'", count("rejected")),
        )
        .await;
    browser
        .wait_until(
            "the recent alerts",
            "document.querySelectorAll('#events tbody tr').length === 3 && document.querySelector('#events').innerText.includes('ETHUSDT')",
        )
        .await;
    browser
        .wait_until(
            "the dead letter",
            &format!("!!document.querySelector('[data-replay=\"{broken_id}\"]')"),
        )
        .await;
    assert_eq!(
        browser.eval("window.__noReload").await,
        "still here",
        "the page reloaded"
    );
    let table = browser
        .eval("document.querySelector('#events').innerText")
        .await;
    let table = table.as_str().unwrap();
    assert!(
        table.contains("BTCUSDT")
            && table.contains("processed")
            && table.contains("SOLUSDT")
            && table.contains("dead"),
        "{table}"
    );
    let workers = browser
        .eval("document.querySelector('#workers tbody').innerText")
        .await;
    assert!(
        workers.as_str().unwrap().contains(" s ago"),
        "no worker heartbeat: {workers}"
    );

    // The filter narrows the table; a row opens the alert's audit and jobs records.
    browser
        .eval("{ const f = document.querySelector('#filter'); f.value = 'ETH'; f.dispatchEvent(new Event('input')); }")
        .await;
    browser
        .wait_until(
            "the filter",
            "document.querySelectorAll('#events tbody tr').length === 1",
        )
        .await;
    browser
        .eval("document.querySelector('#events tbody tr').click()")
        .await;
    browser
        .wait_until(
            "the alert's records",
            "document.querySelector('#detail-job').textContent.includes('ETHUSDT')",
        )
        .await;
    let audit = browser
        .eval("document.querySelector('#detail-audit').textContent")
        .await;
    assert!(
        audit.as_str().unwrap().contains("\"status\": \"queued\""),
        "{audit}"
    );
    browser
        .eval("{ const f = document.querySelector('#filter'); f.value = ''; f.dispatchEvent(new Event('input')); }")
        .await;

    let screenshot = output_dir().join("dashboard.png");
    browser.screenshot(&screenshot).await;
    eprintln!("dashboard: screenshot saved to {}", screenshot.display());

    // Replay from the page: the job runs again (and, its price still not a number, dies
    // again, with one more attempt).
    browser
        .eval(&format!(
            "document.querySelector('[data-replay=\"{broken_id}\"]').click()"
        ))
        .await;
    browser
        .wait_until(
            "the replay",
            "document.querySelector('#replay-result').textContent === 'replayed 1 dead letter(s)'",
        )
        .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let jobs = app.docs("jobs", doc! { "_id": &broken_id }).await;
        if jobs[0].get_i64("attempts") == Ok(2) && jobs[0].get_str("status") == Ok("dead") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replayed job did not run: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.eval("window.__noReload").await, "still here");
    assert!(nginx.process.log().is_empty() || !nginx.process.log().contains("emerg"));
    browser.close().await;
}

/// Every card whose content spills past its right edge or makes its table scroll
/// sideways, whether the page itself scrolls sideways, and how wide the page is laid out
/// (a phone widens it to fit what overflows).
const OVERFLOW: &str = "JSON.stringify({
    cards: Array.from(document.querySelectorAll('section'))
        .filter((s) => [s, ...s.querySelectorAll('.scroll')].some((e) => e.scrollWidth > e.clientWidth + 1))
        .map((s) => s.querySelector('h2').textContent),
    page: document.documentElement.scrollWidth > window.innerWidth + 1,
    width: window.innerWidth,
})";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_fits_a_phone_and_a_wide_screen_and_says_what_each_alert_is() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start_with(&[("PYRON_ADMIN_TOKEN", ADMIN)]).await;
    let nginx = app.behind_nginx(&[]);
    let base = format!("https://localhost:{}", nginx.https_port);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let send = async |content_type: &str, key: Option<&str>, body: &str| -> Value {
        let mut request = client
            .post(format!("{base}/webhook/{TOKEN}"))
            .header("content-type", content_type)
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    };
    let order = r#"{"ticker":"BTCUSDT","action":"buy","price":"96,412.50"}"#;
    let first = send("application/json", Some("order-1"), order).await;
    let repeat = send("application/json", Some("order-1"), order).await;
    assert_eq!(repeat["status"], "duplicate");
    let first_id = first["id"].as_str().unwrap().to_owned();
    let repeat_id = repeat["id"].as_str().unwrap().to_owned();
    send(
        "text/plain",
        None,
        "ETHUSDT 1h: MACD bullish cross\nclose=3521.8 volume=18233.4",
    )
    .await;
    send(
        "text/plain; charset=utf-8",
        None,
        "{\"ticker\":\"SOLUSDT\",\"action\":\"sell\",\"price\":142.5}\n",
    )
    .await;
    let unreadable = send(
        "application/json",
        None,
        r#"{"ticker":"XAUUSD","action":"buy","price":"2.412,50"}"#,
    )
    .await;
    let unreadable_id = unreadable["id"].as_str().unwrap().to_owned();
    app.wait_for_docs("jobs", doc! {}, 4).await;

    let mut browser = Browser::launch(app.stores.dir.path()).await;
    browser.log_in(&base).await;
    browser
        .wait_until(
            "every alert, with the reason of the dead one",
            "document.querySelectorAll('#events tbody tr').length === 5 && document.querySelector('#events').innerText.includes('decimal comma')",
        )
        .await;
    let row = |id: &str| format!("document.querySelector('#events tr[data-id=\"{id}\"]')");
    // A text alert shows its message where the fields would be.
    let message = browser
        .eval("Array.from(document.querySelectorAll('#events td.message')).map((td) => td.textContent)")
        .await;
    assert_eq!(
        message,
        json!(["ETHUSDT 1h: MACD bullish cross close=3521.8 volume=18233.4"]),
        "only the text without JSON shows as a message, on one line"
    );
    // JSON sent as text reads as JSON; a price with a thousands separator reads.
    let table = browser
        .eval("document.querySelector('#events').innerText")
        .await;
    let table = table.as_str().unwrap();
    assert!(
        table.contains("SOLUSDT") && table.contains("142.5"),
        "{table}"
    );
    assert!(table.contains("96412.5"), "{table}");
    // The dead alert says why, in the row.
    let why = browser
        .eval(&format!(
            "{}.querySelector('.why').textContent",
            row(&unreadable_id)
        ))
        .await;
    assert_eq!(
        why,
        "price uses a decimal comma: 2.412,50; Pyron reads only a decimal point (and commas only as thousands separators before one)"
    );
    // A duplicate links to the alert it repeats, and the link opens that alert.
    let link = browser
        .eval(&format!(
            "{}.querySelector('a.first').dataset.open",
            row(&repeat_id)
        ))
        .await;
    assert_eq!(link, json!(first_id));
    browser
        .eval(&format!(
            "{}.querySelector('a.first').click()",
            row(&repeat_id)
        ))
        .await;
    browser
        .wait_until(
            "the first alert's records",
            &format!("document.querySelector('#detail-id').textContent === '{first_id}' && document.querySelector('#detail-job').textContent.includes('processed')"),
        )
        .await;

    for (width, mobile) in [(390, true), (1400, false)] {
        browser.resize(width, mobile).await;
        // Two frames: the page is laid out again at the new size.
        browser
            .eval("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
            .await;
        let overflow: Value =
            serde_json::from_str(browser.eval(OVERFLOW).await.as_str().unwrap()).unwrap();
        assert_eq!(
            overflow,
            json!({"cards": [], "page": false, "width": width}),
            "at {width} px wide"
        );
        let shot = output_dir().join(format!("dashboard-{width}.png"));
        browser.screenshot(&shot).await;
        eprintln!(
            "dashboard: {width} px screenshot saved to {}",
            shot.display()
        );
    }
    browser.close().await;
}

#[tokio::test]
async fn the_page_shows_current_numbers_without_javascript_and_is_not_public() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start_with(&[("PYRON_ADMIN_TOKEN", ADMIN)]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Without a session: to the login form, and the JSON API says 401.
    let page = http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    for path in [
        "/api/stats",
        "/api/events",
        "/api/stream",
        "/metrics",
        "/api/dead-letters",
    ] {
        let response = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let login = http
        .post(app.url("/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();

    let ack: Value = app
        .post(
            &format!("/webhook/{TOKEN}"),
            "text/plain",
            "BTCUSDT crossing 67000",
        )
        .await
        .json()
        .await
        .unwrap();
    app.wait_for_docs("jobs", doc! { "_id": ack["id"].as_str().unwrap() }, 1)
        .await;
    // The counts are written after the answer: give them a moment.
    let deadline = Instant::now() + PATIENCE;
    let html = loop {
        let html = http
            .get(app.url("/"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counted = html.contains("data-count=\"hour.processed\">1<")
            && html.contains("data-count=\"hour.received\">1<");
        if counted || Instant::now() > deadline {
            break html;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(html.contains("data-count=\"hour.received\">1<"), "{html}");
    assert!(html.contains("data-count=\"hour.processed\">1<"), "{html}");
    assert!(
        html.contains(ack["id"].as_str().unwrap()),
        "the alert is not listed"
    );
    assert!(
        html.contains("<td colspan=\"3\" class=\"message\">BTCUSDT crossing 67000</td>"),
        "a text alert shows the start of its message: {html}"
    );
    assert!(
        !html.contains("<script>"),
        "inline scripts: the assets are served from the binary"
    );

    // The assets come from the binary.
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let response = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    // A state change with the cookie from another origin is refused.
    let cross = http
        .post(app.url("/api/dead-letters/replay"))
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
}

/// A Prometheus sample line's value, by metric name and labels.
fn sample(metrics: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    metrics
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no {name} {label:?}"))
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_was_sent() {
    let _load = crate::helpers::beside_others().await;
    let app = App::start_with(&[("PYRON_ADMIN_TOKEN", ADMIN)]).await;
    let path = format!("/webhook/{TOKEN}");
    let mut ids = Vec::new();
    for i in 0..5 {
        let ack: Value = app
            .post(&path, "text/plain", format!("alert {i}"))
            .await
            .json()
            .await
            .unwrap();
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    for _ in 0..2 {
        let response = app
            .http
            .post(app.url(&path))
            .header("content-type", "text/plain")
            .header("idempotency-key", "same")
            .body("twice")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    for _ in 0..3 {
        let response = app
            .post("/webhook/wrong-token-000", "text/plain", "x")
            .await;
        assert_eq!(response.status(), 401);
    }
    let dead: Value = app
        .post(
            "/webhook",
            "application/json",
            format!(r#"{{"passphrase":"{TOKEN}","price":"x"}}"#),
        )
        .await
        .json()
        .await
        .unwrap();
    app.wait_for_docs("jobs", doc! {}, 7).await;

    let deadline = Instant::now() + PATIENCE;
    let scrape = loop {
        let text = app
            .http
            .get(app.url("/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
        // Both binaries count after the fact (the api after answering, the worker
        // after writing a batch's records), so wait until every expected count is
        // in; the asserts below then check nothing was counted twice.
        let settled = sample(&scrape, "pyron_jobs_total", Some(("status", "processed"))) >= 6.0
            && sample(&scrape, "pyron_jobs_total", Some(("status", "dead"))) >= 1.0
            && sample(&scrape, "pyron_lag_seconds_count", None) >= 6.0
            && sample(&scrape, "pyron_alerts_total", Some(("outcome", "queued"))) >= 7.0
            && sample(
                &scrape,
                "pyron_alerts_total",
                Some(("outcome", "duplicate")),
            ) >= 1.0
            && sample(&scrape, "pyron_alerts_total", Some(("outcome", "rejected"))) >= 3.0
            // Fresh jobs are acknowledged once their audit record's grace is over.
            && sample(&scrape, "pyron_queue_depth", None) == 0.0;
        if settled || Instant::now() > deadline {
            eprintln!("metrics: {} samples", scrape.samples.len());
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let alerts = |outcome| sample(&scrape, "pyron_alerts_total", Some(("outcome", outcome)));
    assert_eq!(
        alerts("queued"),
        7.0,
        "5 text + 1 first of the pair + 1 dead-to-be"
    );
    assert_eq!(alerts("duplicate"), 1.0);
    assert_eq!(alerts("rejected"), 3.0);
    assert_eq!(alerts("unavailable"), 0.0);
    assert_eq!(
        sample(&scrape, "pyron_jobs_total", Some(("status", "processed"))),
        6.0
    );
    assert_eq!(
        sample(&scrape, "pyron_jobs_total", Some(("status", "dead"))),
        1.0
    );
    assert_eq!(
        sample(&scrape, "pyron_ack_duration_seconds_count", None),
        11.0
    );
    assert_eq!(sample(&scrape, "pyron_lag_seconds_count", None), 6.0);
    assert_eq!(sample(&scrape, "pyron_dead_letters", None), 1.0);
    assert_eq!(sample(&scrape, "pyron_queue_depth", None), 0.0);
    assert!(dead["id"].is_string());
}
