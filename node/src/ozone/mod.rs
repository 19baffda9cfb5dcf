//! Ozones: offline mailboxes (addressing and placement are `echomesh_proto::ozone`).
//!
//! - `store`: durable storage in RocksDB (deposit, fetch oldest first, acknowledge into
//!   tombstones, quotas, retention, a global byte budget).
//! - `service`: deposits, fetches and acks over the cluster, replication and repair.

pub mod service;
pub mod store;

pub use echomesh_proto::ozone::*;
