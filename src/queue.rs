//! The job queue: the Redis stream `webhook-jobs`, read by the consumer group
//! `pyron-workers`, with dead letters in `webhook-jobs:dead`.
//!
//! A job carries the whole alert (id, receive time, kind, content type, redacted body,
//! sender, dedup key) as JSON in one stream field, `job`, so a worker needs nothing else to
//! process it and can rebuild the audit record should it be missing. Entries queued before
//! jobs were one field (a field per attribute) are still read. Deduplication lives here too: a key
//! `pyron:dedup:<sha256>` is set with the event id, atomically with the `XADD`, by one Lua
//! script, so a duplicate can never create a second job and a first alert can never be
//! marked seen without its job.
//!
//! The job also spares MongoDB a second write of each audit record. pyron-api writes audit
//! records in batches off the request path, and once a batch is in MongoDB it adds the
//! alerts' ids to `pyron:audited:<minute of arrival>`. A worker writes the audit record of
//! every job whose id it does not find there (the api's writer was full, MongoDB was down,
//! the api died with records in hand), and removes the ids of the jobs it settles. A
//! marker is only ever set after the write, so a missing one costs a redundant insert and
//! nothing else. The sets expire a day after their last addition, which clears the ids of
//! jobs settled while the writer was still marking them.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use redis::{
    AsyncCommands, Client, RedisError, Script, Value as RedisValue,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadOptions,
    },
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::{
    domain::{AlertKind, EventId},
    ingest::Alert,
};

pub const STREAM: &str = "webhook-jobs";
pub const GROUP: &str = "pyron-workers";
pub const DEAD_LETTERS: &str = "webhook-jobs:dead";
/// Prefix of the deduplication keys, `pyron:dedup:<sha256 of the key>`.
pub const DEDUP_PREFIX: &str = "pyron:dedup:";

/// Prefix of the keys the reconciler sets for alerts without a dedup key, so that two
/// reconcilers (or one retrying after a lost reply) queue an alert once.
const REQUEUED_PREFIX: &str = "pyron:requeued:";

/// The sets of event ids whose audit records pyron-api wrote, by minute of arrival.
pub const AUDITED_PREFIX: &str = "pyron:audited:";

/// How long a marker set lives after its last addition: a worker that comes back after
/// longer than this writes the audit records again, needlessly but harmlessly.
const AUDITED_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a reconciler's key lives when the alert has no dedup key of its own.
const REQUEUED_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Event ids grouped by the audit-marker set of their minute of arrival.
fn by_minute<'a>(alerts: impl IntoIterator<Item = &'a Alert>) -> Vec<(String, Vec<EventId>)> {
    let mut groups: std::collections::BTreeMap<i64, Vec<EventId>> = Default::default();
    for alert in alerts {
        let minute = alert.received_at.timestamp().div_euclid(60);
        groups.entry(minute).or_default().push(alert.id);
    }
    groups
        .into_iter()
        .map(|(minute, ids)| (format!("{AUDITED_PREFIX}{minute}"), ids))
        .collect()
}

/// Sets the key to the alert's id and adds the job, in one step. When the key already
/// holds another alert's id, a duplicate entry is added instead (so the worker writes its
/// audit record even if MongoDB is down now); when it holds this alert's id, the alert was
/// queued before and nothing is added.
///
/// `ARGV[3]` is the moment (milliseconds since the epoch, `0` for none) after which the
/// sender no longer waits for this answer: pyron-api has kept the alert in MongoDB or
/// answered 503 by then. A script Redis runs later (it hung with the command in its
/// socket) adds nothing, so that a refused alert is never queued behind its 503. The
/// deadline is compared with Redis's clock: the hosts' clocks must agree to well within
/// the storing budget.
///
/// Without a dedup key (`KEYS[2]` absent) the job is added unconditionally.
const ENQUEUE_ONCE: &str = r"
if ARGV[3] ~= '0' then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
    return {3, ''}
  end
end
if #KEYS == 1 then
  return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))}
end
local first = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2], 'GET')
if not first then
  return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))}
end
if first == ARGV[1] then
  return {2, first}
end
redis.call('XADD', KEYS[1], '*', 'duplicate_of', first, unpack(ARGV, 4))
return {0, first}
";

