//! The recorder: writes each delivery's attempts and outcome to MongoDB `deliveries`, and
//! only then settles its stream entry (acknowledged, or moved to the dead letters).
//!
//! Writes go in batches, as the lanes finish, so that a busy forwarder makes one
//! round trip for many deliveries. Outcomes are written with the journaled write concern
//! (they end the entry); a failed attempt's `retrying` record is written without it (the
//! entry is still pending, and the next write supersedes it). While MongoDB is down the
//! batch is kept and retried, and the entries stay pending in Redis.

use std::time::Duration;

use bson::{Document, doc};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{
    Job,
    outbox::{Entry, Outbox},
};
use crate::{backoff::Backoff, store::Store};

/// How a delivery ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `at`: when the answer came, milliseconds since the epoch.
    Delivered {
        attempts: u32,
        code: u16,
        took: Duration,
        at: i64,
    },
    Expired {
        attempts: u32,
        code: Option<u16>,
        error: String,
    },
    Dead {
        attempts: u32,
        code: Option<u16>,
        error: String,
    },
    /// The entry held no readable job: dead-lettered, with no record (no id to key it).
    Unreadable { reason: String },
}

impl Outcome {
    fn status(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Expired { .. } => "expired",
            Outcome::Dead { .. } | Outcome::Unreadable { .. } => "dead",
        }
    }
}

/// A failed attempt, with the next one planned.
#[derive(Debug, Clone)]
pub struct Update {
    pub job: Job,
    pub attempts: u32,
    pub code: Option<u16>,
    pub error: String,
    pub next_attempt_at: i64,
}

enum Message {
    Finished(
        Entry,
        Outcome,
        OwnedSemaphorePermit,
        chrono::DateTime<chrono::Utc>,
    ),
    /// Read again after a restart, and already recorded as delivered: acknowledge only.
    Recorded(Entry, OwnedSemaphorePermit),
    Retrying(Update, chrono::DateTime<chrono::Utc>),
    Breaker(String, &'static str, Option<String>),
}

/// The lanes' handle on the recorder.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Message>,
}

/// Most outcomes written in one command.
const BATCH: usize = 500;

impl Recorder {
    pub fn spawn(outbox: Outbox, store: Store, in_hand: InHand) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, outbox, store, in_hand));
        Recorder { tx }
    }

    pub fn finish(&self, entry: Entry, outcome: Outcome, permit: OwnedSemaphorePermit) {
        let _ = self.tx.send(Message::Finished(
            entry,
            outcome,
            permit,
            chrono::Utc::now(),
        ));
    }

    pub fn settle_recorded(&self, entry: Entry, permit: OwnedSemaphorePermit) {
        let _ = self.tx.send(Message::Recorded(entry, permit));
    }

    pub fn update(&self, update: Update) {
        let _ = self.tx.send(Message::Retrying(update, chrono::Utc::now()));
    }

    pub fn breaker(&self, destination: &str, state: &'static str, error: Option<String>) {
        let _ = self
            .tx
            .send(Message::Breaker(destination.to_owned(), state, error));
    }
}

/// The stream entries a forwarder holds.
pub type InHand = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    outbox: Outbox,
    store: Store,
    in_hand: InHand,
) {
    let mut buffer = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buffer, BATCH).await > 0 {
        let mut finished = Vec::new();
        let mut statements = Vec::new();
        let mut progress = Vec::new();
        let mut breakers = Vec::new();
        for message in buffer.drain(..) {
            match message {
                Message::Finished(entry, outcome, permit, at) => {
                    if let Ok(job) = &entry.job
                        && !matches!(outcome, Outcome::Unreadable { .. })
                    {
                        statements.push(outcome_statement(job, &outcome, at));
                    }
                    finished.push((entry, Some(outcome), permit));
                }
                Message::Recorded(entry, permit) => finished.push((entry, None, permit)),
                Message::Retrying(update, at) => progress.push(retry_statement(&update, at)),
                Message::Breaker(destination, state, error) => {
                    breakers.push((destination, state, error))
                }
            }
        }
        if !breakers.is_empty() {
            let mut conn = outbox.connection();
            let mut pipe = redis::pipe();
            for (destination, state, error) in &breakers {
                let value = serde_json::json!({
                    "state": state,
                    "since": chrono::Utc::now().timestamp_millis(),
                    "error": error,
                });
                pipe.hset(crate::stats::BREAKERS, destination, value.to_string())
                    .ignore();
            }
            if let Err(err) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %err, "breaker state not published");
            }
        }
        if !progress.is_empty()
            && let Err(err) = store.record_deliveries(progress, false).await
        {
            tracing::debug!(error = %err, "retrying deliveries not recorded");
        }
        if finished.is_empty() {
            continue;
        }
        // Outcomes are the promise: written, then settled, however long MongoDB and
        // Redis take to come back.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        if !statements.is_empty() {
            let (documents, updates): (Vec<Document>, Vec<Document>) =
                statements.into_iter().unzip();
            while let Err(err) = store
                .record_outcomes(documents.clone(), updates.clone())
                .await
            {
                tracing::warn!(error = %err, "delivery outcomes not recorded; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
        let delivered: Vec<&str> = finished
            .iter()
            .filter(|(_, o, _)| matches!(o, None | Some(Outcome::Delivered { .. })))
            .map(|(e, _, _)| e.entry.as_str())
            .collect();
        let dead: Vec<(&Entry, &str, &str, u32)> = finished
            .iter()
            .filter_map(|(entry, outcome, _)| match outcome {
                Some(Outcome::Expired {
                    attempts, error, ..
                }) => Some((entry, "expired", error.as_str(), *attempts)),
                Some(Outcome::Dead {
                    attempts, error, ..
                }) => Some((entry, "dead", error.as_str(), *attempts)),
                Some(Outcome::Unreadable { reason }) => Some((entry, "dead", reason.as_str(), 0)),
                _ => None,
            })
            .collect();
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for (entry, outcome, _) in &finished {
            if let (Ok(job), Some(outcome)) = (&entry.job, outcome) {
                *counts
                    .entry(format!("{}:{}", job.destination, outcome.status()))
                    .or_default() += 1;
                let attempts = match outcome {
                    Outcome::Delivered { attempts, .. }
                    | Outcome::Expired { attempts, .. }
                    | Outcome::Dead { attempts, .. } => *attempts,
                    Outcome::Unreadable { .. } => 0,
                };
                *counts
                    .entry(format!("{}:attempts", job.destination))
                    .or_default() += i64::from(attempts);
                if let Outcome::Delivered { at, .. } = outcome {
                    let ms = at - job.received_at;
                    *counts.entry("~latency:count".to_owned()).or_default() += 1;
                    *counts.entry("~latency:sum_ms".to_owned()).or_default() += ms.max(0);
                    for bound in crate::stats::LAG_BUCKETS {
                        if ms as f64 <= bound * 1000.0 {
                            *counts.entry(format!("~latency:le_{bound}")).or_default() += 1;
                        }
                    }
                }
            }
        }
        let counts: Vec<(String, i64)> = counts.into_iter().collect();
        while let Err(err) = outbox.settle(&delivered, &dead, &counts).await {
            tracing::warn!(error = %err, "deliveries recorded but not settled in Redis; retrying");
            tokio::time::sleep(backoff.next_wait()).await;
        }
        let mut held = in_hand.lock().expect("in-hand lock");
        for (entry, outcome, _permit) in &finished {
            held.remove(&entry.entry);
            log(entry, outcome.as_ref());
        }
    }
}

