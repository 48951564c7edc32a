//! Mutual authentication of two nodes at the start of a sync stream.
//!
//! ```text
//! initiator                               responder
//!   Hello(I) ──────────────────────────────▶
//!            ◀────────────────────────────── Hello(R), Auth(R) = sig_R(transcript, "responder")
//!   Auth(I) = sig_I(transcript, "initiator") ▶
//! ```

use crate::Error;
use crate::did::DidKey;
use crate::identity::{self, NodeIdentity};

use super::frame::Frame;
use super::{MAJOR, MINOR, Peers};

/// Domain separation of the handshake transcript, so that no other signature made by a node
/// identity can pass for a handshake signature.
const DOMAIN: &[u8] = b"meshgate-sync-v1";

/// Which end of the stream a node is; bound into the transcript, so an `Auth` made in one role
/// cannot be reflected back as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The node that opened the connection; it authenticates second, after the responder.
    Initiator,
    /// The node that accepted the connection.
    Responder,
}

/// What to do after [`Handshake::handle`] accepted a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Send these frames (possibly none) and keep reading.
    Send(Vec<Frame>),
    /// The peer is authenticated: send `send`, then the stream carries sync frames.
    Done {
        /// The authenticated, admitted peer.
        peer: DidKey,
        /// The peer's minor version; the session uses the features of `min(peer_minor, MINOR)`.
        peer_minor: u16,
        /// Frames to send before anything else.
        send: Vec<Frame>,
    },
}

/// The handshake state machine of one stream: feed it every received frame until it answers
/// [`Step::Done`] or an error. On an error the stream must be closed (a `Bye` carrying the
/// error's message may be sent first); the handshake refuses any further frame.
#[derive(Debug)]
pub struct Handshake<'a> {
    identity: &'a NodeIdentity,
    role: Role,
    ours: Hello,
    state: State,
}

impl<'a> Handshake<'a> {
    /// The side that opened the connection, with `nonce` fresh random bytes; returns the frames to
    /// send first (its `Hello`).
    pub fn initiator(identity: &'a NodeIdentity, nonce: [u8; 32]) -> (Self, Vec<Frame>) {
        Self::with_minor(Role::Initiator, identity, nonce, MINOR)
    }

    /// The side that accepted the connection, with `nonce` fresh random bytes; returns the frames to
    /// send first (none: the responder speaks after the initiator's `Hello`).
    pub fn responder(identity: &'a NodeIdentity, nonce: [u8; 32]) -> (Self, Vec<Frame>) {
        Self::with_minor(Role::Responder, identity, nonce, MINOR)
    }

    /// A handshake advertising minor version `minor` of [`MAJOR`] instead of [`MINOR`]: lets a node
    /// hold back newer features during a rolling upgrade, and lets tests play a peer of another
    /// minor.
    pub fn with_minor(role: Role, identity: &'a NodeIdentity, nonce: [u8; 32], minor: u16) -> (Self, Vec<Frame>) {
        let ours = Hello {
            major: MAJOR,
            minor,
            did: identity.did(),
            nonce,
            // A rotated identity shows its latest event, for peers that have not heard of it.
            rotation: (identity.seq() >= 1).then(|| Box::new(identity.event())),
        };
        let send = match role {
            Role::Initiator => vec![ours.frame()],
            Role::Responder => Vec::new(),
        };
        (
            Self {
                identity,
                role,
                ours,
                state: State::AwaitHello,
            },
            send,
        )
    }

    /// Handles one frame from the peer. `peers` decides whether the DID in the peer's `Hello` may
    /// join (asked before any signature is checked or made) and names the key its `Auth` must be
    /// signed with: the DID's current key, which differs from the DID's own once it rotated.
    ///
    /// Errors: [`Error::IncompatibleVersion`], [`Error::OwnDid`], [`Error::NotAdmitted`],
    /// [`Error::BadSignature`], [`Error::UnexpectedFrame`], [`Error::PeerClosed`].
    pub fn handle(&mut self, frame: Frame, peers: &dyn Peers) -> Result<Step, Error> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let step = self.advance(state, frame, peers)?;
        Ok(step)
    }

    /// The role this side plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Moves from `state` on `frame`; `self.state` stays `Failed` unless this sets it.
    fn advance(&mut self, state: State, frame: Frame, peers: &dyn Peers) -> Result<Step, Error> {
        match (state, frame) {
            (_, Frame::Bye { reason }) => Err(Error::PeerClosed { reason }),
            (
                State::AwaitHello,
                Frame::Hello {
                    major,
                    minor,
                    did,
                    nonce,
                    rotation,
                },
            ) => {
                let peer = Hello {
                    major,
                    minor,
                    did,
                    nonce,
                    rotation,
                };
                self.accept_hello(&peer, peers)?;
                let send = match self.role {
                    Role::Initiator => Vec::new(),
                    Role::Responder => vec![self.ours.frame(), self.auth(&peer)],
                };
                self.state = State::AwaitAuth { peer };
                Ok(Step::Send(send))
            }
            (State::AwaitAuth { peer }, Frame::Auth { signature }) => {
                let transcript = self.transcript(self.role.other(), &peer);
                // The key the peer signs with as known here, or the one its `Hello` showed if that
                // event is the next rotation of the chain known here (made while this node could
                // not hear of it: the peer was offline or partitioned away).
                let key = match peer.rotation.as_deref() {
                    Some(event) if event.did == peer.did && peers.extends_chain(event) => event.key,
                    _ => peers.current_key(&peer.did),
                };
                identity::verify_with(
                    &[key],
                    &transcript,
                    &signature,
                    &format!("handshake Auth from {}", peer.did),
                )?;
                self.state = State::Finished;
                Ok(Step::Done {
                    peer: peer.did,
                    peer_minor: peer.minor,
                    send: match self.role {
                        Role::Initiator => vec![self.auth(&peer)],
                        Role::Responder => Vec::new(),
                    },
                })
            }
            (state, frame) => Err(Error::UnexpectedFrame {
                expected: state.expects(),
                received: frame.name(),
            }),
        }
    }

    fn accept_hello(&self, peer: &Hello, peers: &dyn Peers) -> Result<(), Error> {
        if peer.major != MAJOR {
            return Err(Error::IncompatibleVersion {
                our_major: MAJOR,
                our_minor: self.ours.minor,
                peer_major: peer.major,
                peer_minor: peer.minor,
            });
        }
        if peer.did == self.ours.did {
            return Err(Error::OwnDid(peer.did));
        }
        if !peers.is_admitted(&peer.did) {
            return Err(Error::NotAdmitted(peer.did));
        }
        Ok(())
    }

    /// This side's `Auth` frame.
    fn auth(&self, peer: &Hello) -> Frame {
        Frame::Auth {
            signature: self.identity.sign(&self.transcript(self.role, peer)),
        }
    }

    /// What the `signer` signs in a session between this side and `peer`.
    fn transcript(&self, signer: Role, peer: &Hello) -> Vec<u8> {
        match self.role {
            Role::Initiator => transcript(signer, &self.ours, peer),
            Role::Responder => transcript(signer, peer, &self.ours),
        }
    }
}

