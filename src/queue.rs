//! The job queue: the Redis stream `webhook-jobs`, read by the consumer group
//! `pyron-workers`, with dead letters in `webhook-jobs:dead`.
//!
//! A job carries the whole alert (id, receive time, kind, content type, redacted body,
//! sender, dedup key), so a worker needs nothing else to process it and can rebuild the
//! audit record should it be missing. Deduplication lives here too: a key
//! `pyron:dedup:<sha256>` is set with the event id, atomically with the `XADD`, by one Lua
//! script, so a duplicate can never create a second job and a first alert can never be
//! marked seen without its job.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use redis::{
    AsyncCommands, Client, RedisError, Script, Value as RedisValue,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{StreamId, StreamReadOptions, StreamReadReply},
};
use sha2::{Digest, Sha256};

use crate::{
    domain::{AlertKind, EventId},
    ingest::Alert,
};

pub const STREAM: &str = "webhook-jobs";
pub const GROUP: &str = "pyron-workers";
pub const DEAD_LETTERS: &str = "webhook-jobs:dead";
const DEDUP_PREFIX: &str = "pyron:dedup:";

/// Sets the dedup key and adds the job in one step, or reports the first alert's id.
const ENQUEUE_ONCE: &str = r"
local first = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2], 'GET')
if first then
  return {0, first}
end
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))}
";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// What happened to an alert offered to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job, with its stream entry id.
    Queued { entry: String },
    /// The dedup key was seen before; no job was added. Holds the first alert's id.
    Duplicate { first: String },
}

/// A stream entry; `alert` is `Err` when the entry cannot be read as a job at all. The
/// alert's `json` is left for the worker to parse from the body.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub entry: String,
    pub alert: Result<Alert, String>,
    fields: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    timeout: Duration,
    enqueue_once: Script,
}

impl Queue {
    /// Connects, failing if Redis cannot be reached within `timeout`. Every later command
    /// is bounded by the same `timeout`, and the connection is re-established on its own.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, QueueError> {
        let conn = manager(url, timeout).await?;
        Ok(Queue {
            conn,
            timeout,
            enqueue_once: Script::new(ENQUEUE_ONCE),
        })
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

    /// Adds the alert's job, unless its dedup key was seen within `dedup_ttl`.
    pub async fn enqueue(
        &self,
        alert: &Alert,
        dedup_ttl: Duration,
    ) -> Result<Enqueued, QueueError> {
        let id = alert.id.to_string();
        let received_at = alert.received_at.timestamp_millis().to_string();
        let mut fields: Vec<(&str, &str)> = vec![
            ("id", &id),
            ("received_at", &received_at),
            ("kind", alert.kind.as_str()),
            ("content_type", &alert.content_type),
            ("body", &alert.body),
        ];
        if let Some(sender) = &alert.sender {
            fields.push(("sender", sender));
        }
        if let Some(key) = &alert.dedup_key {
            fields.push(("dedup_key", key));
        }
        let mut conn = self.conn.clone();

        let Some(key) = &alert.dedup_key else {
            let entry: String = bounded(self.timeout, conn.xadd(STREAM, "*", &fields)).await?;
            return Ok(Enqueued::Queued { entry });
        };

        let mut invocation = self.enqueue_once.key(STREAM);
        invocation
            .key(dedup_key(key))
            .arg(&id)
            .arg(dedup_ttl.as_secs().max(1));
        for (name, value) in &fields {
            invocation.arg(*name).arg(*value);
        }
        let (queued, value): (i64, String) =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(if queued == 1 {
            Enqueued::Queued { entry: value }
        } else {
            Enqueued::Duplicate { first: value }
        })
    }
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

    /// Creates the stream and the group if absent. The group starts at the beginning of the
    /// stream, so jobs queued before the first worker ever ran are processed too.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let created: Result<String, QueueError> = bounded(
            self.timeout,
            conn.xgroup_create_mkstream(STREAM, GROUP, "0"),
        )
        .await;
        match created {
            Ok(_) => Ok(()),
            Err(QueueError::Redis(err)) if err.code() == Some("BUSYGROUP") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Reads up to `count` entries. `pending` re-reads entries this consumer was given
    /// before but never acknowledged (after a failed write, say); otherwise new entries
    /// are awaited for up to `block`.
    pub async fn read(
        &self,
        count: usize,
        block: Duration,
        pending: bool,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.reader.clone();
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(count);
        if !pending {
            options = options.block(block.as_millis() as usize);
        }
        let start = if pending { "0" } else { ">" };
        let reply: Option<StreamReadReply> = bounded(
            block + self.timeout,
            conn.xread_options(&[STREAM], &[start], &options),
        )
        .await?;
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(entries.map(Delivery::from_entry).collect())
    }

    /// Acknowledges entries and deletes them from the stream in one transaction: once a
    /// job's result is recorded in MongoDB the stream has no more use for it.
    pub async fn ack(&self, entries: &[&str]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xack(STREAM, GROUP, entries)
            .ignore()
            .xdel(STREAM, entries)
            .ignore();
        bounded(self.timeout, pipe.query_async::<()>(&mut conn)).await?;
        Ok(())
    }

    /// Moves an entry to the dead-letter stream with the reason, then acknowledges it.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let mut fields: Vec<(&str, &str)> = delivery
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        fields.push(("reason", reason));
        fields.push(("entry", &delivery.entry));
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
    fn from_entry(entry: StreamId) -> Delivery {
        let fields: Vec<(String, String)> = entry
            .map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    RedisValue::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    RedisValue::SimpleString(s) => s,
                    other => format!("{other:?}"),
                };
                (k, v)
            })
            .collect();
        let alert = alert_from_fields(&fields);
        Delivery {
            entry: entry.id,
            alert,
            fields,
        }
    }
}

fn alert_from_fields(fields: &[(String, String)]) -> Result<Alert, String> {
    let find = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
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
        id,
        received_at,
        kind,
        content_type: get("content_type")?.clone(),
        body: get("body")?.clone(),
        json: None,
        sender: find("sender").cloned(),
        dedup_key: find("dedup_key").cloned(),
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

async fn manager(url: &str, response_timeout: Duration) -> Result<ConnectionManager, QueueError> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let conn = bounded(
        response_timeout + Duration::from_secs(1),
        client.get_connection_manager_with_config(config),
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
}
