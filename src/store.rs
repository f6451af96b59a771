//! The record: MongoDB collections `audit` (every alert as received) and `jobs` (the result
//! of processing each alert), both keyed by event id.
//!
//! Only what both MongoDB and FerretDB support is used: single and multi-document inserts,
//! and single-statement updates. A parsed JSON body is stored as a
//! document when it can be (MongoDB-compatible servers refuse some keys, and FerretDB
//! refuses arrays nested in arrays); otherwise the record says why, and the raw body, which
//! is always stored, still holds everything.

use std::time::Duration;

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use mongodb::{
    Client, Collection, Database,
    error::{Error as MongoError, ErrorKind, WriteFailure},
    options::ClientOptions,
};
use serde_json::Value;

use crate::{domain::EventId, ingest::Alert, signal::Signal};

pub const AUDIT: &str = "audit";
pub const JOBS: &str = "jobs";

/// Duplicate key, as MongoDB and FerretDB both report it.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] MongoError),
    #[error("mongodb did not answer within {0:?}")]
    Timeout(Duration),
    #[error("mongodb refused a write: {0}")]
    Refused(String),
}

/// How an alert ended up on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    Queued { entry: String },
    Duplicate { first: String },
}

/// One job's outcome, for the `jobs` collection: its signal, or why it can never have one.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: EventId,
    pub result: Result<Signal, String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub entry: String,
    pub worker: String,
}

/// A processed job: the alert it carried (with its body parsed, for JSON) and the outcome.
#[derive(Debug, Clone)]
pub struct Processed {
    pub outcome: Outcome,
    pub alert: Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Processed,
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processed => "processed",
            JobStatus::Dead => "dead",
        }
    }
}

