//! Files as messages: split into chunks that each fit an echo packet, reassembled by the
//! receiver, which checks the whole file against its blake3 before writing it. Reassembly is
//! bounded: file size, files in progress, and a file that never completes is evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::e2e::{Content, FileChunk};

/// Default largest file `recv` accepts.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Files reassembled at once; the oldest incomplete one is evicted beyond this.
pub const MAX_FILES_IN_PROGRESS: usize = 16;
/// Smallest chunk a sender makes (except the last): bounds how many chunks a file may claim.
pub const MIN_CHUNK: u64 = 1024;

/// Split a file into chunk contents of at most `chunk` bytes of data each.
pub fn chunks(name: &str, data: &[u8], chunk: usize) -> Vec<Content> {
    let chunk = chunk.max(MIN_CHUNK as usize);
    let file_id = *blake3::hash(data).as_bytes();
    let count = data.len().div_ceil(chunk).max(1) as u32;
    (0..count)
        .map(|i| {
            let start = i as usize * chunk;
            let end = (start + chunk).min(data.len());
            Content::FileChunk(FileChunk {
                file_id,
                name: name.to_string(),
                total_len: data.len() as u64,
                index: i,
                count,
                data: Bytes::copy_from_slice(&data[start..end]),
            })
        })
        .collect()
}

/// A reassembled, integrity-checked file.
#[derive(Debug)]
pub struct ReceivedFile {
    pub name: String,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error(
        "file {name:?} announces {len} bytes, above the limit of {max} (raise --max-file-bytes)"
    )]
    TooLarge { name: String, len: u64, max: u64 },
    #[error("chunk {index} of {count} of {name:?} is inconsistent with the rest of the file")]
    Inconsistent {
        name: String,
        index: u32,
        count: u32,
    },
    #[error("file {name:?} was reassembled but its content does not match its checksum")]
    Corrupt { name: String },
}

struct Partial {
    sender: [u8; 32],
    name: String,
    total_len: u64,
    count: u32,
    parts: Vec<Option<Bytes>>,
    have: u32,
    bytes: u64,
    order: u64,
}

/// Reassembles chunks per (sender, file). Chunks are authenticated by the caller already.
pub struct Reassembler {
    max_file: u64,
    partial: HashMap<([u8; 32], [u8; 32]), Partial>,
    next_order: u64,
    /// Incomplete files dropped to stay within bounds.
    pub evicted: u64,
}

impl Reassembler {
    pub fn new(max_file: u64) -> Self {
        Reassembler {
            max_file,
            partial: HashMap::new(),
            next_order: 0,
            evicted: 0,
        }
    }

    /// Add one chunk from `sender`; returns the file once every chunk is there.
    pub fn add(
        &mut self,
        sender: [u8; 32],
        c: FileChunk,
    ) -> Result<Option<ReceivedFile>, ChunkError> {
        if c.total_len > self.max_file {
            return Err(ChunkError::TooLarge {
                name: c.name,
                len: c.total_len,
                max: self.max_file,
            });
        }
        let max_chunks = c.total_len.div_ceil(MIN_CHUNK).max(1);
        let inconsistent = |c: &FileChunk| ChunkError::Inconsistent {
            name: c.name.clone(),
            index: c.index,
            count: c.count,
        };
        if c.count == 0 || u64::from(c.count) > max_chunks || c.index >= c.count {
            return Err(inconsistent(&c));
        }
        let key = (sender, c.file_id);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_FILES_IN_PROGRESS {
            if let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.order)
                .map(|(k, _)| *k)
            {
                self.partial.remove(&oldest);
                self.evicted += 1;
            }
        }
        let order = self.next_order;
        self.next_order += 1;
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            sender,
            name: c.name.clone(),
            total_len: c.total_len,
            count: c.count,
            parts: vec![None; c.count as usize],
            have: 0,
            bytes: 0,
            order,
        });
        if p.count != c.count
            || p.total_len != c.total_len
            || p.name != c.name
            || p.sender != sender
        {
            return Err(inconsistent(&c));
        }
        let slot = &mut p.parts[c.index as usize];
        if slot.is_none() {
            p.bytes += c.data.len() as u64;
            if p.bytes > p.total_len {
                let name = p.name.clone();
                self.partial.remove(&key);
                return Err(ChunkError::Inconsistent {
                    name,
                    index: c.index,
                    count: c.count,
                });
            }
            *slot = Some(c.data);
            p.have += 1;
        }
        if p.have < p.count {
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&key) else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(p.total_len as usize);
        for part in p.parts.into_iter().flatten() {
            data.extend_from_slice(&part);
        }
        if data.len() as u64 != p.total_len || *blake3::hash(&data).as_bytes() != c.file_id {
            return Err(ChunkError::Corrupt { name: p.name });
        }
        Ok(Some(ReceivedFile { name: p.name, data }))
    }
}

