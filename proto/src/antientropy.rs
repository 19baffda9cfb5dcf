//! Anti-entropy for ozones: one [`Session`] brings one peer up to date on one ozone.
//!
//! The policy (DESIGN.md, ozones): compare digests (counts and XORs of message and tombstone
//! IDs); if they are equal nothing moves. Otherwise push every tombstone first (an
//! acknowledgement wins over any copy, so a message is never revived), then every message, in
//! pages, oldest first. The receiver's deposits are idempotent, so a session may be repeated or
//! interrupted at any point without harm; repair in both directions converges two replicas to
//! "deposited minus acknowledged".
//!
//! Sans-IO: the session asks its driver for local reads (`Local*`) and peer calls (`Ask*`,
//! `Push*`) through [`Out`], one at a time, and takes their results as [`In`]. A peer call
//! not answered within the session's call timeout ends the session as [`Failed::Silent`].

use std::time::{Duration, Instant};

use crate::ozone::{OzoneAddr, OzoneDigest, StoredMessage};
use crate::wire::{MsgId, Position};

/// Tombstones pushed in one `OzoneAck`.
pub const TOMBSTONE_PAGE: usize = 1024;
/// Messages pushed in one `OzoneStore`.
pub const MESSAGE_PAGE: usize = 256;

/// What a session pushed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub ozones_differing: usize,
    pub tombstones: usize,
    pub messages: usize,
}

impl Pushed {
    pub fn add(&mut self, o: Pushed) {
        self.ozones_differing += o.ozones_differing;
        self.tombstones += o.tombstones;
        self.messages += o.messages;
    }
}

/// Why a session stopped before the peer was up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The peer is gone (its connection ended).
    PeerGone,
    /// The peer refused or failed a push.
    Refused,
    /// The peer did not answer within the call timeout.
    Silent,
}

