//! Every framed stream a node reads from the network: peer sessions (hello, echo batches,
//! replication requests and replies, trace context), client sessions (requests; events, which
//! clients read) and joins. The first byte picks the stream kind and the frame size limit.
#![no_main]

use echomesh_fuzz::{read_frames, read_peer_frames};
use echomesh_proto::wire::{
    ClientEvent, ClientRequest, JoinRequest, JoinResponse, PeerFrame, PeerReply, PeerRequest,
    TraceContext,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // Small limits exercise the refusal path, large ones the decoders.
    let max = [64, 4096, 1 << 20, 4 << 20][(pick >> 4) as usize % 4];
    match pick % 8 {
        0 => read_frames::<PeerFrame>(rest, max) + read_peer_frames(rest, max),
        1 => read_frames::<PeerRequest>(rest, max),
        2 => read_frames::<PeerReply>(rest, max),
        3 => read_frames::<TraceContext>(rest, max),
        4 => read_frames::<ClientRequest>(rest, max),
        5 => read_frames::<ClientEvent>(rest, max),
        6 => read_frames::<JoinRequest>(rest, max),
        _ => read_frames::<JoinResponse>(rest, max),
    };
});
