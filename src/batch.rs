//! Gathering a batch from a channel for a moment, shared by the writers that trade a
//! little latency under load for fewer, larger writes (`audit`, `queue`).

use tokio::{sync::mpsc, time::Instant};

/// Adds what arrives on `rx` to `batch` until it holds `max`, the channel closes, or
/// `until` passes.
pub async fn gather<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize, until: Instant) {
    let more = async {
        while batch.len() < max {
            if rx.recv_many(batch, max - batch.len()).await == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(until, more).await;
}
