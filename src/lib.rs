//! Pyron receives trading alerts over HTTP, makes each one durable before it answers,
//! queues it in a Redis stream, and has a worker turn it into a signal recorded in
//! MongoDB.
//!
//! The modules in the order an alert meets them:
//!
//! - `config` reads the settings (defaults, TOML file, environment, credentials) and
//!   `telemetry` sets up logging; `startup` wires pyron-api from them, binds its socket
//!   and serves; `systemd` tells systemd how each process is doing.
//! - `http` takes the request: `http::sender` works out who sent it, `http::webhook` reads
//!   the body within its limits, `http::error` turns every refusal into one JSON answer.
//! - `ingest` judges it: content type, secret (path or `passphrase`, also in a JSON object
//!   sent as text), strict JSON, idempotency key; the result is an `ingest::Alert` whose
//!   `EventId`, `Secret` and kinds come from `domain`.
//! - `delivery` holds the protocol. `delivery::accept` makes the alert durable before the
//!   202: `queue` (Redis: the job stream, deduplication, audit markers), else `store`
//!   (MongoDB) alone, which `reconcile` later queues; `audit` writes the audit records of
//!   queued alerts in batches off the request path (`batch` gathers them under load);
//!   `clock` holds the instants the breaker and the reconciler's hand-off share.
//! - `worker` reads the stream and `delivery::settle` settles each batch: `signal`
//!   normalizes the alert, `store` records the `jobs` and missing audit records, then the
//!   entries are acknowledged, retried (`backoff`) or dead-lettered.
//! - `stats` counts what happened for the dashboard and `/metrics`, which `http::dashboard`,
//!   `http::metrics` and `http::admin` (dead letters, replay) serve behind `http::auth`;
//!   `http::health` answers liveness and readiness.

pub mod audit;
pub mod backoff;
pub mod batch;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod queue;
pub mod reconcile;
pub mod route;
pub mod signal;
pub mod source;
pub mod startup;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod worker;
