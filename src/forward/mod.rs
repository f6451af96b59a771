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
use serde_json::{Value, value::RawValue};

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
    pub signal: RawJson,
    /// The JSON the alert carried, without its passphrase, or its text.
    #[serde(default)]
    pub alert: RawJson,
    /// Set when an operator replayed it (read from the entry, not stored in the job).
    #[serde(skip)]
    pub replay: Option<Replay>,
}

/// JSON kept as the text the worker wrote, read into values only where a delivery needs
/// them (a template, a chat message, a replay, a placeholder to report). The default
/// `http` body, most deliveries, embeds the text as it is, so the forwarder does not
/// build and free a tree of the signal and the alert per delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The JSON text, as the job holds it (compact, as serde_json writes it).
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a value. The worker wrote it from a value, so it reads; the error is
    /// for a job written by hand.
    pub fn value(&self) -> Result<Value, String> {
        serde_json::from_str(self.get()).map_err(|e| e.to_string())
    }
}

impl From<&Value> for RawJson {
    fn from(value: &Value) -> RawJson {
        RawJson(serde_json::value::to_raw_value(value).expect("JSON values always serialize"))
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> RawJson {
        RawJson::from(&value)
    }
}

/// A job written before jobs carried the alert has `null` for it.
impl Default for RawJson {
    fn default() -> RawJson {
        RawJson::from(Value::Null)
    }
}

/// The same text: the worker writes one value one way.
impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

/// A delivery as the worker queues it: its id, and its job as the stream carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: String,
    pub job: String,
}

/// A `Job` as it is written, borrowing from the alert: the same JSON, without copying
/// the signal and the alert into a job first.
#[derive(Serialize)]
struct Outgoing<'a> {
    id: &'a str,
    event: &'a str,
    route: &'a str,
    destination: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticker: Option<&'a str>,
    received_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    signal: &'a Signal,
    alert: Carried<'a>,
}

/// What the alert carried: its JSON, or its text.
#[derive(Clone, Copy)]
enum Carried<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl Serialize for Carried<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Carried::Json(value) => value.serialize(serializer),
            Carried::Text(text) => serializer.serialize_str(text),
        }
    }
}

