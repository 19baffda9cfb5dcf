//! What the fuzz targets share: driving the node's streaming frame reader over fuzz input,
//! the way a QUIC stream feeds it, without a runtime.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use echomesh_client::framing::FrameReader;
use serde::de::DeserializeOwned;

/// Poll a future whose I/O is always ready (an in-memory reader) to completion.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Read frames of `T` from `data` until the stream ends or a frame is refused, as a session
/// does; `max` is the frame size limit. Returns how many frames decoded.
pub fn read_frames<T: DeserializeOwned>(data: &[u8], max: usize) -> usize {
    let mut reader = FrameReader::default();
    let mut input = data;
    let mut n = 0;
    // A stream of N bytes holds at most N/4 frames: the loop is bounded by the input.
    while let Ok(Some(_)) = ready(reader.next::<_, T>(&mut input, max)) {
        n += 1;
    }
    n
}

/// Read peer frames from `data` as a node's peer session does (`read_frame_bytes`, then
/// `decode_peer_frame`, payloads as slices of the frame), until the stream ends or a frame is
/// refused; each frame must decode exactly as the owned decoder decodes it, or be refused by
/// both. Returns how many frames decoded.
pub fn read_peer_frames(data: &[u8], max: usize) -> usize {
    use echomesh_proto::wire::{decode_body, decode_peer_frame, encode, PeerFrame};
    let mut buf = bytes::BytesMut::new();
    let mut input = data;
    let mut n = 0;
    while let Ok(Some(body)) = ready(echomesh_client::framing::read_frame_bytes(
        &mut input, max, &mut buf,
    )) {
        let sliced = decode_peer_frame(&body);
        let owned = decode_body::<PeerFrame>(&body);
        match (&sliced, &owned) {
            (Ok(s), Ok(o)) => assert_eq!(
                encode(s).ok(),
                encode(o).ok(),
                "the two decoders disagree"
            ),
            (Err(_), Err(_)) => {}
            _ => panic!("one decoder accepted what the other refused: {sliced:?} / {owned:?}"),
        }
        if sliced.is_err() {
            break;
        }
        n += 1;
    }
    n
}
