//! The forwarder's moving parts: the read loop, the lanes, and each destination's rate
//! limit and circuit breaker.
//!
//! **Rate limit.** A destination with a rate hands out send slots spaced `1 / rate`
//! apart; every lane to it takes the next slot. A 429 pushes the next slot back by what
//! the destination asked (`Retry-After`), for all its lanes.
//!
//! **Circuit breaker.** After `breaker_failures` failures in a row (timeouts, connection
//! errors, 408, 5xx; not 429, which says busy, not down) the breaker opens: no lane sends
//! to the destination for `breaker_cooldown`. Then one delivery goes as a probe
//! (half-open): its success closes the breaker, its failure opens it again for twice the
//! time (at most five minutes). Deliveries keep their deadlines while they wait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    Job,
    outbox::{Entry, Outbox},
    record::{InHand, Outcome, Recorder, Update},
    render::{self, Renderer},
    send::{self, Attempt},
    sign::SigningKey,
};
use crate::{
    backoff::Backoff,
    config::Config,
    queue::QueueError,
    route::{Destination, Routing},
    startup::{wait_for, wait_for_mongo},
    store::Store,
    systemd::Heartbeat,
};

/// Deliveries held at once (in lanes, or waiting to be recorded); reading pauses above.
const IN_FLIGHT: usize = 20_000;
/// Entries read per turn.
const BATCH: usize = 500;
/// How long one read waits for new entries.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// The longest an open breaker stays open.
const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// First and longest wait between attempts, before jitter.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));

/// A destination's shared state.
struct Gate {
    destination: Destination,
    key: Option<SigningKey>,
    state: Mutex<GateState>,
}

struct GateState {
    next_slot: Instant,
    breaker: Breaker,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration },
}

impl Breaker {
    fn name(self) -> &'static str {
        match self {
            Breaker::Closed { .. } => "closed",
            Breaker::Open { .. } => "open",
            Breaker::HalfOpen { .. } => "half-open",
        }
    }
}

/// Whether a lane may send now.
enum Permit {
    /// Send at this moment (the rate limit's slot); `probe` when it is the breaker's.
    At { slot: Instant, probe: bool },
    /// Ask again then.
    Wait(Instant),
}

impl Gate {
    fn permit(&self, now: Instant) -> Permit {
        let mut state = self.state.lock().expect("gate lock");
        let probe = match state.breaker {
            Breaker::Closed { .. } => false,
            Breaker::Open { until, .. } if now < until => return Permit::Wait(until),
            Breaker::Open { cooldown, .. } => {
                state.breaker = Breaker::HalfOpen { cooldown };
                true
            }
            Breaker::HalfOpen { .. } => return Permit::Wait(now + Duration::from_millis(50)),
        };
        let slot = state.next_slot.max(now);
        if let Some(spacing) = self.destination.spacing {
            state.next_slot = slot + spacing;
        }
        Permit::At { slot, probe }
    }

    /// Whether the breaker holds sends back (open, or a probe is out).
    fn holding(&self) -> bool {
        !matches!(
            self.state.lock().expect("gate lock").breaker,
            Breaker::Closed { .. }
        )
    }

    /// Notes an attempt's outcome; answers the breaker's state when it changed.
    fn note(&self, attempt: &Attempt, now: Instant) -> Option<&'static str> {
        let mut state = self.state.lock().expect("gate lock");
        let before = state.breaker;
        let threshold = self.destination.breaker_failures;
        let base = self.destination.breaker_cooldown;
        state.breaker = match (attempt, before) {
            (
                Attempt::Retry {
                    throttled: true,
                    wait,
                    ..
                },
                breaker,
            ) => {
                let wait = wait.unwrap_or(Duration::from_secs(1));
                state.next_slot = state.next_slot.max(now + wait);
                match breaker {
                    Breaker::HalfOpen { cooldown } => Breaker::Open {
                        until: now + wait,
                        cooldown,
                    },
                    other => other,
                }
            }
            (Attempt::Retry { .. }, Breaker::HalfOpen { cooldown }) => {
                let cooldown = (cooldown * 2).min(MAX_COOLDOWN);
                Breaker::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
            (Attempt::Retry { .. }, Breaker::Closed { failures }) if failures + 1 >= threshold => {
                Breaker::Open {
                    until: now + base,
                    cooldown: base,
                }
            }
            (Attempt::Retry { .. }, Breaker::Closed { failures }) => Breaker::Closed {
                failures: failures + 1,
            },
            (Attempt::Retry { .. }, open @ Breaker::Open { .. }) => open,
            // A permanent refusal is an answer: the destination is up.
            (Attempt::Delivered { .. } | Attempt::Permanent { .. }, _) => {
                Breaker::Closed { failures: 0 }
            }
        };
        (before.name() != state.breaker.name()).then(|| state.breaker.name())
    }
}

