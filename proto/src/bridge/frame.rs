//! Echo frames: HTTP-lookalike ASCII text ending in the end-of-message marker (EOM)
//! `\r\n\r\n\r\n`. One data frame as Smoke sends it:
//!
//! ```text
//! POST HTTP/1.1\r\nContent-Length: N\r\nContent-Type: application/x-www-form-urlencoded\r\n
//! ETag: …\r\n\r\ncontent=<base64>\r\n\r\n\r\n
//! ```
//!
//! Control frames carry `type=NNNN&content=…` instead of `content=…`. Frames are relayed as the
//! exact bytes received (never re-serialised): the Echo software deduplicates by a hash of
//! those bytes. Frames echomesh makes itself ([`control_frame`]) carry an exact
//! `Content-Length` (Spot-On drops frames without one).

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};

/// The end-of-message marker.
pub const EOM: &[u8] = b"\r\n\r\n\r\n";

/// Message types that concern only the link they arrive on: never flooded.
pub const LINK_LOCAL_TYPES: &[&str] = &[
    "0014", "0095a", "0095b", "0096", "0097a", "0097b", "0111", "0050", "0051", "0052",
];
/// Capabilities (keep-alive).
pub const TYPE_CAPABILITIES: &str = "0014";
/// A client's identity for the filter.
pub const TYPE_IDENTITY: &str = "0095a";
/// "I am Spot-On-Lite": the sender is a server and wants the unfiltered stream.
pub const TYPE_SPOT_ON_LITE: &str = "0111";

/// Why bytes from an Echo connection were refused (the `reason` label of
/// `echomesh_bridge_junk_total`). Junk is never flooded; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Junk {
    /// More than the frame bound buffered without an end-of-message marker, not starting
    /// like a frame.
    #[error("no end-of-message marker within the frame bound")]
    NoEom,
    /// A frame (it started like one) longer than the frame bound.
    #[error("frame longer than the bound")]
    Oversize,
    /// An incomplete frame not finished within the time bound.
    #[error("frame not completed in time")]
    Incomplete,
    /// A frame without a `content=` field (or with an empty one).
    #[error("frame without content")]
    NoContent,
    /// The content is not base64.
    #[error("content is not base64")]
    BadBase64,
}

impl Junk {
    pub const ALL: [Junk; 5] = [
        Junk::NoEom,
        Junk::Oversize,
        Junk::Incomplete,
        Junk::NoContent,
        Junk::BadBase64,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Junk::NoEom => "no_eom",
            Junk::Oversize => "oversize",
            Junk::Incomplete => "incomplete",
            Junk::NoContent => "no_content",
            Junk::BadBase64 => "bad_base64",
        }
    }
}

/// Splits a byte stream into frames at the EOM, with a bound on a frame's size and on the
/// time a started frame may take to complete.
#[derive(Debug)]
pub struct Splitter {
    buf: BytesMut,
    max_frame: usize,
    window: Duration,
    /// Where to resume looking for the EOM (bytes before it were searched already).
    scanned: usize,
    /// When the bytes now buffered started arriving.
    partial_since: Option<Instant>,
}