impl Outcome {
    pub fn status(&self) -> JobStatus {
        match self.result {
            Ok(_) => JobStatus::Processed,
            Err(_) => JobStatus::Dead,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    timeout: Duration,
}

impl Store {
    /// Connects lazily: the driver finds the server on first use. `timeout` bounds every
    /// operation, including finding a server when none answers.
    pub async fn connect(uri: &str, db: &str, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "pyron".to_owned());
        options.server_selection_timeout = Some(timeout);
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(1));
        let client = Client::with_options(options)?;
        Ok(Store {
            db: client.database(db),
            timeout,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.db.run_command(doc! { "ping": 1 }))
            .await?;
        Ok(())
    }

    /// Writes the audit record of an alert. Writing the same alert twice is not an error,
    /// so a retry after a lost reply does no harm. Not bounded by the timeout: the caller
    /// decides how long to wait, and should let the write finish rather than abandon it
    /// mid-flight (which FerretDB's SQLite backend handles badly).
    pub async fn insert_audit(&self, alert: &Alert, arrival: Arrival) -> Result<(), StoreError> {
        let mut record = audit_record(alert);
        match arrival {
            Arrival::Queued { entry } => {
                record.insert("status", "queued");
                record.insert("entry", entry);
            }
            Arrival::Duplicate { first } => {
                record.insert("status", "duplicate");
                record.insert("duplicate_of", first);
            }
        }
        let audit: Collection<Document> = self.db.collection(AUDIT);
        match audit.insert_one(record).await.map_err(StoreError::from) {
            Err(StoreError::Mongo(err)) if is_duplicate_key(&err) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Records a batch of outcomes, one `jobs` document per event id whatever the number of
    /// deliveries, and makes sure each alert also has its audit record (it is missing when
    /// MongoDB was down as the alert arrived).
    ///
    /// The common case, a first delivery, is one multi-document insert per collection. A
    /// redelivered job already has its record, so its insert fails with a duplicate key and
    /// that record alone is then updated. (Many upsert statements in one `update` command
    /// would be simpler, but FerretDB 1.x holds a cursor open per matching statement until
    /// the command ends, and a batch of them exhausts its SQLite pool and stalls.)
    pub async fn record(&self, batch: &[Processed]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let jobs: Vec<Document> = batch.iter().map(|p| job_document(&p.outcome)).collect();
        for index in self.insert_many(JOBS, jobs).await? {
            let update = job_update(&batch[index].outcome);
            let reply = self
                .bounded(
                    self.db
                        .run_command(doc! { "update": JOBS, "updates": [update] }),
                )
                .await?;
            refused(&reply, false)?;
        }
        let audits: Vec<Document> = batch
            .iter()
            .map(|Processed { alert, .. }| {
                let mut record = audit_record(alert);
                record.insert("status", "queued");
                record
            })
            .collect();
        // Existing audit records are what this write makes sure of, so duplicates are fine.
        self.insert_many(AUDIT, audits).await?;
        Ok(())
    }

    /// Inserts documents unordered; returns the indexes of those whose `_id` existed.
    async fn insert_many(
        &self,
        collection: &str,
        documents: Vec<Document>,
    ) -> Result<Vec<usize>, StoreError> {
        let reply = self
            .bounded(self.db.run_command(doc! {
                "insert": collection,
                "documents": documents,
                "ordered": false,
            }))
            .await?;
        refused(&reply, true)?;
        let existing = write_errors(&reply)
            .iter()
            .filter_map(|e| e.as_document()?.get_i32("index").ok())
            .map(|i| i as usize)
            .collect();
        Ok(existing)
    }

    async fn bounded<T>(
        &self,
        op: impl IntoFuture<Output = Result<T, MongoError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op.into_future()).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

fn audit_record(alert: &Alert) -> Document {
    let mut record = doc! {
        "_id": alert.id.to_string(),
        "received_at": bson::DateTime::from_chrono(alert.received_at),
        "kind": alert.kind.as_str(),
        "content_type": &alert.content_type,
        "body": &alert.body,
    };
    if let Some(json) = &alert.json {
        match to_bson(json, 0) {
            Ok(value) => {
                record.insert("json", value);
            }
            Err(why) => {
                record.insert("json_note", format!("parsed JSON kept in body only: {why}"));
            }
        }
    }
    if let Some(sender) = &alert.sender {
        record.insert("sender", sender);
    }
    if let Some(key) = &alert.dedup_key {
        record.insert("dedup_key", key);
    }
    record
}

fn write_errors(reply: &Document) -> &[Bson] {
    reply
        .get_array("writeErrors")
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The first write error, unless it is a duplicate key and those are expected.
fn refused(reply: &Document, duplicates_expected: bool) -> Result<(), StoreError> {
    let refused = write_errors(reply).iter().find(|e| {
        let code = e.as_document().and_then(|d| d.get_i32("code").ok());
        !(duplicates_expected && code == Some(DUPLICATE_KEY))
    });
    match refused {
        Some(error) => Err(StoreError::Refused(error.to_string())),
        None => Ok(()),
    }
}

/// The `jobs` record of a first delivery.
fn job_document(outcome: &Outcome) -> Document {
    let mut document = job_fields(outcome);
    document.insert("_id", outcome.id.to_string());
    document.insert("attempts", 1_i64);
    match &outcome.result {
        Ok(signal) => document.insert("signal", signal_document(signal)),
        Err(error) => document.insert("error", error),
    };
    document
}

fn job_fields(outcome: &Outcome) -> Document {
    doc! {
        "status": outcome.status().as_str(),
        "received_at": bson::DateTime::from_chrono(outcome.received_at),
        "processed_at": bson::DateTime::from_chrono(outcome.processed_at),
        "lag_ms": (outcome.processed_at - outcome.received_at).num_milliseconds(),
        "entry": &outcome.entry,
        "worker": &outcome.worker,
    }
}

/// The update statement that rewrites a redelivered job's record in place.
fn job_update(outcome: &Outcome) -> Document {
    let mut set = job_fields(outcome);
    let unset = match &outcome.result {
        Ok(signal) => {
            set.insert("signal", signal_document(signal));
            "error"
        }
        Err(error) => {
            set.insert("error", error);
            "signal"
        }
    };
    let update = doc! { "$set": set, "$unset": { unset: "" }, "$inc": { "attempts": 1_i64 } };
    doc! { "q": { "_id": outcome.id.to_string() }, "u": update, "upsert": true }
}

/// The signal with its time as a BSON date, so it sorts and filters as one.
fn signal_document(signal: &Signal) -> Document {
    let mut document = Document::new();
    let strings = [
        ("ticker", &signal.ticker),
        ("exchange", &signal.exchange),
        ("interval", &signal.interval),
        ("action", &signal.action),
        ("strategy", &signal.strategy),
        ("text", &signal.text),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            document.insert(key, value);
        }
    }
    for (key, value) in [("price", signal.price), ("quantity", signal.quantity)] {
        if let Some(value) = value {
            document.insert(key, value);
        }
    }
    if let Some(time) = signal.alert_time {
        document.insert("alert_time", bson::DateTime::from_chrono(time));
    }
    document
}

/// JSON to BSON within what every MongoDB-compatible server stores.
fn to_bson(value: &Value, array_depth: usize) -> Result<Bson, String> {
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => {
            if array_depth > 0 {
                return Err("an array inside an array".into());
            }
            let items: Result<Vec<Bson>, String> =
                items.iter().map(|v| to_bson(v, array_depth + 1)).collect();
            Bson::Array(items?)
        }
        Value::Object(map) => {
            let mut document = Document::new();
            for (key, value) in map {
                if key.starts_with('$') || key.contains('.') {
                    return Err(format!("the key {key:?} starts with '$' or holds '.'"));
                }
                document.insert(key.clone(), to_bson(value, 0)?);
            }
            Bson::Document(document)
        }
    })
}

fn is_duplicate_key(err: &MongoError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn portable_json_becomes_a_document() {
        let value = json!({"a": 1, "b": [1, {"c": [2]}], "big": 18446744073709551615_u64});
        let bson = to_bson(&value, 0).unwrap();
        let doc = bson.as_document().unwrap();
        assert_eq!(doc.get_i64("a").unwrap(), 1);
        assert!(matches!(doc.get("big"), Some(Bson::Double(_))));
    }

    #[test]
    fn unportable_json_is_refused_with_a_reason() {
        assert!(to_bson(&json!({"a.b": 1}), 0).unwrap_err().contains("a.b"));
        assert!(to_bson(&json!({"x": {"$where": 1}}), 0).is_err());
        assert!(
            to_bson(&json!({"m": [[1, 2]]}), 0)
                .unwrap_err()
                .contains("array inside")
        );
    }
}
