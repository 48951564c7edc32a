//! Stream frames: `length: u32 BE` ‖ `kind: u8` ‖ `payload` (`length` bytes).

use std::fmt;

use crate::Error;
use crate::did::DidKey;

/// A payload limit for a stream that has not authenticated yet: large enough for every handshake
/// frame, small enough that an unauthenticated peer cannot make the node buffer much. Raise it
/// with [`FrameDecoder::set_max_payload`] once the handshake is done.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 1024;

/// Length prefix (4) plus kind (1).
const HEADER_LEN: usize = 5;
/// `major` (2) ‖ `minor` (2) ‖ DID public key (32) ‖ nonce (32).
const HELLO_LEN: usize = 68;

const KIND_HELLO: u8 = 1;
const KIND_AUTH: u8 = 2;
const KIND_SYNC: u8 = 3;
const KIND_PING: u8 = 4;
const KIND_PONG: u8 = 5;
const KIND_BYE: u8 = 6;
const KIND_EPOCH: u8 = 7;
const KIND_EPOCH_SYNC: u8 = 8;

/// One frame of the per-peer sync stream.
///
/// Encoded as a 4-byte big-endian payload length, a 1-byte kind, then the payload; the layout of
/// each kind is in `mesh/ALGORITHM.md` ("Wire protocol"). `Debug` shows sizes, never the content of
/// a [`Frame::Sync`] message.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Opens the handshake: the sender's protocol version, DID and a fresh random nonce.
    Hello {
        /// The sender's major protocol version ([`super::MAJOR`]).
        major: u16,
        /// The sender's minor protocol version ([`super::MINOR`]).
        minor: u16,
        /// The sender's node identity.
        did: DidKey,
        /// 32 fresh random bytes, new for every connection.
        nonce: [u8; 32],
        /// The sender's latest key event, when its identity has rotated (an optional trailer
        /// after the 68 frozen bytes, which older builds ignore): lets a peer that has not heard
        /// of the rotation yet accept the new key (see `Peers::extends_chain`).
        rotation: Option<Box<crate::kel::KeyEvent>>,
    },
    /// Proves the Hello: the sender's ed25519 signature over the handshake transcript.
    Auth {
        /// The ed25519 signature.
        signature: [u8; 64],
    },
    /// One message of the replicated document's sync protocol.
    Sync(Vec<u8>),
    /// A keep-alive probe; the peer answers with a [`Frame::Pong`] carrying the same number.
    Ping(u64),
    /// The answer to a [`Frame::Ping`].
    Pong(u64),
    /// The sender is closing the stream, and says why.
    Bye {
        /// Human-readable reason, for the peer's log.
        reason: String,
    },
    /// The sender's epochs (minor 1): its current epoch with the cut it started from, and the
    /// previous epoch it still holds ([`crate::epoch::Announce`]).
    Epoch(crate::epoch::Announce),
    /// One sync message of the document of the epoch whose seed is `seed` (minor 1).
    EpochSync {
        /// The epoch's seed (see [`crate::epoch::EpochId`]).
        seed: [u8; 32],
        /// The Automerge sync message.
        message: Vec<u8>,
    },
}