impl Splitter {
    pub fn new(max_frame: usize, window: Duration) -> Self {
        Splitter {
            buf: BytesMut::new(),
            max_frame,
            window,
            scanned: 0,
            partial_since: None,
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Append received bytes.
    pub fn push(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.partial_since = Some(now);
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame (EOM included), `None` when more bytes are needed, or why
    /// the buffered bytes are junk (then the connection should be closed).
    pub fn next_frame(&mut self, now: Instant) -> Result<Option<Bytes>, Junk> {
        let from = self.scanned.saturating_sub(EOM.len() - 1);
        match find(&self.buf[from..], EOM) {
            Some(i) => {
                let end = from + i + EOM.len();
                if end > self.max_frame {
                    return Err(Junk::Oversize);
                }
                let frame = self.buf.split_to(end).freeze();
                self.scanned = 0;
                self.partial_since = if self.buf.is_empty() { None } else { Some(now) };
                Ok(Some(frame))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_frame {
                    return Err(if looks_like_frame(&self.buf) {
                        Junk::Oversize
                    } else {
                        Junk::NoEom
                    });
                }
                Ok(None)
            }
        }
    }

    /// When the frame being received must be complete (none when nothing is buffered).
    pub fn deadline(&self) -> Option<Instant> {
        self.partial_since.map(|t| t + self.window)
    }

    /// `Err(Incomplete)` when the frame being received is past its deadline.
    pub fn check_deadline(&self, now: Instant) -> Result<(), Junk> {
        match self.deadline() {
            Some(d) if now >= d => Err(Junk::Incomplete),
            _ => Ok(()),
        }
    }

    /// Drop buffered bytes (for tests and reuse).
    pub fn clear(&mut self) {
        self.buf.advance(self.buf.len());
        self.scanned = 0;
        self.partial_since = None;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether bytes start like an Echo frame (`POST ` or Spot-On's `HTTP/1.1 `).
fn looks_like_frame(b: &[u8]) -> bool {
    b.starts_with(b"POST ") || b.starts_with(b"HTTP/1.1 ")
}

/// What one frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A frame to flood (and to filter for clients with identities): its `content=` value.
    Data { content: &'a [u8] },
    /// A link-local control frame (never flooded).
    Control { ty: &'a str, content: &'a [u8] },
    /// Only line breaks (Spot-On-Lite sends these when it shares identities).
    Empty,
}

/// Classify a complete frame (as returned by [`Splitter::next_frame`]).
pub fn classify(frame: &[u8]) -> Result<Frame<'_>, Junk> {
    let body = frame.strip_suffix(EOM).unwrap_or(frame);
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Frame::Empty);
    }
    // The field line starts a line: the first line beginning with `type=` or `content=`.
    let mut start = 0usize;
    loop {
        let line = &body[start..];
        if line.starts_with(b"type=") || line.starts_with(b"content=") {
            break;
        }
        match line.iter().position(|&b| b == b'\n') {
            Some(i) => start += i + 1,
            None => return Err(Junk::NoContent),
        }
    }
    let line = &body[start..];
    if let Some(rest) = line.strip_prefix(b"type=") {
        let amp = rest
            .iter()
            .position(|&b| b == b'&')
            .ok_or(Junk::NoContent)?;
        let ty = std::str::from_utf8(&rest[..amp]).map_err(|_| Junk::NoContent)?;
        let content = rest[amp + 1..]
            .strip_prefix(b"content=")
            .ok_or(Junk::NoContent)?;
        if LINK_LOCAL_TYPES.contains(&ty) {
            return Ok(Frame::Control { ty, content });
        }
        return data(content);
    }
    data(&line[b"content=".len()..])
}

fn data(content: &[u8]) -> Result<Frame<'_>, Junk> {
    let content = trim(content);
    if content.is_empty() {
        return Err(Junk::NoContent);
    }
    for part in content.split(|&b| b == b'\n') {
        let part = trim(part);
        if !part.is_empty() && decode(part).is_none() {
            return Err(Junk::BadBase64);
        }
    }
    Ok(Frame::Data { content })
}

/// Trim ASCII whitespace at both ends.
pub(crate) fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e]
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decode one base64 part (standard alphabet, padding optional).
pub(crate) fn decode(part: &[u8]) -> Option<Vec<u8>> {
    B64.decode(part).ok()
}

/// A frame echomesh originates: `type=TY&content=CONTENT`, with an exact `Content-Length`
/// (bytes from `type=` through the EOM).
pub fn control_frame(ty: &str, content: &[u8]) -> Vec<u8> {
    let body_len = "type=".len() + ty.len() + "&content=".len() + content.len() + EOM.len();
    let mut f = Vec::with_capacity(body_len + 128);
    f.extend_from_slice(b"POST HTTP/1.1\r\nContent-Length: ");
    f.extend_from_slice(body_len.to_string().as_bytes());
    f.extend_from_slice(b"\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ntype=");
    f.extend_from_slice(ty.as_bytes());
    f.extend_from_slice(b"&content=");
    f.extend_from_slice(content);
    f.extend_from_slice(EOM);
    f
}

/// A data frame echomesh originates: `content=CONTENT` with an exact `Content-Length`
/// (SmokeStack's `bytesToMessageString` without the ETag line).
pub fn data_frame(content: &[u8]) -> Vec<u8> {
    let body_len = "content=".len() + content.len() + EOM.len();
    let mut f = Vec::with_capacity(body_len + 128);
    f.extend_from_slice(b"POST HTTP/1.1\r\nContent-Length: ");
    f.extend_from_slice(body_len.to_string().as_bytes());
    f.extend_from_slice(b"\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ncontent=");
    f.extend_from_slice(content);
    f.extend_from_slice(EOM);
    f
}

/// A data frame carrying `bytes` base-64 encoded (how Smoke and SmokeStack send binary content).
pub fn binary_data_frame(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    data_frame(
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes(),
    )
}

/// The bytes of a one-part `content=` value (whitespace, such as Android's line wraps,
/// ignored); `None` when it is not base-64.
pub fn binary_content(content: &[u8]) -> Option<Vec<u8>> {
    let text: Vec<u8> = content
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    decode(&text)
}

/// The capabilities frame (`0014`): base64 of `<uuid>\n<lane width>\nfull`.
pub fn capabilities_frame(uuid: &str, lane_width: usize) -> Vec<u8> {
    let text = format!("{uuid}\n{lane_width}\nfull");
    control_frame(
        TYPE_CAPABILITIES,
        base64::engine::general_purpose::STANDARD
            .encode(text)
            .as_bytes(),
    )
}

/// The Spot-On-Lite marker (`0111`) a server sends to another server's listener.
pub fn spot_on_lite_frame() -> Vec<u8> {
    control_frame(TYPE_SPOT_ON_LITE, b"Spot-On-Lite")
}

/// The identity a `0095a` frame registers: base64 before an optional `;digest` suffix.
/// `None` if it does not decode to 16–256 bytes.
pub fn parse_identity(content: &[u8]) -> Option<Vec<u8>> {
    let content = trim(content);
    let b64 = content.split(|&b| b == b';').next().unwrap_or(content);
    let id = decode(trim(b64))?;
    (16..=256).contains(&id.len()).then_some(id)
}

/// The value of `Content-Length`, if the frame has that header.
pub fn content_length(frame: &[u8]) -> Option<usize> {
    let head_end = find(frame, b"\r\n\r\n")?;
    for line in frame[..head_end].split(|&b| b == b'\n') {
        let line = trim(line);
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            return std::str::from_utf8(trim(&line[15..])).ok()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoke_frame(content: &str) -> Vec<u8> {
        format!(
            "POST HTTP/1.1\r\nContent-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nETag: 0123456789abcdef0123456789abcdef\r\n\r\ncontent={content}\r\n\r\n\r\n",
            content.len() + 14
        )
        .into_bytes()
    }

    #[test]
    fn splits_frames_across_reads_and_keeps_bytes_exact() {
        let t = Instant::now();
        let a = smoke_frame("aGVsbG8=");
        let b = control_frame("0014", b"eA==");
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        let mut s = Splitter::new(1 << 20, Duration::from_secs(10));
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            s.push(chunk, t);
            while let Some(f) = s.next_frame(t).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![Bytes::from(a), Bytes::from(b)]);
        assert_eq!(s.buffered(), 0);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn bounds_garbage_and_oversize_and_time() {
        let t = Instant::now();
        let mut s = Splitter::new(1024, Duration::from_secs(10));
        s.push(&[b'x'; 1025], t);
        assert_eq!(s.next_frame(t), Err(Junk::NoEom));
        let mut s = Splitter::new(1024, Duration::from_secs(10));
        let big = smoke_frame(&"A".repeat(2000));
        s.push(&big[..1100], t);
        assert_eq!(s.next_frame(t), Err(Junk::Oversize));
        let mut s = Splitter::new(1024, Duration::from_secs(10));
        s.push(&big, t);
        assert_eq!(s.next_frame(t), Err(Junk::Oversize));
        let mut s = Splitter::new(1024, Duration::from_secs(10));
        s.push(b"POST HTTP/1.1\r\n", t);
        assert_eq!(s.next_frame(t), Ok(None));
        assert_eq!(s.check_deadline(t + Duration::from_secs(9)), Ok(()));
        assert_eq!(
            s.check_deadline(t + Duration::from_secs(10)),
            Err(Junk::Incomplete)
        );
    }

    #[test]
    fn classifies_data_control_empty_and_junk() {
        assert_eq!(
            classify(&smoke_frame("aGVsbG8=")),
            Ok(Frame::Data {
                content: b"aGVsbG8="
            })
        );
        // Spot-On's three-part form and Android's wrapped base64.
        assert!(matches!(
            classify(&smoke_frame("aGVsbG8=\naGk=\nYQ==")),
            Ok(Frame::Data { .. })
        ));
        assert_eq!(
            classify(&control_frame("0014", b"YQ==\n")),
            Ok(Frame::Control {
                ty: "0014",
                content: b"YQ==\n"
            })
        );
        assert_eq!(
            classify(&control_frame("0097a", b"not base64!")).map(|_| ()),
            Ok(())
        );
        assert_eq!(classify(b"\r\n\r\n\r\n"), Ok(Frame::Empty));
        assert_eq!(classify(b"\r\n\r\n\r\n\r\n\r\n\r\n"), Ok(Frame::Empty));
        assert_eq!(classify(&smoke_frame("not*base64")), Err(Junk::BadBase64));
        assert_eq!(
            classify(b"POST HTTP/1.1\r\n\r\nhello\r\n\r\n\r\n"),
            Err(Junk::NoContent)
        );
        assert_eq!(classify(&smoke_frame("")), Err(Junk::NoContent));
        // SmokeStack's ETag inside the body.
        assert!(matches!(
            classify(
                b"POST HTTP/1.1\r\nContent-Type: x\r\n\r\nETag: 00ff\r\ncontent=aGk=\r\n\r\n\r\n"
            ),
            Ok(Frame::Data { .. })
        ));
        // An unknown type with base64 content is data.
        assert!(matches!(
            classify(&control_frame("0040a", b"aGk=")),
            Ok(Frame::Data { .. })
        ));
    }

    #[test]
    fn originated_frames_have_exact_content_length() {
        for f in [
            capabilities_frame("{6b1a}", 8 << 20),
            spot_on_lite_frame(),
            control_frame("0095a", b"x"),
        ] {
            let body = find(&f, b"type=").unwrap();
            assert_eq!(content_length(&f), Some(f.len() - body));
        }
        assert_eq!(
            spot_on_lite_frame(),
            b"POST HTTP/1.1\r\nContent-Length: 36\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ntype=0111&content=Spot-On-Lite\r\n\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn parses_identities() {
        let id = [7u8; 64];
        let b64 = base64::engine::general_purpose::STANDARD.encode(id);
        assert_eq!(parse_identity(b64.as_bytes()), Some(id.to_vec()));
        assert_eq!(
            parse_identity(format!("{b64};sha-512\n").as_bytes()),
            Some(id.to_vec())
        );
        assert_eq!(parse_identity(b"!!"), None);
        assert_eq!(parse_identity(b"aGk="), None);
    }
}
