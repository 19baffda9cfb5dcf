//! The reference client's library: end-to-end encryption, key files and file transfer. The
//! `echomeshctl` binary uses it, and so do the integration tests (to build forged messages).
//! Wire types and the client protocol come from `echomesh_node`; nothing is defined twice.

pub mod e2e;
pub mod files;
pub mod keyfile;
