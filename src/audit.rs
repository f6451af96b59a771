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
//!
//! `KeptWriter` writes the records of alerts Redis could not take, which MongoDB alone
//! keeps: there each request waits for its own record (its 202 depends on it), and the
//! records that gather while one insert is out go together in the next.

use std::time::Duration;

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    ingest::Alert,
    queue::Queue,
    store::{Arrival, Store, StoreError},
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

/// Most kept records waiting for an insert; past it a request is answered 503 at once.
const KEPT_QUEUE: usize = 4096;

/// An alert to keep, by when its request stops waiting, and where its answer goes.
struct Keep {
    alert: Alert,
    deadline: Instant,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// Writes the audit records of alerts kept in MongoDB alone (marked `unqueued`), journaled.
/// One insert at a time: an alert alone goes at once, and what arrives meanwhile goes in
/// the next insert, up to `BATCH`. One insert per alert held FerretDB seconds behind after
/// a Redis stall at 3,000 alerts/s; a few large ones cost it what the queued alerts'
/// records cost. A record whose request stopped waiting before its insert began is not
/// written at all.
#[derive(Clone)]
pub struct KeptWriter {
    tx: mpsc::Sender<Keep>,
}

impl KeptWriter {
    /// Starts the writer; it stops once every `KeptWriter` is dropped and what it holds is
    /// written.
    pub fn start(store: Store) -> KeptWriter {
        let (tx, rx) = mpsc::channel(KEPT_QUEUE);
        tokio::spawn(keep(store, rx));
        KeptWriter { tx }
    }

    /// Writes the alert's record; the answer comes once MongoDB has it journaled (or
    /// refused it). Left unwritten if its insert has not begun by `deadline`.
    pub fn write(
        &self,
        alert: Alert,
        deadline: Instant,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (answer, answered) = oneshot::channel();
        let keep = Keep {
            alert,
            deadline,
            answer,
        };
        if let Err(err) = self.tx.try_send(keep) {
            let reason = match err {
                mpsc::error::TrySendError::Full(_) => "too many records wait for MongoDB",
                mpsc::error::TrySendError::Closed(_) => "pyron-api is stopping",
            };
            let _ = err
                .into_inner()
                .answer
                .send(Err(StoreError::Refused(reason.into())));
        }
        answered
    }
}

async fn keep(store: Store, mut rx: mpsc::Receiver<Keep>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let now = Instant::now();
        let (late, due): (Vec<Keep>, Vec<Keep>) = batch.drain(..).partition(|k| k.deadline <= now);
        for keep in late {
            let _ = keep.answer.send(Err(StoreError::Timeout(Duration::ZERO)));
        }
        if due.is_empty() {
            continue;
        }
        let alerts: Vec<&Alert> = due.iter().map(|k| &k.alert).collect();
        match store.insert_kept(&alerts).await {
            Ok(written) => {
                for (keep, written) in due.into_iter().zip(written) {
                    let _ = keep.answer.send(written.map_err(StoreError::Refused));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for keep in due {
                    let _ = keep.answer.send(Err(StoreError::Refused(message.clone())));
                }
            }
        }
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
