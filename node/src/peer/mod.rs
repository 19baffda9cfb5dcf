//! Neighbors: the pinned table, dialing with backoff, the peer session (hello, then echo
//! batches both ways), and invite/join.

pub mod join;
pub mod repair;
pub mod rpc;
mod session;
mod table;

pub use session::{dial_loop, serve_inbound};
pub use table::{Neighbor, NeighborState, NeighborTable, NeighborView};
