//! Invite tokens as an operator pastes them (`echomeshctl join TOKEN`), with and without the
//! prefix, and the neighbor specs of flags and config (`HOST:PORT#FINGERPRINT[@half]`).
#![no_main]

use echomesh_node::config::NeighborSpec;
use echomesh_node::invite::InviteToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = InviteToken::decode(&text, 1_700_000_000);
    let _ = InviteToken::decode(&format!("EM1-{text}"), 1_700_000_000);
    let _ = text.parse::<NeighborSpec>();
});
