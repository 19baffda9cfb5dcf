//! Smoke frames as a node receives them from Echo clients: ozone requests, EPKS key bundles
//! (arbitrary DER keys and signatures included), private-server login answers, cluster Smoke
//! records from the mesh, and the storage-tag search. Nothing may panic.
#![no_main]

use std::sync::LazyLock;

use echomesh_proto::smoke::epks::{self, Keys};
use echomesh_proto::smoke::record::Record;
use echomesh_proto::smoke::search::Search;
use echomesh_proto::smoke::{login, request, Stream};
use libfuzzer_sys::fuzz_target;

static STREAM: LazyLock<Stream> = LazyLock::new(|| Stream::derive("192.0.2.1:4710:TCP"));
static SEARCH: LazyLock<Search> = LazyLock::new(|| {
    Search::new(
        [&*STREAM],
        vec!["0123-4567-89AB-CDEF-0123-4567-89AB-CDEF".to_string()],
    )
});

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000_000u64;
    let _ = request::parse(data, now);
    let _ = request::open(data, [&*STREAM]);
    let _ = epks::capture(data, &STREAM, now);
    let _ = SEARCH.find(data, now / 60_000);
    let _ = Record::decode(data);
    let keys = Keys {
        id: "0123-4567-89AB-CDEF-0123-4567-89AB-CDEF".into(),
        encryption_key: data.to_vec(),
        encryption_signature: Vec::new(),
        signature_key: data.get(data.len() / 2..).unwrap_or_default().to_vec(),
        signature_signature: Vec::new(),
        ts_ms: now,
    };
    let _ = login::verify(data, "challenge", [&keys]);
    let _ = echomesh_proto::smoke::crypto::PublicKey::from_der(data)
        .map(|k| k.verify(data, data));
});
