//! pyron-forwarder: sends each delivery the worker queued, at least once, in order per
//! source and ticker, and never late; records every attempt in MongoDB `deliveries`.
//!
//! The flow of one delivery:
//!
//! 1. The worker matched a processed alert against the routes and queued one `Job` per
//!    (route, destination) in `webhook-deliveries` (`outbox::fan_out`).
//! 2. The forwarder reads it and puts it in its **lane**: one per destination, source and
//!    ticker. A lane sends one delivery at a time, in the order the stream holds them,
//!    which is the order the alerts were received.
//! 3. The lane checks the deadline (receipt + the route's maximum age): a delivery past
//!    it ends `expired` and is never sent. Then it waits for the destination's rate limit
//!    and circuit breaker, renders, sends (`send`), and judges the answer.
//! 4. A failure worth retrying waits (exponential backoff with jitter, or what
//!    `Retry-After` asked) and tries again; a retry that could only happen after the
//!    deadline ends the delivery `expired` at once. A permanent refusal, or the last
//!    attempt failing, ends it `dead`.
//! 5. The recorder writes the outcome to `deliveries` (journaled), then acknowledges the
//!    entry, or moves it to `webhook-deliveries:dead` with its reason. Until then the
//!    entry stays pending in Redis: a forwarder killed at any point sends it again when
//!    it comes back (its consumer name is stable), and the receiver can tell the repeat
//!    by its `webhook-id`.
//!
//! **Order rule: a later signal waits.** While a delivery is being retried, the ones
//! behind it in its lane wait; they go once it is delivered, expired or dead. Since every
//! delivery has a deadline, the wait is bounded by the maximum age. The alternative,
//! letting the later one overtake, could send "close" before the "buy" it closes.

pub mod outbox;
pub mod render;
pub mod send;
pub mod sign;

mod lane;
mod record;

pub use lane::Forwarder;
pub use outbox::Replay;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ingest::Alert, route::Match, signal::Signal};

/// One delivery, as the stream carries it (JSON in the field `job`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<event id>:<route>:<destination>`: the `deliveries` record's `_id` and the
    /// `webhook-id` a receiver sees.
    pub id: String,
    pub event: String,
    pub route: String,
    pub destination: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticker: Option<String>,
    /// Milliseconds since the epoch.
    pub received_at: i64,
    /// After this (milliseconds since the epoch) the delivery is never sent; `None` for a
    /// replay "as it was".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    pub signal: Value,
    /// The JSON the alert carried, without its passphrase, or its text.
    #[serde(default)]
    pub alert: Value,
    /// Set when an operator replayed it (read from the entry, not stored in the job).
    #[serde(skip)]
    pub replay: Option<Replay>,
}

impl Job {
    /// The deliveries a processed alert owes.
    pub fn for_matches(alert: &Alert, signal: &Signal, matches: &[Match<'_>]) -> Vec<Job> {
        if matches.is_empty() {
            return Vec::new();
        }
        let signal_json = signal.to_json();
        let alert_json = match &alert.json {
            Some(json) => json.clone(),
            None => Value::String(alert.body.clone()),
        };
        let received_at = alert.received_at.timestamp_millis();
        matches
            .iter()
            .map(|m| Job {
                id: format!("{}:{}:{}", alert.id, m.route.name, m.destination.name),
                event: alert.id.to_string(),
                route: m.route.name.clone(),
                destination: m.destination.name.clone(),
                source: alert.source.clone(),
                ticker: signal.ticker.clone(),
                received_at,
                deadline: Some(received_at + m.max_age.as_millis() as i64),
                signal: signal_json.clone(),
                alert: alert_json.clone(),
                replay: None,
            })
            .collect()
    }

    /// The lane it travels in: deliveries to one destination for one source and ticker
    /// go in order.
    fn lane(&self) -> (String, String, String) {
        (
            self.destination.clone(),
            self.source.clone(),
            self.ticker.clone().unwrap_or_default(),
        )
    }
}