/// A peer's answer to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    Ok(T),
    /// It answered something else (an older version, an error reply).
    Other,
    /// The call failed; `peer_gone` when its connection is down.
    Failed {
        peer_gone: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum In {
    /// This node's digest (`None`: it could not be read).
    LocalDigest(Option<OzoneDigest>),
    PeerDigest(Reply<OzoneDigest>),
    /// This node's tombstones (`None`: they could not be read; messages are still pushed).
    LocalTombstones(Option<Vec<MsgId>>),
    TombstonesPushed(Reply<()>),
    /// A page of this node's messages and whether more follow (`None`: read error, stop).
    LocalPage(Option<(Vec<StoredMessage>, bool)>),
    MessagesPushed(Reply<()>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    LocalDigest,
    AskDigest,
    LocalTombstones,
    PushTombstones(Vec<MsgId>),
    LocalPage {
        after: Option<Position>,
        limit: usize,
    },
    PushMessages(Vec<StoredMessage>),
    /// The session ended.
    Done(Result<Pushed, Failed>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Digests {
        ours: Option<Option<OzoneDigest>>,
        theirs: Option<Reply<OzoneDigest>>,
    },
    Tombstones,
    PushingTombstones {
        rest: Vec<MsgId>,
    },
    Page,
    PushingPage {
        more: bool,
    },
    Done,
}

#[derive(Debug)]
pub struct Session {
    addr: OzoneAddr,
    step: Step,
    pushed: Pushed,
    after: Option<Position>,
    call_timeout: Duration,
    /// When the outstanding peer call times out.
    deadline: Option<Instant>,
    out: std::collections::VecDeque<Out>,
}

impl Session {
    /// Start a session; the first actions read both digests.
    pub fn new(addr: OzoneAddr, call_timeout: Duration, now: Instant) -> Self {
        let mut s = Session {
            addr,
            step: Step::Digests {
                ours: None,
                theirs: None,
            },
            pushed: Pushed::default(),
            after: None,
            call_timeout,
            deadline: None,
            out: Default::default(),
        };
        s.out.push_back(Out::LocalDigest);
        s.ask(Out::AskDigest, now);
        s
    }

    pub fn addr(&self) -> OzoneAddr {
        self.addr
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    pub fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) && !self.is_done() {
            self.finish(Err(Failed::Silent));
        }
    }

    fn ask(&mut self, o: Out, now: Instant) {
        self.deadline = Some(now + self.call_timeout);
        self.out.push_back(o);
    }

    fn finish(&mut self, r: Result<Pushed, Failed>) {
        self.step = Step::Done;
        self.deadline = None;
        self.out.push_back(Out::Done(r));
    }

    fn failed<T>(reply: &Reply<T>) -> Failed {
        match reply {
            Reply::Failed { peer_gone: true } => Failed::PeerGone,
            _ => Failed::Refused,
        }
    }

    pub fn handle(&mut self, e: In, now: Instant) {
        let step = std::mem::replace(&mut self.step, Step::Done);
        match (step, e) {
            (Step::Digests { theirs, .. }, In::LocalDigest(d)) => {
                self.step = Step::Digests {
                    ours: Some(d),
                    theirs,
                };
                self.compare();
            }
            (Step::Digests { ours, .. }, In::PeerDigest(r)) => {
                self.deadline = None;
                self.step = Step::Digests {
                    ours,
                    theirs: Some(r),
                };
                self.compare();
            }
            (Step::Tombstones, In::LocalTombstones(t)) => {
                self.step = Step::PushingTombstones {
                    rest: t.unwrap_or_default(),
                };
                self.push_tombstones(now);
            }
            (Step::PushingTombstones { rest }, In::TombstonesPushed(r)) => match r {
                Reply::Ok(()) => {
                    self.step = Step::PushingTombstones { rest };
                    self.push_tombstones(now);
                }
                other => self.finish(Err(Self::failed(&other))),
            },
            (Step::Page, In::LocalPage(page)) => match page {
                Some((page, more)) if !page.is_empty() => {
                    if let Some(last) = page.last() {
                        self.after = Some(Position {
                            seq: last.seq,
                            id: MsgId(last.id),
                        });
                    }
                    self.pushed.messages += page.len();
                    self.step = Step::PushingPage { more };
                    self.ask(Out::PushMessages(page), now);
                }
                // Nothing (more) to push, or this node cannot read its own copy.
                _ => self.finish(Ok(self.pushed)),
            },
            (Step::PushingPage { more }, In::MessagesPushed(r)) => match r {
                Reply::Ok(()) if more => self.next_page(),
                Reply::Ok(()) => self.finish(Ok(self.pushed)),
                other => self.finish(Err(Self::failed(&other))),
            },
            // An answer that does not fit (late, or after the end): ignore it.
            (step, _) => self.step = step,
        }
    }

    fn compare(&mut self) {
        let Step::Digests {
            ours: Some(ours),
            theirs: Some(theirs),
        } = &self.step
        else {
            return;
        };
        match (ours, theirs) {
            (Some(a), Reply::Ok(b)) if a == b => self.finish(Ok(self.pushed)),
            (_, Reply::Failed { peer_gone: true }) => self.finish(Err(Failed::PeerGone)),
            _ => {
                self.pushed.ozones_differing = 1;
                self.step = Step::Tombstones;
                self.out.push_back(Out::LocalTombstones);
            }
        }
    }

    fn push_tombstones(&mut self, now: Instant) {
        let Step::PushingTombstones { rest } = &mut self.step else {
            return;
        };
        if rest.is_empty() {
            return self.next_page();
        }
        let page: Vec<MsgId> = rest.drain(..rest.len().min(TOMBSTONE_PAGE)).collect();
        self.pushed.tombstones += page.len();
        self.ask(Out::PushTombstones(page), now);
    }

    fn next_page(&mut self) {
        self.step = Step::Page;
        self.deadline = None;
        self.out.push_back(Out::LocalPage {
            after: self.after,
            limit: MESSAGE_PAGE,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const T: Duration = Duration::from_secs(5);
    const A: OzoneAddr = OzoneAddr([1; 32]);

    fn outs(s: &mut Session) -> Vec<Out> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    fn digest(n: u64) -> OzoneDigest {
        OzoneDigest {
            messages: n,
            ..Default::default()
        }
    }

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            addr: A,
            seq,
            id: [seq as u8; 32],
            expires_ms: 0,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn equal_digests_move_nothing() {
        let t = Instant::now();
        let mut s = Session::new(A, T, t);
        assert_eq!(outs(&mut s), vec![Out::LocalDigest, Out::AskDigest]);
        s.handle(In::PeerDigest(Reply::Ok(digest(3))), t);
        assert!(outs(&mut s).is_empty());
        s.handle(In::LocalDigest(Some(digest(3))), t);
        assert_eq!(outs(&mut s), vec![Out::Done(Ok(Pushed::default()))]);
        assert!(s.is_done());
    }

    #[test]
    fn differing_replicas_get_tombstones_first_then_messages_in_pages() {
        let t = Instant::now();
        let mut s = Session::new(A, T, t);
        outs(&mut s);
        s.handle(In::LocalDigest(Some(digest(300))), t);
        s.handle(In::PeerDigest(Reply::Ok(digest(1))), t);
        assert_eq!(outs(&mut s), vec![Out::LocalTombstones]);
        let tombs: Vec<MsgId> = (0..1500u32)
            .map(|i| {
                let mut b = [0; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                MsgId(b)
            })
            .collect();
        s.handle(In::LocalTombstones(Some(tombs.clone())), t);
        assert_eq!(
            outs(&mut s),
            vec![Out::PushTombstones(tombs[..TOMBSTONE_PAGE].to_vec())]
        );
        s.handle(In::TombstonesPushed(Reply::Ok(())), t);
        assert_eq!(
            outs(&mut s),
            vec![Out::PushTombstones(tombs[TOMBSTONE_PAGE..].to_vec())]
        );
        s.handle(In::TombstonesPushed(Reply::Ok(())), t);
        assert_eq!(
            outs(&mut s),
            vec![Out::LocalPage {
                after: None,
                limit: MESSAGE_PAGE
            }]
        );
        s.handle(In::LocalPage(Some((vec![msg(1), msg(2)], true))), t);
        assert_eq!(outs(&mut s), vec![Out::PushMessages(vec![msg(1), msg(2)])]);
        s.handle(In::MessagesPushed(Reply::Ok(())), t);
        let after = Some(Position {
            seq: 2,
            id: MsgId([2; 32]),
        });
        assert_eq!(
            outs(&mut s),
            vec![Out::LocalPage {
                after,
                limit: MESSAGE_PAGE
            }]
        );
        s.handle(In::LocalPage(Some((vec![msg(3)], false))), t);
        outs(&mut s);
        s.handle(In::MessagesPushed(Reply::Ok(())), t);
        assert_eq!(
            outs(&mut s),
            vec![Out::Done(Ok(Pushed {
                ozones_differing: 1,
                tombstones: 1500,
                messages: 3
            }))]
        );
    }

    #[test]
    fn a_peer_that_never_answers_ends_the_session_at_the_call_timeout() {
        let t = Instant::now();
        let mut s = Session::new(A, T, t);
        outs(&mut s);
        s.handle(In::LocalDigest(Some(digest(1))), t);
        assert_eq!(s.poll_timeout(), Some(t + T));
        s.handle_timeout(t + T - Duration::from_millis(1));
        assert!(outs(&mut s).is_empty());
        s.handle_timeout(t + T);
        assert_eq!(outs(&mut s), vec![Out::Done(Err(Failed::Silent))]);
        // Its late answer is ignored.
        s.handle(In::PeerDigest(Reply::Ok(digest(0))), t + T);
        assert!(outs(&mut s).is_empty());
    }

    #[test]
    fn a_peer_that_goes_or_refuses_ends_the_session() {
        let t = Instant::now();
        let mut s = Session::new(A, T, t);
        outs(&mut s);
        s.handle(In::LocalDigest(Some(digest(1))), t);
        s.handle(In::PeerDigest(Reply::Failed { peer_gone: true }), t);
        assert_eq!(outs(&mut s), vec![Out::Done(Err(Failed::PeerGone))]);

        // An older peer that cannot answer digests still gets everything pushed.
        let mut s = Session::new(A, T, t);
        outs(&mut s);
        s.handle(In::LocalDigest(Some(digest(1))), t);
        s.handle(In::PeerDigest(Reply::Other), t);
        assert_eq!(outs(&mut s), vec![Out::LocalTombstones]);
        s.handle(In::LocalTombstones(None), t);
        s.handle(In::LocalPage(Some((vec![msg(1)], false))), t);
        outs(&mut s);
        s.handle(In::MessagesPushed(Reply::Other), t);
        assert_eq!(outs(&mut s), vec![Out::Done(Err(Failed::Refused))]);
    }
}
