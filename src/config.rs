//! Configuration: built-in defaults, then a TOML file, then the environment.
//!
//! The file is `$PYRON_CONFIG`, or `/etc/pyron/pyron.toml` when that exists. Its keys are
//! the environment names in lower case without the `PYRON_` prefix (`bind`, `redis_port`,
//! `webhook_token_file`, ...). The seed's variables keep their names (`USE_SSL`,
//! `REDIS_HOST`, `REDIS_PORT`, `MONGO_URI`, `MONGO_DB`); everything else is `PYRON_*`.
//!
//! Secrets (`webhook_token`, `admin_token`, `redis_url`, `mongo_uri`) may also come from a
//! file named by `<KEY>_FILE`, or from a systemd credential in `$CREDENTIALS_DIRECTORY`
//! (`webhook-token`, `admin-token`, `redis-url`, `mongo-uri`). A bad value stops start-up with one line naming the key.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    domain::Secret,
    route::{RawDestination, RawRoute, RawSource, Routing},
    source::{self, Source, Sources},
};

/// The seed's variable names, read without the `PYRON_` prefix.
const SEED_VARIABLES: [&str; 5] = [
    "USE_SSL",
    "REDIS_HOST",
    "REDIS_PORT",
    "MONGO_URI",
    "MONGO_DB",
];

/// The keys that hold tables (`[[sources]]`, `[[routes]]`, `[destinations.<name>]`):
/// the file sets them, the environment does not.
const TABLES: [&str; 3] = ["sources", "routes", "destinations"];

/// Where the TOML file is looked for when `PYRON_CONFIG` is unset.
const DEFAULT_CONFIG_FILE: &str = "/etc/pyron/pyron.toml";

/// A stored alert holds its body twice (raw and parsed) and MongoDB caps a document at
/// 16 MiB, so the body limit stays well below that.
const MAX_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Shortest accepted webhook secret. TradingView's own examples use short passphrases, so
/// this only rules out the trivially guessable; the README recommends 32 random bytes.
const MIN_TOKEN_LEN: usize = 8;

/// Shortest accepted admin secret: it guards replaying and reading every alert, and no
/// third party's format constrains it.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The raw settings as layered by figment, before validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    bind: String,
    use_ssl: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    redis_host: String,
    redis_port: u16,
    redis_url: Option<String>,
    redis_url_file: Option<PathBuf>,
    mongo_uri: Option<String>,
    mongo_uri_file: Option<PathBuf>,
    mongo_db: String,
    webhook_token: Option<String>,
    webhook_token_file: Option<PathBuf>,
    allow_unauthenticated: bool,
    passphrase_field: String,
    idempotency_field: Option<String>,
    dedup_ttl_secs: u64,
    body_limit: usize,
    body_timeout_ms: u64,
    header_limit: usize,
    trusted_proxies: String,
    allowed_senders: String,
    log: String,
    log_format: LogFormat,
    store_timeout_ms: u64,
    worker_batch_size: usize,
    worker_block_ms: u64,
    worker_write_timeout_ms: u64,
    worker_consumer: Option<String>,
    worker_max_attempts: u32,
    worker_retry_base_ms: u64,
    worker_claim_idle_ms: u64,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    forwarder_consumer: Option<String>,
    forwarder_claim_idle_ms: u64,
    sources: Vec<RawSource>,
    routes: Vec<RawRoute>,
    destinations: BTreeMap<String, RawDestination>,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            use_ssl: false,
            tls_cert: None,
            tls_key: None,
            redis_host: "127.0.0.1".into(),
            redis_port: 6379,
            redis_url: None,
            redis_url_file: None,
            mongo_uri: None,
            mongo_uri_file: None,
            mongo_db: "pyron".into(),
            webhook_token: None,
            webhook_token_file: None,
            allow_unauthenticated: false,
            passphrase_field: "passphrase".into(),
            idempotency_field: None,
            dedup_ttl_secs: 24 * 60 * 60,
            body_limit: 64 * 1024,
            body_timeout_ms: 10_000,
            header_limit: 8 * 1024,
            trusted_proxies: "127.0.0.1, ::1".into(),
            allowed_senders: String::new(),
            log: "info".into(),
            log_format: LogFormat::Text,
            store_timeout_ms: 800,
            worker_batch_size: 200,
            worker_block_ms: 1000,
            worker_write_timeout_ms: 10_000,
            worker_consumer: None,
            worker_max_attempts: 5,
            worker_retry_base_ms: 500,
            worker_claim_idle_ms: 60_000,
            admin_token: None,
            admin_token_file: None,
            forwarder_consumer: None,
            forwarder_claim_idle_ms: 30_000,
            sources: Vec::new(),
            routes: Vec::new(),
            destinations: BTreeMap::new(),
        }
    }
}

