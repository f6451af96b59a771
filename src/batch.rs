//! Gathering a batch from a channel for a moment, shared by the writers that trade a
//! little latency under load for fewer, larger writes (`audit`, `queue`, and the
//! forwarder's recorder).

use tokio::{sync::mpsc, time::Instant};

/// A channel's receiving end that hands over what has arrived, many at a time.
pub trait Inbox<T> {
    /// Waits for at least one item unless the channel is closed and empty (then 0);
    /// adds at most `limit` to `buffer` and answers how many.
    fn recv_many(
        &mut self,
        buffer: &mut Vec<T>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send;
}

impl<T: Send> Inbox<T> for mpsc::Receiver<T> {
    fn recv_many(
        &mut self,
        buffer: &mut Vec<T>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send {
        mpsc::Receiver::recv_many(self, buffer, limit)
    }
}

impl<T: Send> Inbox<T> for mpsc::UnboundedReceiver<T> {
    fn recv_many(
        &mut self,
        buffer: &mut Vec<T>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send {
        mpsc::UnboundedReceiver::recv_many(self, buffer, limit)
    }
}

/// Adds what arrives on `rx` to `batch` until it holds `max`, the channel closes, or
/// `until` passes.
pub async fn gather<T>(rx: &mut impl Inbox<T>, batch: &mut Vec<T>, max: usize, until: Instant) {
    let more = async {
        while batch.len() < max {
            if rx.recv_many(batch, max - batch.len()).await == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(until, more).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gathers_until_the_moment_passes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for i in 0..10 {
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut batch = Vec::new();
        let until = Instant::now() + Duration::from_millis(35);
        gather(&mut rx, &mut batch, 100, until).await;
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(Instant::now(), until);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_full_or_closed() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let start = Instant::now();
        let until = start + Duration::from_secs(1);
        let mut batch = vec![-1];
        gather(&mut rx, &mut batch, 3, until).await;
        assert_eq!(batch, [-1, 0, 1]);
        assert_eq!(Instant::now(), start, "a full batch does not wait");
        drop(tx);
        let mut rest = Vec::new();
        gather(&mut rx, &mut rest, 100, until).await;
        assert_eq!(rest, [2, 3, 4]);
        assert_eq!(Instant::now(), start, "a closed channel does not wait");
    }
}
