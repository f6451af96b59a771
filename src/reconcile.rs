//! The reconciler: queues the alerts that only MongoDB took while Redis was down.
//!
//! pyron-api marks such an alert's audit record `unqueued`, answers 202, and hands the
//! alert itself to the reconciler (`Handoff`). The reconciler queues what it was handed
//! (`Queue::requeue`, safe to repeat) as soon as Redis takes it, trying again within a
//! second while Redis is down. A task of its own then marks the records `queued`, or
//! `duplicate` when an idempotency key turns out to belong to an earlier alert, at a pace
//! the store can bear (`MarkPace`); queueing never waits for it.
//!
//! Order across an outage: while the hand-off owes the stream an alert (one being kept in
//! MongoDB, or kept and not yet queued), an alert that would go to the stream first waits
//! a moment for the reconciler to queue what is owed (`Handoff::drained`, which hurries
//! it), or, should that not happen in time, is kept in MongoDB after them. Otherwise, once
//! Redis answered again, a newer signal queued directly would be delivered before the
//! older ones still waiting here, and those would expire by the order rule (a stall of
//! under a second cost every signal of that second). Past the hand-off's limit, the alerts
//! that did not fit are found by a sweep, and order across them is not kept.
//!
//! It looks for `unqueued` records in `audit` (a sweep) only where the hand-off cannot
//! have them all: once both stores have first answered after start-up, for records an
//! earlier process left behind, and after the hand-off was full. A sweep is a query on
//! `audit.status`: cheap on `mongod`, which uses the index, a scan of the whole collection
//! on FerretDB, which uses none (seconds a page once `audit` holds a few hundred thousand
//! records). When every kept alert started a sweep, a Redis stall of under a second at
//! 3,000 alerts/s left FerretDB scanning for minutes, each sweep outrunning its budget,
//! and the alerts unqueued all that time.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    clock::SharedInstant,
    ingest::Alert,
    queue::{Enqueued, Queue, QueueError},
    store::{Store, StoreError},
};

/// Records read per page of a sweep, and alerts queued per Redis pipeline.
const PAGE: usize = 1000;

/// Shortest wait before sweeping again for records still in their grace.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Wait between attempts while a store is down (jittered: half of it to all of it).
const RETRY: Duration = Duration::from_secs(1);

/// Longest wait for alerts still being written to MongoDB before queueing those handed
/// over: a write that ends later may hold an older alert. (An alert whose job is still on
/// its way to Redis may be kept too: that wait is as long as the queue's timeout.)
const SETTLE: Duration = Duration::from_millis(100);

/// First wait before queueing handed-over alerts again (doubling up to `RETRY`): new
/// alerts go to MongoDB alone until they are queued, so a short stall ends quickly.
const HANDED_RETRY: Duration = Duration::from_millis(100);

/// Most alerts held in the hand-off (some 3 to 30 MB): a Redis outage of several seconds
/// at 3,000 alerts/s, hours at a trader's rate. Past it, a sweep finds the rest.
pub const HANDOFF_LIMIT: usize = 20_000;

/// Most audit records marked per statement.
const MARK_CHUNK: usize = 100;

/// A marking statement slower than this halves the next one's records.
const MARK_SLOW: Duration = Duration::from_secs(1);

/// Marking is bookkeeping: a store slow to update spends at most a tenth of its time on
/// it. After a statement that took `t` over `MARK_SLOW`, the next waits
/// `MARK_SPACING · t`; quicker ones follow each other at once.
const MARK_SPACING: u32 = 9;

/// The longest wait between attempts at marking.
const MAX_MARK_WAIT: Duration = Duration::from_secs(300);

/// After a slow marking statement, the next waits until pyron-api has received no alert
/// for this long too.
const MARK_QUIET: Duration = Duration::from_secs(5);

/// How fast the reconciler marks audit records: statements of up to `chunk` records (one
/// at first, doubling while they are quick), the next not before `at`. On `mongod` a
/// statement takes milliseconds and marking goes at once; a wire server that cannot use
/// its indexes (FerretDB) scans `audit` for every record it updates (half a second each
/// with 150,000 records here) and holds its one writer meanwhile: there statements
/// shrink to about a second, and slower ones are spaced so that alerts keep flowing.
/// Under load even one record's statement held FerretDB for seconds, and every alert
/// behind it waited as long: the first statement, and any after a slow one (`slow`), also
/// waits for a pause in the alerts (`MARK_QUIET`). Marking is bookkeeping; it can wait
/// for the store to have time.
struct MarkPace {
    chunk: usize,
    at: Instant,
    slow: bool,
    retry: Backoff,
}

