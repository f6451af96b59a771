//! The audit records of queued alerts, written in batches off the request path.
//!
//! Once Redis has an alert's job, the audit record is a convenience (the worker writes it
//! from the job if it is missing), so pyron-api hands it to this writer and answers. The
//! writer inserts whatever has gathered, up to `BATCH` records per insert. Under light
//! load (the last insert held one record) each record goes at once; under load the writer
//! gathers for `WINDOW` first, so that MongoDB takes a few large inserts rather than
//! many small ones: each insert has a cost of its own, whatever it holds. The queue is
//! bounded: when MongoDB falls behind, records past `QUEUE` are left to the worker
//! instead of piling up in memory.
//!
//! After each batch the writer marks the alerts it wrote in Redis (see `queue`), and the
//! worker writes the audit records of the jobs it finds unmarked: whatever this writer
//! could not write, dropped, or was holding when pyron-api died.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ingest::Alert,
    queue::Queue,
    store::{Arrival, Store},
};

const QUEUE: usize = 4096;
const BATCH: usize = 256;
/// Under load, how long records gather before an insert. The worker leaves a fresh job's
/// audit record to this writer for longer (`delivery::settle::AUDIT_GRACE`).
pub const WINDOW: Duration = Duration::from_millis(20);
/// How long shutdown waits for the last batch.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<(Alert, Arrival)>,
}

impl AuditWriter {
    /// Starts the writer; it stops, after writing what it holds, once `stop` is
    /// cancelled.
    pub fn start(
        store: Store,
        queue: Queue,
        stop: CancellationToken,
    ) -> (AuditWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(RecordsAndMarkers { store, queue }, rx, stop));
        (AuditWriter { tx }, task)
    }

    /// Queues an audit record; false (and nothing queued) when the writer is full.
    pub fn offer(&self, alert: Alert, arrival: Arrival) -> bool {
        self.tx.try_send((alert, arrival)).is_ok()
    }
}

/// Where the writer writes: the records to MongoDB, then their markers to Redis.
struct RecordsAndMarkers {
    store: Store,
    queue: Queue,
}

async fn run(
    store: RecordsAndMarkers,
    mut rx: mpsc::Receiver<(Alert, Arrival)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut loaded = false;
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
            }
            () = stop.cancelled() => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    write(&store, &mut batch).await;
                }
                return;
            }
        }
        if loaded {
            gather(&mut rx, &mut batch, &stop).await;
        }
        loaded = batch.len() > 1;
        write(&store, &mut batch).await;
    }
}

/// Adds what arrives within `WINDOW` to the batch, until it is full or the writer stops.
async fn gather(
    rx: &mut mpsc::Receiver<(Alert, Arrival)>,
    batch: &mut Vec<(Alert, Arrival)>,
    stop: &CancellationToken,
) {
    let until = tokio::time::Instant::now() + WINDOW;
    tokio::select! {
        () = crate::batch::gather(rx, batch, BATCH, until) => {}
        () = stop.cancelled() => {}
    }
}

async fn write(stores: &RecordsAndMarkers, batch: &mut Vec<(Alert, Arrival)>) {
    if batch.is_empty() {
        return;
    }
    match tokio::time::timeout(DRAIN, stores.store.insert_audits(batch)).await {
        Ok(Ok(written)) => {
            // A record that was there already was written by a worker, which did not find
            // it marked and will not remove a marker set now.
            let written = batch
                .iter()
                .zip(written)
                .filter(|(_, written)| *written)
                .map(|((alert, _), _)| alert);
            if let Err(err) = stores.queue.mark_audited(written).await {
                tracing::debug!(records = batch.len(), error = %err, "audit records not marked; the worker writes them again");
            }
        }
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
