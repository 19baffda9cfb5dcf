//! Echo packets as they arrive in a batch, through the node's validation, and the control
//! traffic carried in their payloads: signed topology announcements.
#![no_main]

use echomesh_proto::echo::{self, EchoPacket};
use echomesh_node::topology::Announcement;
use echomesh_proto::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = wire::decode_body::<Vec<EchoPacket>>(data) {
        for p in &batch {
            let _ = echo::validate(p, 256 * 1024);
            let _ = Announcement::open(&p.payload);
        }
    }
    let _ = Announcement::open(data);
});