/// How log lines are written when not running under journald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where pyron-api listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Certificate and key for serving HTTPS directly (`USE_SSL=true`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validated configuration shared by both binaries, in sections that each check their own
/// keys (`from_raw`).
#[derive(Debug, Clone)]
pub struct Config {
    pub http: HttpConfig,
    pub redis: RedisConfig,
    pub mongo: MongoConfig,
    pub intake: IntakeConfig,
    pub worker: WorkerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub routing: Routing,
    pub forwarder: ForwarderConfig,
}

/// pyron-forwarder's own settings.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Its consumer name in `pyron-forwarders`: one per host by default, so that a
    /// restarted forwarder takes up its own pending deliveries at once.
    pub consumer: String,
    /// How long a delivery may sit with another forwarder before it is claimed.
    pub claim_idle: Duration,
}

/// Where and how pyron-api listens, and whom it believes.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub bind: BindAddr,
    pub tls: Option<TlsFiles>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Largest total size of a request's headers, in bytes.
    pub header_limit: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed. A unix-socket peer always is.
    pub trusted_proxies: Vec<IpNet>,
    /// When set, only these senders may post alerts.
    pub allowed_senders: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `PYRON_REDIS_URL`, else built from `REDIS_HOST` and `REDIS_PORT`.
    pub url: Secret,
}

#[derive(Debug, Clone)]
pub struct MongoConfig {
    pub uri: Secret,
    pub db: String,
}

/// What an alert must be to be accepted, and how long storing it may take.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// `PYRON_WEBHOOK_TOKEN` as the source `default`, and `[[sources]]`; one source
    /// without a secret when `PYRON_ALLOW_UNAUTHENTICATED=true`. Only pyron-api reads
    /// the secrets: the other processes know the sources by name.
    pub sources: Sources,
    pub passphrase_field: String,
    pub idempotency_field: Option<String>,
    pub dedup_ttl: Duration,
    pub body_limit: usize,
    /// How long one alert's storing may take, Redis and MongoDB together, before it is
    /// answered 503; also the bound of each store command on the request path.
    pub store_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The operator's secret for the dashboard and the dead-letter API; the admin
    /// endpoints answer 401 while it is unset.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter (`PYRON_LOG`).
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub batch_size: usize,
    pub block: Duration,
    /// How long one batch write to MongoDB may take before it is retried.
    pub write_timeout: Duration,
    pub consumer: String,
    /// Attempts a job gets when its write keeps failing, before it is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles with each attempt after that.
    pub retry_base: Duration,
    /// How long an entry may sit unacknowledged with another consumer before it is claimed.
    pub claim_idle: Duration,
}

/// A configuration problem, always tied to the key that caused it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {key}: {message}")]
pub struct ConfigError {
    /// The key as the user wrote it: an environment variable name, or `key` in a file.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: env_name(key),
            message: message.into(),
        }
    }
}

/// The environment variable that sets `key`.
fn env_name(key: &str) -> String {
    let upper = key.to_ascii_uppercase();
    if SEED_VARIABLES.contains(&upper.as_str()) {
        upper
    } else {
        format!("PYRON_{upper}")
    }
}

/// Which binary is loading: only pyron-api needs the webhook secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Forwarder,
}

