//! Generate the key-directory fixtures of the sync test (`tests/fixtures/keydir-2000.bin`):
//! N RSA-3072 key bundles, each a u32 big-endian length and the encoded bundle. RSA-3072 key
//! generation takes about a second per key, so the file is generated once and committed:
//!   cargo run --release -p echomesh-tests --bin keydir-fixtures -- 2000 tests/fixtures/keydir-2000.bin

use std::io::Write;

use echomesh_client::e2e::Participant;
use echomesh_proto::keydir::BundleKind;

/// A fixed creation time (2026-09-20), so that the fixtures are valid from then on.
const CREATED_AT: u64 = 1_790_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(n), Some(out)) = (
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: keydir-fixtures N OUT");
        std::process::exit(2);
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bundles: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            let p = Participant::generate().expect("key generation");
                            let b = p.bundle(
                                BundleKind::Publish,
                                &format!("fixture-{i}"),
                                CREATED_AT,
                                true,
                            );
                            if i % 100 == 0 {
                                eprintln!("keydir-fixtures: {i} of {n}");
                            }
                            b.encode().expect("encode")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut f = std::fs::File::create(out).expect("create output");
    for b in &bundles {
        f.write_all(&(b.len() as u32).to_be_bytes()).expect("write");
        f.write_all(b).expect("write");
    }
    eprintln!("keydir-fixtures: wrote {} bundles to {out}", bundles.len());
}
