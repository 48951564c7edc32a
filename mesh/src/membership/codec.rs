//! SWIM identities and their wire encoding: foca's [`Codec`] for [`MemberId`], written by hand (a
//! few fixed layouts, big-endian like the rest of `mesh::wire`).
//!
//! ```text
//! id      = DID public key [32] ‖ generation u64 ‖ family u8 (4 | 6) ‖ IP [4 | 16] ‖ port u16
//! header  = src id ‖ src incarnation u16 ‖ dst id ‖ message
//! message = kind u8 ‖ fields   (1 Ping n, 2 Ack n, 3 PingReq target n, 4 IndirectPing origin n,
//!           5 IndirectAck target n, 6 ForwardedAck origin n, 7 Announce, 8 Feed, 9 Gossip,
//!           10 Broadcast, 11 TurnUndead; n = probe number u8)
//! member  = id ‖ incarnation u16 ‖ state u8 (0 alive, 1 suspect, 2 down)
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, State};

use crate::did::DidKey;

/// A node as SWIM sees it: its DID, the sync address it listens on (TCP and UDP share the port),
/// and a generation that grows with every restart and every rejoin, so that a node declared down
/// can come back under a new identity that wins over the old one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct MemberId {
    pub(crate) did: DidKey,
    pub(crate) addr: SocketAddr,
    pub(crate) generation: u64,
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.did, self.addr, self.generation)
    }
}

impl foca::Identity for MemberId {
    /// One entry per node in foca's member list, whatever its generation.
    type Addr = DidKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> DidKey {
        self.did
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}

/// Why a SWIM payload could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodecError(pub(crate) &'static str);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SWIM codec: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// foca's codec for [`MemberId`]; stateless.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MemberCodec;

impl Codec<MemberId> for MemberCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<MemberId>, buf: impl BufMut) -> Result<(), CodecError> {
        let mut out = Vec::with_capacity(128);
        write_header(&mut out, header);
        put(buf, &out)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        let mut reader = Reader(buf.chunk());
        let header = reader.header()?;
        let used = buf.chunk().len() - reader.0.len();
        buf.advance(used);
        Ok(header)
    }

    fn encode_member(&mut self, member: &Member<MemberId>, buf: impl BufMut) -> Result<(), CodecError> {
        let mut out = Vec::with_capacity(64);
        write_member(&mut out, member);
        put(buf, &out)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        let mut reader = Reader(buf.chunk());
        let member = reader.member()?;
        let used = buf.chunk().len() - reader.0.len();
        buf.advance(used);
        Ok(member)
    }
}

/// Writes all of `bytes` or nothing (foca requires a clean buffer when an item does not fit).
fn put(mut buf: impl BufMut, bytes: &[u8]) -> Result<(), CodecError> {
    if buf.remaining_mut() < bytes.len() {
        return Err(CodecError("no room left in the packet"));
    }
    buf.put_slice(bytes);
    Ok(())
}

pub(crate) fn write_id(out: &mut Vec<u8>, id: &MemberId) {
    out.extend_from_slice(&id.did.public_key());
    out.extend_from_slice(&id.generation.to_be_bytes());
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&id.addr.port().to_be_bytes());
}

pub(crate) fn write_header(out: &mut Vec<u8>, header: &Header<MemberId>) {
    write_id(out, &header.src);
    out.extend_from_slice(&header.src_incarnation.to_be_bytes());
    write_id(out, &header.dst);
    let (kind, id, probe) = match &header.message {
        Message::Ping(n) => (1, None, Some(*n)),
        Message::Ack(n) => (2, None, Some(*n)),
        Message::PingReq { target, probe_number } => (3, Some(target), Some(*probe_number)),
        Message::IndirectPing { origin, probe_number } => (4, Some(origin), Some(*probe_number)),
        Message::IndirectAck { target, probe_number } => (5, Some(target), Some(*probe_number)),
        Message::ForwardedAck { origin, probe_number } => (6, Some(origin), Some(*probe_number)),
        Message::Announce => (7, None, None),
        Message::Feed => (8, None, None),
        Message::Gossip => (9, None, None),
        Message::Broadcast => (10, None, None),
        Message::TurnUndead => (11, None, None),
    };
    out.push(kind);
    if let Some(id) = id {
        write_id(out, id);
    }
    if let Some(n) = probe {
        out.push(n);
    }
}