impl MarkPace {
    fn new() -> MarkPace {
        // One record first: on a store slow to update, even a hundred would hold its
        // writer for a minute. And slow until a statement shows otherwise: the first one
        // comes right after an outage, when alerts may be arriving fast.
        MarkPace {
            chunk: 1,
            at: Instant::now(),
            slow: true,
            retry: Backoff::new(RETRY, MAX_MARK_WAIT),
        }
    }

    /// When the next statement may run, the last alert having arrived at `last_alert`.
    fn ready_at(&self, last_alert: Instant) -> Instant {
        if self.slow {
            self.at.max(last_alert + MARK_QUIET)
        } else {
            self.at
        }
    }

    /// A statement marked its records in `took`.
    fn done(&mut self, took: Duration, now: Instant) {
        self.retry.reset();
        self.at = now;
        self.slow = took > MARK_SLOW;
        if took > MARK_SLOW {
            self.chunk = (self.chunk / 2).max(1);
            self.at = now + took * MARK_SPACING;
        } else if took < MARK_SLOW / 2 {
            self.chunk = (self.chunk * 2).min(MARK_CHUNK);
        }
    }

    /// A statement failed after `took`; answers the wait before the next.
    fn failed(&mut self, err: &ReconcileError, took: Duration, now: Instant) -> Duration {
        let mut wait = wait_after(err, &mut self.retry);
        // A statement MongoDB gave up on may still be running there.
        self.slow = took > MARK_SLOW;
        if took > MARK_SLOW {
            self.chunk = (self.chunk / 4).max(1);
            wait = wait.max(took * MARK_SPACING);
        }
        self.at = now + wait;
        wait
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// pyron-api's alerts kept in MongoDB alone and answered 202, on their way to the
/// reconciler.
#[derive(Clone)]
pub struct Handoff {
    inner: Arc<HandoffInner>,
}

struct HandoffInner {
    alerts: Mutex<Vec<Alert>>,
    limit: usize,
    /// Alerts being kept in MongoDB alone, or kept and handed over, not yet in the stream.
    owed: AtomicUsize,
    /// Alerts being written to MongoDB alone, not yet handed over (nor given up).
    writing: AtomicUsize,
    /// Alerts whose job is on its way to Redis: any of them may yet be kept in MongoDB
    /// alone (Redis did not answer in time, or refused it as too late).
    enqueuing: AtomicUsize,
    /// Nothing is owed any more.
    drained: Notify,
    /// Somebody waits for what is owed: the reconciler tries again at once.
    hurry: Notify,
    /// When pyron-api last received an alert (its start, if none).
    last_alert: SharedInstant,
    /// An alert did not fit: only a sweep finds it.
    missed: AtomicBool,
    /// Whose turn it is to go to the stream (`turn`): a fair lock, taken in arrival order.
    turns: tokio::sync::Mutex<()>,
    wake: Notify,
}

impl Handoff {
    pub fn new(limit: usize) -> Handoff {
        Handoff {
            inner: Arc::new(HandoffInner {
                alerts: Mutex::new(Vec::new()),
                limit,
                owed: AtomicUsize::new(0),
                writing: AtomicUsize::new(0),
                enqueuing: AtomicUsize::new(0),
                drained: Notify::new(),
                hurry: Notify::new(),
                last_alert: SharedInstant::new(),
                missed: AtomicBool::new(false),
                turns: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    /// pyron-api received an alert: marking, when slow, waits for a pause.
    pub fn arrived(&self) {
        self.inner.last_alert.set(std::time::Instant::now());
    }

    /// When pyron-api last received an alert (its start, if none).
    fn last_alert(&self) -> Instant {
        Instant::from_std(self.inner.last_alert.get())
    }

    /// An alert is about to be kept in MongoDB alone: until it is handed over and queued
    /// (or, should it not be accepted, until the `Keeping` is dropped), `owes` is true.
    pub fn keeping(&self) -> Keeping {
        self.inner.owed.fetch_add(1, Ordering::SeqCst);
        self.inner.writing.fetch_add(1, Ordering::SeqCst);
        Keeping(Some(self.clone()))
    }

    /// An alert's job is on its way to Redis: until the `Enqueuing` is dropped, the
    /// reconciler does not queue what it was handed (`written`), since this alert, older
    /// than those kept after it, may be kept too. Drop it after `keeping`, if kept.
    pub fn enqueuing(&self) -> Enqueuing {
        self.inner.enqueuing.fetch_add(1, Ordering::SeqCst);
        Enqueuing(self.clone())
    }

    /// Waits until no alert is being written to MongoDB alone, nor on its way to Redis,
    /// but not past `until`.
    async fn written(&self, until: Instant) {
        let inner = &self.inner;
        wait_on(
            &inner.wake,
            until,
            || {
                inner.writing.load(Ordering::SeqCst) == 0
                    && inner.enqueuing.load(Ordering::SeqCst) == 0
            },
            || {},
        )
        .await;
    }

    /// The turn to go to the stream, in the order asked: an alert that waits for what is
    /// owed holds it, so that none that came after it gets there first. Alerts that do
    /// not wait hold it only while their job joins the pipeline's queue.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        match self.inner.turns.try_lock() {
            Ok(turn) => turn,
            Err(_) => self.inner.turns.lock().await,
        }
    }

    /// Some alert kept in MongoDB alone is not in the stream yet: alerts that follow are
    /// to reach the stream after it.
    pub fn owes(&self) -> bool {
        self.inner.owed.load(Ordering::SeqCst) > 0
    }

    /// Waits until nothing is owed, hurrying the reconciler, but not past `until`: true
    /// when nothing is owed.
    pub async fn drained(&self, until: Instant) -> bool {
        let inner = &self.inner;
        wait_on(
            &inner.drained,
            until,
            || !self.owes(),
            || inner.hurry.notify_one(),
        )
        .await
    }

    /// Hands over an alert whose audit record says `unqueued` and whose 202 is given.
    fn hand(&self, alert: Alert) {
        {
            let mut alerts = self.inner.alerts.lock().expect("hand-off lock");
            if alerts.len() < self.inner.limit {
                alerts.push(alert);
            } else {
                // Only a sweep finds it; it owes nothing here.
                self.inner.missed.store(true, Ordering::Relaxed);
                self.settled(1);
            }
        }
        self.inner.wake.notify_one();
    }

    /// `n` alerts taken from the hand-off are in the stream.
    fn settled(&self, n: usize) {
        let before = self
            .inner
            .owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                Some(owed.saturating_sub(n))
            })
            .unwrap_or_default();
        if before > 0 && before <= n {
            self.inner.drained.notify_waiters();
        }
    }

    /// Moves what was handed over since the last take into `held`: true when some did not
    /// fit.
    fn take_into(&self, held: &mut Vec<Alert>) -> bool {
        held.append(&mut self.inner.alerts.lock().expect("hand-off lock"));
        self.inner.missed.swap(false, Ordering::Relaxed)
    }
}

/// Waits for `done`, woken by `notify` and calling `waiting` before each wait, but not past
/// `until`: whether it is done.
async fn wait_on(
    notify: &Notify,
    until: Instant,
    done: impl Fn() -> bool,
    waiting: impl Fn(),
) -> bool {
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        // Registered before the check, so a notification in between is not lost.
        woken.as_mut().enable();
        if done() {
            return true;
        }
        waiting();
        if tokio::time::timeout_at(until, woken).await.is_err() {
            return done();
        }
    }
}

/// An alert on its way into MongoDB alone (`Handoff::keeping`): handed over once kept,
/// or, dropped, owed no longer.
pub struct Keeping(Option<Handoff>);

impl Keeping {
    /// Kept, and answered 202: the reconciler is to queue it.
    pub fn hand(mut self, alert: Alert) {
        if let Some(handoff) = self.0.take() {
            // In the hand-off before it counts as written.
            handoff.hand(alert);
            handoff.inner.writing.fetch_sub(1, Ordering::SeqCst);
            handoff.inner.wake.notify_one();
        }
    }
}

impl Drop for Keeping {
    fn drop(&mut self) {
        if let Some(handoff) = self.0.take() {
            handoff.inner.writing.fetch_sub(1, Ordering::SeqCst);
            handoff.settled(1);
            handoff.inner.wake.notify_one();
        }
    }
}

/// An alert whose job is on its way to Redis (`Handoff::enqueuing`).
pub struct Enqueuing(Handoff);

impl Drop for Enqueuing {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        if inner.enqueuing.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.wake.notify_one();
        }
    }
}