/// Moves one dead letter back to the work stream, without its dead-letter fields.
const REPLAY: &str = r"
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local job = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name ~= 'reason' and name ~= 'entry' and name ~= 'attempts' and name ~= 'dead_at'
     and name ~= 'replayed_from' then
    job[#job + 1] = name
    job[#job + 1] = fields[i + 1]
  end
end
job[#job + 1] = 'replayed_from'
job[#job + 1] = ARGV[1]
local entry = redis.call('XADD', KEYS[1], '*', unpack(job))
redis.call('XDEL', KEYS[2], ARGV[1])
return entry
";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    #[error("redis: {0}")]
    Pipeline(String),
}

/// What happened to an alert offered to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job, with its stream entry id.
    Queued { entry: String },
    /// The dedup key was seen before; no job was added. Holds the first alert's id.
    Duplicate { first: String },
    /// This very alert was queued before (a reconciler retrying after a lost reply).
    AlreadyQueued,
}

/// A stream entry; `alert` is `Err` when the entry cannot be read as a job at all. The
/// alert's `json` is left for the worker to parse from the body. `duplicate_of` is set for
/// the entry of a duplicate alert, which only needs its audit record.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub entry: String,
    pub alert: Result<Alert, String>,
    pub duplicate_of: Option<String>,
    fields: Vec<(String, String)>,
}

/// An entry of `webhook-jobs:dead`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The dead-letter entry's own id, which replay takes.
    pub entry: String,
    /// The alert's event id, when the job had one.
    pub id: Option<String>,
    pub reason: String,
    pub received_at: Option<String>,
    pub kind: Option<String>,
    pub body: Option<String>,
}

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    timeout: Duration,
    enqueue_once: Script,
    replay: Script,
    /// The hot path's enqueues, gathered into pipelines (see `send_batches`).
    batches: mpsc::Sender<Batched>,
}

/// One enqueue waiting for its pipeline: the job, when its request stops waiting
/// (milliseconds since the epoch), and who waits for its reply.
type Batched = (
    Enqueue,
    i64,
    oneshot::Sender<Result<RedisValue, QueueError>>,
);

/// One alert's `ENQUEUE_ONCE` but for the deadline, which a pipeline sets
/// (`send_batches`), or none (`requeue`).
struct Enqueue {
    id: EventId,
    /// The dedup key, if the alert has one.
    key: Option<String>,
    ttl: Duration,
    job: Vec<u8>,
}

/// The jobs that came before a job was given up on (its request stopped waiting, or Redis
/// refused it as too late, or its pipeline's replies never came): none of them may reach
/// the stream later than it, while it waits in MongoDB for the reconciler.
struct Fence {
    /// The given-up job's pipeline's deadline: Redis adds none of them past it.
    deadline: i64,
    /// How many of the jobs that were waiting for a pipeline when it was set are left.
    remaining: usize,
}

impl Enqueue {
    /// The `EVALSHA` of `ENQUEUE_ONCE` (`hash`), for a pipeline that loads the script
    /// first, to be run by `deadline` (milliseconds since the epoch; 0 for no deadline).
    fn cmd(self, hash: &str, deadline: i64) -> redis::Cmd {
        // Sized for its arguments, so that it is written without growing.
        let mut cmd = redis::Cmd::with_capacity(
            10,
            128 + hash.len() + self.key.as_ref().map_or(0, String::len) + self.job.len(),
        );
        cmd.arg("EVALSHA").arg(hash);
        match &self.key {
            Some(key) => cmd.arg(2).arg(STREAM).arg(key),
            None => cmd.arg(1).arg(STREAM),
        };
        cmd.arg(self.id)
            .arg(self.ttl.as_secs().max(1))
            .arg(deadline)
            .arg(JOB)
            .arg(self.job);
        cmd
    }
}

/// Most enqueues in one pipeline.
const PIPELINE_MAX: usize = 256;

/// Under load, how long the first enqueue of a pipeline waits for others to join it.
pub const GATHER: Duration = Duration::from_millis(2);

/// Sends the enqueues of concurrent requests to Redis together, so that under load many
/// alerts share one round trip (and, with `appendfsync always`, one fsync): whatever
/// has gathered while the previous pipeline was out goes in the next, and when an enqueue
/// follows the one before it by less than `GATHER` (some 500 alerts a second or more), the
/// pipeline also waits for what arrives within `GATHER` of it. A lone alert goes at once,
/// and so do those of a sender that waits for each answer before it sends the next: once
/// a wait gathered nothing, the pipeline stops waiting until enqueues come together again
/// (several in hand at once).
///
/// The jobs keep the order the requests came in. Redis runs a pipeline's commands in
/// order, and each command is added only until its deadline, after which its request has
/// stopped waiting and kept the alert in MongoDB (or answered 503): so the jobs of one
/// pipeline share one deadline, their earliest, and a job that Redis may refuse fences
/// those that waited behind it. Without that, when Redis hung for longer than the
/// timeout but less than twice it, the oldest jobs came back too late, and younger ones,
/// still in time, went into the stream ahead of them (the kept ones were queued a moment
/// later, and then not sent, by the order rule).
async fn send_batches(
    conn: ConnectionManager,
    script: Script,
    timeout: Duration,
    mut rx: mpsc::Receiver<Batched>,
) {
    let mut batch: Vec<Batched> = Vec::with_capacity(PIPELINE_MAX);
    let mut last = tokio::time::Instant::now() - GATHER;
    let mut fruitless = false;
    let mut fence: Option<Fence> = None;
    loop {
        // Fenced jobs go in pipelines of their own.
        let max = fence
            .as_ref()
            .map_or(PIPELINE_MAX, |f| f.remaining.min(PIPELINE_MAX));
        if rx.recv_many(&mut batch, max).await == 0 {
            return;
        }
        let first = tokio::time::Instant::now();
        let together = batch.len() > 1;
        if together || (first - last < GATHER && !fruitless) {
            let before = batch.len();
            crate::batch::gather(&mut rx, &mut batch, max, first + GATHER).await;
            fruitless = batch.len() == before && !together;
        }
        last = tokio::time::Instant::now();
        let taken = batch.len();
        let deadline = batch
            .iter()
            .map(|(_, deadline, _)| *deadline)
            .chain(fence.as_ref().map(|f| f.deadline))
            .min()
            .expect("a pipeline has a job");
        let mut pipe = redis::pipe();
        // Cheap, not written to the AOF, and spares a NOSCRIPT round after a restart.
        pipe.load_script(&script).ignore();
        let mut waiting = Vec::with_capacity(batch.len());
        // A request that gave up waiting (Redis was slow) has kept its alert in MongoDB:
        // its job is not sent late, and those behind it get its deadline, past already.
        let mut given_up = false;
        for (job, _, reply) in batch.drain(..) {
            if reply.is_closed() {
                given_up = true;
                continue;
            }
            pipe.add_command(job.cmd(script.get_hash(), deadline));
            waiting.push(reply);
        }
        let settled = if waiting.is_empty() {
            !given_up
        } else {
            let mut conn = conn.clone();
            let replies: Result<Vec<RedisValue>, QueueError> =
                bounded(timeout, pipe.query_async(&mut conn)).await;
            answer(replies, waiting) && !given_up
        };
        fence = if settled {
            fence.and_then(|f| {
                let remaining = f.remaining.saturating_sub(taken);
                (remaining > 0).then_some(Fence { remaining, ..f })
            })
        } else {
            // The jobs waiting now were queued before the given-up job's request trips
            // pyron-api's breaker (later alerts go to MongoDB): none may be added after
            // it. Those fenced and refused fence those that waited behind them in turn.
            let remaining = rx.len();
            (remaining > 0).then_some(Fence {
                deadline,
                remaining,
            })
        };
    }
}

