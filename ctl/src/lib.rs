//! The reference client's own library: key files and file transfer. The `echomeshctl` binary
//! uses it, and so do the integration tests. The protocol comes from `echomesh-proto`, the
//! client session and the end-to-end envelope from `echomesh-client`; nothing is defined twice.

pub mod files;
pub mod keyfile;