impl Config {
    /// Loads from the process environment and the configuration file.
    pub fn load(role: Role) -> Result<Self, ConfigError> {
        let file = match std::env::var_os("PYRON_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::from_figment(figment(file.as_deref())?, credentials.as_deref(), role)
    }

    fn from_figment(
        figment: Figment,
        credentials: Option<&Path>,
        role: Role,
    ) -> Result<Self, ConfigError> {
        let raw: Raw = figment.extract().map_err(from_figment_error)?;
        let intake = IntakeConfig::from_raw(&raw, credentials, role)?;
        let routing = routing(&raw, &intake, credentials, role)?;
        Ok(Config {
            http: HttpConfig::from_raw(&raw)?,
            redis: RedisConfig::from_raw(&raw, credentials)?,
            mongo: MongoConfig::from_raw(&raw, credentials)?,
            intake,
            worker: WorkerConfig::from_raw(&raw)?,
            admin: AdminConfig::from_raw(&raw, credentials)?,
            log: LogConfig::from_raw(&raw)?,
            routing,
            forwarder: ForwarderConfig::from_raw(&raw)?,
        })
    }
}

impl HttpConfig {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let bind = parse_bind(&raw.bind)?;
        let tls = match (raw.use_ssl, &raw.tls_cert, &raw.tls_key) {
            (false, _, _) => None,
            (true, Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (true, None, _) => {
                return Err(ConfigError::new("tls_cert", "required when USE_SSL=true"));
            }
            (true, _, None) => {
                return Err(ConfigError::new("tls_key", "required when USE_SSL=true"));
            }
        };
        if raw.body_timeout_ms == 0 {
            return Err(ConfigError::new("body_timeout_ms", "must be at least 1"));
        }
        if raw.header_limit < 1024 {
            return Err(ConfigError::new(
                "header_limit",
                "must be at least 1024 bytes",
            ));
        }
        let trusted_proxies = parse_networks("trusted_proxies", &raw.trusted_proxies)?;
        let allowed_senders = parse_networks("allowed_senders", &raw.allowed_senders)?;
        Ok(HttpConfig {
            bind,
            tls,
            body_timeout: Duration::from_millis(raw.body_timeout_ms),
            header_limit: raw.header_limit,
            trusted_proxies,
            allowed_senders: (!allowed_senders.is_empty()).then_some(allowed_senders),
        })
    }
}

impl RedisConfig {
    fn from_raw(raw: &Raw, credentials: Option<&Path>) -> Result<Self, ConfigError> {
        let url = secret(
            "redis_url",
            raw.redis_url.clone(),
            raw.redis_url_file.as_deref(),
            credentials,
        )?;
        if raw.redis_host.is_empty() {
            return Err(ConfigError::new("redis_host", "must not be empty"));
        }
        let url = url.unwrap_or_else(|| {
            Secret::new(format!("redis://{}:{}/", raw.redis_host, raw.redis_port))
        });
        Ok(RedisConfig { url })
    }
}

impl MongoConfig {
    fn from_raw(raw: &Raw, credentials: Option<&Path>) -> Result<Self, ConfigError> {
        let uri = secret(
            "mongo_uri",
            raw.mongo_uri.clone(),
            raw.mongo_uri_file.as_deref(),
            credentials,
        )?
        .unwrap_or_else(|| Secret::new("mongodb://127.0.0.1:27017".to_owned()));
        let text = uri.expose();
        if !(text.starts_with("mongodb://") || text.starts_with("mongodb+srv://")) {
            return Err(ConfigError::new(
                "mongo_uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if raw.mongo_db.is_empty() || raw.mongo_db.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(ConfigError::new(
                "mongo_db",
                format!("{:?} is not a valid database name", raw.mongo_db),
            ));
        }
        Ok(MongoConfig {
            uri,
            db: raw.mongo_db.clone(),
        })
    }
}

impl IntakeConfig {
    fn from_raw(raw: &Raw, credentials: Option<&Path>, role: Role) -> Result<Self, ConfigError> {
        let webhook_token = secret(
            "webhook_token",
            raw.webhook_token.clone(),
            raw.webhook_token_file.as_deref(),
            credentials,
        )?;
        if let Some(token) = &webhook_token {
            check_token(token.expose()).map_err(|m| ConfigError::new("webhook_token", m))?;
        } else if role == Role::Api && !raw.allow_unauthenticated && raw.sources.is_empty() {
            return Err(ConfigError::new(
                "webhook_token",
                "not set: set PYRON_WEBHOOK_TOKEN or PYRON_WEBHOOK_TOKEN_FILE, or define [[sources]] \
                 (or PYRON_ALLOW_UNAUTHENTICATED=true to accept alerts without a secret)",
            ));
        }
        if raw.passphrase_field.is_empty() {
            return Err(ConfigError::new("passphrase_field", "must not be empty"));
        }
        if raw.idempotency_field.as_deref() == Some("") {
            return Err(ConfigError::new(
                "idempotency_field",
                "must not be empty when set",
            ));
        }
        if raw.dedup_ttl_secs == 0 {
            return Err(ConfigError::new("dedup_ttl_secs", "must be at least 1"));
        }
        if raw.body_limit == 0 || raw.body_limit > MAX_BODY_LIMIT {
            return Err(ConfigError::new(
                "body_limit",
                format!("must be between 1 and {MAX_BODY_LIMIT} bytes"),
            ));
        }
        if raw.store_timeout_ms == 0 {
            return Err(ConfigError::new("store_timeout_ms", "must be at least 1"));
        }
        let sources = sources(raw, webhook_token, credentials, role)?;
        Ok(IntakeConfig {
            sources,
            passphrase_field: raw.passphrase_field.clone(),
            idempotency_field: raw.idempotency_field.clone(),
            dedup_ttl: Duration::from_secs(raw.dedup_ttl_secs),
            body_limit: raw.body_limit,
            store_timeout: Duration::from_millis(raw.store_timeout_ms),
        })
    }
}

/// The sources: `default` from the webhook token, then `[[sources]]`. Each secret follows
/// the webhook token's rules, since it too sits in a URL path.
fn sources(
    raw: &Raw,
    webhook_token: Option<Secret>,
    credentials: Option<&Path>,
    role: Role,
) -> Result<Sources, ConfigError> {
    if raw.allow_unauthenticated && !raw.sources.is_empty() {
        return Err(ConfigError::new(
            "allow_unauthenticated",
            "cannot be combined with [[sources]]: each source has a secret",
        ));
    }
    if raw.allow_unauthenticated && webhook_token.is_none() {
        return Ok(Sources::unauthenticated());
    }
    let mut list = Vec::with_capacity(raw.sources.len() + 1);
    if webhook_token.is_some() || raw.sources.is_empty() {
        list.push(Source {
            name: source::DEFAULT.to_owned(),
            secret: webhook_token,
            allowed_senders: None,
            idempotency_field: None,
            client_certificate: None,
            max_age: None,
        });
    }
    for (i, declared) in raw.sources.iter().enumerate() {
        let key = |field: &str| format!("sources[{i}].{field}");
        let named = |field: &str, message: String| ConfigError {
            key: format!("`{}`", key(field)),
            message,
        };
        crate::route::check_name(&key("name"), &declared.name)
            .map_err(|e| named("name", e.message))?;
        if list.iter().any(|s: &Source| s.name == declared.name) {
            let why = if declared.name == source::DEFAULT {
                "is the source of PYRON_WEBHOOK_TOKEN; give this one another name"
            } else {
                "is used by two sources"
            };
            return Err(named("name", format!("{:?} {why}", declared.name)));
        }
        let secret = if role == Role::Api {
            let credential = format!("source-{}", declared.name);
            let found = match &declared.secret_file {
                Some(path) => Some(read_secret(path).map_err(|m| named("secret_file", m))?),
                None => match credentials.map(|dir| dir.join(&credential)) {
                    Some(path) if path.exists() => {
                        Some(read_secret(&path).map_err(|m| named("secret_file", m))?)
                    }
                    _ => None,
                },
            };
            let Some(found) = found else {
                return Err(named(
                    "secret_file",
                    format!("not set, and no systemd credential {credential}"),
                ));
            };
            check_token(&found).map_err(|m| named("secret_file", m))?;
            Some(Secret::new(found))
        } else {
            None
        };
        let allowed_senders = match &declared.allowed_senders {
            Some(list) => Some(
                parse_networks(&key("allowed_senders"), &list.join(","))
                    .map_err(|e| named("allowed_senders", e.message))?,
            ),
            None => None,
        };
        if declared.idempotency_field.as_deref() == Some("") {
            return Err(named(
                "idempotency_field",
                "must not be empty when set".into(),
            ));
        }
        if declared.client_certificate.as_deref() == Some("") {
            return Err(named(
                "client_certificate",
                "must not be empty when set".into(),
            ));
        }
        if declared.max_age_secs == Some(0) {
            return Err(named("max_age_secs", "must be at least 1".into()));
        }
        list.push(Source {
            name: declared.name.clone(),
            secret,
            allowed_senders,
            idempotency_field: declared.idempotency_field.clone(),
            client_certificate: declared.client_certificate.clone(),
            max_age: declared.max_age_secs.map(Duration::from_secs),
        });
    }
    if role == Role::Api {
        let secrets: Vec<&str> = list
            .iter()
            .filter_map(|s| s.secret.as_ref())
            .map(Secret::expose)
            .collect();
        for (i, a) in secrets.iter().enumerate() {
            if secrets[..i].contains(a) {
                return Err(ConfigError {
                    key: "sources".into(),
                    message: "two sources share a secret: the secret is what tells them apart"
                        .into(),
                });
            }
        }
    }
    Ok(Sources::new(list))
}

/// A secret read from a file, without its trailing newline.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}

/// The rules every webhook secret follows.
fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("must be at least {MIN_TOKEN_LEN} characters"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(
            "may hold only letters, digits and - . _ ~, so it can sit in a URL path as is".into(),
        );
    }
    Ok(())
}

