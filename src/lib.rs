//! Pyron receives trading alerts over HTTP, stores each one durably, queues it in a Redis
//! stream, and processes it with a worker that records the result in MongoDB.
//!
//! The modules follow an alert: `config` and `telemetry` wire the process; `http` takes the
//! request; `ingest` authenticates and parses it; `queue` (Redis) and `store` (MongoDB)
//! persist it; `worker` consumes the queue and uses `signal` to normalize each alert.

pub mod audit;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod queue;
pub mod reconcile;
pub mod signal;
pub mod startup;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod worker;