pub struct Reconciler {
    /// A record younger than this may belong to a request still deciding its answer (and
    /// withdrawn if that answer is 503), so a sweep leaves it for the next one.
    pub grace: Duration,
    pub queue: Queue,
    /// Not the request path's store: a sweep may scan, and has no answer to hurry for.
    pub store: Store,
    pub dedup_ttl: Duration,
    pub handoff: Handoff,
    /// The stores pyron-api has reached; the reconciler waits for both.
    pub reached: watch::Receiver<crate::http::Reached>,
}

/// How long to wait after a failed attempt: about a second (a store still down), or, when
/// MongoDB did not answer within its budget, at least that budget. A wire server that
/// cannot use the `status` index for the look for unqueued records (FerretDB) scans all
/// of `audit`: a sweep begun again at once would keep it scanning, and slow every other
/// write, for as long as the records stay unqueued.
fn wait_after(err: &ReconcileError, retry: &mut Backoff) -> Duration {
    let wait = retry.next_wait();
    match err {
        ReconcileError::Store(StoreError::Timeout(budget)) => wait.max(*budget),
        _ => wait,
    }
}

impl Reconciler {
    /// Queues what it is handed, sweeping at start and after the hand-off was full, and
    /// marks the audit records of what it queued (in a task of its own, so that a slow
    /// marking statement never holds up queueing), until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.reached.wait_for(|r| r.redis && r.mongo) => {}
            () = shutdown.cancelled() => return,
        }
        let (to_mark, marks) = mpsc::unbounded_channel();
        tokio::spawn(mark_all(
            self.store.clone(),
            self.handoff.clone(),
            marks,
            shutdown.clone(),
        ));
        let mut retry = Backoff::new(RETRY, RETRY);
        let mut handed_retry = Backoff::new(HANDED_RETRY, RETRY);
        // What was queued since the hand-off last owed nothing: one line an outage.
        let mut tally = Tally::default();
        // Handed over, not yet in the stream.
        let mut held: Vec<Alert> = Vec::new();
        let mut sweep_at = Some(Instant::now());
        loop {
            let mut missed = self.handoff.take_into(&mut held);
            if !held.is_empty() {
                // In the order of arrival: alerts are handed over as their writes end, and
                // a write still under way may hold one older than some handed over; so
                // may a job still on its way to Redis, which ends within the queue's
                // timeout (when Redis comes back after hanging, the younger jobs that
                // were waiting are refused and kept: they come here after the alerts
                // kept while the breaker was open, and are older than those).
                let settle = SETTLE.max(self.queue.timeout());
                self.handoff.written(Instant::now() + settle).await;
                missed |= self.handoff.take_into(&mut held);
            }
            if missed {
                sweep_at = Some(Instant::now());
            }
            if !held.is_empty() {
                held.sort_unstable_by_key(|alert| alert.id);
                match self.queue_all(&held, &to_mark, "handed over").await {
                    Ok(queued) => tally.add(&queued),
                    Err(err) => {
                        let wait = wait_after(&err, &mut handed_retry);
                        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "reconciler cannot queue yet; will retry");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue,
                            () = self.handoff.inner.hurry.notified() => continue,
                            () = shutdown.cancelled() => return,
                        }
                    }
                }
                self.handoff.settled(held.len());
                held.clear();
                handed_retry.reset();
                if !self.handoff.owes() || tally.due() {
                    tally.log("handed over");
                }
            }
            if let Some(at) = sweep_at
                && at <= Instant::now()
            {
                sweep_at = match self.sweep(&to_mark).await {
                    Ok(wait) => {
                        retry.reset();
                        wait.map(|wait| Instant::now() + wait)
                    }
                    Err(err) => {
                        let wait = wait_after(&err, &mut retry);
                        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "reconciler cannot look for unqueued alerts yet; will retry");
                        Some(Instant::now() + wait)
                    }
                };
            }
            let due = async {
                match sweep_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.handoff.inner.wake.notified() => {}
                () = due => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Queues these alerts (a Redis pipeline a page), sending them to be marked, and
    /// answers how many were queued, and how many were duplicates; `found` says where the
    /// reconciler found them, for the log.
    async fn queue_all(
        &self,
        alerts: &[Alert],
        to_mark: &mpsc::UnboundedSender<Queued>,
        found: &str,
    ) -> Result<(usize, usize), ReconcileError> {
        let mut queued = Queued::default();
        for page in alerts.chunks(PAGE) {
            let answers = self.queue.requeue(page, self.dedup_ttl).await?;
            for (alert, answer) in page.iter().zip(answers) {
                match answer {
                    Enqueued::Queued { .. } | Enqueued::AlreadyQueued => {
                        queued.queued.insert(alert.id.to_string());
                    }
                    Enqueued::Duplicate { first } => {
                        queued.duplicates.insert(alert.id.to_string(), first);
                    }
                }
            }
        }
        let counts = (queued.queued.len(), queued.duplicates.len());
        if !queued.is_empty() {
            tracing::debug!(
                queued = counts.0,
                duplicates = counts.1,
                found,
                "reconciler queued a batch of alerts that only MongoDB held"
            );
            // Gone only at shutdown: the records stay `unqueued`, and the next start's
            // sweep finds them queued already and marks them.
            let _ = to_mark.send(queued);
        }
        Ok(counts)
    }

    /// Queues every unqueued alert of `audit` past its grace, sending them to be marked;
    /// returns how long until the youngest one left is old enough, if any is left.
    async fn sweep(
        &self,
        to_mark: &mpsc::UnboundedSender<Queued>,
    ) -> Result<Option<Duration>, ReconcileError> {
        let cutoff = Utc::now() - self.grace;
        let mut after: Option<String> = None;
        let mut wait = None;
        loop {
            let mut alerts = self.store.unqueued(after.as_deref(), PAGE as i64).await?;
            let full = alerts.len() == PAGE;
            // Oldest first (event ids are time-ordered): stop at the first too young.
            if let Some(young) = alerts.iter().position(|a| a.received_at > cutoff) {
                let left = alerts[young].received_at - cutoff;
                wait = Some(left.to_std().unwrap_or_default().max(MIN_WAIT));
                alerts.truncate(young);
            }
            let Some(last) = alerts.last() else { break };
            after = Some(last.id.to_string());
            let mut tally = Tally::default();
            tally.add(&self.queue_all(&alerts, to_mark, "in audit").await?);
            tally.log("in audit");
            if wait.is_some() || !full {
                break;
            }
        }
        Ok(wait)
    }
}