/// Routes and destinations; pyron-forwarder alone reads the destinations' secrets.
fn routing(
    raw: &Raw,
    intake: &IntakeConfig,
    credentials: Option<&Path>,
    role: Role,
) -> Result<Routing, ConfigError> {
    let names: Vec<String> = intake.sources.iter().map(|s| s.name.clone()).collect();
    let read =
        |credential: &str, file: Option<&Path>| -> Result<Option<Secret>, crate::route::Invalid> {
            let found = match file {
                Some(path) => Some(read_secret(path)),
                None => match credentials.map(|dir| dir.join(credential)) {
                    Some(path) if path.exists() => Some(read_secret(&path)),
                    _ => None,
                },
            };
            found
                .transpose()
                .map(|v| v.map(Secret::new))
                .map_err(|message| crate::route::Invalid {
                    key: String::new(),
                    message,
                })
        };
    let secrets: Option<crate::route::SecretReader<'_>> =
        (role == Role::Forwarder).then_some(&read);
    let mut routing =
        Routing::from_raw(&raw.routes, &raw.destinations, &names, secrets).map_err(|e| {
            ConfigError {
                key: format!("`{}`", e.key),
                message: e.message,
            }
        })?;
    routing.source_max_age = intake
        .sources
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.max_age?)))
        .collect();
    Ok(routing)
}

