//! Bytes from an Echo connection (Smoke, Spot-On, Spot-On-Lite): split into frames with the
//! bridge's bounds, in arbitrary read sizes, each classified; data frames decoded for the
//! identity filter, identity frames parsed. Nothing may panic, the splitter's buffer stays
//! within its bound, and a frame returned ends with the end-of-message marker.
#![no_main]

use std::time::{Duration, Instant};

use echomesh_proto::bridge::frame::{self, Frame, EOM};
use echomesh_proto::bridge::{FilterInput, Splitter};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut s = Splitter::new(MAX, Duration::from_secs(10));
    for chunk in rest.chunks(usize::from(cut).max(1)) {
        s.push(chunk, now);
        loop {
            match s.next_frame(now) {
                Ok(Some(f)) => {
                    assert!(f.ends_with(EOM) && f.len() <= MAX);
                    match frame::classify(&f) {
                        Ok(Frame::Data { content }) => {
                            if let Some(i) = FilterInput::from_content(content) {
                                let _ = i.matches(&[7u8; 64]);
                            }
                        }
                        Ok(Frame::Control { content, .. }) => {
                            let _ = frame::parse_identity(content);
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(s.buffered() <= MAX + chunk.len());
    }
});