/// How often a long run of batches is summed up in the log while more are still owed.
const TALLY_EVERY: Duration = Duration::from_secs(10);

/// What the reconciler queued since its last line: after a Redis stall at 3,000 alerts/s
/// it queues a few hundred batches within a second or two (those kept before Redis came
/// back, then the stragglers kept after), and a line each was a burst in the journal.
#[derive(Default)]
struct Tally {
    queued: usize,
    duplicates: usize,
    batches: usize,
    /// When the first batch since the last line was queued.
    since: Option<Instant>,
}

impl Tally {
    fn add(&mut self, &(queued, duplicates): &(usize, usize)) {
        self.queued += queued;
        self.duplicates += duplicates;
        self.batches += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether the first batch since the last line is `TALLY_EVERY` old.
    fn due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= TALLY_EVERY)
    }

    /// One line for what was queued since the last, if anything was.
    fn log(&mut self, found: &str) {
        let tally = std::mem::take(self);
        let Some(since) = tally.since else { return };
        if tally.queued + tally.duplicates == 0 {
            return;
        }
        tracing::info!(
            queued = tally.queued,
            duplicates = tally.duplicates,
            batches = tally.batches,
            over_ms = since.elapsed().as_millis() as u64,
            found,
            "reconciler queued alerts that only MongoDB held"
        );
    }
}