impl ForwarderConfig {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        if raw.forwarder_claim_idle_ms < 1000 {
            return Err(ConfigError::new(
                "forwarder_claim_idle_ms",
                "must be at least 1000: a live forwarder's deliveries must not be taken from it",
            ));
        }
        let consumer = match &raw.forwarder_consumer {
            Some(name) if name.is_empty() => {
                return Err(ConfigError::new(
                    "forwarder_consumer",
                    "must not be empty when set",
                ));
            }
            Some(name) => name.clone(),
            None => format!("{}-forwarder", hostname().unwrap_or_else(|| "pyron".into())),
        };
        Ok(ForwarderConfig {
            consumer,
            claim_idle: Duration::from_millis(raw.forwarder_claim_idle_ms),
        })
    }
}

impl WorkerConfig {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        if raw.worker_batch_size == 0 || raw.worker_batch_size > 10_000 {
            return Err(ConfigError::new(
                "worker_batch_size",
                "must be between 1 and 10000",
            ));
        }
        if raw.worker_block_ms == 0 {
            return Err(ConfigError::new("worker_block_ms", "must be at least 1"));
        }
        if raw.worker_write_timeout_ms == 0 {
            return Err(ConfigError::new(
                "worker_write_timeout_ms",
                "must be at least 1",
            ));
        }
        if !(1..=100).contains(&raw.worker_max_attempts) {
            return Err(ConfigError::new(
                "worker_max_attempts",
                "must be between 1 and 100",
            ));
        }
        if raw.worker_retry_base_ms == 0 {
            return Err(ConfigError::new(
                "worker_retry_base_ms",
                "must be at least 1",
            ));
        }
        if raw.worker_claim_idle_ms < 1000 {
            return Err(ConfigError::new(
                "worker_claim_idle_ms",
                "must be at least 1000: a live worker's batch must not be taken from it",
            ));
        }
        let consumer = match &raw.worker_consumer {
            Some(name) if name.is_empty() => {
                return Err(ConfigError::new(
                    "worker_consumer",
                    "must not be empty when set",
                ));
            }
            Some(name) => name.clone(),
            None => default_consumer_name(),
        };
        Ok(WorkerConfig {
            batch_size: raw.worker_batch_size,
            block: Duration::from_millis(raw.worker_block_ms),
            write_timeout: Duration::from_millis(raw.worker_write_timeout_ms),
            consumer,
            max_attempts: raw.worker_max_attempts,
            retry_base: Duration::from_millis(raw.worker_retry_base_ms),
            claim_idle: Duration::from_millis(raw.worker_claim_idle_ms),
        })
    }
}

impl AdminConfig {
    fn from_raw(raw: &Raw, credentials: Option<&Path>) -> Result<Self, ConfigError> {
        let token = secret(
            "admin_token",
            raw.admin_token.clone(),
            raw.admin_token_file.as_deref(),
            credentials,
        )?;
        if token
            .as_ref()
            .is_some_and(|t| t.expose().len() < MIN_ADMIN_TOKEN_LEN)
        {
            return Err(ConfigError::new(
                "admin_token",
                format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
            ));
        }
        Ok(AdminConfig { token })
    }
}

impl LogConfig {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&raw.log) {
            return Err(ConfigError::new("log", err.to_string()));
        }
        Ok(LogConfig {
            filter: raw.log.clone(),
            format: raw.log_format,
        })
    }
}

/// Defaults, then the file (if any), then the environment.
fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let defaults = Serialized::defaults(Raw::default());
    let known_keys = raw_keys();
    let mut figment = Figment::from(defaults);
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError {
                key: "PYRON_CONFIG".into(),
                message: format!("file {} does not exist", path.display()),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment =
        figment
            .merge(Env::raw().only(&SEED_VARIABLES))
            .merge(Env::prefixed("PYRON_").filter(move |key| {
                known_keys
                    .iter()
                    .filter(|k| !TABLES.contains(k))
                    .any(|k| key.as_str().eq_ignore_ascii_case(k))
            }));
    Ok(figment)
}

/// Every key `Raw` takes, as serde names them: the environment may set these and no other
/// `PYRON_*` variable (others, such as `PYRON_CONFIG`, are not settings). Read from the
/// struct itself, so a new field needs no list kept beside it.
fn raw_keys() -> &'static [&'static str] {
    use serde::de::{self, Deserializer, Visitor};

    /// A deserializer that only notes the field names serde asks it for.
    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Names<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only field names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = Raw::deserialize(Names(&mut fields));
    fields
}

