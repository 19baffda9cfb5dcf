//! What the node's tasks share: the components, each with its own lock, and the one stop
//! mechanism (a cancellation token plus a task tracker). Assembly is `node`; this module
//! imports only the components' types, so every module may take a `&Ctx` without an import
//! circle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::identity::Identity;
use crate::invite::InviteBook;
use crate::keydir::KeyDirectory;
use crate::metrics::Metrics;
use crate::peer::table::NeighborTable;
use crate::router::Router;
use crate::store::Store;

/// Everything the node's tasks share. Each field is its own component with its own lock.
pub struct Ctx {
    pub cfg: Config,
    pub identity: Identity,
    pub endpoint: quinn::Endpoint,
    pub router: Arc<Router>,
    pub store: Store,
    pub keydir: KeyDirectory,
    pub ozones: Arc<crate::ozone::store::OzoneStore>,
    /// Writes ozone deposits, grouped into synced batches.
    pub ozone_commit: crate::ozone::commit::GroupCommit,
    /// The applied configuration and how to re-read it (reload).
    pub live: crate::config::LiveConfig,
    pub drain: crate::drain::state::Drain,
    pub topology: crate::topology::Topology,
    /// The Echo bridge's connections, links and frame memory.
    pub bridge: crate::bridge::hub::Hub,
    /// The SmokeStack services' cluster configuration and limits.
    pub smoke: crate::smoke::Smoke,
    pub metrics: Arc<Metrics>,
    pub invites: Mutex<InviteBook>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub started: Instant,
    pub ready: AtomicBool,
    /// Address put in invite tokens.
    pub advertise: String,
    pub(crate) handshakes: Arc<tokio::sync::Semaphore>,
    pub(crate) next_conn: AtomicU64,
}

impl Ctx {
    pub fn neighbors(&self) -> &NeighborTable {
        &self.router.neighbors
    }

    pub fn next_conn_key(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
