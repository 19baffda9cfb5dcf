//! The drain machine as the node shares it: the driver (`drain`) runs it, everyone else reads
//! its state (draining? what to tell the mesh? the admin API's status).

use std::sync::Mutex;
use std::time::Instant;

use echomesh_proto::drain::{self as machine, In};
use tokio::sync::Notify;

use crate::wire::Departure;
use echomesh_proto::admin::DrainStatus;

/// The drain machine, shared by the driver task and the readers of its state.
#[derive(Default)]
pub struct Drain {
    machine: Mutex<machine::Drain>,
    /// Wakes the driver after an event from outside it (start, undrain).
    pub(super) wake: Notify,
}

impl Drain {
    pub(super) fn machine(&self) -> std::sync::MutexGuard<'_, machine::Drain> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> DrainStatus {
        self.machine().status(Instant::now())
    }

    /// What this node tells the mesh about itself.
    pub fn departure(&self) -> Departure {
        self.machine().departure()
    }

    /// Draining (any phase but serving): not ready, no new ozone copies, clients redirected.
    pub fn is_draining(&self) -> bool {
        self.machine().is_draining()
    }

    pub(super) fn handle(&self, e: In) {
        self.machine().handle(e, Instant::now());
    }
}
