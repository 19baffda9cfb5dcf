//! A bounded (in bytes) multi-producer queue of echo packets with batch pop.
//!
//! Producers never wait: a push that would exceed the bound is refused and the caller counts
//! the drop. The consumer takes everything queued (up to a batch size) at once, which is what
//! batches packets into frames under load.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::echo::EchoPacket;

/// What a queue holds: anything that knows its cost in bytes.
pub trait Queued: Clone {
    fn cost(&self) -> usize;
}

impl Queued for EchoPacket {
    fn cost(&self) -> usize {
        EchoPacket::cost(self)
    }
}

/// An item of a neighbor's queue: a packet with its broadcast tree, or a lazy-push message.
impl Queued for crate::wire::TreeItem {
    fn cost(&self) -> usize {
        crate::wire::TreeItem::cost(self)
    }
}

/// A packet with its position in the node's packet log (client queues).
impl Queued for (u64, EchoPacket) {
    fn cost(&self) -> usize {
        self.1.cost()
    }
}

/// An Echo frame (bridge connections).
impl Queued for bytes::Bytes {
    fn cost(&self) -> usize {
        self.len()
    }
}

pub struct OutQueue<T = EchoPacket> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
    max_bytes: usize,
}

struct Inner<T> {
    items: VecDeque<T>,
    bytes: usize,
    closed: bool,
}

impl<T: Queued> OutQueue<T> {
    pub fn new(max_bytes: usize) -> Self {
        OutQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            notify: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A poisoned lock only means another thread panicked mid-push; the queue's state is
        // still consistent (plain pushes/pops), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue clones of `packets`; returns how many did not fit (dropped).
    pub fn push_all(&self, packets: &[T]) -> u64 {
        let mut dropped = 0;
        {
            let mut q = self.lock();
            if q.closed {
                return packets.len() as u64;
            }
            for p in packets {
                let c = p.cost();
                if q.bytes + c > self.max_bytes {
                    dropped += 1;
                    continue;
                }
                q.bytes += c;
                q.items.push_back(p.clone());
            }
        }
        if dropped < packets.len() as u64 {
            self.notify.notify_waiters();
        }
        dropped
    }

    /// Wait for packets and take up to `max_bytes` of them (at least one). Returns `None`
    /// once the queue is closed and empty. Cancel-safe: nothing is taken until it returns.
    pub async fn pop_batch(&self, max_bytes: usize, out: &mut Vec<T>) -> Option<()> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if !q.items.is_empty() {
                    let mut taken = 0;
                    while let Some(p) = q.items.front() {
                        let c = p.cost();
                        if !out.is_empty() && taken + c > max_bytes {
                            break;
                        }
                        taken += c;
                        if let Some(p) = q.items.pop_front() {
                            out.push(p);
                        }
                    }
                    q.bytes -= taken;
                    return Some(());
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Replace what is queued by `f(queued)` (e.g. packets a neighbor no longer wants pushed
    /// turned into announcements); the byte count follows.
    pub fn rewrite(&self, f: impl FnOnce(VecDeque<T>) -> VecDeque<T>) {
        let mut q = self.lock();
        let items = f(std::mem::take(&mut q.items));
        q.bytes = items.iter().map(Queued::cost).sum();
        q.items = items;
    }

    /// Drop everything queued; returns the number of packets dropped.
    pub fn clear(&self) -> u64 {
        let mut q = self.lock();
        let n = q.items.len() as u64;
        q.items.clear();
        q.bytes = 0;
        n
    }

    /// Close: pushes are refused from now on and the consumer ends once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(n: usize) -> EchoPacket {
        EchoPacket::new(Bytes::from(vec![n as u8; 20]), 1, None)
    }

    #[tokio::test]
    async fn bounded_and_batched() {
        let q: OutQueue = OutQueue::new(pkt(0).cost() * 3);
        let batch: Vec<_> = (0..5).map(pkt).collect();
        assert_eq!(q.push_all(&batch), 2);
        assert_eq!(q.len(), 3);
        let mut out = Vec::new();
        q.pop_batch(pkt(0).cost() * 2, &mut out).await.unwrap();
        assert_eq!(out.len(), 2);
        out.clear();
        q.pop_batch(1, &mut out).await.unwrap();
        assert_eq!(
            out.len(),
            1,
            "at least one packet even if larger than the batch size"
        );
        assert_eq!(q.bytes(), 0);
        q.close();
        assert!(q.pop_batch(100, &mut out).await.is_none());
    }

    #[tokio::test]
    async fn wakes_waiting_consumer() {
        let q: std::sync::Arc<OutQueue> = std::sync::Arc::new(OutQueue::new(1 << 20));
        let q2 = q.clone();
        let h = tokio::spawn(async move {
            let mut out = Vec::new();
            q2.pop_batch(1 << 20, &mut out).await.map(|_| out.len())
        });
        tokio::task::yield_now().await;
        q.push_all(&[pkt(1)]);
        assert_eq!(h.await.unwrap(), Some(1));
    }
}
