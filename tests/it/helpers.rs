//! What every integration test shares: each test gets its own `redis-server`, its own
//! MongoDB wire server (`mongod` when on `PATH`, else the project's FerretDB build), and the
//! real `pyron-api` and `pyron-worker` binaries, all on free loopback ports in a temporary
//! directory that disappears with the test; NGINX with TLS in front when it asks.
//!
//! Tests run side by side, except the fault-injection tests, which drive load at their
//! servers and time their faults: those run `alone()`, every other test `beside_others()`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bson::{Document, doc};
use futures_util::TryStreamExt;
use tempfile::TempDir;

pub const TOKEN: &str = "change-me";

/// Side by side (shared) or alone (exclusive): see `alone` and `beside_others`.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For a test that drives load at its servers and times its faults: no other test runs
/// while it does, so that none starves its processes, or is starved by them.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().await
}

/// For every other test that starts servers: it runs beside others, never beside a test
/// that runs `alone`.
pub async fn beside_others() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().await
}

/// Waits until `check` holds, failing the test after `PATIENCE`.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds the MongoDB wire server to run: `mongod` on `PATH`, else `pyron-ferretdb` as built
/// by `scripts/install-deps.sh` (or named by `PYRON_FERRETDB`).
fn mongo_server() -> (PathBuf, bool) {
    if let Some(mongod) = which("mongod") {
        return (mongod, true);
    }
    let candidates = [
        std::env::var_os("PYRON_FERRETDB").map(PathBuf::from),
        Some(repo_root().join(".tools/bin/pyron-ferretdb")),
        which("pyron-ferretdb"),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(ferretdb) => (ferretdb, false),
        None => panic!(
            "no MongoDB wire server: put `mongod` on PATH, or run scripts/install-deps.sh \
             to build FerretDB into .tools/bin"
        ),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}: {}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port}: {}", tail(log));
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn log_file(dir: &Path, name: &str) -> (PathBuf, Stdio, Stdio) {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).unwrap();
    (
        path,
        Stdio::from(file.try_clone().unwrap()),
        Stdio::from(file),
    )
}

/// A child process that is killed when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// SIGKILL: the process dies as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it is still running after two seconds. NGINX needs this:
    /// its workers outlive a killed master.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, tail(&self.log));
        }
        self.stop();
    }
}

/// Redis and a MongoDB wire server, fresh for one test.
/// Fields drop in order: the processes go before the directory holding their logs.
pub struct Stores {
    pub redis_port: u16,
    pub mongo_port: u16,
    pub redis: Process,
    pub mongo: Process,
    pub dir: TempDir,
}

impl Stores {
    pub fn start() -> Stores {
        let dir = tempfile::Builder::new()
            .prefix("pyron-test-")
            .tempdir()
            .unwrap();
        let redis_port = free_port();
        let redis = start_redis(dir.path(), redis_port);
        let mongo_port = free_port();
        let mongo = start_mongo(dir.path(), mongo_port);
        Stores {
            redis_port,
            mongo_port,
            redis,
            mongo,
            dir,
        }
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    pub fn mongo_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.mongo_port)
    }

    /// Starts redis-server again on its port and data (after `redis.kill()`).
    pub fn start_redis_again(&mut self) {
        self.redis = start_redis(self.dir.path(), self.redis_port);
    }

    /// Starts the MongoDB wire server again on its port and data (after `mongo.kill()`).
    pub fn start_mongo_again(&mut self) {
        self.mongo = start_mongo(self.dir.path(), self.mongo_port);
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Everything Pyron keeps in Redis: stream length and dedup keys.
    pub async fn redis_state(&self) -> (u64, u64) {
        let mut conn = self.redis().await;
        let len: u64 = redis::cmd("XLEN")
            .arg(pyron::queue::STREAM)
            .query_async(&mut conn)
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", pyron::queue::DEDUP_PREFIX))
            .query_async(&mut conn)
            .await
            .unwrap();
        (len, keys.len() as u64)
    }

    pub async fn db(&self, name: &str) -> mongodb::Database {
        mongodb::Client::with_uri_str(self.mongo_uri())
            .await
            .unwrap()
            .database(name)
    }
}

fn start_redis(dir: &Path, port: u16) -> Process {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data).unwrap();
    let (log, out, err) = log_file(dir, "redis");
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        // As in dev/redis.conf: every acknowledged job is on disk before Redis answers, so
        // a SIGKILL of redis-server loses none.
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(&data)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("redis-server not found: run scripts/install-deps.sh");
    wait_for_port(port, "redis-server", &mut child, &log);
    Process {
        name: "redis-server".into(),
        child,
        log,
    }
}