fn from_figment_error(err: figment::Error) -> ConfigError {
    let key = err.path.join(".");
    let (key, message) = match &err.metadata {
        Some(md) if md.name.contains("environment") && !key.is_empty() => {
            (env_name(&key), err.kind.to_string())
        }
        Some(md) if !key.is_empty() => {
            let source = md
                .source
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            (format!("`{key}` in {source}"), err.kind.to_string())
        }
        Some(md) => (
            md.source
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| md.name.to_string()),
            err.kind.to_string(),
        ),
        None if !key.is_empty() => (env_name(&key), err.kind.to_string()),
        None => ("configuration".into(), err.kind.to_string()),
    };
    ConfigError { key, message }
}

/// Resolves a secret from its value, its `_FILE`, or its systemd credential.
fn secret(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
    credentials: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    let file_key = format!("{key}_file");
    let read = |k: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| ConfigError::new(k, format!("cannot read {}: {e}", path.display())))
    };
    let found = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key,
                format!(
                    "set either {} or {}, not both",
                    env_name(key),
                    env_name(&file_key)
                ),
            ));
        }
        (Some(v), None) => Some(v),
        (None, Some(path)) => Some(read(&file_key, path)?),
        (None, None) => match credentials.map(|dir| dir.join(key.replace('_', "-"))) {
            Some(path) if path.exists() => Some(read(key, &path)?),
            _ => None,
        },
    };
    match found {
        Some(v) if v.is_empty() => Err(ConfigError::new(key, "must not be empty")),
        Some(v) => Ok(Some(Secret::new(v))),
        None => Ok(None),
    }
}

fn parse_bind(bind: &str) -> Result<BindAddr, ConfigError> {
    if let Some(path) = bind.strip_prefix("unix:") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(ConfigError::new(
                "bind",
                "unix: needs an absolute socket path",
            ));
        }
        return Ok(BindAddr::Unix(PathBuf::from(path)));
    }
    bind.parse::<SocketAddr>().map(BindAddr::Tcp).map_err(|_| {
        ConfigError::new(
            "bind",
            format!("{bind:?} is not host:port (e.g. 127.0.0.1:8000) or unix:/path"),
        )
    })
}

/// A list of addresses or CIDR networks, separated by commas or white space.
fn parse_networks(key: &str, list: &str) -> Result<Vec<IpNet>, ConfigError> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        key,
                        format!("{item:?} is not an IP address or CIDR network"),
                    )
                })
        })
        .collect()
}

