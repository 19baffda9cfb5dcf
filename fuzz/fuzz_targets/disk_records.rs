//! Records read back from RocksDB: persisted neighbors, ozone messages and statistics, and
//! the node state a restart reads. A damaged disk must give an error, never a panic.
#![no_main]

use echomesh_node::ozone::store::{MessageValue, OzoneStats, StoredMessage};
use echomesh_node::store::NeighborRecord;
use echomesh_proto::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_body::<NeighborRecord>(data);
    let _ = wire::decode_body::<StoredMessage>(data);
    let _ = wire::decode_body::<OzoneStats>(data);
    let _ = wire::decode_body::<MessageValue>(data);
});
