//! Ozones: offline mailboxes (addressing and placement are `echomesh_proto::ozone`).
//!
//! - `store`: durable storage in RocksDB (deposit, fetch oldest first, acknowledge into
//!   tombstones, quotas, retention, a global byte budget).
//! - `commit`: group commit — the deposits that arrive together share one synced write batch.
//! - `replicate`: replication lanes — the copies sent to one replica at the same time travel in
//!   one request, a few requests in flight.
//! - `service`: deposits, fetches and acks over the cluster, replication and repair.

pub mod commit;
pub mod replicate;
pub mod service;
pub mod store;

pub use echomesh_proto::ozone::*;
