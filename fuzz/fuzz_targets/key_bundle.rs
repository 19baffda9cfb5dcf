//! Key bundles (EPKS) from clients, neighbors and the key directory on disk: decode, then the
//! full verification a node runs before it stores or floods one.
#![no_main]

use echomesh_proto::keydir::KeyBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = KeyBundle::decode(data) {
        let _ = b.verify(1_800_000_000);
        let _ = b.fingerprint();
    }
});
