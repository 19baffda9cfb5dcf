//! The subscribed client sessions of this node: their filters and bounded queues. The router
//! hands each delivered batch here; each session's writer drains its own queue.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::echo::EchoPacket;
use crate::metrics::{DropReason, Metrics};
use crate::outq::OutQueue;
use crate::wire::{self, ClientEvent};

pub(crate) enum Filter {
    None,
    All,
    Tags(HashSet<[u8; 32]>),
}

pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) filter: RwLock<Filter>,
    /// Packets with their position in the node's packet log.
    pub(crate) queue: OutQueue<(u64, EchoPacket)>,
    /// Deliver as `DeliverAt` with log positions (the client subscribed with `SubscribeAt`).
    pub(crate) positions: std::sync::atomic::AtomicBool,
    /// The packet log's epoch (positions are only meaningful with it).
    pub(crate) epoch: AtomicU64,
    pub(crate) lagged: AtomicU64,
    /// Protocol version from the client's hello.
    pub(crate) version: u16,
    /// Events for the session's writer (a redirect when the node drains). Weak, so that the
    /// writer still ends when the reader does.
    pub(crate) ctrl: mpsc::WeakSender<ClientEvent>,
}

/// All subscribed client sessions of this node.
pub struct Subscribers {
    pub(crate) list: RwLock<Vec<Arc<Subscriber>>>,
    pub(crate) sessions: AtomicUsize,
    pub(crate) max_sessions: usize,
    pub(crate) next_id: AtomicU64,
}

pub(crate) struct SessionSlot<'a>(&'a Subscribers);

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscribers {
    pub fn new(max_sessions: usize) -> Self {
        Subscribers {
            list: RwLock::new(Vec::new()),
            sessions: AtomicUsize::new(0),
            max_sessions,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    pub(crate) fn try_open(&self) -> Option<SessionSlot<'_>> {
        let prev = self.sessions.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_sessions {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SessionSlot(self))
    }

    pub(crate) fn register(&self, s: Arc<Subscriber>) {
        let mut l = self.list.write().unwrap_or_else(|p| p.into_inner());
        if !l.iter().any(|x| x.id == s.id) {
            l.push(s);
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.list
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.id != id);
    }

    /// Subscribed sessions (the long-lived ones a drain moves to other nodes).
    pub fn subscribed(&self) -> Vec<u64> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|s| s.id).collect()
    }

    /// Tell one subscribed session to move to other nodes. Returns false when the session is
    /// gone, or its client is too old to understand a redirect (it stays until the node
    /// stops).
    pub fn redirect(&self, id: u64, nodes: &[String], reason: &str) -> bool {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        let Some(s) = list.iter().find(|s| s.id == id) else {
            return false;
        };
        if s.version < wire::since::REDIRECT {
            return false;
        }
        s.ctrl.upgrade().is_some_and(|tx| {
            tx.try_send(ClientEvent::Redirect {
                nodes: nodes.to_vec(),
                reason: reason.into(),
            })
            .is_ok()
        })
    }

    /// Bytes waiting in all sessions' queues.
    pub fn queued_bytes(&self) -> usize {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|s| s.queue.bytes()).sum()
    }

    /// Queue accepted packets (with their log positions) for every session whose filter
    /// matches. Called with the packet log locked, so positions arrive in order. (A session's
    /// log epoch is set once, when it subscribes with positions.)
    /// Queue `packets` for every session whose filter `gets` them.
    pub(crate) fn deliver(
        &self,
        packets: &[(u64, EchoPacket)],
        m: &Metrics,
        gets: impl Fn(&Filter, &EchoPacket) -> bool,
    ) {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        let mut matched = Vec::new();
        for s in list.iter() {
            let filter = s.filter.read().unwrap_or_else(|p| p.into_inner());
            let dropped = match &*filter {
                Filter::None => continue,
                Filter::All if packets.iter().all(|(_, p)| gets(&filter, p)) => {
                    let d = s.queue.push_all(packets);
                    m.packets_delivered.inc_by(packets.len() as u64 - d);
                    d
                }
                Filter::All | Filter::Tags(_) => {
                    matched.clear();
                    let picked = packets.iter().filter(|(_, p)| gets(&filter, p));
                    matched.extend(picked.map(|(seq, p)| (*seq, filter.keep(p))));
                    if matched.is_empty() {
                        continue;
                    }
                    let d = s.queue.push_all(&matched);
                    m.packets_delivered.inc_by(matched.len() as u64 - d);
                    d
                }
            };
            if dropped > 0 {
                s.lagged.fetch_add(dropped, Ordering::Relaxed);
                m.count_drop(DropReason::ClientQueueFull, dropped);
            }
        }
    }
}

impl Filter {
    /// The packet as this filter's session keeps it: a session that takes some packets of a
    /// batch (by tag) holds copies, so that its queue's byte bound counts what it keeps
    /// alive; one that takes them all shares the batch's buffer (`echo::share_buffer`).
    pub(crate) fn keep(&self, p: &EchoPacket) -> EchoPacket {
        match self {
            Filter::Tags(_) => p.detached(),
            Filter::None | Filter::All => p.clone(),
        }
    }

    pub(crate) fn matches(&self, p: &EchoPacket) -> bool {
        match self {
            Filter::None => false,
            Filter::All => true,
            Filter::Tags(tags) => p.tag.is_some_and(|t| tags.contains(&t)),
        }
    }
}
