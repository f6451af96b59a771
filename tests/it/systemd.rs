//! The binaries as systemd services: sd_notify readiness, status, watchdog and stopping
//! over a datagram socket this test owns (as systemd would); socket activation through
//! systemd's own `systemd-socket-activate`; journald logging into a real
//! `systemd-journald`; secrets from a credentials directory.

use std::{
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{App, PATIENCE, Process, TOKEN};
use bson::doc;
use serde_json::Value;

/// The datagrams a service sent to its `$NOTIFY_SOCKET`, with when they arrived.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<(Instant, String)>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Notifications {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads what arrived, for up to `time`.
    fn collect(&mut self, time: Duration) {
        let until = Instant::now() + time;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    self.seen.push((Instant::now(), line.to_owned()));
                }
            }
        }
    }

    /// Reads until a line satisfies `wanted`, failing after `PATIENCE`.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Instant {
        let deadline = Instant::now() + PATIENCE;
        let mut checked = 0;
        loop {
            if let Some((at, _)) = self.seen[checked..].iter().find(|(_, l)| wanted(l)) {
                return *at;
            }
            checked = self.seen.len();
            assert!(
                Instant::now() < deadline,
                "no {what}; got {:?}",
                self.lines()
            );
            self.collect(Duration::from_millis(100));
        }
    }

    fn lines(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, l)| l.as_str()).collect()
    }

    fn has(&self, line: &str) -> bool {
        self.seen.iter().any(|(_, l)| l == line)
    }
}

/// SIGTERM: the service must say STOPPING=1, then exit cleanly.
fn stop_and_expect_stopping(process: &mut Process, notes: &mut Notifications) {
    let pid = process.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    notes.wait_for("STOPPING=1", |l| l == "STOPPING=1");
    let status = process.terminate();
    assert!(status.success(), "{} exited with {status}", process.name);
}

