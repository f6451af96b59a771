//! The delivery protocol of an alert, in one place: what must be true before pyron-api
//! answers 202, and how it stays true until the alert's `jobs` record exists.
//!
//! **Acknowledging** (`accept`, pyron-api): an alert is answered 202 once one durable store
//! holds it. Redis first: the job (the whole alert) goes into the stream, deduplicated by
//! its idempotency key in the same step, and the audit record follows off the request
//! path. Should Redis fail, MongoDB alone keeps the alert (audit status `unqueued`) within
//! what is left of the budget, and the reconciler queues it once Redis is back; for a
//! moment after such a failure alerts go to MongoDB directly (the breaker). Neither store:
//! 503, and a MongoDB write that lands after its 503 is withdrawn, so a refused alert is
//! never half kept.
//!
//! **Settling** (`settle`, pyron-worker): a batch's `jobs` records are written, then
//! the audit records pyron-api did not mark as written, and only then are the entries
//! acknowledged; a failed job is retried or dead-lettered.

pub mod accept;
pub mod settle;

pub use accept::{Acceptor, Receipt, Unavailable};
pub use settle::{SettleError, Settler};