/// `<hostname>-<pid>`. The host name comes from uname(2), not /proc, which the systemd
/// sandbox hides (`ProcSubset=pid`).
fn default_consumer_name() -> String {
    format!(
        "{}-{}",
        hostname().unwrap_or_else(|| "pyron".into()),
        std::process::id()
    )
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits, and the last byte stays 0 otherwise.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail fixes the closures' error type
mod tests {
    use super::*;
    use figment::Jail;

    fn default_token(config: &Config) -> Option<&str> {
        config
            .intake
            .sources
            .get(source::DEFAULT)?
            .secret
            .as_ref()
            .map(Secret::expose)
    }

    fn load(jail: &Jail, role: Role) -> Result<Config, ConfigError> {
        let file = jail.directory().join("pyron.toml");
        let file = file.exists().then_some(file);
        Config::from_figment(figment(file.as_deref())?, None, role)
    }

    #[test]
    fn defaults_follow_the_design() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            let config = load(jail, Role::Api).unwrap();
            assert_eq!(
                config.http.bind,
                BindAddr::Tcp("127.0.0.1:8000".parse().unwrap())
            );
            assert_eq!(config.redis.url.expose(), "redis://127.0.0.1:6379/");
            assert_eq!(config.mongo.uri.expose(), "mongodb://127.0.0.1:27017");
            assert_eq!(config.mongo.db, "pyron");
            assert_eq!(config.intake.body_limit, 65536);
            assert_eq!(config.intake.passphrase_field, "passphrase");
            assert!(config.http.tls.is_none());
            Ok(())
        });
    }

    #[test]
    fn seed_variables_keep_their_names() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            jail.set_env("REDIS_HOST", "10.0.0.5");
            jail.set_env("REDIS_PORT", "6380");
            jail.set_env("MONGO_URI", "mongodb://db:27018");
            jail.set_env("MONGO_DB", "alerts");
            let config = load(jail, Role::Api).unwrap();
            assert_eq!(config.redis.url.expose(), "redis://10.0.0.5:6380/");
            assert_eq!(config.mongo.uri.expose(), "mongodb://db:27018");
            assert_eq!(config.mongo.db, "alerts");
            Ok(())
        });
    }

    #[test]
    fn redis_url_overrides_host_and_port() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            jail.set_env("REDIS_HOST", "10.0.0.5");
            jail.set_env("PYRON_REDIS_URL", "redis+unix:///run/redis/redis.sock");
            let config = load(jail, Role::Api).unwrap();
            assert_eq!(
                config.redis.url.expose(),
                "redis+unix:///run/redis/redis.sock"
            );
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "pyron.toml",
                "bind = \"127.0.0.1:9000\"\nbody_limit = 1000\nwebhook_token = \"from-file-123\"",
            )?;
            jail.set_env("PYRON_BODY_LIMIT", "2000");
            let config = load(jail, Role::Api).unwrap();
            assert_eq!(
                config.http.bind,
                BindAddr::Tcp("127.0.0.1:9000".parse().unwrap())
            );
            assert_eq!(config.intake.body_limit, 2000);
            assert_eq!(default_token(&config).unwrap(), "from-file-123");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_environment_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            jail.set_env("REDIS_PORT", "sixty");
            let err = load(jail, Role::Api).unwrap_err();
            assert_eq!(err.key, "REDIS_PORT");
            jail.set_env("REDIS_PORT", "6379");
            jail.set_env("PYRON_BODY_LIMIT", "-1");
            let err = load(jail, Role::Api).unwrap_err();
            assert_eq!(err.key, "PYRON_BODY_LIMIT");
            assert!(!err.to_string().contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn a_typo_in_the_file_is_an_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "pyron.toml",
                "webhook_token = \"0123456789abcdef\"\nbodylimit = 5",
            )?;
            let err = load(jail, Role::Api).unwrap_err();
            assert!(err.to_string().contains("bodylimit"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn sources_come_from_the_file_with_their_secrets_and_bad_ones_name_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("tv.secret", "tradingview-secret-1\n")?;
            jail.create_file("bot.secret", "bot-secret-000002")?;
            let dir = jail.directory().to_owned();
            let source = |name: &str, file: &str, extra: &str| {
                format!(
                    "[[sources]]\nname = \"{name}\"\nsecret_file = {:?}\n{extra}\n",
                    dir.join(file)
                )
            };
            jail.create_file(
                "pyron.toml",
                &(source(
                    "tradingview",
                    "tv.secret",
                    "max_age_secs = 30\nallowed_senders = [\"52.89.214.238\"]",
                ) + &source("bot", "bot.secret", "idempotency_field = \"signal_id\"")),
            )?;
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            let config = load(jail, Role::Api).unwrap();
            let names: Vec<&str> = config
                .intake
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["default", "tradingview", "bot"]);
            assert_eq!(
                config
                    .intake
                    .sources
                    .identify(b"tradingview-secret-1")
                    .unwrap()
                    .name,
                "tradingview"
            );
            assert_eq!(
                config.routing.source_max_age.get("tradingview"),
                Some(&Duration::from_secs(30))
            );
            // The worker knows the sources by name, without reading their secrets.
            std::fs::remove_file(dir.join("bot.secret")).unwrap();
            assert!(load(jail, Role::Worker).is_ok());
            let err = load(jail, Role::Api).unwrap_err();
            assert_eq!(err.key, "`sources[1].secret_file`");

            let refused = |toml: String| {
                jail.create_file("pyron.toml", &toml).unwrap();
                load(jail, Role::Api).unwrap_err()
            };
            let err = refused(source("default", "tv.secret", ""));
            assert_eq!(err.key, "`sources[0].name`");
            let err = refused(source("a", "tv.secret", "") + &source("a", "tv.secret", ""));
            assert_eq!(err.key, "`sources[1].name`");
            jail.create_file("same.secret", "tradingview-secret-1")?;
            let err = refused(source("a", "tv.secret", "") + &source("b", "same.secret", ""));
            assert!(err.message.contains("share a secret"), "{err}");
            let err = refused(source("a", "tv.secret", "max_age_secs = 0"));
            assert_eq!(err.key, "`sources[0].max_age_secs`");
            Ok(())
        });
    }

    #[test]
    fn api_refuses_to_start_without_a_secret() {
        Jail::expect_with(|jail| {
            let err = load(jail, Role::Api).unwrap_err();
            assert_eq!(err.key, "PYRON_WEBHOOK_TOKEN");
            assert!(load(jail, Role::Worker).is_ok());
            jail.set_env("PYRON_ALLOW_UNAUTHENTICATED", "true");
            assert!(
                load(jail, Role::Api)
                    .unwrap()
                    .intake
                    .sources
                    .open()
                    .is_some()
            );
            Ok(())
        });
    }

    #[test]
    fn secrets_come_from_files_and_credentials() {
        Jail::expect_with(|jail| {
            jail.create_file("token", "from-a-file-0001\n")?;
            jail.set_env(
                "PYRON_WEBHOOK_TOKEN_FILE",
                jail.directory().join("token").display(),
            );
            let config = load(jail, Role::Api).unwrap();
            assert_eq!(default_token(&config).unwrap(), "from-a-file-0001");

            jail.set_env("PYRON_WEBHOOK_TOKEN", "both-set-000001");
            let err = load(jail, Role::Api).unwrap_err();
            assert_eq!(err.key, "PYRON_WEBHOOK_TOKEN");

            std::fs::create_dir(jail.directory().join("creds")).unwrap();
            jail.create_file("creds/webhook-token", "from-credential-1")?;
            let creds = jail.directory().join("creds");
            let config = Config::from_figment(figment(None).unwrap(), Some(&creds), Role::Api);
            assert!(config.is_err(), "explicit settings still conflict");
            Ok(())
        });
        Jail::expect_with(|jail| {
            std::fs::create_dir(jail.directory().join("creds")).unwrap();
            jail.create_file("creds/webhook-token", "from-credential-1")?;
            let creds = jail.directory().join("creds");
            let config =
                Config::from_figment(figment(None).unwrap(), Some(&creds), Role::Api).unwrap();
            assert_eq!(default_token(&config).unwrap(), "from-credential-1");
            Ok(())
        });
    }

    #[test]
    fn the_default_consumer_is_this_host_and_process() {
        let name = default_consumer_name();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(name, format!("{}-{}", host.trim(), std::process::id()));
    }

    #[test]
    fn delivery_settings_are_checked() {
        Jail::expect_with(|jail| {
            let config = load(jail, Role::Worker).unwrap();
            assert_eq!(config.worker.max_attempts, 5);
            assert_eq!(config.worker.retry_base, Duration::from_millis(500));
            assert_eq!(config.worker.claim_idle, Duration::from_secs(60));
            assert!(config.admin.token.is_none());
            for (key, value) in [
                ("PYRON_WORKER_MAX_ATTEMPTS", "0"),
                ("PYRON_WORKER_RETRY_BASE_MS", "0"),
                ("PYRON_WORKER_CLAIM_IDLE_MS", "500"),
                ("PYRON_ADMIN_TOKEN", "too-short"),
            ] {
                jail.set_env(key, value);
                assert_eq!(load(jail, Role::Worker).unwrap_err().key, key);
                jail.clear_env();
            }
            jail.set_env("PYRON_ADMIN_TOKEN", "0123456789abcdef");
            let config = load(jail, Role::Worker).unwrap();
            assert!(config.admin.token.unwrap().matches(b"0123456789abcdef"));
            Ok(())
        });
    }

    #[test]
    fn weak_or_unusable_tokens_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "short");
            assert_eq!(
                load(jail, Role::Api).unwrap_err().key,
                "PYRON_WEBHOOK_TOKEN"
            );
            jail.set_env("PYRON_WEBHOOK_TOKEN", "has a space in it");
            assert_eq!(
                load(jail, Role::Api).unwrap_err().key,
                "PYRON_WEBHOOK_TOKEN"
            );
            Ok(())
        });
    }

    #[test]
    fn bind_accepts_tcp_and_unix_and_refuses_the_rest() {
        assert_eq!(
            parse_bind("unix:/run/pyron/api.sock").unwrap(),
            BindAddr::Unix("/run/pyron/api.sock".into())
        );
        assert_eq!(
            parse_bind("[::1]:8000").unwrap(),
            BindAddr::Tcp("[::1]:8000".parse().unwrap())
        );
        assert_eq!(parse_bind("localhost").unwrap_err().key, "PYRON_BIND");
        assert_eq!(parse_bind("unix:relative").unwrap_err().key, "PYRON_BIND");
    }

    #[test]
    fn sender_lists_take_addresses_and_networks() {
        let nets = parse_networks(
            "allowed_senders",
            "52.89.214.238, 34.212.75.30 10.0.0.0/8\n::1",
        )
        .unwrap();
        assert_eq!(nets.len(), 4);
        assert!(nets[2].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(parse_networks("allowed_senders", "").unwrap().is_empty());
        let err = parse_networks("allowed_senders", "52.89.214.238, tradingview").unwrap_err();
        assert_eq!(err.key, "PYRON_ALLOWED_SENDERS");
        assert!(err.message.contains("tradingview"));
    }

    #[test]
    fn use_ssl_needs_both_files() {
        Jail::expect_with(|jail| {
            jail.set_env("PYRON_WEBHOOK_TOKEN", "0123456789abcdef");
            jail.set_env("USE_SSL", "true");
            assert_eq!(load(jail, Role::Api).unwrap_err().key, "PYRON_TLS_CERT");
            jail.set_env("PYRON_TLS_CERT", "/x/cert.pem");
            assert_eq!(load(jail, Role::Api).unwrap_err().key, "PYRON_TLS_KEY");
            jail.set_env("PYRON_TLS_KEY", "/x/key.pem");
            assert!(load(jail, Role::Api).unwrap().http.tls.is_some());
            Ok(())
        });
    }

    #[test]
    fn every_setting_is_a_key_the_environment_may_set() {
        let keys = raw_keys();
        assert_eq!(keys.len(), 39, "{keys:?}");
        for key in [
            "bind",
            "tls_cert",
            "worker_consumer",
            "admin_token_file",
            "log_format",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }
}