/// A lane's key, as `Job::lane_key` writes it.
type LaneKey = String;

/// The forwarder: reads deliveries, runs the lanes, hands outcomes to the recorder.
pub struct Forwarder {
    outbox: Outbox,
    store: Store,
    gates: HashMap<String, Arc<Gate>>,
    renderer: Arc<Renderer>,
    routing: Arc<Routing>,
    client: reqwest::Client,
    lanes:
        Mutex<HashMap<LaneKey, mpsc::UnboundedSender<(Entry, tokio::sync::OwnedSemaphorePermit)>>>,
    /// Per lane, the receipt time of the newest alert delivered: an older one that comes
    /// after it (queued late, by the reconciler after a Redis outage) is not sent.
    newest: Mutex<HashMap<LaneKey, i64>>,
    in_flight: Arc<Semaphore>,
    /// The stream entries in hand, kept claimed by this forwarder while they wait.
    in_hand: InHand,
    recorder: Recorder,
    claim_idle: Duration,
    pub heartbeat: Heartbeat,
}

impl Forwarder {
    /// Connects to Redis and MongoDB, waiting for them as long as it takes.
    pub async fn connect(config: &Config) -> Result<Arc<Self>, String> {
        let routing = Arc::new(config.routing.clone());
        let renderer = Arc::new(Renderer::new(&routing)?);
        let mut gates = HashMap::new();
        for (name, destination) in &routing.destinations {
            let key = match (destination.kind, &destination.secret) {
                (crate::route::Kind::Http, Some(secret)) => {
                    Some(SigningKey::parse(secret.expose())?)
                }
                _ => None,
            };
            gates.insert(
                name.clone(),
                Arc::new(Gate {
                    destination: destination.clone(),
                    key,
                    state: Mutex::new(GateState {
                        next_slot: Instant::now(),
                        breaker: Breaker::Closed { failures: 0 },
                    }),
                }),
            );
        }
        let timeout = config.intake.store_timeout.max(Duration::from_secs(2));
        let outbox = wait_for("Redis", async || {
            let outbox = Outbox::connect(
                config.redis.url.expose(),
                &config.forwarder.consumer,
                timeout,
                READ_BLOCK,
            )
            .await?;
            outbox.ensure_group().await?;
            Ok::<_, QueueError>(outbox)
        })
        .await;
        let store = wait_for_mongo(config).await;
        let in_hand = InHand::default();
        let recorder = Recorder::spawn(outbox.clone(), store.clone(), in_hand.clone());
        Ok(Arc::new(Forwarder {
            outbox,
            store,
            gates,
            renderer,
            routing,
            client: send::client(),
            lanes: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            in_hand,
            recorder,
            claim_idle: config.forwarder.claim_idle,
            heartbeat: Heartbeat::default(),
        }))
    }

    pub fn consumer(&self) -> &str {
        self.outbox.name()
    }

    /// One line for systemd's status.
    pub async fn status_line(&self) -> String {
        let held = IN_FLIGHT - self.in_flight.available_permits();
        match self.outbox.depth().await {
            Ok((length, pending)) => {
                format!("forwarding: {held} in hand, {pending} pending, {length} in the stream")
            }
            Err(err) => format!("forwarding: {held} in hand; Redis: {err}"),
        }
    }

