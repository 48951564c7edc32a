//! The append-only log `state.log`: incremental saves of the document since the snapshot, one
//! checksummed frame per persisted change set.
//!
//! # Format
//!
//! The file opens with the 8-byte [`MAGIC`], followed by frames:
//!
//! ```text
//! length   u32, little endian: the payload's length in bytes
//! checksum 8 bytes: the first 8 bytes of SHA-256(length || payload)
//! payload  `length` bytes: Automerge change chunks (`Doc::save_after` output)
//! ```
//!
//! A frame that runs past the end of the file, or whose checksum does not match, ends the log:
//! it and everything after it are reported as [`Damage`] and not replayed. The checksum covers the
//! length too, so a damaged length is caught as well as a damaged payload.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::write_atomically;
use crate::Error;

/// The first bytes of every log file: format name and version.
pub(super) const MAGIC: [u8; 8] = *b"MGLOG\0\0\x01";
/// Bytes before each payload: length and checksum.
const FRAME_HEADER: usize = 4 + CHECKSUM;
/// Bytes of SHA-256 kept as a frame's checksum.
const CHECKSUM: usize = 8;

/// The log, open for appending.
#[derive(Debug)]
pub(super) struct Log {
    path: PathBuf,
    file: fs::File,
    len: u64,
}

/// What a log file holds: the payloads of its intact frames and what was dropped after them.
#[derive(Debug)]
pub(super) struct Replay {
    bytes: Vec<u8>,
    chunks: Vec<Range<usize>>,
    /// The dropped tail, if any.
    pub(super) damage: Option<Damage>,
}

/// The part of a log that was not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// Where the first dropped byte is.
    pub(super) offset: u64,
    /// How many bytes were dropped (up to the end of the file).
    pub(super) dropped: u64,
    /// Why.
    pub(super) reason: String,
}

impl Log {
    /// Replaces the log in `dir` named `name` by an empty one (atomically: a crash leaves the old
    /// log or the new one) and opens it for appending.
    pub(super) fn create(dir: &Path, name: &str) -> Result<Self, Error> {
        write_atomically(dir, name, &MAGIC)?;
        let path = dir.join(name);
        let file = fs::OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        Ok(Self {
            path,
            file,
            len: MAGIC.len() as u64,
        })
    }