/// Hands each request its reply. True when Redis took every job of the pipeline; false
/// when it refused one as too late, or its replies did not come.
fn answer(
    replies: Result<Vec<RedisValue>, QueueError>,
    waiting: Vec<oneshot::Sender<Result<RedisValue, QueueError>>>,
) -> bool {
    match replies {
        Ok(values) if values.len() == waiting.len() => {
            let late = values.iter().any(too_late);
            for (value, reply) in values.into_iter().zip(waiting) {
                let _ = reply.send(Ok(value));
            }
            !late
        }
        Ok(values) => {
            let why = format!("{} replies to {} commands", values.len(), waiting.len());
            for reply in waiting {
                let _ = reply.send(Err(QueueError::Reply(why.clone())));
            }
            false
        }
        Err(err) => {
            let why = err.to_string();
            for reply in waiting {
                let _ = reply.send(Err(QueueError::Pipeline(why.clone())));
            }
            false
        }
    }
}

/// Whether `ENQUEUE_ONCE` answered that it ran past its deadline and added nothing.
fn too_late(reply: &RedisValue) -> bool {
    matches!(reply, RedisValue::Array(items) if matches!(items.first(), Some(RedisValue::Int(3))))
}

impl Queue {
    /// Connects, failing if Redis cannot be reached within `timeout`. Every later command
    /// is bounded by the same `timeout`, and the connection is re-established on its own.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, QueueError> {
        Ok(Self::with(manager(url, timeout).await?, timeout))
    }

    /// Like `connect`, but returns at once: the connection is made on first use, and
    /// commands fail (within `timeout`) until Redis answers. pyron-api starts this way so
    /// that it can take alerts into MongoDB while Redis is still down.
    pub fn lazy(url: &str, timeout: Duration) -> Result<Self, QueueError> {
        let client = Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config(timeout))?;
        Ok(Self::with(conn, timeout))
    }

    fn with(conn: ConnectionManager, timeout: Duration) -> Self {
        let enqueue_once = Script::new(ENQUEUE_ONCE);
        let (batches, rx) = mpsc::channel(PIPELINE_MAX * 16);
        tokio::spawn(send_batches(
            conn.clone(),
            enqueue_once.clone(),
            timeout,
            rx,
        ));
        Queue {
            conn,
            timeout,
            enqueue_once,
            replay: Script::new(REPLAY),
            batches,
        }
    }

    /// The activity counts, over this queue's connection.
    pub fn stats(&self) -> crate::stats::Stats {
        crate::stats::Stats::new(self.conn.clone(), self.timeout)
    }

    /// How long any command may take, waiting for its pipeline included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection, for the reads beside the job queue (the deliveries' dead letters).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Notes that these alerts' audit records are written, so that workers need not
    /// write them again.
    pub async fn mark_audited<'a>(
        &self,
        alerts: impl IntoIterator<Item = &'a Alert>,
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for (key, ids) in by_minute(alerts) {
            pipe.sadd(&key, ids)
                .ignore()
                .expire(&key, AUDITED_TTL.as_secs() as i64)
                .ignore();
        }
        let mut conn = self.conn.clone();
        bounded(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        bounded(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Adds the alert's job, unless its dedup key was seen within `dedup_ttl`. Goes out
    /// in the next pipeline with other requests' jobs; bounded by the queue's timeout,
    /// waiting included.
    pub async fn enqueue(
        &self,
        alert: &Alert,
        dedup_ttl: Duration,
    ) -> Result<Enqueued, QueueError> {
        // Past this, the request has stopped waiting (below): the job must not land.
        let job = Enqueue {
            id: alert.id,
            key: alert.dedup_key.as_deref().map(dedup_key),
            ttl: dedup_ttl,
            job: job(alert),
        };
        let deadline = (chrono::Utc::now() + self.timeout).timestamp_millis();
        let (tx, rx) = oneshot::channel();
        let sent = async {
            self.batches
                .send((job, deadline, tx))
                .await
                .map_err(|_| QueueError::Pipeline("the pipeline task is gone".into()))?;
            rx.await
                .map_err(|_| QueueError::Pipeline("the pipeline task is gone".into()))?
        };
        let value = match tokio::time::timeout(self.timeout, sent).await {
            Ok(value) => value?,
            Err(_) => return Err(QueueError::Timeout(self.timeout)),
        };
        // A command Redis refused comes back as an error value, which does not parse.
        let unexpected = |e: redis::ParsingError| QueueError::Reply(e.to_string());
        // Too late: Redis ran it after the request stopped waiting, which is a timeout.
        enqueued(redis::from_redis_value(value).map_err(unexpected)?)
            .ok_or(QueueError::Timeout(self.timeout))
    }

    /// Queues alerts that only MongoDB took (the reconciler's step), in one pipeline.
    /// Safe to repeat: an alert already queued under its key is not queued again, and one
    /// whose dedup key belongs to another alert comes back as a duplicate. Alerts without
    /// a dedup key get one of their own, `pyron:requeued:<id>`, for a day.
    pub async fn requeue(
        &self,
        alerts: &[Alert],
        dedup_ttl: Duration,
    ) -> Result<Vec<Enqueued>, QueueError> {
        if alerts.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(String, Duration)> = alerts
            .iter()
            .map(|alert| match &alert.dedup_key {
                Some(key) => (dedup_key(key), dedup_ttl),
                None => (format!("{REQUEUED_PREFIX}{}", alert.id), REQUEUED_TTL),
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.enqueue_once).ignore();
        for (alert, (key, ttl)) in alerts.iter().zip(keys) {
            let job = Enqueue {
                id: alert.id,
                key: Some(key),
                ttl,
                job: job(alert),
            };
            // No deadline: the alert is safe in MongoDB whenever this runs.
            pipe.add_command(job.cmd(self.enqueue_once.get_hash(), 0));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(i64, String)> =
            bounded(self.timeout, pipe.query_async(&mut conn)).await?;
        replies
            .into_iter()
            .map(|reply| {
                enqueued(reply)
                    .ok_or_else(|| QueueError::Reply("too late without a deadline".into()))
            })
            .collect()
    }

    /// The dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = bounded(
            self.timeout,
            conn.xrange_count(DEAD_LETTERS, "-", "+", limit),
        )
        .await?;
        Ok(reply.ids.into_iter().map(DeadLetter::from_entry).collect())
    }

    /// Moves dead letters back to the work stream: those of the given event ids, or all
    /// of them when `ids` is `None`. Returns how many were moved.
    pub async fn replay(&self, ids: Option<&[String]>) -> Result<usize, QueueError> {
        let mut replayed = 0;
        let mut start = "-".to_owned();
        loop {
            let mut conn = self.conn.clone();
            let page: StreamRangeReply = bounded(
                self.timeout,
                conn.xrange_count(DEAD_LETTERS, &start, "+", 500),
            )
            .await?;
            let Some(last) = page.ids.last() else {
                return Ok(replayed);
            };
            start = format!("({}", last.id);
            for letter in page.ids.into_iter().map(DeadLetter::from_entry) {
                let wanted = match ids {
                    None => true,
                    Some(ids) => letter.id.as_ref().is_some_and(|id| ids.contains(id)),
                };
                if !wanted {
                    continue;
                }
                let moved: Option<String> = bounded(
                    self.timeout,
                    self.replay
                        .key(STREAM)
                        .key(DEAD_LETTERS)
                        .arg(&letter.entry)
                        .invoke_async(&mut conn),
                )
                .await?;
                if moved.is_some() {
                    replayed += 1;
                    tracing::info!(event_id = letter.id.as_deref(), dead_letter = %letter.entry, "dead letter replayed");
                }
            }
        }
    }
}

/// The answer of `ENQUEUE_ONCE`; `None` when Redis ran it past its deadline and added
/// nothing.
fn enqueued((queued, value): (i64, String)) -> Option<Enqueued> {
    Some(match queued {
        1 => Enqueued::Queued { entry: value },
        2 => Enqueued::AlreadyQueued,
        3 => return None,
        _ => Enqueued::Duplicate { first: value },
    })
}

/// An id as a command's argument: its hyphenated text.
impl redis::ToRedisArgs for EventId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.text().as_str().as_bytes());
    }
}

