//! The node's fixed bounds in one place (the ones an operator tunes are in `Config`), each
//! documented, with their relations checked at compile time. Protocol constants are in
//! `echomesh-proto` next to their machines (`drain`, `antientropy`, `announce`, `wire`).

use std::time::Duration;

/// Default of `limits.max_frame_bytes` (the relations below hold for it).
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

// Router.
/// Batches of control packets that may wait for verification, per channel.
pub const CONTROL_BACKLOG: usize = 256;

// Echo repair (`peer::repair`).
/// Most IDs offered in one `EchoHave` (32 B each: 128 KiB).
pub const MAX_OFFER: usize = 4096;
/// Most log entries looked at for one page (entries that came from the neighbor itself are
/// skipped), so that a walk holds the log lock briefly.
pub const MAX_SCAN: usize = 16 * MAX_OFFER;
/// How often owed neighbors are looked at without a wake-up (queue drained, retry after a
/// failed offer).
pub const REPAIR_TICK: Duration = Duration::from_millis(250);
/// At a connection's end, the neighbor is owed what was accepted this many idle timeouts
/// before: data written earlier was acknowledged, or the connection would have timed out.
pub const OWED_WINDOW_FACTOR: u32 = 2;

// Neighbor RPCs.
/// Deadline of one request, answer included.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

// Peer sessions.
/// Largest batch of packets put in one frame.
pub const MAX_ECHO_BATCH_BYTES: usize = 256 * 1024;

// Topology table and announcements.
/// Nodes the topology table holds (the least recently heard are dropped beyond it).
pub const MAX_NODES: usize = 1024;
/// Links one announcement may list (a node with more neighbors announces the first ones).
pub const MAX_LINKS: usize = 128;
/// Largest sealed announcement (certificate, body, signature) accepted or sent.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 16 * 1024;
/// A node's announcements are accepted at most this often (its own pace is ≥ 1 s).
pub const MIN_ACCEPT_GAP: Duration = Duration::from_millis(500);
/// Nodes not heard from for this long are dropped from the table.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Announcements stamped further in the future than this are refused (clock skew bound).
pub const MAX_FUTURE_MS: u64 = 10 * 60 * 1000;

// Key directory.
/// Bundles per page when offering the directory to a neighbor.
pub const KEYDIR_SYNC_PAGE: usize = 64;

/// Most bundles returned for one short-ID lookup (more than one only on a 45-bit collision).
pub const MAX_LOOKUP_RESULTS: usize = 8;

// Client sessions.
/// Most tags in one subscription filter.
pub const MAX_TAGS: usize = 1024;
/// Most message IDs acknowledged in one request (the rest are ignored; clients page).
pub const MAX_ACK_IDS: usize = 4096;
/// Largest batch of packets delivered to a client in one frame, in bytes.
pub const MAX_DELIVER_BATCH: usize = 256 * 1024;
/// How often a position subscription hears from an idle node (see `client::follow::STALLED`).
pub const CLIENT_HEARTBEAT: Duration = Duration::from_secs(2);

// Ozones.
/// Largest page of a fetch, in bytes of payload.
pub const MAX_FETCH_BYTES: usize = 1 << 20;
/// Most messages per fetch page.
pub const MAX_FETCH_MESSAGES: u32 = 512;

// Invites.
/// How many used tokens are remembered (to say "already used" rather than "unknown").
pub const INVITES_USED_MEMORY: usize = 4096;

// Relations.
const _: () = {
    use echomesh_proto::wire::ABSOLUTE_MAX_FRAME;
    // A repair offer and a delivered or forwarded batch fit in a frame with room to spare.
    assert!(MAX_OFFER * 32 <= DEFAULT_MAX_FRAME / 2);
    assert!(MAX_DELIVER_BATCH <= DEFAULT_MAX_FRAME / 2);
    assert!(MAX_ECHO_BATCH_BYTES <= DEFAULT_MAX_FRAME / 2);
    assert!(DEFAULT_MAX_FRAME <= ABSOLUTE_MAX_FRAME);
    // A repair walk scans more entries than it offers.
    assert!(MAX_SCAN >= MAX_OFFER);
    // An announcement travels in one echo packet; a full link list fits in it.
    assert!(MAX_ANNOUNCEMENT_BYTES <= DEFAULT_MAX_FRAME / 4);
    assert!(MAX_LINKS * 64 <= MAX_ANNOUNCEMENT_BYTES);
    // Announcements are refreshed well within the time a node is remembered.
    assert!(echomesh_proto::announce::EVERY.as_secs() * 10 < FORGET_AFTER.as_secs());
    assert!(MIN_ACCEPT_GAP.as_millis() < echomesh_proto::announce::MIN_GAP.as_millis());
    // A fetch page fits in one frame.
    assert!(MAX_FETCH_BYTES <= DEFAULT_MAX_FRAME / 2);
};
