//! The record: MongoDB collections `audit` (every alert as received) and `jobs` (the result
//! of processing each alert), both keyed by event id.
//!
//! Only what both MongoDB and FerretDB support is used: single and multi-document inserts,
//! and single-statement updates. A parsed JSON body is stored as a
//! document when it can be (MongoDB-compatible servers refuse some keys, and FerretDB
//! refuses arrays nested in arrays); otherwise the record says why, and the raw body, which
//! is always stored, still holds everything.
//!
//! Two writes here make a promise that outlives the process: an audit record written
//! while Redis is down (pyron-api answers 202 on it), and a worker's `jobs` and audit
//! records (the worker acknowledges the stream entry on them, and the job is gone from
//! Redis). Those ask MongoDB to have the write in its journal before it answers (`j:
//! true`), and on a replica set a majority of members to have it (`w: "majority"`), so a
//! crash of `mongod` right after the answer cannot take back what was promised. The
//! batched audit writes of queued alerts make no promise (the job in Redis holds the
//! alert) and take the server's default.

use std::time::Duration;

use bson::{Bson, Document, RawArrayBuf, RawBson, RawDocumentBuf, doc};
use chrono::{DateTime, Utc};
use mongodb::{
    Client, Collection, Database,
    error::{Error as MongoError, ErrorKind},
    options::{Acknowledgment, ClientOptions, WriteConcern},
};
use serde_json::Value;

use crate::{domain::EventId, ingest::Alert, signal::Signal};

pub const AUDIT: &str = "audit";
pub const JOBS: &str = "jobs";
pub const DELIVERIES: &str = "deliveries";

/// How often the driver checks on the server when no operation is under way.
const HEARTBEAT: Duration = Duration::from_secs(1);

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
    #[error("mongodb did not confirm the write as durable: {0}")]
    Unconfirmed(String),
}

/// Server error codes that mean "not now" rather than "not this document": shutting
/// down, stepping down, no primary, interrupted.
const UNAVAILABLE_CODES: [i32; 11] = [6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436];

impl StoreError {
    /// Whether MongoDB could not be reached or did not answer, as opposed to answering
    /// and refusing this particular write. An outage is waited out; a refusal counts
    /// against the job.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Unconfirmed(_) => true,
            StoreError::Refused(_) => false,
            StoreError::Mongo(err) => match err.kind.as_ref() {
                ErrorKind::Command(e) => UNAVAILABLE_CODES.contains(&e.code),
                ErrorKind::Write(_)
                | ErrorKind::InsertMany(_)
                | ErrorKind::BulkWrite(_)
                | ErrorKind::InvalidArgument { .. }
                | ErrorKind::BsonSerialization(_)
                | ErrorKind::BsonDeserialization(_) => false,
                _ => true,
            },
        }
    }
}

/// How an alert ended up on arrival: its audit record's `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// In the stream, as this entry (the entry is unknown when the worker writes it).
    Queued { entry: Option<String> },
    /// A repeat of `first` under the same idempotency key.
    Duplicate { first: String },
    /// Redis could not take it: MongoDB holds it alone until the reconciler queues it.
    /// Stored as the status `unqueued`.
    KeptInMongo,
}

impl Arrival {
    pub fn status(&self) -> &'static str {
        match self {
            Arrival::Queued { .. } => "queued",
            Arrival::Duplicate { .. } => "duplicate",
            Arrival::KeptInMongo => UNQUEUED,
        }
    }
}

/// The audit status of an alert that only MongoDB holds.
pub const UNQUEUED: &str = "unqueued";

/// One job's outcome, for the `jobs` collection: its signal, or why it can never have one.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: EventId,
    /// The source that sent the alert.
    pub source: String,
    pub result: Result<Signal, String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub entry: String,
    pub worker: String,
}

/// What a worker writes for one stream entry: its outcome unless the alert is a
/// duplicate, and the alert's audit record when pyron-api may not have written it.
#[derive(Debug, Clone)]
pub struct Record {
    pub alert: Alert,
    pub arrival: Arrival,
    pub outcome: Option<Outcome>,
}

/// A job's status in `jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Processed,
    /// Its last attempt failed; another follows.
    Retrying,
    /// It can never be processed, or ran out of attempts: see `webhook-jobs:dead`.
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processed => "processed",
            JobStatus::Retrying => "retrying",
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

/// One alert as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: String,
    pub received_at: Option<DateTime<Utc>>,
    pub kind: String,
    /// The job's status when it has one, else the audit's (`queued`, `duplicate`,
    /// `unqueued`).
    pub status: String,
    pub ticker: Option<String>,
    pub action: Option<String>,
    pub price: Option<f64>,
    pub lag_ms: Option<i64>,
    pub error: Option<String>,
    /// The start of a text alert's message, for a text that gives no ticker.
    pub text: Option<String>,
    /// For a duplicate, the event id of the alert it repeats.
    pub duplicate_of: Option<String>,
    /// The source whose secret it carried.
    pub source: Option<String>,
    /// What became of its deliveries (filled by the dashboard).
    pub deliveries: Vec<DeliveryRow>,
}

/// One delivery as the dashboard and the admin API list it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    pub id: String,
    pub event: String,
    pub route: String,
    pub destination: String,
    pub source: Option<String>,
    pub ticker: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub last_code: Option<i32>,
    pub last_error: Option<String>,
    /// Receipt to delivery, for a delivered one.
    pub latency_ms: Option<i64>,
    pub received_at: Option<DateTime<Utc>>,
    pub replay: Option<String>,
}