/// The stream field that carries an alert's job.
const JOB: &str = "job";

/// An alert's job, as the stream carries it: the alert as JSON (see `Alert`).
fn job(alert: &Alert) -> Vec<u8> {
    // Sized for the body (with room for its escapes) and the other fields, so that it is
    // written without growing.
    let mut job = Vec::with_capacity(alert.body.len() + alert.body.len() / 4 + 256);
    serde_json::to_writer(&mut job, alert).expect("an alert always serializes");
    job
}

/// The worker's side of the stream.
pub struct Consumer {
    conn: ConnectionManager,
    /// Blocking reads hold a connection, so they get their own.
    reader: ConnectionManager,
    timeout: Duration,
    name: String,
}

impl Consumer {
    pub async fn connect(
        url: &str,
        name: &str,
        timeout: Duration,
        block: Duration,
    ) -> Result<Self, QueueError> {
        let conn = manager(url, timeout).await?;
        let reader = manager(url, block + timeout).await?;
        Ok(Consumer {
            conn,
            reader,
            timeout,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The activity counts, over this consumer's connection.
    pub fn stats(&self) -> crate::stats::Stats {
        crate::stats::Stats::new(self.conn.clone(), self.timeout)
    }

    /// Creates the stream and the group if absent. The group starts at the beginning of the
    /// stream, so jobs queued before the first worker ever ran are processed too.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        ensure_group(&mut self.conn.clone(), STREAM, GROUP, self.timeout).await
    }

    /// Reads up to `count` entries. With `pending` set to a stream id, re-reads the
    /// entries this consumer was given before but never acknowledged, after that id (start
    /// at "0"); otherwise awaits new entries for up to `block`.
    pub async fn read(
        &self,
        count: usize,
        block: Duration,
        pending: Option<&str>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let read = Group {
            stream: STREAM,
            group: GROUP,
            consumer: &self.name,
            timeout: self.timeout,
        };
        let entries = read
            .read(&mut self.reader.clone(), count, block, pending)
            .await?;
        Ok(entries.into_iter().map(Delivery::from_entry).collect())
    }

    /// The stream's length and how many of its entries are pending with a consumer.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.xlen(STREAM).xpending(STREAM, GROUP);
        let (length, pending): (u64, redis::streams::StreamPendingReply) =
            bounded(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok((length, pending.count() as u64))
    }

    /// Takes over entries that another consumer was given but has not acknowledged for
    /// `min_idle` (it died, or hangs). Entries deleted meanwhile are dropped by Redis.
    pub async fn claim(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let group = Group {
            stream: STREAM,
            group: GROUP,
            consumer: &self.name,
            timeout: self.timeout,
        };
        let entries = group.claim(&mut self.conn.clone(), min_idle, count).await?;
        Ok(entries.into_iter().map(Delivery::from_entry).collect())
    }

    /// Which of these alerts pyron-api has marked as having their audit record written,
    /// in order.
    pub async fn audited(&self, alerts: &[&Alert]) -> Result<Vec<bool>, QueueError> {
        let groups = by_minute(alerts.iter().copied());
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, ids) in &groups {
            pipe.cmd("SMISMEMBER").arg(key).arg(ids);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Vec<bool>> = bounded(self.timeout, pipe.query_async(&mut conn)).await?;
        let marked: std::collections::HashSet<&EventId> = groups
            .iter()
            .zip(&replies)
            .flat_map(|((_, ids), found)| ids.iter().zip(found).filter(|(_, f)| **f))
            .map(|(id, _)| id)
            .collect();
        Ok(alerts.iter().map(|a| marked.contains(&a.id)).collect())
    }

    /// Acknowledges entries and deletes them from the stream in one transaction: once a
    /// job's result is recorded in MongoDB the stream has no more use for it. The audit
    /// markers of `settled` alerts are removed with them.
    pub async fn ack(&self, entries: &[&str], settled: &[&Alert]) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !entries.is_empty() {
            pipe.xack(STREAM, GROUP, entries)
                .ignore()
                .xdel(STREAM, entries)
                .ignore();
        }
        for (key, ids) in by_minute(settled.iter().copied()) {
            pipe.srem(key, ids).ignore();
        }
        if entries.is_empty() && settled.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        bounded(self.timeout, pipe.query_async::<()>(&mut conn)).await?;
        Ok(())
    }

    /// Queues the deliveries of processed alerts, once each (`forward::outbox`).
    pub async fn fan_out(&self, jobs: &[crate::forward::Queued]) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        crate::forward::outbox::fan_out(&mut conn, jobs, self.timeout).await
    }

