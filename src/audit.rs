//! The audit records of queued alerts, written in batches off the request path.
//!
//! Once Redis has an alert's job, the audit record is a convenience (the worker writes it
//! from the job if it is missing), so pyron-api hands it to this writer and answers. The
//! writer inserts whatever has gathered, up to `BATCH` records per insert, without waiting
//! to fill a batch: under light load each record goes at once, under heavy load many go
//! per insert. The queue is bounded: when MongoDB falls behind, records past `QUEUE` are
//! left to the worker instead of piling up in memory.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::{
    ingest::Alert,
    store::{Arrival, Store},
};

const QUEUE: usize = 4096;
const BATCH: usize = 256;
/// How long shutdown waits for the last batch.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<(Alert, Arrival)>,
}

impl AuditWriter {
    /// Starts the writer; it stops, after writing what it holds, once `stop` turns true.
    pub fn start(
        store: Store,
        stop: watch::Receiver<bool>,
    ) -> (AuditWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, rx, stop));
        (AuditWriter { tx }, task)
    }

    /// Queues an audit record; false (and nothing queued) when the writer is full.
    pub fn offer(&self, alert: Alert, arrival: Arrival) -> bool {
        self.tx.try_send((alert, arrival)).is_ok()
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<(Alert, Arrival)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
            }
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if !stopping {
                    continue;
                }
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    write(&store, &mut batch).await;
                }
                return;
            }
        }
        write(&store, &mut batch).await;
    }
}

async fn write(store: &Store, batch: &mut Vec<(Alert, Arrival)>) {
    if batch.is_empty() {
        return;
    }
    match tokio::time::timeout(DRAIN, store.insert_audits(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(records = batch.len(), error = %err, "audit records deferred to the worker")
        }
        Err(_) => tracing::warn!(
            records = batch.len(),
            "audit records deferred to the worker: MongoDB too slow"
        ),
    }
    batch.clear();
}