impl Job {
    /// The deliveries a processed alert owes, ready to queue.
    pub fn queue(alert: &Alert, signal: &Signal, matches: &[Match<'_>]) -> Vec<Queued> {
        if matches.is_empty() {
            return Vec::new();
        }
        let event = alert.id.text();
        let event = event.as_str();
        let carried = match &alert.json {
            Some(json) => Carried::Json(json),
            None => Carried::Text(&alert.body),
        };
        let received_at = alert.received_at.timestamp_millis();
        matches
            .iter()
            .map(|m| {
                let id = format!("{event}:{}:{}", m.route.name, m.destination.name);
                let job = serde_json::to_string(&Outgoing {
                    id: &id,
                    event,
                    route: &m.route.name,
                    destination: &m.destination.name,
                    source: &alert.source,
                    ticker: signal.ticker.as_deref(),
                    received_at,
                    deadline: Some(received_at + m.max_age.as_millis() as i64),
                    signal,
                    alert: carried,
                })
                .expect("a job always serializes");
                Queued { id, job }
            })
            .collect()
    }

    /// The lane it travels in: deliveries to one destination for one source and ticker
    /// go in order. Written into `key` (the caller's buffer, so that looking up a lane
    /// that exists copies nothing) as `<destination>\n<source>\n<ticker>`: names hold
    /// no line break (`route::check_name`), so the ticker, last, may hold anything.
    fn lane_key(&self, key: &mut String) {
        key.clear();
        key.push_str(&self.destination);
        key.push('\n');
        key.push_str(&self.source);
        key.push('\n');
        key.push_str(self.ticker.as_deref().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        domain::{AlertKind, EventId},
        route::{Kind, RawDestination, RawRoute, Routing},
    };

    fn alert(json: Option<Value>, body: &str) -> Alert {
        Alert {
            id: EventId::new(),
            source: "tradingview".into(),
            received_at: chrono::DateTime::from_timestamp_millis(1_764_400_000_123).unwrap(),
            kind: if json.is_some() {
                AlertKind::Json
            } else {
                AlertKind::Text
            },
            content_type: "application/json".into(),
            body: body.into(),
            json,
            dedup_key: None,
            sender: None,
        }
    }

    /// One lane per destination, source and ticker: a key for each, whatever the
    /// ticker holds, and the buffer holds only the last key written.
    #[test]
    fn a_lane_key_tells_destination_source_and_ticker_apart() {
        let job = |destination: &str, source: &str, ticker: Option<&str>| Job {
            id: String::new(),
            event: String::new(),
            route: "all".into(),
            destination: destination.into(),
            source: source.into(),
            ticker: ticker.map(str::to_owned),
            received_at: 0,
            deadline: None,
            signal: RawJson::default(),
            alert: RawJson::default(),
            replay: None,
        };
        let jobs = [
            job("hook", "tv", Some("BTCUSDT")),
            job("hook", "tv", Some("ETHUSDT")),
            job("hook", "tv", Some("BTCUSDT\nx")),
            job("hook", "tv", Some("")),
            job("hook", "tv", None),
            job("hook", "tv2", Some("BTCUSDT")),
            job("chat", "tv", Some("BTCUSDT")),
        ];
        let mut key = String::from("left over from before");
        let keys: Vec<String> = jobs
            .iter()
            .map(|j| {
                j.lane_key(&mut key);
                key.clone()
            })
            .collect();
        assert_eq!(keys[0], "hook\ntv\nBTCUSDT");
        // No ticker and an empty one are the same lane; every other pair differs.
        assert_eq!(keys[3], keys[4]);
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len() - 1, "{keys:?}");
    }

    /// The job the forwarder reads is the alert's, field for field.
    #[test]
    fn a_queued_job_reads_back_as_the_alert_and_route_made_it() {
        let routing = Routing::from_raw(
            &[RawRoute::example("btc", &["chat", "hook"])],
            &BTreeMap::from([
                ("chat".to_owned(), RawDestination::example(Kind::Telegram)),
                ("hook".to_owned(), RawDestination::example(Kind::Http)),
            ]),
            &["tradingview".to_owned()],
            None,
        )
        .unwrap();
        let body = r#"{"ticker": "BTCUSDT", "action": "buy", "price": 96412.5, "note": "a \"b\""}"#;
        let json: Value = serde_json::from_str(body).unwrap();
        for alert in [
            alert(Some(json), body),
            alert(None, "BTCUSDT crossed 96,000"),
        ] {
            let signal = match &alert.json {
                Some(json) => Signal::from_json(json).unwrap(),
                None => Signal::from_text(&alert.body),
            };
            let matches = routing.matches(&alert.source, &signal);
            assert_eq!(matches.len(), 2);
            let queued = Job::queue(&alert, &signal, &matches);
            assert_eq!(queued.len(), 2);
            for (q, m) in queued.iter().zip(&matches) {
                let read: Job = serde_json::from_str(&q.job).unwrap();
                let received_at = alert.received_at.timestamp_millis();
                let expected = Job {
                    id: format!("{}:{}:{}", alert.id, m.route.name, m.destination.name),
                    event: alert.id.to_string(),
                    route: m.route.name.clone(),
                    destination: m.destination.name.clone(),
                    source: alert.source.clone(),
                    ticker: signal.ticker.clone(),
                    received_at,
                    deadline: Some(received_at + m.max_age.as_millis() as i64),
                    signal: signal.to_json().into(),
                    alert: alert
                        .json
                        .clone()
                        .unwrap_or_else(|| Value::String(alert.body.clone()))
                        .into(),
                    replay: None,
                };
                assert_eq!(read, expected);
                assert_eq!(q.id, expected.id);
            }
        }
    }
}