/// Watchdog pings after `from`, and the gaps between them.
fn pings_after(notes: &Notifications, from: Instant) -> Vec<Duration> {
    let times: Vec<Instant> = notes
        .seen
        .iter()
        .filter(|(at, l)| *at >= from && l == "WATCHDOG=1")
        .map(|(at, _)| *at)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_watchdog_period(gaps: &[Duration], half: Duration) {
    assert!(gaps.len() >= 5, "too few watchdog pings: {gaps:?}");
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean > half.mul_f64(0.7) && mean < half.mul_f64(1.5),
        "pings every {mean:?} on average, expected about {half:?}: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyron_api_is_ready_once_a_store_answers_pings_the_watchdog_and_says_stopping() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    app.stores.redis.kill();
    app.stores.mongo.kill();
    let mut notes = Notifications::bind(app.stores.dir.path());
    let socket = notes.path.to_str().unwrap().to_owned();
    let mut api = app.spawn(
        "pyron-api",
        "pyron-api",
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );

    // Both stores are down: the api says why it waits, and is not ready (it cannot
    // acknowledge an alert), though it answers at once.
    notes.wait_for("a waiting status", |l| {
        l.starts_with("STATUS=waiting for Redis")
    });
    notes.wait_for("a waiting status", |l| {
        l.starts_with("STATUS=waiting for MongoDB")
    });
    notes.collect(Duration::from_secs(1));
    assert!(!notes.has("READY=1"), "READY before any store answered");
    let alive = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);

    // One store is enough to acknowledge alerts: ready, and the status line says which
    // store it still waits for.
    app.stores.start_redis_again();
    let ready = notes.wait_for("READY=1", |l| l == "READY=1");
    let status = notes.wait_for("a status line", |l| {
        l.starts_with("STATUS=queue ok; 0 accepted") && l.ends_with("; MongoDB not reached yet")
    });
    assert!(status >= ready);
    app.stores.start_mongo_again();

    // An alert shows in the status line, refreshed every two seconds.
    let response = app
        .post(&format!("/webhook/{TOKEN}"), "text/plain", "status check")
        .await;
    assert_eq!(response.status(), 202);
    notes.wait_for("the alert in the status line", |l| {
        l.starts_with("STATUS=queue ok; 1 accepted")
    });
    notes.collect(Duration::from_millis(1500));
    assert_watchdog_period(&pings_after(&notes, ready), Duration::from_millis(200));

    stop_and_expect_stopping(&mut api, &mut notes);
    let lines = notes.lines();
    let stopping = lines.iter().position(|l| *l == "STOPPING=1").unwrap();
    assert!(
        lines[stopping..].iter().all(|l| *l != "READY=1"),
        "{lines:?}"
    );
    eprintln!(
        "systemd: pyron-api status lines: {:?}",
        lines
            .iter()
            .filter(|l| l.starts_with("STATUS="))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyron_worker_is_ready_only_with_its_stores_and_reports_its_work() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    app.start_api().await;
    app.stores.mongo.kill();
    let mut notes = Notifications::bind(app.stores.dir.path());
    let socket = notes.path.to_str().unwrap().to_owned();
    let mut worker = app.spawn(
        "pyron-worker",
        "pyron-worker",
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "600000"),
            ("PYRON_WORKER_CONSUMER", "notified"),
        ],
    );
    notes.wait_for("a waiting status", |l| {
        l.starts_with("STATUS=waiting for MongoDB")
    });
    notes.collect(Duration::from_secs(1));
    assert!(!notes.has("READY=1"), "READY before MongoDB answered");

    app.stores.start_mongo_again();
    let ready = notes.wait_for("READY=1", |l| l == "READY=1");
    for i in 0..3 {
        let response = app
            .post(
                &format!("/webhook/{TOKEN}"),
                "text/plain",
                format!("job {i}"),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    let status = notes.wait_for("three processed in the status line", |l| {
        l.starts_with("STATUS=3 processed, 0 retrying, 0 dead")
    });
    let line = notes
        .seen
        .iter()
        .find(|(at, _)| *at == status)
        .map(|(_, l)| l.clone())
        .unwrap();
    assert!(
        line.contains("queue: 0 waiting, 0 pending; consumer notified"),
        "{line}"
    );
    eprintln!("systemd: pyron-worker {line}");
    notes.collect(Duration::from_millis(2000));
    assert_watchdog_period(&pings_after(&notes, ready), Duration::from_millis(300));

    stop_and_expect_stopping(&mut worker, &mut notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_socket_nothing_is_sent_and_nothing_breaks() {
    let _load = crate::helpers::beside_others().await;
    // The same binaries with systemd's variables half-set (no NOTIFY_SOCKET; a watchdog
    // meant for another process) run as usual.
    let app = App::start_with(&[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")]).await;
    let response = app
        .post(&format!("/webhook/{TOKEN}"), "text/plain", "plain run")
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.wait_for_docs("jobs", doc! {}, 1).await.len(), 1);
    assert!(!app.api_log().contains("cannot notify systemd"));
    assert!(!app.api_log().contains("watchdog enabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyron_api_serves_the_unix_socket_systemd_passes() {
    let _load = crate::helpers::beside_others().await;
    let app = App::stores_only(&[]);
    let socket = app.stores.dir.path().join("activated.sock");
    let log = app.stores.dir.path().join("activate.log");
    let file = std::fs::File::create(&log).unwrap();
    // systemd-socket-activate passes its environment only as told: name each variable.
    // PYRON_BIND is a TCP port there: the passed socket must win over it.
    let api = app.command("pyron-api");
    let mut command = Command::new("systemd-socket-activate");
    command
        .env_clear()
        .envs(api.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .arg("-l")
        .arg(&socket);
    for (key, _) in api.get_envs() {
        command.arg(format!("-E{}", key.to_str().unwrap()));
    }
    let child = command
        .arg(api.get_program())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    let mut activate = Process {
        name: "systemd-socket-activate".into(),
        child,
        log,
    };
    let deadline = Instant::now() + PATIENCE;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket: {}", activate.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts pyron-api, which answers it.
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(&socket)
        .args([
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "activated",
        ])
        .arg(format!("http://localhost/webhook/{TOKEN}"))
        .output()
        .unwrap();
    let ack: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{output:?}\n{}", activate.log()));
    assert_eq!(ack["status"], "queued", "{ack}");
    assert!(
        activate.log().contains("from systemd"),
        "{}",
        activate.log()
    );
    let port = app.port;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "pyron-api also bound PYRON_BIND"
    );
    let status = activate.terminate();
    assert!(status.success(), "{status}");
}

/// A `systemd-journald` to log into: the system's, or one this test starts.
fn journald(dir: &Path) -> Option<Process> {
    let socket = Path::new("/run/systemd/journal/socket");
    if socket.exists() && UnixDatagram::unbound().unwrap().connect(socket).is_ok() {
        return None;
    }
    std::fs::create_dir_all("/run/systemd/journal")
        .expect("a journald socket needs /run/systemd/journal (run the tests as root)");
    let log = dir.join("journald.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new("/lib/systemd/systemd-journald")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("systemd-journald (Debian package systemd)");
    let process = Process {
        name: "systemd-journald".into(),
        child,
        log,
    };
    let deadline = Instant::now() + PATIENCE;
    while UnixDatagram::unbound().unwrap().connect(socket).is_err() {
        assert!(Instant::now() < deadline, "journald did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(process)
}

/// The journal entries of one process, as JSON.
fn journal(pid: u32) -> Vec<Value> {
    let output = Command::new("journalctl")
        .args(["--no-pager", "-o", "json", &format!("_PID={pid}")])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for_entry(pid: u32, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let entries = journal(pid);
        if entries.iter().any(&wanted) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "no such entry for pid {pid}: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_logs_go_to_journald_with_an_alerts_fields() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    let _journald = journald(app.stores.dir.path());

    // systemd names the stream it connects to stderr in JOURNAL_STREAM; give each binary
    // a file for stderr and name that.
    let start = |app: &App, binary: &str| {
        let path = app.stores.dir.path().join(format!("{binary}.stderr"));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        let child = app
            .command(binary)
            .env("JOURNAL_STREAM", stream)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Process {
            name: binary.into(),
            child,
            log: path,
        }
    };
    let api = start(&app, "pyron-api");
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", app.port)).is_err() {
        assert!(Instant::now() < deadline, "pyron-api did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = start(&app, "pyron-worker");

    let body =
        format!(r#"{{"passphrase":"{TOKEN}","ticker":"SOLUSDT","action":"buy","price":"oops"}}"#);
    let response = app.post("/webhook", "application/json", body).await;
    assert_eq!(response.status(), 202);
    let dead: Value = response.json().await.unwrap();
    let response = app
        .post(
            &format!("/webhook/{TOKEN}"),
            "application/json",
            r#"{"ticker":"ETHUSDT","action":"sell","price":3100.5}"#,
        )
        .await;
    let ack: Value = response.json().await.unwrap();
    let id = ack["id"].as_str().unwrap().to_owned();
    let wrong = app
        .post("/webhook/not-the-token-at-all", "text/plain", "x")
        .await;
    assert_eq!(wrong.status(), 401);
    app.api = Some(api);
    app.worker = Some(worker);

    let api_pid = app.api.as_ref().unwrap().child.id();
    let worker_pid = app.worker.as_ref().unwrap().child.id();
    let by_id = |e: &Value| e["EVENT_ID"] == id.as_str();
    let api_entries = wait_for_entry(api_pid, by_id);
    let accepted = api_entries.iter().find(|e| by_id(e)).unwrap();
    assert_eq!(accepted["SYSLOG_IDENTIFIER"], "pyron-api");
    assert_eq!(accepted["MESSAGE"], "alert accepted");
    assert_eq!(accepted["STATUS"], "queued");
    assert_eq!(accepted["PRIORITY"], "7", "debug, in pyron::alerts");
    let refused = wait_for_entry(api_pid, |e| e["CODE"] == "invalid_secret");
    assert!(refused.iter().any(|e| e["MESSAGE"] == "alert rejected"));

    let worker_entries = wait_for_entry(worker_pid, by_id);
    let processed = worker_entries.iter().find(|e| by_id(e)).unwrap();
    assert_eq!(processed["SYSLOG_IDENTIFIER"], "pyron-worker");
    assert_eq!(processed["STATUS"], "processed");
    assert_eq!(processed["TICKER"], "ETHUSDT");
    assert!(
        processed["LAG_MS"].as_str().unwrap().parse::<i64>().is_ok(),
        "{processed}"
    );
    let dead_id = dead["id"].as_str().unwrap();
    let entries = wait_for_entry(worker_pid, |e| e["EVENT_ID"] == dead_id);
    let dead_entry = entries.iter().find(|e| e["EVENT_ID"] == dead_id).unwrap();
    assert_eq!(dead_entry["STATUS"], "dead");
    assert_eq!(dead_entry["ERROR"], "price is not a number: oops");
    assert_eq!(dead_entry["PRIORITY"], "4", "warning");

    // journalctl finds an alert's story by its id, across both services.
    let output = Command::new("journalctl")
        .args(["--no-pager", "-o", "cat", &format!("EVENT_ID={id}")])
        .output()
        .unwrap();
    let story = String::from_utf8_lossy(&output.stdout);
    assert!(
        story.contains("alert accepted") && story.contains("alert processed"),
        "{story}"
    );

    // Nothing went to stdout or stderr, and the secret is nowhere in the journal.
    for pid in [api_pid, worker_pid] {
        let all = serde_json::to_string(&journal(pid)).unwrap();
        assert!(
            !all.contains(TOKEN),
            "the secret is in the journal of {pid}"
        );
    }
    let stderr = std::fs::read_to_string(&app.api.as_ref().unwrap().log).unwrap();
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(app.docs("jobs", doc! { "_id": &id }).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_systemd_credentials() {
    let _load = crate::helpers::beside_others().await;
    let mut app = App::stores_only(&[]);
    let credentials = app.stores.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("webhook-token"), "from-a-credential\n").unwrap();
    std::fs::write(credentials.join("admin-token"), "admin-from-a-credential").unwrap();
    app.env.retain(|(k, _)| k != "PYRON_WEBHOOK_TOKEN");
    app.env.push((
        "CREDENTIALS_DIRECTORY".into(),
        credentials.to_str().unwrap().into(),
    ));
    app.start_api().await;
    let refused = app
        .post(&format!("/webhook/{TOKEN}"), "text/plain", "old token")
        .await;
    assert_eq!(refused.status(), 401);
    let accepted = app
        .post("/webhook/from-a-credential", "text/plain", "new token")
        .await;
    assert_eq!(accepted.status(), 202);
    let admin = app
        .http
        .get(app.url("/api/dead-letters"))
        .bearer_auth("admin-from-a-credential")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(!app.api_log().contains("from-a-credential"));
}
