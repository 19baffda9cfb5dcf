//! echomesh relay node.
//!
//! Module map (see docs/ARCHITECTURE.md):
//! The protocol (wire format, echo engine, key bundles, placement, the state machines) is the
//! `echomesh-proto` crate; the QUIC transport and the client side are `echomesh-client`. This
//! crate drives them with sockets, RocksDB and timers.
//!
//! - `config`: how the node is configured.
//! - `router`: runs batches through the engine and fans out to queues.
//! - `peer`: neighbor table, dialing, peer sessions, invite/join.
//! - `client`: client sessions (node side).
//! - `keydir`: the key directory (EPKS): participant IDs, signed key bundles.
//! - `ozone`: ozone addressing, durable storage, placement, replication and repair.
//! - `topology`: signed node announcements and the mesh map built from them.
//! - `drain`, `reload`: taking a node out of service; applying a changed config file.
//! - `bridge`: Echo clients and Spot-On-Lite daemons (TLS/TCP) on the mesh.
//! - `admin`: admin HTTP API and its JSON types.
//! - `store`: RocksDB.  `metrics`: Prometheus.  `node`: assembly and lifecycle.

pub mod admin;
pub mod bridge;
pub mod client;
pub mod config;
pub mod console;
pub mod ctx;
pub mod drain;
pub mod invite;
pub mod keydir;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outq;
pub mod ozone;
pub mod peer;
pub mod rate;
pub mod reload;
pub mod router;
pub mod smoke;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod verify;

pub use config::Config;

// The protocol and transport modules under the names the node's modules use.
use echomesh_client::{identity, transport};
use echomesh_proto::{echo, tags, wire};

pub use node::{start, NodeHandle, RuntimeInfo};
