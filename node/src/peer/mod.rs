//! Neighbors: the pinned table, dialing with backoff, the peer session (hello, then echo
//! batches both ways), and invite/join.

pub mod join;
pub mod liveness;
pub mod repair;
pub mod rpc;
pub mod serve;
pub mod session;
pub mod table;

// Only the leaf is re-exported: the session imports most of the node, so naming it through
// `peer` would tie every user of `peer::Neighbor` into one import circle.
pub use table::{Neighbor, NeighborState, NeighborTable, NeighborView};