pub(crate) fn write_member(out: &mut Vec<u8>, member: &Member<MemberId>) {
    write_id(out, member.id());
    out.extend_from_slice(&member.incarnation().to_be_bytes());
    out.push(match member.state() {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    });
}

/// A cursor over a contiguous payload.
pub(crate) struct Reader<'b>(pub(crate) &'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn id(&mut self) -> Result<MemberId, CodecError> {
        let did = DidKey::from_public_key(self.array()?);
        let generation = u64::from_be_bytes(self.array()?);
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(CodecError("unknown address family")),
        };
        let port = self.u16()?;
        Ok(MemberId {
            did,
            addr: SocketAddr::new(ip, port),
            generation,
        })
    }

    pub(crate) fn header(&mut self) -> Result<Header<MemberId>, CodecError> {
        let src = self.id()?;
        let src_incarnation = self.u16()?;
        let dst = self.id()?;
        let message = match self.u8()? {
            1 => Message::Ping(self.u8()?),
            2 => Message::Ack(self.u8()?),
            3 => Message::PingReq {
                target: self.id()?,
                probe_number: self.u8()?,
            },
            4 => Message::IndirectPing {
                origin: self.id()?,
                probe_number: self.u8()?,
            },
            5 => Message::IndirectAck {
                target: self.id()?,
                probe_number: self.u8()?,
            },
            6 => Message::ForwardedAck {
                origin: self.id()?,
                probe_number: self.u8()?,
            },
            7 => Message::Announce,
            8 => Message::Feed,
            9 => Message::Gossip,
            10 => Message::Broadcast,
            11 => Message::TurnUndead,
            _ => return Err(CodecError("unknown message kind")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    pub(crate) fn member(&mut self) -> Result<Member<MemberId>, CodecError> {
        let id = self.id()?;
        let incarnation = self.u16()?;
        let state = match self.u8()? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(CodecError("unknown member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id() -> impl Strategy<Value = MemberId> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<u16>(),
        )
            .prop_map(|(key, generation, v4, ip, port)| {
                let ip = if v4 {
                    IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
                } else {
                    IpAddr::V6(Ipv6Addr::from(ip))
                };
                MemberId {
                    did: DidKey::from_public_key(key),
                    addr: SocketAddr::new(ip, port),
                    generation,
                }
            })
    }

    fn message() -> impl Strategy<Value = Message<MemberId>> {
        (0u8..11, id(), any::<u8>()).prop_map(|(kind, id, n)| match kind {
            0 => Message::Ping(n),
            1 => Message::Ack(n),
            2 => Message::PingReq {
                target: id,
                probe_number: n,
            },
            3 => Message::IndirectPing {
                origin: id,
                probe_number: n,
            },
            4 => Message::IndirectAck {
                target: id,
                probe_number: n,
            },
            5 => Message::ForwardedAck {
                origin: id,
                probe_number: n,
            },
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            _ => Message::TurnUndead,
        })
    }

    proptest! {
        #[test]
        fn headers_and_members_round_trip(
            src in id(), dst in id(), incarnation in any::<u16>(), message in message(),
            member in id(), state in 0u8..3, trailing in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let header = Header { src, src_incarnation: incarnation, dst, message };
            let state = [State::Alive, State::Suspect, State::Down][usize::from(state)];
            let member = Member::new(member, incarnation, state);
            let mut buf = Vec::new();
            MemberCodec.encode_header(&header, &mut buf).unwrap();
            MemberCodec.encode_member(&member, &mut buf).unwrap();
            buf.extend_from_slice(&trailing);
            let mut cursor = &buf[..];
            prop_assert_eq!(MemberCodec.decode_header(&mut cursor).unwrap(), header);
            prop_assert_eq!(MemberCodec.decode_member(&mut cursor).unwrap(), member);
            prop_assert_eq!(cursor, &trailing[..]);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MemberCodec.decode_header(&bytes[..]);
            let _ = MemberCodec.decode_member(&bytes[..]);
        }
    }

    #[test]
    fn an_item_that_does_not_fit_leaves_the_buffer_clean() {
        let id = MemberId {
            did: DidKey::from_public_key([1; 32]),
            addr: "127.0.0.1:7946".parse().unwrap(),
            generation: 7,
        };
        let mut space = [0u8; 20];
        let mut buf = &mut space[..];
        assert!(MemberCodec.encode_member(&Member::alive(id), &mut buf).is_err());
        assert_eq!(buf.len(), 20);
    }
}