/// A safe place to write a received file: only the final name component is kept, and an
/// existing file is never overwritten (`name (1).ext`, `name (2).ext`, …).
pub fn safe_destination(dir: &Path, sent_name: &str) -> PathBuf {
    let base = Path::new(sent_name)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && *n != "." && *n != ".." && !n.starts_with('.'))
        .map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "received.bin".to_string());
    let candidate = dir.join(&base);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match base.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (base.clone(), String::new()),
    };
    (1..)
        .map(|i| dir.join(format!("{stem} ({i}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_of(c: Content) -> FileChunk {
        match c {
            Content::FileChunk(f) => f,
            _ => unreachable!(),
        }
    }

    #[test]
    fn out_of_order_chunks_reassemble_and_are_checked() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut parts: Vec<FileChunk> = chunks("pic.png", &data, 30_000)
            .into_iter()
            .map(chunk_of)
            .collect();
        assert_eq!(parts.len(), 4);
        parts.reverse();
        let mut r = Reassembler::new(1 << 20);
        let last = parts.pop().unwrap();
        for p in parts {
            assert!(r.add([1; 32], p).unwrap().is_none());
        }
        let f = r.add([1; 32], last).unwrap().unwrap();
        assert_eq!(f.data, data);
        assert_eq!(f.name, "pic.png");

        // A chunk whose data was swapped (same length) fails the whole-file check.
        let mut parts: Vec<FileChunk> = chunks("a", &data, 60_000)
            .into_iter()
            .map(chunk_of)
            .collect();
        parts[1].data = Bytes::from(vec![0u8; parts[1].data.len()]);
        let mut r = Reassembler::new(1 << 20);
        assert!(r.add([1; 32], parts[0].clone()).unwrap().is_none());
        assert_eq!(
            r.add([1; 32], parts[1].clone()).unwrap_err(),
            ChunkError::Corrupt { name: "a".into() }
        );
    }

    #[test]
    fn bounds_hold() {
        let mut r = Reassembler::new(10);
        let big = chunk_of(chunks("big", &[0u8; 11], 4).remove(0));
        // A chunk claiming more pieces than the size allows is refused before allocating.
        let mut greedy = chunk_of(chunks("g", &[0u8; 10], 5).remove(0));
        greedy.count = u32::MAX;
        let mut r2 = Reassembler::new(1 << 20);
        assert!(matches!(
            r2.add([0; 32], greedy),
            Err(ChunkError::Inconsistent { .. })
        ));
        assert!(matches!(
            r.add([0; 32], big),
            Err(ChunkError::TooLarge { .. })
        ));
        let mut r = Reassembler::new(1 << 20);
        for i in 0..(MAX_FILES_IN_PROGRESS as u8 + 3) {
            let c = chunk_of(chunks("f", &[i; 3000], 1024).remove(0));
            assert!(r.add([0; 32], c).unwrap().is_none());
        }
        assert_eq!(r.evicted, 3);
        assert_eq!(r.partial.len(), MAX_FILES_IN_PROGRESS);
    }

    #[test]
    fn destinations_are_confined_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            safe_destination(dir.path(), "../../etc/passwd"),
            dir.path().join("passwd")
        );
        assert_eq!(
            safe_destination(dir.path(), ".."),
            dir.path().join("received.bin")
        );
        assert_eq!(
            safe_destination(dir.path(), ".bashrc"),
            dir.path().join("received.bin")
        );
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        assert_eq!(
            safe_destination(dir.path(), "a.png"),
            dir.path().join("a (1).png")
        );
    }
}