impl Frame {
    /// The frame's wire encoding: length prefix, kind, payload.
    ///
    /// # Panics
    ///
    /// If a payload is 4 GiB or longer, which the length prefix cannot express.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload_len());
        out.extend_from_slice(&[0; 4]);
        out.push(self.kind());
        match self {
            Frame::Hello {
                major,
                minor,
                did,
                nonce,
                rotation,
            } => {
                out.extend_from_slice(&major.to_be_bytes());
                out.extend_from_slice(&minor.to_be_bytes());
                out.extend_from_slice(&did.public_key());
                out.extend_from_slice(nonce);
                if let Some(trailer) = rotation.as_deref().and_then(rotation_trailer) {
                    out.extend_from_slice(&trailer);
                }
            }
            Frame::Auth { signature } => out.extend_from_slice(signature),
            Frame::Sync(message) => out.extend_from_slice(message),
            Frame::Ping(n) | Frame::Pong(n) => out.extend_from_slice(&n.to_be_bytes()),
            Frame::Bye { reason } => out.extend_from_slice(reason.as_bytes()),
            Frame::Epoch(announce) => out.extend_from_slice(&announce.encode()),
            Frame::EpochSync { seed, message } => {
                out.extend_from_slice(seed);
                out.extend_from_slice(message);
            }
        }
        let length = u32::try_from(out.len() - HEADER_LEN).expect("a mesh frame payload is shorter than 4 GiB");
        out[..4].copy_from_slice(&length.to_be_bytes());
        out
    }

    /// The frame's kind as a word ("Hello", "Sync", …), for logs and errors.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => KIND_HELLO,
            Frame::Auth { .. } => KIND_AUTH,
            Frame::Sync(_) => KIND_SYNC,
            Frame::Ping(_) => KIND_PING,
            Frame::Pong(_) => KIND_PONG,
            Frame::Bye { .. } => KIND_BYE,
            Frame::Epoch(_) => KIND_EPOCH,
            Frame::EpochSync { .. } => KIND_EPOCH_SYNC,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Hello { rotation, .. } => {
                HELLO_LEN + rotation.as_deref().and_then(rotation_trailer).map_or(0, |t| t.len())
            }
            Frame::Auth { .. } => 64,
            Frame::Sync(message) => message.len(),
            Frame::Ping(_) | Frame::Pong(_) => 8,
            Frame::Bye { reason } => reason.len(),
            Frame::Epoch(announce) => 83 + 32 * announce.current.cut.len(),
            Frame::EpochSync { message, .. } => 32 + message.len(),
        }
    }

    /// Decodes a payload whose kind is known to be valid.
    fn decode(kind: u8, payload: &[u8]) -> Result<Frame, Error> {
        Ok(match kind {
            KIND_HELLO => {
                // Later minors may append fields; the first 68 bytes are frozen across versions,
                // so that a node can always read a peer's version and refuse it clearly.
                if payload.len() < HELLO_LEN {
                    return Err(Error::MalformedFrame("Hello is shorter than 68 bytes"));
                }
                let did = DidKey::from_public_key(array(&payload[4..36]));
                Frame::Hello {
                    major: u16::from_be_bytes([payload[0], payload[1]]),
                    minor: u16::from_be_bytes([payload[2], payload[3]]),
                    did,
                    nonce: array(&payload[36..68]),
                    rotation: parse_rotation(did, &payload[HELLO_LEN..]).map(Box::new),
                }
            }
            KIND_AUTH => Frame::Auth {
                signature: payload
                    .try_into()
                    .map_err(|_| Error::MalformedFrame("Auth is not 64 bytes"))?,
            },
            KIND_SYNC => Frame::Sync(payload.to_vec()),
            KIND_PING | KIND_PONG => {
                let n = u64::from_be_bytes(
                    payload
                        .try_into()
                        .map_err(|_| Error::MalformedFrame("Ping/Pong is not 8 bytes"))?,
                );
                if kind == KIND_PING {
                    Frame::Ping(n)
                } else {
                    Frame::Pong(n)
                }
            }
            KIND_BYE => Frame::Bye {
                reason: String::from_utf8(payload.to_vec())
                    .map_err(|_| Error::MalformedFrame("Bye reason is not UTF-8"))?,
            },
            KIND_EPOCH => Frame::Epoch(crate::epoch::Announce::decode(payload)?),
            KIND_EPOCH_SYNC => {
                if payload.len() < 32 {
                    return Err(Error::MalformedFrame("EpochSync is shorter than 32 bytes"));
                }
                Frame::EpochSync {
                    seed: array(&payload[..32]),
                    message: payload[32..].to_vec(),
                }
            }
            other => return Err(Error::UnknownFrameKind(other)),
        })
    }
}

/// The type byte of the `Hello` trailer carrying a key event.
const TRAILER_ROTATION: u8 = 1;
/// Its length: type ‖ seq u64 ‖ key [32] ‖ next [32] ‖ signature [64].
const ROTATION_TRAILER_LEN: usize = 1 + 8 + 32 + 32 + 64;

/// The `Hello` trailer for `event` (`None` if its signature is not 64 bytes of base64url).
fn rotation_trailer(event: &crate::kel::KeyEvent) -> Option<Vec<u8>> {
    use base64::Engine;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&event.signature)
        .ok()
        .filter(|s| s.len() == 64)?;
    let mut out = Vec::with_capacity(ROTATION_TRAILER_LEN);
    out.push(TRAILER_ROTATION);
    out.extend_from_slice(&event.seq.to_be_bytes());
    out.extend_from_slice(&event.key);
    out.extend_from_slice(&event.next);
    out.extend_from_slice(&signature);
    Some(out)
}

/// The key event of `did` at the start of a `Hello` trailer. Anything else (a later minor's field, a
/// trailer of another type or length) is ignored, as an older build ignores the whole trailer; the
/// event is only a claim until the handshake checks that it extends the chain it knows.
fn parse_rotation(did: DidKey, trailer: &[u8]) -> Option<crate::kel::KeyEvent> {
    use base64::Engine;
    if trailer.len() < ROTATION_TRAILER_LEN || trailer[0] != TRAILER_ROTATION {
        return None;
    }
    Some(crate::kel::KeyEvent {
        did,
        seq: u64::from_be_bytes(array(&trailer[1..9])),
        key: array(&trailer[9..41]),
        next: array(&trailer[41..73]),
        signature: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&trailer[73..ROTATION_TRAILER_LEN]),
    })
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Hello {
                major,
                minor,
                did,
                nonce,
                rotation,
            } => f
                .debug_struct("Hello")
                .field("major", major)
                .field("minor", minor)
                .field("did", did)
                .field("nonce", &Hex(nonce))
                .field("rotation_seq", &rotation.as_ref().map(|e| e.seq))
                .finish(),
            Frame::Auth { signature } => f.debug_struct("Auth").field("signature", &Hex(signature)).finish(),
            Frame::Sync(message) => write!(f, "Sync(<{} bytes>)", message.len()),
            Frame::Ping(n) => f.debug_tuple("Ping").field(n).finish(),
            Frame::Pong(n) => f.debug_tuple("Pong").field(n).finish(),
            Frame::Bye { reason } => f.debug_struct("Bye").field("reason", reason).finish(),
            Frame::Epoch(announce) => f
                .debug_struct("Epoch")
                .field("number", &announce.current.number)
                .field("seed", &Hex(&announce.current.seed))
                .field("cut", &announce.current.cut.len())
                .field("previous", &announce.previous.map(|p| p.number))
                .finish(),
            Frame::EpochSync { seed, message } => write!(f, "EpochSync({:?}, <{} bytes>)", Hex(seed), message.len()),
        }
    }
}

