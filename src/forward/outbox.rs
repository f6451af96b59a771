//! The deliveries stream: `webhook-deliveries`, read by the group `pyron-forwarders`, dead
//! and expired deliveries in `webhook-deliveries:dead`.
//!
//! The worker queues a processed alert's deliveries (`fan_out`) before it acknowledges
//! the alert's job. Each is added once: a key `pyron:fanout:<delivery id>` is set with
//! the `XADD` by one script, so a job processed twice (its worker died before
//! acknowledging) queues its deliveries once.

use std::time::Duration;

use redis::{
    AsyncCommands, Script, Value as RedisValue, aio::ConnectionManager, streams::StreamRangeReply,
};

use super::{Job, Queued};
use crate::queue::{Group, QueueError, StreamEntry};

pub const STREAM: &str = "webhook-deliveries";
pub const GROUP: &str = "pyron-forwarders";
pub const DEAD_LETTERS: &str = "webhook-deliveries:dead";
/// Prefix of the keys that make a fan-out happen once per delivery.
pub const FANOUT_PREFIX: &str = "pyron:fanout:";
/// How long a fan-out key outlives its delivery's queuing: far past any maximum age.
const FANOUT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

const FIELD: &str = "job";

const FAN_OUT_ONCE: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
end
return false
";

/// Moves a dead delivery back to the stream, marked with how to send it again.
const REPLAY: &str = r"
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local job = nil
for i = 1, #fields, 2 do
  if fields[i] == 'job' then job = fields[i + 1] end
end
if not job then
  return false
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', job, 'replay', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[1])
return entry
";

/// One entry read from the stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub entry: String,
    pub job: Result<Job, String>,
    pub raw: String,
}

/// A dead or expired delivery, as the dead-letter stream keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadDelivery {
    pub entry: String,
    pub id: Option<String>,
    pub status: String,
    pub reason: String,
    pub attempts: u32,
    pub dead_at: i64,
}

/// How a replayed delivery is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replay {
    /// The same delivery, sent now whatever its age: the operator's call.
    AsItWas,
    /// Sent only if the route still matches, with a new deadline counted from now.
    Now,
}

impl Replay {
    pub fn as_str(self) -> &'static str {
        match self {
            Replay::AsItWas => "as-it-was",
            Replay::Now => "now",
        }
    }
}

/// Queues deliveries, once each: answers how many were new.
pub async fn fan_out(
    conn: &mut ConnectionManager,
    jobs: &[Queued],
    timeout: Duration,
) -> Result<usize, QueueError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(FAN_OUT_ONCE));
    if jobs.is_empty() {
        return Ok(0);
    }
    // The pipeline loads the script first (Redis may have lost it in a restart), then
    // runs it by its hash: Redis hashes the script once a batch, not once a job.
    let mut pipe = redis::pipe();
    pipe.load_script(&SCRIPT).ignore();
    for job in jobs {
        pipe.cmd("EVALSHA")
            .arg(SCRIPT.get_hash())
            .arg(2)
            .arg(STREAM)
            .arg(format!("{FANOUT_PREFIX}{}", job.id))
            .arg(FANOUT_TTL.as_secs())
            .arg(&job.job);
    }
    let added: Vec<Option<String>> = bounded(timeout, pipe.query_async(conn)).await?;
    Ok(added.iter().filter(|a| a.is_some()).count())
}

/// pyron-forwarder's side of the stream.
#[derive(Clone)]
pub struct Outbox {
    conn: ConnectionManager,
    reader: ConnectionManager,
    timeout: Duration,
    name: String,
}

