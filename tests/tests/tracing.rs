//! OpenTelemetry traces from real nodes reach an OTLP/HTTP receiver (in this test), and a join
//! and a replicated ozone deposit are each one trace across two nodes, with the right parents.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use echomesh_client as client;
use echomesh_proto::ozone::OzoneProof;
use echomesh_tests::{wait_for, TestNode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Debug, Clone)]
struct Span {
    node: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

/// A minimal OTLP/HTTP receiver: decodes every `POST /v1/traces` body and keeps the spans.
fn receiver() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let out = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let out = out.clone();
            std::thread::spawn(move || serve(conn, out));
        }
    });
    (port, spans)
}

fn serve(conn: std::net::TcpStream, out: Arc<Mutex<Vec<Span>>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
        let mut got = Vec::new();
        for rs in req.resource_spans {
            let node = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.instance.id")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        node: node.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        out.lock().unwrap().extend(got);
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
    }
}

fn find(spans: &[Span], name: &str, node: &str) -> Option<Span> {
    spans
        .iter()
        .find(|s| s.name == name && s.node.contains(node))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_replicated_deposit_are_each_one_trace_across_two_nodes() {
    let (port, spans) = receiver();
    // This test binary holds only this test, so the environment is its own.
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    std::env::set_var("ECHOMESH_TELEMETRY__SAMPLE_RATIO", "1.0");
    let root = tempfile::tempdir().unwrap();
    let (a, b) = tokio::task::spawn_blocking({
        let root = root.path().to_path_buf();
        move || {
            let a = TestNode::start(&root, "a", 0, &[]);
            let b = TestNode::start(&root, "b", 0, &[]);
            a.link(&b); // invite on a, join on b
            (a, b)
        }
    })
    .await
    .unwrap();

    // A deposit through a: with two members and R = 2 it is stored on a and replicated to b.
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut s = client::connect(
        &ep,
        a.info.quic,
        Some(a.info.fingerprint.parse().unwrap()),
        "t",
    )
    .await
    .unwrap();
    let (_, copies) = s
        .deposit(
            OzoneProof::from_secret(b"traced").address(),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(copies, 2);

    let (ida, idb) = (a.info.id.clone(), b.info.id.clone());
    let (join, accept, deposit, replicate, store) = tokio::task::spawn_blocking(move || {
        wait_for(
            Duration::from_secs(20),
            "the spans of a join and a deposit",
            || {
                let all = spans.lock().unwrap().clone();
                Some((
                    find(&all, "join", &idb)?,
                    find(&all, "join.accept", &ida)?,
                    find(&all, "ozone.deposit", &ida)?,
                    find(&all, "ozone.replicate", &ida)?,
                    find(&all, "ozone.store", &idb)?,
                ))
            },
        )
    })
    .await
    .unwrap();
    // The join: b's span is the parent of a's.
    assert_eq!(accept.trace, join.trace);
    assert_eq!(
        accept.parent, join.id,
        "join.accept must be a child of join"
    );
    // The deposit: deposit (a) → replicate (a) → store (b), one trace.
    assert_eq!(replicate.trace, deposit.trace);
    assert_eq!(replicate.parent, deposit.id);
    assert_eq!(store.trace, deposit.trace);
    assert_eq!(
        store.parent, replicate.id,
        "ozone.store must be a child of ozone.replicate"
    );
    eprintln!("join {join:?}\naccept {accept:?}\ndeposit {deposit:?}\nstore {store:?}");
    drop((a, b));
}
