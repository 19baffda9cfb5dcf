//! `echomeshctl bench smoke`: the SmokeStack services' costs. In this process, the per-frame
//! storage-tag search (ozones × participants × 3 minutes) for a frame that matches no one
//! (the worst case, every combination tried) and for one addressed to a random participant.
//! Then on N `echomesh-node` processes (node 0 with an Echo listener): the participants
//! registered with their keys (EPKS), M ozone copies stored for one of them through node 0
//! (each on the write quorum), and one signed retrieval releasing all M.
//!
//! The client frames are made here in Rust with Smoke's layouts (the interoperability of
//! those layouts is what the integration tests check with Smoke's own Java code).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use echomesh_proto::admin as api;
use echomesh_proto::bridge::frame::{
    binary_content, binary_data_frame, control_frame, Frame, Splitter,
};
use echomesh_proto::smoke::crypto::{hmac_matches, sha512, HASH_LEN};
use echomesh_proto::smoke::epks::{self, Keys};
use echomesh_proto::smoke::search::{self, Search};
use echomesh_proto::smoke::{minute, Stream};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub struct SmokeBenchArgs {
    /// Cluster members (all linked to each other).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Registered participants, each with keys.
    #[arg(long, default_value_t = 1000)]
    participants: usize,
    /// Configured ozones.
    #[arg(long, default_value_t = 10)]
    ozones: usize,
    /// Ozone copies stored for one participant, then released by one retrieval.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Size of a stored message (an ozone copy's body) in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

#[derive(Debug, Serialize)]
pub struct SmokeBenchReport {
    pub nodes: usize,
    pub participants: usize,
    pub ozones: usize,
    pub messages: usize,
    pub size: usize,
    /// HMACs a frame that matches no one costs (ozones × participants × 3).
    pub search_hmacs_per_frame: usize,
    /// Median time of the search for a frame that matches no one, in this process.
    pub search_miss_us: f64,
    /// Median time of the search for a frame addressed to a random participant.
    pub search_hit_us: f64,
    /// The node's mean time to inspect one frame (EPKS, requests, search; from
    /// `echomesh_smoke_search_seconds`) while the copies were stored.
    pub node_inspect_mean_us: f64,
    pub stored_per_sec: f64,
    pub released: usize,
    pub retrieval_first_ms: f64,
    pub retrieval_messages_per_sec: f64,
    pub retrieval_mib_per_sec: f64,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn siphash_id(i: usize) -> String {
    format!(
        "BE4C-0000-0000-0000-0000-0000-{:04X}-{:04X}",
        i >> 16,
        i & 0xffff
    )
}

/// A participant's keys as its Smoke client would share them: the bench shares one RSA
/// encryption key among the crowd (RSA key generation is slow); the reader has its own.
struct Signer {
    enc: rsa::RsaPrivateKey,
    enc_der: Vec<u8>,
    sig: p384::ecdsa::SigningKey,
    sig_der: Vec<u8>,
}

impl Signer {
    fn new() -> anyhow::Result<Signer> {
        use rsa::pkcs8::EncodePublicKey as _;
        let enc = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
        let enc_der = enc.to_public_key().to_public_key_der()?.as_bytes().to_vec();
        let sig = p384::ecdsa::SigningKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
        let sig_der = p384::PublicKey::from(sig.verifying_key())
            .to_public_key_der()?
            .as_bytes()
            .to_vec();
        Ok(Signer {
            enc,
            enc_der,
            sig,
            sig_der,
        })
    }

    /// Java's `SHA512withECDSA`: DER signature over the SHA-512 prehash.
    fn sign(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        use p384::ecdsa::signature::hazmat::PrehashSigner;
        let s: p384::ecdsa::Signature = self.sig.sign_prehash(&sha512(&[data]))?;
        Ok(s.to_der().as_bytes().to_vec())
    }

    fn keys(&self, id: &str) -> anyhow::Result<Keys> {
        let signed = [id.as_bytes(), &self.enc_der, &self.sig_der].concat();
        let enc_sig = self.enc.sign(
            rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            &sha512(&[&signed]),
        )?;
        Ok(Keys {
            id: id.to_string(),
            encryption_key: self.enc_der.clone(),
            encryption_signature: enc_sig,
            signature_key: self.sig_der.clone(),
            signature_signature: self.sign(&signed)?,
            ts_ms: echomesh_proto::clock::unix_ms(),
        })
    }
}

fn frame_of(content: &[u8]) -> Vec<u8> {
    binary_data_frame(content)
}

/// The value of one exact series (name with labels) in Prometheus text.
fn series(text: &str, s: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(s)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn search_figures(a: &SmokeBenchArgs) -> (usize, f64, f64) {
    let ozones: Vec<Stream> = (0..a.ozones)
        .map(|i| Stream::derive(&format!("198.51.100.{i}:4710:TCP")))
        .collect();
    let ids: Vec<String> = (0..a.participants).map(siphash_id).collect();
    let s = Search::new(&ozones, ids.clone());
    let now = minute(echomesh_proto::clock::unix_ms());
    let body: Vec<u8> = (0..a.size).map(|_| rand::random()).collect();
    let mut miss = Vec::new();
    for _ in 0..15 {
        let mut f = body.clone();
        f.extend_from_slice(&[0u8; HASH_LEN]);
        let t = Instant::now();
        let found = s.find(&f, now);
        miss.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(found.is_none());
    }
    let mut hit = Vec::new();
    for _ in 0..101 {
        let (o, p) = (
            rand::random_range(0..a.ozones),
            rand::random_range(0..a.participants),
        );
        let mut f = body.clone();
        f.extend_from_slice(&search::tag(&ozones[o], &body, &ids[p], now));
        let t = Instant::now();
        let found = s.find(&f, now);
        hit.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(found.is_some());
    }
    (s.cost(), median(miss), median(hit))
}

pub async fn run(
    a: &SmokeBenchArgs,
    node_bin: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if a.nodes < 2 || a.nodes > 16 {
        bail!("--nodes must be between 2 and 16");
    }
    if a.participants == 0 || a.ozones == 0 || a.messages == 0 || a.messages > 10_000 {
        bail!("--participants and --ozones at least 1, --messages between 1 and 10000");
    }
    if a.size < 2 * HASH_LEN {
        bail!("--size must be at least 128 bytes (Smoke's smallest frames)");
    }
    let (hmacs, search_miss_us, search_hit_us) = search_figures(a);

    let bin = crate::local_mesh::node_binary(node_bin)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut edges = Vec::new();
    for i in 0..a.nodes {
        for j in i + 1..a.nodes {
            edges.push((i, j));
        }
    }
    let (participants, ozones, messages) = (a.participants, a.ozones, a.messages);
    let mesh = crate::local_mesh::LocalMesh::start_configured(&bin, a.nodes, &edges, &[], |i| {
        let listen = if i == 0 {
            format!("listen = \"127.0.0.1:{port}\"\nplain = true\n")
        } else {
            String::new()
        };
        format!(
            "[bridge]\n{listen}start_delay_ms = 0\nqueue_bytes = 268435456\n[bridge.rate]\npackets_per_sec = 10000000\nbytes_per_sec = 4294967296\n[smoke]\nmax_participants = {participants}\nmax_ozones = {ozones}\nmax_search_hmacs = {hmacs}\nmax_release = {messages}\n"
        )
    })
    .await?;
    let n0 = &mesh.nodes[0];
    let addresses: Vec<String> = (0..a.ozones)
        .map(|i| format!("198.51.100.{i}:4710:TCP"))
        .collect();
    for address in &addresses {
        let _: api::SmokeOzones = n0
            .admin
            .post(
                api::PATH_SMOKE_OZONES,
                &api::SmokeOzoneChange {
                    address: address.clone(),
                },
            )
            .await?;
    }
    let crowd = Signer::new()?;
    let reader = Signer::new()?;
    let ids: Vec<String> = (0..a.participants).map(siphash_id).collect();
    for id in &ids {
        let _: api::SmokeParticipants = n0
            .admin
            .post(
                api::PATH_SMOKE_PARTICIPANTS,
                &api::SmokeParticipantChange {
                    siphash_id: id.clone(),
                },
            )
            .await?;
    }

    // One Echo connection to node 0.
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting to node 0's Echo listener")?;
    sock.set_nodelay(true)?;
    let (mut rd, mut wr) = sock.into_split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut split = Splitter::new(1 << 20, Duration::from_secs(3600));
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = std::time::Instant::now();
            split.push(&buf[..n], now);
            while let Ok(Some(f)) = split.next_frame(now) {
                if frames_tx.send(f).is_err() {
                    return;
                }
            }
        }
    });

    // Keys shared (EPKS): the reader is the last participant.
    let reader_id = ids[ids.len() - 1].clone();
    let mut out = Vec::new();
    for id in &ids {
        let keys = if *id == reader_id {
            reader.keys(id)?
        } else {
            crowd.keys(id)?
        };
        let epks = epks::answer(
            &keys,
            id,
            &Stream::derive(id),
            echomesh_proto::clock::unix_ms(),
        );
        out.extend_from_slice(&frame_of(&epks));
    }
    wr.write_all(&out).await?;
    let want = (a.participants * a.nodes) as f64;
    let t0 = Instant::now();
    loop {
        let mut have = 0.0;
        for n in &mesh.nodes {
            have += series(
                &n.admin.text("/metrics").await?,
                "echomesh_smoke_participants{keys=\"keys\"}",
            );
        }
        if have >= want {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("keys captured on {have} of {want} participant records within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // M ozone copies for the reader, tagged for this minute through rotating ozones.
    let streams: Vec<Stream> = addresses.iter().map(|a| Stream::derive(a)).collect();
    let before = n0.admin.text("/metrics").await?;
    let (sum0, count0) = (
        series(&before, "echomesh_smoke_search_seconds_sum"),
        series(&before, "echomesh_smoke_search_seconds_count"),
    );
    let mut out = Vec::with_capacity(a.messages * (a.size * 2));
    let now_min = minute(echomesh_proto::clock::unix_ms());
    for i in 0..a.messages {
        let body: Vec<u8> = (0..a.size - HASH_LEN).map(|_| rand::random()).collect();
        let mut copy = body.clone();
        copy.extend_from_slice(&search::tag(
            &streams[i % streams.len()],
            &body,
            &reader_id,
            now_min,
        ));
        out.extend_from_slice(&frame_of(&copy));
    }
    let t_store = Instant::now();
    wr.write_all(&out).await?;
    loop {
        let text = n0.admin.text("/metrics").await?;
        let stored = series(&text, "echomesh_smoke_frames_total{kind=\"stored\"}");
        let lost = series(
            &text,
            "echomesh_smoke_refused_total{reason=\"not_durable\"}",
        );
        if stored + lost >= a.messages as f64 {
            if lost > 0.0 {
                bail!("{lost} copies were not stored durably");
            }
            break;
        }
        if t_store.elapsed() > Duration::from_secs(300) {
            bail!("only {stored} of {} copies stored within 300 s", a.messages);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store_secs = t_store.elapsed().as_secs_f64();
    let after = n0.admin.text("/metrics").await?;
    let inspected = series(&after, "echomesh_smoke_search_seconds_count") - count0;
    let node_inspect_mean_us = if inspected > 0.0 {
        (series(&after, "echomesh_smoke_search_seconds_sum") - sum0) / inspected * 1e6
    } else {
        0.0
    };

    // One signed retrieval releases them all.
    let identity: [u8; HASH_LEN] = {
        let mut x = [0u8; HASH_LEN];
        for b in x.iter_mut() {
            *b = rand::random();
        }
        x
    };
    let mut plain = vec![0x00];
    plain.extend_from_slice(&echomesh_proto::clock::unix_ms().to_be_bytes());
    plain.extend_from_slice(&identity);
    plain.extend_from_slice(&sha512(&[&reader.enc_der]));
    let sig = reader.sign(&plain)?;
    plain.extend_from_slice(&sig);
    let mut req = control_frame("0095a", b64(&identity).as_bytes());
    req.extend_from_slice(&frame_of(&streams[0].seal(&plain)));
    while frames.try_recv().is_ok() {}
    let t_ret = Instant::now();
    wr.write_all(&req).await?;
    let mut released = 0usize;
    let mut first = None;
    let mut bytes = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while released < a.messages {
        let Ok(Some(f)) = tokio::time::timeout_at(deadline, frames.recv()).await else {
            break;
        };
        let Ok(Frame::Data { content }) = echomesh_proto::bridge::frame::classify(&f) else {
            continue;
        };
        let Some(c) = binary_content(content) else {
            continue;
        };
        if c.len() > HASH_LEN
            && hmac_matches(
                &identity,
                &c[..c.len() - HASH_LEN],
                &c[c.len() - HASH_LEN..],
            )
        {
            released += 1;
            bytes += c.len() - HASH_LEN;
            first.get_or_insert(t_ret.elapsed());
        }
    }
    let ret_secs = t_ret.elapsed().as_secs_f64();
    let report = SmokeBenchReport {
        nodes: a.nodes,
        participants: a.participants,
        ozones: a.ozones,
        messages: a.messages,
        size: a.size,
        search_hmacs_per_frame: hmacs,
        search_miss_us,
        search_hit_us,
        node_inspect_mean_us,
        stored_per_sec: a.messages as f64 / store_secs,
        released,
        retrieval_first_ms: first.map_or(0.0, |d| d.as_secs_f64() * 1e3),
        retrieval_messages_per_sec: released as f64 / ret_secs,
        retrieval_mib_per_sec: bytes as f64 / ret_secs / (1024.0 * 1024.0),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "nodes {}  participants {}  ozones {}  messages {} x {} B",
            report.nodes, report.participants, report.ozones, report.messages, report.size
        );
        println!(
            "search per frame: {} HMACs; no match {:.0} µs, a match {:.0} µs (median); node inspection {:.0} µs (mean)",
            report.search_hmacs_per_frame, report.search_miss_us, report.search_hit_us, report.node_inspect_mean_us
        );
        println!(
            "stored {:.0} copies/s (write quorum each)",
            report.stored_per_sec
        );
        println!(
            "retrieval: {} released, first after {:.1} ms, {:.0} messages/s, {:.1} MiB/s",
            report.released,
            report.retrieval_first_ms,
            report.retrieval_messages_per_sec,
            report.retrieval_mib_per_sec
        );
    }
    Ok(if released == a.messages {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