fn log(entry: &Entry, outcome: Option<&Outcome>) {
    let Ok(job) = &entry.job else {
        return;
    };
    match outcome {
        Some(Outcome::Delivered {
            attempts,
            code,
            took,
            at,
        }) => {
            tracing::debug!(target: crate::telemetry::ALERTS, delivery = %job.id, destination = %job.destination, status = "delivered", attempts, code, took_ms = took.as_millis() as u64, lag_ms = at - job.received_at, "delivered");
        }
        Some(Outcome::Expired {
            attempts, error, ..
        }) => {
            tracing::warn!(delivery = %job.id, destination = %job.destination, status = "expired", attempts, error, "delivery expired: not sent late");
        }
        Some(Outcome::Dead {
            attempts, error, ..
        }) => {
            tracing::error!(delivery = %job.id, destination = %job.destination, status = "dead", attempts, error, "delivery dead");
        }
        _ => {}
    }
}

fn fixed(job: &Job) -> Document {
    let mut fields = doc! {
        "event": &job.event,
        "route": &job.route,
        "destination": &job.destination,
        "source": &job.source,
        "received_at": bson::DateTime::from_millis(job.received_at),
    };
    if let Some(ticker) = &job.ticker {
        fields.insert("ticker", ticker);
    }
    if let Some(deadline) = job.deadline {
        fields.insert("deadline", bson::DateTime::from_millis(deadline));
    }
    fields
}

/// An outcome as a new record, and as the update of an existing one.
fn outcome_statement(
    job: &Job,
    outcome: &Outcome,
    at: chrono::DateTime<chrono::Utc>,
) -> (Document, Document) {
    let at = bson::DateTime::from_chrono(at);
    let mut set = doc! { "status": outcome.status(), "finished_at": at };
    let mut unset = doc! { "next_attempt_at": "" };
    let attempts = match outcome {
        Outcome::Delivered {
            attempts,
            code,
            took,
            at: answered,
        } => {
            set.insert("last_code", i32::from(*code));
            set.insert("send_ms", took.as_millis() as i64);
            set.insert("latency_ms", answered - job.received_at);
            unset.insert("last_error", "");
            *attempts
        }
        Outcome::Expired {
            attempts,
            code,
            error,
        }
        | Outcome::Dead {
            attempts,
            code,
            error,
        } => {
            set.insert("last_error", error);
            if let Some(code) = code {
                set.insert("last_code", i32::from(*code));
            }
            *attempts
        }
        Outcome::Unreadable { .. } => 0,
    };
    set.insert("attempts", i64::from(attempts));
    if attempts > 0 {
        set.insert("last_attempt_at", at);
    }
    if let Some(replay) = job.replay {
        set.insert("replay", replay.as_str());
    }
    let mut document = fixed(job);
    document.insert("_id", &job.id);
    document.extend(set.clone());
    let update = doc! {
        "q": { "_id": &job.id },
        "u": { "$set": set, "$unset": unset, "$setOnInsert": fixed(job) },
        "upsert": true,
    };
    (document, update)
}

fn retry_statement(update: &Update, at: chrono::DateTime<chrono::Utc>) -> Document {
    let mut set = doc! {
        "status": "retrying",
        "attempts": i64::from(update.attempts),
        "last_error": &update.error,
        "last_attempt_at": bson::DateTime::from_chrono(at),
        "next_attempt_at": bson::DateTime::from_millis(update.next_attempt_at),
    };
    if let Some(code) = update.code {
        set.insert("last_code", i32::from(code));
    }
    doc! {
        "q": { "_id": &update.job.id },
        "u": { "$set": set, "$setOnInsert": fixed(&update.job) },
        "upsert": true,
    }
}