    /// Moves an entry to the dead-letter stream with the reason and the attempts it had,
    /// then acknowledges it, in one transaction.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let attempts = attempts.to_string();
        let dead_at = Utc::now().timestamp_millis().to_string();
        let mut fields: Vec<(&str, &str)> = delivery
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The event id stands on its own too, for whoever reads the dead letters in Redis
        // (a job queued as one field has it only inside `job`).
        let id = delivery.alert.as_ref().map(|a| a.id.to_string());
        if let Ok(id) = &id
            && !fields.iter().any(|(k, _)| *k == "id")
        {
            fields.push(("id", id));
        }
        fields.push(("reason", reason));
        fields.push(("entry", &delivery.entry));
        fields.push(("attempts", &attempts));
        fields.push(("dead_at", &dead_at));
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xadd(DEAD_LETTERS, "*", &fields)
            .ignore()
            .xack(STREAM, GROUP, &[&delivery.entry])
            .ignore()
            .xdel(STREAM, &[&delivery.entry])
            .ignore();
        bounded(self.timeout, pipe.query_async::<()>(&mut conn)).await?;
        Ok(())
    }
}

impl Delivery {
    /// The same entry with this alert in it again (after `settle` took it for its record).
    pub fn with_alert(&self, alert: &Alert) -> Delivery {
        Delivery {
            alert: Ok(alert.clone()),
            ..self.clone()
        }
    }