/// Splits a byte stream into [`Frame`]s, buffering partial input.
///
/// Feed it whatever the socket returned with [`push`](Self::push), then call
/// [`next`](Self::next) until it answers `Ok(None)`. A frame whose length prefix exceeds the limit
/// is refused as soon as its 4 length bytes are in, before its payload is buffered. After any
/// error the stream is out of sync: the decoder drops its buffer and every later call fails.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Start of the first unconsumed byte in `buffer`.
    start: usize,
    max_payload: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder refusing frames whose payload is longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            buffer: Vec::new(),
            start: 0,
            max_payload,
            failed: false,
        }
    }

    /// Changes the payload limit, for instance from [`HANDSHAKE_MAX_PAYLOAD`] to the sync limit once
    /// the peer has authenticated. Applies to frames whose header is not yet checked.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Appends bytes received from the stream. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the reason the stream
    /// cannot be decoded: [`Error::FrameTooLarge`], [`Error::UnknownFrameKind`],
    /// [`Error::MalformedFrame`].
    #[allow(clippy::should_implement_trait)] // fallible, so not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Frame>, Error> {
        if self.failed {
            return Err(Error::MalformedFrame("the stream already failed to decode"));
        }
        match self.take() {
            Ok(frame) => Ok(frame),
            Err(error) => {
                self.failed = true;
                self.buffer = Vec::new();
                self.start = 0;
                Err(error)
            }
        }
    }

    /// How many received bytes wait for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn take(&mut self) -> Result<Option<Frame>, Error> {
        let pending = &self.buffer[self.start..];
        if pending.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(array(&pending[..4]));
        if u64::from(length) > self.max_payload as u64 {
            return Err(Error::FrameTooLarge {
                length: length.into(),
                max: self.max_payload,
            });
        }
        let Some(&kind) = pending.get(4) else {
            return Ok(None);
        };
        if !(KIND_HELLO..=KIND_EPOCH_SYNC).contains(&kind) {
            return Err(Error::UnknownFrameKind(kind));
        }
        let end = HEADER_LEN + length as usize;
        if pending.len() < end {
            return Ok(None);
        }
        let frame = Frame::decode(kind, &pending[HEADER_LEN..end])?;
        self.start += end;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HELLO => "Hello",
        KIND_AUTH => "Auth",
        KIND_SYNC => "Sync",
        KIND_PING => "Ping",
        KIND_PONG => "Pong",
        KIND_BYE => "Bye",
        KIND_EPOCH => "Epoch",
        KIND_EPOCH_SYNC => "EpochSync",
        _ => "unknown",
    }
}

/// The first `N` bytes of `bytes`, which the caller has checked to be exactly `N` long.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Lowercase hex, for `Debug`.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_debug_shows_only_the_size() {
        let shown = format!("{:?}", Frame::Sync(b"client secret hash".to_vec()));
        assert_eq!(shown, "Sync(<18 bytes>)");
    }

    #[test]
    fn hello_keeps_reading_when_a_later_minor_appends_fields() {
        let hello = Frame::Hello {
            major: 1,
            minor: 7,
            did: DidKey::from_public_key([3; 32]),
            nonce: [4; 32],
            rotation: None,
        };
        let mut bytes = hello.encode();
        bytes.extend_from_slice(b"future");
        let length = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[..4].copy_from_slice(&length.to_be_bytes());
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&bytes);
        assert_eq!(decoder.next().unwrap(), Some(hello));
    }

    #[test]
    fn compacts_consumed_bytes() {
        let mut decoder = FrameDecoder::new(1024);
        let ping = Frame::Ping(1).encode();
        decoder.push(&ping);
        decoder.push(&ping[..3]);
        assert_eq!(decoder.next().unwrap(), Some(Frame::Ping(1)));
        assert_eq!(decoder.buffered(), 3);
        decoder.push(&ping[3..]);
        assert_eq!(decoder.start, 0);
        assert_eq!(decoder.next().unwrap(), Some(Frame::Ping(1)));
        assert_eq!(decoder.buffered(), 0);
    }
}
