//! Reading length-prefixed frames (`echomesh_proto::wire`) from async streams.

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

use echomesh_proto::wire::{decode_body, FrameError, ABSOLUTE_MAX_FRAME};

/// The length prefix of the next frame, checked against `max`; `None` on a clean end of
/// stream before it.
async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_bytes[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    let max = max.min(ABSOLUTE_MAX_FRAME);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// A failed read of a frame's body: the stream ended inside it, or I/O failed.
fn body_error(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    }
}

/// Read one frame from `r`. Returns `Ok(None)` on a clean end of stream between frames.
/// A length above `max` is refused before any body byte is read or allocated.
pub async fn read_frame<R, T>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let Some(len) = read_len(r, max).await? else {
        return Ok(None);
    };
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(body_error)?;
    decode_body(buf).map(Some)
}

/// Read one frame body from `r` into `buf` and hand it out as `Bytes` (split off `buf`, no
/// copy), for decoders that keep slices of it (`wire::decode_peer_frame`). Once every slice
/// of the previous frame is gone, its memory is reused for the next one. `Ok(None)` on a clean
/// end of stream between frames; a length above `max` is refused before any body byte is read.
pub async fn read_frame_bytes<R>(
    r: &mut R,
    max: usize,
    buf: &mut bytes::BytesMut,
) -> Result<Option<bytes::Bytes>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let Some(len) = read_len(r, max).await? else {
        return Ok(None);
    };
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(&mut buf[..]).await.map_err(body_error)?;
    Ok(Some(buf.split().freeze()))
}

/// A cancellation-safe frame reader: the bytes of a partly read frame stay here, so that
/// `next` can be one branch of a `select!` without corrupting the stream when another branch
/// wins. It reads no further than the end of the current frame.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    /// The next frame, or `Ok(None)` on a clean end of stream between frames. A length above
    /// `max` is refused before its body is read or allocated.
    pub async fn next<R, T>(&mut self, r: &mut R, max: usize) -> Result<Option<T>, FrameError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        let max = max.min(ABSOLUTE_MAX_FRAME);
        loop {
            let want = if self.filled < 4 {
                4
            } else {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > max {
                    self.filled = 0;
                    return Err(FrameError::TooLarge { len, max });
                }
                if self.filled == 4 + len {
                    self.filled = 0;
                    return decode_body(&self.buf[4..4 + len]).map(Some);
                }
                4 + len
            };
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            // `read` is cancellation safe: if this future is dropped, no byte was consumed.
            let n = r.read(&mut self.buf[self.filled..want]).await?;
            if n == 0 {
                return if self.filled == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.filled += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use echomesh_proto::echo::EchoPacket;
    use echomesh_proto::wire::{encode, PeerFrame};

    #[tokio::test]
    async fn frame_reader_survives_cancellation_mid_frame() {
        let a = encode(&PeerFrame::Echo(vec![pkt(b"first")])).unwrap();
        let b = encode(&PeerFrame::Echo(vec![pkt(b"second")])).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        let mut fr = FrameReader::default();
        // Half of the first frame arrives, then the read is cancelled by a timeout.
        use tokio::io::AsyncWriteExt;
        tx.write_all(&a[..a.len() / 2]).await.unwrap();
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            fr.next::<_, PeerFrame>(&mut rx, 1024),
        )
        .await;
        assert!(r.is_err(), "no whole frame yet");
        tx.write_all(&a[a.len() / 2..]).await.unwrap();
        tx.write_all(&b).await.unwrap();
        drop(tx);
        for want in [&b"first"[..], b"second"] {
            match fr.next::<_, PeerFrame>(&mut rx, 1024).await.unwrap() {
                Some(PeerFrame::Echo(v)) => assert_eq!(&v[0].payload[..], want),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(fr
            .next::<_, PeerFrame>(&mut rx, 1024)
            .await
            .unwrap()
            .is_none());
        let mut big = FrameReader::default();
        let huge = (u32::MAX).to_be_bytes();
        let err = big
            .next::<_, PeerFrame>(&mut &huge[..], 1024)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "oversized");
    }

    fn pkt(payload: &[u8]) -> EchoPacket {
        EchoPacket::new(Bytes::copy_from_slice(payload), 16, None)
    }

    #[tokio::test]
    async fn roundtrip_echo_batch() {
        let frame = PeerFrame::Echo(vec![pkt(b"a"), pkt(b"bb")]);
        let bytes = encode(&frame).unwrap();
        let mut rd = &bytes[..];
        let mut buf = Vec::new();
        let got: PeerFrame = read_frame(&mut rd, 1024, &mut buf).await.unwrap().unwrap();
        match got {
            PeerFrame::Echo(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(&v[1].payload[..], b"bb");
                assert_eq!(&v[1].id, blake3::hash(b"bb").as_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
        let none: Option<PeerFrame> = read_frame(&mut rd, 1024, &mut buf).await.unwrap();
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let mut data = Vec::new();
        data.extend_from_slice(&(u32::MAX).to_be_bytes());
        let mut rd = &data[..];
        let mut buf = Vec::new();
        let err = read_frame::<_, PeerFrame>(&mut rd, 4 << 20, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "oversized");
        assert!(buf.capacity() < 1024);
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_are_errors() {
        let bytes = encode(&PeerFrame::Echo(vec![pkt(b"hello")])).unwrap();
        let mut rd = &bytes[..bytes.len() - 2];
        let mut buf = Vec::new();
        let err = read_frame::<_, PeerFrame>(&mut rd, 1024, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "truncated");

        let mut garbage = vec![0, 0, 0, 8];
        garbage.extend_from_slice(&[0xff; 8]);
        let mut rd = &garbage[..];
        let err = read_frame::<_, PeerFrame>(&mut rd, 1024, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "undecodable");
    }
}