fn start_mongo(dir: &Path, port: u16) -> Process {
    let (binary, is_mongod) = mongo_server();
    let data = dir.join("mongo");
    std::fs::create_dir_all(&data).unwrap();
    let (log, out, err) = log_file(dir, "mongo");
    let mut command = Command::new(&binary);
    if is_mongod {
        command.args([
            "--port",
            &port.to_string(),
            "--bind_ip",
            "127.0.0.1",
            "--quiet",
        ]);
        command.arg("--dbpath").arg(&data);
    } else {
        command.args(["--listen-addr", &format!("127.0.0.1:{port}")]);
        command
            .arg("--sqlite-dir")
            .arg(&data)
            .args(["--log-level", "error"]);
    }
    let mut child = command.stdout(out).stderr(err).spawn().unwrap();
    wait_for_port(port, "MongoDB wire server", &mut child, &log);
    Process {
        name: "mongo".into(),
        child,
        log,
    }
}

/// The client a test sends its requests with.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The two Pyron binaries running against a test's `Stores`.
pub struct App {
    pub port: u16,
    pub api: Option<Process>,
    pub worker: Option<Process>,
    pub db_name: String,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    pub stores: Stores,
}

impl App {
    /// Starts the stores, pyron-api and pyron-worker with the test token.
    pub async fn start() -> App {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> App {
        let mut app = Self::stores_only(extra);
        app.start_api().await;
        app.start_worker();
        app
    }

    /// Prepares the environment without starting either binary.
    pub fn stores_only(extra: &[(&str, &str)]) -> App {
        let stores = Stores::start();
        let port = free_port();
        let db_name = "pyron".to_owned();
        let mut env: Vec<(String, String)> = vec![
            ("PYRON_BIND".into(), format!("127.0.0.1:{port}")),
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), stores.redis_port.to_string()),
            ("MONGO_URI".into(), stores.mongo_uri()),
            ("MONGO_DB".into(), db_name.clone()),
            ("PYRON_WEBHOOK_TOKEN".into(), TOKEN.into()),
            ("PYRON_LOG".into(), "info,pyron=debug".into()),
            ("PYRON_WORKER_BLOCK_MS".into(), "200".into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        App {
            port,
            api: None,
            worker: None,
            db_name,
            env,
            http: http_client(),
            stores,
        }
    }

    pub fn command(&self, binary: &str) -> Command {
        let path = match binary {
            "pyron-api" => env!("CARGO_BIN_EXE_pyron-api"),
            "pyron-worker" => env!("CARGO_BIN_EXE_pyron-worker"),
            "pyron-forwarder" => env!("CARGO_BIN_EXE_pyron-forwarder"),
            other => panic!("unknown binary {other}"),
        };
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts `binary` with extra settings, logging to `<name>.log`, without waiting.
    pub fn spawn(&self, binary: &str, name: &str, extra: &[(&str, &str)]) -> Process {
        let (log, out, err) = log_file(self.stores.dir.path(), name);
        let child = self
            .command(binary)
            .envs(extra.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Process {
            name: name.into(),
            child,
            log,
        }
    }

    /// Starts pyron-api (again) and waits until it listens. The test's client starts
    /// afresh: connections it kept to an earlier pyron-api are gone.
    pub async fn start_api(&mut self) {
        let mut api = self.spawn("pyron-api", "pyron-api", &[]);
        wait_for_port(self.port, "pyron-api", &mut api.child, &api.log);
        self.api = Some(api);
        self.http = http_client();
    }

    /// Starts pyron-worker and waits until it is consuming.
    pub fn start_worker(&mut self) {
        let worker = self.spawn_worker("pyron-worker", &[]);
        self.worker = Some(worker);
    }

    /// Starts another pyron-worker with extra settings (its consumer name, say) and waits
    /// until it is consuming.
    pub fn spawn_worker(&self, name: &str, extra: &[(&str, &str)]) -> Process {
        let mut worker = self.spawn("pyron-worker", name, extra);
        let deadline = Instant::now() + PATIENCE;
        while !worker.log().contains("pyron-worker consuming") {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("pyron-worker exited with {status}: {}", worker.log());
            }
            assert!(
                Instant::now() < deadline,
                "pyron-worker did not start: {}",
                worker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        worker
    }

    /// Starts pyron-forwarder and waits until it is forwarding.
    pub fn spawn_forwarder(&self, name: &str, extra: &[(&str, &str)]) -> Process {
        let mut forwarder = self.spawn("pyron-forwarder", name, extra);
        let deadline = Instant::now() + PATIENCE;
        while !forwarder.log().contains("pyron-forwarder forwarding") {
            if let Ok(Some(status)) = forwarder.child.try_wait() {
                panic!("pyron-forwarder exited with {status}: {}", forwarder.log());
            }
            assert!(
                Instant::now() < deadline,
                "pyron-forwarder did not start: {}",
                forwarder.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        forwarder
    }

    /// The test's temporary directory, for configuration and secret files.
    pub fn dir(&self) -> &Path {
        self.stores.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn db(&self) -> mongodb::Database {
        self.stores.db(&self.db_name).await
    }

    pub async fn docs(&self, collection: &str, filter: Document) -> Vec<Document> {
        let db = self.db().await;
        db.collection::<Document>(collection)
            .find(filter)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    pub async fn count(&self, collection: &str) -> u64 {
        self.db()
            .await
            .collection::<Document>(collection)
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    /// Waits until `collection` holds `n` documents matching `filter`.
    pub async fn wait_for_docs(
        &self,
        collection: &str,
        filter: Document,
        n: usize,
    ) -> Vec<Document> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let docs = self.docs(collection, filter.clone()).await;
            if docs.len() >= n || Instant::now() > deadline {
                return docs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that neither store holds anything of an alert: no job, no dedup key, no
    /// audit or jobs record.
    pub async fn assert_nothing_written(&self, what: &str) {
        assert_eq!(
            self.redis_state().await,
            (0, 0),
            "{what}: redis holds a job or dedup key"
        );
        assert_eq!(
            self.count("audit").await,
            0,
            "{what}: an audit record was written"
        );
        assert_eq!(
            self.count("jobs").await,
            0,
            "{what}: a jobs record was written"
        );
    }

    /// Everything Pyron keeps in Redis: stream length and dedup keys.
    pub async fn redis_state(&self) -> (u64, u64) {
        self.stores.redis_state().await
    }

    pub fn api_log(&self) -> String {
        self.api.as_ref().map(Process::log).unwrap_or_default()
    }

    pub fn worker_log(&self) -> String {
        self.worker.as_ref().map(Process::log).unwrap_or_default()
    }
}

/// The sample alerts in `samples/`, as (file name, content type, body).
pub fn samples() -> Vec<(String, &'static str, Vec<u8>)> {
    read_samples(&repo_root().join("samples"))
}

/// The team's shared samples beside the repository, when present.
pub fn shared_samples() -> Option<Vec<(String, &'static str, Vec<u8>)>> {
    let dir = repo_root().join("../shared/samples");
    dir.is_dir().then(|| read_samples(&dir))
}

fn read_samples(dir: &Path) -> Vec<(String, &'static str, Vec<u8>)> {
    let mut samples: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read samples in {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let content_type = match path.extension()?.to_str()? {
                "json" => "application/json",
                "txt" => "text/plain",
                _ => return None,
            };
            let name = path.file_name()?.to_str()?.to_owned();
            Some((name, content_type, std::fs::read(&path).unwrap()))
        })
        .collect();
    samples.sort();
    samples
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with openssl as
/// `scripts/dev-cert.sh` makes the local stack's. Returns (certificate, key) paths.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new(repo_root().join("scripts/dev-cert.sh"))
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/dev-cert.sh (needs openssl)");
    assert!(status.success(), "dev-cert.sh failed");
    (cert, key)
}

/// NGINX with the project's configuration, in front of `upstream`.
pub struct Nginx {
    pub process: Process,
    pub http_port: u16,
    pub https_port: u16,
    pub prefix: PathBuf,
    /// The certificate it serves (clients trust it) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Nginx {
    pub fn start(
        dir: &Path,
        upstream: &str,
        cert: &Path,
        key: &Path,
        settings: &[(&str, &str)],
    ) -> Nginx {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        let http_port = free_port();
        let https_port = free_port();
        let mut values: Vec<(String, String)> = vec![
            ("PREFIX".into(), prefix.display().to_string()),
            ("HTTP_LISTEN".into(), format!("127.0.0.1:{http_port}")),
            ("HTTPS_LISTEN".into(), format!("127.0.0.1:{https_port}")),
            ("HTTPS_PORT".into(), format!(":{https_port}")),
            ("CERT".into(), cert.display().to_string()),
            ("KEY".into(), key.display().to_string()),
            ("UPSTREAM".into(), upstream.into()),
            ("BODY_LIMIT".into(), "65536".into()),
            ("CLIENT_TIMEOUT".into(), "10".into()),
            ("RATE".into(), "50".into()),
            ("BURST".into(), "200".into()),
            (
                "ERRORS".into(),
                repo_root()
                    .join("dev/nginx-errors.conf")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ];
        for (k, v) in settings {
            values.retain(|(key, _)| key != k);
            values.push(((*k).into(), (*v).into()));
        }
        let mut server =
            std::fs::read_to_string(repo_root().join("dev/nginx-server.conf")).unwrap();
        // A test's own server directives (asking for client certificates, say).
        if let Some((_, extra)) = settings.iter().find(|(k, _)| *k == "SERVER_EXTRA") {
            server.push_str(extra);
        }
        let mut config = std::fs::read_to_string(repo_root().join("dev/nginx.conf.in"))
            .unwrap()
            .replace("@SERVER@", &server);
        for (k, v) in &values {
            config = config.replace(&format!("@{k}@"), v);
        }
        assert!(!config.contains("@PREFIX@"), "unfilled placeholder");
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let nginx = which("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .expect("nginx not found: run scripts/install-deps.sh");
        let (log, out, err) = log_file(dir, "nginx");
        let mut child = Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        wait_for_port(https_port, "nginx", &mut child, &log);
        wait_for_port(http_port, "nginx", &mut child, &log);
        Nginx {
            process: Process {
                name: "nginx".into(),
                child,
                log,
            },
            http_port,
            https_port,
            prefix,
            cert: cert.to_owned(),
            key: key.to_owned(),
        }
    }

    /// The access and error logs NGINX wrote.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.prefix.join(name)).unwrap_or_default();
        format!("{}{}", read("access.log"), read("error.log"))
    }
}

impl App {
    /// NGINX with a certificate of its own in front of this pyron-api.
    pub fn behind_nginx(&self, settings: &[(&str, &str)]) -> Nginx {
        let dir = self.stores.dir.path();
        let (cert, key) = make_cert(dir);
        Nginx::start(
            dir,
            &format!("127.0.0.1:{}", self.port),
            &cert,
            &key,
            settings,
        )
    }

    /// A second pyron-api on the same stores, with extra settings (HTTPS, say).
    pub fn spawn_api(&self, name: &str, extra: &[(&str, &str)]) -> (Process, u16) {
        let port = free_port();
        let (log, out, err) = log_file(self.stores.dir.path(), name);
        let mut command = self.command("pyron-api");
        command.env("PYRON_BIND", format!("127.0.0.1:{port}"));
        command.envs(extra.iter().copied());
        let mut child = command.stdout(out).stderr(err).spawn().unwrap();
        wait_for_port(port, name, &mut child, &log);
        (
            Process {
                name: name.into(),
                child,
                log,
            },
            port,
        )
    }
}

/// What came back for a raw request: a status and JSON body, or a closed connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Answer { status: u16, body: String },
    Closed,
}

/// Sends raw bytes, in steps with pauses between them, from `source` to `port`, over TLS
/// (trusting `cert`) or plain TCP, and reads the reply until the server closes.
pub async fn raw_request(
    source: std::net::IpAddr,
    port: u16,
    tls_cert: Option<&Path>,
    steps: &[(Vec<u8>, Duration)],
) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut stream: Box<dyn Stream> = match tls_cert {
        Some(cert) => {
            use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(cert).unwrap())
                .unwrap();
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let name = ServerName::try_from("localhost").unwrap();
            Box::new(connector.connect(name, tcp).await.unwrap())
        }
        None => Box::new(tcp),
    };
    for (bytes, pause) in steps {
        if stream.write_all(bytes).await.is_err() {
            break;
        }
        let _ = stream.flush().await;
        tokio::time::sleep(*pause).await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut reply)).await;
    if read.is_err() {
        panic!("no reply and no close within {PATIENCE:?}");
    }
    if reply.is_empty() {
        return Reply::Closed;
    }
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Reply::Answer { status, body }
}

pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A response's status and JSON body (failing the test if the body is not JSON).
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, value)
}

/// A number of a `jobs` record's signal.
pub fn f64_at(doc: &Document, key: &str) -> f64 {
    doc.get_document("signal").unwrap().get_f64(key).unwrap()
}

/// A string of a `jobs` record's signal.
pub fn str_at<'a>(doc: &'a Document, key: &str) -> &'a str {
    doc.get_document("signal")
        .unwrap()
        .get_str(key)
        .unwrap_or_else(|_| panic!("signal.{key} in {doc}"))
}