impl DeliveryRow {
    fn from_document(d: &Document) -> Option<DeliveryRow> {
        let text = |k: &str| d.get_str(k).ok().map(str::to_owned);
        Some(DeliveryRow {
            id: text("_id")?,
            event: text("event")?,
            route: text("route")?,
            destination: text("destination")?,
            source: text("source"),
            ticker: text("ticker"),
            status: text("status")?,
            attempts: d.get_i64("attempts").unwrap_or(0),
            last_code: d.get_i32("last_code").ok(),
            last_error: text("last_error"),
            latency_ms: d.get_i64("latency_ms").ok(),
            received_at: d.get_datetime("received_at").ok().map(|t| t.to_chrono()),
            replay: text("replay"),
        })
    }
}

/// How much of a text alert's message the list of recent alerts shows.
const TEXT_PREVIEW_CHARS: usize = 120;

/// A failed attempt at a job, for its `jobs` record.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub id: EventId,
    pub received_at: DateTime<Utc>,
    pub entry: &'a str,
    pub worker: &'a str,
    pub error: &'a str,
    /// When the next attempt is due; `None` when this was the last one.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    timeout: Duration,
    durable: Durability,
}

/// The write concern of the writes that make a promise (see the module's doc).
#[derive(Clone)]
struct Durability {
    /// `w` as the connection string set it, if it did.
    configured: Option<Acknowledgment>,
    /// Set once the server says it is a replica set member (or the connection string
    /// names a set).
    replica_set: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Durability {
    fn concern(&self) -> WriteConcern {
        let majority = self.replica_set.load(std::sync::atomic::Ordering::Relaxed);
        let w = self.configured.clone().unwrap_or(if majority {
            Acknowledgment::Majority
        } else {
            Acknowledgment::Nodes(1)
        });
        WriteConcern::builder().w(w).journal(true).build()
    }

    fn document(&self) -> Document {
        let concern = self.concern();
        let w = match concern.w {
            Some(Acknowledgment::Nodes(n)) => Bson::Int64(i64::from(n)),
            Some(Acknowledgment::Majority) | None => Bson::String("majority".into()),
            Some(Acknowledgment::Custom(tag)) => Bson::String(tag),
            Some(other) => Bson::String(format!("{other:?}")),
        };
        doc! { "w": w, "j": true }
    }
}

impl Store {
    /// Connects lazily: the driver finds the server on first use. `timeout` bounds every
    /// operation, including finding a server when none answers.
    pub async fn connect(uri: &str, db: &str, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "pyron".to_owned());
        options.server_selection_timeout = Some(timeout);
        // A restarted server is seen within a second rather than the driver's ten, so
        // that alerts can be kept in MongoDB again as soon as it is back.
        options.heartbeat_freq.get_or_insert(HEARTBEAT);
        options.connect_timeout = Some(options.connect_timeout.unwrap_or(timeout).min(timeout));
        let durable = Durability {
            configured: options.write_concern.as_ref().and_then(|c| c.w.clone()),
            replica_set: std::sync::Arc::new(options.repl_set_name.is_some().into()),
        };
        let client = Client::with_options(options)?;
        Ok(Store {
            db: client.database(db),
            timeout,
            durable,
        })
    }