    /// Opens an existing log whose first `len` bytes are intact (as [`Replay::len`] reported) for
    /// appending after them.
    pub(super) fn open(path: &Path, len: u64) -> Result<Self, Error> {
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(Error::io("open", path))?;
        let on_disk = file.metadata().map_err(Error::io("stat", path))?.len();
        if on_disk != len {
            return Err(Error::Io {
                action: "append to",
                path: path.to_path_buf(),
                source: std::io::Error::other("the log changed since it was read"),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Appends one frame holding `payload` and waits until it is on disk.
    ///
    /// On error the log may end in a partial frame: append nothing more to it (replace it).
    pub(super) fn append(&mut self, payload: &[u8]) -> Result<(), Error> {
        let frame = frame(payload).ok_or_else(|| Error::Io {
            action: "append to",
            path: self.path.clone(),
            source: std::io::Error::other("change set too large for one log frame"),
        })?;
        self.file
            .write_all(&frame)
            .map_err(Error::io("append to", &self.path))?;
        self.file.sync_data().map_err(Error::io("sync", &self.path))?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// The log's size in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }
}

impl Replay {
    /// Reads the log at `path`: `None` if there is none. Fails if the file cannot be read or is not
    /// a meshgate log; damage after a valid header is reported in [`Replay::damage`] instead.
    pub(super) fn read(path: &Path) -> Result<Option<Self>, Error> {
        match fs::read(path) {
            Ok(bytes) => Self::parse(bytes).map(Some).map_err(|reason| Error::CorruptDocument {
                reason: format!("{}: {reason}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path)(e)),
        }
    }

    /// Splits a log's bytes into intact frames. Fails only if the header is not [`MAGIC`] (a header
    /// cut short, which an atomic creation never leaves, counts as damage).
    pub(super) fn parse(bytes: Vec<u8>) -> Result<Self, &'static str> {
        let mut replay = Self {
            bytes,
            chunks: Vec::new(),
            damage: None,
        };
        let total = replay.bytes.len();
        if total < MAGIC.len() && MAGIC.starts_with(&replay.bytes) {
            replay.damage = (total > 0).then(|| Damage {
                offset: 0,
                dropped: total as u64,
                reason: "the file header is incomplete".to_owned(),
            });
            return Ok(replay);
        }
        if !replay.bytes.starts_with(&MAGIC) {
            return Err("it is not a meshgate state log (unknown header)");
        }
        let mut at = MAGIC.len();
        while at < total {
            match next_frame(&replay.bytes[at..]) {
                Ok(payload) => {
                    replay.chunks.push(at + FRAME_HEADER..at + FRAME_HEADER + payload);
                    at += FRAME_HEADER + payload;
                }
                Err(reason) => {
                    replay.damage = Some(Damage {
                        offset: at as u64,
                        dropped: (total - at) as u64,
                        reason: format!("frame {}: {reason}", replay.chunks.len()),
                    });
                    break;
                }
            }
        }
        Ok(replay)
    }

    /// The payloads of the intact frames, in order, each with its frame's offset in the file.
    pub(super) fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks
            .iter()
            .map(|r| ((r.start - FRAME_HEADER) as u64, &self.bytes[r.clone()]))
    }

    /// How many intact frames the log holds.
    pub(super) fn frames(&self) -> usize {
        self.chunks.len()
    }

    /// Length of the intact prefix (header and intact frames), in bytes.
    pub(super) fn len(&self) -> u64 {
        self.damage
            .as_ref()
            .map_or(self.bytes.len() as u64, |damage| damage.offset)
    }
}

/// The frame holding `payload`, or `None` if it is too long for the length field.
fn frame(payload: &[u8]) -> Option<Vec<u8>> {
    let length = u32::try_from(payload.len()).ok()?.to_le_bytes();
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&length);
    frame.extend_from_slice(&checksum(&length, payload));
    frame.extend_from_slice(payload);
    Some(frame)
}

/// The payload length of the frame at the start of `bytes`, if it is complete and intact.
fn next_frame(bytes: &[u8]) -> Result<usize, &'static str> {
    let Some((header, rest)) = bytes.split_at_checked(FRAME_HEADER) else {
        return Err("its header is cut short");
    };
    let (length, expected) = header.split_at(4);
    let length: [u8; 4] = length.try_into().expect("4 bytes");
    let payload = u32::from_le_bytes(length) as usize;
    let Some(payload_bytes) = rest.get(..payload) else {
        return Err("its payload is cut short");
    };
    if checksum(&length, payload_bytes)[..] != *expected {
        return Err("its checksum does not match");
    }
    Ok(payload)
}

fn checksum(length: &[u8; 4], payload: &[u8]) -> [u8; CHECKSUM] {
    let digest = Sha256::new().chain_update(length).chain_update(payload).finalize();
    let mut sum = [0; CHECKSUM];
    sum.copy_from_slice(&digest[..CHECKSUM]);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for payload in payloads {
            bytes.extend(frame(payload).unwrap());
        }
        bytes
    }

    fn payloads(replay: &Replay) -> Vec<Vec<u8>> {
        replay.chunks().map(|(_, chunk)| chunk.to_vec()).collect()
    }

    #[test]
    fn round_trips_frames() {
        let bytes = log_of(&[b"one", b"", b"three"]);
        let len = bytes.len() as u64;
        let replay = Replay::parse(bytes).unwrap();
        assert_eq!(payloads(&replay), [b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(replay.damage, None);
        assert_eq!(replay.len(), len);
    }

    #[test]
    fn every_cut_keeps_the_frames_before_it() {
        let whole = log_of(&[b"first", b"second"]);
        let first_end = MAGIC.len() + FRAME_HEADER + 5;
        for cut in MAGIC.len()..whole.len() {
            let replay = Replay::parse(whole[..cut].to_vec()).unwrap();
            let kept = if cut < first_end { 0 } else { 1 };
            assert_eq!(replay.frames(), kept, "cut at {cut}");
            let damage = replay.damage.clone();
            if cut == MAGIC.len() || cut == first_end {
                assert_eq!(damage, None, "cut at {cut}");
            } else {
                let damage = damage.expect("a cut frame is damage");
                assert_eq!(damage.offset + damage.dropped, cut as u64);
                assert_eq!(replay.len(), damage.offset);
            }
        }
    }

    #[test]
    fn a_flipped_bit_stops_the_log_at_its_frame() {
        let whole = log_of(&[b"first", b"second", b"third"]);
        let second = MAGIC.len() + FRAME_HEADER + 5;
        for at in second..second + FRAME_HEADER + 6 {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x10;
            let replay = Replay::parse(bytes).unwrap();
            assert_eq!(payloads(&replay), [b"first".to_vec()], "flip at {at}");
            let damage = replay.damage.unwrap();
            assert_eq!(damage.offset, second as u64);
            assert!(damage.reason.starts_with("frame 1:"), "{}", damage.reason);
        }
    }

    #[test]
    fn headers() {
        assert!(Replay::parse(b"garbage!".to_vec()).is_err());
        assert!(Replay::parse(b"MGLOG\0\0\x02".to_vec()).is_err());
        let empty = Replay::parse(Vec::new()).unwrap();
        assert_eq!((empty.frames(), empty.damage), (0, None));
        let short = Replay::parse(MAGIC[..3].to_vec()).unwrap();
        assert_eq!(short.frames(), 0);
        assert_eq!(short.damage.map(|d| d.dropped), Some(3));
    }

    proptest::proptest! {
        /// Any frames round-trip, and any cut or flipped byte keeps exactly an intact prefix of
        /// them (never a changed payload).
        #[test]
        fn frames_round_trip_and_damage_keeps_a_prefix(
            written in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..6),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let refs: Vec<&[u8]> = written.iter().map(Vec::as_slice).collect();
            let whole = log_of(&refs);
            let replay = Replay::parse(whole.clone()).unwrap();
            proptest::prop_assert_eq!(payloads(&replay), written.clone());
            proptest::prop_assert_eq!(replay.damage.clone(), None);

            let at = MAGIC.len() + cut.index(whole.len() - MAGIC.len() + 1);
            let replay = Replay::parse(whole[..at].to_vec()).unwrap();
            let kept = payloads(&replay);
            proptest::prop_assert!(kept.len() <= written.len());
            proptest::prop_assert_eq!(&kept[..], &written[..kept.len()]);

            if whole.len() > MAGIC.len() {
                let mut bytes = whole.clone();
                let at = MAGIC.len() + flip.index(whole.len() - MAGIC.len());
                bytes[at] ^= 1 << bit;
                let replay = Replay::parse(bytes).unwrap();
                let kept = payloads(&replay);
                proptest::prop_assert!(kept.len() < written.len(), "a flipped byte went unnoticed");
                proptest::prop_assert_eq!(&kept[..], &written[..kept.len()]);
            }
        }
    }
}