/// Marks the audit records of the alerts the reconciler queued, `duplicate` (one a
/// statement) or `queued`, at the pace `MarkPace` keeps (after a slow statement, in a
/// pause of the alerts `handoff` has seen arrive), until `shutdown` is cancelled.
async fn mark_all(
    store: Store,
    handoff: Handoff,
    mut marks: mpsc::UnboundedReceiver<Queued>,
    shutdown: CancellationToken,
) {
    let mut to_mark = Queued::default();
    let mut pace = MarkPace::new();
    loop {
        while let Ok(mut more) = marks.try_recv() {
            to_mark.append(&mut more);
        }
        let ready_at = pace.ready_at(handoff.last_alert());
        if !to_mark.is_empty() && ready_at <= Instant::now() {
            let started = Instant::now();
            match mark(&store, &mut to_mark, pace.chunk).await {
                Ok(()) => pace.done(started.elapsed(), Instant::now()),
                Err(err) => {
                    let wait = pace.failed(&err, started.elapsed(), Instant::now());
                    tracing::warn!(error = %err, left = to_mark.len(), retry_in_ms = wait.as_millis() as u64, "audit records of queued alerts not marked yet; will retry");
                }
            }
            continue;
        }
        let due = async {
            if to_mark.is_empty() {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(ready_at).await
            }
        };
        tokio::select! {
            more = marks.recv() => match more {
                Some(mut more) => to_mark.append(&mut more),
                None => return,
            },
            () = due => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Marks the audit records of up to `chunk` queued alerts, `duplicate` (one a statement)
/// or `queued`; what is marked leaves `to_mark`.
async fn mark(store: &Store, to_mark: &mut Queued, chunk: usize) -> Result<(), ReconcileError> {
    if let Some((id, first)) = to_mark.duplicates.pop_first() {
        if let Err(err) = store.mark_duplicate(&id, &first).await {
            to_mark.duplicates.insert(id, first);
            return Err(err.into());
        }
    } else {
        let ids: Vec<String> = to_mark.queued.iter().take(chunk).cloned().collect();
        store.mark_queued(&ids).await?;
        for id in &ids {
            to_mark.queued.remove(id);
        }
    }
    if to_mark.is_empty() {
        tracing::info!("reconciler marked their audit records");
    }
    Ok(())
}

/// Queued alerts whose audit records are to be marked: event ids, and duplicates with the
/// event they repeat.
#[derive(Default)]
struct Queued {
    queued: BTreeSet<String>,
    duplicates: BTreeMap<String, String>,
}

impl Queued {
    fn append(&mut self, other: &mut Queued) {
        self.queued.append(&mut other.queued);
        self.duplicates.append(&mut other.duplicates);
    }

    fn len(&self) -> usize {
        self.queued.len() + self.duplicates.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            id: crate::domain::EventId::new(),
            source: "tradingview".into(),
            received_at: Utc::now(),
            kind: crate::domain::AlertKind::Text,
            content_type: "text/plain".into(),
            body: "BTCUSDT crossed 96,000".into(),
            json: None,
            dedup_key: None,
            sender: None,
        }
    }

    /// What was handed over since the last take, and whether some did not fit.
    fn take(handoff: &Handoff) -> (Vec<Alert>, bool) {
        let mut taken = Vec::new();
        let missed = handoff.take_into(&mut taken);
        (taken, missed)
    }

    /// Waits, in a task of its own, for writes under way (10 s at most).
    fn written_in_task(handoff: &Handoff) -> tokio::task::JoinHandle<()> {
        let handoff = handoff.clone();
        tokio::spawn(async move {
            handoff
                .written(Instant::now() + Duration::from_secs(10))
                .await
        })
    }

    /// A wait for writes under way goes on until `end` is done, and `end` ends it.
    async fn wait_ended_by(handoff: &Handoff, end: impl FnOnce(), why: &str) {
        let waiting = written_in_task(handoff);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "ended before {why}");
        end();
        woken(waiting, why).await;
    }

    /// The wait of `written_in_task` ended well before its 10 s: `why` woke it.
    async fn woken(waiting: tokio::task::JoinHandle<()>, why: &str) {
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap_or_else(|_| panic!("not woken when {why}"))
            .unwrap();
    }

    /// What was handed over, in the order of arrival (as the reconciler sorts it), is
    /// `expected`.
    fn assert_taken_in_order(handoff: &Handoff, expected: &[&Alert]) {
        let (mut taken, _) = take(handoff);
        taken.sort_unstable_by_key(|alert| alert.id);
        assert_eq!(
            taken.iter().map(|a| a.id).collect::<Vec<_>>(),
            expected.iter().map(|a| a.id).collect::<Vec<_>>()
        );
    }

    /// The hand-off keeps what fits, in order, and says when something did not: only a
    /// sweep finds that one.
    #[tokio::test]
    async fn the_handoff_holds_up_to_its_limit_and_says_when_one_did_not_fit() {
        let handoff = Handoff::new(2);
        let (first, second, third) = (alert(), alert(), alert());
        handoff.keeping().hand(first.clone());
        handoff.keeping().hand(second.clone());
        // Handing over wakes the reconciler (a permit is kept until it waits).
        tokio::time::timeout(Duration::from_secs(1), handoff.inner.wake.notified())
            .await
            .expect("woken");
        let (taken, missed) = take(&handoff);
        assert_eq!(
            taken.iter().map(|a| a.id).collect::<Vec<_>>(),
            [first.id, second.id]
        );
        assert!(!missed);
        handoff.settled(taken.len());
        handoff.keeping().hand(alert());
        handoff.keeping().hand(alert());
        handoff.keeping().hand(third);
        let (taken, missed) = take(&handoff);
        assert_eq!(taken.len(), 2);
        assert!(missed, "the third did not fit");
        handoff.settled(taken.len());
        assert!(!handoff.owes(), "the one that did not fit is the sweep's");
        // Taken: room again, and the flag is cleared.
        handoff.keeping().hand(alert());
        let (taken, missed) = take(&handoff);
        assert_eq!((taken.len(), missed), (1, false));
    }

    /// From the moment an alert starts its way into MongoDB alone until the reconciler
    /// has queued it, the hand-off owes the stream: alerts that follow go after it.
    #[test]
    fn the_handoff_owes_the_stream_until_what_it_was_handed_is_queued() {
        let handoff = Handoff::new(10);
        assert!(!handoff.owes());
        // Not accepted after all (a 503): owed no longer.
        drop(handoff.keeping());
        assert!(!handoff.owes());
        let first = handoff.keeping();
        let second = handoff.keeping();
        assert!(handoff.owes(), "owed while still being written");
        first.hand(alert());
        let (taken, _) = take(&handoff);
        handoff.settled(taken.len());
        assert!(handoff.owes(), "the second is still on its way");
        second.hand(alert());
        assert!(handoff.owes(), "handed over, not yet queued");
        let (taken, _) = take(&handoff);
        handoff.settled(taken.len());
        assert!(!handoff.owes());
    }

    /// A request that may not overtake what is owed waits for it, hurrying the
    /// reconciler, and gives up at its deadline.
    #[tokio::test]
    async fn a_wait_for_what_is_owed_ends_when_it_is_queued_or_at_its_deadline() {
        let handoff = Handoff::new(10);
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(handoff.drained(soon()).await, "nothing owed: at once");
        handoff.keeping().hand(alert());
        assert!(!handoff.drained(soon()).await, "nobody queued it");
        tokio::time::timeout(Duration::from_secs(1), handoff.inner.hurry.notified())
            .await
            .expect("the reconciler was hurried");
        let waiting = {
            let handoff = handoff.clone();
            tokio::spawn(async move {
                handoff
                    .drained(Instant::now() + Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (taken, _) = take(&handoff);
        handoff.settled(taken.len());
        let drained = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken when it was queued, not at its deadline");
        assert!(drained.unwrap());
    }

    /// The reconciler waits (briefly) for writes under way, which may hold older alerts
    /// than those handed over already.
    #[tokio::test]
    async fn a_write_under_way_is_waited_for_before_queueing() {
        let handoff = Handoff::new(10);
        let (older, newer) = (alert(), alert());
        let writing = handoff.keeping();
        handoff.keeping().hand(newer.clone());
        let start = Instant::now();
        handoff.written(start + Duration::from_millis(30)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "gave up at its bound"
        );
        wait_ended_by(&handoff, || writing.hand(older.clone()), "the write ended").await;
        assert_taken_in_order(&handoff, &[&older, &newer]);
        // A write given up (a 503) ends the wait too.
        let given_up = handoff.keeping();
        wait_ended_by(&handoff, || drop(given_up), "the write was given up").await;
    }

    /// A job on its way to Redis may yet be kept: the wait lasts until it is in the stream,
    /// or, kept, until its write ends (its `Enqueuing` is dropped after `keeping`).
    #[tokio::test]
    async fn a_job_on_its_way_to_redis_is_waited_for_before_queueing() {
        let handoff = Handoff::new(10);
        let (older, newer) = (alert(), alert());
        let on_its_way = handoff.enqueuing();
        handoff.keeping().hand(newer.clone());
        let waiting = written_in_task(&handoff);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "queued with a job on its way");
        // Redis refused it: kept, then handed over after the newer one.
        let writing = handoff.keeping();
        drop(on_its_way);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "queued with its write under way");
        writing.hand(older.clone());
        woken(waiting, "the write ended").await;
        assert_taken_in_order(&handoff, &[&older, &newer]);
        // One that reached the stream ends the wait too.
        let on_its_way = handoff.enqueuing();
        wait_ended_by(&handoff, || drop(on_its_way), "the job was queued").await;
    }

    /// The reconciler's line sums up every batch since the last one, and starts again.
    #[test]
    fn the_tally_sums_batches_until_its_line() {
        let mut tally = Tally::default();
        assert!(!tally.due());
        tally.add(&(3, 0));
        tally.add(&(5, 1));
        assert_eq!((tally.queued, tally.duplicates, tally.batches), (8, 1, 2));
        assert!(!tally.due(), "due at once");
        tally.since = Some(Instant::now() - TALLY_EVERY);
        assert!(tally.due());
        tally.log("handed over");
        assert_eq!((tally.queued, tally.batches), (0, 0));
        assert!(tally.since.is_none());
    }

    /// Quick statements grow to a hundred records, one after the other; slow ones shrink
    /// and are spaced so that MongoDB spends a tenth of its time on marking.
    #[test]
    fn marking_slows_down_on_a_store_slow_to_update() {
        let now = Instant::now();
        let mut pace = MarkPace::new();
        assert_eq!(pace.chunk, 1);
        let busy = now + Duration::from_secs(40);
        assert_eq!(
            pace.ready_at(busy),
            busy + MARK_QUIET,
            "the first waits for a pause"
        );
        for chunk in [2, 4, 8, 16, 32, 64, 100, 100] {
            pace.done(Duration::from_millis(5), now);
            assert_eq!(pace.chunk, chunk);
            assert_eq!(pace.at, now, "a quick statement is followed at once");
        }
        // Under a second: the same size, at once.
        pace.done(Duration::from_millis(800), now);
        assert_eq!((pace.chunk, pace.at), (MARK_CHUNK, now));
        assert_eq!(
            pace.ready_at(now),
            now,
            "quick: alerts arriving do not hold it up"
        );
        pace.done(Duration::from_secs(4), now);
        assert_eq!(pace.chunk, MARK_CHUNK / 2);
        assert_eq!(pace.at, now + Duration::from_secs(36));
        // Slow: the next also waits for a pause in the alerts.
        assert_eq!(pace.ready_at(now), now + Duration::from_secs(36));
        assert_eq!(pace.ready_at(busy), busy + MARK_QUIET);
        // A statement MongoDB gave up on after its budget: a quarter of the records next,
        // not before nine budgets.
        let budget = Duration::from_secs(10);
        let timeout = ReconcileError::Store(StoreError::Timeout(budget));
        let wait = pace.failed(&timeout, budget, now);
        assert_eq!(pace.chunk, MARK_CHUNK / 8);
        assert!(wait >= budget * MARK_SPACING, "{wait:?}");
        assert_eq!(pace.at, now + wait);
        for _ in 0..10 {
            pace.failed(&timeout, budget, now);
        }
        assert_eq!(pace.chunk, 1);
        assert!(pace.ready_at(busy) >= busy + MARK_QUIET, "timed out: slow");
        // Fast again: back up to a hundred, doubling, whatever arrives.
        for chunk in [2, 4, 8, 16, 32, 64, 100, 100] {
            pace.done(Duration::from_millis(100), now);
            assert_eq!(pace.chunk, chunk);
        }
        assert_eq!(pace.ready_at(busy), now);
        // Down without a timeout (refused at once): about a second, growing.
        let refused = ReconcileError::Store(StoreError::Refused("no".into()));
        assert!(pace.failed(&refused, Duration::ZERO, now) <= RETRY);
    }

    #[test]
    fn a_sweep_mongodb_gave_up_on_waits_as_long_as_its_budget() {
        let mut retry = Backoff::new(RETRY, RETRY);
        let budget = Duration::from_secs(10);
        let slow = ReconcileError::Store(StoreError::Timeout(budget));
        assert!(wait_after(&slow, &mut retry) >= budget);
        let down = ReconcileError::Queue(QueueError::Timeout(Duration::from_secs(2)));
        assert!(wait_after(&down, &mut retry) <= RETRY);
        let refused = ReconcileError::Store(StoreError::Refused("no".into()));
        assert!(wait_after(&refused, &mut retry) <= RETRY);
    }
}