    /// Asks the server who it is: it answers, and says whether it is in a replica set
    /// (which decides the write concern of the writes that make a promise).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let hello = self
            .bounded(self.db.run_command(doc! { "hello": 1 }))
            .await?;
        if hello.get_str("setName").is_ok() {
            self.durable
                .replica_set
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The write concern that `j: true` writes carry, as sent to the server.
    pub fn durable_write_concern(&self) -> Document {
        self.durable.document()
    }

    /// Writes the audit records of alerts kept in MongoDB alone, journaled, in one
    /// unordered insert: pyron-api answers 202 on them when Redis is down. A record there
    /// already (a retry after a lost reply) counts as written. Bounded only by the
    /// driver's own server-selection timeout: the caller decides how long to wait, and
    /// should let the write finish rather than abandon it mid-flight (which FerretDB's
    /// SQLite backend handles badly). Answers per record, in order: written, or why
    /// MongoDB refused it. `Err`: nothing can be said of any of them.
    pub async fn insert_kept(
        &self,
        alerts: &[&Alert],
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        let documents = alerts
            .iter()
            .map(|a| audit_record(a, &Arrival::KeptInMongo));
        let errors = self
            .insert_many_unbounded(AUDIT, documents, Some(self.durable.document()))
            .await?;
        let mut written = vec![Ok(()); alerts.len()];
        for (index, e) in errors {
            if !e.duplicate {
                written[index] = Err(e.message);
            }
        }
        Ok(written)
    }

    /// Writes many audit records in one unordered insert; records that exist already are
    /// left as they are. Answers, for each record in order, whether this insert wrote it
    /// (false: it was there already).
    pub async fn insert_audits(&self, batch: &[(Alert, Arrival)]) -> Result<Vec<bool>, StoreError> {
        let documents = batch.iter().map(|(a, arrival)| audit_record(a, arrival));
        let errors = self.insert_many(AUDIT, documents, None).await?;
        if let Some((_, e)) = errors.iter().find(|(_, e)| !e.duplicate) {
            return Err(StoreError::Refused(e.message.clone()));
        }
        let mut written = vec![true; batch.len()];
        for (index, _) in errors {
            written[index] = false;
        }
        Ok(written)
    }

    /// Writes the `jobs` records of a batch, one per event id whatever the number of
    /// deliveries (records without an outcome, duplicates, have none).
    ///
    /// `Err` means MongoDB is unreachable and nothing can be said of the batch. Otherwise
    /// the answer has one verdict per record, in order: `None` when it is written (or
    /// needs no `jobs` record), or the reason MongoDB refused it.
    ///
    /// The common case, a first delivery, is one multi-document insert. A redelivered job
    /// already has its record, so its insert fails with a duplicate key and that record
    /// alone is then updated. (Many upsert statements in one `update` command would be
    /// simpler, but FerretDB 1.x holds a cursor open per matching statement until the
    /// command ends, and a batch of them exhausts its SQLite pool and stalls.)
    pub async fn record_jobs(&self, batch: &[Record]) -> Result<Verdicts, StoreError> {
        let jobs: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].outcome.is_some())
            .collect();
        let refused = together_then_one_by_one(&jobs, |which| self.insert_jobs(batch, which));
        Ok(verdicts(batch.len(), refused.await?))
    }

    async fn insert_jobs(
        &self,
        batch: &[Record],
        which: &[usize],
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let outcomes: Vec<(usize, &Outcome)> = which
            .iter()
            .filter_map(|&i| batch[i].outcome.as_ref().map(|o| (i, o)))
            .collect();
        let documents = outcomes.iter().map(|(_, o)| job_document(o));
        let mut refused = Vec::new();
        let durable = Some(self.durable.document());
        for (position, error) in self.insert_many(JOBS, documents, durable).await? {
            let (index, outcome) = outcomes[position];
            if !error.duplicate {
                refused.push((index, error.message));
                continue;
            }
            // A record exists: a redelivery, or an earlier attempt that failed.
            match self.update_durable(JOBS, job_update(outcome)).await {
                Ok(()) => {}
                Err(err) if err.is_outage() => return Err(err),
                Err(err) => refused.push((index, err.to_string())),
            }
        }
        Ok(refused)
    }

    /// Writes the audit records of the batch's records that are `unmarked` (those
    /// pyron-api may not have written: it was down, or MongoDB was, as they arrived);
    /// records that exist already are left as they are. Answers like `record_jobs`.
    pub async fn record_audits(
        &self,
        batch: &[Record],
        unmarked: &[bool],
    ) -> Result<Verdicts, StoreError> {
        let which: Vec<usize> = (0..batch.len()).filter(|&i| unmarked[i]).collect();
        let refused = together_then_one_by_one(&which, |which| async move {
            let documents = which
                .iter()
                .map(|&i| audit_record(&batch[i].alert, &batch[i].arrival));
            let durable = Some(self.durable.document());
            let errors = self.insert_many(AUDIT, documents, durable).await?;
            Ok(errors
                .into_iter()
                .filter(|(_, e)| !e.duplicate)
                .map(|(position, e)| (which[position], e.message))
                .collect())
        });
        Ok(verdicts(batch.len(), refused.await?))
    }

    /// Notes a failed attempt in the job's record: `retrying` with the error and when the
    /// next attempt is due, or `dead` after the last one. Counts the attempt.
    pub async fn record_failure(&self, failure: &Failure<'_>) -> Result<(), StoreError> {
        let status = match failure.next_attempt_at {
            Some(_) => JobStatus::Retrying,
            None => JobStatus::Dead,
        };
        let mut set = doc! {
            "status": status.as_str(),
            "received_at": bson::DateTime::from_chrono(failure.received_at),
            "entry": failure.entry,
            "worker": failure.worker,
            "last_error": failure.error,
            "updated_at": bson::DateTime::now(),
        };
        let mut unset = doc! { "processed_at": "", "lag_ms": "" };
        match failure.next_attempt_at {
            Some(at) => {
                set.insert("next_attempt_at", bson::DateTime::from_chrono(at));
            }
            None => {
                set.insert(
                    "error",
                    format!("gave up after repeated failures: {}", failure.error),
                );
                unset.insert("next_attempt_at", "");
            }
        }
        let update = doc! {
            "q": { "_id": failure.id.to_string() },
            "u": { "$set": set, "$unset": unset, "$inc": { "attempts": 1_i64 } },
            "upsert": true,
        };
        self.update_one(JOBS, update).await
    }

    /// The most recent alerts (newest first), each with its job's outcome when it has one.
    pub async fn recent(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        use futures_util::TryStreamExt;
        let audit: Collection<Document> = self.db.collection(AUDIT);
        let projection = doc! { "_id": 1, "received_at": 1, "status": 1, "kind": 1, "duplicate_of": 1, "body": 1, "source": 1 };
        let cursor = self
            .bounded(
                audit
                    .find(doc! {})
                    .sort(doc! { "_id": -1 })
                    .limit(limit)
                    .projection(projection),
            )
            .await?;
        let audits: Vec<Document> = self.bounded(cursor.try_collect()).await?;
        let ids: Vec<&str> = audits
            .iter()
            .filter_map(|a| a.get_str("_id").ok())
            .collect();
        let jobs: Collection<Document> = self.db.collection(JOBS);
        let cursor = self
            .bounded(jobs.find(doc! { "_id": { "$in": &ids } }))
            .await?;
        let jobs: Vec<Document> = self.bounded(cursor.try_collect()).await?;
        Ok(audits
            .iter()
            .map(|a| {
                let id = a.get_str("_id").unwrap_or_default();
                let job = jobs.iter().find(|j| j.get_str("_id") == Ok(id));
                let signal = job.and_then(|j| j.get_document("signal").ok());
                // A dead alert has no signal: show what its body said.
                let body = match signal {
                    Some(_) => None,
                    None => body_json(a),
                };
                let text = |k: &str| {
                    signal
                        .and_then(|s| s.get_str(k).ok())
                        .or_else(|| body.as_ref().and_then(|b| b.get(k)?.as_str()))
                        .map(str::to_owned)
                };
                let ticker = text("ticker");
                // A text alert that names no ticker shows the start of its message.
                let preview = (a.get_str("kind") == Ok("text") && ticker.is_none())
                    .then(|| a.get_str("body").ok())
                    .flatten()
                    .map(|body| preview(body, TEXT_PREVIEW_CHARS));
                EventRow {
                    id: id.to_owned(),
                    received_at: a.get_datetime("received_at").ok().map(|d| d.to_chrono()),
                    kind: a.get_str("kind").unwrap_or_default().to_owned(),
                    status: job
                        .and_then(|j| j.get_str("status").ok())
                        .or_else(|| a.get_str("status").ok())
                        .unwrap_or("received")
                        .to_owned(),
                    ticker,
                    action: text("action"),
                    price: signal.and_then(|s| s.get_f64("price").ok()),
                    lag_ms: job.and_then(|j| j.get_i64("lag_ms").ok()),
                    error: job
                        .and_then(|j| j.get_str("error").or_else(|_| j.get_str("last_error")).ok())
                        .map(str::to_owned),
                    text: preview,
                    duplicate_of: a.get_str("duplicate_of").ok().map(str::to_owned),
                    source: a.get_str("source").ok().map(str::to_owned),
                    deliveries: Vec::new(),
                }
            })
            .collect())
    }

    /// An alert's audit and `jobs` records, as relaxed extended JSON.
    pub async fn event(&self, id: &str) -> Result<(Option<Value>, Option<Value>), StoreError> {
        let audit: Collection<Document> = self.db.collection(AUDIT);
        let jobs: Collection<Document> = self.db.collection(JOBS);
        let a = self.bounded(audit.find_one(doc! { "_id": id })).await?;
        let j = self.bounded(jobs.find_one(doc! { "_id": id })).await?;
        let json = |d: Document| Bson::Document(d).into_relaxed_extjson();
        Ok((a.map(json), j.map(json)))
    }

    /// Creates the index the reconciler's query uses (`audit.status`). Idempotent.
    ///
    /// The dashboard's lookups in `deliveries` (an alert's deliveries, and the latest
    /// ones) need none of their own: a delivery's `_id` begins with its event id, which
    /// begins with the alert's time of receipt, so both are ranges of `_id`. The indexes
    /// earlier versions made for them (`event`, `received_at`), which cost every
    /// delivery's record two more index entries, are dropped.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.bounded(self.db.run_command(doc! {
            "createIndexes": AUDIT,
            "indexes": [{ "key": { "status": 1 }, "name": "status" }],
        }))
        .await?;
        for index in ["event", "received_at"] {
            let dropped = self
                .bounded(
                    self.db
                        .run_command(doc! { "dropIndexes": DELIVERIES, "index": index }),
                )
                .await;
            match dropped {
                Ok(_) => tracing::info!(index, "dropped an index of deliveries no longer used"),
                Err(err) if absent(&err) => {}
                Err(err) => return Err(err),
            }
        }
        tracing::debug!("indexes in place: audit.status, and none of its own for deliveries");
        Ok(())
    }

    /// Audit records of alerts that only MongoDB holds, oldest first, after the event id
    /// `after` when given.
    pub async fn unqueued(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        use futures_util::TryStreamExt;
        let audit: Collection<Document> = self.db.collection(AUDIT);
        let mut filter = doc! { "status": UNQUEUED };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        let cursor = self
            .bounded(audit.find(filter).sort(doc! { "_id": 1 }).limit(limit))
            .await?;
        let documents: Vec<Document> = self.bounded(cursor.try_collect()).await?;
        Ok(documents.iter().filter_map(alert_from_audit).collect())
    }

    /// Marks unqueued audit records as queued (by the reconciler), in one statement.
    pub async fn mark_queued(&self, ids: &[String]) -> Result<(), StoreError> {
        let now = bson::DateTime::now();
        let update = doc! {
            "q": { "_id": { "$in": ids }, "status": UNQUEUED },
            "u": { "$set": { "status": "queued", "queued_at": now } },
            "multi": true,
        };
        self.update_one(AUDIT, update).await
    }

    /// Deletes an unqueued audit record whose request was answered 503 before it landed.
    /// False when it is no longer unqueued (the reconciler got to it first).
    pub async fn withdraw_unqueued(&self, id: &str) -> Result<bool, StoreError> {
        let audit: Collection<Document> = self.db.collection(AUDIT);
        let deleted = self
            .bounded(audit.delete_one(doc! { "_id": id, "status": UNQUEUED }))
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    /// Marks an unqueued audit record as the duplicate it turned out to be.
    pub async fn mark_duplicate(&self, id: &str, first: &str) -> Result<(), StoreError> {
        let update = doc! {
            "q": { "_id": id, "status": UNQUEUED },
            "u": { "$set": { "status": "duplicate", "duplicate_of": first } },
        };
        self.update_one(AUDIT, update).await
    }

    /// Runs one update statement, bounded by the timeout.
    /// Runs `deliveries` update statements (upserts keyed by delivery id) in one command;
    /// journaled when `durable` (an outcome, which the entry's acknowledgement follows).
    pub async fn record_deliveries(
        &self,
        statements: Vec<Document>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut command = doc! { "update": DELIVERIES, "updates": statements, "ordered": false };
        if durable {
            command.insert("writeConcern", self.durable.document());
        }
        self.update(command).await
    }

    /// Writes deliveries' outcomes, each a new record, in one unordered insert,
    /// journaled. Inserting is the common case and costs MongoDB far less than an upsert
    /// (FerretDB most of all). Answers the positions of the deliveries that have a record
    /// already (they were retried, or replayed): the caller updates those instead.
    pub async fn insert_outcomes(
        &self,
        documents: &[RawDocumentBuf],
    ) -> Result<Vec<usize>, StoreError> {
        let durable = Some(self.durable.document());
        let mut existing = Vec::new();
        for (position, error) in self
            .insert_many(DELIVERIES, documents.iter().cloned(), durable)
            .await?
        {
            if !error.duplicate {
                return Err(StoreError::Refused(error.message));
            }
            existing.push(position);
        }
        Ok(existing)
    }

    /// Which of these delivery ids `deliveries` records as delivered.
    pub async fn delivered_among(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        use futures_util::TryStreamExt;
        let deliveries = self.db.collection::<Document>(DELIVERIES);
        let cursor = self
            .bounded(
                deliveries
                    .find(doc! { "_id": { "$in": ids }, "status": "delivered" })
                    .projection(doc! { "_id": 1 }),
            )
            .await?;
        let found: Vec<Document> = self.bounded(cursor.try_collect()).await?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// The delivery records of these alerts.
    pub async fn deliveries_of(&self, events: &[String]) -> Result<Vec<DeliveryRow>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ranges: Vec<Document> = events.iter().map(|event| of_event(event)).collect();
        self.delivery_rows(doc! { "$or": ranges }, None).await
    }

    /// The latest delivery records, newest alert first; only those not delivered when
    /// `failing`.
    pub async fn recent_deliveries(
        &self,
        limit: i64,
        failing: bool,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let filter = if failing {
            doc! { "status": { "$ne": "delivered" } }
        } else {
            doc! {}
        };
        self.delivery_rows(filter, Some(limit)).await
    }

    /// The delivery records matching `filter`; with a limit, the newest alerts' first.
    async fn delivery_rows(
        &self,
        filter: Document,
        newest: Option<i64>,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        use futures_util::TryStreamExt;
        let deliveries = self.db.collection::<Document>(DELIVERIES);
        let mut find = deliveries.find(filter);
        if let Some(limit) = newest {
            // Newest alert first: event ids begin with the time of receipt.
            find = find.sort(doc! { "_id": -1 }).limit(limit);
        }
        let cursor = self.bounded(find).await?;
        let found: Vec<Document> = self.bounded(cursor.try_collect()).await?;
        Ok(found
            .iter()
            .filter_map(DeliveryRow::from_document)
            .collect())
    }

    async fn update_one(&self, collection: &str, statement: Document) -> Result<(), StoreError> {
        self.update(doc! { "update": collection, "updates": [statement] })
            .await
    }

    /// Runs one update statement that makes a promise: journaled.
    async fn update_durable(
        &self,
        collection: &str,
        statement: Document,
    ) -> Result<(), StoreError> {
        self.update(doc! {
            "update": collection,
            "updates": [statement],
            "writeConcern": self.durable.document(),
        })
        .await
    }

    async fn update(&self, command: Document) -> Result<(), StoreError> {
        let reply = self.bounded(self.db.run_command(command)).await?;
        unconfirmed(&reply)?;
        match write_errors(&reply).first() {
            Some(error) => Err(StoreError::Refused(error.to_string())),
            None => Ok(()),
        }
    }

    /// Inserts documents unordered, with `write_concern` when given; returns the write
    /// errors by document index. The documents come as BSON already, so that the
    /// command is written out once, without a `Document` of each record on the way.
    async fn insert_many(
        &self,
        collection: &str,
        documents: impl IntoIterator<Item = RawDocumentBuf>,
        write_concern: Option<Document>,
    ) -> Result<Vec<(usize, WriteErrorInfo)>, StoreError> {
        self.bounded(self.insert_many_unbounded(collection, documents, write_concern))
            .await
    }

    /// `insert_many` without its bound, for a caller that sets its own and lets the write
    /// finish (the kept alerts' records).
    async fn insert_many_unbounded(
        &self,
        collection: &str,
        documents: impl IntoIterator<Item = RawDocumentBuf>,
        write_concern: Option<Document>,
    ) -> Result<Vec<(usize, WriteErrorInfo)>, StoreError> {
        let mut array = RawArrayBuf::new();
        for document in documents {
            array.push(document);
        }
        let mut command = RawDocumentBuf::new();
        command.append_ref("insert", collection);
        command.append_ref("documents", &array);
        command.append_ref("ordered", false);
        if let Some(concern) = write_concern {
            let concern = RawDocumentBuf::from_document(&concern)
                .map_err(|err| StoreError::Refused(format!("a write concern: {err}")))?;
            command.append_ref("writeConcern", &concern);
        }
        let reply = self.db.run_raw_command(command).await?;
        unconfirmed(&reply)?;
        let errors = write_errors(&reply)
            .iter()
            .filter_map(|e| {
                let e = e.as_document()?;
                let index = e.get_i32("index").ok()? as usize;
                let code = e.get_i32("code").unwrap_or_default();
                let message = e.get_str("errmsg").unwrap_or("refused").to_owned();
                Some((
                    index,
                    WriteErrorInfo {
                        duplicate: code == DUPLICATE_KEY,
                        message: format!("mongodb refused a write ({code}): {message}"),
                    },
                ))
            })
            .collect();
        Ok(errors)
    }

    async fn bounded<T, E: Into<StoreError>>(
        &self,
        op: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op.into_future()).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// MongoDB's answer to dropping an index that is not there: no such collection (26,
/// `NamespaceNotFound`) or no such index (27, `IndexNotFound`).
fn absent(err: &StoreError) -> bool {
    match err {
        StoreError::Mongo(err) => {
            matches!(err.kind.as_ref(), ErrorKind::Command(e) if e.code == 26 || e.code == 27)
        }
        _ => false,
    }
}

/// The filter of an alert's deliveries: their `_id`s, `<event id>:<route>:<destination>`,
/// all lie from `<event id>:` up to `<event id>;` (`;` comes right after `:`).
fn of_event(event: &str) -> Document {
    doc! { "_id": { "$gte": format!("{event}:"), "$lt": format!("{event};") } }
}

struct WriteErrorInfo {
    duplicate: bool,
    message: String,
}

/// One verdict per record of a batch, in order: `None` for written, else why MongoDB
/// refused it.
pub type Verdicts = Vec<Option<String>>;

/// The verdicts of a batch of `len` records, from the refusals of the records at some of
/// its indices (the first reason of each kept).
fn verdicts(len: usize, refused: Vec<(usize, String)>) -> Verdicts {
    let mut verdicts = vec![None; len];
    for (index, reason) in refused {
        verdicts[index].get_or_insert(reason);
    }
    verdicts
}

/// Runs `write` on the records at `indices` together; should MongoDB refuse the command
/// as a whole, runs it on each record alone to find the one it minds. The refusals, by
/// index.
async fn together_then_one_by_one<'a, F, Fut>(
    indices: &'a [usize],
    write: F,
) -> Result<Vec<(usize, String)>, StoreError>
where
    F: Fn(&'a [usize]) -> Fut,
    Fut: Future<Output = Result<Vec<(usize, String)>, StoreError>>,
{
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    match write(indices).await {
        Ok(refused) => return Ok(refused),
        Err(err) if err.is_outage() => return Err(err),
        Err(err) if indices.len() == 1 => return Ok(vec![(indices[0], err.to_string())]),
        Err(_) => {}
    }
    let mut refused = Vec::new();
    for index in indices {
        match write(std::slice::from_ref(index)).await {
            Ok(errors) => refused.extend(errors),
            Err(err) if err.is_outage() => return Err(err),
            Err(err) => refused.push((*index, err.to_string())),
        }
    }
    Ok(refused)
}

/// The first `chars` characters of a message on one line, with an ellipsis if cut.
fn preview(text: &str, chars: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Rebuilds an alert from its audit record, for the reconciler. `None` for a record that
/// is not one Pyron wrote.
fn alert_from_audit(record: &Document) -> Option<Alert> {
    Some(Alert {
        id: record.get_str("_id").ok()?.parse().ok()?,
        source: record
            .get_str("source")
            .map(str::to_owned)
            .unwrap_or_else(|_| crate::ingest::default_source()),
        received_at: record.get_datetime("received_at").ok()?.to_chrono(),
        kind: record.get_str("kind").ok()?.parse().ok()?,
        content_type: record.get_str("content_type").ok()?.to_owned(),
        body: record.get_str("body").ok()?.to_owned(),
        json: None,
        sender: record.get_str("sender").ok().map(str::to_owned),
        dedup_key: record.get_str("dedup_key").ok().map(str::to_owned),
    })
}

/// The JSON object an audit record's body is or holds, read again for display.
fn body_json(audit: &Document) -> Option<Value> {
    let body = audit.get_str("body").ok()?;
    match audit.get_str("kind").ok()? {
        "json" => serde_json::from_str(body).ok(),
        _ => crate::ingest::embedded_json(body)
            .ok()
            .flatten()
            .map(|(_, v)| v),
    }
}

/// The audit record: the alert as received. Its fields, parsed, are in its `jobs`
/// record's `signal` (`extra` holding those Pyron does not name), so the parsed body is
/// not kept twice.
fn audit_record(alert: &Alert, arrival: &Arrival) -> RawDocumentBuf {
    let strings = [
        Some(&alert.source),
        Some(&alert.content_type),
        Some(&alert.body),
        alert.sender.as_ref(),
        alert.dedup_key.as_ref(),
    ];
    let arrived = match arrival {
        Arrival::Queued { entry: Some(entry) } => entry.len(),
        Arrival::Duplicate { first } => first.len(),
        Arrival::Queued { entry: None } | Arrival::KeptInMongo => 0,
    };
    let mut record =
        document(256 + arrived + strings.iter().flatten().map(|s| s.len()).sum::<usize>());
    record.append_ref("_id", alert.id.text().as_str());
    record.append_ref(
        "received_at",
        bson::DateTime::from_chrono(alert.received_at),
    );
    record.append_ref("kind", alert.kind.as_str());
    record.append_ref("source", alert.source.as_str());
    record.append_ref("content_type", alert.content_type.as_str());
    record.append_ref("body", alert.body.as_str());
    record.append_ref("status", arrival.status());
    match arrival {
        Arrival::Queued { entry: Some(entry) } => record.append_ref("entry", entry.as_str()),
        Arrival::Duplicate { first } => record.append_ref("duplicate_of", first.as_str()),
        Arrival::Queued { entry: None } | Arrival::KeptInMongo => {}
    }
    if let Some(sender) = &alert.sender {
        record.append_ref("sender", sender.as_str());
    }
    if let Some(key) = &alert.dedup_key {
        record.append_ref("dedup_key", key.as_str());
    }
    record
}

/// A write the server applied but could not confirm at the write concern asked (no
/// journal, no majority in time): not a promise yet, so the caller waits and writes again.
fn unconfirmed(reply: &Document) -> Result<(), StoreError> {
    match reply.get_document("writeConcernError") {
        Ok(error) => Err(StoreError::Unconfirmed(
            error
                .get_str("errmsg")
                .unwrap_or("no reason given")
                .to_owned(),
        )),
        Err(_) => Ok(()),
    }
}

fn write_errors(reply: &Document) -> &[Bson] {
    reply
        .get_array("writeErrors")
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The `jobs` record of a first delivery.
fn job_document(outcome: &Outcome) -> RawDocumentBuf {
    let signal = outcome.result.as_ref().map(signal_document);
    let result = match &signal {
        Ok(signal) => signal.as_bytes().len(),
        Err(error) => error.len(),
    };
    let strings = [&outcome.source, &outcome.entry, &outcome.worker];
    let mut document = document(256 + result + strings.iter().map(|s| s.len()).sum::<usize>());
    document.append_ref("_id", outcome.id.text().as_str());
    job_fields(outcome, &mut document);
    document.append_ref("attempts", 1_i64);
    match &signal {
        Ok(signal) => document.append_ref("signal", signal),
        Err(error) => document.append_ref("error", error.as_str()),
    };
    document
}

/// An empty document with room for `capacity` bytes, so that appending to it does not
/// grow it time and again (`RawDocumentBuf::new` starts at five).
fn document(capacity: usize) -> RawDocumentBuf {
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(&5_i32.to_le_bytes());
    bytes.push(0);
    RawDocumentBuf::from_bytes(bytes).expect("an empty document is a document")
}

fn job_fields(outcome: &Outcome, document: &mut RawDocumentBuf) {
    document.append_ref("status", outcome.status().as_str());
    document.append_ref("source", outcome.source.as_str());
    document.append_ref(
        "received_at",
        bson::DateTime::from_chrono(outcome.received_at),
    );
    document.append_ref(
        "processed_at",
        bson::DateTime::from_chrono(outcome.processed_at),
    );
    let lag = (outcome.processed_at - outcome.received_at).num_milliseconds();
    document.append_ref("lag_ms", lag);
    document.append_ref("entry", outcome.entry.as_str());
    document.append_ref("worker", outcome.worker.as_str());
}

/// The update statement that rewrites a redelivered job's record in place.
fn job_update(outcome: &Outcome) -> Document {
    let mut set = RawDocumentBuf::new();
    job_fields(outcome, &mut set);
    let mut unset = doc! { "next_attempt_at": "" };
    match &outcome.result {
        Ok(signal) => {
            set.append_ref("signal", &signal_document(signal));
            unset.insert("error", "");
            unset.insert("last_error", "");
        }
        Err(error) => {
            set.append_ref("error", error.as_str());
            unset.insert("signal", "");
        }
    }
    let set = set.to_document().expect("a document built here reads back");
    let update = doc! { "$set": set, "$unset": unset, "$inc": { "attempts": 1_i64 } };
    doc! { "q": { "_id": outcome.id.to_string() }, "u": update, "upsert": true }
}

/// The signal with its time as a BSON date, so it sorts and filters as one.
fn signal_document(signal: &Signal) -> RawDocumentBuf {
    let mut document = document(512);
    let strings = [
        ("ticker", &signal.ticker),
        ("exchange", &signal.exchange),
        ("interval", &signal.interval),
        ("action", &signal.action),
        ("strategy", &signal.strategy),
        ("market_position", &signal.market_position),
        ("prev_market_position", &signal.prev_market_position),
        ("order_id", &signal.order_id),
        ("comment", &signal.comment),
        ("text", &signal.text),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            document.append_ref(key, value.as_str());
        }
    }
    let numbers = [
        ("price", signal.price),
        ("quantity", signal.quantity),
        ("market_position_size", signal.market_position_size),
        (
            "prev_market_position_size",
            signal.prev_market_position_size,
        ),
        ("position_size", signal.position_size),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            document.append_ref(key, value);
        }
    }
    if let Some(time) = signal.alert_time {
        document.append_ref("alert_time", bson::DateTime::from_chrono(time));
    }
    if !signal.extra.is_empty() {
        match json_document(&signal.extra) {
            Ok(extra) => document.append_ref("extra", &extra),
            Err(why) => document.append(
                "extra_note",
                format!("extra fields kept in the audit body only: {why}"),
            ),
        }
    }
    document
}

/// A JSON object as a BSON document, within what every MongoDB-compatible server stores.
fn json_document(map: &serde_json::Map<String, Value>) -> Result<RawDocumentBuf, String> {
    let mut document = RawDocumentBuf::new();
    for (key, value) in map {
        if key.starts_with('$') || key.contains('.') {
            return Err(format!("the key {key:?} starts with '$' or holds '.'"));
        }
        if key.contains('\0') {
            return Err(format!("the key {key:?} holds a NUL character"));
        }
        match value {
            Value::String(s) => document.append_ref(key, s.as_str()),
            other => document.append(key, to_bson(other, false)?),
        }
    }
    Ok(document)
}

/// A JSON value as BSON (see `json_document`); `in_array` when it is an array's item.
fn to_bson(value: &Value, in_array: bool) -> Result<RawBson, String> {
    Ok(match value {
        Value::Null => RawBson::Null,
        Value::Bool(b) => RawBson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RawBson::Int64(i),
            None => RawBson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => RawBson::String(s.clone()),
        Value::Array(items) => {
            if in_array {
                return Err("an array inside an array".into());
            }
            let mut array = RawArrayBuf::new();
            for item in items {
                array.push(to_bson(item, true)?);
            }
            RawBson::Array(array)
        }
        Value::Object(map) => RawBson::Document(json_document(map)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// MongoDB compares strings byte by byte, as `str` does.
    #[test]
    fn an_alerts_deliveries_and_no_others_lie_in_its_range_of_ids() {
        let event = "0193a8d2-7c1e-7000-8000-000000000001";
        let range = of_event(event);
        let range = range.get_document("_id").unwrap();
        let (from, below) = (
            range.get_str("$gte").unwrap(),
            range.get_str("$lt").unwrap(),
        );
        let inside = |id: &str| from <= id && id < below;
        assert!(inside(&format!("{event}:orders:bridge")));
        assert!(inside(&format!("{event}:~:~")));
        assert!(inside(&format!("{event}:0:0")));
        for other in [
            "0193a8d2-7c1e-7000-8000-000000000000:orders:bridge",
            "0193a8d2-7c1e-7000-8000-000000000002:orders:bridge",
            "0193a8d2-7c1e-7000-8000-00000000000:orders:bridge",
            event,
        ] {
            assert!(!inside(other), "{other}");
        }
    }

    #[test]
    fn portable_json_becomes_a_document() {
        let value =
            json!({"a": 1, "b": [1, {"c": [2]}], "big": 18446744073709551615_u64, "s": "x"});
        let doc = json_document(value.as_object().unwrap())
            .unwrap()
            .to_document()
            .unwrap();
        assert_eq!(doc.get_i64("a").unwrap(), 1);
        assert!(matches!(doc.get("big"), Some(Bson::Double(_))));
        assert_eq!(doc.get_str("s").unwrap(), "x");
        let b = doc.get_array("b").unwrap();
        assert_eq!(b[0], Bson::Int64(1));
        assert_eq!(
            b[1].as_document().unwrap().get_array("c").unwrap(),
            &vec![Bson::Int64(2)]
        );
    }

    #[test]
    fn unportable_json_is_refused_with_a_reason() {
        let refused = |value: Value| json_document(value.as_object().unwrap()).unwrap_err();
        assert!(refused(json!({"a.b": 1})).contains("a.b"));
        assert!(refused(json!({"x": {"$where": 1}})).contains("$where"));
        assert!(refused(json!({"m": [[1, 2]]})).contains("array inside"));
        assert!(refused(json!({"n\0ul": 1})).contains("NUL"));
    }

    #[tokio::test]
    async fn promises_ask_for_the_journal_and_a_majority_of_a_replica_set() {
        let concern = async |uri: &str| {
            Store::connect(uri, "pyron", Duration::from_millis(100))
                .await
                .unwrap()
                .durable_write_concern()
        };
        assert_eq!(
            concern("mongodb://127.0.0.1:1").await,
            doc! { "w": 1_i64, "j": true }
        );
        assert_eq!(
            concern("mongodb://127.0.0.1:1/?replicaSet=rs0").await,
            doc! { "w": "majority", "j": true }
        );
        assert_eq!(
            concern("mongodb://127.0.0.1:1/?w=2").await,
            doc! { "w": 2_i64, "j": true },
            "a w the connection string sets is kept, with the journal"
        );
    }

    #[test]
    fn a_write_not_confirmed_at_its_write_concern_is_waited_out() {
        let reply = doc! {
            "ok": 1, "n": 1,
            "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" },
        };
        let err = unconfirmed(&reply).unwrap_err();
        assert!(err.is_outage(), "{err}");
        assert!(
            err.to_string()
                .contains("waiting for replication timed out")
        );
        assert!(unconfirmed(&doc! { "ok": 1, "n": 1 }).is_ok());
    }
}