impl Role {
    fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

#[derive(Debug)]
enum State {
    AwaitHello,
    AwaitAuth { peer: Hello },
    Finished,
    Failed,
}

impl State {
    fn expects(&self) -> &'static str {
        match self {
            State::AwaitHello => "Hello",
            State::AwaitAuth { .. } => "Auth",
            State::Finished => "nothing (the handshake is finished)",
            State::Failed => "nothing (the handshake failed)",
        }
    }
}

/// The fields of one side's `Hello`.
#[derive(Debug, Clone)]
struct Hello {
    major: u16,
    minor: u16,
    did: DidKey,
    nonce: [u8; 32],
    /// Not part of the transcript: the event is self-certifying (signed by its key, committed to
    /// by the previous event), and the `Auth` proves the peer holds its key.
    rotation: Option<Box<crate::kel::KeyEvent>>,
}

impl Hello {
    fn frame(&self) -> Frame {
        Frame::Hello {
            major: self.major,
            minor: self.minor,
            did: self.did,
            nonce: self.nonce,
            rotation: self.rotation.clone(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.major.to_be_bytes());
        out.extend_from_slice(&self.minor.to_be_bytes());
        out.extend_from_slice(&self.did.public_key());
        out.extend_from_slice(&self.nonce);
    }
}

/// `DOMAIN` ‖ 0x00 ‖ signer role (`I` or `R`) ‖ initiator's Hello fields ‖ responder's Hello fields,
/// each as `major` ‖ `minor` ‖ DID public key ‖ nonce. Fixed length, so unambiguous.
fn transcript(signer: Role, initiator: &Hello, responder: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 2 + 2 * 68);
    out.extend_from_slice(DOMAIN);
    out.push(0);
    out.push(match signer {
        Role::Initiator => b'I',
        Role::Responder => b'R',
    });
    initiator.write(&mut out);
    responder.write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(_: &DidKey) -> bool {
        true
    }

    /// A peer that signs the right transcript in the wrong role is refused: the role byte, not only
    /// the order of the fields, separates the two signatures.
    #[test]
    fn a_signature_made_in_the_other_role_is_refused() {
        let alice = NodeIdentity::from_seed([1; 32]);
        let bob = NodeIdentity::from_seed([2; 32]);
        let (mut responder, _) = Handshake::responder(&alice, [3; 32]);
        let bob_hello = Hello {
            major: MAJOR,
            minor: MINOR,
            did: bob.did(),
            nonce: [4; 32],
            rotation: None,
        };
        let Step::Send(reply) = responder.handle(bob_hello.frame(), &admit_all).unwrap() else {
            panic!()
        };
        let Frame::Hello { nonce, .. } = reply[0] else { panic!() };
        let alice_hello = Hello {
            major: MAJOR,
            minor: MINOR,
            did: alice.did(),
            nonce,
            rotation: None,
        };
        let wrong_role = bob.sign(&transcript(Role::Responder, &bob_hello, &alice_hello));
        let error = responder
            .handle(Frame::Auth { signature: wrong_role }, &admit_all)
            .unwrap_err();
        assert!(matches!(error, Error::BadSignature { .. }), "{error}");
        let right_role = bob.sign(&transcript(Role::Initiator, &bob_hello, &alice_hello));
        let (mut again, _) = Handshake::responder(&alice, [3; 32]);
        again.handle(bob_hello.frame(), &admit_all).unwrap();
        assert!(matches!(
            again.handle(Frame::Auth { signature: right_role }, &admit_all),
            Ok(Step::Done { .. })
        ));
    }

    #[test]
    fn transcript_layout_is_fixed() {
        let i = Hello {
            major: 1,
            minor: 0,
            did: DidKey::from_public_key([0xaa; 32]),
            nonce: [0xbb; 32],
            rotation: None,
        };
        let r = Hello {
            major: 1,
            minor: 2,
            did: DidKey::from_public_key([0xcc; 32]),
            nonce: [0xdd; 32],
            rotation: None,
        };
        let t = transcript(Role::Responder, &i, &r);
        assert_eq!(t.len(), 16 + 2 + 68 + 68);
        assert_eq!(&t[..18], b"meshgate-sync-v1\0R");
        assert_eq!(&t[18..22], &[0, 1, 0, 0]);
        assert_eq!(&t[86..90], &[0, 1, 0, 2]);
    }
}
