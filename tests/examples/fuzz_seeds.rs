//! Writes a seed corpus of valid encodings for the fuzz targets (fuzz/corpus/TARGET/seed-*):
//! every frame kind, packets with a real signed announcement, a real key bundle, an invite
//! token, the default configuration and the small profile, and every disk record. libFuzzer
//! mutates from these; without them it would first have to discover the framing.
//!
//! Run: `cargo run -p echomesh-tests --example fuzz_seeds` (then `scripts/fuzz`).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use echomesh_client::identity::Identity;
use echomesh_node::invite::InviteToken;
use echomesh_node::ozone::store::{MessageValue, OzoneStats, StoredMessage};
use echomesh_node::store::{NeighborOrigin, NeighborRecord};
use echomesh_node::topology::{Announcement, Link};
use echomesh_proto::echo::{EchoMode, EchoPacket};
use echomesh_proto::keydir::BundleKind;
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::wire::{
    self, ClientEvent, ClientRequest, Departure, JoinRequest, MsgId, PeerFrame, PeerHello,
    PeerReply, PeerRequest, Position, SubscribeFilter, TraceContext,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

/// One framed stream for the `frames` target: selector byte, then the frames.
fn stream(kind: u8, frames: &[Bytes]) -> Vec<u8> {
    let mut out = vec![0x20 | kind]; // size class 2: 1 MiB
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let tmp = tempfile::tempdir()?;
    let identity = Identity::load_or_create(tmp.path())?;
    let me = identity.id;
    let addr = OzoneProof::from_secret(b"seed").address();
    let pkt = |s: &str| EchoPacket::new(Bytes::from(s.to_string()), 16, Some([7; 32]));
    let msg = StoredMessage {
        addr,
        seq: 1_700_000_000_000_000,
        id: *blake3::hash(b"hello").as_bytes(),
        expires_ms: 1_800_000_000_000,
        payload: Bytes::from_static(b"hello"),
    };
    let pos = Position {
        seq: msg.seq,
        id: MsgId(msg.id),
    };

    // frames
    let d = root.join("frames");
    let hello = PeerFrame::Hello(PeerHello {
        version: wire::PROTOCOL_VERSION,
        node_id: me,
        cluster: "test".into(),
        software: "seed".into(),
    });
    let echo = PeerFrame::Echo(vec![pkt("a"), pkt("b")]);
    write(
        &d,
        "peer",
        &stream(0, &[wire::encode(&hello)?, wire::encode(&echo)?]),
    );
    let reqs = [
        PeerRequest::OzoneStore(vec![msg.clone()]),
        PeerRequest::OzoneAck {
            addr,
            ids: vec![MsgId(msg.id)],
        },
        PeerRequest::OzoneFetch {
            addr,
            after: Some(pos),
            limit: 10,
        },
        PeerRequest::OzoneDigest { addr },
        PeerRequest::Departure(Departure::Draining),
    ];
    let frames: Vec<Bytes> = reqs.iter().map(wire::encode).collect::<Result<_, _>>()?;
    write(&d, "peer-requests", &stream(1, &frames));
    let replies = [
        PeerReply::Stored { durable: 1 },
        PeerReply::Acked { removed: 1 },
        PeerReply::Messages {
            messages: vec![msg.clone()],
            more: false,
        },
        PeerReply::Noted,
        PeerReply::Digest(Default::default()),
        PeerReply::Error {
            message: "no".into(),
        },
    ];
    let frames: Vec<Bytes> = replies.iter().map(wire::encode).collect::<Result<_, _>>()?;
    write(&d, "peer-replies", &stream(2, &frames));
    let tc = TraceContext {
        entries: vec![(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )],
    };
    write(&d, "trace", &stream(3, &[wire::encode(&tc)?]));
    let creqs = [
        ClientRequest::Hello {
            version: wire::PROTOCOL_VERSION,
            agent: "seed".into(),
        },
        ClientRequest::Inject(vec![pkt("c")]),
        ClientRequest::Subscribe(SubscribeFilter::All),
        ClientRequest::Subscribe(SubscribeFilter::Tags(vec![[1; 32]])),
        ClientRequest::Deposit {
            addr,
            payload: Bytes::from_static(b"x"),
        },
        ClientRequest::Fetch {
            addr,
            proof: OzoneProof::from_secret(b"seed"),
            after: None,
            limit: 5,
        },
        ClientRequest::Ack {
            addr,
            proof: OzoneProof::from_secret(b"seed"),
            ids: vec![MsgId(msg.id)],
        },
    ];
    let frames: Vec<Bytes> = creqs.iter().map(wire::encode).collect::<Result<_, _>>()?;
    write(&d, "client-requests", &stream(4, &frames));
    let events = [
        ClientEvent::Injected {
            accepted: 1,
            duplicates: 0,
            rejected: 0,
        },
        ClientEvent::Deliver(vec![pkt("d")]),
        ClientEvent::Lagged { dropped: 3 },
        ClientEvent::Subscribed,
    ];
    let frames: Vec<Bytes> = events.iter().map(wire::encode).collect::<Result<_, _>>()?;
    write(&d, "client-events", &stream(5, &frames));
    let join = JoinRequest {
        version: wire::PROTOCOL_VERSION,
        secret: [9; 32],
        advertise: Some("10.0.0.1:4710".into()),
        cluster: "test".into(),
    };
    write(&d, "join", &stream(6, &[wire::encode(&join)?]));

    // packets: a batch, and a real signed announcement
    let d = root.join("packets");
    write(
        &d,
        "batch",
        &wire::record_to_vec(&vec![pkt("e"), pkt("f")])?,
    );
    let ann = Announcement {
        node: me,
        seq: 1_700_000_000_000,
        ttl_secs: 60,
        addr: "10.0.0.1:4710".into(),
        cluster: "test".into(),
        software: "seed".into(),
        protocol: wire::PROTOCOL_VERSION,
        state: Departure::Up,
        links: vec![Link {
            peer: me,
            up: true,
            rtt_us: 100,
            mode: EchoMode::Full,
            departure: Departure::Up,
        }],
    };
    let sealed = ann.seal(&identity)?;
    write(&d, "announcement", &sealed);
    write(
        &d,
        "announcement-in-batch",
        &wire::record_to_vec(&vec![EchoPacket::new(Bytes::from(sealed), 16, None)])?,
    );

    // key bundle (RSA-3072 key generation takes a few seconds)
    let p = echomesh_client::e2e::Participant::generate()?;
    write(
        &root.join("key_bundle"),
        "bundle",
        &p.bundle(BundleKind::Publish, "Seed", 1_700_000_000, true)
            .encode()?,
    );

    // invite token and neighbor spec
    let token = InviteToken {
        addr: "10.0.0.1:4710".into(),
        id: me,
        secret: [3; 32],
        expires_unix: 1_900_000_000,
        cluster: "test".into(),
    };
    let d = root.join("invite_token");
    write(&d, "token", token.encode().as_bytes());
    write(
        &d,
        "neighbor",
        format!("10.0.0.1:4710#{}@half", me.fingerprint()).as_bytes(),
    );

    // config
    let d = root.join("config");
    write(
        &d,
        "defaults",
        echomesh_node::Config::default().to_toml().as_bytes(),
    );
    write(
        &d,
        "small",
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/small.toml"),
        )?,
    );

    // disk records
    let d = root.join("disk_records");
    let rec = NeighborRecord {
        id: me,
        addr: Some("10.0.0.1:4710".into()),
        mode: EchoMode::Half,
        origin: NeighborOrigin::Joined,
        added_unix: 1_700_000_000,
    };
    write(&d, "neighbor", &wire::record_to_vec(&rec)?);
    write(&d, "message", &wire::record_to_vec(&msg)?);
    write(
        &d,
        "value",
        &wire::record_to_vec(&MessageValue {
            expires_ms: 1,
            payload: Bytes::from_static(b"v"),
        })?,
    );
    write(
        &d,
        "stats",
        &wire::record_to_vec(&OzoneStats {
            messages: 1,
            bytes: 5,
        })?,
    );
    println!("seeds written under {}", root.display());
    Ok(())
}
