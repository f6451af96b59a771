//! Pyron's integration tests, one crate: real `redis-server`, a real MongoDB wire server,
//! real NGINX with TLS, Chromium and systemd's tools, driving the real binaries.
//!
//! - `intake`: an alert posted to pyron-api ends as one `jobs` record; refusals write
//!   nothing.
//! - `records`: the audit and `jobs` records whoever writes them, the markers, the
//!   stream's job format.
//! - `operation`: readiness, sockets, configuration, signals.
//! - `tradingview`: what TradingView users send, over HTTPS through NGINX.
//! - `edge`: hostile requests as raw bytes, through NGINX and to pyron-api's own TLS.
//! - `delivery`: the fault-injection suite (kills, hangs, outages, retries, replay).
//! - `routes`: sources, routes and pyron-forwarder against local servers that behave like
//!   the real destinations.
//! - `dashboard`: the dashboard in a real browser, and `/metrics`.
//! - `systemd`: readiness, watchdog, journald, credentials, socket activation.

mod helpers;

mod dashboard;
mod delivery;
mod edge;
mod intake;
mod operation;
mod records;
mod routes;
mod systemd;
mod tradingview;