    fn from_entry(entry: StreamEntry) -> Delivery {
        let alert = read_job(&entry.fields);
        let duplicate_of = entry.field("duplicate_of").map(str::to_owned);
        Delivery {
            entry: entry.id,
            alert,
            duplicate_of,
            fields: entry.fields,
        }
    }
}

impl DeadLetter {
    fn from_entry(entry: StreamId) -> DeadLetter {
        let delivery = Delivery::from_entry(entry.into());
        let find = |name: &str| field(&delivery.fields, name).map(str::to_owned);
        let reason = find("reason").unwrap_or_default();
        match &delivery.alert {
            Ok(alert) => DeadLetter {
                entry: delivery.entry.clone(),
                id: Some(alert.id.to_string()),
                reason,
                received_at: Some(alert.received_at.timestamp_millis().to_string()),
                kind: Some(alert.kind.as_str().to_owned()),
                body: Some(alert.body.clone()),
            },
            // What can be read of an entry that is not a job.
            Err(_) => DeadLetter {
                entry: delivery.entry.clone(),
                id: find("id"),
                reason,
                received_at: find("received_at"),
                kind: find("kind"),
                body: find("body"),
            },
        }
    }
}

/// The alert a stream entry carries.
fn read_job(fields: &[(String, String)]) -> Result<Alert, String> {
    match field(fields, JOB) {
        Some(job) => {
            serde_json::from_str::<Alert>(job).map_err(|e| format!("job is not readable: {e}"))
        }
        // Queued by a Pyron from before jobs were one field: still read, so that an
        // upgrade strands no job.
        None => alert_from_fields(fields),
    }
}

/// A job queued as a field per attribute, as Pyron did before `job`.
fn alert_from_fields(fields: &[(String, String)]) -> Result<Alert, String> {
    let find = |name: &str| field(fields, name);
    let get = |name: &str| find(name).ok_or_else(|| format!("job has no field {name:?}"));
    let id = get("id")?
        .parse::<EventId>()
        .map_err(|e| format!("job id: {e}"))?;
    let received_at = get("received_at")?
        .parse::<i64>()
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .ok_or("job received_at is not a time in milliseconds")?;
    let kind = get("kind")?
        .parse::<AlertKind>()
        .map_err(|()| "job kind is not json or text")?;
    Ok(Alert {
        source: crate::ingest::default_source(),
        id,
        received_at,
        kind,
        content_type: get("content_type")?.to_owned(),
        body: get("body")?.to_owned(),
        json: None,
        sender: find("sender").map(str::to_owned),
        dedup_key: find("dedup_key").map(str::to_owned),
    })
}

/// Dedup keys are hashed: any length or bytes a sender uses make a short, safe Redis key.
fn dedup_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(DEDUP_PREFIX.len() + 64);
    out.push_str(DEDUP_PREFIX);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2))
}

/// Creates `stream` and its consumer group `group` if absent, the group starting at the
/// beginning of the stream.
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    timeout: Duration,
) -> Result<(), QueueError> {
    let created: Result<String, QueueError> =
        bounded(timeout, conn.xgroup_create_mkstream(stream, group, "0")).await;
    match created {
        Ok(_) => Ok(()),
        Err(QueueError::Redis(err)) if err.code() == Some("BUSYGROUP") => Ok(()),
        Err(err) => Err(err),
    }
}

/// One consumer of one group of one stream: the reads both the job stream and the
/// deliveries stream need.
pub struct Group<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub timeout: Duration,
}

impl Group<'_> {
    /// Up to `count` entries: with `pending` set to a stream id, this consumer's own
    /// unacknowledged ones after it (start at "0"); otherwise new ones, awaited for up to
    /// `block`.
    pub async fn read(
        &self,
        conn: &mut ConnectionManager,
        count: usize,
        block: Duration,
        pending: Option<&str>,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let mut options = StreamReadOptions::default()
            .group(self.group, self.consumer)
            .count(count);
        if pending.is_none() {
            options = options.block(block.as_millis() as usize);
        }
        let start = pending.unwrap_or(">");
        let reply: RedisValue = bounded(
            block + self.timeout,
            conn.xread_options(&[self.stream], &[start], &options),
        )
        .await?;
        read_reply(reply)
    }

    /// Takes over entries another consumer has held unacknowledged for `min_idle`.
    pub async fn claim(
        &self,
        conn: &mut ConnectionManager,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let reply: StreamAutoClaimReply = bounded(
            self.timeout,
            conn.xautoclaim_options(
                self.stream,
                self.group,
                self.consumer,
                min_idle.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(count),
            ),
        )
        .await?;
        Ok(reply.claimed.into_iter().map(StreamEntry::from).collect())
    }
}

