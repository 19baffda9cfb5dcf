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