impl Outbox {
    /// Connects; blocking reads get a connection of their own, as the worker's do.
    pub async fn connect(
        url: &str,
        name: &str,
        timeout: Duration,
        block: Duration,
    ) -> Result<Self, QueueError> {
        Ok(Outbox {
            conn: crate::queue::manager(url, timeout).await?,
            reader: crate::queue::manager(url, block + timeout).await?,
            timeout,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        crate::queue::ensure_group(&mut self.conn.clone(), STREAM, GROUP, self.timeout).await
    }

    fn group(&self) -> Group<'_> {
        Group {
            stream: STREAM,
            group: GROUP,
            consumer: &self.name,
            timeout: self.timeout,
        }
    }

    /// New entries (waiting up to `block`), or with `pending` this consumer's own
    /// unacknowledged ones after that id.
    pub async fn read(
        &self,
        count: usize,
        block: Duration,
        pending: Option<&str>,
    ) -> Result<Vec<Entry>, QueueError> {
        let entries = self
            .group()
            .read(&mut self.reader.clone(), count, block, pending)
            .await?;
        Ok(entries.into_iter().map(Entry::from_stream).collect())
    }

    /// Takes over entries another forwarder has held unacknowledged for `min_idle`.
    pub async fn claim(&self, min_idle: Duration, count: usize) -> Result<Vec<Entry>, QueueError> {
        let entries = self
            .group()
            .claim(&mut self.conn.clone(), min_idle, count)
            .await?;
        Ok(entries.into_iter().map(Entry::from_stream).collect())
    }

    /// Claims these entries for this consumer again, which resets their idle time.
    pub async fn touch(&self, entries: &[String]) -> Result<(), QueueError> {
        for chunk in entries.chunks(1000) {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(STREAM)
                .arg(GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID");
            let mut conn = self.conn.clone();
            bounded(self.timeout, cmd.query_async::<RedisValue>(&mut conn)).await?;
        }
        Ok(())
    }

    /// Settles entries: delivered ones are acknowledged and deleted; dead and expired ones
    /// move to the dead letters with their reason; counts go to the dashboard's tallies.
    pub async fn settle(
        &self,
        delivered: &[&str],
        dead: &[(&Entry, &str, &str, u32)],
        counts: &[(String, i64)],
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !delivered.is_empty() {
            pipe.xack(STREAM, GROUP, delivered)
                .ignore()
                .xdel(STREAM, delivered)
                .ignore();
        }
        let now = chrono::Utc::now().timestamp_millis().to_string();
        for (entry, status, reason, attempts) in dead {
            let id = entry.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
            pipe.xadd(
                DEAD_LETTERS,
                "*",
                &[
                    ("job", entry.raw.as_str()),
                    ("id", id.as_str()),
                    ("status", status),
                    ("reason", reason),
                    ("attempts", &attempts.to_string()),
                    ("entry", entry.entry.as_str()),
                    ("dead_at", now.as_str()),
                ],
            )
            .ignore()
            .xack(STREAM, GROUP, &[&entry.entry])
            .ignore()
            .xdel(STREAM, &[&entry.entry])
            .ignore();
        }
        for (field, n) in counts {
            pipe.hincr(crate::stats::DELIVERY_COUNTS, field, *n)
                .ignore();
        }
        let mut conn = self.conn.clone();
        bounded(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }

    /// The stream's length and its pending count.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        depth(&mut self.conn.clone(), self.timeout).await
    }
}

pub async fn depth(
    conn: &mut ConnectionManager,
    timeout: Duration,
) -> Result<(u64, u64), QueueError> {
    let mut pipe = redis::pipe();
    pipe.xlen(STREAM).cmd("XPENDING").arg(STREAM).arg(GROUP);
    let (length, pending): (u64, RedisValue) = bounded(timeout, pipe.query_async(conn)).await?;
    let pending = match pending {
        RedisValue::Array(items) => match items.first() {
            Some(RedisValue::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    Ok((length, pending))
}

/// The newest dead deliveries first.
pub async fn dead_letters(
    conn: &mut ConnectionManager,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<DeadDelivery>, QueueError> {
    let reply: StreamRangeReply =
        bounded(timeout, conn.xrevrange_count(DEAD_LETTERS, "+", "-", limit)).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| {
            let entry = StreamEntry::from(entry);
            let get = |k: &str| entry.field(k).map(str::to_owned);
            DeadDelivery {
                entry: entry.id.clone(),
                id: get("id"),
                status: get("status").unwrap_or_else(|| "dead".into()),
                reason: get("reason").unwrap_or_default(),
                attempts: get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
                dead_at: get("dead_at").and_then(|a| a.parse().ok()).unwrap_or(0),
            }
        })
        .collect())
}

/// Moves the dead letters of these delivery ids back to the stream; answers how many.
pub async fn replay(
    conn: &mut ConnectionManager,
    ids: &[String],
    how: Replay,
    timeout: Duration,
) -> Result<usize, QueueError> {
    let letters = dead_letters(conn, 10_000, timeout).await?;
    let script = Script::new(REPLAY);
    let mut moved = 0;
    for id in ids {
        // Newest first: a delivery that died twice is replayed from its last death.
        let Some(letter) = letters
            .iter()
            .find(|l| l.id.as_deref() == Some(id.as_str()))
        else {
            continue;
        };
        let entry: Option<String> = bounded(
            timeout,
            script
                .key(STREAM)
                .key(DEAD_LETTERS)
                .arg(&letter.entry)
                .arg(how.as_str())
                .invoke_async(conn),
        )
        .await?;
        if entry.is_some() {
            moved += 1;
            tracing::info!(delivery = %id, replay = how.as_str(), "dead delivery replayed");
        }
    }
    Ok(moved)
}

impl Entry {
    fn from_stream(entry: StreamEntry) -> Entry {
        let raw = entry.field(FIELD).map(str::to_owned);
        let replay = entry.field("replay");
        let job = match &raw {
            None => Err("the entry has no job field".to_owned()),
            Some(raw) => serde_json::from_str::<Job>(raw)
                .map_err(|e| format!("the job does not read: {e}"))
                .map(|mut job| {
                    job.replay = replay.and_then(|r| {
                        serde_json::from_value(serde_json::Value::String(r.to_owned())).ok()
                    });
                    job
                }),
        };
        Entry {
            entry: entry.id,
            job,
            raw: raw.unwrap_or_default(),
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    op: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(result) => result.map_err(QueueError::from),
        Err(_) => Err(QueueError::Timeout(timeout)),
    }
}
