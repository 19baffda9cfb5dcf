//! echomesh relay node.
//!
//! Module map (see docs/ARCHITECTURE.md):
//! - `identity`, `config`: who this node is and how it is configured.
//! - `wire`: every byte on the wire (frames, messages) and on disk (records).
//! - `echo`: the flooding state machine and seen-cache (sans-IO).
//! - `router`: runs batches through the engine and fans out to queues.
//! - `transport`: QUIC endpoint and pinned TLS.
//! - `peer`: neighbor table, dialing, peer sessions, invite/join.
//! - `client`: client sessions (node side) and the client library (client side).
//! - `keydir`: the key directory (EPKS): participant IDs, signed key bundles.
//! - `tags`: epoch-rotating packet tags (inboxes, key directory, ozones).
//! - `ozone`: ozone addressing, durable storage, placement, replication and repair.
//! - `topology`: signed node announcements and the mesh map built from them.
//! - `drain`, `reload`: taking a node out of service; applying a changed config file.
//! - `admin`: admin HTTP API and its JSON types.
//! - `store`: RocksDB.  `metrics`: Prometheus.  `node`: assembly and lifecycle.

pub mod admin;
pub mod client;
pub mod config;
pub mod drain;
pub mod echo;
pub mod identity;
pub mod invite;
pub mod keydir;
pub mod metrics;
pub mod node;
pub mod outq;
pub mod ozone;
pub mod peer;
pub mod rate;
pub mod reload;
pub mod router;
pub mod store;
pub mod tags;
pub mod telemetry;
pub mod topology;
pub mod transport;
pub mod wire;

pub use config::Config;
pub use node::{start, NodeHandle, RuntimeInfo};
