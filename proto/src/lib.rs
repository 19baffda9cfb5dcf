//! echomesh-proto: the protocol core, without IO (quinn-proto is to quinn what this crate is to
//! the node).
//!
//! Everything here is deterministic: no sockets, no tasks, no storage, no clock reads inside
//! the machines. Callers feed events and the time in and carry the machines' out-events out.
//! The node (`echomesh-node`) drives them over QUIC and RocksDB; the client library
//! (`echomesh-client`) and `echomeshctl` use the types and the codec.
//!
//! - `identity`: node IDs.  `wire`: frames and every message enum.  `admin`: the admin API's
//!   JSON types.  `clock`: the wall clock, read in one place.
//! - `echo`: flooding with duplicate suppression, the seen-cache and the packet log.
//! - `keydir`: key bundles, their verification and the replacement rule.  `tags`: epoch tags.
//! - `ozone`: ozone addresses, stored messages, placement.
//! - `bridge`: the Echo protocol (Spot-On-Lite, Smoke): frames, the identity filter, the
//!   frame memory that breaks loops, link addresses.
//! - The protocol state machines, each driven by events and the time with its timers as
//!   `poll_timeout`/`handle_timeout`: `drain`, `antientropy` (one session per peer and ozone), `membership` (member states and failure detection), `backoff` (the dialer), `announce` (when a node
//!   announces itself).

pub mod admin;
pub mod announce;
pub mod antientropy;
pub mod backoff;
pub mod bridge;
pub mod broadcast;
pub mod clock;
pub mod drain;
pub mod echo;
pub mod identity;
pub mod keydir;
pub mod membership;
pub mod ozone;
pub mod sim;
pub mod smoke;
pub mod tags;
pub mod wire;
