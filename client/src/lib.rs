//! echomesh-client: the client library and the QUIC transport it shares with the node.
//!
//! - `identity`, `tls`, `transport`: node key pairs, pinned TLS, endpoints and connection
//!   tuning (the node binds its endpoint with these too).
//! - `framing`: length-prefixed frames over QUIC streams (cancellation safe).
//! - `session`: a client session (`echomesh-client/1`): connect, follow redirects, inject,
//!   subscribe, deposit/fetch/ack ozones, publish and look up keys.
//! - `follow`, `inject`: riding out bad links: a follower that resumes from its last log
//!   position, an injector that retries unacknowledged batches.
//! - `e2e`: the end-to-end envelope (RSA-OAEP + AES-GCM, RSA-PSS signatures) that nodes never
//!   open; `keyfile`: participant key files; `files`: files split into chunks and reassembled.
//! - `mail`: person-to-person messages (find a recipient, seal pieces, deposit durably);
//!   `target`: `HOST:PORT[#FINGERPRINT]` with trust on first use.
//!
//! The wire types come from `echomesh-proto`; nothing here links RocksDB, axum or prometheus.

pub mod e2e;
pub mod files;
pub mod follow;
pub mod framing;
pub mod identity;
pub mod inject;
pub mod keyfile;
pub mod mail;
pub mod session;
pub mod target;
pub mod tls;
pub mod transport;

pub use follow::{Followed, Follower};
pub use session::{
    connect, connect_any, connect_following, ClientError, ClientReader, ClientSession, ClientWriter,
};

// The protocol modules, under the names this crate's code uses.
use echomesh_proto::{echo, keydir, ozone, tags, wire};