/// A stream entry as read: its id, and its fields in order with their values as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    /// The value of the field `name`, if the entry has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        field(&self.fields, name)
    }
}

/// The value of the field `name` among an entry's fields, if it has it.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl From<StreamId> for StreamEntry {
    fn from(entry: StreamId) -> StreamEntry {
        StreamEntry {
            id: entry.id,
            fields: entry.map.into_iter().map(|(k, v)| (k, text(v))).collect(),
        }
    }
}

/// A value of an entry's field as text: taken as it is when it is UTF-8, as it always is
/// for what Pyron writes.
fn text(value: RedisValue) -> String {
    match value {
        RedisValue::BulkString(bytes) => String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        RedisValue::SimpleString(s) => s,
        other => format!("{other:?}"),
    }
}

/// The entries of an `XREADGROUP` reply of one stream, read from the reply as it came
/// (RESP2's array or RESP3's map; nil when the wait ended with nothing), moving the
/// values rather than copying them: the reply holds every job of the batch, bodies and
/// all. An entry deleted while pending comes with no fields.
fn read_reply(reply: RedisValue) -> Result<Vec<StreamEntry>, QueueError> {
    let unexpected = |what: &str| QueueError::Reply(format!("XREADGROUP: {what}"));
    let streams = match reply {
        RedisValue::Nil => return Ok(Vec::new()),
        RedisValue::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                RedisValue::Array(pair) if pair.len() == 2 => {
                    Ok(pair.into_iter().nth(1).unwrap_or(RedisValue::Nil))
                }
                _ => Err(unexpected("a stream is not a name and its entries")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        RedisValue::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(unexpected("not an array of streams")),
    };
    let mut read = Vec::new();
    for entries in streams {
        let RedisValue::Array(entries) = entries else {
            return Err(unexpected("a stream's entries are not an array"));
        };
        read.reserve(entries.len());
        for entry in entries {
            let RedisValue::Array(entry) = entry else {
                return Err(unexpected("an entry is not an array"));
            };
            let mut entry = entry.into_iter();
            let id = match entry.next() {
                Some(RedisValue::BulkString(id)) => {
                    String::from_utf8(id).map_err(|_| unexpected("an entry id is not text"))?
                }
                Some(RedisValue::SimpleString(id)) => id,
                _ => return Err(unexpected("an entry has no id")),
            };
            let fields = match entry.next() {
                Some(RedisValue::Array(values)) => {
                    let mut fields = Vec::with_capacity(values.len() / 2);
                    let mut values = values.into_iter();
                    while let (Some(name), Some(value)) = (values.next(), values.next()) {
                        fields.push((text(name), text(value)));
                    }
                    fields
                }
                Some(RedisValue::Map(pairs)) => pairs
                    .into_iter()
                    .map(|(name, value)| (text(name), text(value)))
                    .collect(),
                Some(RedisValue::Nil) | None => Vec::new(),
                Some(_) => return Err(unexpected("an entry's fields are not an array")),
            };
            read.push(StreamEntry { id, fields });
        }
    }
    Ok(read)
}

/// A connection manager whose commands give up after `response_timeout`.
pub async fn manager(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, QueueError> {
    let client = Client::open(url)?;
    let conn = bounded(
        response_timeout + Duration::from_secs(1),
        client.get_connection_manager_with_config(manager_config(response_timeout)),
    )
    .await?;
    Ok(conn)
}

async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(QueueError::from),
        Err(_) => Err(QueueError::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> RedisValue {
        RedisValue::BulkString(text.as_bytes().to_vec())
    }

    /// `ENQUEUE_ONCE` answers `{3, ''}` when it ran past its deadline: that, and only
    /// that, fences the jobs behind it.
    #[test]
    fn only_a_job_run_past_its_deadline_is_too_late() {
        let reply =
            |code: i64, value: &str| RedisValue::Array(vec![RedisValue::Int(code), bulk(value)]);
        assert!(too_late(&reply(3, "")));
        assert!(!too_late(&reply(1, "1796025727931-0")));
        assert!(!too_late(&reply(2, "01a22b79-b895-724d-815b-30837a9e5959")));
        assert!(!too_late(&reply(0, "01a22b79-b895-724d-815b-30837a9e5959")));
        assert!(!too_late(&RedisValue::Nil));
    }

    #[test]
    fn a_read_reply_gives_its_entries_with_their_fields_in_order() {
        let entry = |id: &str, fields: RedisValue| RedisValue::Array(vec![bulk(id), fields]);
        let fields = || {
            RedisValue::Array(vec![
                bulk("job"),
                bulk("{}"),
                bulk("duplicate_of"),
                bulk("x"),
            ])
        };
        let entries = RedisValue::Array(vec![
            entry("1-0", fields()),
            // Deleted while pending: the id alone.
            entry("2-0", RedisValue::Nil),
        ]);
        let expected = vec![
            StreamEntry {
                id: "1-0".into(),
                fields: vec![
                    ("job".into(), "{}".into()),
                    ("duplicate_of".into(), "x".into()),
                ],
            },
            StreamEntry {
                id: "2-0".into(),
                fields: vec![],
            },
        ];
        let resp2 = RedisValue::Array(vec![RedisValue::Array(vec![bulk(STREAM), entries.clone()])]);
        assert_eq!(read_reply(resp2).unwrap(), expected);
        let resp3 = RedisValue::Map(vec![(bulk(STREAM), entries)]);
        assert_eq!(read_reply(resp3).unwrap(), expected);
        assert_eq!(read_reply(RedisValue::Nil).unwrap(), vec![]);
        assert_eq!(expected[0].field("duplicate_of"), Some("x"));
    }

    #[test]
    fn a_read_reply_of_another_shape_is_an_error_that_says_so() {
        for reply in [
            RedisValue::Int(1),
            RedisValue::Array(vec![bulk(STREAM)]),
            RedisValue::Array(vec![RedisValue::Array(vec![
                bulk(STREAM),
                RedisValue::Int(1),
            ])]),
            RedisValue::Array(vec![RedisValue::Array(vec![
                bulk(STREAM),
                RedisValue::Array(vec![RedisValue::Array(vec![])]),
            ])]),
        ] {
            let err = read_reply(reply).unwrap_err();
            assert!(err.to_string().contains("XREADGROUP"), "{err}");
        }
    }

    #[test]
    fn dedup_keys_are_fixed_length_hashes() {
        let key = dedup_key("Long Entry 7");
        assert!(key.starts_with(DEDUP_PREFIX));
        assert_eq!(key.len(), DEDUP_PREFIX.len() + 64);
        assert_eq!(key, dedup_key("Long Entry 7"));
        assert_ne!(key, dedup_key("Long Entry 8"));
    }

    #[test]
    fn a_stream_entry_needs_every_field_of_an_alert() {
        let entry = |kind: &str, with_body: bool| -> Vec<(String, String)> {
            [
                ("id", "0192f0c0-0000-7000-8000-000000000000"),
                ("received_at", "1764339300000"),
                ("kind", kind),
                ("content_type", "text/plain"),
                ("body", "hi"),
            ]
            .into_iter()
            .filter(|(k, _)| with_body || *k != "body")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        let alert = alert_from_fields(&entry("text", true)).unwrap();
        assert_eq!(alert.kind, AlertKind::Text);
        assert!(
            alert_from_fields(&entry("xml", true))
                .unwrap_err()
                .contains("kind")
        );
        assert!(
            alert_from_fields(&entry("json", false))
                .unwrap_err()
                .contains("body")
        );
    }

    #[test]
    fn a_job_is_one_field_that_reads_back_as_the_alert() {
        let alert = Alert {
            id: "0192f0c0-0000-7000-8000-000000000000".parse().unwrap(),
            source: "tradingview".into(),
            received_at: Utc.timestamp_millis_opt(1764339300123).unwrap(),
            kind: AlertKind::Text,
            content_type: "text/plain".into(),
            body: "BTCUSDT Crossing 67,000.00".into(),
            json: Some(serde_json::json!({"dropped": true})),
            dedup_key: None,
            sender: Some("127.0.0.1".into()),
        };
        let field = String::from_utf8(job(&alert)).unwrap();
        assert_eq!(
            field,
            r#"{"id":"0192f0c0-0000-7000-8000-000000000000","source":"tradingview","received_at":1764339300123,"kind":"text","content_type":"text/plain","body":"BTCUSDT Crossing 67,000.00","sender":"127.0.0.1"}"#
        );
        let read = read_job(&[(JOB.into(), field)]).unwrap();
        assert_eq!(read.id, alert.id);
        assert_eq!(read.received_at, alert.received_at);
        assert_eq!(
            (read.body, read.sender, read.dedup_key),
            (alert.body, alert.sender, None)
        );
        assert!(
            read.json.is_none(),
            "the parsed JSON is read again from the body"
        );
        assert!(
            read_job(&[(JOB.into(), "{\"id\":1}".into())])
                .unwrap_err()
                .starts_with("job is not readable")
        );
    }

    #[test]
    fn a_job_queued_as_a_field_per_attribute_is_still_read() {
        let fields: Vec<(String, String)> = [
            ("id", "0192f0c0-0000-7000-8000-000000000000"),
            ("received_at", "1764339300000"),
            ("kind", "json"),
            ("content_type", "application/json"),
            ("body", "{}"),
            ("dedup_key", "k-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let alert = read_job(&fields).unwrap();
        assert_eq!(alert.kind, AlertKind::Json);
        assert_eq!(alert.dedup_key.as_deref(), Some("k-1"));
    }
}