    /// Waits up to `grace` for the deliveries in hand to finish and be recorded; the rest
    /// stay pending in Redis for the next start.
    pub async fn drain(&self, grace: Duration) {
        let all = IN_FLIGHT as u32;
        match tokio::time::timeout(grace, self.in_flight.acquire_many(all)).await {
            Ok(_) => tracing::info!("every delivery in hand settled"),
            Err(_) => tracing::warn!(
                held = IN_FLIGHT - self.in_flight.available_permits(),
                "stopping with deliveries in hand; they stay pending and are sent on the next start"
            ),
        }
    }

    /// Reads until `stop`: first what this consumer held when it last stopped, then new
    /// entries, claiming those another forwarder left for too long.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken) {
        let mut outage = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut pending = Some("0".to_owned());
        let mut last_claim = Instant::now();
        let mut key = String::new();
        while !stop.is_cancelled() {
            self.heartbeat.beat();
            // Entries read again (held before a restart, or claimed from another
            // forwarder) may have been sent and recorded already: those are only
            // acknowledged.
            let (read, again) = if let Some(after) = &pending {
                (
                    self.outbox.read(BATCH, Duration::ZERO, Some(after)).await,
                    true,
                )
            } else if last_claim.elapsed() >= self.claim_idle / 2 {
                last_claim = Instant::now();
                // What waits here (a retry, a rate limit) is claimed afresh first, so
                // that no forwarder, this one included, takes it as abandoned.
                let held: Vec<String> = self
                    .in_hand
                    .lock()
                    .expect("in-hand lock")
                    .iter()
                    .cloned()
                    .collect();
                if let Err(err) = self.outbox.touch(&held).await {
                    tracing::debug!(error = %err, "deliveries in hand not claimed afresh");
                }
                (self.outbox.claim(self.claim_idle, BATCH).await, true)
            } else {
                tokio::select! {
                    read = self.outbox.read(BATCH, READ_BLOCK, None) => (read, false),
                    () = stop.cancelled() => break,
                }
            };
            let entries = match read {
                Ok(entries) => {
                    outage.reset();
                    entries
                }
                Err(err) => {
                    tracing::warn!(error = %err, "deliveries not read; retrying");
                    tokio::time::sleep(outage.next_wait()).await;
                    continue;
                }
            };
            if let Some(after) = &mut pending {
                match entries.last() {
                    Some(last) => *after = last.entry.clone(),
                    None => pending = None,
                }
            }
            let recorded = if again {
                self.already_delivered(&entries).await
            } else {
                Default::default()
            };
            for entry in entries {
                if !self
                    .in_hand
                    .lock()
                    .expect("in-hand lock")
                    .insert(entry.entry.clone())
                {
                    continue;
                }
                let permit = tokio::select! {
                    permit = self.in_flight.clone().acquire_owned() => permit.expect("never closed"),
                    () = stop.cancelled() => return,
                };
                if let Ok(job) = &entry.job
                    && recorded.contains(&job.id)
                {
                    self.recorder.settle_recorded(entry, permit);
                    continue;
                }
                self.dispatch(entry, permit, &mut key);
            }
        }
    }

    /// Of these entries' deliveries, the ones `deliveries` already says are delivered.
    async fn already_delivered(&self, entries: &[Entry]) -> std::collections::HashSet<String> {
        let ids: Vec<String> = entries
            .iter()
            .filter_map(|e| e.job.as_ref().ok())
            .map(|j| j.id.clone())
            .collect();
        if ids.is_empty() {
            return Default::default();
        }
        match self.store.delivered_among(&ids).await {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(error = %err, "delivery records not read; sending again");
                Default::default()
            }
        }
    }

    /// Hands an entry to its lane, which starts if it is not running; `key` is a buffer
    /// for the lane's key.
    fn dispatch(
        self: &Arc<Self>,
        entry: Entry,
        permit: tokio::sync::OwnedSemaphorePermit,
        key: &mut String,
    ) {
        let job = match &entry.job {
            Ok(job) => job,
            Err(reason) => {
                tracing::error!(entry = %entry.entry, reason, "unreadable delivery moved to dead letters");
                let reason = reason.clone();
                self.recorder
                    .finish(entry, Outcome::Unreadable { reason }, permit);
                return;
            }
        };
        job.lane_key(key);
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let item = (entry, permit);
        let item = match lanes.get(key.as_str()) {
            Some(lane) => match lane.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => item,
            },
            None => item,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(item).expect("receiver held");
        let key = key.clone();
        lanes.insert(key.clone(), tx);
        let this = self.clone();
        tokio::spawn(async move { this.lane(key, rx).await });
    }

    /// Sends a lane's deliveries one after the other; ends when the lane is empty.
    async fn lane(
        self: Arc<Self>,
        key: LaneKey,
        mut rx: mpsc::UnboundedReceiver<(Entry, tokio::sync::OwnedSemaphorePermit)>,
    ) {
        loop {
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(_) => {
                    // Leave only when nothing can arrive: the map's sender goes with the
                    // lock held, so a dispatch either got in before or starts a new lane.
                    let mut lanes = self.lanes.lock().expect("lanes lock");
                    match rx.try_recv() {
                        Ok(item) => Some(item),
                        Err(_) => {
                            lanes.remove(&key);
                            None
                        }
                    }
                }
            };
            let Some((entry, permit)) = next else { return };
            let outcome = self.deliver(&key, &entry).await;
            self.recorder.finish(entry, outcome, permit);
        }
    }

    /// Every attempt at one delivery of lane `lane`, until it is delivered, expired or
    /// dead.
    async fn deliver(&self, lane: &LaneKey, entry: &Entry) -> Outcome {
        let Ok(job) = &entry.job else {
            unreachable!("dispatched only when readable")
        };
        // Borrowed: only a replay changes it.
        let mut job = std::borrow::Cow::Borrowed(job);
        let Some(gate) = self.gates.get(&job.destination) else {
            return Outcome::Dead {
                attempts: 0,
                code: None,
                error: format!(
                    "no destination is named {:?} in this forwarder's configuration",
                    job.destination
                ),
            };
        };
        match job.replay {
            // The operator's call: sent now, whatever its age.
            Some(super::Replay::AsItWas) => job.to_mut().deadline = None,
            Some(super::Replay::Now) => match self.recheck(&job) {
                Ok(deadline) => job.to_mut().deadline = Some(deadline),
                Err(outcome) => return outcome,
            },
            None => {}
        }
        if job.replay.is_none()
            && let Some(newest) = self.newest.lock().expect("newest lock").get(lane)
            && job.received_at < *newest
        {
            return Outcome::Expired {
                attempts: 0,
                code: None,
                error: format!(
                    "a signal received {} ms later was delivered first: an older one is not sent after it",
                    newest - job.received_at
                ),
            };
        }
        if let Some(found) = render::placeholder(&job) {
            return Outcome::Dead {
                attempts: 0,
                code: None,
                error: format!(
                    "the alert holds an unexpanded TradingView placeholder, {found}: not sent on as a value"
                ),
            };
        }
        let rendered = match self.renderer.render(&job, gate.destination.kind) {
            Ok(rendered) => rendered,
            Err(error) => {
                return Outcome::Dead {
                    attempts: 0,
                    code: None,
                    error,
                };
            }
        };
        let mut attempts: u32 = 0;
        let mut last: Option<(Option<u16>, String)> = None;
        let mut backoff = Backoff::new(RETRY.0, RETRY.1);
        loop {
            if let Some(expired) =
                expired(&job, chrono::Utc::now().timestamp_millis(), attempts, &last)
            {
                return expired;
            }
            let now = Instant::now();
            let (slot, probe) = match gate.permit(now) {
                Permit::At { slot, probe } => {
                    if probe {
                        tracing::info!(destination = %job.destination, "circuit breaker half-open: sending a probe");
                    }
                    (slot, probe)
                }
                Permit::Wait(until) => {
                    sleep_until_or_deadline(until, &job).await;
                    continue;
                }
            };
            if slot > now {
                sleep_until_or_deadline(slot, &job).await;
                if let Some(expired) =
                    expired(&job, chrono::Utc::now().timestamp_millis(), attempts, &last)
                {
                    return expired;
                }
                // The breaker may have opened while this lane waited for its slot.
                if !probe && gate.holding() {
                    continue;
                }
            }
            attempts += 1;
            let (attempt, took) = send::send(
                &self.client,
                &gate.destination,
                gate.key.as_ref(),
                &job.id,
                &rendered,
            )
            .await;
            if let Some(state) = gate.note(&attempt, Instant::now()) {
                tracing::warn!(destination = %job.destination, breaker = state, "circuit breaker {state}");
                self.recorder
                    .breaker(&job.destination, state, last_error(&attempt));
            }
            match attempt {
                Attempt::Delivered { code } => {
                    let mut newest = self.newest.lock().expect("newest lock");
                    match newest.get_mut(lane) {
                        Some(newest) => *newest = (*newest).max(job.received_at),
                        None => {
                            newest.insert(lane.clone(), job.received_at);
                        }
                    }
                    return Outcome::Delivered {
                        attempts,
                        code,
                        took,
                        at: chrono::Utc::now().timestamp_millis(),
                    };
                }
                Attempt::Permanent { code, error } => {
                    return Outcome::Dead {
                        attempts,
                        code,
                        error,
                    };
                }
                Attempt::Retry {
                    code, error, wait, ..
                } => {
                    if attempts >= gate.destination.max_attempts {
                        return Outcome::Dead {
                            attempts,
                            code,
                            error: format!("gave up after {attempts} attempts: {error}"),
                        };
                    }
                    let pause = backoff.next_wait().max(wait.unwrap_or_default());
                    let next_at = chrono::Utc::now().timestamp_millis() + pause.as_millis() as i64;
                    if job.deadline.is_some_and(|deadline| next_at > deadline) {
                        return Outcome::Expired {
                            attempts,
                            code,
                            error: format!(
                                "the next attempt would come after the deadline; last: {error}"
                            ),
                        };
                    }
                    tracing::warn!(delivery = %job.id, destination = %job.destination, attempts, error, retry_in_ms = pause.as_millis() as u64, "delivery failed; will retry");
                    self.recorder.update(Update {
                        job: job.as_ref().clone(),
                        attempts,
                        code,
                        error: error.clone(),
                        next_attempt_at: next_at,
                    });
                    last = Some((code, error));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// A replay "now": the route must still exist and match; the deadline starts over.
    fn recheck(&self, job: &Job) -> Result<i64, Outcome> {
        let refuse = |error: String| Outcome::Dead {
            attempts: 0,
            code: None,
            error,
        };
        let signal = job
            .signal
            .value()
            .and_then(|signal| crate::signal::Signal::from_json(&signal).map_err(|e| e.to_string()))
            .map_err(|e| refuse(format!("replay: {e}")))?;
        let matched = self
            .routing
            .matches(&job.source, &signal)
            .into_iter()
            .find(|m| m.route.name == job.route && m.destination.name == job.destination);
        match matched {
            Some(m) => Ok(chrono::Utc::now().timestamp_millis() + m.max_age.as_millis() as i64),
            None => Err(refuse(format!(
                "replay: route {:?} no longer sends this alert to {:?}",
                job.route, job.destination
            ))),
        }
    }
}

fn last_error(attempt: &Attempt) -> Option<String> {
    match attempt {
        Attempt::Retry { error, .. } | Attempt::Permanent { error, .. } => Some(error.clone()),
        Attempt::Delivered { .. } => None,
    }
}

/// `Expired` when the delivery's deadline has passed.
fn expired(
    job: &Job,
    now_ms: i64,
    attempts: u32,
    last: &Option<(Option<u16>, String)>,
) -> Option<Outcome> {
    let deadline = job.deadline?;
    (now_ms > deadline).then(|| Outcome::Expired {
        attempts,
        code: last.as_ref().and_then(|(c, _)| *c),
        error: match last {
            Some((_, error)) => format!("not delivered within its maximum age; last: {error}"),
            None => format!(
                "not sent within its maximum age ({} ms after receipt)",
                now_ms - job.received_at
            ),
        },
    })
}

/// Sleeps until `until`, or just past the job's deadline if that comes first.
async fn sleep_until_or_deadline(until: Instant, job: &Job) {
    let wait = until.saturating_duration_since(Instant::now());
    let wait = match job.deadline {
        Some(deadline) => {
            let left = deadline + 1 - chrono::Utc::now().timestamp_millis();
            wait.min(Duration::from_millis(left.max(0) as u64))
        }
        None => wait,
    };
    tokio::time::sleep(wait).await;
}
